"""fp32 ONNX vs int8 TFLite PSNR table for exported models (a measuring tool, not part of the tests).

    python -m quantization.table /var/tmp/edge-enhance/export/sr-x2.onnx --methods minmax percentile mse \\
        --out /tmp/table.json

For each model and observer method: quantise (default calibration set), write the int8 .tflite,
and evaluate both files with ``edge_enhance.evaluation.evaluate`` through an ``Enhancer`` on the
sets the issue's bars use (SR: Set5 / Set14 / BSD100; denoise: CBSD68 sigma 15/25/50 and Kodak24
sigma 25; dejpeg: Kodak24 quality 20/30/40).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from edge_enhance.evaluation import bar_plan

from .calibration import METHODS, calibration_for, default_train_dir
from .report import load_model


def psnr_of(path, card, ds: Path, kw: dict, threads: int) -> float:
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.evaluation import evaluate

    enh = Enhancer(path, threads=threads, card=card)
    task = "enhance" if card.task == "enhance" else card.task
    return evaluate(enh.enhance_rgb, ds, task, scale=card.scale, with_ssim=False, **kw).psnr


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantization.table")
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq")
    ap.add_argument("--cle", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--sets", nargs="*", help="only these labels (e.g. Set5)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edge-enhance-quant")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from .quantize import quantize_model, write_tflite

    flag = {"auto": "auto", "on": True, "off": False}
    a.workdir.mkdir(parents=True, exist_ok=True)
    eval_root = default_train_dir().parent / "eval"
    rows = []
    for mp in a.models:
        g, card = load_model(mp)
        calib = calibration_for(card)
        sets = [s for s in bar_plan(card.task) if not a.sets or s[0] in a.sets]
        fp32 = {label: psnr_of(mp, card, eval_root / d, kw, a.threads) for label, d, kw in sets}
        for m in a.methods:
            t = time.perf_counter()
            res = quantize_model(g, calib, method=m, rounding=a.rounding, cle=flag[a.cle],
                                 bias_correction=flag[a.bias_correction], sensitivity=False)
            qt = time.perf_counter() - t
            out = a.workdir / f"{mp.stem}.{m}.{a.rounding}.int8.tflite"
            write_tflite(res.graph, out)
            for label, d, kw in sets:
                q = psnr_of(out, card, eval_root / d, kw, a.threads)
                row = {"model": mp.stem, "set": label, "method": m, "rounding": a.rounding, "cle": res.report.cle,
                       "bias_correction": res.report.bias_correction, "fp32": fp32[label], "int8": q,
                       "drop": fp32[label] - q, "quantise_s": round(qt, 1), "tflite": str(out)}
                rows.append(row)
                print(f"{mp.stem:<10} {label:<12} {m:<10} {a.rounding:<7} cle={int(res.report.cle)} "
                      f"bc={int(res.report.bias_correction)}  fp32 {fp32[label]:.3f}  int8 {q:.3f}  "
                      f"drop {fp32[label] - q:+.3f}", flush=True)
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    sys.exit(main())
