"""ONNX (NCHW, opset 11..newest) -> IR (NHWC), with the graph clean-ups mobile delegates need.

Order: load and check -> shape inference -> Identity/Dropout removal -> constant folding of
initializer-only subgraphs (and of ``Shape`` on static tensors) -> PixelShuffle / Tile / BN
patterns -> one pass listing every unsupported node -> lowering (weights re-laid out to OHWI,
constants to NHWC, no Transpose left) -> IR passes (CRD channel permutations folded into the
producing conv, activation fusion).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_enhance.card import CARD_KEY, ModelCard

from .errors import ModelFormatError, UnsupportedOpError
from .ir import FUSABLE, Graph, Node, Tensor, subpixel_phases, upsample_taps

log = logging.getLogger(__name__)
MIN_OPSET = 9  # 9 and 10: older PyTorch exports, the ONNX model zoo's super-resolution-10


@dataclass
class ONode:
    op: str
    name: str
    inputs: list
    outputs: list
    attrs: dict = field(default_factory=dict)
    domain: str = ""


# --------------------------------------------------------------------------- registry
LOWERINGS: dict = {}


_GLOBAL = ("makes every output pixel depend on the whole image (channel attention), so no tile can be computed "
           "exactly and int8 ranges vary with the image size; not supported")
# Why some ops that small SR / denoise nets use are refused (an op missing here is simply not implemented).
_WHY_NOT = {"GlobalAveragePool": _GLOBAL, "GlobalMaxPool": _GLOBAL, "ReduceMean": "reductions are not supported; over "
            "H, W one " + _GLOBAL, "Erf": "GELU (its Erf) is not converted yet; ReLU, PReLU, LeakyReLU, SiLU and "
            "HardSwish convert",
            "Cast": "casts to or from integer types in the network are not converted (casts between float types are)"}


def register(op_type: str):
    def deco(cls):
        if op_type in LOWERINGS:
            raise ValueError(f"ONNX lowering for {op_type} registered twice")
        LOWERINGS[op_type] = cls()
        return cls
    return deco


class Lowering:
    def check(self, n: ONode, ctx: "Ctx") -> str | None:
        """Why this node cannot be lowered, or None."""
        return None

    def lower(self, n: ONode, ctx: "Ctx") -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------- context
class Ctx:
    def __init__(self, consts: dict, shapes: dict, graph: Graph):
        self.consts = consts  # ONNX name -> np.ndarray (NCHW world)
        self.shapes = shapes  # ONNX name -> tuple (None for unknown dims)
        self.g = graph
        self.names: dict = {}  # ONNX activation name -> IR tensor name

    def is_const(self, name):
        return name in self.consts

    def const(self, name):
        return self.consts[name]

    def act(self, name):
        if name not in self.names:
            raise ModelFormatError(f"tensor {name!r} is used before any node produces it")
        return self.names[name]

    def nhwc_const(self, name_or_arr, hint="const"):
        """A constant that broadcasts against NCHW activations, re-laid out for NHWC."""
        arr = self.consts[name_or_arr] if isinstance(name_or_arr, str) else name_or_arr
        arr = np.asarray(arr, dtype=np.float32)
        if arr.ndim == 0 or arr.size == 1:
            return self.g.add_const(hint, arr.reshape(1))
        if arr.ndim > 4:
            raise ModelFormatError(f"constant {hint} has rank {arr.ndim}; only up to 4 broadcasts over NCHW")
        arr = arr.reshape((1,) * (4 - arr.ndim) + arr.shape).transpose(0, 2, 3, 1)
        return self.g.add_const(hint, np.ascontiguousarray(arr))

    def out(self, n: ONode, op: str, inputs, **attrs):
        self.names[n.outputs[0]] = self.g.add_node(op, inputs, name=n.name, output=_clean(n.outputs[0]), **attrs)
        return self.names[n.outputs[0]]


def _clean(name: str) -> str:
    return name or "t"


def _attr(n, key, default=None):
    return n.attrs.get(key, default)


def _opt(n, i):
    return n.inputs[i] if len(n.inputs) > i and n.inputs[i] else None


def _is_act(ctx, name):
    return name is not None and not ctx.is_const(name)


# --------------------------------------------------------------------------- lowerings
def _conv_pads(n, ctx, kshape, strides, dilations):
    auto = _attr(n, "auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", "VALID"):
        p = list(_attr(n, "pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        return (p[0], p[1], p[2], p[3])
    ins = ctx.shapes.get(n.inputs[0]) or (None,) * 4
    out = []
    for ax in range(2):
        k_eff = (kshape[ax] - 1) * dilations[ax] + 1
        if strides[ax] == 1:
            total = k_eff - 1
        elif ins[2 + ax] is None:
            raise ModelFormatError(f"{n.name}: auto_pad {auto} with stride {strides[ax]} needs a static input size")
        else:
            d = ins[2 + ax]
            total = max((-(-d // strides[ax]) - 1) * strides[ax] + k_eff - d, 0)
        lo = total // 2 if auto == "SAME_UPPER" else total - total // 2
        out.append((lo, total - lo))
    return (out[0][0], out[1][0], out[0][1], out[1][1])


@register("Conv")
class ConvL(Lowering):
    def check(self, n, ctx):
        if not ctx.is_const(n.inputs[1]) or (_opt(n, 2) and not ctx.is_const(n.inputs[2])):
            return "weights are not constant"
        if ctx.const(n.inputs[1]).ndim != 4:
            return "only 2-D convolutions are supported"

    def lower(self, n, ctx):
        w = ctx.const(n.inputs[1]).astype(np.float32)
        o = w.shape[0]
        b = ctx.const(n.inputs[2]).astype(np.float32) if _opt(n, 2) else np.zeros(o, np.float32)
        strides = tuple(_attr(n, "strides", [1, 1]))
        dil = tuple(_attr(n, "dilations", [1, 1]))
        pads = _conv_pads(n, ctx, w.shape[2:], strides, dil)
        wi = ctx.g.add_const(n.name + "_w", np.ascontiguousarray(w.transpose(0, 2, 3, 1)))
        bi = ctx.g.add_const(n.name + "_b", b)
        ctx.out(n, "Conv", [ctx.act(n.inputs[0]), wi, bi], strides=strides, dilations=dil, pads=pads,
                group=int(_attr(n, "group", 1)))


@register("ConvTranspose")
class ConvTransposeL(Lowering):
    def check(self, n, ctx):
        if not ctx.is_const(n.inputs[1]) or (_opt(n, 2) and not ctx.is_const(n.inputs[2])):
            return "weights are not constant"
        if ctx.const(n.inputs[1]).ndim != 4:
            return "only 2-D transposed convolutions are supported"
        if _attr(n, "group", 1) != 1:
            return "grouped ConvTranspose is not supported"
        if any(d != 1 for d in _attr(n, "dilations", [1, 1])):
            return "dilated ConvTranspose is not supported"
        if _attr(n, "output_shape") is not None:
            return "explicit output_shape is not supported (export with pads)"
        auto = _attr(n, "auto_pad", "NOTSET")
        if auto not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
            return f"auto_pad {auto} is not supported"

    def lower(self, n, ctx):
        w = ctx.const(n.inputs[1]).astype(np.float32)  # [C_in, C_out, kh, kw]
        o = w.shape[1]
        b = ctx.const(n.inputs[2]).astype(np.float32) if _opt(n, 2) else np.zeros(o, np.float32)
        p = list(_attr(n, "pads", [0, 0, 0, 0]))
        if _attr(n, "auto_pad", "NOTSET") in ("VALID", b"VALID"):
            p = [0, 0, 0, 0]
        wi = ctx.g.add_const(n.name + "_w", np.ascontiguousarray(w.transpose(1, 2, 3, 0)))
        bi = ctx.g.add_const(n.name + "_b", b)
        ctx.out(n, "ConvTranspose", [ctx.act(n.inputs[0]), wi, bi], strides=tuple(_attr(n, "strides", [1, 1])),
                pads=tuple(p), output_padding=tuple(_attr(n, "output_padding", [0, 0])))


class _Binary(Lowering):
    ir_op = ""

    def check(self, n, ctx):
        if len(n.inputs) != 2:
            return f"{len(n.inputs)} inputs (2 supported)"
        if ctx.is_const(n.inputs[0]) and ctx.is_const(n.inputs[1]):
            return "both inputs constant (should have been folded)"

    def operand(self, ctx, n, i, transform=None):
        name = n.inputs[i]
        if ctx.is_const(name):
            arr = ctx.const(name).astype(np.float32)
            return ctx.nhwc_const(transform(arr) if transform else arr, n.name + "_k")
        return ctx.act(name)

    def lower(self, n, ctx):
        ctx.out(n, self.ir_op, [self.operand(ctx, n, 0), self.operand(ctx, n, 1)])


@register("Add")
class AddL(_Binary):
    ir_op = "Add"


@register("Mul")
class MulL(_Binary):
    ir_op = "Mul"


class _ByConstant(_Binary):
    """``x - c`` / ``x / c`` with a constant c, lowered to Add / Mul of the transformed constant."""
    symbol = ""
    transform = None

    def check(self, n, ctx):
        return super().check(n, ctx) or (
            None if ctx.is_const(n.inputs[1]) else f"only x {self.symbol} constant is supported")

    def lower(self, n, ctx):
        ctx.out(n, self.ir_op, [self.operand(ctx, n, 0), self.operand(ctx, n, 1, type(self).transform)])


@register("Sub")
class SubL(_ByConstant):
    """``a - c`` is Add of -c; ``a - b`` of two activations (DnCNN's ``x - net(x)``, a gate's ``1 - g``) is
    Add of b times -1, which :func:`_fold_scales` takes into the conv producing b where there is one."""
    ir_op, symbol, transform = "Add", "-", np.negative

    def check(self, n, ctx):
        return _Binary.check(self, n, ctx)

    def lower(self, n, ctx):
        if ctx.is_const(n.inputs[1]):
            return super().lower(n, ctx)
        neg = ctx.g.add_node("Mul", [ctx.act(n.inputs[1]), ctx.g.add_const(n.name + "_neg", np.array([-1.0], np.float32))],
                             name=n.name + "_neg")
        ctx.out(n, "Add", [self.operand(ctx, n, 0), neg])


@register("Div")
class DivL(_ByConstant):
    ir_op, symbol, transform = "Mul", "/", np.reciprocal


class _MinMax(_Binary):
    def check(self, n, ctx):
        return None if len(n.inputs) >= 1 else "no inputs"

    def lower(self, n, ctx):
        if len(n.inputs) == 1:
            ctx.names[n.outputs[0]] = ctx.act(n.inputs[0])
            return
        cur = self.operand(ctx, n, 0)
        for i in range(1, len(n.inputs)):
            last = i == len(n.inputs) - 1
            out = ctx.g.add_node(self.ir_op, [cur, self.operand(ctx, n, i)], name=n.name if last else None,
                                 output=_clean(n.outputs[0]) if last else None)
            cur = out
        ctx.names[n.outputs[0]] = cur


@register("Min")
class MinL(_MinMax):
    ir_op = "Minimum"


@register("Max")
class MaxL(_MinMax):
    ir_op = "Maximum"


@register("Concat")
class ConcatL(Lowering):
    def check(self, n, ctx):
        if any(ctx.is_const(i) for i in n.inputs):
            return "constant Concat inputs are not supported"
        rank = len(ctx.shapes.get(n.inputs[0]) or (0,) * 4)
        if rank != 4:
            return f"rank-{rank} Concat is not supported"

    def lower(self, n, ctx):
        axis = [0, 3, 1, 2][int(_attr(n, "axis")) % 4]
        ctx.out(n, "Concat", [ctx.act(i) for i in n.inputs], axis=axis)


def _channel_count(n, ctx):
    shape = ctx.shapes.get(n.inputs[0])
    return shape[1] if shape and len(shape) == 4 and shape[1] is not None else None


def _slice_bounds(n, ctx):
    """The channels (a range) a step-1 channel Slice keeps (opset 1-9 attributes, 10+ inputs), None for a
    slice that keeps everything (``y[:, :, :h, :w]`` at a fixed size: the crop after a pad that folded to
    nothing), or a reason."""
    def part(i, key):
        if key in n.attrs:
            return [int(v) for v in n.attrs[key]]
        if not _opt(n, i):
            return None
        if not ctx.is_const(n.inputs[i]):
            return f"{key} are not constant"
        return [int(v) for v in np.ravel(ctx.const(n.inputs[i]))]

    starts, ends, axes, steps = part(1, "starts"), part(2, "ends"), part(3, "axes"), part(4, "steps")
    for v in (starts, ends, axes, steps):
        if isinstance(v, str):
            return v
    axes = axes or list(range(len(starts)))
    shape = ctx.shapes.get(n.inputs[0]) or (None,) * 4
    cut = [(a % 4, s, e, k) for a, s, e, k in zip(axes, starts, ends, steps or [1] * len(axes))
           if not (k == 1 and shape[a % 4] is not None and range(shape[a % 4])[s:e] == range(shape[a % 4]))]
    if not cut:
        return None
    if [(a, k) for a, _, _, k in cut] != [(1, 1)]:
        return "only step-1 slices of the channel axis are supported (a spatial slice breaks exact tiling)"
    c = _channel_count(n, ctx)
    if c is None:
        return "channel count unknown"
    return range(c)[cut[0][1]:cut[0][2]]


def _select_channels(ctx, x, idx, name):
    """x[..., idx] as a 1x1 conv of 0 / 1 weights; :func:`_fold_selections` moves it into the layers that made x."""
    c = int(ctx.g.tensors[x].shape[3])
    w = np.zeros((len(idx), 1, 1, c), np.float32)
    w[np.arange(len(idx)), 0, 0, list(idx)] = 1.0
    return ctx.g.add_node("Conv", [x, ctx.g.add_const(name + "_w", w),
                                   ctx.g.add_const(name + "_b", np.zeros(len(idx), np.float32))],
                          name=name, selection=True)


@register("Slice")
class SliceL(Lowering):
    """x[:, a:b] (IMDN-style channel split); a slice that keeps everything is no node."""

    def check(self, n, ctx):
        r = _slice_bounds(n, ctx)
        if isinstance(r, str):
            return r
        if r is not None and len(r) == 0:
            return "empty slice"

    def lower(self, n, ctx):
        idx, x = _slice_bounds(n, ctx), ctx.act(n.inputs[0])
        ctx.names[n.outputs[0]] = x if idx is None else _select_channels(ctx, x, idx, n.name)


@register("Split")
class SplitL(Lowering):
    """torch.split / chunk on the channel axis: one channel selection per output."""

    def sizes(self, n, ctx):
        c = _channel_count(n, ctx)
        if c is None:
            return "channel count unknown"
        if int(_attr(n, "axis", 0)) % 4 != 1:
            return "only channel splits are supported (a spatial split breaks exact tiling)"
        if "split" in n.attrs:
            return [int(v) for v in n.attrs["split"]]
        if _opt(n, 1):
            return [int(v) for v in ctx.const(n.inputs[1])] if ctx.is_const(n.inputs[1]) else "split sizes are not constant"
        k = len(n.outputs)
        return [-(-c // k)] * (k - 1) + [c - -(-c // k) * (k - 1)]

    def check(self, n, ctx):
        r = self.sizes(n, ctx)
        return r if isinstance(r, str) else None

    def lower(self, n, ctx):
        x, start = ctx.act(n.inputs[0]), 0
        for k, (size, out) in enumerate(zip(self.sizes(n, ctx), n.outputs)):
            if out:
                ctx.names[out] = _select_channels(ctx, x, range(start, start + size), f"{n.name}_{k}")
            start += size


@register("Tile")
class TileL(Lowering):
    """x.repeat(1, k, 1, 1): a Concat of k copies (the nearest-upsample skip path)."""

    def check(self, n, ctx):
        if not ctx.is_const(n.inputs[1]):
            return "repeats are not constant"
        r = [int(v) for v in ctx.const(n.inputs[1])]
        if len(r) != 4 or r[0] != 1 or r[2] != 1 or r[3] != 1:
            return f"only channel repeats [1, k, 1, 1] are supported, got {r}"

    def lower(self, n, ctx):
        k = int(ctx.const(n.inputs[1])[1])
        x = ctx.act(n.inputs[0])
        if k == 1:
            ctx.names[n.outputs[0]] = x
        else:
            ctx.out(n, "Concat", [x] * k, axis=3)


@register("Relu")
class ReluL(Lowering):
    def lower(self, n, ctx):
        ctx.out(n, "Relu", [ctx.act(n.inputs[0])])


@register("Pad")
class PadL(Lowering):
    """Spatial Pad: constant 0 (folded into the Conv it feeds, see ``optimize``), reflect (TFLite
    MIRROR_PAD) or edge (replicate: TFLite SYMMETRIC MIRROR_PADs of 1, one per pixel of padding).
    Pads come as an input (opset 11+) or an attribute."""

    def _pads(self, n, ctx):
        if _opt(n, 1) is None:
            return list(_attr(n, "pads", [])), None
        if not ctx.is_const(n.inputs[1]):
            return None, "pads are not constant"
        return [int(v) for v in ctx.const(n.inputs[1])], None

    def check(self, n, ctx):
        mode = _attr(n, "mode", "constant")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("constant", "reflect", "edge"):
            return f"mode {mode} is not supported (constant 0, reflect, edge)"
        p, why = self._pads(n, ctx)
        if why:
            return why
        axes = _opt(n, 3)
        if axes is not None and (not ctx.is_const(axes) or sorted(int(a) % 4 for a in ctx.const(axes)) != [2, 3]):
            return "axes other than height and width are not supported"
        if axes is None and (len(p) != 8 or any(p[i] for i in (0, 1, 4, 5))):
            return f"pads {p} pad batch or channels"
        if min(p) < 0:
            return f"negative pads {p} (cropping) are not supported"
        value = _opt(n, 2)
        if mode == "constant" and value is not None and (not ctx.is_const(value) or float(ctx.const(value)) != 0):
            return "constant padding with a value other than 0 is not supported"
        if mode == "constant" and _attr(n, "value", 0.0) != 0:
            return "constant padding with a value other than 0 is not supported"

    def lower(self, n, ctx):
        p, _ = self._pads(n, ctx)
        axes = [int(a) % 4 for a in ctx.const(n.inputs[3])] if _opt(n, 3) is not None else [0, 1, 2, 3]
        begin_end = {ax: (p[i], p[i + len(axes)]) for i, ax in enumerate(axes)}
        (t, b), (l, r) = begin_end[2], begin_end[3]
        if not any((t, l, b, r)):  # F.pad to a multiple, at a size that is one already: nothing to pad
            ctx.names[n.outputs[0]] = ctx.act(n.inputs[0])
            return
        mode = _attr(n, "mode", "constant")
        ctx.out(n, "Pad", [ctx.act(n.inputs[0])], pads=(t, l, b, r),
                mode=mode.decode() if isinstance(mode, bytes) else mode)


@register("Tanh")
class TanhL(Lowering):
    def lower(self, n, ctx):
        ctx.out(n, "Tanh", [ctx.act(n.inputs[0])])


@register("Sigmoid")
class SigmoidL(Lowering):
    def lower(self, n, ctx):
        ctx.out(n, "Sigmoid", [ctx.act(n.inputs[0])])


@register("HardSigmoid")
class HardSigmoidL(Lowering):
    """clip(alpha * x + beta, 0, 1) (MobileNetV3-style gates)."""

    def lower(self, n, ctx):
        g, nm = ctx.g, n.name
        k = g.add_const(nm + "_alpha", np.array([_attr(n, "alpha", 0.2)], np.float32))
        b = g.add_const(nm + "_beta", np.array([_attr(n, "beta", 0.5)], np.float32))
        t = g.add_node("Add", [g.add_node("Mul", [ctx.act(n.inputs[0]), k], name=nm + "_mul"), b], name=nm + "_add")
        ctx.out(n, "Clip", [t], min=0.0, max=1.0)


@register("HardSwish")
class HardSwishL(Lowering):
    """x * relu6(x + 3) / 6; the relu6 fuses into the Add."""

    def lower(self, n, ctx):
        g, nm, x = ctx.g, n.name, ctx.act(n.inputs[0])
        t = g.add_node("Add", [x, g.add_const(nm + "_3", np.array([3.0], np.float32))], name=nm + "_add")
        r = g.add_node("Clip", [t], name=nm + "_relu6", min=0.0, max=6.0)
        m = g.add_node("Mul", [r, g.add_const(nm + "_6", np.array([1 / 6], np.float32))], name=nm + "_div")
        ctx.out(n, "Mul", [x, m])


@register("LeakyRelu")
class LeakyReluL(Lowering):
    def lower(self, n, ctx):
        ctx.out(n, "LeakyRelu", [ctx.act(n.inputs[0])], alpha=float(_attr(n, "alpha", 0.01)))


@register("PRelu")
class PReluL(Lowering):
    def check(self, n, ctx):
        if not ctx.is_const(n.inputs[1]):
            return "slope is not constant"

    def lower(self, n, ctx):
        ctx.out(n, "PRelu", [ctx.act(n.inputs[0]), ctx.nhwc_const(n.inputs[1], n.name + "_slope")])


@register("Clip")
class ClipL(Lowering):
    def check(self, n, ctx):
        for i in (1, 2):
            if _opt(n, i) and not ctx.is_const(n.inputs[i]):
                return "bounds are not constant"

    def lower(self, n, ctx):
        lo, hi = _attr(n, "min"), _attr(n, "max")  # opset < 11 attributes
        if _opt(n, 1):
            lo = float(ctx.const(n.inputs[1]))
        if _opt(n, 2):
            hi = float(ctx.const(n.inputs[2]))
        ctx.out(n, "Clip", [ctx.act(n.inputs[0])], min=None if lo is None else float(lo),
                max=None if hi is None else float(hi))


@register("BatchNormalization")
class BatchNormL(Lowering):
    def check(self, n, ctx):
        if not all(ctx.is_const(i) for i in n.inputs[1:5]):
            return "statistics are not constant"

    def lower(self, n, ctx):
        s, b = _bn_affine(n, ctx.consts)
        y = ctx.g.add_node("Mul", [ctx.act(n.inputs[0]), ctx.nhwc_const(s.reshape(-1, 1, 1), n.name + "_s")])
        ctx.out(n, "Add", [y, ctx.nhwc_const(b.reshape(-1, 1, 1), n.name + "_b")])


def _bn_affine(n, consts):
    gamma, beta, mean, var = (consts[i].astype(np.float64) for i in n.inputs[1:5])
    s = gamma / np.sqrt(var + float(_attr(n, "epsilon", 1e-5)))
    return s.astype(np.float32), (beta - mean * s).astype(np.float32)


@register("DepthToSpace")
class DepthToSpaceL(Lowering):
    def lower(self, n, ctx):
        r = int(_attr(n, "blocksize"))
        x = ctx.act(n.inputs[0])
        mode = _attr(n, "mode", "DCR")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode == "CRD":
            # CRD reads channel c*r*r + q where DCR reads q*C + c: permute with an exact 1x1 conv,
            # which the IR pass then folds into the producing conv.
            c_in = ctx.g.tensors[x].shape[3]
            x = _permute_conv(ctx.g, x, _crd_to_dcr(c_in, r), n.name + "_crd")
        ctx.out(n, "DepthToSpace", [x], block_size=r)


def _crd_to_dcr(c_in, r):
    c = c_in // (r * r)
    return np.array([cc * r * r + q for q in range(r * r) for cc in range(c)])


def _permute_conv(g, x, perm, name):
    c = len(perm)
    w = np.zeros((c, 1, 1, c), np.float32)
    w[np.arange(c), 0, 0, perm] = 1.0
    return g.add_node("Conv", [x, g.add_const(name + "_w", w), g.add_const(name + "_b", np.zeros(c, np.float32))],
                      name=name, permutation=True)


def _onnx_nearest_index(o, i, scale, ctm, nmode):
    x = np.arange(o, dtype=np.float64)
    if ctm == "asymmetric":
        v = x / scale
    elif ctm in ("half_pixel", "pytorch_half_pixel"):
        v = (x + 0.5) / scale - 0.5
    elif ctm == "align_corners":
        v = x * (i - 1) / (o - 1) if o > 1 else 0 * x
    elif ctm == "tf_half_pixel_for_nn":
        v = (x + 0.5) / scale
    else:
        return None
    if nmode == "floor":
        r = np.floor(v)
    elif nmode == "ceil":
        r = np.ceil(v)
    elif nmode == "round_prefer_ceil":
        r = np.floor(v + 0.5)
    else:
        r = np.ceil(v - 0.5)
    return np.clip(r, 0, i - 1).astype(np.int64)


def _tflite_nearest_index(o, i, ac, hp):
    scale = (i - 1) / (o - 1) if ac and o > 1 else i / o
    x = np.arange(o, dtype=np.float64)
    r = np.round(x * scale) if ac else np.floor((x + (0.5 if hp else 0.0)) * scale)
    return np.clip(r, 0, i - 1).astype(np.int64)


@register("Resize")
class ResizeL(Lowering):
    def _params(self, n, ctx):
        s = lambda k, d: (lambda v: v.decode() if isinstance(v, bytes) else v)(_attr(n, k, d))
        mode, ctm = s("mode", "nearest"), s("coordinate_transformation_mode", "half_pixel")
        nmode = s("nearest_mode", "round_prefer_floor")
        if n.op == "Upsample":
            ctm, nmode, scales_name, sizes_name = "asymmetric", "floor", _opt(n, 1), None
        else:
            scales_name, sizes_name = _opt(n, 2), _opt(n, 3)
        return mode, ctm, nmode, scales_name, sizes_name

    def _scales(self, n, ctx):
        mode, ctm, nmode, sc, sz = self._params(n, ctx)
        ins = ctx.shapes.get(n.inputs[0]) or (None,) * 4
        if sc and ctx.is_const(sc) and ctx.const(sc).size:
            v = [float(t) for t in ctx.const(sc)]
            if len(v) != 4 or v[0] != 1 or v[1] != 1:
                return None, f"scales {v} resize batch or channels"
            return (v[2], v[3]), None
        if sz and ctx.is_const(sz):
            v = [int(t) for t in ctx.const(sz)]
            if len(v) != 4 or (ins[0] not in (None, v[0])) or (ins[1] not in (None, v[1])):
                return None, f"sizes {v} resize batch or channels"
            if ins[2] is None or ins[3] is None:
                return None, "sizes with an unknown input size"
            return (v[2] / ins[2], v[3] / ins[3]), None
        return None, "scales / sizes are not constant"

    def check(self, n, ctx):
        mode, ctm, nmode, _, _ = self._params(n, ctx)
        if _attr(n, "antialias", 0):
            return "antialias is not supported"
        if _attr(n, "axes") is not None and list(_attr(n, "axes")) not in ([2, 3], [-2, -1]):
            return f"axes {_attr(n, 'axes')} are not supported"
        if mode not in ("nearest", "linear", "cubic"):
            return f"mode {mode} is not supported (nearest, linear, cubic)"
        scales, why = self._scales(n, ctx)
        if why:
            return why
        if mode == "cubic":
            s = scales[0]
            if scales[0] != scales[1] or s != int(s) or s < 2:
                return f"cubic resize by {scales} (an integer scale >= 2, the same both ways, is supported)"
            if ctm not in ("half_pixel", "pytorch_half_pixel", "asymmetric") or _attr(n, "exclude_outside", 0):
                return f"cubic resize with coordinate_transformation_mode {ctm} / exclude_outside is not supported"
            return None
        if mode == "linear" and ctm not in ("asymmetric", "align_corners", "half_pixel", "pytorch_half_pixel"):
            return f"linear resize with coordinate_transformation_mode {ctm} is not supported"
        if mode == "nearest" and self._nearest_flags(ctx, n, scales, ctm, nmode) is None:
            return f"nearest resize with {ctm}/{nmode} at scale {scales} has no TFLite equivalent"

    def _nearest_flags(self, ctx, n, scales, ctm, nmode):
        ins = ctx.shapes.get(n.inputs[0]) or (None,) * 4
        for ac, hp in ((False, False), (False, True), (True, False)):
            ok = True
            for ax in range(2):
                sizes = [ins[2 + ax]] if ins[2 + ax] else range(1, 24)
                for i in sizes:
                    o = int(np.floor(i * scales[ax] + 1e-9))
                    ref = _onnx_nearest_index(o, i, scales[ax], ctm, nmode)
                    if o < 1 or ref is None or not np.array_equal(ref, _tflite_nearest_index(o, i, ac, hp)):
                        ok = False
            if ok:
                return ac, hp
        return None

    def lower(self, n, ctx):
        mode, ctm, nmode, _, _ = self._params(n, ctx)
        scales, _ = self._scales(n, ctx)
        if mode == "cubic":
            return self._lower_cubic(n, ctx, int(scales[0]), ctm, float(_attr(n, "cubic_coeff_a", -0.75)))
        if mode == "nearest":
            ac, hp = self._nearest_flags(ctx, n, scales, ctm, nmode)
        else:
            ac, hp = ctm == "align_corners", ctm in ("half_pixel", "pytorch_half_pixel")
        ctx.out(n, "Resize", [ctx.act(n.inputs[0])], mode="nearest" if mode == "nearest" else "bilinear",
                scales=scales, align_corners=ac, half_pixel_centers=hp)


    def _lower_cubic(self, n, ctx, s, ctm, a):
        """Bicubic upsampling by an integer s, exactly: each output phase reads input pixels q-2..q+2
        of its own q with fixed weights (``ir.upsample_taps``): edge Pad + Conv + DepthToSpace."""
        k, r = upsample_taps(s, True, ctm != "asymmetric", a)
        ctx.out(n, "DepthToSpace", [subpixel_phases(ctx.g, ctx.act(n.inputs[0]), s, k, r, n.name)], block_size=s)


@register("Upsample")
class UpsampleL(ResizeL):
    pass


# --------------------------------------------------------------------------- loading
def _load(path_or_model):
    import onnx

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, getattr(path_or_model.graph, "name", "") or "<model>"
    path = Path(path_or_model)
    if not path.is_file():
        raise ModelFormatError(f"{path}: no such ONNX file")
    try:
        model = onnx.load(str(path))
    except Exception as e:  # protobuf raises several unrelated types on garbage
        raise ModelFormatError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    if not model.graph.node and not model.graph.input:
        raise ModelFormatError(f"{path}: not an ONNX model (empty graph)")
    return model, str(path)


def _opset(model, src):
    import onnx

    ver = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            ver = imp.version
    if ver is None:
        raise ModelFormatError(f"{src}: the model imports no default-domain (ai.onnx) opset")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= ver <= newest:
        raise ModelFormatError(f"{src}: opset {ver} is outside the supported {MIN_OPSET}..{newest}")
    return ver


def _dims(vi):
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)


# Ops of a model quantised already (QDQ, QOperator, integer ops): its float weights and ranges are gone.
_QUANTISED_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
                  "QLinearAdd", "QLinearMul", "ConvInteger", "MatMulInteger"}


def from_onnx(path_or_model, *, input_hw: tuple | None = None) -> "Graph":
    """Import an ONNX model. ``input_hw`` (H, W) fixes the input's spatial size (and a symbolic batch
    to 1) first, so sizes the graph computes from its input's shape fold into constants.

    >>> import onnx, onnx.helper as h
    >>> m = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
    ...     [h.make_tensor_value_info("x", 1, [1, 3, 4, 5])], [h.make_tensor_value_info("y", 1, [1, 3, 4, 5])]),
    ...     opset_imports=[h.make_opsetid("", 13)])
    >>> g = from_onnx(m); g.tensors[g.inputs[0]].shape, [n.op for n in g.nodes]
    ((1, 4, 5, 3), ['Relu'])
    """
    import onnx
    from onnx import numpy_helper

    model, src = _load(path_or_model)
    opset = _opset(model, src)
    model = onnx.ModelProto.FromString(model.SerializeToString())  # never mutate the caller's proto
    init_names = {i.name for i in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in init_names]
    if len(real_inputs) != 1 or len(model.graph.output) != 1:
        # What the runtime runs (one image in, one out); refused here, not after a file is written.
        fix = []
        if len(real_inputs) > 1:
            fix.append("export with the image as the only input (a noise level, strength or mask input "
                       "becomes a constant or a buffer of the module)")
        if len(model.graph.output) > 1:
            fix.append("export the image output alone")
        raise ModelFormatError(
            f"{src}: {len(real_inputs)} input(s) ({', '.join(i.name for i in real_inputs)}) and "
            f"{len(model.graph.output)} output(s) ({', '.join(o.name for o in model.graph.output)}); edge-enhance runs "
            f"models of one image input and one image output: {'; '.join(fix) or 'export one image in and out'}")
    if input_hw is not None:
        for vi in real_inputs:
            _fix_spatial(vi.type.tensor_type.shape.dim, input_hw)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise ModelFormatError(f"{src}: invalid ONNX model: {str(e).splitlines()[0]}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:
        raise ModelFormatError(f"{src}: ONNX shape inference failed: {e}") from None
    gp = inferred.graph
    shapes = {}
    for vi in list(gp.value_info) + list(gp.input) + list(gp.output):
        d = _dims(vi)
        if d is not None:
            shapes[vi.name] = d
    consts = {i.name: numpy_helper.to_array(i) for i in gp.initializer}
    nodes = []
    for k, nd in enumerate(gp.node):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nd.attribute}
        op = nd.op_type
        if op == "Resize" and opset < 11 and nd.domain in ("", "ai.onnx"):
            op = "Upsample"  # Resize-10 is Upsample-9 renamed: (X, scales), asymmetric, floor
        nodes.append(ONode(op, nd.name or f"{nd.op_type}_{k}", list(nd.input), list(nd.output), attrs, nd.domain))
    outputs = [o.name for o in gp.output]
    quantised = sorted({n.op for n in nodes if n.op in _QUANTISED_OPS})
    if quantised:  # one cause, not a list of every node around each Q / DQ pair
        raise UnsupportedOpError(f"{src}: already quantised ({' / '.join(quantised)} nodes): give the float model "
                                 "(quantize and convert --precision int8 quantise it)")

    _float_casts_as_identities(nodes, gp)
    nodes = _remove_identities(nodes, outputs)
    nodes = _strip_layout_transposes(nodes, [vi.name for vi in real_inputs], outputs, shapes)
    nodes = _fold_constants(nodes, consts, shapes, outputs, opset, src)
    for k, v in consts.items():  # a float16 network's weights: exact in float32, which the graph computes in
        if v.dtype == np.float16:
            consts[k] = v.astype(np.float32)
    nodes = _match_unsqueezed_pixel_shuffle(nodes, consts, outputs)  # first: its middle looks like the other
    nodes = _match_pixel_shuffle(nodes, consts, outputs)
    nodes = _fold_conv_bn(nodes, consts, outputs)
    if any(n.op == "Slice" and None in (shapes.get(n.inputs[0]) or (None,)) for n in nodes):
        _infer_again(model, nodes, consts, shapes, [vi.name for vi in real_inputs], outputs)

    unsupported = {}  # node index -> what is wrong
    for k, n in enumerate(nodes):
        if n.domain not in ("", "ai.onnx"):
            unsupported[k] = f"{n.name} ({n.domain}::{n.op})"
            continue
        low = LOWERINGS.get(n.op)
        if low is None:
            why = _WHY_NOT.get(n.op)
            unsupported[k] = f"{n.name} ({n.op}: {why})" if why else f"{n.name} ({n.op})"
            continue
        why = low.check(n, Ctx(consts, shapes, Graph()))
        if why:
            unsupported[k] = f"{n.name} ({n.op}: {why})"
    if unsupported:
        computed = _shape_computations(nodes, shapes)
        sized = [nodes[k].name for k in unsupported if k in computed]
        rest = [v for k, v in unsupported.items() if k not in computed]
        msg = f"{src}: {len(unsupported)} unsupported node(s)" + (": " + "; ".join(rest) if rest else "")
        if sized:  # one cause, not a dozen unrelated-looking nodes
            msg += (f"; and {len(sized)} that" if rest else " that") + (
                f" compute sizes from the input's shape at run time ({', '.join(sized)}), as F.interpolate(size=...) "
                "or a reshape by x.shape exports: use scale_factor= / constant shapes, or fix the input size "
                "(convert --tile HxW) so they fold into constants")
        err = UnsupportedOpError(msg)
        err.shape_computed = bool(sized)
        raise err

    g = Graph(name=gp.name or "graph")
    g.metadata = {p.key: p.value for p in model.metadata_props}
    ctx = Ctx(consts, shapes, g)
    for vi in real_inputs:
        d, kind = shapes.get(vi.name), vi.type.tensor_type.elem_type
        if kind not in _IO_FLOAT_TYPES:  # a .half() export's float16 I/O becomes float32: what apps feed
            raise ModelFormatError(f"{src}: input {vi.name!r} is {onnx.TensorProto.DataType.Name(kind).lower()}, not "
                                   "float32 or float16 (an image model takes float pixels)")
        if d is None or len(d) != 4:
            raise ModelFormatError(f"{src}: input {vi.name!r} must be an NCHW image tensor, got shape {d}")
        if isinstance(d[0], int) and d[0] != 1:
            raise ModelFormatError(f"{src}: input {vi.name!r} has a fixed batch of {d[0]}; photos go one at a time: "
                                   "export with a batch of 1 (torch.onnx.export with a 1 x C x H x W example)")
        ctx.names[vi.name] = g.add_input(_clean(vi.name), (d[0], d[2], d[3], d[1]))
    try:
        for n in nodes:
            LOWERINGS[n.op].lower(n, ctx)
    except ModelFormatError as e:
        raise ModelFormatError(f"{src}: {e}") from None
    except Exception as e:
        raise ModelFormatError(f"{src}: cannot lower the graph: {e}") from None
    for o in outputs:
        if o in consts or o not in ctx.names:
            raise ModelFormatError(f"{src}: output {o!r} is not computed from the input")
        g.mark_output(ctx.names[o])
    optimize(g)
    _keep_output_names(g, [_clean(o) for o in outputs])
    if CARD_KEY not in g.metadata:
        log.info("%s carries no %s metadata", src, CARD_KEY)
    else:
        _check_card_colour(g, src)
    return g


def _keep_output_names(g: "Graph", names) -> None:
    """The graph's outputs named as the ONNX model's: a final crop (Slice) or channel selection leaves the
    tensor of the node before it as the output (an app's signature key became '/Add_output_0')."""
    for k, (have, want) in enumerate(zip(list(g.outputs), names)):
        if have == want or want in g.tensors or have in g.inputs:
            continue
        t = g.tensors.pop(have)
        t.name = want
        g.tensors[want] = t
        for n in g.nodes:
            n.inputs = [want if i == have else i for i in n.inputs]
            n.outputs = [want if o == have else o for o in n.outputs]
        g.outputs[k] = want


def _check_card_colour(g: "Graph", src) -> None:
    """A card's colour must match the input: "y" (a luma model) for one channel, "rgb" for three."""
    colour = ModelCard.from_json(g.metadata[CARD_KEY], str(src)).colour
    c = g.tensors[g.inputs[0]].shape[3]
    if c in (1, 3) and (c == 1) != (colour == "y"):  # other counts: footprint.check_image_channels says why
        raise ModelFormatError(f"{src}: the card says colour {colour!r} but the input has {c} channel(s) "
                               "(colour 'y' is for one-channel luma models, 'rgb' for three channels)")


# --------------------------------------------------------------------------- ONNX-level passes
def _rename_uses(nodes, old, new):
    for n in nodes:
        n.inputs = [new if i == old else i for i in n.inputs]


def _remove_identities(nodes, outputs):
    keep = []
    for n in nodes:
        if n.op in ("Identity", "Dropout") and n.domain in ("", "ai.onnx"):
            src, dst = n.inputs[0], n.outputs[0]
            if dst in outputs:  # keep the graph's output name: rename the producer instead
                for m in keep:
                    m.outputs = [dst if o == src else o for o in m.outputs]
                _rename_uses(keep, src, dst)
                _rename_uses(nodes, src, dst)
            else:
                _rename_uses(nodes, dst, src)
            continue
        keep.append(n)
    return keep


_FLOAT_TYPES = {1, 10, 11, 16}  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
_IO_FLOAT_TYPES = {1, 10}  # FLOAT, FLOAT16: the image I/O ONNX Runtime runs on a CPU


def _float_casts_as_identities(nodes, gp) -> None:
    """Casts between float types become identities, in place: a float16 network with float I/O (as
    onnxconverter-common's keep_io_types writes it: a cast to float16 after the input, back to float
    before the output) is converted as the float network it was made from. Casts of shapes and sizes
    (integers) stay, for constant folding."""
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*gp.value_info, *gp.input, *gp.output]}
    types.update({i.name: i.data_type for i in gp.initializer})
    for n in nodes:
        if n.op == "Cast" and n.domain in ("", "ai.onnx") and n.attrs.get("to") in _FLOAT_TYPES \
                and types.get(n.inputs[0]) in _FLOAT_TYPES:
            n.op = "Identity"


