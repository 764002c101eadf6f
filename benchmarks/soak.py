"""Soak: a long preview run and a large batch, watching resident memory and open file descriptors.

    python -m benchmarks.soak                       # 10-minute preview soak + 1,000-image batch
    python -m benchmarks.soak --minutes 2 --images 200 --json soak.json

Phase 1 runs the real preview loop (synthetic source paced at --fps, the Enhancer, a null sink) for
--minutes. Phase 2 runs the real CLI (`edge-enhance enhance FOLDER -o OUT`) over --images generated
photos. A sampler thread records RSS (VmRSS), open descriptors and threads every --sample seconds.
A leak shows as a rising RSS slope or descriptor count after warm-up; the verdict compares the first
and last quarter of each phase and fits a slope (MB per minute / per 1,000 images).

Model: --model (a bundled name or a path); default the bundled `sr-x2-rt` when present, else a
stand-in *workload* built from tests/onnx_models.residual_sr (an untrained 3-layer residual network
with fixed-seed weights: it exercises the engine and the tiling like a model does, but it is not a
model and its pictures mean nothing), converted to .tflite when LiteRT and the converter are here.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edge_enhance.procmem import status_mb

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    v = status_mb("VmRSS")
    return float("nan") if v is None else v


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Sampler(threading.Thread):
    """Every `period` s: (seconds since start, phase, RSS MB, fds, threads, progress())."""

    def __init__(self, period: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.period, self.samples, self.phase = period, [], "idle"
        self.progress = lambda: 0
        self._halt = threading.Event()
        self.t0 = time.monotonic()

    def sample(self):
        self.samples.append({"t": round(time.monotonic() - self.t0, 2), "phase": self.phase,
                             "rss_mb": round(rss_mb(), 1), "fds": open_fds(),
                             "threads": threading.active_count(), "done": self.progress()})

    def run(self):
        last = time.monotonic()
        while not self._halt.wait(0.05):  # short waits, so a change of period takes effect at once
            if time.monotonic() - last >= self.period:
                last = time.monotonic()
                self.sample()

    def stop(self):
        self._halt.set()
        self.join()


def default_model(workdir: Path) -> tuple[str, str]:
    """(model path or name, description)."""
    from edge_enhance.models import bundled

    if "sr-x2-rt" in bundled():
        return "sr-x2-rt", "bundled sr-x2-rt"
    sys.path.insert(0, str(ROOT))
    from tests.onnx_models import residual_sr

    onnx_path = workdir / "workload.onnx"
    residual_sr(onnx_path, scale=2, layers=3, channels=16, seed=0, name="soak-workload")
    desc = "stand-in workload (untrained residual net, 3x conv3x3 16ch, x2), not a model"
    try:
        import ai_edge_litert  # noqa: F401

        from conversion.onnx_import import from_onnx
        from conversion.tflite_writer import to_tflite

        tfl = to_tflite(from_onnx(str(onnx_path)), workdir / "workload.tflite")
        return str(tfl), desc + ", fp32 .tflite on ai-edge-litert"
    except ImportError:
        return str(onnx_path), desc + ", .onnx on ONNX Runtime"


def summarise(samples: list[dict], phase: str, unit_key: str, per: float) -> dict:
    """First vs last quarter (after the first quarter is spent warming up) and a least-squares slope."""
    rows = [s for s in samples if s["phase"] == phase]
    if len(rows) < 4:
        return {"samples": len(rows), "verdict": "too few samples"}
    q = max(len(rows) // 4, 1)
    early, late = rows[q:2 * q], rows[-q:]
    early_rss = float(np.median([s["rss_mb"] for s in early]))
    late_rss = float(np.median([s["rss_mb"] for s in late]))
    x = np.array([s[unit_key] for s in rows[q:]], float)
    y = np.array([s["rss_mb"] for s in rows[q:]], float)
    slope = float(np.polyfit(x, y, 1)[0] * per) if len(set(x)) > 1 else 0.0
    fds = [s["fds"] for s in rows]
    threads = [s["threads"] for s in rows]
    # A file being read or written at the sampling instant adds one descriptor; a leak keeps adding them.
    fds_flat = max(s["fds"] for s in late) <= max(s["fds"] for s in early)
    flat = abs(late_rss - early_rss) <= max(2.0, 0.02 * early_rss) and fds_flat
    return {"samples": len(rows), "rss_first_mb": rows[0]["rss_mb"], "rss_early_mb": round(early_rss, 1),
            "rss_late_mb": round(late_rss, 1), "rss_max_mb": max(s["rss_mb"] for s in rows),
            "rss_slope": round(slope, 3), "fds_min": min(fds), "fds_max": max(fds),
            "fds_after_warmup": sorted(set(fds[q:])), "threads_max": max(threads),
            "verdict": "flat" if flat else "GROWING (look closer)"}


def preview_phase(model: str, minutes: float, fps: float, size: tuple[int, int], sampler: Sampler) -> dict:
    from edge_enhance.camera import NullSink, Preview, PreviewConfig, SyntheticSource
    from edge_enhance.enhancer import Enhancer

    enh = Enhancer(model, threads=2)
    sink = NullSink()
    preview = Preview(SyntheticSource(*size, fps=fps), enh, [sink], config=PreviewConfig(seconds=minutes * 60))
    sampler.phase, sampler.progress = "preview", lambda: sink.frames
    sampler.sample()
    summary = preview.run()
    sampler.sample()
    keys = ("seconds", "captured", "processed", "dropped", "input_fps", "output_fps", "latency_ms", "engine_ms_mean",
            "stop_reason")
    return {k: summary[k] for k in keys if k in summary} | {"sink_frames": sink.frames}


def batch_phase(model: str, n: int, workdir: Path, sampler: Sampler) -> dict:
    from PIL import Image

    from edge_enhance.cli import main

    src, out = workdir / "photos", workdir / "out"
    src.mkdir()
    sampler.phase = "setup"  # writing the photos is not part of either measurement
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    for i in range(n):  # varied sizes and both common formats, so the tile plan differs file to file
        h, w = 60 + (i * 7) % 61, 80 + (i * 13) % 81
        im = Image.fromarray(np.roll(base, i, axis=1)[:h, :w])
        im.save(src / (f"{i:05d}.jpg" if i % 2 else f"{i:05d}.png"), quality=90)
    sampler.phase, sampler.period = "batch", min(sampler.period, 0.25)  # a batch is quicker than a soak
    sampler.progress = lambda: sum(1 for _ in out.glob("*")) if out.is_dir() else 0
    sampler.sample()
    t0 = time.monotonic()
    rc = main(["enhance", str(src), "-o", str(out), "--model", model, "--threads", "2", "-q"])
    seconds = time.monotonic() - t0
    sampler.sample()
    written = sum(1 for p in out.iterdir() if not p.name.startswith("."))
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".")]
    return {"exit_code": rc, "images": n, "written": written, "temporaries_left": leftovers,
            "seconds": round(seconds, 1), "images_per_s": round(n / seconds, 2)}


def machine() -> dict:
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # Windows has no getloadavg
        load = None
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "loadavg_1_5_15": load, "python": platform.python_version()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="preview soak length (default 10)")
    p.add_argument("--images", type=int, default=1000, help="batch size (default 1000)")
    p.add_argument("--fps", type=float, default=15.0, help="synthetic source rate (default 15)")
    p.add_argument("--size", default="320x240", help="preview frame WxH (default 320x240)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--model", help="bundled name or model path (default: sr-x2-rt, else a stand-in workload)")
    p.add_argument("--json", type=Path, help="write samples and summary here")
    args = p.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="ee-soak-") as d:
        work = Path(d)
        model, desc = (args.model, args.model) if args.model else default_model(work)
        sampler = Sampler(args.sample)
        sampler.start()
        before = machine()
        result = {"model": desc, "machine_before": before, "config": vars(args) | {"json": str(args.json)}}
        if args.minutes > 0:
            result["preview"] = preview_phase(model, args.minutes, args.fps, (w, h), sampler)
        if args.images > 0:
            result["batch"] = batch_phase(model, args.images, work, sampler)
        sampler.stop()
        result["machine_after"] = machine()
    result["samples"] = sampler.samples
    if args.minutes > 0:
        result["preview_memory"] = summarise(sampler.samples, "preview", "t", 60.0)  # MB per minute
    if args.images > 0:
        result["batch_memory"] = summarise(sampler.samples, "batch", "done", 1000.0)  # MB per 1,000 images
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    print(f"model: {desc}")
    print(f"machine: {before}  (load average is shared with other jobs: figures are indicative)")
    print(f"{'t s':>8} {'phase':>8} {'RSS MB':>8} {'fds':>5} {'thr':>4} {'done':>6}")
    for s in sampler.samples:
        print(f"{s['t']:>8} {s['phase']:>8} {s['rss_mb']:>8} {s['fds']:>5} {s['threads']:>4} {s['done']:>6}")
    for key in ("preview", "batch", "preview_memory", "batch_memory"):
        if key in result:
            print(f"{key}: {json.dumps(result[key])}")
    bad = [k for k in ("preview_memory", "batch_memory") if result.get(k, {}).get("verdict", "flat").startswith("GROW")]
    return 1 if bad or result.get("batch", {}).get("exit_code", 0) else 0


if __name__ == "__main__":
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    sys.exit(main())
