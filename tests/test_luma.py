"""Luma models (one input channel, card colour "y"): ESPCN / FSRCNN-style networks that see only Y."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.onnx_models import residual_sr

from edge_enhance import Enhancer, ycbcr
from edge_enhance.card import ModelCard
from edge_enhance.errors import ModelFormatError

ort = pytest.importorskip("onnxruntime")


def _needs_litert_and_set5():
    pytest.importorskip("ai_edge_litert")
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")


def _reference(model_path, rgb: np.ndarray, s: int) -> np.ndarray:
    """The model on the whole Y plane with onnxruntime, Cb / Cr upscaled with Pillow's bicubic, recombined."""
    ycc = rgb.astype(np.float64) @ np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                                             [0.5, -0.418688, -0.081312]]).T + [0, 128, 128]
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: (ycc[None, None, :, :, 0] / 255).astype(np.float32)})[0][0, 0] * 255
    h, w = rgb.shape[:2]
    # chroma rounded to 8 bits, then Pillow's 8-bit bicubic, as the PyTorch / Pillow ESPCN pipelines do
    cb, cr = (np.asarray(Image.fromarray(np.clip(np.rint(ycc[..., k]), 0, 255).astype(np.uint8), "L")
                         .resize((w * s, h * s), Image.BICUBIC), np.float64) - 128 for k in (1, 2))
    out = np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)
    return np.clip(np.rint(out), 0, 255)


def test_ycbcr_matches_pillow_and_round_trips():
    rgb = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    ycc = ycbcr.rgb_to_ycbcr(rgb, 255)
    assert np.abs(ycc - np.asarray(Image.fromarray(rgb).convert("YCbCr"), np.float32)).max() <= 1.01
    back = ycbcr.to_rgb(ycc[..., 0], ycc[..., 1], ycc[..., 2], 255)
    assert np.abs(back - rgb).max() < 1e-3
    grey16 = np.full((2, 2, 3), 40000, np.uint16)
    assert np.allclose(ycbcr.rgb_to_ycbcr(grey16, 65535)[0, 0], [40000, 32768, 32768], atol=0.01)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_luma_model_runs_on_y_with_bicubic_chroma_and_tiles_exactly(tmp_path, scale):
    p = tmp_path / "luma.onnx"
    residual_sr(p, scale=scale, colours=1)
    rgb = np.random.default_rng(scale).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    enh = Enhancer(p)
    assert enh.card.colour == "y" and enh.backend.channels == 1
    out = enh.enhance(rgb)
    assert out.shape == (37 * scale, 45 * scale, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - _reference(p, rgb, scale)).max() <= 1
    from edge_enhance.tiling import TilingConfig

    tiled = Enhancer(p, tiling=TilingConfig(tile=(16, 16)))
    assert np.array_equal(tiled.enhance(rgb), out)
    assert tiled.last_run.tiles > 1


def test_luma_model_keeps_grey_grey_and_strength_zero_is_the_bicubic_upscale(tmp_path):
    from edge_enhance.enhancer import upscale_bicubic

    p = tmp_path / "luma.onnx"
    residual_sr(p, scale=2, colours=1)
    grey = np.random.default_rng(1).integers(0, 256, (20, 24), dtype=np.uint8)
    out = Enhancer(p).enhance(grey)
    assert out.shape == (40, 48)
    enh = Enhancer(p, strength=0.0)
    rgb = np.random.default_rng(2).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    ycc = ycbcr.rgb_to_ycbcr(rgb, 255)
    y2 = upscale_bicubic(ycc[..., :1], 0, 0, 20, 24, 2)[..., 0]
    want = ycbcr.to_rgb(y2, ycbcr.upscale_plane(ycc[..., 1], 2, np.uint8), ycbcr.upscale_plane(ycc[..., 2], 2, np.uint8),
                        255)
    diff = np.abs(enh.enhance(rgb).astype(float) - np.clip(np.rint(want), 0, 255))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float rounding of Y through the model range only


def test_luma_16bit_and_alpha(tmp_path):
    p = tmp_path / "luma.onnx"
    residual_sr(p, scale=2, colours=1)
    rgb16 = np.random.default_rng(3).integers(0, 65536, (12, 14, 3), dtype=np.uint16)
    out16 = Enhancer(p).enhance(rgb16)
    assert out16.dtype == np.uint16 and out16.shape == (24, 28, 3)
    out8 = Enhancer(p).enhance((rgb16 >> 8).astype(np.uint8))
    assert np.abs((out16 >> 8).astype(int) - out8).mean() < 1.5
    rgba = np.dstack([rgb16[..., :3] >> 8, np.full((12, 14), 255)]).astype(np.uint8)
    assert Enhancer(p).enhance(rgba).shape == (24, 28, 4)


