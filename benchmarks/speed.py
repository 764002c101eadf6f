"""Speed: output MP/s and ms per frame, warm-up excluded, medians of >= 5 runs, contenders interleaved."""
from __future__ import annotations

import logging
import os
import time

import numpy as np

from .stats import MIN_RUNS, gmac_per_s, interleave, median, mp_per_s, synthetic_image
from .subjects import NotRun, Subject

log = logging.getLogger(__name__)

SIZES = ((640, 360), (1280, 720), (1920, 1080))  # input (w, h)
QUICK_SIZES = ((640, 360),)


def thread_counts(quick: bool) -> list[int]:
    """1, 2 and all cores (deduplicated: on a 2-core machine 'all' is 2)."""
    n = os.cpu_count() or 1
    return sorted({2, n} if quick else {1, 2, n})


def contenders(subjects: list[Subject], quick: bool) -> list[tuple[Subject, int | None]]:
    """(subject, threads): LiteRT at each thread count, other engines at their default (all cores)."""
    out = []
    for s in subjects:
        if s.engine == "litert":
            out += [(s, t) for t in thread_counts(quick)]
        else:
            out.append((s, os.cpu_count() if s.threaded else 1))
    return out


def time_calls(fns: dict, frame: np.ndarray, runs: int, clock=time.perf_counter) -> dict[str, list[float]]:
    """Run every fn on ``frame`` in the interleaved schedule; per-name lists of timed seconds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for name, warm in interleave(list(fns), runs):
        t0 = clock()
        fns[name](frame)
        dt = clock() - t0
        if not warm:
            times[name].append(dt)
    return times


def speed_row(sub: Subject, threads: int | None, in_wh: tuple[int, int], secs: list[float]) -> dict:
    out_wh = (in_wh[0] * sub.scale, in_wh[1] * sub.scale)
    med = median(secs)
    return {**sub.row(), "threads": threads, "input": list(in_wh), "output": list(out_wh), "runs": len(secs),
            "times_s": secs, "median_s": med, "ms_per_frame": med * 1e3, "fps": 1.0 / med,
            "mp_per_s": mp_per_s(out_wh, med),
            "gmac_per_s": gmac_per_s(sub.macs_per_out_px, out_wh, med) if sub.macs_per_out_px is not None else None}


def parse_sizes(text: str) -> tuple[tuple[int, int], ...]:
    """'640x360,1280x720' -> ((640, 360), (1280, 720)): input frames as width x height."""
    from .errors import ConfigError

    try:
        sizes = tuple(tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(len(s) != 2 or min(s) < 1 for s in sizes):
        raise ConfigError(f"sizes {text!r} are not a comma list of WIDTHxHEIGHT")
    return sizes


def run_speed(subjects: list[Subject], quick: bool, runs: int = MIN_RUNS,
              sizes: tuple[tuple[int, int], ...] | None = None) -> tuple[list[dict], list[NotRun]]:
    runs = max(runs, MIN_RUNS)
    rows, notes = [], []
    pairs = contenders(subjects, quick)
    for in_wh in sizes or (QUICK_SIZES if quick else SIZES):
        frame = synthetic_image(in_wh[1], in_wh[0], seed=1)
        fns, keyed = {}, {}
        for sub, threads in pairs:
            key = f"{sub.label} @{threads}t"
            try:
                fns[key] = sub.make(threads)
            except Exception as e:  # an engine that cannot start is reported, the others still run
                notes.append(NotRun(f"speed {key}", f"cannot start: {e}"))
                continue
            keyed[key] = (sub, threads)
        log.info("speed at %dx%d: %d contenders x %d runs, interleaved", *in_wh, len(fns), runs)
        times = time_calls(fns, frame, runs)
        rows += [speed_row(*keyed[k], in_wh, times[k]) for k in fns]
        del fns
    return rows, notes
