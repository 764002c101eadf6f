"""A model exported with torch's ``.half()``: float16 weights, math and I/O. It used to be refused by the
runtime ("input type tensor(float16) is not float32") and by the converter; it runs and converts now,
its float16 I/O fed and read as float32 around it."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.conversion_testkit import convert_main, half_model, rand, residual_sr_model, run_ort, run_tflite  # noqa: E402

from conversion.onnx_import import from_onnx  # noqa: E402
from conversion.tflite_writer import to_tflite  # noqa: E402
from conversion.verify import default_dataset  # noqa: E402
from edge_enhance.cli import main  # noqa: E402
from edge_enhance.models import MODELS_DIR  # noqa: E402


@pytest.fixture(scope="module")
def bundled_half(tmp_path_factory):
    import onnx

    d = tmp_path_factory.mktemp("half")
    onnx.save(half_model(onnx.load(MODELS_DIR / "sr-x2.onnx")), d / "sr-x2.fp16.onnx")
    return d / "sr-x2.fp16.onnx"


def test_a_half_model_converts_to_float32_io_and_matches_its_float16_source(tmp_path, capsys):
    rng = np.random.default_rng(16)
    m = half_model(residual_sr_model(rng))
    g = from_onnx(m)
    assert [n.op for n in g.nodes][-2:] == ["DepthToSpace", "Clip"]
    x = rand(rng, 1, 3, 9, 11, lo=0, hi=1)
    got = run_tflite(to_tflite(g, tmp_path / "m.tflite"), x.transpose(0, 2, 3, 1))
    assert got.dtype == np.float32
    want = run_ort(m, x.astype(np.float16))
    assert want.dtype == np.float16  # the source really computes in float16
    np.testing.assert_allclose(got, want.astype(np.float32), atol=2e-3, rtol=0)
    if default_dataset().is_dir():  # verified against the float16 source, run by ONNX Runtime with float16 I/O
        src = tmp_path / "m16.onnx"
        src.write_bytes(m.SerializeToString())
        assert convert_main([src, "--to", "tflite", "--card-task", "sr", "--verify-images", "1",
                             "-o", tmp_path / "m16.tflite"]) == 0, capsys.readouterr().err
        assert "verification: tflite fp32 vs onnxruntime" in capsys.readouterr().out


def test_the_runtime_runs_a_half_model_as_closely_as_float16_allows(tmp_path, bundled_half):
    from edge_enhance.enhancer import Enhancer

    src = tmp_path / "in.png"
    Image.open(MODELS_DIR.parent / "samples" / "parrots-256x192.png").crop((0, 0, 64, 48)).save(src)
    rgb = np.asarray(Image.open(src))
    full = Enhancer(MODELS_DIR / "sr-x2.onnx").enhance(rgb).astype(int)
    half = Enhancer(bundled_half).enhance(rgb).astype(int)
    assert half.shape == full.shape == (96, 128, 3)
    assert np.abs(half - full).max() <= 1 and np.abs(half - full).mean() < 0.1  # measured: 1, 0.04
    assert main(["enhance", str(src), "-o", str(tmp_path / "o.png"), "--model", str(bundled_half)]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "o.png")), half)
