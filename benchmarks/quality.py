"""Quality: every subject through the evaluation protocol (edge_enhance.evaluation.evaluate)."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_enhance.evaluation import evaluate

from .subjects import NotRun, Subject

log = logging.getLogger(__name__)

DATASETS = {"sr": ("Set5", "Set14", "BSD100"), "enhance": ("Set5", "Set14", "BSD100"),
            "denoise": ("CBSD68", "Kodak24", "McMaster"), "dejpeg": ("CBSD68", "Kodak24", "McMaster")}
QUICK_DATASETS = {"sr": ("Set5", "Set14"), "enhance": ("Set5", "Set14"),
                  "denoise": ("McMaster",), "dejpeg": ("McMaster",)}
# The chart's quality axis: one set per task (Set14 is also the set the sr-x2 bar names).
HEADLINE = {"sr": "Set14", "enhance": "Set14", "denoise": "McMaster", "dejpeg": "McMaster"}
SIGMA = 25.0  # denoise noise level, 0..255 scale
JPEG_QUALITY = 30


def run_quality(subjects: list[Subject], data_dir: Path | None, quick: bool) -> tuple[list[dict], list[NotRun]]:
    rows, notes = [], []
    table = QUICK_DATASETS if quick else DATASETS
    for sub in subjects:
        names = [n for n in table.get(sub.task, ()) if sub.datasets is None or n in sub.datasets]
        if not names:
            notes.append(NotRun(f"quality {sub.label}", f"runs on {', '.join(sub.datasets or ())} only, "
                                                         "not in this mode's sets"))
        for name in names:
            # --data may name ../shared/data or its eval/ folder.
            folder = None if data_dir is None else next(
                (f for f in (Path(data_dir) / "eval" / name, Path(data_dir) / name) if f.is_dir()),
                Path(data_dir) / "eval" / name)
            if folder is None:
                notes.append(NotRun(f"{sub.label} on {name}", "no --data given and no shared/data found "
                                                             "(set EDGE_ENHANCE_DATA or give --data DIR)"))
                continue
            if not folder.is_dir():
                notes.append(NotRun(f"{sub.label} on {name}", f"dataset folder {folder} not found (--data)"))
                continue
            fn = sub.make(None)
            t0 = time.perf_counter()
            res = evaluate(fn, folder, sub.task, scale=sub.scale, sigma=SIGMA, quality=JPEG_QUALITY)
            secs = time.perf_counter() - t0
            log.info("quality %s %s: %.3f dB (%.0f s)", sub.label, name, res.psnr, secs)
            rows.append({**sub.row(), "dataset": name, "images": len(res.rows), "psnr": res.psnr,
                         "ssim": res.ssim, "input_psnr": res.baseline_psnr, "seconds": secs,
                         "sigma": SIGMA if sub.task == "denoise" else None,
                         "jpeg_quality": JPEG_QUALITY if sub.task == "dejpeg" else None})
    return rows, notes
