"""Exact tiling: every tile is inferred with a margin of at least the receptive-field radius,
and the margin is cropped, so the stitched result equals the whole-image result bit for bit.

The whole-image result is the model run on the image itself: at the image's edges the network's
own zero padding applies, as it did on the training crops (reflect-padding the edges instead cost
sr-x2 0.04 / 0.07 dB on Set5 / Set14). So a window never leaves the image: an edge tile is shifted to
lie against the edge and keeps the margin only on its inner sides. Every tile has the same input
shape, so fixed-shape and NPU models work and the interpreter is resized once; only an image
smaller than a fixed model shape is reflect-padded at its bottom / right up to that shape.

For a model whose card has ``align`` > 1 (input sides must be multiples of it; shifts by multiples
of it commute with the model), tile sides, cores and the margin are multiples of ``align``, so
every window starts on a multiple of ``align`` from the image origin; the image is reflect-padded at
its bottom / right up to the next multiple (the whole-image run alike), and cropped back after.

>>> [(t.core, t.window) for t in plan_tiles(10, 7, tile=(8, 8), margin=2)]
[((0, 0, 6, 7), (0, 0)), ((6, 0, 4, 7), (2, 0))]
>>> [(t.core, t.window) for t in plan_tiles(9, 3, tile=(6, 6), margin=2, align=2)]
[((0, 0, 4, 3), (0, 0)), ((4, 0, 2, 3), (2, 0)), ((6, 0, 3, 3), (4, 0))]
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)
_SAID: set = set()  # (requested tile, margin) already warned about

MIN_CORE = 8
MAX_AUTO_TILE = 1024


class Tile(NamedTuple):
    core: tuple[int, int, int, int]  # y, x, h, w of the output region, in input pixels
    window: tuple[int, int]  # y, x of the tile's top-left in the input (never negative; rows / columns
    # past the bottom / right edge, there only for alignment or a fixed shape, are the image's reflection)


@dataclass(frozen=True)
class TilingConfig:
    """tile: None means auto (largest tile whose activations fit memory_mb); N or (h, w) fixes it."""

    tile: tuple[int, int] | None = None
    memory_mb: float = 256.0

    def __post_init__(self):
        tile = self.tile
        if isinstance(tile, (int, np.integer)) and not isinstance(tile, bool):
            tile = (int(tile), int(tile))
        if tile is not None and (not isinstance(tile, (tuple, list)) or len(tile) != 2
                                 or not all(isinstance(n, (int, np.integer)) and n >= 1 for n in tile)):
            raise ConfigError(f"tile must be a positive size N or (height, width), got {self.tile!r}")
        object.__setattr__(self, "tile", None if tile is None else (int(tile[0]), int(tile[1])))
        if not (self.memory_mb > 0 and math.isfinite(self.memory_mb)):
            raise ConfigError(f"memory budget must be a positive number of MB, got {self.memory_mb!r}")


def parse_tile(text: str) -> tuple[int, int] | None:
    """'auto' -> None, '256' -> (256, 256), '256x192' -> (256, 192) (height x width)."""
    if text == "auto":
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise ConfigError(f"tile {text!r} is not 'auto', N or HxW") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise ConfigError(f"tile {text!r} is not 'auto', N or HxW")
    return parts[0], parts[1]


def round_up(n: int, align: int) -> int:
    return -(-n // align) * align


def min_tile_side(margin: int, align: int = 1) -> int:
    """The smallest useful tile side: the margins on both sides and a core of MIN_CORE (aligned)."""
    return 2 * margin + round_up(MIN_CORE, align)


def check_aligned(sizes, align: int, what: str) -> None:
    """ConfigError naming ``what`` unless every (h, w) in ``sizes`` is a multiple of ``align``."""
    bad = [f"{h}x{w}" for h, w in sizes if h % align or w % align]
    if bad:
        raise ConfigError(f"{what} {', '.join(bad)}: the model's input height and width must be multiples of "
                          f"{align} (its card's align)")


def plan_tiles(h: int, w: int, tile: tuple[int, int], margin: int, align: int = 1) -> list[Tile]:
    """Tiles of input shape `tile` covering an h x w image, each core with at least `margin` pixels of
    context on every side that is not the image's edge; with `align`, tile and margin must be
    multiples of it, and so then are the cores and every window's start."""
    check_aligned([tile], align, "tile")
    if margin % align:
        raise ConfigError(f"margin {margin} is not a multiple of the model's align {align}")
    ys = _axis(h, tile[0], margin, align)
    xs = _axis(w, tile[1], margin, align)
    return [Tile((y, x, ch, cw), (wy, wx)) for y, ch, wy in ys for x, cw, wx in xs]


