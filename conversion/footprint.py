"""What a model card needs, read off the IR: receptive field, scale, align and colour (luma or RGB input).

Each activation tensor carries (lo, hi, j): its pixel q, centred at input coordinate
c(q) = (q + 0.5) * j - 0.5, depends on input pixels in [c(q) + lo, c(q) + hi]; j is input pixels per
pixel of the tensor (stride 2 doubles it, DepthToSpace r divides it by r). Resize is bounded
conservatively (1.5 of its input pixels each way), everything else exactly. The tile margin is
what the output pixels of a core of input pixels reach beyond it; the card's receptive field is
2 * margin + 1, so ``ModelCard.margin`` gives the margin back.

``convert`` / ``quantize`` / ``prune`` of a model without a card take ``--card-task`` (and
optionally the rest) and write a card made from this into their output.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

from edge_enhance.card import CARD_KEY, TASKS, ModelCard, check_channels
from edge_enhance.card import add_card_arguments as card_arguments
from edge_enhance.tiling import round_up

from .errors import ConfigError, ModelFormatError

log = logging.getLogger(__name__)

_POINTWISE = ("Relu", "PRelu", "LeakyRelu", "Clip", "Sigmoid", "Tanh")
_MERGE = ("Add", "Mul", "Concat", "Minimum", "Maximum")


@dataclass(frozen=True)
class Footprint:
    receptive_field: int
    scale: int
    align: int
    colour: str = "rgb"  # "y" for a one-channel (luma) input


def _colour(g) -> str:
    return "y" if g.tensors[g.inputs[0]].shape[3] == 1 else "rgb"


def check_image_channels(g, src) -> None:
    """Refuse a graph that is not 1 -> 1 channel (luma) or 3 -> 3 (RGB): the runtime has no other kind of image."""
    check_channels(src, g.tensors[g.inputs[0]].shape[3], g.tensors[g.outputs[0]].shape[3])


def footprint(g) -> Footprint:
    reach = {g.inputs[0]: (0.0, 0.0, 1.0)}
    align = 1.0
    for n in g.nodes:
        ins = [reach[t] for t in n.inputs if t in reach]
        if not ins:
            continue
        lo, hi, j = ins[0]
        a = n.attrs
        if n.op == "Conv":
            kh, kw = g.tensors[n.inputs[1]].shape[1:3]
            (sh, sw), (dh, dw), (pt, pl, _, _) = a["strides"], a["dilations"], a["pads"]
            lo, hi, j = _side(lo, hi, j, kh, sh, dh, pt, kw, sw, dw, pl)
            align = max(align, j)
        elif n.op == "ConvTranspose":
            kh, kw = g.tensors[n.inputs[1]].shape[1:3]
            (s, sw), (pt, pl, _, _) = a["strides"], a["pads"]
            if s != sw:
                raise ConfigError(f"{n.name}: strides {s}x{sw} differ between the axes")
            k, shift = max(kh, kw), 0.5 * j * (1 - 1 / s)  # the wider axis, as for Conv
            lo, hi, j = lo + j * (min(pt, pl) - k + 1) / s + shift, hi + j * max(pt, pl) / s + shift, j / s
        elif n.op == "DepthToSpace":
            r = a["block_size"]
            lo, hi, j = lo - j * (r - 1) / (2 * r), hi + j * (r - 1) / (2 * r), j / r
        elif n.op == "Resize":
            _check_tileable(n)
            ins, outs = g.tensors[n.inputs[0]].shape[1:3], g.tensors[n.outputs[0]].shape[1:3]
            sh, sw = a["scales"] or (outs[0] / ins[0], outs[1] / ins[1])
            if abs(sh - sw) > 1e-9:
                raise ConfigError(f"{n.name}: Resize by {sh:g} x {sw:g} (the card has one scale)")
            lo, hi, j = lo - 1.5 * j, hi + 1.5 * j, j / sh
        elif n.op == "Pad":  # pixel q of the padded tensor is pixel q - pad of its input
            pt, pl, _, _ = a["pads"]
            lo, hi = lo - max(pt, pl) * j, hi - min(pt, pl) * j
        elif n.op in _MERGE:
            if any(abs(t[2] - j) > 1e-9 for t in ins):
                raise ConfigError(f"{n.name}: {n.op} of tensors at different resolutions")
            lo, hi = min(t[0] for t in ins), max(t[1] for t in ins)
        elif n.op not in _POINTWISE:
            raise ConfigError(f"{n.name}: no receptive-field rule for {n.op}")
        reach[n.outputs[0]] = (lo, hi, j)
    lo, hi, j = reach[g.outputs[0]]
    if abs(1 / j - round(1 / j)) > 1e-6:
        raise ConfigError(f"the output is 1/{j:g} of the input's size, not an integer scale")
    margin = max(math.floor(0.5 - 0.5 * j - lo + 1e-9), math.floor(0.5 - 0.5 * j + hi + 1e-9), 0)
    return Footprint(2 * margin + 1, int(round(1 / j)), int(round(align)), _colour(g))


def _check_tileable(n) -> None:
    if n.op == "Resize" and n.attrs["align_corners"]:  # sample k of n lands at k (n_in - 1) / (n_out - 1)
        raise ConfigError(f"{n.name}: a Resize with align_corners samples by the whole image's size, so no "
                          "tile matches the whole image: re-export with align_corners=False (PyTorch's default)")


def check_card(g, src) -> None:
    """A model's own card against its graph: refuse a graph that is not 1 -> 1 or 3 -> 3 channels or that no
    tile can match (the runtime tiles by the card); a scale the graph contradicts; warn when the card's
    receptive field is below the graph's."""
    _check_card(g, src)
    check_output_size(g, src)


