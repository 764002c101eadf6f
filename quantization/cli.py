"""`edge-enhance quantize MODEL.onnx --calib DIR`: full-integer int8 (or 16x8) TFLite with a quality report.

``--precision int16x8`` quantises every layer TFLite runs as 16x8 (Conv, ConvTranspose, Add, Mul:
int16 activations, int8 weights, int64 bias); the rest (Concat, DepthToSpace, Resize, Clip, ...)
stays int8 behind QUANTIZE boundaries, and the summary lists both.

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
from edge_enhance.tiling import check_aligned

from .calibration import METHODS, CalibConfig, calibration_for
from .errors import ConfigError
from .report import (BAR_EXIT_CODES, Progress, calibration_record, eval_dir, figure_label, human_size, load_model,
                     measure, psnr_drop, publish, stamp_card, temp_beside)


PRECISIONS = ("int8", "int16x8")
MAX_RETRIES = 3  # quantisations again after a measured --max-drop miss (each with a tighter simulated bar)

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = BAR_EXIT_CODES
    p.set_defaults(bad_input_exit=2)
    p.add_argument("model_path", metavar="MODEL.onnx", help="float ONNX model with an edge-enhance card, or a bundled model's name")
    p.add_argument("--calib", metavar="DIR", help="folder of calibration images, subfolders included: --calib-count "
                                                  "of them drawn with a fixed seed from the whole folder, only those "
                                                  "decoded (default: the same draw from shared/data/train)")
    p.add_argument("--precision", choices=PRECISIONS, default="int8",
                   help="int8 (default) or int16x8: 16-bit activations / 8-bit weights in every layer that "
                        "has 16x8 kernels (larger, slower, closer to float)")
    p.add_argument("--calib-count", type=int, default=32, help="calibration crops (default 32)")
    p.add_argument("--calib-crop", type=int, default=96, help="side of a clean calibration crop (default 96)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration draw: which images, where "
                                                             "the crops are (default 0)")
    p.add_argument("--method", choices=METHODS, default="percentile",
                   help="activation range observer (default percentile: measured best on our models)")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="weight rounding (default gptq: error-compensating)")
    p.add_argument("--cle", choices=("auto", "on", "off"), default="auto",
                   help="cross-layer equalisation (auto, the default: tried both ways, kept where it gains 0.002 dB "
                        "or more on the calibration crops, int8 simulated; likewise --act-eq and --bias-correction)")
    p.add_argument("--act-eq", choices=("auto", "on", "off"), default="auto",
                   help="activation equalisation: rescale channels so each uses more of its tensor's int8 range")
    p.add_argument("--bias-correction", choices=("auto", "on", "off"), default="auto",
                   help="correct each layer's mean output shift from weight rounding (with --rounding nearest; "
                        "GPTQ rounding already takes it away, and the correction after it added error)")
    p.add_argument("--no-flat-frames", action="store_true",
                   help="ranges of the calibration crops only: not covering what flat frames (white, black, saturated "
                        "colours) give at the image's edge, which an int8 model otherwise clips there (darker edges "
                        "on a white page); for a model whose edge responses run far past its photo ranges")
    p.add_argument("--max-drop", type=number(float, lo=0, unit="dB"), metavar="DB",
                   help="largest PSNR drop allowed: layers go to 16x8, most sensitive first, until the drop "
                        "simulated on the calibration crops is within it; then the drop measured on the quick set "
                        "(--eval) must be too, or nothing is written (unless --force)")
    p.add_argument("--io", choices=("float", "int8", "uint8"), default="float", help="model input / output type")
    p.add_argument("--tile", metavar="HxW", help="fixed input size, e.g. 256x256 (default: dynamic)")
    p.add_argument("--d2s-as-transpose-conv", action="store_true",
                   help="DEPTH_TO_SPACE as an exact TRANSPOSE_CONV (for delegates lacking it)")
    p.add_argument("--eval", metavar="DIR", help="quick evaluation set (default Set5, CBSD68 for denoise/dejpeg)")
    p.add_argument("--no-eval", action="store_true", help="skip the before / after evaluation")
    p.add_argument("-o", "--output", help="output .tflite (default MODEL.PRECISION.tflite beside the model: "
                                              "MODEL.int8.tflite, MODEL.int16x8.tflite; a bundled model's name: in "
                                              "the current folder)")
    p.add_argument("--force", action="store_true", help="write even when --max-drop is missed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress messages")
    add_card_arguments(p)


def _flag(v: str):
    return {"auto": "auto", "on": True, "off": False}[v]


def main(args) -> int:
    from conversion.cli import calib_crop_for, check_d2s_tile, check_output, fixed_input, parse_tile

    from .quantize import INT16_OPS, precision_split, quantize_model, write_tflite

    src = source_onnx(args.model_path)
    out = Path(args.output) if args.output else default_output(src, f"{src.stem}.{args.precision}.tflite")
    if out.suffix.lower() != ".tflite":
        raise ConfigError(f"{out}: the quantised model is written as .tflite")
    check_output(out, src)
    if args.precision == "int16x8" and args.io != "float":
        raise ConfigError(f"--precision int16x8 models have float I/O (got --io {args.io})")
    if args.max_drop is not None and args.io != "float":
        raise ConfigError(f"--max-drop moves layers to 16x8, and a model with 16x8 layers has float I/O (got --io "
                          f"{args.io}): use --io float with --max-drop, or leave --max-drop out")
    tile = parse_tile(args.tile) if args.tile else None
    say = Progress(args.quiet)
    g, card = load_model(src, card_options(args), tile)
    fixed = fixed_input(g, src, tile, [])  # a model fixed at one size takes no other --tile
    check_d2s_tile(g, args.d2s_as_transpose_conv, tile or fixed, src)
    check_aligned([tile] if tile else [], card.align, f"{src}: --tile")
    say(f"loaded {src.name}: {card.task} x{card.scale}")
    crop = calib_crop_for(g, card.scale, args.calib_crop)
    cfg = CalibConfig(crop=crop, count=args.calib_count, seed=args.calib_seed)
    calib = calibration_for(card, args.calib, cfg)
    say(f"calibration: {len(calib)} crops from {calib.source}")
    ds = None if args.no_eval else eval_dir(args.eval, card.task)
    keep = frozenset(n.name for n in g.nodes if n.op in INT16_OPS) if args.precision == "int16x8" else frozenset()
    sim_bar, before, drop = args.max_drop, None, None
    tmp = temp_beside(out)
    try:
        # --max-drop moves layers to 16x8 until the drop simulated on the calibration set fits; where the
        # drop measured on the eval set still misses, the simulated bar is tightened by the ratio of the
        # two and the model quantised again (at most MAX_RETRIES times).
        for attempt in range(MAX_RETRIES + 1):
            res = quantize_model(g, calib, method=args.method, io=args.io, cle=_flag(args.cle),
                                 act_eq=_flag(args.act_eq), bias_correction=_flag(args.bias_correction),
                                 rounding=args.rounding, max_drop=sim_bar, keep_16x8=keep, progress=say,
                                 flat_frames=not args.no_flat_frames)
            write_tflite(res.graph, tmp, tile=tile, d2s_as_transpose_conv=args.d2s_as_transpose_conv)
            if ds is None:
                break
            say(f"evaluating fp32 ONNX and {args.precision} TFLite (LiteRT) on {ds}")
            before = before or measure(src, card, ds)
            after = measure(tmp, card, ds)
            drop, sim = psnr_drop(before.psnr, after.psnr), res.report.float_psnr - res.report.quant_psnr
            if args.max_drop is None or not drop > args.max_drop or attempt == MAX_RETRIES \
                    or all(r.precision == "16x8" for r in res.report.layers):
                break
            tighter = max(0.0, sim) * args.max_drop / drop
            if not tighter < sim_bar:  # the simulated bar cannot move: another pass would be the same
                break
            sim_bar = tighter
            say(f"measured drop {drop:.3f} dB > --max-drop {args.max_drop}: simulated {sim:.3f} dB, so again "
                f"with a simulated bar of {sim_bar:.3f} dB")
        # The file's card carries its own figures: the source's (with this run's fp32 one) move to psnr_fp32.
        # Keyed as the protocol set's figure only when measured on that whole set (2 of Set5's 5 are not Set5).
        label = figure_label(card.task, ds, before.images) if ds is not None else None
        fp32 = {**(card.extra.get("psnr") or {}), label: round(before.psnr, 3)} if ds is not None else None
        stamp_card(res.graph, {label: round(after.psnr, 3)} if ds is not None else None,
                   {"precision": args.precision, "method": args.method, "rounding": args.rounding,
                    "cle": res.report.cle, "act_eq": res.report.act_eq, "bias_correction": res.report.bias_correction,
                    **({"flat_frames": False} if args.no_flat_frames else {}),
                    "calibration": calibration_record(calib, cfg),
                    "activations_16x8": sorted(r.name for r in res.report.layers if r.precision == "16x8")},
                   fp32=fp32)
        write_tflite(res.graph, tmp, tile=tile, d2s_as_transpose_conv=args.d2s_as_transpose_conv)
        rep = {"model": str(src), "output": str(out), "precision": args.precision, "method": args.method,
               "rounding": args.rounding, "cle": res.report.cle, "act_eq": res.report.act_eq,
               "bias_correction": res.report.bias_correction, "io": args.io,
               "calibration": {**calibration_record(calib, cfg), "float_psnr": res.report.float_psnr,
                               "quant_psnr": res.report.quant_psnr},
               "variants": res.report.variants,
               "tried_16x8": [{"layers": names, "drop_db": d} for names, d in res.report.tried_16x8],
               "layers": [{"name": r.name, "precision": r.precision, "sqnr_db": r.sqnr_db, "alone_drop_db": r.drop_db}
                          for r in res.report.layers],
               "size_bytes": {"onnx": src.stat().st_size, "tflite": tmp.stat().st_size},
               "macs_per_pixel": card.macs_per_pixel}
        from conversion.cli import tflite_notes

        rep["io_tensors"] = tflite_notes(tmp, out)  # what an app feeds and reads, warned where not pixels
        split = precision_split(res.graph)
        if args.precision == "int16x8" or split["int16"]:  # --max-drop may have moved int8 layers to 16x8
            rep["activations"] = split
        if ds is not None:
            rep["eval"] = {"dataset": str(ds), "images": before.images, "label": label, "fp32_psnr": before.psnr,
                           f"{args.precision}_psnr": after.psnr, "drop_db": drop}
        missed = args.max_drop is not None and drop is not None and not drop <= args.max_drop  # NaN misses
        rep["bar"] = {"max_drop": args.max_drop, "met": not missed}
        if args.json:
            print(strict_json(rep, indent=1))
        else:
            _print(rep, res.report)
        if missed and not args.force:
            print(f"bar missed: drop {drop:.3f} dB > --max-drop {args.max_drop} dB; nothing written "
                  "(use --force to write anyway)", file=sys.stderr)
            return 1
        return publish(tmp, out, args.json)
    finally:
        if tmp.exists():
            tmp.unlink()


def _print(rep: dict, report) -> None:
    for line in report.lines():
        print(line)
    s, prec = rep["size_bytes"], rep["precision"]
    if "activations" in rep:
        a = rep["activations"]
        counts = lambda d: ", ".join(f"{op} x{k}" for op, k in sorted(d.items())) or "none"
        print(f"16x8 (int16 activations, int8 weights): {counts(a['int16'])}")
        print(f"int8: {counts(a['int8'])} (16x8 covers Conv, ConvTranspose, Add, Mul; LiteRT has no int16 "
              f"DEPTH_TO_SPACE or RELU_0_TO_1); {a['boundaries']} int8 <-> int16 boundaries (a QUANTIZE each)")
    for line in rep.get("io_tensors") or ():
        print(line)
    mixed = prec == "int8" and "activations" in rep
    print(f"size: ONNX {human_size(s['onnx'])} -> {'int8 + 16x8' if mixed else prec} TFLite {human_size(s['tflite'])}"
          + (f"; MACs per input pixel {rep['macs_per_pixel']}" if rep["macs_per_pixel"] else ""))
    if "eval" in rep:
        e = rep["eval"]
        print(f"{Path(e['dataset']).name}: fp32 {e['fp32_psnr']:.3f} dB, {prec} {e[prec + '_psnr']:.3f} dB, "
              f"drop {e['drop_db']:.3f} dB")