def test_card_less_luma_model_takes_its_colour_from_the_model(tmp_path):
    p = tmp_path / "plain.onnx"
    residual_sr(p, scale=2, colours=1, card={})
    card = ModelCard(name="plain", task="sr", scale=2, receptive_field=9)
    enh = Enhancer(p, card=card)
    assert enh.card.colour == "y" and enh.backend.layout == "nchw"
    rgb = np.random.default_rng(4).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.abs(enh.enhance(rgb).astype(int) - _reference(p, rgb, 2)).max() <= 1


@pytest.mark.parametrize("channels,colour", [(1, "rgb"), (3, "y")])
def test_card_colour_that_contradicts_the_input_is_refused(tmp_path, channels, colour):
    p = tmp_path / "bad.onnx"
    residual_sr(p, scale=2, colours=channels, card={"name": "bad", "task": "sr", "scale": 2, "receptive_field": 9,
                                                    "colour": colour})
    with pytest.raises(ModelFormatError, match=f"colour '{colour}'.*{channels} channel"):
        Enhancer(p)
    from conversion.onnx_import import from_onnx

    with pytest.raises(ModelFormatError, match=f"colour '{colour}'"):
        from_onnx(str(p))


def test_card_colour_must_be_known():
    with pytest.raises(ModelFormatError, match="colour 'bgr' is not one of rgb, y"):
        ModelCard.from_json(json.dumps({"name": "m", "task": "sr", "scale": 2, "receptive_field": 3, "colour": "bgr"}))


def test_luma_model_converts_to_tflite_verified_and_runs_the_same(tmp_path):
    _needs_litert_and_set5()
    from conversion.cli import convert

    src = tmp_path / "luma.onnx"
    residual_sr(src, scale=3, colours=1)
    res = convert(src, "tflite", output=tmp_path / "luma.tflite", crop=(24, 24), max_images=2)
    assert res.report.max_abs_err < 1e-4
    assert res.report.task_psnr_source is not None and abs(res.report.task_psnr_source - res.report.task_psnr_target) < 0.01
    rgb = np.random.default_rng(5).integers(0, 256, (20, 26, 3), dtype=np.uint8)
    a = Enhancer(tmp_path / "luma.tflite")
    assert a.card.colour == "y" and a.backend.channels == 1
    assert np.abs(a.enhance(rgb).astype(int) - Enhancer(src).enhance(rgb)).max() <= 1


def test_luma_model_int8_calibrates_on_y(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from quantization.calibration import CalibConfig, calibration_set

    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(6)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (100, 110, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    cs = calibration_set(calib, task="sr", scale=2, colour="y", config=CalibConfig(crop=32, count=3))
    assert cs.inputs[0].shape == (1, 16, 16, 1) and cs.targets[0].shape == (32, 32, 1)
    import argparse

    from conversion.cli import add_arguments, main

    src = tmp_path / "luma.onnx"
    residual_sr(src, scale=2, colours=1)
    out = tmp_path / "luma.int8.tflite"
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert main(p.parse_args([str(src), "--to", "tflite", "--precision", "int8", "--calib", str(calib),
                              "--dataset", str(calib), "-o", str(out)])) == 0
    rgb = rng.integers(0, 256, (18, 22, 3), dtype=np.uint8)
    q, f = Enhancer(out).enhance(rgb).astype(int), Enhancer(src).enhance(rgb).astype(int)
    assert np.abs(q - f).mean() < 3


def test_luma_model_to_core_ml_verified_with_tensor_and_grayscale_image_io(tmp_path):
    pytest.importorskip("coremltools")
    _needs_litert_and_set5()
    from conversion.cli import convert
    from edge_enhance.backends.coreml import _ct, spec_channels

    src = tmp_path / "luma.onnx"
    residual_sr(src, scale=2, colours=1)
    for io in ("float", "image"):
        out = tmp_path / f"luma-{io}.mlpackage"
        res = convert(src, "coreml", output=out, io=io, tile=(32, 32), max_images=1)
        assert res.report.images
        spec = _ct().models.MLModel(str(out), skip_model_load=True).get_spec()
        assert spec_channels(spec) == 1