def _strip_layout_transposes(nodes, inputs, outputs, shapes):
    """NHWC in and out, as tf2onnx exports TensorFlow / Keras models: an input read only through
    Transpose(0, 3, 1, 2) and outputs made by Transpose(0, 2, 3, 1) are the IR's own NHWC, so those
    transposes go (and the input's recorded shape becomes the NCHW one the rest of the import reads)."""
    for x in inputs:
        users = [n for n in nodes if x in n.inputs]
        if not users or any(n.op != "Transpose" or list(n.attrs.get("perm", [])) != [0, 3, 1, 2] for n in users):
            continue
        for t in users:
            _rename_uses(nodes, t.outputs[0], x)
            nodes = [n for n in nodes if n is not t]
        if x in shapes:
            d = shapes[x]
            shapes[x] = (d[0], d[3], d[1], d[2])
    for o in outputs:
        p = next((n for n in nodes if o in n.outputs), None)
        if p is None or p.op != "Transpose" or list(p.attrs.get("perm", [])) != [0, 2, 3, 1] or p.inputs[0] in inputs:
            continue
        src = p.inputs[0]
        nodes = [n for n in nodes if n is not p]
        for m in nodes:
            m.outputs = [o if t == src else t for t in m.outputs]
        _rename_uses(nodes, src, o)
        if src in shapes:
            shapes[o] = shapes[src]
    return nodes


_NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
# A folded constant larger than this is refused: a photo model computes pads, sizes and scales, a few values
# each, and a 200-byte file asking ConstantOfShape for 16000 x 16000 would otherwise take gigabytes to read.
MAX_FOLDED_VALUES = 1 << 24


def _fold_size(n, consts, shapes) -> int | None:
    """How many values folding ``n`` would make, where its inputs or shape inference say; None if unknown."""
    try:
        if n.op == "ConstantOfShape":
            return int(np.prod(consts[n.inputs[0]], dtype=object))
        if n.op == "Expand":
            return int(np.prod(np.broadcast_shapes(consts[n.inputs[0]].shape,
                                                   tuple(int(v) for v in consts[n.inputs[1]])), dtype=object))
        if n.op == "Tile":
            return int(np.prod(np.multiply(consts[n.inputs[0]].shape, consts[n.inputs[1]], dtype=object), dtype=object))
        if n.op == "Range":
            start, limit, delta = (float(np.asarray(consts[i]).reshape(())) for i in n.inputs[:3])
            return max(0, int(np.ceil((limit - start) / delta))) if delta else None
    except (KeyError, ValueError, TypeError, OverflowError):
        return None
    sizes = [shapes.get(o) for o in n.outputs]
    known = [int(np.prod(d, dtype=object)) for d in sizes if d is not None and None not in d]
    return max(known) if known else None


