"""The LiteRT backend on .tflite files written by conversion/ (fp32 and full-integer int8)."""
import numpy as np
import pytest

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
pytest.importorskip("onnx")

from conversion.ir import QuantParams  # noqa: E402
from conversion.onnx_import import from_onnx  # noqa: E402
from conversion.tflite_writer import apply_int8_constraints, to_tflite  # noqa: E402
from edge_enhance.backends import EngineOptions, read_card  # noqa: E402
from edge_enhance.enhancer import Enhancer  # noqa: E402
from edge_enhance.errors import BackendUnavailableError  # noqa: E402
from edge_enhance.tiling import TilingConfig  # noqa: E402
from tests.conversion_testkit import minmax_calibrate  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tfl")
    onnx_path = d / "m.onnx"
    residual_sr(onnx_path, scale=2, layers=3, channels=8, seed=7)
    g = from_onnx(str(onnx_path))
    fp32 = to_tflite(g, d / "m.tflite")
    rng = np.random.default_rng(0)
    minmax_calibrate(g, [rng.uniform(0, 1, (1, 16, 16, 3)).astype(np.float32) for _ in range(4)])
    g.tensors[g.inputs[0]].quant = QuantParams([1 / 255], [-128])
    apply_int8_constraints(g)
    int8 = to_tflite(g, d / "m.int8.tflite", precision="int8", io="uint8")
    fixed = to_tflite(from_onnx(str(onnx_path)), d / "m.fixed.tflite", tile=(20, 20))
    return {"onnx": onnx_path, "fp32": fp32, "int8": int8, "fixed": fixed}


def test_card_travels_into_tflite(files):
    card = read_card(files["fp32"])
    assert card.layout == "nhwc" and card.scale == 2 and card.receptive_field == 9


@pytest.mark.parametrize("kind", ["fp32", "int8", "fixed"])
@pytest.mark.parametrize("shape", [(1, 1), (7, 30), (41, 23)])
def test_tiled_equals_whole_in_litert(files, kind, shape):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape + (3,), dtype=np.uint8)
    whole = Enhancer(files[kind], tiling=TilingConfig(tile=(10**4, 10**4)), threads=1).enhance(img)
    tiled_enh = Enhancer(files[kind], tiling=TilingConfig(tile=(13, 17)), threads=2)
    tiled = tiled_enh.enhance(img)
    assert tiled.shape == (shape[0] * 2, shape[1] * 2, 3)
    assert np.array_equal(tiled, whole)


def test_fp32_tflite_matches_onnxruntime(files):
    img = np.random.default_rng(1).integers(0, 256, (19, 23, 3), dtype=np.uint8)
    a = Enhancer(files["fp32"]).enhance(img).astype(int)
    b = Enhancer(files["onnx"]).enhance(img).astype(int)
    assert np.abs(a - b).max() <= 1  # float summation order may flip a rounding


def test_int8_is_close_to_fp32(files):
    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    a = Enhancer(files["int8"]).enhance(img).astype(int)
    b = Enhancer(files["fp32"]).enhance(img).astype(int)
    assert np.abs(a - b).mean() < 3


def test_interpreter_is_resized_once_per_run(files, monkeypatch):
    enh = Enhancer(files["fp32"], tiling=TilingConfig(tile=(16, 16)))
    calls = []
    orig = enh.backend.interp.resize_tensor_input
    monkeypatch.setattr(enh.backend.interp, "resize_tensor_input", lambda *a, **k: (calls.append(a), orig(*a, **k)))
    enh.enhance(np.zeros((50, 50, 3), np.uint8))
    enh.enhance(np.zeros((60, 40, 3), np.uint8))
    assert len(calls) == 1 and enh.last_run.tiles > 1


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no second traceback from __del__
def test_delegate_that_cannot_load(files, caplog):
    import ctypes.util

    bad = EngineOptions(delegate="/nonexistent/libdelegate.so")
    with pytest.raises(BackendUnavailableError, match="--fallback cpu"):
        Enhancer(files["fp32"], options=bad)
    libc = ctypes.util.find_library("c")  # a library, but no delegate
    if libc:
        with pytest.raises(BackendUnavailableError, match=r"not a TFLite external delegate .*--fallback cpu"):
            Enhancer(files["fp32"], options=EngineOptions(delegate=libc))
    enh = Enhancer(files["fp32"], options=EngineOptions(delegate="/nonexistent/libdelegate.so", fallback_cpu=True))
    assert enh.enhance(np.zeros((4, 4, 3), np.uint8)).shape == (8, 8, 3)
    assert "running on the CPU" in caplog.text


