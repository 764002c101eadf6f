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
    _LAST_PROGRAM, SPARSITY, W8A8_ACTIVATIONS, WEIGHT_FORMATS, decompress_op, evaluate_mil, kmeans_lut, to_coreml,
    weight_bytes)
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
