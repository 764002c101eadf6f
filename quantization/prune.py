"""Structured channel pruning of Conv -> ReLU -> Conv chains, with least-squares reconstruction.

For every pair (A, B) where A's output feeds only B, output channels of A (and the matching input
channels of B) are removed by importance, until the model's MACs fit ``target_macs`` of the
original. B's weights are then re-fitted by least squares so that B's pre-activation output on the
calibration inputs, computed from the *pruned* network, matches the *original* network's (no
retraining; ThiNet / channel-pruning style). The result is physically smaller: fewer channels.

Importance of channel c of A:

* ``"l1"``: ``sum |W_A[c]|`` (Li et al. 2017).
* ``"contribution"``: ``E|a_c| * sum |W_B[:, :, :, c]|``, how much the channel feeds forward.

>>> w1, b1, w2 = np.ones((4, 1, 1, 2)), np.arange(4.0), np.ones((3, 1, 1, 4))
>>> [a.shape for a in prune_channels(w1, b1, w2, np.array([0, 2]))]
[(2, 1, 1, 2), (2,), (3, 1, 1, 2)]
"""
from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass, field

import numpy as np

from conversion import executor
from conversion.ir import Graph

from .calibration import CalibSet
from .errors import CalibrationError, ConfigError
from .quantize import conv_pairs, im2col, mean_psnr
from .report import pop_figures

log = logging.getLogger(__name__)

CRITERIA = ("l1", "contribution")


# --------------------------------------------------------------------------- pure kernels
def prune_channels(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, keep: np.ndarray):
    """Keep output channels ``keep`` of conv A (OHWI ``w1``, ``b1``) and the same inputs of B (``w2``)."""
    keep = np.asarray(keep)
    return w1[keep], b1[keep], w2[..., keep]


