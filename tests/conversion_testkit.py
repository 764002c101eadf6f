"""Small helpers shared by the conversion tests: build 1-3 node ONNX graphs, run them everywhere."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install edge-enhance[convert])")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install edge-enhance[onnx])")
from onnx import helper as h  # noqa: E402
from onnx import numpy_helper as nh  # noqa: E402

FLOAT = onnx.TensorProto.FLOAT


def ir_version_for(opset: int) -> int:
    return 8 if opset <= 17 else 9 if opset <= 20 else 10


def make_model(nodes, inits: dict, in_shape, *, out="y", opset=13, inputs=("x",), metadata=None):
    """A single-input ONNX model; ``inits`` maps names to numpy arrays."""
    g = h.make_graph(
        nodes, "t", [h.make_tensor_value_info(i, FLOAT, list(in_shape)) for i in inputs],
        [h.make_tensor_value_info(out, FLOAT, [None] * 4)],
        [nh.from_array(np.asarray(v), k) for k, v in inits.items()],
    )
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=ir_version_for(opset))
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    return m


def run_ort(model, x_nchw: np.ndarray) -> np.ndarray:
    """onnxruntime on NCHW input; returns NHWC so it compares with TFLite directly."""
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x_nchw})[0]
    return y.transpose(0, 2, 3, 1)


def run_tflite(path, x_nhwc: np.ndarray, *, details=False):
    Interpreter = pytest.importorskip("ai_edge_litert.interpreter", reason="ai-edge-litert is not installed").Interpreter
    it = Interpreter(model_path=str(path))
    d = it.get_input_details()[0]
    x = x_nhwc
    if d["dtype"] != np.float32:  # quantised I/O: feed on the input's own grid
        s, z = d["quantization"]
        info = np.iinfo(d["dtype"])
        x = np.clip(np.floor(x_nhwc / s + 0.5) + z, info.min, info.max).astype(d["dtype"])
    it.resize_tensor_input(d["index"], list(x.shape))
    it.allocate_tensors()
    it.set_tensor(d["index"], x)
    it.invoke()
    o = it.get_output_details()[0]
    y = it.get_tensor(o["index"])
    if o["dtype"] != np.float32:
        s, z = o["quantization"]
        y = (y.astype(np.float32) - z) * s
    return (y, d, o) if details else y


def rand(rng, *shape, lo=-1.0, hi=1.0):
    return rng.uniform(lo, hi, shape).astype(np.float32)


def residual_sr_model(rng, *, scale=2, feat=12, opset=13, in_shape=(1, 3, "H", "W"), card=None):
    """The bundled models' shape: conv-relu x3 + concat-repeat skip + DepthToSpace + Clip(0, 1).

    Weights are random (a test fixture, not a model): small enough that the residual stays near
    the nearest-upsampled input, so the output range resembles a real SR net's.
    """
    r2 = scale * scale
    w = lambda o, i: rand(rng, o, i, 3, 3, lo=-0.2, hi=0.2)
    inits = {"w1": w(feat, 3), "b1": rand(rng, feat, lo=-0.1, hi=0.1), "w2": w(feat, feat),
             "b2": rand(rng, feat, lo=-0.1, hi=0.1), "w3": rand(rng, 3 * r2, feat, 3, 3, lo=-0.005, hi=0.005),
             "b3": rand(rng, 3 * r2, lo=-0.02, hi=0.02), "lo": np.float32(0), "hi": np.float32(1)}
    nodes = [
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        h.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        h.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        h.make_node("Concat", ["x"] * r2, ["rep"], axis=1, name="repeat"),
        h.make_node("Add", ["c3", "rep"], ["s"], name="residual"),
        h.make_node("DepthToSpace", ["s"], ["d"], blocksize=scale, mode="DCR", name="pixel_shuffle"),
        h.make_node("Clip", ["d", "lo", "hi"], ["y"], name="clamp"),
    ]
    meta = {}
    if card is not None:
        from edge_enhance.card import CARD_KEY

        meta[CARD_KEY] = card.to_json()
    return make_model(nodes, inits, list(in_shape), opset=opset, metadata=meta)


def minmax_calibrate(graph, images_nhwc):
    """Hand-rolled min/max calibration on the IR executor (the quantisation issue does this properly)."""
    from conversion import executor
    from conversion.tflite_writer import affine_from_range, symmetric_per_channel

    lo, hi = {}, {}

    def observe(name, v):
        lo[name] = min(lo.get(name, np.inf), float(v.min()))
        hi[name] = max(hi.get(name, -np.inf), float(v.max()))

    for x in images_nhwc:
        executor.run(graph, {graph.inputs[0]: x}, observer=observe)
    for name in lo:
        graph.tensors[name].quant = affine_from_range(lo[name], hi[name])
    for n in graph.nodes:
        if n.op in ("Conv", "ConvTranspose"):
            t = graph.tensors[n.inputs[1]]
            t.quant = symmetric_per_channel(t.data, 0)
    return graph


def quantised_graph(model, rng):
    """The IR of ``model`` quantised by quantization.quantize (fast settings: min-max ranges,
    nearest rounding), calibrated on four random 12x12 inputs with the float outputs as targets."""
    from conversion import executor
    from conversion.onnx_import import from_onnx
    from quantization.calibration import CalibSet
    from quantization.quantize import quantize_model

    g = from_onnx(model)
    xs = [rng.random((1, 12, 12, 3), dtype=np.float32) for _ in range(4)]
    outs = [executor.run(g, {g.inputs[0]: x})[g.outputs[0]][0] for x in xs]
    targets = [(np.clip(o, 0, 1) * 255).round().astype(np.uint8) for o in outs]
    return quantize_model(g, CalibSet(xs, targets, "test"), method="minmax", rounding="nearest", cle=False,
                          act_eq=False, bias_correction=False, sensitivity=False).graph


def calib_dir(tmp_path):
    """Two random 100x100 PNGs: a calibration folder for the CLIs."""
    from PIL import Image

    d = tmp_path / "calib"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return d


def carded_sr_model(tmp_path):
    """``tmp_path/sr.onnx``: a small SR net with a card (task, scale), as the calibrating CLIs need."""
    from edge_enhance.card import ModelCard

    card = ModelCard(name="q", task="sr", scale=2, receptive_field=7)
    src = tmp_path / "sr.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(2), feat=8, card=card).SerializeToString())
    return src


def nearest_rounding(monkeypatch):
    """The quantiser with nearest weight rounding: the CLIs' GPTQ default takes ~40 s even here."""
    from quantization import quantize

    orig = quantize.quantize_model
    monkeypatch.setattr(quantize, "quantize_model", lambda g, c, **kw: orig(g, c, **{**kw, "rounding": "nearest"}))


def convert_main(argv) -> int:
    """``edge-enhance convert ARGV`` through conversion.cli's own parser (paths may be Paths)."""
    import argparse

    from conversion.cli import add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args([str(a) for a in argv]))


def half_model(m):
    """The model as torch's ``.half()`` exports it: float16 weights, constants, I/O and every float tensor."""
    m = m.__class__.FromString(m.SerializeToString())
    g = m.graph
    for t in [*g.initializer, *(a.t for n in g.node for a in n.attribute if a.HasField("t"))]:
        if t.data_type == FLOAT:
            t.CopyFrom(nh.from_array(nh.to_array(t).astype(np.float16), t.name))
    for vi in [*g.input, *g.output, *g.value_info]:
        if vi.type.tensor_type.elem_type == FLOAT:
            vi.type.tensor_type.elem_type = 10  # FLOAT16
    return m
