"""Numpy reference executor for the IR (NHWC, TFLite semantics), float or fake-quantised.

Used to verify importers and writers, and by quantisation to observe activation ranges
(``observer``) and to simulate int8 inference (``simulate_quant=True`` rounds every tensor that
carries :class:`~conversion.ir.QuantParams`, weights included, to its grid).

>>> from conversion.ir import Graph
>>> g = Graph(); x = g.add_input("x", (1, 1, 2, 1))
>>> g.mark_output(g.add_node("Clip", [x], min=0.0, max=1.0))
>>> run(g, {"x": np.array([-1.0, 2.0]).reshape(1, 1, 2, 1)})[g.outputs[0]].ravel().tolist()
[0.0, 1.0]
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError
from .ir import Graph, Node


def _act(y: np.ndarray, act: str) -> np.ndarray:
    if act == "relu":
        return np.maximum(y, 0)
    if act == "relu6":
        return np.clip(y, 0, 6)
    if act == "relu_n1_to_1":
        return np.clip(y, -1, 1)
    return y


def conv2d(x, w, b, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1):
    """x NHWC, w OHWI (I = C/group), b [O] -> NHWC, accumulated in float64."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    w = np.asarray(w, np.float64)
    o, kh, kw, ig = w.shape
    n, h, wd, c = x.shape
    (sh, sw), (dh, dw) = strides, dilations
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (wd - (kw - 1) * dw - 1) // sw + 1
    og = o // group
    y = np.zeros((n, oh, ow, o))
    for ky in range(kh):
        for kx in range(kw):
            patch = x[:, ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw, :]
            for gi in range(group):
                y[..., gi * og:(gi + 1) * og] += patch[..., gi * ig:(gi + 1) * ig] @ w[gi * og:(gi + 1) * og, ky, kx, :].T
    return y + np.asarray(b, np.float64)


