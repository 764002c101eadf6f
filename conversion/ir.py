"""A small typed NHWC graph IR: what every importer produces and every writer consumes.

Activations are NHWC; constant weights are stored in the layout TFLite wants, so writers only
re-pack bytes:

* ``Conv``           inputs ``[x, w, b]``; ``w`` is OHWI with I = C_in / group; attrs ``strides``,
                     ``dilations``, ``pads`` (top, left, bottom, right), ``group``, ``activation``.
* ``ConvTranspose``  inputs ``[x, w, b]``; ``w`` is OHWI; attrs ``strides``, ``pads``,
                     ``output_padding``, ``activation``.
* ``Add`` / ``Mul``  inputs ``[a, b]`` (numpy broadcasting, NHWC); attr ``activation``.
* ``Concat``         attr ``axis`` (NHWC axis).
* ``Relu``, ``Sigmoid``, ``Tanh``; ``PRelu`` inputs ``[x, slope]`` (slope broadcastable to NHWC, e.g. ``[C]``);
  ``LeakyRelu`` attr ``alpha``; ``Clip`` attrs ``min`` / ``max`` (float or None);
  ``Minimum`` / ``Maximum`` inputs ``[a, b]``.
* ``DepthToSpace``   attr ``block_size``; TFLite / DCR order: output (y*r+dy, x*r+dx, c) reads
                     input channel (dy*r + dx)*C + c.
* ``Pad``            attrs ``pads`` (top, left, bottom, right), ``mode`` (constant: zeros | reflect | edge).
* ``Resize``         attrs ``mode`` (nearest|bilinear), ``scales`` (sh, sw) or None, ``size``
                     (oh, ow) or None, ``align_corners``, ``half_pixel_centers``: TFLite semantics.

``activation`` is one of ``ACTIVATIONS`` (what TFLite can fuse). Quantisation parameters live on
tensors (:class:`QuantParams`); the float graph stays float and writers decide what to emit.

>>> g = Graph()
>>> x = g.add_input("x", (1, None, None, 3))
>>> y = g.add_node("Relu", [x], name="r")
>>> g.mark_output(y)
>>> [n.op for n in g.nodes], g.tensors[y].shape
(['Relu'], (1, None, None, 3))
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edge_enhance.card import CARD_KEY, ModelCard

from .errors import ConfigError

OPS = (
    "Conv", "ConvTranspose", "Add", "Mul", "Concat", "Relu", "PRelu", "LeakyRelu", "Clip",
    "DepthToSpace", "Resize", "Sigmoid", "Tanh", "Minimum", "Maximum", "Pad",
)
ACTIVATIONS = ("none", "relu", "relu6", "relu_n1_to_1")
FUSABLE = ("Conv", "Add", "Mul")
QDTYPES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}


@dataclass
class QuantParams:
    """Affine quantisation: real = scale * (q - zero_point), per tensor or per channel.

    >>> q = QuantParams(np.array([0.5]), np.array([-3]))
    >>> q.quantize(np.array([1.0, -70.0])).tolist()
    [-1, -128]
    """

    scale: np.ndarray
    zero_point: np.ndarray
    quantized_dimension: int = 0
    dtype: str = "int8"

    def __post_init__(self):
        self.scale = np.atleast_1d(np.asarray(self.scale, dtype=np.float64))
        self.zero_point = np.atleast_1d(np.asarray(self.zero_point, dtype=np.int64))
        if self.dtype not in QDTYPES:
            raise ConfigError(f"quantisation dtype {self.dtype!r} is not one of {', '.join(QDTYPES)}")
        if self.scale.shape != self.zero_point.shape:
            raise ConfigError(f"quantisation: {self.scale.size} scales but {self.zero_point.size} zero points")
        if not np.all(self.scale > 0) or not np.all(np.isfinite(self.scale)):
            raise ConfigError(f"quantisation scales must be positive and finite, got {self.scale[:4]}")
        lo, hi = QDTYPES[self.dtype]
        if np.any(self.zero_point < lo) or np.any(self.zero_point > hi):
            raise ConfigError(f"zero points {self.zero_point[:4]} outside {self.dtype} range")

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    def _bcast(self, v: np.ndarray, ndim: int) -> np.ndarray:
        if not self.per_channel:
            return v.reshape(())
        shape = [1] * ndim
        shape[self.quantized_dimension] = v.size
        return v.reshape(shape)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        lo, hi = QDTYPES[self.dtype]
        s, z = self._bcast(self.scale, x.ndim), self._bcast(self.zero_point, x.ndim)
        # np.round is round-half-to-even; TFLite rounds half away from zero.
        q = np.floor(np.abs(x / s) + 0.5) * np.sign(x / s) + z
        return np.clip(q, lo, hi).astype(np.int64)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        s, z = self._bcast(self.scale, q.ndim), self._bcast(self.zero_point, q.ndim)
        return ((q.astype(np.float64) - z) * s).astype(np.float32)

    def fake_quantize(self, x: np.ndarray) -> np.ndarray:
        return self.dequantize(self.quantize(np.asarray(x, dtype=np.float64)))


@dataclass
class Tensor:
    name: str
    shape: tuple  # ints, None for a dynamic dimension
    dtype: str = "float32"
    data: np.ndarray | None = None  # constants only
    quant: QuantParams | None = None

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Node:
    op: str
    name: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)


@dataclass
class Graph:
    tensors: dict = field(default_factory=dict)
    nodes: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    metadata: dict = field(default_factory=dict)  # str -> str, e.g. the model card JSON
    name: str = "graph"
    folded_for: tuple | None = None  # the (h, w) input that sizes computed from the input's shape were folded for

    # -- building -------------------------------------------------------------------------
    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.tensors:
            name, i = f"{base}_{i}", i + 1
        return name

    def add_input(self, name: str, shape, dtype: str = "float32") -> str:
        self.tensors[name] = Tensor(name, tuple(shape), dtype)
        self.inputs.append(name)
        return name

    def add_const(self, name: str, data) -> str:
        data = np.asarray(data)
        if data.dtype == np.float64:
            data = data.astype(np.float32)
        name = self.unique(name)
        self.tensors[name] = Tensor(name, tuple(data.shape), str(data.dtype), data)
        return name

    def add_node(self, op: str, inputs, name: str | None = None, output: str | None = None, **attrs) -> str:
        if op not in OPS:
            raise ConfigError(f"IR has no op {op!r}")
        name = name or self.unique(op.lower())
        out = self.unique(output or name)
        node = Node(op, name, list(inputs), [out], _default_attrs(op, attrs))
        self.tensors[out] = Tensor(out, infer_shape(self, node))
        self.nodes.append(node)
        return out

    def mark_output(self, name: str) -> None:
        self.outputs.append(name)

    # -- queries --------------------------------------------------------------------------
    @property
    def align(self) -> int:
        """The model card's align (input height and width must be multiples of it); 1 without a card."""
        card = self.metadata.get(CARD_KEY)
        return ModelCard.from_json(card, self.name).align if card else 1

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def consumers(self, tensor: str) -> list:
        return [n for n in self.nodes if tensor in n.inputs]

    def op_counts(self) -> dict:
        counts: dict = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return counts

    def retype(self, shapes: dict) -> None:
        """Re-run shape inference with new input shapes (e.g. a fixed tile)."""
        for name, shape in shapes.items():
            self.tensors[name].shape = tuple(shape)
        for n in self.nodes:
            self.tensors[n.outputs[0]].shape = infer_shape(self, n)

    def prune(self) -> None:
        """Drop nodes and tensors nothing reaches from the outputs."""
        live, keep = set(self.outputs), []
        for n in reversed(self.nodes):
            if any(o in live for o in n.outputs):
                keep.append(n)
                live.update(n.inputs)
        self.nodes = keep[::-1]
        live.update(self.inputs)
        self.tensors = {k: v for k, v in self.tensors.items() if k in live}


