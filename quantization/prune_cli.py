"""`edge-enhance prune MODEL.onnx --target-macs 0.7`: structured channel pruning, no retraining.

Writes a smaller float ONNX model (quantise it afterwards with `edge-enhance quantize`).
Exit status: 0 written; 1 the --max-drop bar was missed (nothing written unless --force);
2 bad input or options: a ConfigError, or a model or image that cannot be used (``bad_input_exit``,
read by the main CLI).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conversion.footprint import add_card_arguments, card_options
from edge_enhance.argtypes import number
from edge_enhance.card import strict_json
from edge_enhance.models import default_output, source_onnx

from .calibration import CalibConfig, calibration_for
from .errors import ConfigError
from .report import (BAR_EXIT_CODES, Progress, calibration_record, eval_dir, figure_label, human_size, load_model,
                     measure, psnr_drop, publish, temp_beside)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = BAR_EXIT_CODES
    p.set_defaults(bad_input_exit=2)
    p.add_argument("model_path", metavar="MODEL.onnx", help="float ONNX model with an edge-enhance card, or a bundled model's name")
    p.add_argument("--target-macs", type=number(float, 0.05, 1.0), required=True, metavar="F",
                   help="keep this fraction of the conv MACs (e.g. 0.7)")
    p.add_argument("--criterion", choices=("contribution", "l1"), default="contribution",
                   help="channel importance (default contribution: mean |activation| x outgoing |weights|)")
    p.add_argument("--multiple", type=int, default=4, help="prune in steps of this many channels (default 4)")
    p.add_argument("--no-reconstruct", action="store_true", help="skip the least-squares refit of the next layer")
    p.add_argument("--calib", metavar="DIR", help="folder of calibration images, subfolders included: --calib-count "
                                                  "of them drawn with a fixed seed from the whole folder (default: "
                                                  "shared/data/train)")
    p.add_argument("--calib-count", type=int, default=32)
    p.add_argument("--calib-crop", type=int, default=96)
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw (default 0)")
    p.add_argument("--max-drop", type=number(float, lo=0, unit="dB"), default=0.15, metavar="DB",
                   help="largest PSNR drop allowed on the quick set (default 0.15)")
    p.add_argument("--eval", metavar="DIR", help="quick evaluation set (default Set5, CBSD68 for denoise/dejpeg)")
    p.add_argument("--no-eval", action="store_true", help="skip the before / after evaluation (then --max-drop "
                                                          "cannot be checked: the model is written unchecked)")
    p.add_argument("-o", "--output", help="output .onnx (default MODEL.pruned<NN>.onnx beside the model; a "
                                              "bundled model's name: in the current folder)")
    p.add_argument("--force", action="store_true", help="write even when --max-drop is missed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    add_card_arguments(p)


def main(args) -> int:
    from .prune import magnitude_sparsity, prune_graph, write_pruned_onnx

    src = source_onnx(args.model_path)
    pct = int(round(100 * args.target_macs))
    out = Path(args.output) if args.output else default_output(src, f"{src.stem}.pruned{pct}.onnx")
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"{out}: the pruned model is written as .onnx")
    from conversion.cli import check_output

    check_output(out, src)
    say = Progress(args.quiet)
    g, card = load_model(src, card_options(args))
    cfg = CalibConfig(crop=args.calib_crop, count=args.calib_count, seed=args.calib_seed)
    calib = calibration_for(card, args.calib, cfg)
    say(f"calibration: {len(calib)} crops from {calib.source}")
    ds = None if args.no_eval else eval_dir(args.eval, card.task)
    try:
        res = prune_graph(g, calib, args.target_macs, criterion=args.criterion, reconstruct=not args.no_reconstruct,
                          multiple=args.multiple, progress=say)
    except ConfigError as e:
        raise ConfigError(f"{src}: {e}") from None
    tmp = temp_beside(out)
    try:
        pruned = {"pruned": {"target_macs": args.target_macs, "criterion": args.criterion, "from": src.name,
                             "widths": {k: list(v) for k, v in res.report.widths.items()},
                             "calibration": calibration_record(calib, cfg)}}
        write_pruned_onnx(src, res.graph, tmp, card_extra=pruned)
        if ds is not None:
            say(f"evaluating original and pruned on {ds}")
            before, after = measure(src, card, ds), measure(tmp, card, ds)
            drop = psnr_drop(before.psnr, after.psnr)
        if ds is not None and after.psnr == after.psnr:  # the card carries the pruned model's own figure (not NaN)
            write_pruned_onnx(src, res.graph, tmp, card_extra=pruned,
                              psnr={figure_label(card.task, ds, after.images): round(after.psnr, 3)})
        r = res.report
        rep = {"model": str(src), "output": str(out), "target_macs": args.target_macs,
               "macs_per_pixel": {"before": r.macs_before, "after": r.macs_after},
               "params": {"before": r.params_before, "after": r.params_after},
               "widths": {k: list(v) for k, v in r.widths.items()},
               "calibration_psnr": {"before": r.psnr_before, "channels_removed": r.psnr_plain,
                                    "reconstructed": r.psnr_after if r.reconstructed else None},
               "calibration": calibration_record(calib, cfg),
               "eval": None if ds is None else {"dataset": str(ds), "images": after.images, "psnr_before": before.psnr,
                                                "psnr_after": after.psnr, "drop_db": drop},
               "size_bytes": {"before": src.stat().st_size, "after": tmp.stat().st_size},
               "sparsity": [{"level": lv, "dense_bytes": d, "sparse_bytes": s}
                            for lv, d, s in magnitude_sparsity(res.graph)]}
        missed = ds is not None and not drop <= args.max_drop  # a NaN drop (nothing measurable) misses the bar too
        rep["bar"] = {"max_drop": args.max_drop, "met": None if ds is None else not missed}
        if args.json:
            print(strict_json(rep, indent=1))
        else:
            for line in r.lines():
                print(line)
            print(f"size: {human_size(rep['size_bytes']['before'])} -> {human_size(rep['size_bytes']['after'])}")
            print(f"{ds.name}: {before.psnr:.3f} dB -> {after.psnr:.3f} dB, drop {drop:.3f} dB "
                  f"(bar {args.max_drop} dB)" if ds is not None else
                  f"not evaluated (--no-eval): the --max-drop bar ({args.max_drop} dB) was not checked")
            for s in rep["sparsity"]:
                print(f"  magnitude sparsity {100 * s['level']:.0f}% (fp16, bitmask): "
                      f"{human_size(int(s['dense_bytes']))} -> {human_size(int(s['sparse_bytes']))}")
            if rep["sparsity"]:
                print("  (written by `edge-enhance convert MODEL --to coreml --tile HxW --precision sparse50`, "
                      "sparse75 or sparse90)")
        if missed and not args.force:
            print(f"bar missed: drop {drop:.3f} dB > {args.max_drop} dB; nothing written (use --force)",
                  file=sys.stderr)
            return 1
        return publish(tmp, out, args.json)
    finally:
        if tmp.exists():
            tmp.unlink()
