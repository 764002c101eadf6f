"""Quantisation-aware fine-tuning: ``python -m training.qat NAME --from MODEL.onnx|CKPT --steps N --out DIR``.

A recipe's network is fine-tuned with the int8 arithmetic ``edge-enhance quantize`` will give it
simulated in the forward pass (fake quantisation, straight-through gradients), then exported in
fp32 exactly as ``training.train`` exports (``DIR/<name>.onnx``; the card keeps the source's own
training record, recipe, device, steps and time, and field ``qat`` records the fine-tune: its
command, device, seconds, ranges), so post-training quantisation of the result loses less. What is
simulated is what quantization.quantize plans:

* weights of each collapsed 3x3 conv: symmetric int8 per output channel, max |w| / 127;
* the input and the output: the 8-bit pixel grid (1/255, zero point -128);
* each hidden conv output: asymmetric int8 per tensor over a range that is an EMA of batch min / max
  (``--ranges ema``) or fixed by our calibration (``--ranges calib``: the default calibration set
  or ``--calib DIR``, the observer ``--method`` of ``edge-enhance quantize``, default percentile);
* the residual: on the output grid, as ``quantization.quantize.residual_params`` puts it.

Rounding is half away from zero (TFLite, ``conversion.executor``); gradients pass straight through
inside a range and are zero outside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from conversion.onnx_import import from_onnx
from edge_enhance.card import CARD_KEY, ModelCard
from edge_enhance.errors import ConfigError
from quantization.calibration import METHODS, RangeStats, calibration_set
from quantization.quantize import (activation_params, assign_activation_params, collect_stats,
                                   equalize_activations, quantize_all_weights, residual_params)

from . import export as ex, run_tool
from .data import PatchSampler, default_data_root, load_train_images
from .model import RepDown, ResidualNet, depth_to_space_dcr
from .recipes import RECIPES, Recipe, get
from .train import (_device_name, add_override_args, build_model, check_eval_sets, export_model, given_overrides,
                    override_options)

log = logging.getLogger("training")
PIXEL = activation_params(0.0, 1.0)  # the 8-bit pixel grid: 1/255, zero point -128
RANGES = ("ema", "calib")


def fake_quant(x: torch.Tensor, scale, zero_point, qmin: int = -128, qmax: int = 127) -> torch.Tensor:
    """Round to the grid (half away from zero) and clamp; the gradient passes straight through
    the rounding and is zero where the clamp bites.

    >>> fake_quant(torch.tensor([0.26, -0.25, 9.0]), 0.5, 0, -4, 4).tolist()
    [0.5, -0.5, 2.0]
    """
    v = x / scale
    r = torch.sign(v) * torch.floor(torch.abs(v) + 0.5)
    v = v + (r - v).detach()
    return (torch.clamp(v + zero_point, qmin, qmax) - zero_point) * scale


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Symmetric int8 per output channel ([-127, 127], scale max |w| / 127) as quantize_weights."""
    m = w.detach().abs().amax(dim=(1, 2, 3), keepdim=True)
    s = torch.where(m > 0, m / 127, torch.full_like(m, 1e-8))
    return fake_quant(w, s, 0, -127, 127)


class QATNet(nn.Module):
    """A ResidualNet whose forward is its int8 inference (see the module docstring).

    ``lo`` / ``hi`` hold the range of each conv's output (after its ReLU); NaN until the first
    training batch (EMA) or :meth:`set_ranges`. While ``frozen`` they do not move.
    """

    def __init__(self, net: ResidualNet, momentum: float = 0.9):
        super().__init__()
        self.net = net
        self.momentum = momentum
        self.frozen = False
        n = len(net.layers)
        self.register_buffer("lo", torch.full((n,), float("nan")))
        self.register_buffer("hi", torch.full((n,), float("nan")))

    def set_ranges(self, ranges) -> None:
        """Fix the conv output ranges (e.g. from our calibration); they no longer follow batches."""
        for i, (lo, hi) in enumerate(ranges):
            self.lo[i], self.hi[i] = float(lo), float(hi)
        self.frozen = True

    def _observe(self, i: int, h: torch.Tensor) -> None:
        if not self.training or self.frozen:
            return
        lo, hi = float(h.detach().min()), float(h.detach().max())
        if math.isnan(float(self.lo[i])):
            self.lo[i], self.hi[i] = lo, hi
        else:
            m = self.momentum
            self.lo[i] = m * self.lo[i] + (1 - m) * lo
            self.hi[i] = m * self.hi[i] + (1 - m) * hi

    def act_params(self, i: int):
        """The QuantParams of conv ``i``'s output: asymmetric int8, the residual on the pixel grid."""
        lo, hi = float(self.lo[i]), float(self.hi[i])
        if math.isnan(lo):
            raise ConfigError("QAT ranges are not set: run a training step or set_ranges() first")
        q = activation_params(lo, hi)
        return residual_params(q, float(PIXEL.scale[0])) if i == len(self.net.layers) - 1 else q

    def forward(self, x):
        pixel = (float(PIXEL.scale[0]), int(PIXEL.zero_point[0]))
        x = fake_quant(x, *pixel)
        h = x
        last = len(self.net.layers) - 1
        for i, layer in enumerate(self.net.layers):
            w, b = layer.fused()
            stride = 2 if w.shape[-1] == 4 else 1  # the half-resolution models' first conv
            d = layer.dilation
            h = F.conv2d(h, fake_quant_weight(w), b, stride=stride, padding=d, dilation=d)
            if i < last:
                h = F.relu(h)
            self._observe(i, h)
            q = self.act_params(i)
            h = fake_quant(h, float(q.scale[0]), int(q.zero_point[0]))
        s = self.net.scale
        if self.net.down == 2:
            return fake_quant(x + depth_to_space_dcr(h, 2), *pixel)
        base = x if s == 1 else x.repeat(1, s * s, 1, 1)
        y = fake_quant(base + h, *pixel)  # the sum's range is the final clip's, [0, 1]
        return y if s == 1 else depth_to_space_dcr(y, s)