def test_activation_estimate_counts_real_tensors(files):
    enh = Enhancer(files["fp32"])
    bpp = enh.backend.activation_bytes_per_pixel()
    # at least the named activations: x 3 + three convs of 8 + conv 12 + concat 12 + add 12 at input
    # resolution, d2s and clip 3 each at 2x2 output pixels = 87 floats (plus the kernels' scratch)
    assert bpp >= 4 * 87
    enh = Enhancer(files["fp32"], tiling=TilingConfig(memory_mb=1.0))
    enh.enhance(np.zeros((100, 100, 3), np.uint8))
    th, tw = enh.last_run.tile
    assert th * tw * bpp <= 2**20


def test_half_res_model_estimate_counts_its_half_resolution_activations(tmp_path):
    from tests.onnx_models import half_res_denoise

    path = to_tflite(from_onnx(half_res_denoise(layers=2, channels=8)), tmp_path / "half.tflite")
    enh = Enhancer(path, tiling=TilingConfig(memory_mb=0.25))
    assert enh.card.align == 2 and read_card(path).align == 2
    # full resolution: input, d2s, add, clip (3 each); half: three convs of 8 and one of 12, a
    # quarter of the pixels each = 21 floats per input pixel
    assert enh.backend.activation_bytes_per_pixel() >= 4 * 21
    img = np.random.default_rng(1).integers(0, 256, (97, 83, 3), dtype=np.uint8)
    out = enh.enhance(img)
    assert out.shape == img.shape and enh.last_run.tiles > 1 and all(t % 2 == 0 for t in enh.last_run.tile)
    assert np.array_equal(out, Enhancer(path, tiling=TilingConfig(tile=(10**4, 10**4))).enhance(img))


def test_quiet_run_prints_nothing_and_minus_vv_keeps_litert_notice(tmp_path, files):
    """`edge-enhance photo.png -q` on a .tflite: not even LiteRT's 'Created ... XNNPACK delegate' line."""
    import subprocess
    import sys

    from PIL import Image

    Image.new("RGB", (12, 10), (90, 30, 200)).save(tmp_path / "p.png")
    run = [sys.executable, "-m", "edge_enhance.cli", str(tmp_path / "p.png"), "-m", str(files["fp32"]), "-q"]
    quiet = subprocess.run(run + ["-o", str(tmp_path / "q.png")], capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr
    loud = subprocess.run(run[:3] + ["-vv"] + run[3:] + ["-o", str(tmp_path / "v.png")], capture_output=True,
                          text=True, timeout=120)
    assert loud.returncode == 0 and "XNNPACK" in loud.stderr


def test_threads_making_enhancers_at_once_print_no_litert_notice():
    """The first thread set the notice's flag on entering its redirect; a second thread's allocation then ran
    on the real stderr and printed 'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.'"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    code = ("import threading\n"
            "from edge_enhance import Enhancer\n"
            "names = ['denoise', 'sr-x2', 'dejpeg', 'sr-x3']\n"
            "ready = threading.Barrier(len(names))\n"
            "def make(name):\n"
            "    ready.wait()\n"
            "    Enhancer(name, engine='litert', threads=1)\n"
            "threads = [threading.Thread(target=make, args=(n,)) for n in names]\n"
            "for t in threads:\n"
            "    t.start()\n"
            "for t in threads:\n"
            "    t.join()\n")
    for _ in range(5):  # the notice comes once per process: each try is a fresh one
        p = subprocess.run([sys.executable, "-c", code], cwd=root, env={**os.environ, "PYTHONPATH": root},
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and p.stderr == "", p.stderr
