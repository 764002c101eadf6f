"""Every bundled model: card sanity, and conversion to every target verified on a real image."""
import pytest

from edge_enhance.backends import read_card
from edge_enhance.models import bundled
from tests.conftest import SHARED

ONNX_MODELS = sorted(f for files in bundled().values() for f in files if f.suffix == ".onnx")
SET5 = SHARED / "data" / "eval" / "Set5"


@pytest.mark.parametrize("path", sorted(f for files in bundled().values() for f in files), ids=lambda p: p.name)
def test_card_is_complete(path):
    card = read_card(path)
    assert card.name == path.name.split(".")[0]
    assert card.receptive_field % 2 == 1 and card.params and card.macs_per_pixel
    assert card.extra.get("psnr") and card.extra.get("recipe")


@pytest.mark.skipif(not SET5.is_dir(), reason="../shared/data is not beside the repository")
@pytest.mark.parametrize("to,precision", [("tflite", "fp32"), ("tflite", "fp16"), ("onnx", "fp16"), ("coreml", "fp16")])
@pytest.mark.parametrize("path", ONNX_MODELS, ids=lambda p: p.name)
def test_every_bundled_model_converts_and_verifies(tmp_path, path, to, precision):
    pytest.importorskip("onnx")
    if to == "coreml":
        pytest.importorskip("coremltools")
    from conversion.cli import convert

    suffix = {"tflite": ".tflite", "onnx": ".onnx", "coreml": ".mlpackage"}[to]
    res = convert(path, to, output=tmp_path / (path.stem + suffix), precision=precision, dataset=SET5,
                  max_images=1, crop=(48, 48), tile=(48, 48) if to == "coreml" else None)
    assert res.output.exists() and res.report is not None
    assert res.report.psnr_between > (100 if precision == "fp32" else 60)
