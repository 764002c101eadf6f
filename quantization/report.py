"""Shared pieces of the quantize / prune commands: model loading, quick-set evaluation, sizes."""
from __future__ import annotations

import json
import os
import sys
import math
import time
from dataclasses import dataclass
from pathlib import Path

from edge_enhance.card import CARD_KEY, ModelCard
from edge_enhance.evaluation import DEFAULT_QUALITY, DEFAULT_SIGMA, SET_SIZES, setting_label

from .errors import ConfigError, ModelFormatError

BAR_EXIT_CODES = ("Exit codes: 0 written; 1 the --max-drop bar was missed (nothing written unless --force); 2 bad "
                  "options or input, nothing written (an unreadable model or one with unsupported ops, calibration "
                  "or evaluation images that cannot be read or are too small); 130 interrupted.")

def load_model(path, card: dict | None = None, tile: tuple | None = None):
    """(IR graph, card) of an ONNX model with an edge-enhance card, or without one and ``card``, the
    --card-* options (``conversion.footprint.attach_card`` keywords: task, and scale etc. read off the graph).
    ``tile``: the --tile the output is fixed at, for which sizes computed from the input's shape are folded."""
    from conversion.cli import import_onnx
    from conversion.footprint import attach_card, check_card

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: model file does not exist")
    if p.suffix.lower() != ".onnx":
        raise ConfigError(f"{p}: quantize / prune take an ONNX model (got {p.suffix or 'no suffix'})")
    g = import_onnx(p, tile)
    if card:
        attach_card(g, p, **card)
    else:
        check_card(g, p)
    if CARD_KEY not in g.metadata:
        raise ModelFormatError(f"{p}: the model has no edge-enhance card ({CARD_KEY}); it is needed for the "
                               "task and scale of calibration and evaluation: pass --card-task "
                               "sr|denoise|dejpeg|enhance (scale and receptive field are read off the graph)")
    return g, ModelCard.from_json(g.metadata[CARD_KEY], str(p))


def eval_dir(given: str | None, task: str) -> Path:
    """The quick set: --eval DIR, else Set5 for SR / enhance, CBSD68 for denoise / dejpeg (shared/data/eval).
    Checked before any work (it was first needed after minutes of quantising or pruning)."""
    from edge_enhance.evaluation import list_images, shared_data

    if given:
        list_images(given)  # a missing or empty folder said now
        return Path(given)
    name = "Set5" if task in ("sr", "enhance") else "CBSD68"
    found = shared_data(f"eval/{name}")
    if found is None or not found.is_dir():
        raise ConfigError(f"no evaluation set: {found or f'shared/data/eval/{name}'} is not there (set "
                          "EDGE_ENHANCE_DATA to the data folder); pass --eval DIR (a folder of images), or "
                          "--no-eval to skip the before / after evaluation")
    return found


def eval_task(card: ModelCard) -> str:
    return "enhance" if card.task == "enhance" else card.task


@dataclass
class Quality:
    psnr: float
    seconds: float
    images: int = 0  # measured (too small ones are left out)


def calibration_record(calib, config) -> dict:
    """How a model was calibrated, for its card and report: the folder's name (not its path), the images
    and crops used, crop size and seed (``--calib-seed``): enough to draw the same set again."""
    return {"folder": Path(calib.source).name, "images": calib.images, "crops": len(calib), "crop": config.crop,
            "seed": config.seed}


def figure_label(task: str, dataset, images: int) -> str:
    """The card label of a figure measured on ``images`` images of the folder ``dataset``: the protocol
    set's own label only when it is that whole set.

    >>> figure_label("sr", "eval/Set5", 5), figure_label("sr", "sub/Set5", 2), figure_label("denoise", "mine", 3)
    ('Set5', 'Set5 (2 images)', 'mine/sigma25 (3 images)')
    """
    name = Path(dataset).name
    label = setting_label(task, name)
    return label if SET_SIZES.get(name) == images else f"{label} ({images} image{'s' * (images != 1)})"


def measure(model_path, card: ModelCard, dataset, *, sigma: float = DEFAULT_SIGMA, quality: int = DEFAULT_QUALITY,
            threads: int | None = None) -> Quality:
    """Mean PSNR of a model file (any engine the runtime has) on a dataset, exact protocol."""
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.evaluation import evaluate

    enh = Enhancer(model_path, threads=threads, card=card)
    t = time.perf_counter()
    r = evaluate(enh.enhance_rgb, dataset, eval_task(card), scale=card.scale, sigma=sigma, quality=quality,
                 with_ssim=False)
    return Quality(r.psnr, time.perf_counter() - t, len(r.rows))


def psnr_drop(before: float, after: float) -> float:
    """``before - after`` in dB; 0 where both are infinite (a lossless model stayed lossless), NaN where
    nothing was measurable (which misses any bar)."""
    return 0.0 if before == after == math.inf else before - after


def human_size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def temp_beside(out: Path) -> Path:
    """A temporary path in the output's folder (so the final os.replace is atomic)."""
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: output folder {out.parent} does not exist")
    return out.parent / f".{out.name}.{os.getpid()}.part"


class Progress:
    """Stage messages on stderr (the terminal belongs to the CLI; libraries only log)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t0:6.1f} s] {message}", file=sys.stderr, flush=True)


def publish(tmp: Path, out: Path, quiet: bool) -> int:
    """Move a verified result into place and say where (the commands' common last step)."""
    import os

    os.replace(tmp, out)
    if not quiet:
        print(f"wrote {out} ({human_size(out.stat().st_size)})")
    return 0


def pop_figures(d: dict) -> tuple[dict | None, dict | None]:
    """Take a card's measured (PSNR, SSIM) figures out of its dict (``extra.psnr`` or an older card's
    top-level ``psnr``; ``extra.ssim``): a quantised or pruned model's card must not show the source
    network's as its own."""
    top = d.pop("psnr", None)
    extra = d.setdefault("extra", {})
    return extra.pop("psnr", top), extra.pop("ssim", None)


def stamp_card(graph, psnr: dict | None, quantization: dict, fp32: dict | None = None,
               base: dict | None = None, ssim: dict | None = None, fp32_ssim: dict | None = None) -> None:
    """Put a quantised model's own measured ``psnr`` and ``ssim`` (None: not measured) into its card, with
    the float model's figures (``fp32`` / ``fp32_ssim``, else the card's own) as ``psnr_fp32`` /
    ``ssim_fp32`` and how it was quantised; ``base``: other card fields to set first (training.bundle:
    how the shipped float network was trained)."""
    d = json.loads(graph.metadata[CARD_KEY])
    extra = d.setdefault("extra", {})
    extra.update(base or {})
    own, own_ssim = pop_figures(d)
    for key, value in (("psnr_fp32", fp32 if fp32 is not None else own), ("psnr", psnr),
                       ("ssim_fp32", fp32_ssim if fp32_ssim is not None else own_ssim), ("ssim", ssim)):
        if value is not None:
            extra[key] = value
    extra["quantization"] = quantization
    ModelCard.from_dict(d)  # still a valid card
    graph.metadata[CARD_KEY] = json.dumps(d, sort_keys=True)
