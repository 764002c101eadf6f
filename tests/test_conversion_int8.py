"""Full-integer int8 TFLite from quantisation params carried on the IR (hand-computed min/max)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conversion_testkit import h, make_model, minmax_calibrate, rand, residual_sr_model, run_tflite

from conversion import executor
from conversion.errors import ConfigError
from conversion.ir import QuantParams
from conversion.onnx_import import from_onnx
from conversion.tflite_writer import apply_int8_constraints, tflite_ops, to_tflite


def _images(rng, n, hh, ww):
    return [rng.uniform(0, 1, (1, hh, ww, 3)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("io", ["float", "uint8", "int8"])
@pytest.mark.parametrize("scale", [2, 3])
def test_int8_sr_net_matches_simulation(tmp_path, io, scale):
    rng = np.random.default_rng(10 * scale + len(io))
    g = from_onnx(residual_sr_model(rng, scale=scale))
    minmax_calibrate(g, _images(rng, 4, 12, 10))
    g.tensors[g.inputs[0]].quant = QuantParams([1 / 255], [-128])  # uint8 pixels map exactly
    apply_int8_constraints(g)
    path = to_tflite(g, tmp_path / "q.tflite", precision="int8", io=io, tile=(12, 10))
    ops = tflite_ops(path)
    assert "TRANSPOSE" not in ops and "DEQUANTIZE" not in ops[1:-1]
    x = np.round(rng.uniform(0, 1, (1, 12, 10, 3)) * 255).astype(np.float32) / 255
    y, din, dout = run_tflite(path, x, details=True)
    want = {"float": np.float32, "uint8": np.uint8, "int8": np.int8}[io]
    assert din["dtype"] == want and dout["dtype"] == want
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    flt = executor.run(g, {g.inputs[0]: x})[g.outputs[0]]
    step = float(g.tensors[g.outputs[0]].quant.scale[0])
    # The integer kernels round once more than the fake-quant simulation: within a few steps.
    assert np.abs(y - sim).max() <= 3 * step + 1e-6
    assert np.abs(y - flt).max() < 0.05
    # Op versions as TFLite's op_version.cc gives them (delegates gate on them): QUANTIZE to an 8-bit type is
    # v1 (v2 is int16 output; it was written v2), DEQUANTIZE from int8 v2.
    import tflite

    m = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    versions = {names[m.OperatorCodes(i).BuiltinCode()]: m.OperatorCodes(i).Version()
                for i in range(m.OperatorCodesLength())}
    assert versions.get("QUANTIZE", 1) == 1 and versions.get("DEQUANTIZE", 2) == 2, versions


@pytest.mark.parametrize("out_range,dropped", [((0.0, 1.0), True), ((-0.2, 1.2), False)])
def test_a_final_clip_that_cannot_cut_is_not_written(tmp_path, out_range, dropped):
    """A residual net's Clip(0, 1) on a tensor quantised to 0..1 passes every level: written, it was a
    RELU_0_TO_1 at the graph's end that many NPU delegates lack. It goes, and the output keeps its name;
    a clip that does cut (the tensor's grid reaches past 0..1) stays."""
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
    rng = np.random.default_rng(5)
    g = from_onnx(residual_sr_model(rng))
    minmax_calibrate(g, _images(rng, 4, 12, 10))
    g.tensors[g.inputs[0]].quant = QuantParams([1 / 255], [-128])
    clip = next(n for n in g.nodes if n.op == "Clip")
    lo, hi = out_range
    for t in (g.producer(clip.inputs[0]).inputs[0], clip.inputs[0], clip.outputs[0]):  # Add -> DepthToSpace -> Clip
        g.tensors[t].quant = QuantParams([(hi - lo) / 255], [int(round(-128 - lo * 255 / (hi - lo)))])
    apply_int8_constraints(g)
    path = to_tflite(g, tmp_path / "q.tflite", precision="int8", io="uint8", tile=(12, 10))
    assert ("RELU_0_TO_1" not in tflite_ops(path)) == dropped
    it = Interpreter(model_path=str(path))
    assert (it.get_input_details()[0]["name"], it.get_output_details()[0]["name"]) == (g.inputs[0], g.outputs[0])
    x = np.round(rng.uniform(0, 1, (1, 12, 10, 3)) * 255).astype(np.float32) / 255
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    assert np.abs(run_tflite(path, x) - sim).max() <= 3 * (hi - lo) / 255 + 1e-6
    assert [n.op for n in g.nodes].count("Clip") == 1  # the caller's graph is left as it was


def test_io_tensor_names_are_the_sources_in_every_build(tmp_path):
    """An app that binds tensors by name (NNAPI, Arm NN, C code) keeps working when the build changes."""
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
    rng = np.random.default_rng(6)
    g = from_onnx(residual_sr_model(rng))
    fp = to_tflite(g, tmp_path / "f.tflite", tile=(12, 10))
    minmax_calibrate(g, _images(rng, 2, 12, 10))
    apply_int8_constraints(g)
    for path in [fp] + [to_tflite(g, tmp_path / f"{io}.tflite", precision="int8", io=io, tile=(12, 10))
                        for io in ("float", "uint8", "int8")]:
        it = Interpreter(model_path=str(path))
        assert [d["name"] for d in it.get_input_details() + it.get_output_details()] == ["x", "y"], path.name


@pytest.mark.parametrize("out_q,pixels", [(([1 / 255], [-128]), True), (([0.0042], [-117]), False)])
def test_the_summary_says_how_integer_io_maps_to_pixels(tmp_path, caplog, capsys, out_q, pixels):
    """An app blitting a uint8 output straight to a bitmap needs it on the pixel grid: convert says
    whether it is, warns where it is not, and `info` reads the same from the file."""
    pytest.importorskip("ai_edge_litert")
    from conversion.cli import tflite_notes
    from edge_enhance.cli import main

    rng = np.random.default_rng(7)
    g = from_onnx(residual_sr_model(rng))
    minmax_calibrate(g, _images(rng, 2, 12, 10))
    g.tensors[g.inputs[0]].quant = QuantParams([1 / 255], [-128])
    apply_int8_constraints(g)
    g.tensors[g.outputs[0]].quant = QuantParams(*out_q)
    path = to_tflite(g, tmp_path / "q.tflite", precision="int8", io="uint8")
    with caplog.at_level("WARNING"):
        notes = tflite_notes(path)
    assert notes[0] == ("TFLite input 'x' uint8 [1, -1, -1, 3]: the pixel value itself (scale 0.00392157, "
                        "zero point 0)")
    if pixels:
        assert notes[1].endswith("'y' uint8 [1, -1, -1, 3]: the pixel value itself (scale 0.00392157, zero point 0)")
        assert not caplog.records
    else:
        assert notes[1].endswith("pixel = 1.071 * q - 11.781 (scale 0.0042, zero point 11; not the pixel value, "
                                 "convert it)")
        assert "q.tflite: the integer output is not on the pixel grid" in caplog.text
        tflite_notes(path, tmp_path / "app.tflite")  # written to a temporary name first: the warning names the output
        assert "app.tflite: the integer output is not on the pixel grid" in caplog.text
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"io: {notes[1].removeprefix('TFLite ')}" in out


def test_int8_io_is_said_to_be_the_pixel_minus_128_without_a_warning(tmp_path, caplog):
    pytest.importorskip("ai_edge_litert")
    from conversion.cli import tflite_notes

    rng = np.random.default_rng(7)
    g = from_onnx(residual_sr_model(rng))
    minmax_calibrate(g, _images(rng, 2, 12, 10))
    for t in (g.inputs[0], g.outputs[0]):
        g.tensors[t].quant = QuantParams([1 / 255], [-128])
    apply_int8_constraints(g)
    path = to_tflite(g, tmp_path / "q.tflite", precision="int8", io="int8")
    with caplog.at_level("WARNING"):
        notes = tflite_notes(path)
    assert notes[0].endswith("'x' int8 [1, -1, -1, 3]: the pixel value minus 128 (scale 0.00392157, zero point -128)")
    assert notes[1].endswith("'y' int8 [1, -1, -1, 3]: the pixel value minus 128 (scale 0.00392157, zero point -128)")
    assert not caplog.records


def test_int8_per_channel_weights_and_int32_bias(tmp_path):
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
    rng = np.random.default_rng(3)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")],
                   {"w": rand(rng, 4, 3, 3, 3) * np.array([1, 10, 0.1, 3], np.float32).reshape(4, 1, 1, 1),
                    "b": rand(rng, 4)}, [1, 3, 6, 6])
    g = minmax_calibrate(from_onnx(m), _images(rng, 2, 6, 6))
    path = to_tflite(g, tmp_path / "c.tflite", precision="int8", io="int8")
    it = Interpreter(str(path))
    it.allocate_tensors()
    by_name = {d["name"]: d for d in it.get_tensor_details()}
    w, b = by_name["conv_w"], by_name["conv_b"]
    assert w["dtype"] == np.int8 and b["dtype"] == np.int32
    ws = w["quantization_parameters"]["scales"]
    assert len(ws) == 4 and ws[1] / ws[2] > 50  # per output channel
    in_s = by_name["x"]["quantization_parameters"]["scales"][0]
    np.testing.assert_allclose(b["quantization_parameters"]["scales"], in_s * ws, rtol=1e-6)