def conv_transpose2d(x, w, b, strides=(1, 1), pads=(0, 0, 0, 0), output_padding=(0, 0)):
    """x NHWC, w OHWI -> NHWC; ONNX ConvTranspose semantics with group 1."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, _ = x.shape
    o, kh, kw, _ = w.shape
    sh, sw = strides
    fh, fw = (h - 1) * sh + kh + output_padding[0], (wd - 1) * sw + kw + output_padding[1]
    full = np.zeros((n, fh, fw, o))
    for ky in range(kh):
        for kx in range(kw):
            full[:, ky: ky + (h - 1) * sh + 1: sh, kx: kx + (wd - 1) * sw + 1: sw, :] += x @ w[:, ky, kx, :].T
    pt, pl, pb, pr = pads
    return full[:, pt: fh - pb, pl: fw - pr, :] + np.asarray(b, np.float64)


def depth_to_space(x, r):
    n, h, w, c = x.shape
    co = c // (r * r)
    return x.reshape(n, h, w, r, r, co).transpose(0, 1, 3, 2, 4, 5).reshape(n, h * r, w * r, co)


def _coords(out_size, in_size, align_corners, half_pixel):
    scale = (in_size - 1) / (out_size - 1) if align_corners and out_size > 1 else in_size / out_size
    y = np.arange(out_size, dtype=np.float64)
    return (y + 0.5) * scale - 0.5 if half_pixel else y * scale, scale


def resize(x, size, mode, align_corners=False, half_pixel_centers=False):
    """TFLite RESIZE_NEAREST_NEIGHBOR / RESIZE_BILINEAR on NHWC."""
    _, h, w, _ = x.shape
    oh, ow = size
    if mode == "nearest":
        def idx(o, i):
            scale = (i - 1) / (o - 1) if align_corners and o > 1 else i / o
            v = np.arange(o, dtype=np.float64)
            if align_corners:
                r = np.round(v * scale)
            else:
                r = np.floor((v + (0.5 if half_pixel_centers else 0.0)) * scale)
            return np.clip(r, 0, i - 1).astype(np.int64)
        return x[:, idx(oh, h)][:, :, idx(ow, w)]
    ys, _ = _coords(oh, h, align_corners, half_pixel_centers)
    xs, _ = _coords(ow, w, align_corners, half_pixel_centers)
    y0 = np.floor(ys)
    x0 = np.floor(xs)
    y0i, y1i = np.clip(y0, 0, h - 1).astype(int), np.clip(np.ceil(ys), 0, h - 1).astype(int)
    x0i, x1i = np.clip(x0, 0, w - 1).astype(int), np.clip(np.ceil(xs), 0, w - 1).astype(int)
    # TFLite measures the fraction from the clamped lower index.
    fy = (ys - np.maximum(y0, 0))[None, :, None, None]
    fx = (xs - np.maximum(x0, 0))[None, None, :, None]
    xd = np.asarray(x, np.float64)
    top = xd[:, y0i][:, :, x0i] * (1 - fx) + xd[:, y0i][:, :, x1i] * fx
    bot = xd[:, y1i][:, :, x0i] * (1 - fx) + xd[:, y1i][:, :, x1i] * fx
    return top * (1 - fy) + bot * fy


def resize_size(node: Node, in_shape) -> tuple:
    a = node.attrs
    if a["size"] is not None:
        return tuple(a["size"])
    return tuple(int(np.floor(d * s + 1e-9)) for d, s in zip(in_shape[1:3], a["scales"]))


def eval_node(node: Node, args: list) -> np.ndarray:
    a, op = node.attrs, node.op
    if op == "Conv":
        y = conv2d(args[0], args[1], args[2], a["strides"], a["dilations"], a["pads"], a["group"])
        return _act(y, a["activation"])
    if op == "ConvTranspose":
        y = conv_transpose2d(args[0], args[1], args[2], a["strides"], a["pads"], a["output_padding"])
        return _act(y, a["activation"])
    if op == "Add":
        return _act(np.add(args[0], args[1], dtype=np.float64), a["activation"])
    if op == "Mul":
        return _act(np.multiply(args[0], args[1], dtype=np.float64), a["activation"])
    if op == "Concat":
        return np.concatenate(args, axis=a["axis"])
    if op == "Relu":
        return np.maximum(args[0], 0)
    if op == "PRelu":
        return np.where(args[0] >= 0, args[0], args[0] * args[1])
    if op == "LeakyRelu":
        return np.where(args[0] >= 0, args[0], args[0] * a["alpha"])
    if op == "Clip":
        lo = -np.inf if a["min"] is None else a["min"]
        hi = np.inf if a["max"] is None else a["max"]
        return np.clip(args[0], lo, hi)
    if op == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-np.asarray(args[0], np.float64)))
    if op == "Tanh":
        return np.tanh(np.asarray(args[0], np.float64))
    if op == "Pad":
        pt, pl, pb, pr = a["pads"]
        return np.pad(args[0], ((0, 0), (pt, pb), (pl, pr), (0, 0)), mode=a["mode"])  # constant / reflect / edge
    if op == "Minimum":
        return np.minimum(args[0], args[1])
    if op == "Maximum":
        return np.maximum(args[0], args[1])
    if op == "DepthToSpace":
        return depth_to_space(args[0], a["block_size"])
    if op == "Resize":
        return resize(args[0], resize_size(node, args[0].shape), a["mode"], a["align_corners"], a["half_pixel_centers"])
    raise ConfigError(f"executor: no kernel for op {op!r} (node {node.name})")


def run(graph: Graph, feeds: dict, *, simulate_quant: bool = False, observer=None, keep_all: bool = False) -> dict:
    """Evaluate ``graph`` on ``feeds`` (name -> NHWC float array); returns the outputs by name.

    ``observer(tensor_name, array)`` is called for every input and node output (calibration).
    ``simulate_quant`` fake-quantises every tensor that has quantisation parameters.
    """
    env = {}
    for name in graph.inputs:
        if name not in feeds:
            raise ConfigError(f"executor: missing input {name!r}")
        env[name] = np.asarray(feeds[name], np.float32)

    def value(name):
        if name in env:
            return env[name]
        t = graph.tensors[name]
        if t.data is None:
            raise ConfigError(f"executor: tensor {name!r} is used before it is computed")
        v = t.data.astype(np.float32) if t.data.dtype.kind == "f" else t.data
        if simulate_quant and t.quant is not None and t.quant.dtype != "int32":
            v = t.quant.fake_quantize(v)
        return v

    def put(name, v):
        v = np.asarray(v, np.float32)
        q = graph.tensors[name].quant
        if simulate_quant and q is not None:
            v = q.fake_quantize(v)
        env[name] = v
        if observer is not None:
            observer(name, v)

    for name in graph.inputs:
        put(name, env[name])
    for node in graph.nodes:
        put(node.outputs[0], eval_node(node, [value(i) for i in node.inputs]))
    if keep_all:
        return env
    return {o: env[o] for o in graph.outputs}
