"""Post-training quantisation of the IR to TFLite's full-integer int8 scheme (and 16x8 per layer).

TFLite int8 spec: weights int8 symmetric per output channel (zero point 0, range [-127, 127]),
biases int32 with scale ``in_scale * w_scale`` (the writer derives them), activations int8
asymmetric per tensor. Our models are residual in image space, ``Clip(base + residual, 0, 1)``:
the clip's range [0, 1] is given to the tensors feeding it, so the output grid is exactly 1/255 and
int8 maps onto 8-bit pixels with no extra rounding.

Pipeline: (optional) cross-layer equalisation of weights and / or equalisation of activation
channels -> per-channel weight quantisation -> (optional) bias correction -> activation calibration
(min-max / percentile / MSE) -> TFLite int8 constraints. ``cle``, ``act_eq`` and ``bias_correction``
default to ``"auto"``: each variant is simulated on the calibration set and kept only if it lowers
the output error; the effect is reported.

>>> sqnr_db(np.array([1.0, -1.0]), np.array([1.0, -0.9]))
23.01
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field

import numpy as np

from conversion import executor
from conversion.ir import QDTYPES, Graph, QuantParams
from conversion.tflite_writer import (affine_from_range, apply_int8_constraints, symmetric_per_channel, to_tflite,
                                     transpose_convs_as_subpixel)

from .calibration import METHODS, CalibSet, RangeStats, flat_frames
from .errors import CalibrationError, ConfigError
from .tflite16 import has_int16, writer_with_int64_bias

log = logging.getLogger(__name__)

IO_TYPES = ("float", "int8", "uint8")
AUTO = "auto"
# Ops whose int8 kernels need their output params equal to their input's (data movement).
_PASS_THROUGH = ("DepthToSpace", "Resize")
IO_KEY = "edge_enhance.quant.io"
ROUNDINGS = ("gptq", "nearest")
# int16 activation ranges are the calibration min-max times this: a residual or feature map that
# peaks higher on a real photo than on the calibration crops is not clipped (measured on sr-x2-rt
# with 8 small crops: the residual's min-max was 0.25, Set5's butterfly needs 0.36).
HEADROOM_16 = 2.0
# Activation equalisation strength (equalize_activations): measured on the bundled denoise (simulated
# int8 drop on the calibration set 0.260 dB without, 0.186 / 0.182 / 0.187 with alpha 0.5 / 0.75 / 1).
ACT_EQ_ALPHA = 0.5


@dataclass
class LayerReport:
    name: str  # node name
    tensor: str  # its output tensor
    sqnr_db: float  # of this tensor with the whole model quantised (accumulated error)
    drop_db: float | None = None  # model PSNR drop with only this layer quantised
    precision: str = "int8"


@dataclass
class QuantReport:
    method: str
    cle: bool
    bias_correction: bool
    float_psnr: float  # on the calibration pairs
    quant_psnr: float
    variants: dict = field(default_factory=dict)  # "cle=..,ae=..,bc=.." -> simulated PSNR drop
    layers: list = field(default_factory=list)
    io: str = "float"
    rounding: str = "gptq"
    act_eq: bool = False
    flat_frames: bool = True  # ranges cover flat frames (calibration.flat_frames)
    tried_16x8: list = field(default_factory=list)  # max_drop's search: (16x8 layers, simulated drop), in order

    @property
    def drop(self) -> float:
        return self.float_psnr - self.quant_psnr

    def lines(self) -> list[str]:
        on = {True: "on", False: "off"}
        out = [f"method {self.method}; weight rounding {self.rounding}; cross-layer equalisation {on[self.cle]}; "
               f"activation equalisation {on[self.act_eq]}; bias correction {on[self.bias_correction]}",
               f"calibration set (simulated): float {self.float_psnr:.3f} dB, quantised {self.quant_psnr:.3f} dB, "
               f"drop {self.drop:.3f} dB"]
        for k, v in self.variants.items():
            out.append(f"  variant {k}: simulated drop {v:.3f} dB")
        for names, d in self.tried_16x8:
            out.append(f"  16x8 {'+'.join(names) or 'none'}: simulated drop {d:.3f} dB")
        out.append(f"  {'layer':<24} {'precision':>9} {'SQNR dB':>8} {'alone drop dB':>14}")
        for r in self.layers:
            d = "" if r.drop_db is None else f"{r.drop_db:.4f}"
            out.append(f"  {r.name:<24} {r.precision:>9} {r.sqnr_db:8.2f} {d:>14}")
        return out


@dataclass
class QuantResult:
    graph: Graph
    report: QuantReport


# --------------------------------------------------------------------------- pure helpers
def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio in dB, rounded to 0.01 (inf for an exact match)."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    noise = float(np.sum((ref - test) ** 2))
    sig = float(np.sum(ref ** 2))
    if noise == 0:
        return float("inf")
    return round(float(10 * np.log10(max(sig, 1e-30) / noise)), 2)


def psnr_u8(target: np.ndarray, out_nhwc: np.ndarray, input_range: tuple = (0.0, 1.0)) -> float:
    """PSNR of a model output (on ``input_range``) rounded to 8-bit pixels, as the evaluation does (no shave)."""
    lo, hi = input_range
    y = np.clip(np.rint((out_nhwc[0] - lo) * (255.0 / (hi - lo))), 0, 255)
    mse = float(np.mean((y - target.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def quantize_weights(w: np.ndarray, per_channel: bool = True, axis: int = 0) -> QuantParams:
    """TFLite int8 weight params: symmetric, zero point 0, range [-127, 127].

    >>> q = quantize_weights(np.array([[1.0, -0.5], [0.1, 0.2]]))
    >>> q.quantize(np.array([[1.0, -0.5], [0.1, 0.2]])).tolist()
    [[127, -64], [63, 127]]
    """
    q = symmetric_per_channel(w, axis)
    if per_channel:
        return q
    s = float(q.scale.max())
    return QuantParams([s], [0], 0, "int8")


def activation_params(lo: float, hi: float, dtype: str = "int8") -> QuantParams:
    """Asymmetric int8 (range widened to include 0), or symmetric int16 with zero point 0 (16x8).

    >>> q = activation_params(0.0, 1.0); round(float(q.scale[0]) * 255, 6), int(q.zero_point[0])
    (1.0, -128)
    >>> activation_params(-0.5, 2.0, "int16").zero_point.tolist()
    [0]
    """
    if dtype == "int16":
        m = max(abs(lo), abs(hi), 1e-8)
        return QuantParams([m / 32767], [0], 0, "int16")
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    return affine_from_range(lo, hi, dtype)


# --------------------------------------------------------------------------- graph surgery
def conv_pairs(g: Graph, depthwise: bool = False) -> list:
    """(A, B) Conv nodes where A's output (ReLU-fused or linear) feeds only B, a dense conv. A is dense,
    or with ``depthwise`` also a depthwise conv (one filter per channel): scaling its output channel c
    scales only c, so the DFQ depthwise -> pointwise pair equalises as a dense one does (pruning, which
    removes A's output channels, cannot take it: a depthwise channel is also an input channel)."""
    pairs = []
    for a in g.nodes:
        if a.op != "Conv" or a.attrs["activation"] not in ("relu", "none"):
            continue
        w = g.tensors[a.inputs[1]].data
        dense_or_dw = a.attrs["group"] == 1 or (depthwise and w is not None and w.shape[3] == 1
                                                 and a.attrs["group"] == w.shape[0])
        if not dense_or_dw:
            continue
        out = a.outputs[0]
        if out in g.outputs:
            continue
        cons = g.consumers(out)
        if len(cons) == 1 and cons[0].op == "Conv" and cons[0].attrs["group"] == 1 and cons[0].inputs[0] == out:
            pairs.append((a, cons[0]))
    return pairs


def equalize_pair(w1, b1, w2, eps: float = 1e-8):
    """One DFQ equalisation step: channel c of conv1 divided by s_c, input c of conv2 times s_c.

    With s = sqrt(r1 / r2) (r1: per-output-channel range of w1, r2: per-input-channel range of w2)
    both ranges become sqrt(r1 * r2). ReLU(x / s) = ReLU(x) / s for s > 0, so outputs are unchanged.
    w1, w2 are OHWI.
    """
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(axis=1)
    r2 = np.abs(w2).transpose(3, 0, 1, 2).reshape(w2.shape[3], -1).max(axis=1)
    s = np.where((r1 > eps) & (r2 > eps), np.sqrt(np.maximum(r1, eps) / np.maximum(r2, eps)), 1.0)
    return w1 / s[:, None, None, None], b1 / s, w2 * s[None, None, None, :], s


def cross_layer_equalize(g: Graph, sweeps: int = 20) -> int:
    """Equalise every Conv->ReLU->Conv pair in place (several sweeps, as chains interact), a depthwise
    conv feeding a dense one included; returns the pairs done."""
    pairs = conv_pairs(g, depthwise=True)
    for _ in range(sweeps):
        worst = 0.0
        for a, b in pairs:
            t1, tb, t2 = (g.tensors[n] for n in (a.inputs[1], a.inputs[2], b.inputs[1]))
            w1, b1, w2, s = equalize_pair(t1.data.astype(np.float64), tb.data.astype(np.float64),
                                          t2.data.astype(np.float64))
            t1.data, tb.data, t2.data = w1.astype(np.float32), b1.astype(np.float32), w2.astype(np.float32)
            worst = max(worst, float(np.abs(np.log(s)).max()) if s.size else 0.0)
        if worst < 1e-3:
            break
    return len(pairs)


def equalize_activations(g: Graph, calib: CalibSet, alpha: float = ACT_EQ_ALPHA) -> int:
    """Activation equalisation, in place; returns the pairs done.

    One int8 range serves all channels of a tensor, so a channel that peaks at a third of the
    tensor's peak keeps a third of the 256 steps. For every Conv->ReLU->Conv pair, channel c of the
    first conv's output is multiplied by s_c = (R / r_c) ** alpha (r_c: its peak |value| on the
    calibration set, R: the largest r_c) and the second conv's input c divided by it: channels'
    peaks move toward R, outputs are unchanged (ReLU(s x) = s ReLU(x) for s > 0). The second conv's
    weights pay for it (per-channel weight ranges do not move with the columns), hence alpha < 1.
    Silent channels (r_c = 0) are left alone. A depthwise first conv is taken as a dense one.
    """
    pairs = conv_pairs(g, depthwise=True)
    want = {a.outputs[0] for a, _ in pairs}
    peak: dict = {}

    def observe(name, v):
        if name in want:
            m = np.abs(v).reshape(-1, v.shape[-1]).max(axis=0)
            peak[name] = np.maximum(peak.get(name, 0.0), m)

    for x in calib.inputs:
        executor.run(g, {g.inputs[0]: x}, observer=observe)
    for a, b in pairs:
        r = peak[a.outputs[0]].astype(np.float64)
        top = float(r.max())
        s = np.where(r > 1e-6 * top, (top / np.maximum(r, 1e-30)) ** alpha, 1.0) if top > 0 else np.ones_like(r)
        t1, tb, t2 = (g.tensors[n] for n in (a.inputs[1], a.inputs[2], b.inputs[1]))
        t1.data = (t1.data * s[:, None, None, None]).astype(np.float32)
        tb.data = (tb.data * s).astype(np.float32)
        t2.data = (t2.data / s[None, None, None, :]).astype(np.float32)
    return len(pairs)


def _weighted_convs(g: Graph) -> list:
    return [n for n in g.nodes if n.op in ("Conv", "ConvTranspose")]


def quantize_all_weights(g: Graph, per_channel: bool) -> None:
    for n in _weighted_convs(g):
        t = g.tensors[n.inputs[1]]
        t.quant = quantize_weights(t.data, per_channel, 0)


def im2col(x: np.ndarray, kh: int, kw: int, strides=(1, 1), dilations=(1, 1), pads=(0, 0, 0, 0)) -> np.ndarray:
    """NHWC input -> [pixels, kh*kw*C] patches in OHWI weight order (a group-1 conv is a matmul).

    >>> x = np.arange(4.0).reshape(1, 2, 2, 1)
    >>> im2col(x, 2, 2).tolist()
    [[0.0, 1.0, 2.0, 3.0]]
    """
    x = np.pad(np.asarray(x, np.float64), ((0, 0), (pads[0], pads[2]), (pads[1], pads[3]), (0, 0)))
    n, h, w, c = x.shape
    (sh, sw), (dh, dw) = strides, dilations
    oh, ow = (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1
    cols = [x[:, ky * dh: ky * dh + (oh - 1) * sh + 1: sh, kx * dw: kx * dw + (ow - 1) * sw + 1: sw, :]
            for ky in range(kh) for kx in range(kw)]
    return np.concatenate(cols, axis=-1).reshape(n * oh * ow, kh * kw * c)


def gptq_round(w: np.ndarray, hessian: np.ndarray, q: QuantParams, damp: float = 0.01) -> np.ndarray:
    """GPTQ (Frantar et al. 2022): round weights column by column, pushing each column's rounding
    error onto the columns not yet rounded so the layer's output on the calibration inputs moves
    least. ``w`` is [O, K], ``hessian`` X^T X of the layer's [pixels, K] inputs, ``q`` per-row
    int8 params; returns weights on q's grid (same shape).
    """
    w = np.array(w, np.float64)
    k = w.shape[1]
    h = np.array(hessian, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * float(np.mean(np.diag(h))) * np.eye(k)
    u = np.linalg.cholesky(np.linalg.inv(h)).T  # upper factor of H^-1
    s = q.scale.reshape(-1)
    out = np.empty_like(w)
    for j in range(k):
        col = w[:, j]
        qc = np.clip(np.floor(np.abs(col / s) + 0.5) * np.sign(col), -127, 127) * s
        out[:, j] = qc
        err = (col - qc) / u[j, j]
        w[:, j:] -= np.outer(err, u[j, j:])
    return out


def gptq_weights(g: Graph, calib: CalibSet, assign) -> int:
    """Round every group-1 Conv's weights with GPTQ, layer by layer, on the inputs the partly
    quantised model produces (so later layers also absorb earlier layers' errors). ``assign(g)``
    sets activation params for the simulation. Returns the layers done."""
    convs = [n for n in g.nodes if n.op == "Conv" and n.attrs["group"] == 1]
    for n in convs:
        h = copy.deepcopy(g)  # assigning params may add nodes (16x8 boundaries): keep g clean
        assign(h)
        hn = next(m for m in h.nodes if m.name == n.name)
        wt = g.tensors[n.inputs[1]]
        o, kh, kw, ci = wt.data.shape
        hess = np.zeros((kh * kw * ci, kh * kw * ci))
        for x in calib.inputs:
            env = executor.run(h, {h.inputs[0]: x}, simulate_quant=True, keep_all=True)
            cols = im2col(env[hn.inputs[0]], kh, kw, n.attrs["strides"], n.attrs["dilations"], n.attrs["pads"])
            hess += cols.T @ cols
        wq = gptq_round(wt.data.reshape(o, -1), hess, wt.quant)
        wt.data = wq.reshape(wt.data.shape).astype(np.float32)
    return len(convs)


def bias_correct(g: Graph, calib: CalibSet, ref: Graph | None = None) -> None:
    """Empirical bias correction (DFQ / AIMET): remove the mean output shift weight rounding causes.

    E[conv(x, Wq) - conv(x, W)]_o = sum_{k,i} (Wq - W)[o, k, i] * E[x_i] (borders aside), measured
    with the float model's input means on the calibration set. ``ref`` is that float model when
    ``g``'s weights were already moved (GPTQ leaves them on the grid, so W would equal Wq).
    """
    ref = ref if ref is not None else g
    convs = [n for n in g.nodes if n.op == "Conv" and n.attrs["group"] == 1]
    want = {n.inputs[0] for n in convs}
    sums: dict = {}
    count: dict = {}

    def observe(name, v):
        if name in want:
            sums[name] = sums.get(name, 0.0) + v.reshape(-1, v.shape[-1]).sum(axis=0, dtype=np.float64)
            count[name] = count.get(name, 0) + v.size // v.shape[-1]

    for x in calib.inputs:
        executor.run(ref, {ref.inputs[0]: x}, observer=observe)
    for n in convs:
        mu = sums[n.inputs[0]] / count[n.inputs[0]]
        wt, bt = g.tensors[n.inputs[1]], g.tensors[n.inputs[2]]
        w_float = ref.tensors[n.inputs[1]].data.astype(np.float64)
        dw = wt.quant.fake_quantize(wt.data).astype(np.float64) - w_float
        shift = np.einsum("ohwi,i->o", dw, mu)
        bt.data = (bt.data.astype(np.float64) - shift).astype(np.float32)


def _clip_bounds(g: Graph) -> dict:
    """Tensor -> (lo, hi) for Clip outputs with finite bounds, carried back through data movement
    (DepthToSpace / Resize) to the tensor that produces them: those values are clamped anyway."""
    bounds = {}
    for n in reversed(g.nodes):
        out = n.outputs[0]
        if n.op == "Clip" and n.attrs["min"] is not None and n.attrs["max"] is not None:
            bounds[out] = (float(n.attrs["min"]), float(n.attrs["max"]))
        if out in bounds and (n.op == "Clip" or n.op in _PASS_THROUGH):
            src = n.inputs[0]
            if len(g.consumers(src)) == 1 and src not in g.outputs and src not in g.inputs:
                bounds.setdefault(src, bounds[out])
    return bounds


def collect_stats(g: Graph, calib: CalibSet, flat: bool = True) -> RangeStats:
    """Ranges and histograms on the calibration inputs; with ``flat``, the floors every range covers."""
    st = RangeStats()
    for x in calib.inputs:
        executor.run(g, {g.inputs[0]: x}, observer=st.observe_range)
    for x in calib.inputs:
        executor.run(g, {g.inputs[0]: x}, observer=st.observe_hist)
    for x in flat_frames(calib) if flat else ():
        executor.run(g, {g.inputs[0]: x}, observer=st.observe_floor)
    return st


def assign_activation_params(g: Graph, st: RangeStats, method: str, percentile: float = 99.99,
                             keep_16x8: frozenset = frozenset()) -> None:
    """Set QuantParams on every activation tensor (inputs and node outputs), in place.

    Outputs of the nodes named in ``keep_16x8`` are int16 (symmetric); where int8 and int16 meet,
    :func:`insert_precision_boundaries` adds the conversions TFLite needs.
    """
    bounds = _clip_bounds(g)
    ranges = {}  # each tensor's int8 range, the calibrated one: where a 16x8 output goes back to int8
    for name in g.inputs:
        # Inputs are 8-bit pixels / 255: the 1/255 grid represents them exactly.
        lo, hi = (0.0, 1.0) if name not in st.lo else (min(st.lo[name], 0.0), max(st.hi[name], 1.0))
        ranges[name] = (lo, hi)
        g.tensors[name].quant = activation_params(lo, hi)
    for n in g.nodes:
        out, wide = n.outputs[0], n.name in keep_16x8
        ranges[out] = bounds[out] if out in bounds else st.range(out, method, percentile)
        if wide and out not in bounds:  # int16 has 128x int8's steps: clip nothing seen, leave room for unseen peaks
            g.tensors[out].quant = activation_params(*(HEADROOM_16 * v for v in st.range(out, "minmax")), "int16")
        else:
            g.tensors[out].quant = activation_params(*ranges[out], "int16" if wide else "int8")
    apply_int8_constraints(g)
    if keep_16x8:
        insert_precision_boundaries(g, keep_16x8, ranges)
    align_residual_adds(g, st)
    fit_bias_scales(g)


INT32_MAX = QDTYPES["int32"][1]


def fit_bias_scales(g: Graph) -> int:
    """Widen the weight scale of every channel whose int32 bias, at ``in_scale * w_scale``, would not
    hold its bias (TFLite's converter does the same); returns the channels widened, in place.

    A channel with tiny weights and a large bias (a nearly dead filter) otherwise has its bias clipped
    at 2^31 - 1 steps, and the int8 layer's output there is wrong. 16x8 layers (int16 input) have an
    int64 bias: nothing to fit.

    >>> from conversion.ir import Graph
    >>> g = Graph(); x = g.add_input("x", (1, 2, 2, 1))
    >>> w = g.add_const("w", np.full((1, 1, 1, 1), 1e-9, np.float32)); b = g.add_const("b", np.array([0.5], np.float32))
    >>> y = g.add_node("Conv", [x, w, b])
    >>> g.tensors["x"].quant = activation_params(0.0, 1.0); g.tensors["w"].quant = quantize_weights(g.tensors["w"].data)
    >>> fit_bias_scales(g), bool(0.5 / (g.tensors["w"].quant.scale[0] / 255) <= INT32_MAX)
    (1, True)
    """
    widened = 0
    for n in _weighted_convs(g):
        xq, wt = g.tensors[n.inputs[0]].quant, g.tensors[n.inputs[1]]
        if xq is None or wt.quant is None or xq.dtype == "int16" or len(n.inputs) < 3:
            continue
        need = np.abs(np.asarray(g.tensors[n.inputs[2]].data, np.float64)) / (xq.scale[0] * INT32_MAX) * 1.001
        scale = np.broadcast_to(wt.quant.scale, need.shape)
        low = need > scale
        if low.any():
            wt.quant = QuantParams(np.maximum(scale, need), np.zeros(need.size, np.int64),
                                   wt.quant.quantized_dimension, wt.quant.dtype)
            log.info("%s: weight scale of %d channel(s) widened so their int32 bias fits", n.name, int(low.sum()))
            widened += int(low.sum())
    return widened


INT16_OPS = ("Conv", "ConvTranspose", "Add", "Mul")  # what TFLite runs as 16x8 and keep_16x8 may name


def insert_precision_boundaries(g: Graph, keep_16x8, ranges: dict) -> int:
    """Make every op's activation inputs the dtype of its output, in place; returns converters added.
    ``ranges``: each tensor's calibrated int8 range, which a 16x8 output takes where it becomes int8
    (its own int16 range is widened for headroom: 2x int8's step there cost an ESPCN 0.15 dB on Set5).

    A converter is ``Maximum(x, -1e30)``: the identity on real values, which
    the TFLite writer emits as one QUANTIZE (int8 <-> int16 requantisation); the executor's simulation
    rounds it to the new grid just the same.
    Data-movement ops without int16 kernels (DepthToSpace, Resize, ...) stay int8.
    """
    for n in g.nodes:  # int16 params copied onto data movement by apply_int8_constraints go back to int8
        q = g.tensors[n.outputs[0]].quant
        if n.name not in keep_16x8 and q is not None and q.dtype == "int16":
            g.tensors[n.outputs[0]].quant = activation_params(*ranges[n.inputs[0]])
    made: dict = {}
    added = 0
    for n in list(g.nodes):
        want = g.tensors[n.outputs[0]].quant.dtype
        for k, i in enumerate(n.inputs):
            t = g.tensors[i]
            if t.is_const or t.quant is None or t.quant.dtype == want:
                continue
            if (i, want) not in made:
                # int8 -> int16 spans the int8 grid itself: a tensor whose params were widened (a
                # repeated-input Concat keeps its input's [0, 1]) is not clipped to a calibrated range.
                lo_hi = _real_range(t.quant) if want == "int16" else ranges.get(i, _real_range(t.quant))
                q = activation_params(*lo_hi, want)
                # Far below any grid: quantised it clamps to the grid's lowest value, so the max is
                # the identity in float and in int.
                c = g.add_const(f"{i}_to_{want}_floor", np.array([-1e30], np.float32))
                out = g.add_node("Maximum", [i, c], name=g.unique(f"{i}_to_{want}"), output=f"{i}_to_{want}")
                g.tensors[out].quant = q
                node = g.nodes.pop()
                g.nodes.insert(g.nodes.index(n), node)
                made[(i, want)] = out
                added += 1
            n.inputs[k] = made[(i, want)]
    return added


def precision_split(g: Graph) -> dict:
    """Activation dtype of each op of a quantised graph: ``{"int16": {op: n}, "int8": {op: n},
    "boundaries": n}``, the int8 <-> int16 converters of :func:`insert_precision_boundaries` apart."""
    out: dict = {"int16": {}, "int8": {}, "boundaries": 0}
    for n in g.nodes:
        dt = g.tensors[n.outputs[0]].quant.dtype
        if n.op == "Maximum" and n.outputs[0] == f"{n.inputs[0]}_to_{dt}":
            out["boundaries"] += 1
        else:
            out[dt][n.op] = out[dt].get(n.op, 0) + 1
    return out


def _real_range(q: QuantParams) -> tuple[float, float]:
    lo, hi = QDTYPES[q.dtype]
    return float((lo - q.zero_point[0]) * q.scale[0]), float((hi - q.zero_point[0]) * q.scale[0])


def _best_residual_window(counts, edges, s0: float, kmax: int) -> tuple[float, float, float]:
    """(step, lo, hi) for a residual: step k * s0 (k = 1..kmax) and the window's placement that
    minimise clipping error plus the extra rounding noise of a coarser step, (k^2 - 1) s0^2 / 12
    per value (at k = 1 the residual's rounding is the output's own, so it is free)."""
    x = (edges[:-1] + edges[1:]) / 2
    w = counts.astype(np.float64)
    total = max(float(w.sum()), 1.0)
    best = None
    for k in range(1, kmax + 1):
        width = 255 * k * s0
        lo_min, lo_max = max(float(edges[0]), -width), min(float(edges[-1]) - width, 0.0)
        for a in np.linspace(lo_min, max(lo_min, lo_max), 65):
            clip = np.maximum(x - (a + width), 0.0) + np.maximum(a - x, 0.0)
            cost = float(np.sum(w * clip ** 2)) / total + (k * k - 1) * s0 * s0 / 12
            if best is None or cost < best[0]:
                best = (cost, k * s0, float(a), float(a) + width)
    return best[1], best[2], best[3]


def align_residual_adds(g: Graph, st: RangeStats | None = None) -> int:
    """Put the residual of ``base + residual`` on the output's own grid; returns the adds changed.

    When the base and the sum share one grid (1/255: 8-bit pixels), a residual quantised with the
    same step makes the int8 sum equal round(base + residual): the residual's rounding *is* the
    output's rounding, which the float model pays too, so it costs nothing. The residual's range
    keeps its centre; when 256 steps cannot cover it, the step grows by whole multiples or the
    range is clipped, whichever costs less on the calibration histogram (``st``).

    >>> from conversion.ir import Graph
    >>> g = Graph(); x = g.add_input("x", (1, 2, 2, 1)); r = g.add_node("Relu", [x])
    >>> g.mark_output(g.add_node("Add", [x, r], output="y"))
    >>> for t, (lo, hi) in (("x", (0, 1)), (r, (0, 0.3)), ("y", (0, 1))): g.tensors[t].quant = activation_params(lo, hi)
    >>> align_residual_adds(g), round(float(g.tensors[r].quant.scale[0]) * 255, 6)
    (1, 1.0)
    """
    changed = 0
    for n in g.nodes:
        if n.op != "Add" or n.attrs["activation"] != "none" or len(n.inputs) != 2:
            continue
        qo = g.tensors[n.outputs[0]].quant
        qs = [g.tensors[i].quant for i in n.inputs]
        if qo is None or any(q is None for q in qs) or qo.dtype != "int8" or qo.per_channel:
            continue
        for k in (0, 1):
            base, res = qs[k], qs[1 - k]
            rname = n.inputs[1 - k]
            if (base.dtype != "int8" or res.dtype != "int8" or g.tensors[rname].is_const
                    or not np.isclose(base.scale[0], qo.scale[0], rtol=1e-9)):
                continue
            hist = (st.hist[rname], st.edges(rname)) if st is not None and rname in st.hist else None
            q = g.tensors[rname].quant = residual_params(res, float(qo.scale[0]), hist)
            # Data movement before the add (a half-resolution residual's DepthToSpace) keeps its
            # input's params: the producing conv then writes on the output grid directly.
            p = g.producer(rname)
            while p is not None and p.op in _PASS_THROUGH and len(g.consumers(p.inputs[0])) == 1 \
                    and not g.tensors[p.inputs[0]].is_const and p.inputs[0] not in g.inputs:
                g.tensors[p.inputs[0]].quant = copy.deepcopy(q)
                p = g.producer(p.inputs[0])
            changed += 1
            break
    return changed


def residual_params(res: QuantParams, s0: float, hist=None) -> QuantParams:
    """int8 params for a residual (calibrated as ``res``) added onto a base on the output grid
    ``s0``: step ``k * s0`` with the fewest k covering its range, centre kept, or, with a
    calibration histogram ``(counts, edges)`` and k > 1, the step and window costing least.

    >>> q = residual_params(activation_params(-0.3, 0.2), 1 / 255); round(float(q.scale[0]) * 255, 6), int(q.zero_point[0])
    (1.0, 12)
    """
    lo, hi = _real_range(res)
    kmax = max(1, int(np.ceil((hi - lo) / (255 * s0) - 1e-9)))
    if hist is not None and kmax > 1:
        step, lo, hi = _best_residual_window(hist[0], hist[1], s0, kmax)
    else:
        step = s0 * kmax
    zp = int(np.clip(np.round(-128 - ((lo + hi) / 2 - 127.5 * step) / step), -128, 127))
    return QuantParams([step], [zp], 0, "int8")


def _simulate(g: Graph, calib: CalibSet, quant: bool) -> list:
    return [executor.run(g, {g.inputs[0]: x}, simulate_quant=quant)[g.outputs[0]] for x in calib.inputs]


def mean_psnr(outs: list, calib: CalibSet) -> float:
    return float(np.mean([psnr_u8(t, y, calib.input_range) for t, y in zip(calib.targets, outs)]))


def _only(g: Graph, keep_names: set) -> Graph:
    """A copy where only the listed tensors keep their QuantParams (for per-layer sensitivity)."""
    h = copy.deepcopy(g)
    for name, t in h.tensors.items():
        if name not in keep_names:
            t.quant = None
    return h


# --------------------------------------------------------------------------- driver
def _check_calib(graph: Graph, calib: CalibSet) -> None:
    if not isinstance(calib, CalibSet) or len(calib) == 0:
        raise CalibrationError("quantisation needs a non-empty calibration set (see quantization.calibration)")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ConfigError(f"quantisation handles single-input, single-output models; {graph.name} has "
                          f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs")
    c, a = graph.tensors[graph.inputs[0]].shape[-1], graph.align
    for x in calib.inputs:
        if x.ndim != 4 or x.shape[-1] != c:
            raise CalibrationError(f"calibration input of shape {x.shape} does not fit model input "
                                   f"{graph.tensors[graph.inputs[0]].shape}")
        if x.shape[1] % a or x.shape[2] % a:
            raise CalibrationError(f"calibration input of shape {x.shape}: the model's input height and width must "
                                   f"be multiples of {a} (its card's align); crop calibration images to multiples")


def _equalized(graph: Graph, calib: CalibSet, cle: bool, act_eq: bool) -> Graph:
    g = copy.deepcopy(graph)
    if cle:
        cross_layer_equalize(g)
    if act_eq:
        equalize_activations(g, calib)
    return g


def _build(graph: Graph, calib: CalibSet, *, method, per_channel, cle, bc, percentile, keep_16x8,
           rounding="gptq", act_eq=False, flat=True) -> Graph:
    g = _equalized(graph, calib, cle, act_eq)
    quantize_all_weights(g, per_channel)
    ref = copy.deepcopy(g)  # float (equalised) weights, before rounding moves them
    if rounding == "gptq":
        st0 = collect_stats(g, calib, flat)
        gptq_weights(g, calib, lambda h: assign_activation_params(h, st0, method, percentile, frozenset(keep_16x8)))
    if bc:
        bias_correct(g, calib, ref)
    st = collect_stats(g, calib, flat)
    assign_activation_params(g, st, method, percentile, frozenset(keep_16x8))
    return g


def quantize_model(graph: Graph, calib: CalibSet, *, method: str = "mse", per_channel: bool = True,
                   io: str = "float", cle=AUTO, bias_correction=AUTO, percentile: float = 99.99,
                   keep_16x8=frozenset(), max_drop: float | None = None, sensitivity: bool = True,
                   rounding: str = "gptq", progress=None, act_eq=AUTO, flat_frames: bool = True) -> QuantResult:
    """Quantise a float IR graph; returns the quantised graph and a report.

    ``keep_16x8`` names nodes whose output activations are int16 (TFLite 16x8); ``max_drop`` (dB, on
    the calibration pairs) adds the fewest such layers, most sensitive first, needed to meet it.
    ``rounding`` is ``"gptq"`` (error-compensating, the default) or ``"nearest"`` for the weights.
    ``cle`` / ``act_eq`` / ``bias_correction``: True, False or ``"auto"``; auto tries the equalisations
    (each, both, none) with bias correction off, then bias correction on the best of them (with nearest
    rounding only: GPTQ rounding leaves no mean shift to correct, and True is then ignored with a warning).
    ``progress(message)`` is called between stages. ``flat_frames``: every range covers the network's
    response to flat frames (``calibration.flat_frames``), edges included: off for a network whose edge
    responses to saturated flats run far past its photo ranges (the bundled denoise: 1.3-2.3x).
    """
    if rounding not in ROUNDINGS:
        raise ConfigError(f"rounding {rounding!r} is not one of {', '.join(ROUNDINGS)}")
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
    if io not in IO_TYPES:
        raise ConfigError(f"io {io!r} is not one of {', '.join(IO_TYPES)}")
    for flag, v in (("cle", cle), ("act_eq", act_eq), ("bias_correction", bias_correction)):
        if v not in (True, False, AUTO):
            raise ConfigError(f"{flag} must be True, False or 'auto', got {v!r}")
    if max_drop is not None and not max_drop >= 0:
        raise ConfigError(f"max_drop {max_drop} must be >= 0 dB")
    if rounding == "gptq" and bias_correction is not False:
        # GPTQ's rounding already minimises each layer's output error on the calibration inputs, its mean
        # included; bias correction after it, from the float model's input means, predicted shifts 10-40x
        # the real ones on sr-x2-rt (a channel seen only at the image's edge never reaches some taps, and
        # GPTQ zeroes their weights) and cost 0.3 dB; done on GPTQ's own inputs it changed nothing.
        if bias_correction is True:
            log.warning("bias correction is not applied after GPTQ rounding, which already takes each layer's "
                        "mean output shift away (use rounding 'nearest' to have it)")
        bias_correction = False
    if max_drop is not None and io != "float":
        raise ConfigError(f"max_drop moves layers to 16x8, which need float model I/O (got io={io!r})")
    _check_calib(graph, calib)
    graph, renamed = _lower_dynamic_transpose_convs(graph)
    keep_16x8 = frozenset(renamed.get(k, k) for k in keep_16x8)
    names = {n.name for n in graph.nodes if n.op in INT16_OPS}
    unknown = sorted(set(keep_16x8) - names)
    if unknown:
        raise ConfigError(f"keep_16x8 names unknown node(s) or ops without 16x8 kernels: {', '.join(unknown)}")
    say = progress or (lambda m: None)

    ref = _simulate(graph, calib, False)
    float_psnr = mean_psnr(ref, calib)
    has_pairs = bool(conv_pairs(graph, depthwise=True))
    cle_opts = [False, True] if cle == AUTO else [bool(cle)]
    ae_opts = [False, True] if act_eq == AUTO else [bool(act_eq)]
    if not has_pairs:
        asked = [name for name, v in (("cross-layer equalisation", cle), ("activation equalisation", act_eq))
                 if v is True]
        if asked:
            log.warning("%s: %s left off: no pair to equalise (a dense or depthwise Conv whose output, through a "
                        "ReLU or nothing, feeds only one dense Conv)", graph.name, " and ".join(asked))
        cle_opts, ae_opts = [False], [False]
    variants, best = {}, None

    def attempt(c, a, b):
        nonlocal best
        say(f"calibrating ({method}, CLE {'on' if c else 'off'}, activation equalisation {'on' if a else 'off'}, "
            f"bias correction {'on' if b else 'off'})")
        g = _build(graph, calib, method=method, per_channel=per_channel, cle=c, bc=b, percentile=percentile,
                   keep_16x8=keep_16x8, rounding=rounding, act_eq=a, flat=flat_frames)
        p = mean_psnr(_simulate(g, calib, True), calib)
        variants[f"cle={'on' if c else 'off'},ae={'on' if a else 'off'},bc={'on' if b else 'off'}"] = float_psnr - p
        # Prefer the simpler variant unless the extra step gains at least 0.002 dB.
        if best is None or p > best[0] + 0.002:
            best = (p, c, a, b, g)

    bc_first = bool(bias_correction) if bias_correction != AUTO else False
    for c in cle_opts:
        for a in ae_opts:
            attempt(c, a, bc_first)
    if bias_correction == AUTO:
        attempt(best[1], best[2], True)
    quant_psnr, use_cle, use_ae, use_bc, g = best
    keep = set(keep_16x8)
    ref = _equalized(graph, calib, use_cle, use_ae) if use_cle or use_ae else graph
    layers = _layer_reports(ref, g, calib, float_psnr, sensitivity or max_drop is not None, say)
    tried = []
    if max_drop is not None and float_psnr - quant_psnr > max_drop:
        def build(names):
            g2 = _build(graph, calib, method=method, per_channel=per_channel, cle=use_cle, bc=use_bc,
                        percentile=percentile, keep_16x8=names, rounding=rounding, act_eq=use_ae, flat=flat_frames)
            p2 = mean_psnr(_simulate(g2, calib, True), calib)
            tried.append((sorted(names - set(keep_16x8)), float_psnr - p2))
            return g2, p2

        # Layers join the 16x8 set most sensitive first and stay in it even where joining gains nothing yet:
        # a wide activation needs its producer and its consumer both at 16x8 (either alone converts it back
        # to int8 for the other). The best set tried is kept; then each member that gained nothing on joining
        # goes back to int8 where the drop does not grow without it (int8 <-> int16 conversions cost too).
        trial, idle = set(keep), []
        for lr in sorted(layers, key=lambda r: -(r.drop_db or 0.0)):
            if float_psnr - quant_psnr <= max_drop:
                break
            if lr.name in trial or lr.drop_db is None:
                continue
            trial.add(lr.name)
            g2, p2 = build(set(trial))
            if p2 > quant_psnr:
                keep, g, quant_psnr = set(trial), g2, p2
                say(f"mixed precision: {lr.name} -> 16x8 ({', '.join(sorted(keep))} at 16x8: simulated drop "
                    f"{float_psnr - p2:.3f} dB)")
            else:
                idle.append(lr.name)
                say(f"mixed precision: {lr.name} at 16x8 does not lower the drop yet; tried with the next layers")
        for name in reversed(idle):
            if name in keep:  # an idle layer was never one of keep_16x8 (those are in trial from the start)
                g2, p2 = build(keep - {name})
                if p2 >= quant_psnr:
                    keep, g, quant_psnr = keep - {name}, g2, p2
                    say(f"mixed precision: {name} back to int8 (the drop does not grow without it)")
        layers = _layer_reports(ref, g, calib, float_psnr, False, say, previous=layers)
    for lr in layers:
        if lr.name in keep:
            lr.precision = "16x8"
    g.metadata[IO_KEY] = io
    report = QuantReport(method, use_cle, use_bc, float_psnr, quant_psnr, variants, layers, io, rounding, use_ae,
                         flat_frames, tried)
    for line in report.lines():
        log.info("%s", line)
    return QuantResult(g, report)


def _lower_dynamic_transpose_convs(graph: Graph) -> tuple[Graph, dict]:
    """The graph with each ConvTranspose of unknown size as the TFLite writer will write it, a Conv +
    DepthToSpace (``transpose_convs_as_subpixel``), so the DepthToSpace is quantised as what it is: an
    int8 op (LiteRT has no int16 DEPTH_TO_SPACE; a 16x8 ConvTranspose wrote one it cannot load).
    Returns it and {ConvTranspose name: its Conv's name}."""
    if not any(n.op == "ConvTranspose" and None in graph.tensors[n.outputs[0]].shape[1:3] for n in graph.nodes):
        return graph, {}
    g = copy.deepcopy(graph)
    transpose_convs_as_subpixel(g)
    lowered = {m.name for m in graph.nodes if m.op == "ConvTranspose"}
    return g, {n.name: g.producer(n.inputs[0]).name for n in g.nodes if n.op == "DepthToSpace" and n.name in lowered}


def _layer_reports(graph, g, calib, float_psnr, sensitivity, say, previous=None) -> list:
    """SQNR of each node output (everything quantised) against the float model ``graph`` (equalised
    like ``g`` when CLE is on); optionally the model's PSNR drop with that layer alone quantised."""
    acc: dict = {}
    first = calib.inputs[: min(8, len(calib))]
    for x in first:
        fa = executor.run(graph, {graph.inputs[0]: x}, keep_all=True)  # the original float model
        qa = executor.run(g, {g.inputs[0]: x}, simulate_quant=True, keep_all=True)
        for n in g.nodes:
            o = n.outputs[0]
            if o not in fa:  # 16x8 boundary converters
                continue
            s, e = acc.get(o, (0.0, 0.0))
            acc[o] = (s + float(np.sum(fa[o].astype(np.float64) ** 2)),
                      e + float(np.sum((fa[o].astype(np.float64) - qa[o]) ** 2)))
    prev = {r.name: r.drop_db for r in previous or []}
    out = []
    for n in g.nodes:
        if n.op not in INT16_OPS:
            continue
        o = n.outputs[0]
        s, e = acc[o]
        sq = float("inf") if e == 0 else round(10 * np.log10(max(s, 1e-30) / e), 2)
        drop = prev.get(n.name)
        if sensitivity:
            say(f"sensitivity of {n.name}")
            keep = {t for t in g.inputs} | {o} | ({n.inputs[1]} if n.op in ("Conv", "ConvTranspose") else set())
            # Inputs of the layer must be on their grid too for it to see its own rounding only.
            keep |= {i for i in n.inputs if g.tensors[i].data is None}
            drop = float_psnr - mean_psnr(_simulate(_only(g, keep), calib, True), calib)
        out.append(LayerReport(n.name, o, sq, drop))
    return out


def quantize_graph(graph: Graph, calib: CalibSet, method: str = "mse", per_channel: bool = True,
                   io: str = "float", keep_16x8=frozenset(), **kw) -> Graph:
    """:func:`quantize_model` without the report: the quantised graph, ready for ``write_tflite``."""
    return quantize_model(graph, calib, method=method, per_channel=per_channel, io=io, keep_16x8=keep_16x8,
                          **kw).graph


def write_tflite(g: Graph, path, *, io: str | None = None, tile=None, d2s_as_transpose_conv: bool = False):
    """Full-integer TFLite from a quantised graph (I/O type as chosen at quantisation unless given);
    ``tile`` fixes the input size, ``d2s_as_transpose_conv`` as in ``conversion.tflite_writer``."""
    io = io or g.metadata.get(IO_KEY, "float")
    meta = dict(g.metadata)
    g2 = copy.copy(g)
    g2.metadata = {k: v for k, v in meta.items() if k != IO_KEY}
    kw = dict(precision="int8", io=io, tile=tile, d2s_as_transpose_conv=d2s_as_transpose_conv)
    if has_int16(g2):
        if io != "float":
            raise ConfigError(f"16x8 layers need float model I/O (got io={io!r})")
        with writer_with_int64_bias():
            return to_tflite(g2, path, **kw)
    return to_tflite(g2, path, **kw)
