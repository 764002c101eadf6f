"""Memory: peak RSS of enhancing large synthetic frames under a --memory budget, each run in a fresh
subprocess (``python -m benchmarks.memory MODEL MEGAPIXELS MEMORY_MB``) so no run inherits another's heap."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
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


if __name__ == "__main__":
    print(json.dumps(child(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))))
