"""The benchmark's arithmetic, as pure functions (tested in tests/test_benchmarks.py).

>>> mp_per_s((1280, 720), 0.5)   # 0.9216 MP in half a second
1.8432
>>> round(gmac_per_s(1000, (1280, 720), 0.5), 4)  # 1000 MACs per output pixel
1.8432
>>> interleave(["A", "B"], runs=2, warmup=1)
[('A', True), ('B', True), ('A', False), ('B', False), ('A', False), ('B', False)]
"""
from __future__ import annotations

import math
import statistics
from typing import Hashable, Sequence

from .errors import ConfigError

MIN_RUNS = 5  # the issue asks for medians of at least five timed runs


def median(xs: Sequence[float]) -> float:
    if not xs:
        raise ConfigError("median of no measurements")
    return float(statistics.median(xs))


def mp_per_s(out_wh: tuple[int, int], seconds: float) -> float:
    """Output megapixels per second (1 MP = 10^6 pixels)."""
    if seconds <= 0:
        raise ConfigError(f"time {seconds!r} s must be positive")
    return out_wh[0] * out_wh[1] / 1e6 / seconds


def gmac_per_s(macs_per_out_px: float, out_wh: tuple[int, int], seconds: float) -> float:
    """Achieved 10^9 multiply-accumulates per second for a frame of out_wh output pixels."""
    return macs_per_out_px * mp_per_s(out_wh, seconds) * 1e6 / 1e9


def macs_per_output_pixel(macs_per_input_pixel: float, scale: int) -> float:
    """A card's MACs are per input pixel; an x s model makes s*s output pixels from each."""
    return macs_per_input_pixel / (scale * scale)


def interleave(names: Sequence[Hashable], runs: int, warmup: int = 1) -> list[tuple[Hashable, bool]]:
    """The order of calls: warm-ups first (untimed), then rounds A B C A B C ... so slow drifts in
    machine load (other processes, thermal) fall on every contender alike. (name, is_warmup) pairs."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs {runs} must be >= 1 and warmup {warmup} >= 0")
    return [(n, True) for _ in range(warmup) for n in names] + [(n, False) for _ in range(runs) for n in names]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both),
    sorted by the first axis. Points with a NaN coordinate are never on the front.

    >>> pareto_front([(1, 30), (2, 29), (0.5, 31), (1, 28), (3, 27)])
    [2, 0, 1, 4]
    """
    ok = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    front = []
    for i in ok:
        xi, yi = points[i]
        dominated = any(
            (points[j][0] >= xi and points[j][1] >= yi) and (points[j][0] > xi or points[j][1] > yi)
            for j in ok if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def synthetic_image(h: int, w: int, seed: int = 0):
    """A deterministic photo-like uint8 test frame: smooth gradients, edges and mild noise.

    Built row band by row band so a 48 MP frame never needs float64 copies of the whole image.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((h, w, 3), np.uint8)
    xs = np.arange(w, dtype=np.float32)
    band = 256
    for y0 in range(0, h, band):
        ys = np.arange(y0, min(h, y0 + band), dtype=np.float32)[:, None]
        base = 128 + 60 * np.sin(xs / 37.0) * np.cos(ys / 53.0) + 40 * (((xs // 64) + (ys // 64)) % 2)
        for c in range(3):
            v = base + 20 * np.sin((xs + 17 * c) / (11.0 + 5 * c)) + rng.normal(0, 4, base.shape)
            out[y0:y0 + len(ys), :, c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def frame_for_megapixels(mp: float, aspect: tuple[int, int] = (4, 3)) -> tuple[int, int]:
    """(h, w) of a frame of about mp megapixels at the given w:h aspect, both even.

    >>> frame_for_megapixels(12)
    (3000, 4000)
    """
    aw, ah = aspect
    w = math.sqrt(mp * 1e6 * aw / ah)
    h = w * ah / aw
    return int(round(h / 2)) * 2, int(round(w / 2)) * 2
