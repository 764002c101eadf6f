"""Tiling overhead: the same model on the same frame whole (one tile) and auto-tiled, interleaved."""
from __future__ import annotations

import logging

from .speed import QUICK_SIZES, SIZES, time_calls
from .stats import MIN_RUNS, median, synthetic_image
from .subjects import NotRun, Subject

log = logging.getLogger(__name__)

BUDGETS_MB = (128, 256)


def run_tiling(sub: Subject | None, quick: bool, runs: int = MIN_RUNS) -> tuple[list[dict], list[NotRun]]:
    if sub is None:
        return [], [NotRun("tiling", "no model of ours to run")]
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.errors import EdgeEnhanceError
    from edge_enhance.tiling import TilingConfig

    rows = []
    for in_wh in (QUICK_SIZES if quick else SIZES[1:]):
        w, h = in_wh
        frame = synthetic_image(h, w, seed=2)
        try:  # its engine missing (a bare install): said as the other sections say it
            enh = {"whole": Enhancer(sub.path, tiling=TilingConfig(tile=(h, w)))}
            for b in BUDGETS_MB:
                enh[f"auto {b} MB"] = Enhancer(sub.path, tiling=TilingConfig(memory_mb=b))
        except EdgeEnhanceError as e:
            return rows, [NotRun(f"tiling {sub.label}", str(e))]
        times = time_calls({k: e.enhance_rgb for k, e in enh.items()}, frame, max(runs, MIN_RUNS))
        whole = median(times["whole"])
        for k, e in enh.items():
            med = median(times[k])
            rows.append({**sub.row(), "input": [w, h], "config": k, "tile": list(e.last_run.tile),
                         "tiles": e.last_run.tiles, "runs": len(times[k]), "times_s": times[k], "median_s": med,
                         "ratio_to_whole": med / whole})
    return rows, []
