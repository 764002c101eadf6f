"""Small ONNX networks built in the tests, with a known receptive field (test fixtures, not models)."""
from __future__ import annotations

import json

import numpy as np


def residual_sr(path, *, scale: int = 2, layers: int = 3, channels: int = 8, seed: int = 0,
                card: dict | None = None, fixed: tuple[int, int] | None = None, name: str = "test-sr",
                colours: int = 3):
    """conv3x3+ReLU x layers -> conv3x3 to C*s*s, + input repeated s*s times, DepthToSpace(DCR), Clip.

    ``colours`` C: 3 (RGB), or 1 for a luma model (card colour "y").
    Receptive field: 2 * (layers + 1) + 1 input pixels. Returns the card dict written.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    s2 = scale * scale
    nodes, inits = [], []
    prev, cin = "x", colours
    for i in range(layers + 1):
        cout = channels if i < layers else colours * s2
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
        # DCR order: output channel (dy*s + dx)*C + c reads colour c, so the input repeated s*s times.
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
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, colours, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, colours, oh, ow])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is None:
        card = {"name": name, "task": "sr" if scale > 1 else "denoise", "scale": scale,
                "receptive_field": 2 * (layers + 1) + 1, "layout": "nchw",
                "base": "nearest" if scale > 1 else "identity"}
        if colours == 1:
            card["colour"] = "y"
    if card:
        helper.set_model_props(model, {"edge_enhance.card": json.dumps(card)})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return card


def half_res_denoise(path=None, *, channels: int = 8, layers: int = 2, seed: int = 0, card: dict | None = None,
                     fixed: tuple[int, int] | None = None, name: str = "test-half-res"):
    """The half-resolution (FFDNet / mobile) shape: Conv 4x4 stride 2 pads 1 + ReLU, (Conv 3x3 + ReLU)
    x layers, Conv 3x3 to 12, DepthToSpace(2, DCR), + input, Clip(0, 1); opset 17. Returns the model
    (also saved to ``path`` if given).

    Needs even H and W, and commutes with even shifts only: card align 2. Output pixel p = 2q + d
    reads half-res q, which reads inputs 2q-1..2q+2 through the strided conv and 2 more each way per
    3x3 conv (layers + 1 of them): radius 2 * (layers + 2), receptive field 4 * layers + 9.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = lambda o, i, k, a: (rng.standard_normal((o, i, k, k)) * (a / np.sqrt(i * k * k))).astype(np.float32)
    b = lambda o: (rng.standard_normal(o) * 0.01).astype(np.float32)
    inits = [numpy_helper.from_array(w(channels, 3, 4, 1.0), "w0"), numpy_helper.from_array(b(channels), "b0")]
    nodes = [helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], kernel_shape=[4, 4], strides=[2, 2],
                              pads=[1, 1, 1, 1], name="down"),
             helper.make_node("Relu", ["c0"], ["r0"])]
    prev = "r0"
    for i in range(1, layers + 2):
        last = i == layers + 1
        cout = 12 if last else channels
        inits += [numpy_helper.from_array(w(cout, channels, 3, 0.1 if last else 1.0), f"w{i}"),
                  numpy_helper.from_array(b(cout), f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3],
                                      pads=[1, 1, 1, 1]))
        prev = f"c{i}"
        if not last:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"]))
            prev = f"r{i}"
    inits += [numpy_helper.from_array(np.array(0, np.float32), "lo"),
              numpy_helper.from_array(np.array(1, np.float32), "hi")]
    nodes += [helper.make_node("DepthToSpace", [prev], ["d2s"], blocksize=2, mode="DCR"),
              helper.make_node("Add", ["input", "d2s"], ["sum"]),
              helper.make_node("Clip", ["sum", "lo", "hi"], ["output"])]
    h, w_ = fixed if fixed else ("h", "w")
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, h, w_])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, h, w_])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if card is None:
        card = {"name": name, "task": "denoise", "scale": 1, "receptive_field": 4 * layers + 9, "layout": "nchw",
                "base": "identity", "align": 2}
    if card:
        helper.set_model_props(model, {"edge_enhance.card": json.dumps(card)})
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model