def test_int8_ops_coverage(tmp_path):
    """PRelu, LeakyRelu, Sigmoid, Clip, Min/Max, Resize, Concat of differently scaled inputs."""
    rng = np.random.default_rng(5)
    c = 4
    m = make_model([
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("PRelu", ["c", "slope"], ["p"], name="prelu"),
        h.make_node("LeakyRelu", ["p"], ["l"], alpha=0.1, name="leaky"),
        h.make_node("Sigmoid", ["l"], ["s"], name="sig"),
        h.make_node("Concat", ["s", "c"], ["cat"], axis=1, name="cat"),
        h.make_node("Clip", ["cat", "lo", "hi"], ["cl"], name="clip"),
        h.make_node("Max", ["cl", "k"], ["mx"], name="max"),
        h.make_node("Resize", ["mx", "", "sc"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel",
                    name="up"),
    ], {"w": rand(rng, c, 3, 3, 3), "b": rand(rng, c), "slope": rand(rng, c, 1, 1, lo=0, hi=0.4),
        "lo": np.float32(-0.5), "hi": np.float32(0.8), "k": np.float32(-0.2), "sc": np.array([1, 1, 2, 2], np.float32)},
        [1, 3, 7, 5])
    g = minmax_calibrate(from_onnx(m), _images(rng, 3, 7, 5))
    path = to_tflite(g, tmp_path / "ops.tflite", precision="int8", io="float")
    ops = tflite_ops(path)
    for op in ("PRELU", "LEAKY_RELU", "LOGISTIC", "CONCATENATION", "MAXIMUM", "MINIMUM", "RESIZE_BILINEAR"):
        assert op in ops
    x = rng.uniform(0, 1, (1, 7, 5, 3)).astype(np.float32)
    y = run_tflite(path, x)
    flt = executor.run(g, {g.inputs[0]: x})[g.outputs[0]]
    assert np.abs(y - flt).max() < 0.05


def test_int8_tanh_has_the_kernel_fixed_output_grid(tmp_path):
    """ESPCN's activation: TFLite's int8 TANH needs output scale 1/128, zero point 0."""
    rng = np.random.default_rng(6)
    m = make_model([
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[2, 2, 2, 2], name="conv"),
        h.make_node("Tanh", ["c"], ["t"], name="tanh"),
        h.make_node("Conv", ["t", "w2", "b2"], ["y"], pads=[1, 1, 1, 1], name="conv2"),
    ], {"w": rand(rng, 6, 3, 5, 5), "b": rand(rng, 6), "w2": rand(rng, 3, 6, 3, 3, lo=-0.3, hi=0.3), "b2": rand(rng, 3)},
        [1, 3, 9, 8])
    g = minmax_calibrate(from_onnx(m), _images(rng, 3, 9, 8))
    path = to_tflite(g, tmp_path / "tanh.tflite", precision="int8", io="float")
    assert "TANH" in tflite_ops(path)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    q = {d["name"]: d["quantization"] for d in it.get_tensor_details()}
    assert q[g.nodes[1].outputs[0]] == (1 / 128, 0)
    x = rng.uniform(0, 1, (1, 9, 8, 3)).astype(np.float32)
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    step = float(g.tensors[g.outputs[0]].quant.scale[0])  # TANH's table rounds apart from tanh by a step
    assert np.abs(run_tflite(path, x) - sim).max() <= 1.01 * step


def test_int8_without_params_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(1)
    g = from_onnx(residual_sr_model(rng))
    with pytest.raises(ConfigError, match="calibrate"):
        to_tflite(g, tmp_path / "q.tflite", precision="int8")
    assert not list(tmp_path.iterdir())


def test_int8_d2s_as_transpose_conv(tmp_path):
    rng = np.random.default_rng(11)
    g = from_onnx(residual_sr_model(rng, scale=2))
    minmax_calibrate(g, _images(rng, 3, 8, 8))
    apply_int8_constraints(g)
    path = to_tflite(g, tmp_path / "q.tflite", precision="int8", io="float", tile=(8, 8), d2s_as_transpose_conv=True)
    assert "TRANSPOSE_CONV" in tflite_ops(path) and "DEPTH_TO_SPACE" not in tflite_ops(path)
    x = rng.uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    step = float(g.tensors[g.outputs[0]].quant.scale[0])
    assert np.abs(run_tflite(path, x) - sim).max() <= 3 * step + 1e-6
