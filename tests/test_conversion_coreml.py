"""Core ML: MIL builder -> mlprogram, checked by numpy evaluation of the converted program."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from tests.conversion_testkit import (calib_dir, carded_sr_model, convert_main, h, make_model, nearest_rounding,
                                     quantised_graph, rand, residual_sr_model, run_ort)

ct = pytest.importorskip("coremltools", reason="coremltools is not installed (pip install edge-enhance[coreml])")

from conversion import executor  # noqa: E402
from conversion.cli import convert  # noqa: E402
from conversion.coreml_writer import (  # noqa: E402
    _LAST_PROGRAM, SPARSITY, W8A8_ACTIVATIONS, WEIGHT_FORMATS, decompress_op, evaluate_mil, kmeans_lut, spec_names,
    to_coreml, weight_bytes)
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
        h.make_node("Tanh", ["sg"], ["th"], name="tanh"),
        h.make_node("Resize", ["th", "", "sc"], ["bl"], mode="linear", coordinate_transformation_mode="half_pixel",
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
    for op in ("conv", "prelu", "leaky_relu", "conv_transpose", "upsample_nearest_neighbor", "sigmoid", "tanh",
               "resize_bilinear", "minimum"):
        assert op in ops, ops
    x = rand(rng, 1, 3, 8, 6, lo=0, hi=1)
    y = evaluate_mil(_LAST_PROGRAM[str(path)], x)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1), run_ort(m, x), atol=atol, rtol=0)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_pad_numpy_mil_matches_onnxruntime(tmp_path, mode):
    rng = np.random.default_rng(8)
    m = make_model([h.make_node("Pad", ["x", "p"], ["xp"], mode=mode, name="pad"),
                    h.make_node("Conv", ["xp", "w", "b"], ["y"], name="conv")],
                   {"p": np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64), "w": rand(rng, 3, 3, 3, 3), "b": rand(rng, 3)},
                   [1, 3, 8, 6])
    path = tmp_path / "pad.mlpackage"
    assert "pad" in to_coreml(from_onnx(m), path, precision="fp32", tile=(8, 6))
    x = rand(rng, 1, 3, 8, 6, lo=0, hi=1)
    np.testing.assert_allclose(evaluate_mil(_LAST_PROGRAM[str(path)], x).transpose(0, 2, 3, 1), run_ort(m, x),
                               atol=1e-5, rtol=0)


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
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8", "palette6", "sparse50"])
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
    assert ("weights" in card) == (precision in ("int8", "palette6", "sparse50"))
    if precision in ("fp32", "fp16"):
        assert res.weight_bytes is None
    else:  # stored below dense fp16: int8 about half, 6-bit palette about 3/8, 50% sparse about 9/16
        dense, stored = res.weight_bytes
        assert stored < {"int8": 0.55, "palette6": 0.45, "sparse50": 0.65}[precision] * dense


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


def _packed(prog):
    """(op, dense value) of each compressed-weight op; our numpy decompression must equal
    coremltools' own reference decompression."""
    out = []
    for op in prog.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            ref = type(op).decompress(**{k: (op.inputs[k].val if k in op.inputs else None)
                                         for k in inspect.signature(type(op).decompress).parameters})
            dense = decompress_op(op)
            np.testing.assert_array_equal(dense, ref)
            out.append((op, dense))
    return out


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
    packed = _packed(prog)
    assert len(packed) == g.op_counts()["Conv"] and ops.count("conv") == len(packed)
    for op, dense in packed:
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


@pytest.fixture
def sr_onnx(tmp_path):
    return carded_sr_model(tmp_path)


