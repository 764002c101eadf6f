"""Exact tiling: every tile is inferred with a margin of at least the receptive-field radius,
and the margin is cropped, so the stitched result equals the whole-image result bit for bit.

The image is conceptually reflect-padded by the margin on every side (the whole-image run sees the
same padding), and every tile has the same input shape, so fixed-shape and NPU models work and the
interpreter is resized once.

For a model whose card has ``align`` > 1 (input sides must be multiples of it; shifts by multiples
of it commute with the model), tile sides, cores and the margin are multiples of ``align``, so
every window starts on a multiple of ``align`` from the image origin; the whole-image run is the
image reflect-padded up to the next multiple (then cropped back), which the tiles see alike.

>>> [t.core for t in plan_tiles(10, 7, tile=(8, 8), margin=2)]
[(0, 0, 4, 4), (0, 4, 4, 3), (4, 0, 4, 4), (4, 4, 4, 3), (8, 0, 2, 4), (8, 4, 2, 3)]
>>> [t.core for t in plan_tiles(5, 3, tile=(8, 8), margin=2, align=2)]
[(0, 0, 4, 3), (4, 0, 1, 3)]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import ConfigError

MIN_CORE = 8
MAX_AUTO_TILE = 1024


class Tile(NamedTuple):
    core: tuple[int, int, int, int]  # y, x, h, w of the output region, in input pixels
    window: tuple[int, int]  # y, x of the tile's top-left in the (virtually) padded input


@dataclass(frozen=True)
class TilingConfig:
    """tile: None means auto (largest tile whose activations fit memory_mb); N or (h, w) fixes it."""

    tile: tuple[int, int] | None = None
    memory_mb: float = 256.0

    def __post_init__(self):
        if self.tile is not None and (len(self.tile) != 2 or min(self.tile) < 1):
            raise ConfigError(f"tile must be a positive size, got {self.tile!r}")
        if not self.memory_mb > 0:
            raise ConfigError(f"memory budget must be positive, got {self.memory_mb!r} MB")


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


def check_aligned(sizes, align: int, what: str) -> None:
    """ConfigError naming ``what`` unless every (h, w) in ``sizes`` is a multiple of ``align``."""
    bad = [f"{h}x{w}" for h, w in sizes if h % align or w % align]
    if bad:
        raise ConfigError(f"{what} {', '.join(bad)}: the model's input height and width must be multiples of "
                          f"{align} (its card's align)")


def plan_tiles(h: int, w: int, tile: tuple[int, int], margin: int, align: int = 1) -> list[Tile]:
    """Tiles of input shape `tile` (margins included) covering an h x w image; with `align`, tile
    and margin must be multiples of it, and so then are the cores and every window's start."""
    th, tw = tile
    check_aligned([tile], align, "tile")
    if margin % align:
        raise ConfigError(f"margin {margin} is not a multiple of the model's align {align}")
    ch, cw = th - 2 * margin, tw - 2 * margin
    if ch < 1 or cw < 1:
        raise ConfigError(f"tile {th}x{tw} leaves no room inside a margin of {margin} pixels")
    return [
        Tile((y, x, min(ch, h - y), min(cw, w - x)), (y, x))
        for y in range(0, h, ch)
        for x in range(0, w, cw)
    ]


def choose_tile(h: int, w: int, margin: int, bytes_per_pixel: float, memory_mb: float,
                requested: tuple[int, int] | None = None, fixed: tuple[int, int] | None = None,
                align: int = 1) -> tuple[int, int]:
    """The run's tile shape: the model's fixed shape, else the request, else the largest square whose
    activations fit the budget; never larger than the padded image (then the run is one tile).

    Sides are multiples of `align` (`margin` must be one): the whole image is padded up to the next
    multiple, and a requested side is rounded up to one (--tile 101 with align 2 runs 102).
    """
    a = align
    full = (round_up(h, a) + 2 * margin, round_up(w, a) + 2 * margin)
    if fixed:
        return fixed
    if requested:
        if requested[0] >= h and requested[1] >= w:  # "a tile at least as large as the image": no tiling
            return full
        return min(round_up(requested[0], a), full[0]), min(round_up(requested[1], a), full[1])
    budget_px = memory_mb * 2**20 / max(bytes_per_pixel, 1.0)
    floor = 2 * margin + round_up(MIN_CORE, a)
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
    tile is not mostly padding (720 rows at tile 559, margin 9: two tiles of 378, not of 559).
    With `align` the core is rounded up to a multiple of it (never past `t`'s, itself a multiple)."""
    core = t - 2 * margin
    count = -(-n // core)
    return round_up(-(-n // count), align) + 2 * margin


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
    """Input pixels inferred / image pixels: the cost of margins and edge padding (>= 1)."""
    return len(plan_tiles(h, w, tile, margin, align)) * tile[0] * tile[1] / (h * w)
