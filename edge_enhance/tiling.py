"""Exact tiling: every tile is inferred with a margin of at least the receptive-field radius,
and the margin is cropped, so the stitched result equals the whole-image result bit for bit.

The image is conceptually reflect-padded by the margin on every side (the whole-image run sees the
same padding), and every tile has the same input shape, so fixed-shape and NPU models work and the
interpreter is resized once.

>>> [t.core for t in plan_tiles(10, 7, tile=(8, 8), margin=2)]
[(0, 0, 4, 4), (0, 4, 4, 3), (4, 0, 4, 4), (4, 4, 4, 3), (8, 0, 2, 4), (8, 4, 2, 3)]
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


def plan_tiles(h: int, w: int, tile: tuple[int, int], margin: int) -> list[Tile]:
    """Tiles of input shape `tile` (margins included) covering an h x w image."""
    th, tw = tile
    ch, cw = th - 2 * margin, tw - 2 * margin
    if ch < 1 or cw < 1:
        raise ConfigError(f"tile {th}x{tw} leaves no room inside a margin of {margin} pixels")
    return [
        Tile((y, x, min(ch, h - y), min(cw, w - x)), (y, x))
        for y in range(0, h, ch)
        for x in range(0, w, cw)
    ]


def choose_tile(h: int, w: int, margin: int, bytes_per_pixel: float, memory_mb: float,
                requested: tuple[int, int] | None = None, fixed: tuple[int, int] | None = None) -> tuple[int, int]:
    """The run's tile shape: the model's fixed shape, else the request, else the largest square whose
    activations fit the budget; never larger than the padded image (then the run is one tile)."""
    full = (h + 2 * margin, w + 2 * margin)
    if fixed:
        return fixed
    if requested:
        if requested[0] >= h and requested[1] >= w:  # "a tile at least as large as the image": no tiling
            return full
        return min(requested[0], full[0]), min(requested[1], full[1])
    budget_px = memory_mb * 2**20 / max(bytes_per_pixel, 1.0)
    floor = 2 * margin + MIN_CORE
    side = max(floor, min(int(math.sqrt(budget_px)), MAX_AUTO_TILE))
    th, tw = min(side, full[0]), min(side, full[1])
    # A thin strip leaves budget unused in one direction: spend it along the other.
    if th < side:
        tw = min(full[1], max(floor, min(int(budget_px // th), MAX_AUTO_TILE**2 // th)))
    elif tw < side:
        th = min(full[0], max(floor, min(int(budget_px // tw), MAX_AUTO_TILE**2 // tw)))
    return _balanced(h, th, margin), _balanced(w, tw, margin)


def _balanced(n: int, t: int, margin: int) -> int:
    """The smallest tile side giving the same number of tiles as `t` along `n` pixels, so the last
    tile is not mostly padding (720 rows at tile 559, margin 9: two tiles of 378, not of 559)."""
    core = t - 2 * margin
    count = -(-n // core)
    return -(-n // count) + 2 * margin


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


def overhead(h: int, w: int, tile: tuple[int, int], margin: int) -> float:
    """Input pixels inferred / image pixels: the cost of margins and edge padding (>= 1)."""
    return len(plan_tiles(h, w, tile, margin)) * tile[0] * tile[1] / (h * w)