def int8_graph(qnet: QATNet, graph):
    """``graph`` (the IR of ``qnet.net`` exported) quantised by quantization.quantize with the QAT
    ranges: executor.run(..., simulate_quant=True) on it is int8 inference of these weights."""
    convs = [n for n in graph.nodes if n.op == "Conv"]
    if len(convs) != len(qnet.net.layers):
        raise ConfigError(f"{graph.name}: {len(convs)} convs, the network has {len(qnet.net.layers)}")
    st = RangeStats()
    for n in graph.nodes:  # image-range tensors (the input's copies, the clipped sum): [0, 1]
        st.lo[n.outputs[0]], st.hi[n.outputs[0]] = 0.0, 1.0
    for i, n in enumerate(convs):
        st.lo[n.outputs[0]], st.hi[n.outputs[0]] = float(qnet.lo[i]), float(qnet.hi[i])
    quantize_all_weights(graph, per_channel=True)
    assign_activation_params(graph, st, "minmax")
    return graph


def calibrated_ranges(net: ResidualNet, calib, method: str = "percentile", flat: bool = True) -> list:
    """Each conv output's range on a calibration set (quantization.calibration), as quantize does
    (``flat``: covering flat frames)."""
    g = from_onnx(ex.build_onnx(net))
    st = collect_stats(g, calib, flat)
    return [st.range(n.outputs[0], method) for n in g.nodes if n.op == "Conv"]


# --------------------------------------------------------------------------- sources
# Card fields that describe how the source network was trained (training.train's card).
BASE_FIELDS = ("recipe", "device", "steps", "train_minutes", "train_seconds", "l2_finetune", "grown_from")


