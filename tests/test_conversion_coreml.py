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


def _ops_model(rng):
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
        "k": np.float32(0.8)}, [1, 3, 8, 6])


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