def _fold_constants(nodes, consts, shapes, outputs, opset: int, src=""):
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    keep, partial = [], {}  # partial: Shape outputs with dynamic dims (H, W), whose static ones (C) may be gathered
    for n in nodes:
        if n.op == "Gather" and n.inputs[0] in partial and n.inputs[1] in consts and n.attrs.get("axis", 0) == 0:
            picked = np.asarray(partial[n.inputs[0]], dtype=object)[consts[n.inputs[1]]]
            if all(v is not None for v in np.ravel(picked)):  # x.shape[1] of an N x C x H x W input: C is known
                consts[n.outputs[0]] = np.asarray(picked, np.int64)
                continue
        if n.op == "Constant" and n.domain in ("", "ai.onnx"):
            (k, v), = n.attrs.items()
            if k == "value":
                consts[n.outputs[0]] = numpy_helper.to_array(v)
            elif k in ("value_float", "value_int"):
                consts[n.outputs[0]] = np.array(v, np.float32 if k == "value_float" else np.int64)
            elif k in ("value_floats", "value_ints"):
                consts[n.outputs[0]] = np.array(v, np.float32 if k == "value_floats" else np.int64)
            else:
                keep.append(n)
            continue
        if n.op == "Shape" and n.domain in ("", "ai.onnx"):
            d = shapes.get(n.inputs[0])
            if d is not None and all(v is not None for v in d):
                s = np.array(d, np.int64)[n.attrs.get("start", 0): n.attrs.get("end", len(d))]
                consts[n.outputs[0]] = s
                continue
            if d is not None:
                partial[n.outputs[0]] = list(d)[n.attrs.get("start", 0): n.attrs.get("end", len(d))]
        ins = [i for i in n.inputs if i]
        if ins and all(i in consts for i in ins) and n.op not in _NONDETERMINISTIC and not (set(n.outputs) & set(outputs)):
            size = _fold_size(n, consts, shapes)
            if size is not None and size > MAX_FOLDED_VALUES:
                raise ModelFormatError(f"{src}: node {n.name} ({n.op}) makes a constant of {size:,} values (at most "
                                       f"{MAX_FOLDED_VALUES:,}): not a photo model's, or a damaged file")
            try:
                node = helper.make_node(n.op, n.inputs, n.outputs, domain=n.domain or None, **n.attrs)
                # Wrapped in a function so the op runs at the model's opset (Unsqueeze's axes attribute < 13).
                fn = helper.make_function("fold", "f", ins, n.outputs, [node],
                                          opset_imports=[helper.make_opsetid("", opset)])
                res = ReferenceEvaluator(fn).run(None, {i: consts[i] for i in ins}, attributes={})
            except Exception as e:  # leave it for the unsupported-op report
                log.debug("cannot fold %s: %s", n.name, e)
                keep.append(n)
                continue
            for o, v in zip(n.outputs, res):
                consts[o] = np.asarray(v)
            continue
        keep.append(n)
    used = {i for n in keep for i in n.inputs} | set(outputs)
    return [n for n in keep if n.op != "Shape" or n.outputs[0] in used]  # a Shape whose dims were all folded away


