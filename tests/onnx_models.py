"""Small ONNX networks built in the tests, with a known receptive field (test fixtures, not models)."""
from __future__ import annotations

import json

import numpy as np


def residual_sr(path, *, scale: int = 2, layers: int = 3, channels: int = 8, seed: int = 0,
                card: dict | None = None, fixed: tuple[int, int] | None = None, name: str = "test-sr"):
    """conv3x3+ReLU x layers -> conv3x3 to 3*s*s, + input repeated s*s times, DepthToSpace(DCR), Clip.

    Receptive field: 2 * (layers + 1) + 1 input pixels. Returns the card dict written.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    s2 = scale * scale
    nodes, inits = [], []
    prev, cin = "x", 3
    for i in range(layers + 1):
        cout = channels if i < layers else 3 * s2
        w = (rng.standard_normal((cout, cin, 3, 3)) * (0.5 / np.sqrt(cin * 9))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        prev = f"c{i}"
        if i < layers:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
        cin = cout
    if scale > 1:
        # DCR order: output channel (dy*s + dx)*3 + c reads colour c, so the input repeated s*s times.
        nodes.append(helper.make_node("Concat", ["x"] * s2, ["xr"], axis=1))
        nodes.append(helper.make_node("Add", [prev, "xr"], ["sum"]))
        nodes.append(helper.make_node("DepthToSpace", ["sum"], ["d2s"], blocksize=scale, mode="DCR"))
        prev = "d2s"
    else:
        nodes.append(helper.make_node("Add", [prev, "x"], ["sum"]))
        prev = "sum"
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(1, np.float32), "hi")]
    nodes.append(helper.make_node("Clip", [prev, "lo", "hi"], ["y"]))
    h, w = fixed if fixed else ("h", "w")
    oh, ow = (h * scale, w * scale) if fixed else ("oh", "ow")
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, oh, ow])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is None:
        card = {"name": name, "task": "sr" if scale > 1 else "denoise", "scale": scale,
                "receptive_field": 2 * (layers + 1) + 1, "layout": "nchw",
                "base": "nearest" if scale > 1 else "identity"}
    if card:
        helper.set_model_props(model, {"edge_enhance.card": json.dumps(card)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return card