def _default_attrs(op: str, attrs: dict) -> dict:
    base = {
        "Conv": dict(strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0), group=1, activation="none"),
        "ConvTranspose": dict(strides=(1, 1), pads=(0, 0, 0, 0), output_padding=(0, 0), activation="none"),
        "Add": dict(activation="none"),
        "Mul": dict(activation="none"),
        "Concat": dict(axis=3),
        "LeakyRelu": dict(alpha=0.01),
        "Clip": dict(min=None, max=None),
        "Resize": dict(mode="nearest", scales=None, size=None, align_corners=False, half_pixel_centers=False),
        "Pad": dict(pads=(0, 0, 0, 0), mode="constant"),
    }.get(op, {})
    out = {**base, **attrs}
    if "activation" in out and out["activation"] not in ACTIVATIONS:
        raise ConfigError(f"{op}: activation {out['activation']!r} is not one of {', '.join(ACTIVATIONS)}")
    return out


def _bcast_shape(a, b):
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    out = []
    for x, y in zip(a, b):
        if x == 1:
            out.append(y)
        elif y == 1 or y is None or x == y:
            out.append(x)
        elif x is None:
            out.append(y)
        else:
            raise ConfigError(f"shapes {a} and {b} do not broadcast")
    return tuple(out)


def _mul(d, k):
    return None if d is None else d * k


