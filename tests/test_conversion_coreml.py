"""Core ML: MIL builder -> mlprogram, checked by numpy evaluation of the converted program."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from tests.conversion_testkit import h, make_model, rand, residual_sr_model, run_ort

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install edge-enhance[coreml])")

from conversion.cli import convert  # noqa: E402
from conversion.coreml_writer import (  # noqa: E402
    _LAST_PROGRAM, WEIGHT_FORMATS, decompress_op, evaluate_mil, kmeans_lut, to_coreml)
from conversion.errors import ConfigError  # noqa: E402
from conversion.onnx_import import from_onnx  # noqa: E402
from conversion.verify import default_dataset  # noqa: E402
from edge_enhance.card import CARD_KEY, ModelCard  # noqa: E402


def _ops_model(rng, shape=(1, 3, 8, 6)):
    c = 4
    return make_model([
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Conv", ["c", "wd", "bd"], ["dw"], pads=[2, 2, 2, 2], group=c, name="dwconv"),
        h.make_node("PRelu", ["dw", "slope"], ["p"], name="prelu"),
        h.make_node("LeakyRelu", ["p"], ["l"], alpha=0.1, name="leaky"),
        h.make_node("ConvTranspose", ["l", "wt", "bt"], ["t"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4],
                    name="up"),
        h.make_node("Resize", ["x", "", "sc"], ["n"], mode="nearest", coordinate_transformation_mode="asymmetric",
                    nearest_mode="floor", name="near"),
        h.make_node("Conv", ["n", "w2", "b2"], ["n2"], pads=[0, 0, 0, 0], name="proj"),
        h.make_node("Add", ["t", "n2"], ["s"], name="add"),
        h.make_node("Sigmoid", ["s"], ["sg"], name="sig"),
        h.make_node("Resize", ["sg", "", "sc"], ["bl"], mode="linear", coordinate_transformation_mode="half_pixel",
                    name="bilinear"),
        h.make_node("Min", ["bl", "k"], ["y"], name="min"),
    ], {"w": rand(rng, c, 3, 3, 3), "b": rand(rng, c), "wd": rand(rng, c, 1, 5, 5), "bd": rand(rng, c),
        "slope": rand(rng, c, 1, 1, lo=0, hi=0.3), "wt": rand(rng, c, 3, 4, 4), "bt": rand(rng, 3),
        "sc": np.array([1, 1, 2, 2], np.float32), "w2": rand(rng, 3, 3, 1, 1), "b2": rand(rng, 3),
        "k": np.float32(0.8)}, list(shape))


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_ops_numpy_mil_matches_onnxruntime(tmp_path, precision, atol):
    rng = np.random.default_rng(7)
    m = _ops_model(rng)
    g = from_onnx(m)
    path = tmp_path / "ops.mlpackage"
    ops = to_coreml(g, path, precision=precision, tile=(8, 6))
    for op in ("conv", "prelu", "leaky_relu", "conv_transpose", "upsample_nearest_neighbor", "sigmoid",
               "resize_bilinear", "minimum"):
        assert op in ops, ops
    x = rand(rng, 1, 3, 8, 6, lo=0, hi=1)
    y = evaluate_mil(_LAST_PROGRAM[str(path)], x)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), run_ort(m, x), atol=atol, rtol=0)


def test_card_and_deployment_target(tmp_path):
    card = ModelCard(name="c", task="sr", scale=2, receptive_field=7)
    g = from_onnx(residual_sr_model(np.random.default_rng(1), card=card))
    path = tmp_path / "m.mlpackage"
    to_coreml(g, path, precision="fp16", tile=(16, 24), min_target="iOS17")
    mm = ct.models.MLModel(str(path), skip_model_load=True)
    got = ModelCard.from_json(mm.user_defined_metadata[CARD_KEY])
    assert got.tile == (16, 24) and got.layout == "nchw"
    assert mm.get_spec().specificationVersion >= 8  # iOS17
    shape = [d for d in mm.get_spec().description.input[0].type.multiArrayType.shape]
    assert shape == [1, 3, 16, 24]


def test_needs_a_tile(tmp_path):
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))
    with pytest.raises(ConfigError, match="tile"):
        to_coreml(g, tmp_path / "m.mlpackage")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "palette6"])
def test_sr_net_to_coreml_verified(tmp_path, precision):
    card = ModelCard(name="c", task="sr", scale=2, receptive_field=7)
    src = tmp_path / "sr.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(2), card=card).SerializeToString())
    res = convert(src, "coreml", precision=precision, tile=(32, 32), max_images=2)
    assert res.output.suffix == ".mlpackage" and res.output.is_dir()
    assert res.ops["depth_to_space"] == 1
    tol = {"fp32": 1e-4, "fp16": 5e-3}.get(precision, 3e-2)
    assert res.report.max_abs_err <= tol
    card = json.loads(ct.models.MLModel(str(res.output), skip_model_load=True).user_defined_metadata[CARD_KEY])
    assert ("weights" in card) == (precision in ("int8", "palette6"))


def test_kmeans_palette_finds_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([-1.0, -0.2, 0.3, 2.0])
    w = (centres[rng.integers(0, 4, 500)] + rng.normal(0, 0.01, 500)).astype(np.float32)
    lut, idx = kmeans_lut(w, 2)
    np.testing.assert_allclose(np.sort(lut), centres, atol=0.01)
    assert np.abs(lut[idx] - w).max() < 0.05


@pytest.mark.parametrize("nbits", [4, 6, 8])
def test_kmeans_palette_no_worse_than_uniform(nbits):
    w = np.random.default_rng(nbits).laplace(0, 0.1, 4000).astype(np.float32)  # heavy tails, like conv weights
    lut, idx = kmeans_lut(w, nbits)
    grid = np.linspace(w.min(), w.max(), 2 ** nbits)
    uniform = grid[np.abs(w[:, None] - grid[None, :]).argmin(1)]
    assert np.mean((lut[idx] - w) ** 2) <= np.mean((uniform - w) ** 2)
    assert np.abs(lut[idx] - w).max() <= (grid[1] - grid[0]) * 2  # the tails keep their levels


def _tree_size(p):
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


@pytest.mark.parametrize("weights,min_target,atol", [
    ("int8", "iOS16", 5e-3), ("int8", "iOS18", 5e-3), ("palette4", "iOS16", 3e-2), ("palette4", "iOS18", 3e-2),
    ("palette6", "iOS16", 1e-2), ("palette8", "iOS18", 5e-3)])
def test_compressed_weights_evaluate_and_shrink(tmp_path, weights, min_target, atol):
    rng = np.random.default_rng(3)
    card = ModelCard(name="c", task="sr", scale=2, receptive_field=7)
    m = residual_sr_model(rng, card=card)
    g = from_onnx(m)
    fp, path = tmp_path / "fp.mlpackage", tmp_path / "w.mlpackage"
    to_coreml(g, fp, tile=(8, 8), min_target=min_target)
    ops = to_coreml(g, path, tile=(8, 8), min_target=min_target, weights=weights)
    prog = _LAST_PROGRAM[str(path)]
    packed = [op for op in prog.functions["main"].operations if op.op_type.startswith("constexpr_")]
    assert len(packed) == g.op_counts()["Conv"] and ops.count("conv") == len(packed)
    for op in packed:  # our numpy dequantisation == coremltools' own reference decompression
        ref = type(op).decompress(**{k: (op.inputs[k].val if k in op.inputs else None)
                                     for k in inspect.signature(type(op).decompress).parameters})
        dense = decompress_op(op)
        np.testing.assert_array_equal(dense, ref)
        if weights.startswith("palette"):
            assert len(np.unique(dense)) <= 2 ** int(weights[7:])
        else:  # symmetric per-output-channel int8: every channel is a multiple of its own step
            q = dense.reshape(dense.shape[0], -1).astype(np.float64)
            step = np.abs(q).max(1, keepdims=True) / 127
            np.testing.assert_allclose(q / step, np.round(q / step), atol=0.1)  # dense values are fp16
    x = rand(rng, 1, 3, 8, 8, lo=0, hi=1)
    y = evaluate_mil(prog, x)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), run_ort(m, x), atol=atol, rtol=0)
    assert _tree_size(path) < _tree_size(fp)
    mm = ct.models.MLModel(str(path), skip_model_load=True)
    assert json.loads(mm.user_defined_metadata[CARD_KEY])["weights"] == WEIGHT_FORMATS[weights]


def test_unknown_weight_compression(tmp_path):
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))
    with pytest.raises(ConfigError, match="palette5"):
        to_coreml(g, tmp_path / "m.mlpackage", tile=(8, 8), weights="palette5")


def _spec_input(path):
    return ct.models.MLModel(str(path), skip_model_load=True).get_spec().description


def _cli(argv):
    import argparse

    from conversion.cli import add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args([str(a) for a in argv]))


@pytest.fixture
def sr_onnx(tmp_path):
    card = ModelCard(name="c", task="sr", scale=2, receptive_field=7)
    src = tmp_path / "sr.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(2), card=card).SerializeToString())
    return src


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_enumerated_shapes_every_size_matches_onnxruntime(tmp_path, precision, atol):
    """Symbolic H, W: conv_transpose without a baked output_shape, bilinear by factors."""
    rng = np.random.default_rng(8)
    m = _ops_model(rng, shape=(1, 3, "H", "W"))
    path = tmp_path / "ops.mlpackage"
    ops = to_coreml(from_onnx(m), path, precision=precision, tile=(8, 6), enumerated_shapes=((12, 10), (8, 6)))
    assert "upsample_bilinear" in ops and "resize_bilinear" not in ops
    shapes = [list(s.shape) for s in _spec_input(path).input[0].type.multiArrayType.enumeratedShapes.shapes]
    assert shapes == [[1, 3, 8, 6], [1, 3, 12, 10]]
    for hw in ((8, 6), (12, 10)):
        x = rand(rng, 1, 3, *hw, lo=0, hi=1)
        y = evaluate_mil(_LAST_PROGRAM[str(path)], x)
        np.testing.assert_allclose(y.transpose(0, 2, 3, 1), run_ort(m, x), atol=atol, rtol=0)


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_cli_enumerated_shapes_written_and_verified(tmp_path, sr_onnx, capsys):
    out = tmp_path / "m.mlpackage"
    assert _cli([sr_onnx, "--to", "coreml", "--enumerated-shapes", "32x32,48x40", "--verify-images", "1",
                 "-o", out]) == 0
    text = capsys.readouterr().out
    inp = _spec_input(out).input[0].type.multiArrayType
    assert list(inp.shape) == [1, 3, 32, 32]  # no --tile: the first size is the default
    assert [list(s.shape) for s in inp.enumeratedShapes.shapes] == [[1, 3, 32, 32], [1, 3, 48, 40]]
    card = json.loads(ct.models.MLModel(str(out), skip_model_load=True).user_defined_metadata[CARD_KEY])
    assert card["tile"] == [32, 32] and card["enumerated_shapes"] == [[32, 32], [48, 40]]
    assert "baby.png @48x40" in text and "input sizes: 32x32 (default), 48x40 (enumerated)" in text
    row = next(line for line in text.splitlines() if "@48x40" in line)
    assert float(row.split()[2]) <= 1e-4  # fp32: the verification ran at that size too


@pytest.mark.parametrize("argv,msg", [
    (["--to", "coreml", "--enumerated-shapes", "256x256,512"], "'512' is not a positive HxW"),
    (["--to", "coreml", "--enumerated-shapes", "256x256,,"], "comma-separated"),
    (["--to", "coreml", "--enumerated-shapes", "0x8"], "'0x8'"),
    (["--to", "tflite", "--enumerated-shapes", "32x32"], "--to coreml only"),
    (["--to", "onnx", "--io", "image"], "--io image applies to --to coreml only"),
    (["--to", "tflite", "--io", "image"], "--io image applies to --to coreml only"),
    (["--to", "tflite", "--precision", "int8", "--io", "image"], "--io image applies to --to coreml only"),
    (["--to", "coreml", "--io", "uint8"], "--io uint8 applies to --to tflite --precision int8"),
])
def test_cli_bad_shape_and_io_options(tmp_path, sr_onnx, capsys, argv, msg):
    before = set(tmp_path.iterdir())
    assert _cli([sr_onnx] + argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert set(tmp_path.iterdir()) == before


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_image_io_spec_and_verification(tmp_path, sr_onnx, capsys, precision, tol):
    out = tmp_path / "img.mlpackage"
    assert _cli([sr_onnx, "--to", "coreml", "--io", "image", "--precision", precision, "--tile", "32x32",
                 "--enumerated-shapes", "40x48", "--verify-images", "2", "-o", out]) == 0
    text = capsys.readouterr().out
    desc = _spec_input(out)
    i, o = desc.input[0].type, desc.output[0].type
    assert i.WhichOneof("Type") == "imageType" and o.WhichOneof("Type") == "imageType"
    rgb = ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert i.imageType.colorSpace == rgb and o.imageType.colorSpace == rgb
    assert (i.imageType.height, i.imageType.width) == (32, 32)
    assert [(s.height, s.width) for s in i.imageType.enumeratedSizes.sizes] == [(32, 32), (40, 48)]
    card = ModelCard.from_json(ct.models.MLModel(str(out), skip_model_load=True).user_defined_metadata[CARD_KEY])
    assert card.input_range == (0.0, 255.0) and card.extra["io"] == "image"
    assert "image I/O" in text and "Core ML I/O: image in (RGB pixels 0..255" in text
    rows = [line.split() for line in text.splitlines() if line.startswith(("baby", "bird", "all"))]
    errs = [float(r[2] if r[1].startswith("@") else r[1]) for r in rows]  # the max|err| column
    assert len(rows) == 4 and max(errs) <= tol


def test_image_io_program_sees_0_to_1_and_returns_pixels(tmp_path):
    """What verification relies on: pixels in, the tensor model's output x 255 out, clipped."""
    rng = np.random.default_rng(4)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                   {"w": rand(rng, 1, 1, 3, 3), "b": np.array([0.3], np.float32)}, [1, 1, "H", "W"])
    path = tmp_path / "grey.mlpackage"
    to_coreml(from_onnx(m), path, precision="fp32", tile=(6, 5), io="image")
    desc = _spec_input(path)
    grey = ct.proto.FeatureTypes_pb2.ImageFeatureType.GRAYSCALE
    assert desc.input[0].type.imageType.colorSpace == grey == desc.output[0].type.imageType.colorSpace
    px = rng.integers(0, 256, (1, 1, 6, 5)).astype(np.float32)
    y = evaluate_mil(_LAST_PROGRAM[str(path)], px)
    want = run_ort(m, px / 255).transpose(0, 3, 1, 2) * 255
    assert want.min() < 0 or want.max() > 255  # the clip is exercised
    np.testing.assert_allclose(y, np.clip(want, 0, 255), atol=1e-3)


@pytest.mark.parametrize("kw,msg", [({"min_target": "iOS15"}, "iOS16"), ({"io": "pixels"}, "io")])
def test_image_io_bad_options(tmp_path, kw, msg):
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))
    with pytest.raises(ConfigError, match=msg):
        to_coreml(g, tmp_path / "m.mlpackage", tile=(8, 8), **({"io": "image"} | kw))
    assert list(tmp_path.iterdir()) == []
