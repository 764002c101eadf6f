"""Live statistics of the preview loop: rates, drops, latency percentiles, engine time.

Memory is constant for any run length (a fixed-bin latency histogram for the run summary and
per-window lists that are reset every second), so a soak test measures the loop, not its stats.

>>> h = LatencyHistogram()
>>> for ms in (10, 20, 30, 40):
...     h.add(ms / 1000)
>>> h.percentile(50), h.percentile(95)
(20.0, 40.0)
"""
from __future__ import annotations

import json
import math
import os
import threading
import time

import numpy as np

from .errors import OutputError


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile: an observed value, never an interpolation between two."""
    if not values:
        return None
    s = sorted(values)
    return s[max(0, math.ceil(q / 100 * len(s)) - 1)]


class LatencyHistogram:
    """Latencies in 0.5 ms bins up to 10 s (the last bin collects anything slower)."""

    BIN_MS = 0.5

    def __init__(self, max_ms: float = 10_000.0):
        self.counts = np.zeros(int(max_ms / self.BIN_MS) + 1, np.int64)
        self.n = 0

    def add(self, seconds: float):
        i = min(int(seconds * 1000 / self.BIN_MS + 1e-6), len(self.counts) - 1)  # 0.029 s is bin 58, not 57
        self.counts[i] += 1
        self.n += 1

    def percentile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(q / 100 * self.n))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        return i * self.BIN_MS  # lower edge: matches nearest-rank to within one bin


def _r(x, nd=2):
    return None if x is None else round(float(x), nd)


class Stats:
    """Counters updated by the capture thread and the inference loop; ``window()`` once a second."""

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self._lock = threading.Lock()
        self.t0 = clock()
        self.captured = self.processed = self.dropped = self.reconnects = 0
        self.hist = LatencyHistogram()
        self.engine_total_ms = 0.0
        self.engine_frames = 0
        self._win_t = self.t0
        self._win_captured = self._win_processed = self._win_dropped = 0
        self._win_lat: list[float] = []
        self._win_engine: list[float] = []
        self._win_busy: list[float] = []
        self.last: dict = {}

    def on_capture(self, *, dropped: bool):
        with self._lock:
            self.captured += 1
            if dropped:
                self.dropped += 1

    def on_processed(self, *, latency_s: float, engine_ms: float | None, busy_ms: float | None):
        """engine_ms / busy_ms are None for frames shown without enhancement."""
        with self._lock:
            self.processed += 1
            self.hist.add(latency_s)
            self._win_lat.append(latency_s * 1000)
            if engine_ms is not None:
                self.engine_total_ms += engine_ms
                self.engine_frames += 1
                self._win_engine.append(engine_ms)
            if busy_ms is not None:
                self._win_busy.append(busy_ms)

    def on_reconnect(self):
        with self._lock:
            self.reconnects += 1

    def window(self, **extra) -> dict:
        """Rates over the time since the previous call; totals since the start."""
        with self._lock:
            now = self.clock()
            dt = max(now - self._win_t, 1e-9)
            d = {
                "t": _r(now - self.t0, 3),
                "input_fps": _r((self.captured - self._win_captured) / dt),
                "output_fps": _r((self.processed - self._win_processed) / dt),
                "captured": self.captured,
                "processed": self.processed,
                "dropped": self.dropped,
                "dropped_window": self.dropped - self._win_dropped,
                "latency_ms": {"p50": _r(percentile(self._win_lat, 50)), "p95": _r(percentile(self._win_lat, 95))},
                "engine_ms": _r(sum(self._win_engine) / len(self._win_engine)) if self._win_engine else None,
                "busy_ms": _r(sum(self._win_busy) / len(self._win_busy)) if self._win_busy else None,
                "reconnects": self.reconnects,
            }
            self._win_t, self._win_captured = now, self.captured
            self._win_processed, self._win_dropped = self.processed, self.dropped
            self._win_lat, self._win_engine, self._win_busy = [], [], []
        d.update(extra)
        self.last = d
        return d

    def summary(self, *, until: float | None = None, **extra) -> dict:
        """``until``: when the loop ended (the rates leave out the camera's and sinks' teardown)."""
        with self._lock:
            secs = max((self.clock() if until is None else until) - self.t0, 1e-9)
            d = {
                "final": True,
                "seconds": _r(secs, 3),
                "captured": self.captured,
                "processed": self.processed,
                "dropped": self.dropped,
                "input_fps": _r(self.captured / secs),
                "output_fps": _r(self.processed / secs),
                "latency_ms": {"p50": _r(self.hist.percentile(50)), "p95": _r(self.hist.percentile(95))},
                "engine_ms_mean": _r(self.engine_total_ms / self.engine_frames) if self.engine_frames else None,
                "reconnects": self.reconnects,
            }
        d.update(extra)
        return d


class StatsJsonWriter:
    """``--stats-json FILE``: one JSON object per line, flushed as written, final summary last.

    A stats callback: ``writer(stats=dict)``.
    """

    def __init__(self, path: str):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise OutputError(f"{path}: cannot write stats, folder {folder} does not exist")
        try:
            self._f = open(path, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"{path}: cannot write stats ({e})") from None
        self.path = path

    def __call__(self, *, stats: dict):
        if self._f.closed:
            return
        self._f.write(json.dumps(stats, sort_keys=True) + "\n")
        self._f.flush()

    def close(self):
        self._f.close()


def overlay_lines(s: dict) -> list[str]:
    """The stats overlay text drawn on window / file sinks."""
    if not s:
        return ["starting..."]
    lat = s.get("latency_ms") or {}
    fmt = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        f"in {s.get('input_fps', 0):.1f} fps  out {s.get('output_fps', 0):.1f} fps  dropped {s.get('dropped', 0)}",
        f"latency p50 {fmt(lat.get('p50'))} ms  p95 {fmt(lat.get('p95'))} ms  engine {fmt(s.get('engine_ms'))} ms",
    ]
    state = "on" if s.get("enhance", True) else "OFF"
    lines.append(f"enhance {state}  strength {s.get('strength', 0):.1f}  {s.get('model') or ''}")
    ad = s.get("adaptive")
    if ad:
        lines.append(f"adaptive: target {ad['target_fps']:g} fps  scale {ad['scale']:.2f}  {ad.get('model') or ''}")
    return lines