def load_source(r: Recipe, path) -> tuple[ResidualNet, dict]:
    """The recipe's network from a training checkpoint (.pt) or an exported ONNX; (net, state)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: --from file does not exist")
    net = build_model(r)
    if p.suffix == ".onnx":
        return _from_onnx(r, net, p)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"{p}: not a training checkpoint or an .onnx model ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or "model" not in ck:
        raise ConfigError(f"{p}: not a training checkpoint (no 'model' state)")
    if ck.get("recipe") != r.name:
        raise ConfigError(f"{p}: checkpoint of recipe {ck.get('recipe')!r}, not {r.name!r}")
    try:
        net.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise ConfigError(f"{p}: checkpoint does not fit recipe {r.name}: {str(e).splitlines()[0]}") from None
    # The run's own command (recorded since session 26; an older checkpoint's is not known, and said so).
    recipe = ck.get("command") or f"a training.train checkpoint of {r.name} ({p.name}; its command was not recorded)"
    return net, {"step": 0, "elapsed": 0.0, "card": {"recipe": recipe},
                 **{k: ck[k] for k in ("step", "elapsed", "l2_step", "l2_elapsed", "devices", "init") if k in ck}}


def _branches(layer):
    """(the branch a collapsed conv is loaded into, the branch zeroed) of a training block."""
    return (layer.k4, layer.k2) if isinstance(layer, RepDown) else (layer.k3, layer.k1)


def _from_onnx(r: Recipe, net: ResidualNet, p: Path) -> tuple[ResidualNet, dict]:
    import onnx
    from onnx import numpy_helper

    try:
        m = onnx.load(str(p))
    except Exception as e:  # onnx raises DecodeError and friends
        raise ConfigError(f"{p}: not a readable ONNX model ({e})") from None
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    shapes = [tuple(inits[n.input[1]].shape) if n.input[1] in inits else None for n in convs]
    want = [tuple(_branches(layer)[0].weight.shape) for layer in net.layers]
    if shapes != want or any(len(n.input) < 3 or n.input[2] not in inits for n in convs):
        hint = (f"; the file has {len(shapes)} convs: pass --convs {len(shapes)}"
                if len(shapes) != len(want) and None not in shapes else "")
        raise ConfigError(f"{p}: conv weights {shapes} are not recipe {r.name}'s {want} (with biases){hint}")
    _load_collapsed(net, [(inits[n.input[1]], inits[n.input[2]]) for n in convs])
    err = ex.max_abs_error(net, m)
    if err >= 1e-4:
        raise ConfigError(f"{p}: not a {r.name} network as training.export writes it "
                          f"(the recipe's forward differs from the file by {err:.2e})")
    card = next((ModelCard.from_json(q.value, str(p)) for q in m.metadata_props if q.key == CARD_KEY), None)
    if card is not None and (card.task, card.scale) != (r.task, r.scale):
        raise ConfigError(f"{p}: a {card.task} x{card.scale} model, recipe {r.name} is {r.task} x{r.scale}")
    extra = card.extra if card is not None else {}
    # The source's own training, as its card tells it, goes unchanged into the fine-tune's card.
    kept = {k: extra[k] for k in BASE_FIELDS if k in extra}
    return net, {"step": int(extra.get("steps", 0)), "elapsed": float(extra.get("train_seconds", 0.0)), "card": kept}


def _load_collapsed(net: ResidualNet, convs) -> None:
    """Load collapsed (OIHW weight, bias) pairs into the training blocks: the main branch takes each,
    less the identity the block adds; the other branch is zeroed."""
    with torch.no_grad():
        for layer, (w, b) in zip(net.layers, convs):
            main, extra = _branches(layer)
            w = torch.tensor(np.asarray(w, np.float32))
            if getattr(layer, "identity", False):
                w[:, :, 1, 1] -= torch.eye(layer.cout)
            main.weight.copy_(w)
            main.bias.copy_(torch.tensor(np.asarray(b, np.float32)))
            extra.weight.zero_()
            extra.bias.zero_()


def equalize_net(net: ResidualNet, calib) -> None:
    """Activation equalisation of the network, in place (quantization.quantize.equalize_activations on
    its exported graph): the function is unchanged, each hidden tensor's channels are rescaled as
    ``edge-enhance quantize --act-eq on`` would rescale them."""
    g = from_onnx(ex.build_onnx(net))
    equalize_activations(g, calib)
    convs = [n for n in g.nodes if n.op == "Conv"]
    if len(convs) != len(net.layers):
        raise ConfigError(f"{len(convs)} convs in the exported graph, the network has {len(net.layers)}")
    _load_collapsed(net, [(g.tensors[n.inputs[1]].data.transpose(0, 3, 1, 2), g.tensors[n.inputs[2]].data)
                          for n in convs])


# --------------------------------------------------------------------------- fine-tuning
LOSSES = {"l1": F.l1_loss, "l2": F.mse_loss}


def finetune(r: Recipe, qnet: QATNet, images, *, steps: int, lr: float, seed: int = 0, loss: str = "l1") -> float:
    """Adam + ``loss`` (l1 / l2) on the fake-quantised forward, cosine learning rate from ``lr``;
    returns seconds."""
    torch.manual_seed(seed)
    try:
        sampler = PatchSampler(r, images, seed=seed)
    except ConfigError as e:  # no image large enough
        raise ConfigError(f"QAT data: {e}") from None
    opt = torch.optim.Adam(qnet.net.parameters(), lr=lr)
    qnet.train()
    t0 = time.monotonic()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = 0.5 * lr * (1.0 + math.cos(math.pi * step / steps))
        x, y = sampler.sample()
        err = LOSSES[loss](qnet(x), y)
        opt.zero_grad(set_to_none=True)
        err.backward()
        opt.step()
        if (step + 1) % 50 == 0 or step + 1 == steps:
            log.info("%s qat: step %d/%d  loss %.5f", r.name, step + 1, steps, err.item())
    qnet.eval()
    return time.monotonic() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.qat", description=__doc__.split("\n")[0])
    ap.add_argument("name", choices=sorted(RECIPES))
    ap.add_argument("--from", dest="source", type=Path, required=True,
                    help="the network to fine-tune: an exported .onnx or a training checkpoint (last.pt)")
    ap.add_argument("--steps", type=int, required=True, help="fine-tuning steps")
    ap.add_argument("--out", type=Path, required=True, help="folder for <name>.onnx (fp32, card notes qat)")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: a tenth of the recipe's)")
    ap.add_argument("--ranges", choices=RANGES, default="ema",
                    help="activation ranges: ema (default), an EMA of batch min/max, or calib, fixed by our "
                         "calibration")
    ap.add_argument("--calib", type=Path, help="calibration images for --ranges calib (default: the seeded "
                                               "crops of shared/data/train `edge-enhance quantize` uses)")
    ap.add_argument("--method", choices=METHODS, help="range observer for --ranges calib (default percentile; "
                                                      "use the one the model will be quantised with)")
    ap.add_argument("--act-eq", action="store_true",
                    help="start from the activation-equalised network (the channel scaling `edge-enhance quantize "
                         "--act-eq on` applies); quantise the result with --act-eq off --rounding nearest")
    ap.add_argument("--loss", choices=sorted(LOSSES), default="l1",
                    help="l1 (default) or l2, the loss PSNR measures (a recipe whose last phase was L2)")
    ap.add_argument("--data", type=Path, help="the shared data folder (default: $EDGE_ENHANCE_DATA, else the "
                                              "nearest shared/data above the code or the working folder)")
    ap.add_argument("--no-eval", action="store_true", help="skip the final Set5/Set14/BSD100... measurement")
    ap.add_argument("--no-flat-frames", action="store_true",
                    help="--ranges calib: ranges of the calibration crops only, not covering flat frames' edges "
                         "(as training.bundle --no-flat-frames)")
    shape = ("channels", "convs", "down", "dilations")  # a network grown past its recipe (train --init-from) says so here
    add_override_args(ap, shape)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(int(os.environ.get("EDGE_ENHANCE_THREADS", "2")))
    overrides = given_overrides(a, shape)
    r = dataclasses.replace(get(a.name), **overrides)
    if a.steps < 1:
        raise ConfigError(f"--steps {a.steps} must be at least 1")
    if a.method is not None and a.ranges != "calib":
        raise ConfigError("--method applies to --ranges calib only")
    if a.calib is not None and a.ranges != "calib" and not a.act_eq:
        raise ConfigError("--calib applies to --ranges calib or --act-eq only")
    method = a.method or "percentile"
    lr = a.lr if a.lr is not None else r.lr / 10
    if not lr > 0:
        raise ConfigError(f"--lr {lr} must be positive")
    if a.out.exists() and not a.out.is_dir():
        raise ConfigError(f"--out {a.out}: is a file; give a folder for {r.name}.onnx")
    data_root = a.data or default_data_root()
    check_eval_sets(r, data_root, final=not a.no_eval, log_set5=False)
    net, state = load_source(r, a.source)
    calib = None
    if a.ranges == "calib" or a.act_eq:
        calib = calibration_set(a.calib, task=r.task, scale=r.scale, align=net.align)
    if a.act_eq:
        equalize_net(net, calib)
    qnet = QATNet(net)
    if a.ranges == "calib":
        qnet.set_ranges(calibrated_ranges(net, calib, method, flat=not a.no_flat_frames))
    seconds = finetune(r, qnet, load_train_images(data_root), steps=a.steps, lr=lr, loss=a.loss)
    ranges = f"calib ranges ({method})" if a.ranges == "calib" else "ema ranges"
    cmd = (f"python -m training.qat {r.name}" + override_options(overrides)
           + f" --from {a.source.name} --steps {a.steps} --ranges {a.ranges}"
           + (f" --method {method}" if a.ranges == "calib" else "") + (" --act-eq" if a.act_eq else "")
           + (" --no-flat-frames" if a.no_flat_frames and a.ranges == "calib" else "")
           + f" --loss {a.loss}" + (f" --lr {lr:g}" if a.lr is not None else "") + " --out DIR")
    qat = {"command": cmd, "from": str(a.source), "steps": a.steps, "lr": lr, "loss": a.loss, "act_eq": a.act_eq,
           "seconds": round(seconds, 1), "device": _device_name(torch.device("cpu")),
           "weights": "int8 symmetric per output channel", "activations": f"int8 asymmetric per tensor, {ranges}",
           "ranges": [[round(float(lo), 6), round(float(hi), 6)] for lo, hi in zip(qnet.lo, qnet.hi)]}
    card = export_model(r, net, state, a.out, data_root=data_root, evaluate_sets=not a.no_eval,
                        extra={**state.get("card", {}), "qat": qat})
    log.info("wrote %s\n%s", a.out / f"{r.name}.onnx", ex.card_json_pretty(card))
    return 0


if __name__ == "__main__":
    run_tool("qat", main)
