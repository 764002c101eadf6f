"""Pruning's quality / speed trade-off curve (a measuring tool, not part of the tests).

    python -m quantization.prune_curve /var/tmp/edge-enhance/export/sr-x2.onnx --targets 0.9 0.8 0.7 0.6 0.5

For each MAC target: prune (contribution + least squares), quantise the pruned model to int8,
evaluate fp32 and int8 PSNR on Set5 (the model card's protocol), and time every int8 model against
the unpruned int8 model in interleaved LiteRT rounds.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .calibration import calibration_for, default_train_dir
from .report import load_model
from .table import psnr_of


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m quantization.prune_curve")
    ap.add_argument("model", type=Path)
    ap.add_argument("--targets", nargs="+", type=float, default=[0.9, 0.8, 0.7, 0.6, 0.5])
    ap.add_argument("--multiple", type=int, default=4)
    ap.add_argument("--method", default="percentile")
    ap.add_argument("--cle", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--dataset", default="Set5")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edge-enhance-prune")
    ap.add_argument("--size", nargs=2, type=int, default=(256, 256))
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    from .prune import prune_graph, total_macs, write_pruned_onnx
    from .quantize import quantize_model, write_tflite
    from .timing import time_models

    a.workdir.mkdir(parents=True, exist_ok=True)
    ds = default_train_dir().parent / "eval" / a.dataset
    g, card = load_model(a.model)
    calib = calibration_for(card)

    def int8(src_graph, name):
        flag = {"auto": "auto", "on": True, "off": False}
        res = quantize_model(src_graph, calib, method=a.method, sensitivity=False, cle=flag[a.cle],
                             bias_correction=flag[a.bias_correction])
        out = a.workdir / f"{name}.int8.tflite"
        write_tflite(res.graph, out)
        return out

    rows = [{"target": 1.0, "macs": total_macs(g), "onnx": str(a.model), "tflite": str(int8(g, a.model.stem)),
             "widths": None}]
    for t in a.targets:
        res = prune_graph(g, calib, t, multiple=a.multiple, evaluate=False)
        onnx_path = write_pruned_onnx(a.model, res.graph, a.workdir / f"{a.model.stem}.p{int(100 * t)}.onnx")
        rows.append({"target": t, "macs": res.report.macs_after, "onnx": str(onnx_path),
                     "tflite": str(int8(res.graph, onnx_path.stem)),
                     "widths": {k: v[1] for k, v in res.report.widths.items()}})
    for r in rows:
        r["fp32"] = psnr_of(r["onnx"], card, ds, {}, 2)
        r["int8"] = psnr_of(r["tflite"], card, ds, {}, 2)
    times = time_models([r["tflite"] for r in rows], size=tuple(a.size), rounds=a.rounds, threads=a.threads)
    base = rows[0]
    print(f"{'target':>6} {'MACs/px':>8} {'fp32 dB':>8} {'int8 dB':>8} {'fp32 drop':>9} {'int8 drop':>9} "
          f"{'int8 ms':>8} {'speed-up':>8}  widths")
    for r, tm in zip(rows, times):
        r["int8_ms"] = tm * 1000
        r["speedup"] = times[0] / tm
        print(f"{r['target']:6.2f} {r['macs']:8.0f} {r['fp32']:8.3f} {r['int8']:8.3f} {base['fp32'] - r['fp32']:9.3f} "
              f"{base['int8'] - r['int8']:9.3f} {tm * 1000:8.2f} {times[0] / tm:8.2f}  {r['widths'] or ''}")
    if a.out:
        a.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    sys.exit(main())
