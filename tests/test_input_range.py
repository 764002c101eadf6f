"""Models whose pixels span 0..255 (EDSR style), given with --card-input-range: run, verify, calibrate."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from tests.onnx_models import residual_sr

onnx = pytest.importorskip("onnx")
from onnx import helper, numpy_helper  # noqa: E402

from edge_enhance import Enhancer  # noqa: E402
from edge_enhance.card import ModelCard  # noqa: E402


def _on_255(src, dst):
    """The 0..1 model of ``src`` wrapped to take and give 0..255: x / 255 in, y * 255 out."""
    m = onnx.load(str(src))
    g = m.graph
    x, y = g.input[0].name, g.output[0].name
    for node in g.node:
        node.input[:] = ["x01" if i == x else i for i in node.input]
        node.output[:] = ["y01" if o == y else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array(1 / 255, np.float32), "k_in"),
                          numpy_helper.from_array(np.array(255, np.float32), "k_out")])
    g.node.insert(0, helper.make_node("Mul", [x, "k_in"], ["x01"], name="to01"))
    g.node.append(helper.make_node("Mul", ["y01", "k_out"], [y], name="to255"))
    del m.metadata_props[:]
    onnx.save(m, str(dst))


@pytest.fixture
def pair(tmp_path):
    residual_sr(tmp_path / "m01.onnx", scale=2, layers=2, channels=6, card={})
    _on_255(tmp_path / "m01.onnx", tmp_path / "m255.onnx")
    return tmp_path / "m01.onnx", tmp_path / "m255.onnx"


def test_runtime_card_input_range_matches_the_0_1_model(pair):
    m01, m255 = pair
    img = np.random.default_rng(0).integers(0, 256, (20, 22, 3), dtype=np.uint8)
    card = dict(name="m", task="sr", scale=2, receptive_field=7)
    a = Enhancer(m01, card=ModelCard(**card)).enhance(img).astype(int)
    b = Enhancer(m255, card=ModelCard(**card, input_range=(0.0, 255.0))).enhance(img).astype(int)
    assert np.abs(a - b).max() <= 1


def test_value_range_parses_and_refuses():
    from edge_enhance.argtypes import value_range

    assert value_range("0,255") == (0.0, 255.0)
    for bad in ("255,0", "0", "a,b"):
        with pytest.raises(argparse.ArgumentTypeError):
            value_range(bad)


def test_calibration_feeds_the_card_input_range(tmp_path):
    from PIL import Image

    from quantization.calibration import CalibConfig, calibration_set
    from quantization.quantize import psnr_u8

    (tmp_path / "c").mkdir()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "c/a.png")
    kw = dict(task="denoise", scale=1, config=CalibConfig(crop=32, count=2))
    a = calibration_set(tmp_path / "c", **kw)
    b = calibration_set(tmp_path / "c", input_range=(0.0, 255.0), **kw)
    assert np.allclose(b.inputs[0], a.inputs[0] * 255, atol=1e-3) and b.input_range == (0.0, 255.0)
    t = a.targets[0]
    assert psnr_u8(t, t[None].astype(np.float32), (0.0, 255.0)) == psnr_u8(t, t[None] / np.float32(255)) > 90


def _convert(argv):
    from conversion.cli import add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args(argv))


def test_convert_verifies_and_quantises_on_the_card_input_range(pair, tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")
    m01, m255 = pair
    out = tmp_path / "m255.tflite"
    assert _convert([str(m255), "--to", "tflite", "--card-task", "sr", "--card-input-range", "0,255", "-o", str(out),
                     "--verify-images", "2"]) == 0
    table = capsys.readouterr().out
    assert _convert([str(m01), "--to", "tflite", "--card-task", "sr", "-o", str(tmp_path / "m01.tflite"),
                     "--verify-images", "2"]) == 0
    ref = capsys.readouterr().out
    task = lambda text: [ln.split()[-2:] for ln in text.splitlines() if ln.startswith("all")][0]
    assert task(table) == task(ref)  # the same task PSNR: inputs went in as 0..255, outputs came back to 0..1
    assert Enhancer(out).card.input_range == (0.0, 255.0)
    q = tmp_path / "m255.int8.tflite"
    assert _convert([str(m255), "--to", "tflite", "--precision", "int8", "--card-task", "sr", "--card-input-range",
                     "0,255", "-o", str(q)]) == 0
    drop = [ln for ln in capsys.readouterr().out.splitlines() if "drop" in ln and "Set5" in ln][0]
    assert float(drop.split("drop")[1].split()[0]) < 0.1
