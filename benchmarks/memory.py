"""Memory: peak RSS of enhancing large synthetic frames under a --memory budget, each run in a fresh
subprocess (``python -m benchmarks.memory MODEL MEGAPIXELS MEMORY_MB``) so no run inherits another's heap.

``python -m benchmarks.memory --files [--model sr-x2] [--memory 128] [--megapixels 12]``: the same from
files through the CLI (decoder, output and encoder included), for a JPEG photo to PNG and to JPEG, a grey
photo stored as RGB and an RGBA PNG; ``--ram MB`` makes the runs see that much RAM available, as a small
board would (the output then streams through a memory-mapped file). Prints a markdown table."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from edge_enhance.procmem import status_mb

from .subjects import NotRun, Subject

log = logging.getLogger(__name__)

MEGAPIXELS = (2, 12)
SLOW_MEGAPIXELS = (48,)
QUICK_MEGAPIXELS = (2,)
BUDGETS_MB = (128, 256, 512)
ROOT = Path(__file__).resolve().parents[1]


def _rss_mb() -> float:
    """Current resident set (not the peak); NaN where /proc is missing."""
    v = status_mb("VmRSS")
    return float("nan") if v is None else v


def _peak_mb() -> float:
    """Peak resident set of this process; NaN (reported as unknown) where neither /proc nor the
    resource module is (Windows). VmHWM belongs to the address space, which exec replaces; Linux's
    ru_maxrss survives exec and would report the benchmark parent's own peak."""
    v = status_mb("VmHWM")
    if v is not None:
        return v
    try:
        import resource
    except ImportError:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def child(model: str, megapixels: float, memory_mb: float) -> dict:
    """Runs in the fresh process: load, make the frame, enhance once, report."""
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.tiling import TilingConfig

    from .stats import frame_for_megapixels, synthetic_image

    enh = Enhancer(model, tiling=TilingConfig(memory_mb=memory_mb))
    h, w = frame_for_megapixels(megapixels)
    frame = synthetic_image(h, w)
    before = _rss_mb()
    t0 = time.perf_counter()
    out = enh.enhance_rgb(frame)
    secs = time.perf_counter() - t0
    s = enh.scale
    return {"input": [w, h], "output": [w * s, h * s], "rss_before_mb": before, "peak_rss_mb": _peak_mb(),
            "input_mb": frame.nbytes / 2**20, "output_mb": out.nbytes / 2**20,
            "tile": list(enh.last_run.tile), "tiles": enh.last_run.tiles, "seconds": secs}


def run_memory(subs: list[Subject], quick: bool, slow: bool) -> tuple[list[dict], list[NotRun]]:
    """subs[0] (the primary model) at every size; its other engines / precisions at the smallest."""
    if not subs:
        return [], [NotRun("memory", "no model of ours to run")]
    mps = QUICK_MEGAPIXELS if quick else MEGAPIXELS + (SLOW_MEGAPIXELS if slow else ())
    rows, notes = [], []
    if not slow:
        notes.append(NotRun(f"memory {SLOW_MEGAPIXELS[0]} MP", "slow; pass --slow to run it"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    plan = [(sub, mp) for mp in mps for sub in (subs if mp == mps[0] else subs[:1])]
    for sub, mp in plan:
        for budget in BUDGETS_MB:
            # The child runs in the project root: a relative model path (--models x.onnx, --out bench-out) is
            # made absolute first, a bundled name stays as it is.
            path = str(Path(sub.path).resolve()) if Path(sub.path).exists() else sub.path
            cmd = [sys.executable, "-m", "benchmarks.memory", path, str(mp), str(budget)]
            log.info("memory %s %s MP at %d MB", sub.label, mp, budget)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(ROOT))
            if p.returncode != 0:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                notes.append(NotRun(f"memory {sub.label} {mp} MP at {budget} MB", f"child exited {p.returncode}: {tail}"))
                continue
            rows.append({**sub.row(), "megapixels": mp, "memory_mb": budget,
                         **json.loads(p.stdout.strip().splitlines()[-1])})
    return rows, notes


def file_child(ram_mb: float, argv: list[str]) -> dict:
    """Runs in the fresh process: the CLI on one file, with ``ram_mb`` (0: the machine's) available."""
    from edge_enhance import enhancer
    from edge_enhance.cli import main

    if ram_mb:
        enhancer._available_ram = lambda: int(ram_mb * 2**20)
    anon = [0.0]  # peak of the anonymous part, sampled: a memory-mapped output's pages count in RSS, yet the
    #              system can write them out and take them back, as it cannot the rest

    def watch():
        while True:
            anon[0] = max(anon[0], status_mb("RssAnon") or float("nan"))
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    t0 = time.perf_counter()
    rc = main(argv)
    return {"rc": rc, "peak_rss_mb": _peak_mb(), "peak_anon_mb": anon[0], "seconds": time.perf_counter() - t0}


def run_files(model: str, memory_mb: float, megapixels: float, ram_mb: float) -> list[dict]:
    import tempfile

    import numpy as np
    from PIL import Image

    from .stats import frame_for_megapixels, synthetic_image

    model = str(Path(model).resolve()) if Path(model).exists() else model  # the children run in ROOT
    h, w = frame_for_megapixels(megapixels)
    frame = synthetic_image(h, w)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(frame).save(f"{d}/photo.jpg", quality=92)
        grey = frame.mean(axis=2).astype(np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(f"{d}/grey.jpg", quality=92)
        alpha = np.where(frame[..., 1] > 100, 255, np.uint8(frame[..., 0] // 2))
        Image.fromarray(np.dstack([frame, alpha])).save(f"{d}/rgba.png", compress_level=1)
        del frame, grey, alpha
        for src, out in (("photo.jpg", "png"), ("photo.jpg", "jpg"), ("grey.jpg", "png"), ("rgba.png", "png")):
            argv = ["enhance", f"{d}/{src}", "-o", f"{d}/out.{out}", "--model", model, "--memory", str(memory_mb),
                    "-q", "--overwrite"]
            cmd = [sys.executable, "-m", "benchmarks.memory", "--file-child", str(ram_mb), *argv]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT))
            nan = float("nan")
            res = json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else \
                {"rc": p.returncode, "peak_rss_mb": nan, "peak_anon_mb": nan, "seconds": nan}
            if res["rc"]:  # the CLI's error line (or the child's last one), as run_memory reports a failed child
                res["error"] = (p.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({"input": src, "output": out, **res})
    return rows


def _files_main(args: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.memory --files")
    p.add_argument("--model", default="sr-x2")
    p.add_argument("--memory", type=float, default=128)
    p.add_argument("--megapixels", type=float, default=12)
    p.add_argument("--ram", type=float, default=0, help="MB of RAM the runs see available (default: the machine's)")
    a = p.parse_args(args)
    print(f"{a.model}, {a.megapixels:g} MP, --memory {a.memory:g}, RAM available: {a.ram or 'the machine'}")
    print("| input | output | peak RSS MB | of it anonymous (sampled) MB | s | exit |\n|---|---|---|---|---|---|")
    for r in run_files(a.model, a.memory, a.megapixels, a.ram):
        print(f"| {r['input']} | {r['output']} | {r['peak_rss_mb']:.0f} | {r['peak_anon_mb']:.0f} | {r['seconds']:.1f} | "
              f"{r['rc']} {r.get('error', '')} |")


if __name__ == "__main__":
    if sys.argv[1] == "--files":
        _files_main(sys.argv[2:])
    elif sys.argv[1] == "--file-child":
        print(json.dumps(file_child(float(sys.argv[2]), sys.argv[3:])))
    else:
        print(json.dumps(child(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))))
