"""int8 QDQ ONNX from a quantised IR: onnxruntime vs the IR's simulated int8 inference; the CLI."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper as nh

from tests.conversion_testkit import (calib_dir, convert_main, h, make_model, nearest_rounding,
                                     quantised_graph, rand, residual_sr_model)

from conversion import executor
from conversion.cli import convert
from conversion.errors import ConfigError
from conversion.onnx_import import from_onnx
from conversion.onnx_writer import to_onnx
from conversion.verify import default_dataset
from edge_enhance.card import CARD_KEY

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("quantization.quantize", reason="the quantisation package is not importable")


def _transpose_model(rng):
    return make_model([
        h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Relu", ["c"], ["r"], name="relu"),
        h.make_node("ConvTranspose", ["r", "wt", "bt"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[4, 4],
                    name="up"),
    ], {"w": rand(rng, 6, 3, 3, 3), "b": rand(rng, 6), "wt": rand(rng, 6, 3, 4, 4), "bt": rand(rng, 3)}, [1, 3, "H", "W"])


def _run(path, x_nhwc, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x_nhwc.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)


@pytest.mark.parametrize("net", ["sr_x2", "sr_x3", "conv_transpose", "half_res"])
def test_qdq_matches_simulated_int8(tmp_path, net):
    from tests.onnx_models import half_res_denoise

    rng = np.random.default_rng(5)
    if net == "half_res":  # the stride-2 4x4 conv, DepthToSpace and the input skip
        model = half_res_denoise(layers=1, seed=5)
    else:
        model = _transpose_model(rng) if net == "conv_transpose" else residual_sr_model(rng, scale=int(net[-1]))
    g = quantised_graph(model, rng)
    path = tmp_path / "q.onnx"
    to_onnx(g, path, precision="int8")
    m = onnx.load(str(path))
    inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    convs = [n for n in g.nodes if n.op in ("Conv", "ConvTranspose")]
    for n in convs:  # int8 weights per output channel, zero point 0; int32 bias at s_in * s_w
        w = n.inputs[1]
        assert inits[w + "_q"].dtype == np.int8 and not inits[w + "_zp"].any()
        axis = 0 if n.op == "Conv" else 1
        assert inits[w + "_scale"].size == inits[w + "_q"].shape[axis] > 1
        dq = next(d for d in m.graph.node if d.output[0] == w)
        assert [a.i for a in dq.attribute if a.name == "axis"] == [axis]
        assert inits[n.inputs[2] + "_q"].dtype == np.int32
        np.testing.assert_allclose(inits[n.inputs[2] + "_scale"],
                                   g.tensors[n.inputs[0]].quant.scale[0] * g.tensors[w].quant.scale, rtol=1e-6)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") == len(g.nodes) + 1  # every activation, the input included
    x = rng.random((1, 10, 14, 3), dtype=np.float32)
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    step = g.tensors[g.outputs[0]].quant.scale[0]
    # Unfused (float32 kernels between Q/DQ) is the float64 simulation but for rare rounding ties
    # (one step); fused integer kernels may round accumulators differently: a couple of steps.
    err = np.abs(_run(path, x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL) - sim)
    assert err.max() <= 1.01 * step and np.mean(err > 0.01 * step) < 0.01
    fused = np.abs(_run(path, x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL) - sim).max()
    if net == "conv_transpose" and fused > 2.01 * step:
        # onnxruntime 1.31 CPU: with QDQSelectorActionTransformer on, QLinearConv -> DQ -> ConvTranspose
        # is off by up to ~22 steps although every node agrees when an intermediate is exposed; the
        # unfused graph above is exact. Once onnxruntime is fixed this passes the assert below.
        pytest.xfail(f"onnxruntime QDQ fusion before ConvTranspose: {fused / step:.1f} steps off")
    assert fused <= 2.01 * step


def test_onnx_runtime_runs_every_conv_of_a_residual_qdq_model_in_integers(tmp_path):
    """The residual's input feeds the first Conv and the repeat Concat. With int8 activations, ONNX Runtime's
    int8 -> uint8 rewrite missed the graph input's Q / DQ and left that first Conv in float; uint8
    activations (the same values: zero point + 128) are its own layout, and every Conv fuses."""
    rng = np.random.default_rng(7)
    g = quantised_graph(residual_sr_model(rng), rng)
    path = tmp_path / "q.onnx"
    to_onnx(g, path, precision="int8")
    m = onnx.load(str(path))
    inits = {i.name: nh.to_array(i) for i in m.graph.initializer}
    acts = [n.input[2] for n in m.graph.node if n.op_type == "QuantizeLinear"]
    assert acts and all(inits[z].dtype == np.uint8 for z in acts)
    assert inits[g.inputs[0] + "_act_zp"] == g.tensors[g.inputs[0]].quant.zero_point[0] + 128
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]
    assert "Conv" not in ops and ops.count("QLinearConv") == 3, ops


def test_unquantised_graph_is_refused(tmp_path):
    g = from_onnx(residual_sr_model(np.random.default_rng(1)))
    with pytest.raises(ConfigError, match="quantised graph"):
        to_onnx(g, tmp_path / "q.onnx", precision="int8")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not default_dataset().is_dir(), reason="evaluation images not found")
def test_cli_onnx_int8(tmp_path, capsys, monkeypatch):
    from edge_enhance.card import ModelCard

    nearest_rounding(monkeypatch)
    src = tmp_path / "sr.onnx"  # a card with the float network's measured PSNR, as the bundled models have
    card = ModelCard(name="q", task="sr", scale=2, receptive_field=7, extra={"psnr": {"Set5": 30.5}})
    src.write_bytes(residual_sr_model(np.random.default_rng(2), feat=8, card=card).SerializeToString())
    assert convert_main([str(src), "--to", "onnx", "--precision", "int8", "--calib", str(calib_dir(tmp_path)),
                         "--verify-images", "1"]) == 0
    out = tmp_path / "sr_int8.onnx"
    m = onnx.load(str(out))
    assert "QuantizeLinear" in {n.op_type for n in m.graph.node}
    got = ModelCard.from_json(next(p.value for p in m.metadata_props if p.key == CARD_KEY))
    # The int8 file does not claim the float network's figure as its own.
    assert "psnr" not in got.extra and got.extra["psnr_fp32"] == {"Set5": 30.5}
    assert got.extra["quantization"]["precision"] == "int8"
    assert "psnr" in capsys.readouterr().out.lower()


def test_cli_onnx_int8_needs_a_card(tmp_path):
    src = tmp_path / "sr.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(2)).SerializeToString())
    with pytest.raises(ConfigError, match="model card"):
        convert(src, "onnx", precision="int8", calib=calib_dir(tmp_path))
    assert not (tmp_path / "sr_int8.onnx").exists()
