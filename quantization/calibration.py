"""Calibration data and activation-range observers.

Calibration data are (input, target) pairs made from clean RGB crops with the task's degradation
(bicubic x1/s for SR, clipped Gaussian noise for denoise, JPEG for dejpeg, the blur + downscale +
noise + JPEG chain of `edge_enhance.evaluation.degrade` for enhance), so a
model sees inputs like the ones it was trained on, and the pairs give a real PSNR to steer
mixed precision. The default set is a fixed, seeded choice of crops from ``shared/data/train``.

Observers are pure functions of a histogram ``(counts, edges)``:

>>> counts, edges = np.array([1, 0, 0, 998, 1]), np.linspace(-1.0, 4.0, 6)
>>> minmax_range(counts, edges)
(-1.0, 4.0)
>>> [round(v, 2) for v in percentile_range(counts, edges, 99.8)]
[0.0, 3.0]
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edge_enhance import evaluation, ycbcr
from edge_enhance.evaluation import IMAGE_SUFFIXES, bicubic_resize, jpeg, rgb8

from .errors import CalibrationError, ConfigError, ImageInputError

log = logging.getLogger(__name__)

METHODS = ("minmax", "percentile", "mse")
TASKS = ("sr", "denoise", "dejpeg", "enhance")
BINS = 2048


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class CalibConfig:
    crop: int = 96  # side of a clean (HR) crop; SR inputs are crop // scale
    count: int = 32  # crops in all
    seed: int = 0

    def __post_init__(self):
        if self.crop < 8:
            raise ConfigError(f"calibration crop {self.crop} is smaller than 8 pixels")
        if self.count < 1:
            raise ConfigError(f"calibration count {self.count} must be at least 1")


@dataclass
class CalibSet:
    """Model inputs (NHWC float32 on the card's input range, [0, 1] by default, batch 1) and their
    clean targets (HxWx3 uint8 pixels, or the Y plane for a luma model)."""

    inputs: list
    targets: list
    source: str
    input_range: tuple = (0.0, 1.0)
    images: int = 0  # the images the crops were cut from

    def __len__(self) -> int:
        return len(self.inputs)


def default_train_dir() -> Path:
    """``$EDGE_ENHANCE_DATA/train``, else the nearest ``shared/data/train`` above the repository."""
    from edge_enhance.evaluation import shared_data

    found = shared_data("train")
    if found is not None:
        return found
    raise CalibrationError("no shared/data/train above the repository: set EDGE_ENHANCE_DATA or pass --calib DIR")


MIN_CALIB_IMAGES = 4  # fewer is allowed, with a warning: every crop then comes from a handful of pictures


def list_calibration_files(folder) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise CalibrationError(f"{d}: is not a folder (calibration takes a folder of images)" if d.exists()
                               else f"{d}: calibration folder does not exist")
    # Subfolders count; hidden files and folders do not (macOS' ._IMG.png AppleDouble files, .thumbnails).
    files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(d).parts))
    if not files:
        raise CalibrationError(f"{d}: no images ({', '.join(IMAGE_SUFFIXES)}) in the calibration folder")
    return files


def _load(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return rgb8(im)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(f"{path}: cannot read calibration image ({e})") from None


def _size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageInputError(f"{path}: cannot read calibration image ({e})") from None


def degrade(clean: np.ndarray, task: str, scale: int, rng: np.random.Generator) -> np.ndarray:
    """The model input for a clean crop (uint8 HxWx3 -> uint8)."""
    if task == "sr":
        h, w = clean.shape[:2]
        return bicubic_resize(clean, (w // scale, h // scale))
    if task == "enhance":  # blur, downscale, noise, JPEG: what the enhance model is trained on
        return evaluation.degrade(clean, scale, rng)
    if task == "denoise":
        sigma = rng.uniform(5.0, 50.0)
        return np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    if task == "dejpeg":
        return jpeg(clean, int(rng.integers(10, 91)))
    raise ConfigError(f"calibration: task {task!r} is not one of {', '.join(TASKS)}")


def calibration_for(card, folder=None, config: CalibConfig = CalibConfig()) -> CalibSet:
    """The calibration set a model card asks for (task, scale, align, colour, input range)."""
    s = card.scale if card.task in ("sr", "enhance") else 1
    rf, step = card.receptive_field or 0, s * card.align
    if config.crop // s < rf:
        log.warning("calibration crops of %d px give model inputs of %d px, under the model's receptive field (%d): "
                    "every activation then sees the image's edge, and the int8 ranges fit edges rather than photos "
                    "(a --calib-crop of %d or more avoids it)", config.crop, config.crop // s, rf,
                    -(-2 * rf * s // step) * step)
    return calibration_set(folder, task=card.task, scale=card.scale, config=config, align=card.align,
                           colour=card.colour, input_range=card.input_range)


def calibration_set(folder=None, *, task: str = "sr", scale: int = 2, config: CalibConfig = CalibConfig(),
                    align: int = 1, colour: str = "rgb", input_range: tuple = (0.0, 1.0)) -> CalibSet:
    """``config.count`` seeded crops from the images of ``folder`` (default: the shared train set).

    Which images: with more images than crops, ``config.count`` of them drawn with ``config.seed``
    from the whole folder (sorted by path first, so the draw is the same on every machine), one
    crop each; otherwise every image, in turn. Only the drawn images are decoded, one at a time, so
    memory does not grow with the folder. Every image's header is read first: one that cannot be
    read (a macOS ``._`` file, a truncated copy) is left out with a warning naming it; in a user
    folder, one smaller than ``crop`` is an error (the shared set passes over them; T91 has some).
    ``align`` is the model card's: model inputs (the crop, / scale for sr and enhance) must be
    multiples of it. ``colour`` is the card's: "y" (a luma model) gives the Y plane of inputs and
    targets (edge_enhance.ycbcr); pixels 0..255 are fed as ``input_range`` (lo, hi) spans them.
    """
    if task not in TASKS:
        raise ConfigError(f"calibration: task {task!r} is not one of {', '.join(TASKS)}")
    s = scale if task in ("sr", "enhance") else 1
    if config.crop % s:
        raise ConfigError(f"calibration crop {config.crop} is not a multiple of the scale {scale}")
    if config.crop // s % align:
        raise ConfigError(f"calibration crop {config.crop} makes model inputs of {config.crop // s} pixels, not a "
                          f"multiple of the model's align {align} (choose a crop that is a multiple of {s * align})")
    root = Path(folder) if folder is not None else default_train_dir()
    files = list_calibration_files(root)
    sizes = {}
    for p in files:
        try:
            sizes[p] = _size(p)
        except ImageInputError as e:
            log.warning("%s: left out", e)
    if not sizes:
        raise ImageInputError(f"{root}: none of the {len(files)} calibration image(s) can be read")
    files = [p for p in files if p in sizes]
    if len(files) < MIN_CALIB_IMAGES:
        log.warning("%s: calibrating from %d image(s): int8 ranges will fit only what they show; a dozen or more "
                    "varied photos calibrate better", root, len(files))
    rng = np.random.default_rng(config.seed)
    if folder is None:  # our own set passes over images smaller than the crop (T91 has some)
        files = [p for p in files if min(sizes[p]) >= config.crop]
    small = next((p for p in files if min(sizes[p]) < config.crop), None)
    if small is not None:  # in a user's folder, an error
        p, (w, h) = small, sizes[small]
        raise ImageInputError(f"{p}: {w}x{h} is smaller than the {config.crop}x{config.crop} calibration crop "
                              "(a smaller --calib-crop, a multiple of the model's scale, fits a folder of small "
                              "images)")
    if len(files) > config.count:
        files = [files[i] for i in sorted(rng.choice(len(files), config.count, replace=False))]
    inputs, targets, im, cur, k = [], [], None, None, 0
    while len(inputs) < config.count:
        if not files:
            raise ImageInputError(f"{root}: none of the calibration images drawn can be decoded")
        p = files[k % len(files)]
        if p != cur:  # one decoded image at a time (a folder smaller than the count is read again in turn)
            im, cur = None, None
            try:
                im = _load(p)
            except ImageInputError as e:  # a truncated file: the next image gives its crop
                log.warning("%s: left out", e)
                files.remove(p)
                continue
            cur = p
            if min(im.shape[:2]) < config.crop:  # a header that said otherwise
                raise ImageInputError(f"{p}: {im.shape[1]}x{im.shape[0]} is smaller than the "
                                      f"{config.crop}x{config.crop} calibration crop")
        k += 1
        y = int(rng.integers(0, im.shape[0] - config.crop + 1))
        x = int(rng.integers(0, im.shape[1] - config.crop + 1))
        clean = np.ascontiguousarray(im[y:y + config.crop, x:x + config.crop])
        inp = degrade(clean, task, scale, rng)
        if colour == "y":
            inp, clean = (ycbcr.rgb_to_ycbcr(a, 255)[..., :1] for a in (inp, clean))
        lo, hi = input_range
        inputs.append((inp.astype(np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo))[None])
        targets.append(clean)
    log.info("calibration: %d crops of %d px from %d image(s) in %s", len(inputs), config.crop, len(files), root)
    return CalibSet(inputs, targets, str(root), tuple(input_range), len(files))


# --------------------------------------------------------------------------- statistics
def flat_frames(calib: CalibSet) -> list:
    """Flat frames the size of the calibration inputs: every corner of the colour cube (black,
    white, the primaries and secondaries) and mid grey, on the input range (one channel: black,
    grey, white). Where a flat frame meets the network's zero padding at an image edge, the
    activations are larger than anywhere in a photo's interior; ranges that clip them darken the
    edges of a white page or a blown sky (sr-x2 int8: the corner of a white frame 235 for 255)."""
    shape = calib.inputs[0].shape
    lo, hi = calib.input_range
    c = shape[-1]
    levels = [np.array(k, np.float32) for k in itertools.product((0.0, 1.0), repeat=c)] if c == 3 else \
        [np.full(c, v, np.float32) for v in (0.0, 1.0)]
    levels.append(np.full(c, 0.5, np.float32))
    return [np.broadcast_to(np.float32(lo) + v * np.float32(hi - lo), shape).copy() for v in levels]


class RangeStats:
    """Per-tensor min / max (first pass), then a histogram over [min, max] (second pass) of the
    calibration inputs; ``floor``: the min / max on :func:`flat_frames`, which every range covers."""

    def __init__(self):
        self.lo: dict = {}
        self.hi: dict = {}
        self.hist: dict = {}
        self.floor: dict = {}

    def observe_range(self, name: str, v: np.ndarray) -> None:
        self.lo[name] = min(self.lo.get(name, np.inf), float(v.min()))
        self.hi[name] = max(self.hi.get(name, -np.inf), float(v.max()))

    def observe_floor(self, name: str, v: np.ndarray) -> None:
        lo, hi = self.floor.get(name, (np.inf, -np.inf))
        self.floor[name] = (min(lo, float(v.min())), max(hi, float(v.max())))

    def edges(self, name: str) -> np.ndarray:
        lo, hi = self.lo[name], self.hi[name]
        if hi <= lo:
            hi = lo + 1e-6
        return np.linspace(lo, hi, BINS + 1)

    def observe_hist(self, name: str, v: np.ndarray) -> None:
        c, _ = np.histogram(v, bins=self.edges(name))
        self.hist[name] = self.hist.get(name, 0) + c

    def range(self, name: str, method: str, percentile: float = 99.99) -> tuple[float, float]:
        if method not in METHODS:
            raise ConfigError(f"calibration method {method!r} is not one of {', '.join(METHODS)}")
        if method == "minmax" or name not in self.hist:
            lo, hi = self.lo[name], self.hi[name]
        else:
            counts, edges = self.hist[name], self.edges(name)
            lo, hi = percentile_range(counts, edges, percentile) if method == "percentile" else mse_range(counts, edges)
        f_lo, f_hi = self.floor.get(name, (lo, hi))
        return min(lo, f_lo), max(hi, f_hi)


def minmax_range(counts: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """Outer edges of the first and last non-empty bins."""
    nz = np.nonzero(counts)[0]
    if nz.size == 0:
        return 0.0, 0.0
    return float(edges[nz[0]]), float(edges[nz[-1] + 1])


def percentile_range(counts: np.ndarray, edges: np.ndarray, pct: float = 99.99) -> tuple[float, float]:
    """Clip (100 - pct)% of the mass, half from each tail; a tail on one side of 0 stays at 0."""
    if not 50.0 < pct <= 100.0:
        raise ConfigError(f"percentile {pct} must be in (50, 100]")
    cdf = np.cumsum(counts, dtype=np.float64)
    total = cdf[-1]
    if total == 0:
        return 0.0, 0.0
    tail = total * (100.0 - pct) / 200.0
    i_lo = int(np.searchsorted(cdf, tail, side="right"))
    i_hi = int(np.searchsorted(cdf, total - tail, side="left"))
    lo, hi = float(edges[min(i_lo, len(counts) - 1)]), float(edges[min(i_hi + 1, len(counts))])
    return min(lo, 0.0) if edges[0] < 0 else float(edges[0]), max(hi, 0.0)


def quant_mse(x: np.ndarray, weights: np.ndarray, lo: float, hi: float, levels: int = 256) -> float:
    """Expected squared error of uniform quantisation to [lo, hi] of values ``x`` (weighted counts).

    Values inside the range cost the rounding noise step^2 / 12; values outside cost their squared
    distance to the range (clipping). Unlike rounding the bin centres themselves, this does not
    depend on how the histogram's bins line up with the quantisation grid.
    """
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    total = max(float(np.sum(weights)), 1.0)
    step = (hi - lo) / (levels - 1) if hi > lo else 0.0
    clip = np.maximum(x - hi, 0.0) + np.maximum(lo - x, 0.0)
    return float(np.sum(weights * (clip ** 2 + step ** 2 / 12.0)) / total)


def mse_range(counts: np.ndarray, edges: np.ndarray, levels: int = 256, steps: int = 80) -> tuple[float, float]:
    """The clip range minimising the quantisation MSE of the histogram (bin centres, weighted).

    Grid search over shrinking each end of the observed range independently (an end at 0 stays
    at 0); the observed range itself is a candidate, so the result is never worse than min-max.
    """
    lo0, hi0 = minmax_range(counts, edges)
    if hi0 <= lo0:
        return lo0, hi0
    centres = (edges[:-1] + edges[1:]) / 2
    nz = counts > 0
    x, w = centres[nz], counts[nz].astype(np.float64)
    fr = np.linspace(1.0, 0.05, steps)
    his = [hi0 * f for f in fr] if hi0 > 0 else [hi0]
    los = [lo0 * f for f in fr] if lo0 < 0 else [lo0]
    best = (quant_mse(x, w, lo0, hi0, levels), lo0, hi0)
    # Coordinate descent (hi then lo, twice) keeps the search linear in the grid size.
    lo, hi = lo0, hi0
    for _ in range(2):
        for h in his:
            e = quant_mse(x, w, lo, h, levels)
            if e < best[0]:
                best = (e, lo, h)
        lo, hi = best[1], best[2]
        for lv in los:
            e = quant_mse(x, w, lv, hi, levels)
            if e < best[0]:
                best = (e, lv, hi)
        lo, hi = best[1], best[2]
    return float(best[1]), float(best[2])