def _check_card(g, src) -> None:
    check_image_channels(g, src)  # a card-less model too: every command reaches it here or in attach_card
    if CARD_KEY not in g.metadata:
        return
    card = ModelCard.from_json(g.metadata[CARD_KEY], str(src))
    try:
        for n in g.nodes:
            _check_tileable(n)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from None
    try:
        fp = footprint(g)
    except ConfigError as e:  # a graph the footprint cannot follow: the card is all there is
        log.debug("%s: the card's receptive field is not checked: %s", src, e)
        return
    if fp.scale != card.scale:
        raise ConfigError(f"{src}: the card says scale {card.scale}, but the graph's output is {fp.scale}x its input")
    if card.receptive_field < fp.receptive_field:
        log.warning("%s: the card's receptive field %d is below the graph's %d%s: tiled results may show seams; "
                    "fix the card (its receptive_field) or the graph", src, card.receptive_field, fp.receptive_field,
                    " (a bound: the graph resizes)" if any(n.op == "Resize" for n in g.nodes) else "")
    if card.align % fp.align:
        log.warning("%s: the card's align %d is not a multiple of the graph's %d (its strides): tiles placed off that "
                    "grid will not match the whole image", src, card.align, fp.align)


def output_scale(name, in_hw, out_hw, scale: int | None) -> int:
    """The model's scale, where its ``out_hw`` output is its ``in_hw`` input times ``scale`` (None: any whole
    factor); else ModelFormatError: the runtime tiles only such models."""
    (h, w), (oh, ow) = in_hw[:2], out_hw[:2]
    k = scale or max(1, oh // max(h, 1))
    if (oh, ow) == (h * k, w * k):
        return k
    why = " (convolutions without padding shrink it: give them pads)" if oh < h * k or ow < w * k else ""
    raise ModelFormatError(f"{name}: output {oh}x{ow} for a {h}x{w} input, not the input scaled by "
                           f"{scale or 'a whole factor'}{why}; edge-enhance runs models whose output is the input "
                           "scaled by their card's scale")


def check_output_size(g, src) -> None:
    """Run the graph once on a small blank input (its fixed size where it has one) and refuse an output that is
    not the input times its card's scale (any whole factor without a card), before any work is spent on it."""
    import numpy as np

    from .executor import run

    card = ModelCard.from_json(g.metadata[CARD_KEY], str(src)) if CARD_KEY in g.metadata else None
    _, h, w, c = g.tensors[g.inputs[0]].shape
    if h is None or w is None:
        h, w = g.folded_for or (round_up(32, card.align) if card else 32,) * 2
    try:
        y = run(g, {g.inputs[0]: np.zeros((1, h, w, c), np.float32)})[g.outputs[0]]
    except Exception as e:  # a graph the executor cannot run here fails, with its own message, where it is used
        log.debug("%s: output size not checked: %s", src, e)
        return
    output_scale(src, (h, w), y.shape[1:3], card.scale if card else None)


def _side(lo, hi, j, kh, sh, dh, pt, kw, sw, dw, pl):
    """Conv over both axes, kept as the wider of the two (the card has one receptive field)."""
    out = []
    for k, s, d, p in ((kh, sh, dh, pt), (kw, sw, dw, pl)):
        out.append((lo - p * j - 0.5 * (s - 1) * j, hi + ((k - 1) * d - p) * j - 0.5 * (s - 1) * j))
    if sh != sw:
        raise ConfigError(f"strides {sh}x{sw} differ between the axes")
    return min(o[0] for o in out), max(o[1] for o in out), j * sh



def add_card_arguments(parser) -> None:
    card_arguments(parser, "for a model without an embedded card (the output carries the card)", layout=False)


def card_options(args) -> dict | None:
    """The --card-* values given, as keyword arguments of ``attach_card``; None when none was."""
    kw = {k: getattr(args, "card_" + k, None) for k in ("task", "scale", "receptive_field", "align", "input_range")}
    return {k: v for k, v in kw.items() if v is not None} or None


def attach_card(g, src, task: str | None = None, *, scale: int | None = None, receptive_field: int | None = None,
                align: int | None = None, input_range: tuple = (0.0, 1.0)) -> ModelCard:
    """Make the card of a card-less graph (defaults read off the graph) and store it in its metadata."""
    if CARD_KEY in g.metadata:
        raise ConfigError(f"{src}: the model carries its own card; --card-* options are for models without one")
    check_image_channels(g, src)
    if task is None:
        raise ConfigError(f"{src}: a model without a card needs --card-task ({', '.join(TASKS)}); scale, "
                          "receptive field and align are read off the graph")
    try:
        fp = footprint(g)
    except ConfigError as e:
        if None in (scale, receptive_field, align):
            raise ConfigError(f"{src}: cannot read the card off the graph ({e}); pass --card-scale, "
                              "--card-receptive-field and --card-align") from None
        fp = Footprint(receptive_field, scale, align, _colour(g))
    if scale is not None and scale != fp.scale:
        raise ConfigError(f"{src}: --card-scale {scale}, but the graph's output is {fp.scale}x its input")
    if receptive_field is not None and receptive_field < fp.receptive_field:
        log.warning("%s: --card-receptive-field %d is below the graph's %d; tiled results will show seams",
                    src, receptive_field, fp.receptive_field)
    s = scale or fp.scale
    card = ModelCard(name=Path(str(src)).stem, task=task, scale=s, receptive_field=receptive_field or fp.receptive_field,
                     align=align or fp.align, base="nearest" if s > 1 else "identity", input_range=tuple(input_range),
                     colour=fp.colour)
    g.metadata[CARD_KEY] = card.to_json()
    check_output_size(g, src)
    return card