def least_squares(x: np.ndarray, y: np.ndarray, ridge: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """(W [O, K], b [O]) minimising ||x W^T + b - y||^2 + ridge * mean(diag) * ||W||^2.

    >>> x = np.array([[0.0, 1], [1, 0], [1, 1], [2, 1]]); y = x @ np.array([[2.0, -1]]).T + 0.5
    >>> w, b = least_squares(x, y, ridge=0.0); np.round(w, 6).tolist(), round(float(b[0]), 6)
    ([[2.0, -1.0]], 0.5)
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    xa = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
    a = xa.T @ xa
    reg = ridge * float(np.mean(np.diag(a)[:-1])) if x.shape[1] else 0.0
    a[np.arange(x.shape[1]), np.arange(x.shape[1])] += reg  # the bias is not shrunk
    theta = np.linalg.solve(a, xa.T @ y)
    return theta[:-1].T, theta[-1]


def conv_macs(g: Graph, hw: tuple = (64, 64)) -> dict:
    """Node name -> multiply-accumulates per input pixel (at an ``hw`` input; convs only)."""
    h = copy.deepcopy(g)
    x = h.inputs[0]
    n_, _, _, c = h.tensors[x].shape
    h.retype({x: (1, hw[0], hw[1], c)})
    out = {}
    for n in h.nodes:
        if n.op not in ("Conv", "ConvTranspose"):
            continue
        o, kh, kw, ig = h.tensors[n.inputs[1]].data.shape
        _, oh, ow, _ = h.tensors[n.outputs[0]].shape
        if n.op == "Conv":
            out[n.name] = o * kh * kw * ig * oh * ow / (hw[0] * hw[1])
        else:
            _, ih, iw, _ = h.tensors[n.inputs[0]].shape
            out[n.name] = o * kh * kw * h.tensors[n.inputs[0]].shape[3] * ih * iw / (hw[0] * hw[1])
    return out


def total_macs(g: Graph) -> float:
    return float(sum(conv_macs(g).values()))


# --------------------------------------------------------------------------- planning
@dataclass
class PruneReport:
    target: float
    macs_before: float
    macs_after: float
    params_before: int
    params_after: int
    widths: dict = field(default_factory=dict)  # node -> (before, after) output channels
    psnr_before: float | None = None  # calibration pairs
    psnr_plain: float | None = None  # channels removed, no reconstruction
    psnr_after: float | None = None  # the result: with least-squares reconstruction unless reconstructed is False
    criterion: str = "contribution"
    reconstructed: bool = True

    def lines(self) -> list[str]:
        out = [f"MACs per input pixel {self.macs_before:.0f} -> {self.macs_after:.0f} "
               f"({100 * self.macs_after / self.macs_before:.1f}%, target {100 * self.target:.0f}%), "
               f"params {self.params_before} -> {self.params_after}; importance {self.criterion}"]
        out.append("  widths: " + ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.widths.items()))
        if self.psnr_before is not None:
            out.append(f"  calibration set: {self.psnr_before:.3f} dB; channels removed {self.psnr_plain:.3f} dB"
                       + (f"; with LS reconstruction {self.psnr_after:.3f} dB" if self.reconstructed else
                          " (no LS reconstruction)"))
        return out


@dataclass
class PruneResult:
    graph: Graph
    report: PruneReport


def params_count(g: Graph) -> int:
    return int(sum(g.tensors[i].data.size for n in g.nodes if n.op in ("Conv", "ConvTranspose") for i in n.inputs[1:]))


def _mean_abs(g: Graph, calib: CalibSet, names: set) -> dict:
    acc, cnt = {}, {}

    def obs(name, v):
        if name in names:
            acc[name] = acc.get(name, 0.0) + np.abs(v).reshape(-1, v.shape[-1]).sum(0, dtype=np.float64)
            cnt[name] = cnt.get(name, 0) + v.size // v.shape[-1]

    for x in calib.inputs:
        executor.run(g, {g.inputs[0]: x}, observer=obs)
    return {k: acc[k] / cnt[k] for k in acc}


def channel_importance(g: Graph, calib: CalibSet | None, criterion: str = "contribution") -> dict:
    """A-node name -> importance of each of its output channels (for every prunable pair)."""
    if criterion not in CRITERIA:
        raise ConfigError(f"pruning criterion {criterion!r} is not one of {', '.join(CRITERIA)}")
    pairs = conv_pairs(g)
    means = _mean_abs(g, calib, {a.outputs[0] for a, _ in pairs}) if criterion == "contribution" else {}
    out = {}
    for a, b in pairs:
        w1, w2 = g.tensors[a.inputs[1]].data, g.tensors[b.inputs[1]].data
        if criterion == "l1":
            out[a.name] = np.abs(w1).reshape(w1.shape[0], -1).sum(1)
        else:
            out[a.name] = means[a.outputs[0]] * np.abs(w2).transpose(3, 0, 1, 2).reshape(w2.shape[3], -1).sum(1)
    return out


def plan_widths(widths: dict, importance: dict, macs_fn, target: float, multiple: int = 1, min_keep: int = 2) -> dict:
    """Kept channel count per layer: drop the globally least important channels (importance
    normalised by its layer's mean) in steps of ``multiple`` until ``macs_fn(widths) <= target``.

    >>> plan_widths({"a": 4, "b": 4}, {"a": np.array([1.0, 1, 1, 1]), "b": np.array([9.0, 1, 1, 1])},
    ...             lambda w: w["a"] + w["b"], 6)
    {'a': 4, 'b': 2}
    """
    norm = {k: np.sort(v / max(float(np.mean(v)), 1e-12)) for k, v in importance.items()}
    cur = dict(widths)
    while macs_fn(cur) > target:
        best, best_score = None, None
        for k in cur:
            if cur[k] - multiple < min_keep:
                continue
            removed = widths[k] - cur[k]
            score = float(norm[k][removed: removed + multiple].sum())
            if best is None or score < best_score:
                best, best_score = k, score
        if best is None:
            raise ConfigError(f"cannot reach {target:.0f} MACs: every layer is at its minimum width")
        cur[best] -= multiple
    # A step takes a group from two convs at once, so the last one can overshoot well past the target
    # (0.44 for 0.6): give back the most important removed groups that still fit under it.
    while True:
        back = [(float(norm[k][widths[k] - cur[k] - multiple: widths[k] - cur[k]].sum()), k) for k in cur
                if cur[k] + multiple <= widths[k] and macs_fn({**cur, k: cur[k] + multiple}) <= target]
        if not back:
            return cur
        cur[max(back)[1]] += multiple


# --------------------------------------------------------------------------- driver
def _pre_activation(g: Graph, node, x_in: np.ndarray) -> np.ndarray:
    w, b = g.tensors[node.inputs[1]].data, g.tensors[node.inputs[2]].data
    a = node.attrs
    return executor.conv2d(x_in, w, b, a["strides"], a["dilations"], a["pads"], a["group"])


def prune_graph(graph: Graph, calib: CalibSet, target_macs: float = 0.7, *, criterion: str = "contribution",
                reconstruct: bool = True, multiple: int = 4, max_rows: int = 40000, ridge: float = 1e-4,
                evaluate: bool = True, progress=None) -> PruneResult:
    """Prune ``graph`` to ``target_macs`` (a fraction) of its conv MACs; returns graph and report."""
    if not 0.05 <= target_macs <= 1.0:
        raise ConfigError(f"target_macs {target_macs} must be a fraction in [0.05, 1]")
    if multiple < 1:
        raise ConfigError(f"channel multiple {multiple} must be >= 1")
    if not isinstance(calib, CalibSet) or len(calib) == 0:
        raise CalibrationError("pruning needs a non-empty calibration set")
    say = progress or (lambda m: None)
    g0 = copy.deepcopy(graph)
    pairs = conv_pairs(g0)
    if not pairs:
        raise ConfigError("no Conv -> ReLU -> Conv chain to prune (channels are pruned between two dense convs "
                          "with a ReLU or nothing between them; PReLU, LeakyReLU and others are not pruned)")
    macs0 = conv_macs(g0)
    total0 = float(sum(macs0.values()))
    widths = {a.name: g0.tensors[a.inputs[1]].data.shape[0] for a, _ in pairs}
    in_of = {b.name: a.name for a, b in pairs}  # B node -> the A feeding it

    def macs_fn(w):
        tot = 0.0
        for name, m in macs0.items():
            o_full = widths.get(name)
            f_out = w[name] / o_full if o_full else 1.0
            f_in = w[in_of[name]] / widths[in_of[name]] if name in in_of else 1.0
            tot += m * f_out * f_in
        return tot

    say("ranking channels")
    imp = channel_importance(g0, calib, criterion)
    plan = plan_widths(widths, imp, macs_fn, target_macs * total0, multiple)
    keep = {k: np.sort(np.argsort(-imp[k], kind="stable")[: plan[k]]) for k in plan}

    g = copy.deepcopy(g0)
    plain = copy.deepcopy(g0) if evaluate and reconstruct else None  # without reconstruction, g is the plain one
    for a, b in pairs:  # graph order: earlier layers first, so later fits see their final inputs
        say(f"pruning {a.name} {widths[a.name]} -> {plan[a.name]} channels")
        ks = keep[a.name]
        for h in ([g, plain] if plain is not None else [g]):
            t1, tb, t2 = (h.tensors[n] for n in (a.inputs[1], a.inputs[2], b.inputs[1]))
            t1.data, tb.data, t2.data = (v.astype(np.float32) for v in prune_channels(t1.data, tb.data, t2.data, ks))
            for t in (t1, tb, t2):  # shape inference and writers read the declared shape
                t.shape = tuple(t.data.shape)
        if reconstruct:
            _reconstruct(g0, g, b, calib, max_rows, ridge)
    for h in ([g, plain] if plain is not None else [g]):
        x = h.inputs[0]
        h.retype({x: h.tensors[x].shape})
    report = PruneReport(target_macs, total0, total_macs(g), params_count(g0), params_count(g),
                         {k: (widths[k], plan[k]) for k in plan}, criterion=criterion, reconstructed=reconstruct)
    if evaluate:
        say("evaluating on the calibration set")
        run = lambda h: mean_psnr([executor.run(h, {h.inputs[0]: x})[h.outputs[0]] for x in calib.inputs], calib)
        report.psnr_before, report.psnr_after = run(g0), run(g)
        report.psnr_plain = run(plain) if plain is not None else report.psnr_after
    for line in report.lines():
        log.info("%s", line)
    return PruneResult(g, report)


def _reconstruct(g0: Graph, g: Graph, b, calib: CalibSet, max_rows: int, ridge: float) -> None:
    """Refit B's weights on the pruned network's inputs to B's original pre-activation output."""
    w = g.tensors[b.inputs[1]].data
    o, kh, kw, ci = w.shape
    rng = np.random.default_rng(0)
    per = max(1, max_rows // len(calib))
    xs, ys = [], []
    for x in calib.inputs:
        e0 = executor.run(g0, {g0.inputs[0]: x}, keep_all=True)
        e1 = executor.run(g, {g.inputs[0]: x}, keep_all=True)
        y = _pre_activation(g0, b, e0[b.inputs[0]]).reshape(-1, o)
        cols = im2col(e1[b.inputs[0]], kh, kw, b.attrs["strides"], b.attrs["dilations"], b.attrs["pads"])
        idx = rng.choice(len(cols), min(per, len(cols)), replace=False)
        xs.append(cols[idx])
        ys.append(y[idx])
    wn, bn = least_squares(np.concatenate(xs), np.concatenate(ys), ridge)
    g.tensors[b.inputs[1]].data = wn.reshape(o, kh, kw, ci).astype(np.float32)
    g.tensors[b.inputs[2]].data = bn.astype(np.float32)


# --------------------------------------------------------------------------- sparsity report
def magnitude_sparsity(g: Graph, levels=(0.5, 0.75, 0.9), bits: int = 16) -> list:
    """Unstructured magnitude sparsity: for each level, the share of conv weights zeroed (smallest
    |w| per layer) and the weight storage in a bitmask + non-zero-values format (as Core ML's sparse
    weights), against dense storage at ``bits`` per weight. Rows: (level, dense bytes, sparse bytes).
    ``edge-enhance convert --to coreml --precision sparse50`` (75, 90) writes such weights.
    """
    ws = [g.tensors[n.inputs[1]].data for n in g.nodes if n.op in ("Conv", "ConvTranspose")]
    n = sum(w.size for w in ws)
    dense = n * bits / 8
    rows = []
    for lv in levels:
        nnz = sum(w.size - int(np.floor(lv * w.size)) for w in ws)
        rows.append((lv, dense, n / 8 + nnz * bits / 8))
    return rows


def sparsify(g: Graph, level: float) -> Graph:
    """A copy with the smallest ``level`` share of each conv's weights set to zero."""
    h = copy.deepcopy(g)
    for node in h.nodes:
        if node.op in ("Conv", "ConvTranspose"):
            t = h.tensors[node.inputs[1]]
            k = int(np.floor(level * t.data.size))
            if k:
                thr = np.partition(np.abs(t.data).ravel(), k - 1)[k - 1]
                t.data = np.where(np.abs(t.data) <= thr, 0, t.data).astype(np.float32)
    return h


# --------------------------------------------------------------------------- back to ONNX
def pruned_architecture(text: str, widths: list) -> str:
    """A card's architecture text with the pruned widths in place of its channel count.

    >>> pruned_architecture("6 x conv3x3 (24 ch, RepConv collapsed), ReLU", [20, 20, 24, 20, 12])
    '6 x conv3x3 (20/20/24/20/12 ch, pruned from 24, RepConv collapsed), ReLU'
    """
    w = "/".join(str(int(v)) for v in widths)
    new, n = re.subn(r"\b(\d+) ch\b", lambda m: f"{w} ch, pruned from {m.group(1)}", text, count=1)
    return new if n else f"{text}; pruned to {w} channels"


def write_pruned_onnx(src, g: Graph, path, *, card_extra: dict | None = None, psnr: dict | None = None):
    """Write the pruned IR as ONNX (``conversion.onnx_writer``: NCHW, opset 17), atomically.

    The IR itself is written, not its weights copied back into the source graph: the importer folded
    BatchNorm, CRD pixel-shuffle orders, constant scales and zero pads into the convs, so a copy-back
    would apply those twice. ``src`` names the source in messages. The source card's PSNR figures
    were the unpruned network's: they move to ``extra.pruned.psnr_before``, and the card's ``psnr``
    holds only ``psnr``, the pruned model's own measurements (if any)."""
    import json

    import onnx

    from conversion.onnx_writer import to_onnx_model
    from conversion.tflite_writer import write_atomic
    from edge_enhance.card import CARD_KEY

    g = copy.deepcopy(g)
    if CARD_KEY in g.metadata:
        d = json.loads(g.metadata[CARD_KEY])
        d["params"] = params_count(g)
        d["macs_per_pixel"] = int(round(total_macs(g)))
        extra = d.setdefault("extra", {})
        extra.update(card_extra or {})
        if isinstance(extra.get("architecture"), str):
            extra["architecture"] = pruned_architecture(extra["architecture"], [
                g.tensors[a.inputs[1]].data.shape[0] for a, _ in conv_pairs(g)])
        before, ssim_before = pop_figures(d)
        if before:
            extra["pruned"] = {**extra.get("pruned", {}), "psnr_before": before}
        if ssim_before:
            extra["pruned"] = {**extra.get("pruned", {}), "ssim_before": ssim_before}
        if psnr:
            extra["psnr"] = psnr
        g.metadata[CARD_KEY] = json.dumps(d, sort_keys=True)
    try:
        m = to_onnx_model(g)
        onnx.checker.check_model(m)
    except (ConfigError, onnx.checker.ValidationError) as e:
        raise ConfigError(f"{src}: the pruned model cannot be written as ONNX ({e})") from None
    return write_atomic(path, m.SerializeToString())