def test_a_coremltools_without_its_native_parts_is_named_before_any_work(tmp_path, sr_onnx, monkeypatch, capsys):
    """Windows: pip builds coremltools from its source package, without the native writers; convert died
    at the end with RuntimeError: BlobWriter not loaded."""
    import sys

    monkeypatch.setitem(sys.modules, "coremltools.libmilstoragepython", None)
    assert convert_main([sr_onnx, "--to", "coreml", "--tile", "16x16", "-o", tmp_path / "m.mlpackage"]) == 1
    assert capsys.readouterr().err == ("edge-enhance convert: Core ML export needs coremltools' native parts, which "
                                       "its Windows package lacks: run it on macOS or Linux (WSL)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.onnx"]


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_coremltools_progress_bars_redraw_rather_than_print_escaped_carriage_returns(tmp_path, sr_onnx, capsys,
                                                                                    monkeypatch):
    """The CLI escapes control characters on stderr (a file name must not rewrite the terminal): coremltools'
    tqdm bars showed as `\\rRunning MIL default pipeline ... \\rRunning MIL ...` on one long line."""
    from conversion import coreml_writer
    from edge_enhance.cli import main

    monkeypatch.setattr(coreml_writer, "_isatty", lambda stream: True)  # a terminal
    assert main(["convert", str(sr_onnx), "--to", "coreml", "--tile", "16x16", "--verify-images", "1",
                 "-o", str(tmp_path / "m.mlpackage")]) == 0
    err = capsys.readouterr().err
    assert "\rRunning MIL default pipeline" in err and "\\r" not in err


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


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_half_res_net_with_enumerated_shapes(tmp_path, precision, atol):
    """The stride-2 4x4 conv (custom pads 1) at symbolic H, W, DepthToSpace and the input skip."""
    from tests.onnx_models import half_res_denoise

    m = half_res_denoise(layers=1, seed=3)
    g = from_onnx(m)
    path = tmp_path / "half.mlpackage"
    ops = to_coreml(g, path, precision=precision, tile=(24, 30), enumerated_shapes=((32, 40), (18, 8)))
    assert ops.count("conv") == 3 and "depth_to_space" in ops
    rng = np.random.default_rng(9)
    for hw in ((24, 30), (32, 40), (18, 8)):
        x = rand(rng, 1, 3, *hw, lo=0, hi=1)
        y = evaluate_mil(_LAST_PROGRAM[str(path)], x)
        np.testing.assert_allclose(y.transpose(0, 2, 3, 1), run_ort(m, x), atol=atol, rtol=0)
    with pytest.raises(ConfigError, match=r"Core ML input size 33x40: .* multiples of 2 \(its card's align\)"):
        to_coreml(g, tmp_path / "odd.mlpackage", tile=(24, 30), enumerated_shapes=((32, 40), (33, 40)))
    src = tmp_path / "half.onnx"
    src.write_bytes(m.SerializeToString())
    for opt in (["--tile", "24x31"], ["--enumerated-shapes", "24x30,33x40"]):
        with pytest.raises(ConfigError, match=rf"half\.onnx: {opt[0]} .* multiples of 2"):
            convert(src, "coreml", tile=(24, 31) if opt[0] == "--tile" else None,
                    enumerated_shapes=((24, 30), (33, 40)) if opt[0] != "--tile" else ())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["half.mlpackage", "half.onnx"]


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_cli_enumerated_shapes_written_and_verified(tmp_path, sr_onnx, capsys):
    out = tmp_path / "m.mlpackage"
    assert convert_main([sr_onnx, "--to", "coreml", "--enumerated-shapes", "32x32,48x40", "--verify-images", "1",
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
    assert convert_main([sr_onnx] + argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1
    assert set(tmp_path.iterdir()) == before


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
@pytest.mark.parametrize("precision,tol", [("fp32", 1e-4), ("fp16", 5e-3)])
def test_image_io_spec_and_verification(tmp_path, sr_onnx, capsys, precision, tol):
    out = tmp_path / "img.mlpackage"
    assert convert_main([sr_onnx, "--to", "coreml", "--io", "image", "--precision", precision, "--tile", "32x32",
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
    assert "image I/O" in text and "image in (RGB pixels 0..255, mapped to 0..1 inside)" in text
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


@pytest.mark.parametrize("span", [(0.0, 255.0), (-1.0, 1.0)])
def test_image_io_maps_pixels_onto_the_cards_input_range(tmp_path, span):
    """A model on 0..255 (EDSR-style) or -1..1: image I/O fed it pixels / 255 and read its output x 255."""
    lo, hi = span
    rng = np.random.default_rng(5)
    card = ModelCard(name="r", task="denoise", scale=1, receptive_field=3, input_range=span, colour="y")
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                   {"w": rand(rng, 1, 1, 3, 3) * 0.5, "b": np.array([0.05 * (hi - lo)], np.float32)}, [1, 1, "H", "W"],
                   metadata={CARD_KEY: card.to_json()})
    path = tmp_path / "r.mlpackage"
    to_coreml(from_onnx(m), path, precision="fp32", tile=(6, 5), io="image")
    px = rng.integers(0, 256, (1, 1, 6, 5)).astype(np.float32)
    y = evaluate_mil(_LAST_PROGRAM[str(path)], px)
    want = (run_ort(m, lo + px * (hi - lo) / 255).transpose(0, 3, 1, 2) - lo) * 255 / (hi - lo)
    np.testing.assert_allclose(y, np.clip(want, 0, 255), atol=1e-3)


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_image_io_fp32_verifies_a_model_whose_output_overshoots(tmp_path, capsys):
    """Most PyTorch SR nets end without a clamp: the picture clips, and so does the reference it is checked on."""
    rng = np.random.default_rng(6)
    card = ModelCard(name="o", task="denoise", scale=1, receptive_field=3)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                   {"w": rand(rng, 3, 3, 3, 3) * 0.3, "b": np.full(3, 0.2, np.float32)}, [1, 3, "H", "W"],
                   metadata={CARD_KEY: card.to_json()})
    src = tmp_path / "o.onnx"
    src.write_bytes(m.SerializeToString())
    assert convert_main([src, "--to", "coreml", "--io", "image", "--precision", "fp32", "--tile", "32x32",
                         "--verify-images", "1", "-o", tmp_path / "o.mlpackage"]) == 0
    assert "Core ML I/O 'x' in" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:Output, .* has been renamed")  # coremltools says so of the output
@pytest.mark.parametrize("io", ["tensor", "image"])
@pytest.mark.parametrize("names,want", [(("input.1", "out.1"), ("input_1", "out_1")), (("7", "8"), ("var_7", "var_8")),
                                        (("images", "y"), ("images", "y"))])
def test_feature_names_follow_the_onnx_model(tmp_path, io, names, want):
    """An app addresses the Core ML model by the names the ONNX model had (made valid Core ML names), input
    and output alike; the program still evaluates as converted."""
    rng = np.random.default_rng(2)
    m = make_model([h.make_node("Conv", [names[0], "w"], [names[1]], pads=[1, 1, 1, 1])], {"w": rand(rng, 3, 3, 3, 3)},
                   [1, 3, "H", "W"], out=names[1], inputs=(names[0],))
    path = tmp_path / "n.mlpackage"
    to_coreml(from_onnx(m), path, precision="fp32", tile=(8, 8), io=io)
    assert spec_names(path) == want
    x = rng.random((1, 3, 8, 8)).astype(np.float32)
    want = run_ort(m, x).transpose(0, 3, 1, 2)
    if io == "image":  # pixels in and out, clipped as a picture is
        got = evaluate_mil(_LAST_PROGRAM[str(path)], x * 255) / 255
        np.testing.assert_allclose(got, np.clip(want, 0, 1), atol=1e-4)
    else:
        np.testing.assert_allclose(evaluate_mil(_LAST_PROGRAM[str(path)], x), want, atol=1e-4)


@pytest.mark.parametrize("kw,msg", [({"min_target": "iOS15"}, "iOS16"), ({"io": "pixels"}, "io")])
def test_image_io_bad_options(tmp_path, kw, msg):
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))
    with pytest.raises(ConfigError, match=msg):
        to_coreml(g, tmp_path / "m.mlpackage", tile=(8, 8), **({"io": "image"} | kw))
    assert list(tmp_path.iterdir()) == []


def test_the_cli_takes_a_minimum_deployment_target_and_refuses_what_it_cannot_hold(tmp_path, capsys):
    src = carded_sr_model(tmp_path)
    out = tmp_path / "m15.mlpackage"
    assert convert_main([src, "--to", "coreml", "--tile", "16x16", "--min-target", "iOS15", "--precision", "fp16",
                         "-o", out, "--verify-images", "1"]) == 0
    spec = ct.models.MLModel(str(out), skip_model_load=True).get_spec()
    assert spec.specificationVersion == 6  # iOS15
    # What Xcode shows an app developer: the features and the model described, not blank.
    assert spec.description.input[0].shortDescription == "RGB image, 16x16 (1x3xHxW float, pixels 0..255 as 0..1)"
    assert spec.description.output[0].shortDescription.startswith("the result, 2x the input's size")
    assert spec.description.metadata.shortDescription.startswith("edge-enhance ")
    # Compressed weights need iOS16 ops: coremltools raised the target silently, the app's iOS15 users lost the model.
    for argv, msg in ((["--precision", "palette6"], "palette6 weights are stored with iOS16"),
                      (["--io", "image"], "image output needs iOS16"), (["--to", "tflite"], "applies to --to coreml")):
        bad = tmp_path / "bad.mlpackage"
        argv = [src, "--to", "coreml", "--tile", "16x16", "--min-target", "iOS15", "-o", bad, *argv]
        assert convert_main(argv) == 2
        assert msg in capsys.readouterr().err and not bad.exists()


# --------------------------------------------------------------------------- W8A8
def _steps_apart(a, b):
    """Output values (on the 1/255 grid) that differ, and by how many steps at most."""
    d = np.rint(np.asarray(a, np.float64) * 255) - np.rint(np.asarray(b, np.float64) * 255)
    return float(np.mean(d != 0)), float(np.abs(d).max())


@pytest.mark.parametrize("precision,max_share", [("fp32", 0.0), ("fp16", 0.1)])
def test_w8a8_program_computes_the_int8_simulation(tmp_path, precision, max_share):
    pytest.importorskip("quantization.quantize")
    rng = np.random.default_rng(5)
    g = quantised_graph(residual_sr_model(rng), rng)
    path = tmp_path / "w8a8.mlpackage"
    ops = to_coreml(g, path, precision=precision, tile=(10, 14), min_target="iOS17", w8a8=True)
    prog = _LAST_PROGRAM[str(path)]
    # Every activation the quantiser planned (the input and each node output) is quantised once.
    # coremltools rewrites some pairs exactly (int8 zero point -128 -> uint8 0; an add of equal
    # scales in integer units), so the planned scales (fp16-rounded) are among the program's.
    assert ops.count("quantize") == ops.count("dequantize") == len(g.nodes) + 1
    got = [float(op.inputs["scale"].val) for op in prog.functions["main"].operations if op.op_type == "quantize"]
    for t in [g.inputs[0]] + [n.outputs[0] for n in g.nodes]:
        assert np.isclose(got, g.tensors[t].quant.scale[0], rtol=1e-3, atol=0).any(), t
    packed = [op for op in prog.functions["main"].operations if op.op_type == "constexpr_affine_dequantize"]
    convs = [n for n in g.nodes if n.op == "Conv"]
    assert len(packed) == len(convs) == ops.count("conv")
    for op, n in zip(packed, convs):  # our int8 weights and scales, unchanged by coremltools
        wq = g.tensors[n.inputs[1]].quant
        assert op.inputs["quantized_data"].val.dtype == np.int8
        np.testing.assert_array_equal(op.inputs["quantized_data"].val,
                                      wq.quantize(g.tensors[n.inputs[1]].data).transpose(0, 3, 1, 2))
        np.testing.assert_allclose(decompress_op(op), wq.fake_quantize(g.tensors[n.inputs[1]].data).transpose(0, 3, 1, 2),
                                   rtol=2e-3 if precision == "fp16" else 1e-6, atol=1e-7)  # fp16 scale and product
    x = rng.random((1, 10, 14, 3), dtype=np.float32)
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    y = evaluate_mil(prog, x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    share, steps = _steps_apart(y, sim)
    # fp32: the float64 simulation but for rounding ties; fp16 moves a few ties by one step.
    assert share <= max_share and steps <= 1
    assert ct.models.MLModel(str(path), skip_model_load=True).get_spec().specificationVersion >= 8  # iOS17


def test_numpy_quantize_rounds_like_core_ml():
    # MIL quantize rounds half to even (coremltools' reference); dequantize is (q - zp) * scale.
    from coremltools.converters.mil import Builder as mb

    x = np.array([[-1.5, -0.5, 0.5, 1.5, 2.5, 300.0, -300.0]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=x.shape)], opset_version=ct.target.iOS17)
    def prog(v):
        q = mb.quantize(input=v, scale=np.float32(1.0), zero_point=np.int8(3), output_dtype="int8", name="q")
        return mb.dequantize(input=q, scale=np.float32(0.5), zero_point=np.int8(3), name="d")

    # half away from zero (TFLite, the IR) would give -0.5, 0.5 and 1.5 at -0.5, 0.5 and 2.5
    np.testing.assert_array_equal(evaluate_mil(prog, x), [[-1.0, 0.0, 0.0, 1.0, 1.0, 62.0, -65.5]])


def test_w8a8_refusals(tmp_path):
    pytest.importorskip("quantization.quantize")
    rng = np.random.default_rng(1)
    g = from_onnx(residual_sr_model(rng))
    with pytest.raises(ConfigError, match="Core ML W8A8 needs a quantised graph"):
        to_coreml(g, tmp_path / "m.mlpackage", tile=(8, 8), min_target="iOS17", w8a8=True)
    q = quantised_graph(residual_sr_model(rng), rng)
    with pytest.raises(ConfigError, match="iOS17"):
        to_coreml(q, tmp_path / "m.mlpackage", tile=(8, 8), min_target="iOS16", w8a8=True)
    with pytest.raises(ConfigError, match="weights='palette4'"):
        to_coreml(q, tmp_path / "m.mlpackage", tile=(8, 8), min_target="iOS17", w8a8=True, weights="palette4")
    with pytest.raises(ConfigError, match="coreml only"):
        convert(tmp_path / "m.onnx", "tflite", precision="w8a8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_cli_w8a8_calibrates_writes_and_reports(tmp_path, capsys, monkeypatch):
    pytest.importorskip("quantization.quantize")
    nearest_rounding(monkeypatch)
    src = carded_sr_model(tmp_path)
    assert convert_main([str(src), "--to", "coreml", "--precision", "w8a8", "--calib", str(calib_dir(tmp_path)),
                         "--tile", "24x24", "--verify-images", "2"]) == 0
    out = capsys.readouterr().out
    assert "coreml w8a8 vs IR executor (numpy" in out and "coreml w8a8 vs IR executor int8 simulation" in out
    mm = ct.models.MLModel(str(tmp_path / "sr.mlpackage"), skip_model_load=True)
    got = json.loads(mm.user_defined_metadata[CARD_KEY])
    assert got["activations"] == W8A8_ACTIVATIONS and got["weights"] == WEIGHT_FORMATS["int8"]
    ops = {line.split()[0] for line in out.split("ops in sr.mlpackage:")[1].splitlines()[1:] if line.startswith("  ")}
    assert {"quantize", "dequantize", "constexpr_affine_dequantize", "conv"} <= ops


def test_cli_w8a8_bad_calibration_writes_nothing(tmp_path):
    src = carded_sr_model(tmp_path)
    with pytest.raises(ConfigError, match="calibration folder does not exist"):
        convert(src, "coreml", precision="w8a8", tile=(24, 24), calib=tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="tile"):  # refused before calibrating
        convert(src, "coreml", precision="w8a8", calib=tmp_path / "nowhere")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.onnx"]


# --------------------------------------------------------------------------- sparse weights
@pytest.mark.parametrize("weights,min_target", [("sparse50", "iOS16"), ("sparse75", "iOS18"), ("sparse90", "iOS17")])
def test_sparse_weights_are_our_magnitude_pruning(tmp_path, weights, min_target):
    from quantization.prune import sparsify

    level = SPARSITY[weights]
    rng = np.random.default_rng(4)
    card = ModelCard(name="c", task="sr", scale=2, receptive_field=7)
    g = from_onnx(residual_sr_model(rng, card=card))
    fp, path = tmp_path / "fp.mlpackage", tmp_path / "w.mlpackage"
    to_coreml(g, fp, tile=(8, 8), min_target=min_target)
    ops = to_coreml(g, path, tile=(8, 8), min_target=min_target, weights=weights)
    prog = _LAST_PROGRAM[str(path)]
    packed = _packed(prog)
    assert [op.op_type for op, _ in packed] == ["constexpr_sparse_to_dense"] * 3 and ops.count("conv") == 3
    for _, dense in packed:
        assert abs(np.mean(dense == 0) - level) < 0.01
    # The program computes what quantization.prune.sparsify makes of the float model (fp16 aside).
    x = rand(rng, 1, 3, 8, 8, lo=0, hi=1)
    want = executor.run(sparsify(g, level), {g.inputs[0]: x.transpose(0, 2, 3, 1)})[g.outputs[0]]
    np.testing.assert_allclose(evaluate_mil(prog, x).transpose(0, 2, 3, 1), want, atol=5e-3, rtol=0)
    dense, stored = weight_bytes(prog)
    assert stored <= (1 - level) * dense + dense / 16 + 64  # fp16 non-zeros + a 1-bit mask (+ shapes)
    assert _tree_size(path) < _tree_size(fp)
    mm = ct.models.MLModel(str(path), skip_model_load=True)
    assert json.loads(mm.user_defined_metadata[CARD_KEY])["weights"] == WEIGHT_FORMATS[weights]


# --------------------------------------------------------------------------- precisions x shapes x image I/O
@pytest.mark.parametrize("precision,max_share", [("fp32", 0.0), ("fp16", 0.02)])
def test_w8a8_with_enumerated_shapes_and_image_io(tmp_path, precision, max_share):
    """Symbolic H, W and pixel I/O around the int8 program: at every size, pixels / 255 through
    the quantiser's simulation, x 255, is what the program returns (fp16: a few ties a step off)."""
    pytest.importorskip("quantization.quantize")
    rng = np.random.default_rng(5)
    g = quantised_graph(residual_sr_model(rng), rng)
    path = tmp_path / "w8a8.mlpackage"
    ops = to_coreml(g, path, precision=precision, tile=(10, 14), enumerated_shapes=((16, 12),), io="image",
                    min_target="iOS17", w8a8=True)
    assert ops.count("quantize") == len(g.nodes) + 1 and [o for o in ops if o != "cast"][-1] == "clip"
    desc = _spec_input(path)
    assert [(s.height, s.width) for s in desc.input[0].type.imageType.enumeratedSizes.sizes] == [(10, 14), (16, 12)]
    assert desc.output[0].type.WhichOneof("Type") == "imageType"
    for hw in ((10, 14), (16, 12)):
        px = rng.integers(0, 256, (1, *hw, 3)).astype(np.float32)
        sim = executor.run(g, {g.inputs[0]: px / 255}, simulate_quant=True)[g.outputs[0]]
        y = evaluate_mil(_LAST_PROGRAM[str(path)], px.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
        assert y.shape == (1, 2 * hw[0], 2 * hw[1], 3)
        share, steps = _steps_apart(y / 255, sim)
        assert share <= max_share and steps <= 1, hw


def test_sparse_with_enumerated_shapes_and_image_io(tmp_path):
    from quantization.prune import sparsify

    rng = np.random.default_rng(6)
    g = from_onnx(residual_sr_model(rng))
    path = tmp_path / "s.mlpackage"
    to_coreml(g, path, tile=(8, 8), enumerated_shapes=((12, 10),), io="image", weights="sparse75")
    prog = _LAST_PROGRAM[str(path)]
    assert [op.op_type for op, _ in _packed(prog)] == ["constexpr_sparse_to_dense"] * 3
    for hw in ((8, 8), (12, 10)):
        px = rng.integers(0, 256, (1, *hw, 3)).astype(np.float32)
        want = executor.run(sparsify(g, 0.75), {g.inputs[0]: px / 255})[g.outputs[0]] * 255
        np.testing.assert_allclose(evaluate_mil(prog, px.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1), want,
                                   atol=1.5, rtol=0)  # fp16, in pixel units


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
@pytest.mark.parametrize("precision", ["w8a8", "sparse50"])
def test_cli_quantised_precisions_with_enumerated_shapes_and_image_io(tmp_path, capsys, monkeypatch, precision):
    pytest.importorskip("quantization.quantize")
    nearest_rounding(monkeypatch)
    src = carded_sr_model(tmp_path)
    assert convert_main([src, "--to", "coreml", "--precision", precision, "--calib", calib_dir(tmp_path),
                         "--enumerated-shapes", "24x24,32x28", "--io", "image", "--verify-images", "1"]) == 0
    out = capsys.readouterr().out
    tables = 2 if precision == "w8a8" else 1  # w8a8: also the agreement with the int8 simulation
    assert out.count("image I/O") == tables and out.count("@32x28") == tables
    assert "input sizes: 24x24 (default), 32x28 (enumerated)" in out and ": image in (RGB pixels 0..255" in out
    assert "conv weights:" in out
    card = json.loads(ct.models.MLModel(str(tmp_path / "sr.mlpackage"), skip_model_load=True)
                      .user_defined_metadata[CARD_KEY])
    assert card["io"] == "image" and card["enumerated_shapes"] == [[24, 24], [32, 28]]
    assert card["weights"] == WEIGHT_FORMATS["int8" if precision == "w8a8" else precision]
    assert ("activations" in card) == (precision == "w8a8")


def test_w8a8_image_io_refusals_come_before_calibration(tmp_path):
    src = carded_sr_model(tmp_path)
    with pytest.raises(ConfigError, match="iOS17 / macOS14"):  # iOS16 has image outputs, not quantize ops
        convert(src, "coreml", precision="w8a8", io="image", tile=(24, 24), calib=tmp_path / "nowhere",
                min_target="iOS16")  # not "calibration folder does not exist"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sr.onnx"]


@pytest.mark.parametrize("precision,atol", [("fp32", 1e-5), ("fp16", 5e-3)])
def test_fused_silu_and_batch_norm_evaluate(tmp_path, precision, atol):
    """coremltools fuses x * sigmoid(x) into silu and a per-channel x * s + m that no conv absorbs (a
    de-normalisation after the pixel shuffle) into batch_norm; the numpy check evaluates both."""
    rng = np.random.default_rng(9)
    m = make_model([
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Sigmoid", ["c"], ["s"], name="sig"), h.make_node("Mul", ["c", "s"], ["a"], name="silu"),
        h.make_node("Conv", ["a", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        h.make_node("DepthToSpace", ["c2"], ["d"], blocksize=2, mode="CRD", name="d2s"),
        h.make_node("Mul", ["d", "std"], ["ds"], name="std"), h.make_node("Add", ["ds", "mean"], ["y"], name="mean"),
    ], {"w": rand(rng, 8, 3, 3, 3), "b": rand(rng, 8), "w2": rand(rng, 12, 8, 3, 3), "b2": rand(rng, 12),
        "std": rand(rng, 3, 1, 1, lo=0.2, hi=0.3), "mean": rand(rng, 3, 1, 1, lo=0.4, hi=0.5)}, [1, 3, 8, 6])
    path = tmp_path / "fused.mlpackage"
    to_coreml(from_onnx(m), path, precision=precision, tile=(8, 6))
    prog_ops = {op.op_type for op in _LAST_PROGRAM[str(path)].functions["main"].operations}
    assert {"silu", "batch_norm"} <= prog_ops, prog_ops
    x = rand(rng, 1, 3, 8, 6, lo=0, hi=1)
    # rtol: the fused batch_norm is mean 0, variance 1, epsilon 1e-5, so Core ML itself scales by 1 / sqrt(1 + 1e-5)
    np.testing.assert_allclose(evaluate_mil(_LAST_PROGRAM[str(path)], x).transpose(0, 2, 3, 1), run_ort(m, x),
                               atol=atol, rtol=1e-5)


@pytest.mark.parametrize("shapes", [{"tile": (32, 32)}, {"enumerated_shapes": ((32, 32), (16, 16))}])
def test_a_tile_larger_than_every_image_verifies_on_them_padded(tmp_path, sr_onnx, caplog, shapes):
    """As the runtime runs a fixed-shape model on a small image: reflect-padded up to the tile, its own part kept."""
    from tests.test_conversion_errors import _photos

    with caplog.at_level("WARNING"):
        res = convert(sr_onnx, "coreml", precision="fp32", dataset=_photos(tmp_path / "d", (40, 48), (36, 30)), **shapes)
    rows = res.report.images
    assert [r.image for r in rows[:2]] == ["0.png", "1.png"] and res.report.max_abs_err <= 1e-4
    assert all(r.task_psnr_source is not None for r in rows[:2])
    assert [r.message.startswith("no image is large enough") for r in caplog.records].count(True) == 1


def test_a_card_less_sr_model_is_described_with_the_scale_read_off_its_graph(tmp_path):
    """Xcode showed "the result, the input's size" for the 2x output of an SR net converted without a card."""
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))  # x2, no card
    path = tmp_path / "m.mlpackage"
    to_coreml(g, path, precision="fp32", tile=(8, 8))
    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    assert spec.description.output[0].shortDescription.startswith("the result, 2x the input's size")


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_a_core_ml_conversion_logged_to_a_file_has_no_progress_bars_and_no_numpy_warnings(tmp_path, capsys):
    """In a CI log coremltools' redrawn bars read as noise, and an fp16 overflow's refusal came after numpy's
    "RuntimeWarning: overflow encountered in cast" from the converter's own evaluation."""
    import warnings

    from edge_enhance.cli import main

    rng = np.random.default_rng(4)
    src = tmp_path / "big.onnx"
    src.write_bytes(make_model([h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                               {"w": rand(rng, 3, 3, 3, 3, lo=3000, hi=4000)}, [1, 3, "H", "W"]).SerializeToString())
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        assert main(["convert", str(src), "--to", "coreml", "--precision", "fp16", "--tile", "16x16", "--card-task",
                     "denoise", "--verify-images", "1", "-o", str(tmp_path / "big.mlpackage")]) == 1
    err = capsys.readouterr().err
    assert "Running MIL" not in err and "RuntimeWarning" not in err
    assert err.count("\n") == 1 and "inf / NaN" in err, err