def _axis(n: int, t: int, m: int, a: int) -> list[tuple[int, int, int]]:
    """(core start, core length, window start) along one side of n pixels, for windows of t."""
    padded = round_up(n, a)
    if t >= padded:
        return [(0, n, 0)]
    if t - 2 * m < 1:
        raise ConfigError(f"tile side {t} leaves no room inside a margin of {m} pixels")
    out, y = [], 0
    while y < n:
        start = min(max(y - m, 0), padded - t)
        end = padded if start + t == padded else start + t - m
        out.append((y, min(end, n) - y, start))
        y = end
    return out


def choose_tile(h: int, w: int, margin: int, bytes_per_pixel: float, memory_mb: float,
                requested: tuple[int, int] | None = None, fixed: tuple[int, int] | None = None,
                align: int = 1) -> tuple[int, int]:
    """The run's tile shape: the model's fixed shape, else the request, else the largest square whose
    activations fit the budget; never larger than the padded image (then the run is one tile).

    Sides are multiples of `align` (`margin` must be one): the whole image is padded up to the next
    multiple, and a requested side is rounded up to one (--tile 101 with align 2 runs 102).
    """
    a = align
    full = (round_up(h, a), round_up(w, a))
    if fixed:
        return fixed
    if requested:
        if requested[0] >= h and requested[1] >= w:  # "a tile at least as large as the image": no tiling
            grown = full
        else:
            tile = tuple(min(round_up(r, a), f) for r, f in zip(requested, full))
            # A side with no room for a core inside the margins is grown to the smallest that has one (said once).
            grown = tuple(min(min_tile_side(margin, a), f) if t < f and t - 2 * margin < 1 else t
                          for t, f in zip(tile, full))
            if grown != tile and (requested, margin) not in _SAID:
                _SAID.add((requested, margin))
                log.warning("tile %dx%d leaves no room inside the model's margins of %d pixels: running %dx%d",
                            *requested, margin, *grown)
        need = grown[0] * grown[1] * bytes_per_pixel / 2**20
        if need > memory_mb and (grown, memory_mb) not in _SAID:  # --memory only sizes an automatic tile
            _SAID.add((grown, memory_mb))
            log.warning("tile %dx%d needs about %.0f MB for the engine, over the %g MB memory budget, which sizes "
                        "only an automatic tile: leave --tile out to keep within it", *grown, need, memory_mb)
        return grown
    budget_px = memory_mb * 2**20 / max(bytes_per_pixel, 1.0)
    floor = min_tile_side(margin, a)
    side = max(floor, _round_down(min(int(math.sqrt(budget_px)), MAX_AUTO_TILE), a))
    th, tw = min(side, full[0]), min(side, full[1])
    # A thin strip leaves budget unused in one direction: spend it along the other.
    if th < side:
        tw = min(full[1], max(floor, _round_down(min(int(budget_px // th), MAX_AUTO_TILE**2 // th), a)))
    elif tw < side:
        th = min(full[0], max(floor, _round_down(min(int(budget_px // tw), MAX_AUTO_TILE**2 // tw), a)))
    return _balanced(h, th, margin, a), _balanced(w, tw, margin, a)


def _round_down(n: int, align: int) -> int:
    return n - n % align


def _balanced(n: int, t: int, margin: int, align: int = 1) -> int:
    """The smallest tile side giving the same number of tiles as `t` along `n` pixels, so the last
    tile is not mostly overlap (720 rows at tile 559, margin 9: two tiles of 369, not of 559).
    k tiles of side t cover 2 (t - margin) + (k - 2) (t - 2 margin) pixels (one tile: t)."""
    padded = round_up(n, align)
    if t >= padded:
        return padded
    k = len(_axis(n, t, margin, align))
    return min(t, round_up(-(-(padded + (2 * k - 2) * margin) // k), align))


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """np.pad(mode='reflect') index mapping, for any distance outside [0, n)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def extract(img: np.ndarray, y: int, x: int, th: int, tw: int) -> np.ndarray:
    """img[y:y+th, x:x+tw] with reflect padding wherever the window leaves the image."""
    h, w = img.shape[:2]
    if y >= 0 and x >= 0 and y + th <= h and x + tw <= w:
        return img[y:y + th, x:x + tw]
    ys = reflect_index(np.arange(y, y + th), h)
    xs = reflect_index(np.arange(x, x + tw), w)
    return img[ys[:, None], xs[None, :]]


def overhead(h: int, w: int, tile: tuple[int, int], margin: int, align: int = 1) -> float:
    """Input pixels inferred / image pixels: the cost of margins and padding (>= 1)."""
    return len(plan_tiles(h, w, tile, margin, align)) * tile[0] * tile[1] / (h * w)