def _infer_again(model, nodes, consts, shapes, inputs, outputs) -> None:
    """Shape inference again on the folded graph: pads and sizes computed from a fixed input's shape are
    constants now, so the shapes behind them (a crop's input after ``F.pad`` to a multiple) become known.
    The inputs as ``shapes`` has them (NCHW, where an NHWC export's layout transposes went), outputs unshaped."""
    import onnx
    from onnx import helper, numpy_helper

    used = {i for n in nodes for i in n.inputs if i in consts}
    vi = lambda name, shape: helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)
    try:
        g = helper.make_graph([helper.make_node(n.op, n.inputs, n.outputs, n.name, domain=n.domain or None, **n.attrs)
                               for n in nodes], "g", [vi(i, shapes.get(i)) for i in inputs], [vi(o, None) for o in outputs],
                              [numpy_helper.from_array(np.asarray(consts[i]), i) for i in used])
        m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        for v in onnx.shape_inference.infer_shapes(m).graph.value_info:
            d = _dims(v)
            if d is not None and (shapes.get(v.name) is None or None not in d):
                shapes[v.name] = d
    except Exception as e:  # the shapes stay as they were
        log.debug("shape inference of the folded graph failed: %s", e)


def _fix_spatial(dims, hw) -> None:
    """Set H and W of a 4-D input's dims (NCHW, or NHWC when only the last axis looks like channels)."""
    if len(dims) != 4:
        return
    static = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    axes = (1, 2) if static[3] in (1, 3) and static[1] not in (1, 3) else (2, 3)
    for a, v in [(0, 1)] * (static[0] is None) + list(zip(axes, hw)):
        dims[a].Clear()
        dims[a].dim_value = int(v)