def infer_shape(g: Graph, n: Node) -> tuple:
    s = [g.tensors[i].shape for i in n.inputs]
    a = n.attrs
    if n.op in ("Conv", "ConvTranspose"):
        nb, h, w, _ = s[0]
        o, kh, kw, _ = s[1]
        (sh, sw), (pt, pl, pb, pr) = a["strides"], a["pads"]
        if n.op == "Conv":
            dh, dw = a["dilations"]
            f = lambda d, k, st, p0, p1, dl: None if d is None else (d + p0 + p1 - (k - 1) * dl - 1) // st + 1
            return (nb, f(h, kh, sh, pt, pb, dh), f(w, kw, sw, pl, pr, dw), o)
        oph, opw = a["output_padding"]
        f = lambda d, k, st, p0, p1, op: None if d is None else (d - 1) * st + k - p0 - p1 + op
        return (nb, f(h, kh, sh, pt, pb, oph), f(w, kw, sw, pl, pr, opw), o)
    if n.op in ("Add", "Mul", "Minimum", "Maximum"):
        return _bcast_shape(s[0], s[1])
    if n.op == "Concat":
        ax = a["axis"] % len(s[0])
        out = list(s[0])
        out[ax] = None if any(t[ax] is None for t in s) else sum(t[ax] for t in s)
        return tuple(out)
    if n.op == "DepthToSpace":
        r = a["block_size"]
        nb, h, w, c = s[0]
        if c % (r * r):
            raise ConfigError(f"{n.name}: DepthToSpace block {r} needs channels divisible by {r * r}, got {c}")
        return (nb, _mul(h, r), _mul(w, r), c // (r * r))
    if n.op == "Pad":
        nb, h, w, c = s[0]
        pt, pl, pb, pr = a["pads"]
        return (nb, None if h is None else h + pt + pb, None if w is None else w + pl + pr, c)
    if n.op == "Resize":
        nb, h, w, c = s[0]
        if a["size"] is not None:
            return (nb, a["size"][0], a["size"][1], c)
        sh, sw = a["scales"]
        f = lambda d, k: None if d is None else int(np.floor(d * k + 1e-9))
        return (nb, f(h, sh), f(w, sw), c)
    return tuple(s[0])  # elementwise activations


def _cubic(t: float, a: float) -> float:
    """The cubic convolution kernel (Keys) that ONNX Resize uses, coefficient a (-0.75, as PyTorch)."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a if t < 2 else 0.0


def upsample_taps(s: int, cubic: bool, half_pixel: bool, a: float = -0.75) -> tuple[np.ndarray, int]:
    """(k, r): output phase p (0..s-1) of an integer-s bilinear / bicubic upsampling reads input
    pixels q-r..q+r of its own q with weights k[p] (half-pixel or asymmetric coordinates, edge clamped)."""
    r = 2 if cubic else 1
    k = np.zeros((s, 2 * r + 1))
    for p in range(s):
        f = (p + 0.5) / s - 0.5 if half_pixel else p / s
        base = int(np.floor(f))
        t = f - base
        taps = ([(base - 1, _cubic(1 + t, a)), (base, _cubic(t, a)), (base + 1, _cubic(1 - t, a)),
                 (base + 2, _cubic(2 - t, a))] if cubic else [(base, 1 - t), (base + 1, t)])
        for off, wv in taps:
            k[p, off + r] += wv
    return k, r


def subpixel_phases(g: Graph, x: str, s: int, k: np.ndarray, r: int, name: str) -> str:
    """Append Pad(edge, r) + a (2r+1)^2 Conv from C to s*s*C channels holding every output phase
    ((py*s + px)*C + c, DCR): a DepthToSpace(s) of the result is the upsampled image. Returns the conv's output."""
    c = g.tensors[x].shape[3]
    w = np.zeros((s * s * c, 2 * r + 1, 2 * r + 1, c), np.float32)
    for py in range(s):
        for px in range(s):
            for ch in range(c):
                w[(py * s + px) * c + ch, :, :, ch] = np.outer(k[py], k[px])
    padded = g.add_node("Pad", [x], name=g.unique(name + "_edge"), pads=(r, r, r, r), mode="edge")
    return g.add_node("Conv", [padded, g.add_const(name + "_phases_w", w),
                               g.add_const(name + "_phases_b", np.zeros(s * s * c, np.float32))],
                      name=g.unique(name + "_phases"))
