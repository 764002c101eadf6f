"""The issue's bars, judged from one run's rows. Each is PASS / FAIL with its figure, or "not run"
with the reason (a missing model is never scored).

>>> judge(2.1, 2.0), judge(1.99, 2.0), judge(float("nan"), 2.0)
('PASS', 'FAIL', 'not run')
"""
from __future__ import annotations

import math
import os

from edge_enhance.evaluation import SET_SIZES

BAR_SIZE = (640, 360)  # input frame the speed bars are judged at (the real-time bar names it)


def _partial(*rows) -> str:
    """A caveat for a quality bar judged on fewer images than its set has (a --data folder with a subset)."""
    r = rows[0]
    n, full = {x.get("images") for x in rows}, SET_SIZES.get(r["dataset"])
    if full is None or None in n or n == {full}:
        return ""
    return f"; on {' / '.join(str(k) for k in sorted(n))} of {r['dataset']}'s {full} images: not the bar's set"


def judge(value: float | None, threshold: float) -> str:
    if value is None or math.isnan(value):
        return "not run"
    return "PASS" if value >= threshold else "FAIL"


def _bar(text, value, threshold, figure, reason=None) -> dict:
    status = "not run" if reason else judge(value, threshold)
    return {"bar": text, "status": status, "value": None if reason else value, "threshold": threshold,
            "figure": figure if not reason else "", "reason": reason or ""}


def find_speed(rows, *, model, engine, precision, threads, size=None):
    size = size or BAR_SIZE
    for r in rows:
        if (r["model"] == model and r["engine"] == engine and r["precision"] == precision
                and r["threads"] == threads and tuple(r["input"]) == tuple(size)):
            return r
    return None


def find_quality(rows, *, model, engine, precision, dataset):
    for r in rows:
        if r["model"] == model and r["engine"] == engine and r["precision"] == precision and r["dataset"] == dataset:
            return r
    return None


def judge_bars(speed: list[dict], quality: list[dict], all_threads: int | None = None) -> list[dict]:
    n = all_threads or os.cpu_count() or 1
    w, h = BAR_SIZE
    out = []

    # 1. sr-x2 int8 TFLite vs OpenCV FSRCNN x2: speed and quality.
    text = f"sr-x2 int8 TFLite >= 2.0x output MP/s of OpenCV FSRCNN x2 ({w}x{h} input, {n} threads)"
    ours = find_speed(speed, model="sr-x2", engine="litert", precision="int8", threads=n)
    peer = find_speed(speed, model="FSRCNN x2", engine="opencv", precision="fp32", threads=n)
    if ours and peer:
        v = ours["mp_per_s"] / peer["mp_per_s"]
        out.append(_bar(text, v, 2.0, f"{v:.2f}x ({ours['mp_per_s']:.2f} vs {peer['mp_per_s']:.2f} MP/s)"))
    else:
        out.append(_bar(text, None, 2.0, "", "no sr-x2 int8 TFLite speed row" if not ours else "no OpenCV FSRCNN x2 speed row"))

    text = "sr-x2 int8 TFLite >= +1.5 dB over OpenCV FSRCNN x2 on Set14"
    ours = find_quality(quality, model="sr-x2", engine="litert", precision="int8", dataset="Set14")
    peer = find_quality(quality, model="FSRCNN x2", engine="opencv", precision="fp32", dataset="Set14")
    if ours and peer:
        v = ours["psnr"] - peer["psnr"]
        out.append(_bar(text, v, 1.5, f"{v:+.2f} dB ({ours['psnr']:.2f} vs {peer['psnr']:.2f} dB{_partial(ours, peer)})"))
    else:
        out.append(_bar(text, None, 1.5, "", "no sr-x2 int8 TFLite Set14 row" if not ours else "no OpenCV FSRCNN x2 Set14 row"))

    # 2. Real-time preview model.
    text = f"sr-x2-rt int8 TFLite >= 30 fps at {w}x{h} -> {2 * w}x{2 * h} ({n} threads)"
    ours = find_speed(speed, model="sr-x2-rt", engine="litert", precision="int8", threads=n)
    if ours:
        out.append(_bar(text, ours["fps"], 30.0, f"{ours['fps']:.1f} fps ({ours['ms_per_frame']:.1f} ms/frame)"))
    else:
        out.append(_bar(text, None, 30.0, "", "no sr-x2-rt int8 TFLite speed row"))

    # 3. int8 vs fp32 TFLite, same model, 2 threads: one bar per model that has both.
    models = sorted({r["model"] for r in speed if r["ours"]})
    judged = False
    for m in models:
        q = find_speed(speed, model=m, engine="litert", precision="int8", threads=2)
        f = find_speed(speed, model=m, engine="litert", precision="fp32", threads=2)
        if q and f:
            judged = True
            v = q["mp_per_s"] / f["mp_per_s"]
            out.append(_bar(f"{m}: int8 TFLite >= 1.5x fp32 TFLite speed ({w}x{h}, 2 threads)", v, 1.5,
                            f"{v:.2f}x ({q['mp_per_s']:.2f} vs {f['mp_per_s']:.2f} MP/s)"))
    if not judged:
        out.append(_bar(f"int8 TFLite >= 1.5x fp32 TFLite speed, same model ({w}x{h}, 2 threads)", None, 1.5, "",
                        "no model has both an int8 and an fp32 TFLite speed row"))

    # 4. denoise vs CBM3D (model-zoo bar), judged only where CBM3D ran (the bm3d package is optional).
    peer = next((r for r in quality if r["model"] == "CBM3D" and r["dataset"] == "Kodak24"), None)
    if peer:
        for r in quality:
            if r["ours"] and r["model"] == "denoise" and r["dataset"] == "Kodak24":
                v = r["psnr"] - peer["psnr"]
                out.append(_bar(f"denoise {r['engine']} {r['precision']} > CBM3D on Kodak24 (sigma 25)", v, 1e-9,
                                f"{v:+.2f} dB ({r['psnr']:.2f} vs {peer['psnr']:.2f} dB{_partial(r, peer)})"))
    return out