def _shape_computations(nodes, shapes) -> set:
    """Indices of the nodes that compute sizes from a tensor's shape at run time (Shape and what its
    outputs feed, up to and including the node that applies the size to an image)."""
    derived, found = set(), set()
    for k, n in enumerate(nodes):
        if n.op == "Shape" or derived & set(n.inputs):
            found.add(k)
            derived |= {o for o in n.outputs if n.op == "Shape" or len(shapes.get(o, ())) <= 1}
    return found


def _single_consumer(nodes, name, outputs):
    users = [n for n in nodes if name in n.inputs]
    return users[0] if len(users) == 1 and name not in outputs else None


def _match_pixel_shuffle(nodes, consts, outputs):
    """Reshape -> Transpose -> Reshape (PyTorch pixel_shuffle, CRD; or DCR) -> DepthToSpace."""
    out = list(nodes)
    for r1 in list(nodes):
        if r1.op != "Reshape" or r1 not in out or r1.inputs[1] not in consts:
            continue
        shp = [int(v) for v in consts[r1.inputs[1]]]
        tr = _single_consumer(out, r1.outputs[0], outputs)
        if len(shp) != 6 or tr is None or tr.op != "Transpose":
            continue
        r2 = _single_consumer(out, tr.outputs[0], outputs)
        if r2 is None or r2.op != "Reshape":
            continue
        perm = list(tr.attrs.get("perm", []))
        if perm == [0, 1, 4, 2, 5, 3] and shp[2] == shp[3] and shp[2] > 0:
            mode, r = "CRD", shp[2]
        elif perm == [0, 3, 4, 1, 5, 2] and shp[1] == shp[2] and shp[1] > 0:
            mode, r = "DCR", shp[1]
        else:
            continue
        d2s = ONode("DepthToSpace", r2.name, [r1.inputs[0]], list(r2.outputs), {"blocksize": r, "mode": mode})
        i = out.index(r1)
        for m in (r1, tr, r2):
            out.remove(m)
        out.insert(i, d2s)
    return out


