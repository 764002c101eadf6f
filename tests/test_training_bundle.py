"""training.bundle: the int8 file it ships carries its measured figures, and a failed run leaves the old one."""
import shutil

import numpy as np
import pytest
from PIL import Image

from edge_enhance.backends import read_card
from edge_enhance.errors import ImageInputError
from edge_enhance.models import MODELS_DIR
from tests.conftest import SHARED

pytest.importorskip("onnx")
pytestmark = pytest.mark.skipif(not (SHARED / "data" / "train").is_dir(),
                                reason="../shared/data (the calibration set) is not beside the repository")


@pytest.fixture
def models(tmp_path, monkeypatch):
    from training import bundle

    d = tmp_path / "models"
    d.mkdir()
    shutil.copy(MODELS_DIR / "sr-x2-rt.onnx", d)
    (d / "sr-x2-rt.int8.tflite").write_bytes(b"the shipped file")
    monkeypatch.setattr(bundle, "MODELS_DIR", d)
    return d


def test_bundle_writes_an_int8_file_with_its_measured_psnr(tmp_path, models):
    from training.bundle import bundle

    rng = np.random.default_rng(0)
    for ds in ("Set5", "Set14", "BSD100"):
        (tmp_path / "eval" / ds).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)).save(tmp_path / "eval" / ds / "a.png")
    res = bundle("sr-x2-rt", tmp_path / "eval", method="minmax", rounding="nearest")
    card = read_card(models / "sr-x2-rt.int8.tflite")
    assert card.extra["psnr"] == res["int8"] and set(res["int8"]) == {"Set5", "Set14", "BSD100"}
    # Its SSIM and the input's PSNR are measured too; the shipped fp32 file's SSIM is kept apart.
    assert set(card.extra["ssim"]) == set(card.extra["input_psnr"]) == set(res["int8"])
    assert all(0 < v < 1 for v in card.extra["ssim"].values()) and card.extra["ssim_fp32"] == read_card(
        MODELS_DIR / "sr-x2-rt.onnx").extra["ssim"]
    from edge_enhance import evaluation as ev

    bicubic = ev.evaluate(lambda x: ev.bicubic_resize(x, (x.shape[1] * 2, x.shape[0] * 2)), tmp_path / "eval" / "Set5", "sr")
    assert card.extra["input_psnr"]["Set5"] == round(bicubic.psnr, 3)
    assert card.extra["quantization"]["method"] == "minmax" and card.name == "sr-x2-rt"
    assert [p.name for p in models.iterdir() if p.name.startswith(".")] == []


def test_bundle_with_a_missing_dataset_leaves_the_shipped_file(tmp_path, models):
    from training.bundle import bundle

    (tmp_path / "eval" / "Set5").mkdir(parents=True)
    with pytest.raises(ImageInputError, match="BSD100: dataset folder does not exist"):
        bundle("sr-x2-rt", tmp_path / "eval")
    assert (models / "sr-x2-rt.int8.tflite").read_bytes() == b"the shipped file"
    assert sorted(p.name for p in models.iterdir()) == ["sr-x2-rt.int8.tflite", "sr-x2-rt.onnx"]


def test_bundle_cli_checks_every_name_first_and_writes_elsewhere_with_out(tmp_path, models, capsys):
    from training.bundle import main

    with pytest.raises(SystemExit) as e:
        main(["sr-x2-rt", "sr-x9", "--data", str(tmp_path / "eval")])
    assert e.value.code == 2 and "no bundled sr-x9.onnx (bundled: sr-x2-rt)" in capsys.readouterr().err
    rng = np.random.default_rng(0)
    for ds in ("Set5", "Set14", "BSD100"):
        (tmp_path / "eval" / ds).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (32, 36, 3), dtype=np.uint8)).save(tmp_path / "eval" / ds / "a.png")
    (tmp_path / "cmp").mkdir()
    assert main(["sr-x2-rt", "--data", str(tmp_path / "eval"), "--out", str(tmp_path / "cmp"), "--method", "minmax",
                 "--rounding", "nearest"]) == 0
    assert read_card(tmp_path / "cmp" / "sr-x2-rt.int8.tflite").extra["quantization"]["method"] == "minmax"
    assert (models / "sr-x2-rt.int8.tflite").read_bytes() == b"the shipped file"
