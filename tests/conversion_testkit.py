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