def _axes(n, consts):
    """A Squeeze / Unsqueeze's axes: the attribute (opset < 13) or the constant second input."""
    if "axes" in n.attrs:
        return [int(a) for a in n.attrs["axes"]]
    return [int(a) for a in consts[n.inputs[1]]] if _opt(n, 1) and n.inputs[1] in consts else None


def _match_unsqueezed_pixel_shuffle(nodes, consts, outputs):
    """PyTorch's pixel_shuffle at opset 9 / 10 with a dynamic H, W -> DepthToSpace (CRD):
    Unsqueeze(2, 3) -> Reshape(0, -1, r, r, 0, 0) -> Transpose(0, 1, 4, 2, 5, 3)
    -> Reshape(0, 0, -1, 1, 0, 0) -> Reshape(0, 0, 0, 0, -1, 1) -> Squeeze(3, 5)."""
    out = list(nodes)
    for u in list(nodes):
        if u.op != "Unsqueeze" or u not in out or _axes(u, consts) != [2, 3]:
            continue
        chain, n = [u], u
        for op in ("Reshape", "Transpose", "Reshape", "Reshape", "Squeeze"):
            n = _single_consumer(out, n.outputs[0], outputs)
            if n is None or n.op != op or (op == "Reshape" and n.inputs[1] not in consts):
                break
            chain.append(n)
        if len(chain) != 6:
            continue
        _, r1, tr, r2, r3, sq = chain
        shapes = [[int(v) for v in consts[r.inputs[1]]] for r in (r1, r2, r3)]
        r = shapes[0][2] if len(shapes[0]) == 6 else 0
        if (r < 1 or shapes != [[0, -1, r, r, 0, 0], [0, 0, -1, 1, 0, 0], [0, 0, 0, 0, -1, 1]]
                or list(tr.attrs.get("perm", [])) != [0, 1, 4, 2, 5, 3] or _axes(sq, consts) != [3, 5]):
            continue
        i = out.index(u)
        for m in chain:
            out.remove(m)
        out.insert(i, ONode("DepthToSpace", sq.name, [u.inputs[0]], list(sq.outputs), {"blocksize": r, "mode": "CRD"}))
    return out


def _fold_conv_bn(nodes, consts, outputs):
    out = list(nodes)
    for bn in list(nodes):
        if bn.op != "BatchNormalization" or len(bn.outputs) > 1 and any(bn.outputs[1:]):
            continue
        if not all(i in consts for i in bn.inputs[1:5]):
            continue
        conv = next((n for n in out if bn.inputs[0] in n.outputs), None)
        if conv is None or conv.op != "Conv" or _single_consumer(out, conv.outputs[0], outputs) is not bn:
            continue
        if conv.inputs[1] not in consts or (_opt(conv, 2) and conv.inputs[2] not in consts):
            continue
        s, b = _bn_affine(bn, consts)
        w = consts[conv.inputs[1]].astype(np.float32)
        cb = consts[conv.inputs[2]].astype(np.float32) if _opt(conv, 2) else np.zeros(w.shape[0], np.float32)
        wn, bn_name = conv.name + "::bn_w", conv.name + "::bn_b"
        consts[wn] = w * s.reshape(-1, 1, 1, 1)
        consts[bn_name] = cb * s + b
        conv.inputs = [conv.inputs[0], wn, bn_name]
        conv.outputs = [bn.outputs[0]]
        out.remove(bn)
    return out


# --------------------------------------------------------------------------- IR passes
def optimize(g: Graph) -> None:
    """Fold zero pads into the convs they feed, channel-permutation convs into producers, then fuse
    activations into Conv/Add/Mul."""
    _fold_zero_pads(g)
    _fold_selections(g)
    _fold_scales(g)
    _fold_permutations(g)
    _fuse_activations(g)
    g.prune()


def _fold_zero_pads(g: Graph) -> None:
    """A constant-0 Pad feeding only Convs is those convs' own padding (what ZeroPad2d + Conv export)."""
    for n in list(g.nodes):
        if n.op != "Pad" or n.attrs["mode"] != "constant" or n.outputs[0] in g.outputs:
            continue
        users = g.consumers(n.outputs[0])
        if not users or any(u.op != "Conv" or u.inputs[0] != n.outputs[0] for u in users):
            continue
        for u in users:
            u.attrs["pads"] = tuple(a + b for a, b in zip(u.attrs["pads"], n.attrs["pads"]))
            u.inputs[0] = n.inputs[0]
        g.nodes.remove(n)
        del g.tensors[n.outputs[0]]


_PER_CHANNEL = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "PRelu", "Add", "Mul")


def _fold_selections(g: Graph) -> None:
    """A channel selection (a Slice / Split lowered as a 0 / 1 1x1 conv) is computed instead by copies of the
    layers that made its input, cut to the selected channels: a conv keeps those output rows, per-channel
    ops follow. Where the chain leads elsewhere (an input, a Concat, ...), the 1x1 conv stays: exact, not free."""
    for sel in [n for n in g.nodes if n.attrs.get("selection")]:
        idx = np.argmax(g.tensors[sel.inputs[1]].data[:, 0, 0, :], axis=1)
        made: list = []
        t = _selected(g, sel.inputs[0], idx, sel.name, made)
        if t is None:
            for n in made:  # nothing of a half-built copy stays
                del g.tensors[n.outputs[0]]
            del sel.attrs["selection"]
            continue
        at = g.nodes.index(sel)
        g.nodes[at:at + 1] = made
        made[-1].outputs, old = list(sel.outputs), made[-1].outputs[0]
        g.tensors[sel.outputs[0]] = g.tensors.pop(old)
        g.tensors[sel.outputs[0]].name = sel.outputs[0]


def _selected(g: Graph, t: str, idx: np.ndarray, name: str, made: list) -> str | None:
    """A tensor equal to ``t[..., idx]`` from new nodes appended to ``made``, or None."""
    tt = g.tensors[t]
    if tt.is_const:
        return t if tt.data.shape[-1:] in ((), (1,)) else g.add_const(name + "_k", np.ascontiguousarray(tt.data[..., idx]))
    p = g.producer(t)
    if p is None:
        return None

    def node(op, inputs, **attrs):
        made.append(Node(op, g.unique(f"{name}_{p.name}"), inputs, [g.unique(f"{name}_{p.name}_out")],
                         {**p.attrs, **attrs}))
        out = made[-1].outputs[0]
        g.tensors[out] = Tensor(out, (*g.tensors[t].shape[:3], len(idx)), "float32")
        return out

    if p.op in ("Conv", "ConvTranspose") and p.attrs.get("group", 1) == 1 and not p.attrs.get("permutation") \
            and not p.attrs.get("selection"):
        w, b = (g.tensors[i].data for i in p.inputs[1:3])
        return node(p.op, [p.inputs[0], g.add_const(p.inputs[1], np.ascontiguousarray(w[idx])),
                           g.add_const(p.inputs[2], np.ascontiguousarray(b[idx]))])
    if p.op in _PER_CHANNEL:
        ins = []
        for i in p.inputs:
            ti = g.tensors[i]
            broadcast = not ti.is_const and ti.shape[3] == 1 != tt.shape[3]  # one channel for all: kept whole
            s = i if broadcast else _selected(g, i, idx, name, made)
            if s is None:
                return None
            ins.append(s)
        return node(p.op, ins)
    return None


def _fold_scales(g: Graph) -> None:
    """A Mul by a constant (scalar or per channel) right after a Conv / ConvTranspose with no activation,
    its only use, is that conv with scaled weights and bias: EDSR's residual scaling, the -1 of a Sub."""
    for n in list(g.nodes):
        if n.op != "Mul" or n.attrs.get("activation", "none") != "none":
            continue
        kept = [i for i in n.inputs if g.tensors[i].is_const]
        if len(kept) != 1:
            continue
        x = n.inputs[1 - n.inputs.index(kept[0])]
        p, k = g.producer(x), g.tensors[kept[0]].data
        if p is None or p.op not in ("Conv", "ConvTranspose") or p.attrs.get("activation") != "none" \
                or not _sole_use(g, x) or p.attrs.get("permutation"):
            continue
        c = g.tensors[p.inputs[1]].data.shape[0]
        if not (k.size == 1 or (k.shape[-1] == c and k.size == c)):
            continue
        k = k.reshape(-1).astype(np.float32)
        for i, shape in ((1, (-1, 1, 1, 1)), (2, (-1,))):
            w = g.tensors[p.inputs[i]].data
            p.inputs[i] = g.add_const(p.inputs[i], (w * k.reshape(shape)).astype(np.float32))  # a copy: weights may be shared
        g.nodes.remove(n)
        del g.tensors[x]
        p.outputs = [n.outputs[0]]


def _fold_permutations(g: Graph) -> None:
    for node in [n for n in g.nodes if n.attrs.get("permutation")]:
        w = g.tensors[node.inputs[1]].data
        perm = np.argmax(w[:, 0, 0, :], axis=1)
        src = node.inputs[0]
        if _can_permute(g, src, perm):
            _apply_permute(g, src, perm)
            for m in g.nodes:
                m.inputs = [src if i == node.outputs[0] else i for i in m.inputs]
            g.outputs = [src if o == node.outputs[0] else o for o in g.outputs]
            g.nodes.remove(node)
        else:
            del node.attrs["permutation"]


def _sole_use(g, t):
    return len(g.consumers(t)) == 1 and t not in g.outputs


def _can_permute(g, t, perm):
    p = g.producer(t)
    if p is None or not _sole_use(g, t):
        return False
    if p.op in ("Conv", "ConvTranspose") and p.attrs.get("group", 1) == 1:
        return True
    if p.op in ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh"):
        return _can_permute(g, p.inputs[0], perm)
    if p.op == "Add":
        return all(_can_permute_operand(g, i, perm) for i in p.inputs)
    if p.op == "Concat" and p.attrs["axis"] == 3 and len(set(p.inputs)) == 1:
        c0 = g.tensors[p.inputs[0]].shape[3]
        return bool(np.all(perm % c0 == np.arange(len(perm)) % c0))
    return False


def _can_permute_operand(g, t, perm):
    tt = g.tensors[t]
    if tt.is_const:
        return tt.data.size == 1 or tt.data.shape[-1] == len(perm)
    return _can_permute(g, t, perm)


def _apply_permute(g, t, perm):
    tt = g.tensors[t]
    if tt.is_const:
        if tt.data.size > 1:
            tt.data = np.ascontiguousarray(tt.data[..., perm])
        return
    p = g.producer(t)
    if p.op in ("Conv", "ConvTranspose"):
        for i in (1, 2):
            w = g.tensors[p.inputs[i]]
            if len(g.consumers(p.inputs[i])) > 1:  # shared weights: copy before permuting
                p.inputs[i] = g.add_const(p.inputs[i], w.data)
                w = g.tensors[p.inputs[i]]
            w.data = np.ascontiguousarray(w.data[perm])
    elif p.op in ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh"):
        _apply_permute(g, p.inputs[0], perm)
    elif p.op == "Add":
        for i in p.inputs:
            _apply_permute(g, i, perm)
    # Concat of identical copies: invariant under this permutation (checked in _can_permute).


def _fused_kind(n):
    if n.op == "Relu":
        return "relu"
    if n.op == "Clip":
        bounds = (n.attrs["min"], n.attrs["max"])
        return {(0.0, None): "relu", (0.0, 6.0): "relu6", (-1.0, 1.0): "relu_n1_to_1"}.get(bounds)
    return None


def _fuse_activations(g: Graph) -> None:
    for act in list(g.nodes):
        kind = _fused_kind(act)
        if kind is None:
            continue
        p = g.producer(act.inputs[0])
        if p is None or p.op not in FUSABLE or p.attrs.get("activation") != "none" or not _sole_use(g, act.inputs[0]):
            continue
        if p.attrs.get("permutation"):
            continue
        old = p.outputs[0]
        p.outputs = [act.outputs[0]]
        p.attrs["activation"] = kind
        g.nodes.remove(act)
        del g.tensors[old]
