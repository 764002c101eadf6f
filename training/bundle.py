"""Bundle a trained model: calibrated int8 TFLite beside its ONNX in edge_enhance/models, with the
int8 file's own measured PSNR in its card (the float numbers kept as psnr_fp32).

    python -m training.bundle sr-x2 [sr-x2-rt ...]

Uses the quantiser's defaults (percentile ranges unless --method says otherwise, GPTQ rounding,
CLE / bias correction where they help) and the exact evaluation protocol on the issue's datasets.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from edge_enhance.card import CARD_KEY
from edge_enhance.errors import ConfigError, ImageInputError
from edge_enhance.evaluation import bar_plan, shared_data
from edge_enhance.models import MODELS_DIR

from . import run_tool

def bundle(name: str, data: Path, method: str = "percentile", weights: Path | None = None,
           rounding: str = "gptq", out_dir: Path | None = None, flat_frames: bool = True) -> dict:
    """Quantise ``edge_enhance/models/<name>.onnx`` (or ``weights``: a ``training.qat`` fine-tune of
    it, whose int8 file ships beside the untouched fp32 one) and measure the int8 file, written as
    ``out_dir/<name>.int8.tflite`` (default: the bundled one, replaced)."""
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.evaluation import evaluate
    from quantization.calibration import calibration_for
    from quantization.quantize import quantize_model, write_tflite
    from quantization.report import load_model, stamp_card

    src = MODELS_DIR / f"{name}.onnx"
    out = Path(out_dir or MODELS_DIR) / f"{name}.int8.tflite"
    t0 = time.perf_counter()
    g, card = load_model(weights or src)
    fp32, fp32_ssim, base, shipped = None, None, {}, card
    if weights is not None:
        from .qat import BASE_FIELDS

        _, shipped = load_model(src)
        if (card.name, card.task, card.scale) != (shipped.name, shipped.task, shipped.scale) or "qat" not in card.extra:
            raise ConfigError(f"{weights}: not a training.qat fine-tune of {src.name} (its card: {card.name}, "
                              f"{card.task} x{card.scale}{', qat' if 'qat' in card.extra else ', no qat section'})")
        if (card.params, card.receptive_field) != (shipped.params, shipped.receptive_field):
            raise ConfigError(f"{weights}: a fine-tune of another network than {src.name} ({card.params} parameters, "
                              f"receptive field {card.receptive_field}; the shipped one: {shipped.params}, "
                              f"{shipped.receptive_field}): its int8 file would carry the shipped one's record")
        fp32 = shipped.extra.get("psnr")  # the int8 file is compared with the fp32 file that ships
        base = {k: shipped.extra[k] for k in BASE_FIELDS + ("architecture",) if k in shipped.extra}  # how it was trained
        fp32_ssim = shipped.extra.get("ssim")
    for ds in sorted({ds for _, ds, _ in bar_plan(card.task)}):  # before minutes of quantisation
        if not (data / ds).is_dir():
            raise ImageInputError(f"{data / ds}: dataset folder does not exist")
    res = quantize_model(g, calibration_for(card), method=method, rounding=rounding, flat_frames=flat_frames)
    # Measured from a temporary file; the bundled one is replaced only when the new one is complete.
    tmp = out.with_name(f".{out.stem}.partial.tflite")
    try:
        write_tflite(res.graph, tmp)
        psnr, ssim = {}, {}
        base["input_psnr"] = dict(shipped.extra.get("input_psnr") or {})  # enhance-x2's: sr-x2's on its input too
        for label, ds, kw in bar_plan(card.task):  # the card's figures are this file's own, SSIM too
            r = evaluate(Enhancer(tmp).enhance_rgb, data / ds, card.task, scale=card.scale, **kw)
            psnr[label], ssim[label], base["input_psnr"][label] = \
                round(r.psnr, 3), round(r.ssim, 4), round(r.baseline_psnr, 3)
        stamp_card(res.graph, psnr, {"method": method, "rounding": rounding, "cle": res.report.cle,
                                     "act_eq": res.report.act_eq, "bias_correction": res.report.bias_correction,
                                     **({} if flat_frames else {"flat_frames": False}),
                                     "precision": "int8 (per-channel weights, int8 activations)"},
                   fp32=fp32, base=base, ssim=ssim, fp32_ssim=fp32_ssim)
        write_tflite(res.graph, tmp)  # again, now carrying its own measured numbers
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return {"name": name, "file": out.name, "kb": round(out.stat().st_size / 1024, 1), "int8": psnr,
            "fp32": json.loads(res.graph.metadata[CARD_KEY])["extra"].get("psnr_fp32"),
            "seconds": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.bundle",
                                description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("names", nargs="+", help="bundled models (edge_enhance/models/NAME.onnx)")
    p.add_argument("--method", default="percentile", choices=("percentile", "minmax", "mse"),
                   help="activation ranges (default percentile; the one a model's card names is what it was bundled with)")
    p.add_argument("--weights", type=Path, help="quantise this training.qat output of the model instead of "
                                                "its .onnx (one name only); the .onnx stays as it is")
    p.add_argument("--rounding", choices=("gptq", "nearest"), default="gptq",
                   help="weight rounding (default gptq; nearest for a QAT fine-tune, whose weights fit that grid)")
    p.add_argument("--no-flat-frames", action="store_true",
                   help="ranges of the calibration crops only, not covering flat frames' edges (the bundled "
                        "denoise, whose edge responses run 1.3-2.3x past its photo ranges)")
    p.add_argument("--data", type=Path, help="the shared data folder, as training.train's --data (default "
                                             "../shared/data), or its eval/ folder")
    p.add_argument("--out", type=Path, default=MODELS_DIR,
                   help="folder for NAME.int8.tflite (default edge_enhance/models: the bundled file is replaced; "
                        "give another to compare a method without touching it)")
    args = p.parse_args(argv)
    if args.weights is not None and len(args.names) != 1:
        p.error("--weights goes with one model name")
    unknown = [n for n in args.names if not (MODELS_DIR / f"{n}.onnx").is_file()]
    if unknown:  # all names checked before the first bundled file is replaced
        known = sorted(q.name[:-5] for q in MODELS_DIR.glob("*.onnx"))
        p.error(f"no bundled {', '.join(unknown)}.onnx (bundled: {', '.join(known)})")
    if not args.out.is_dir():
        p.error(f"--out {args.out}: not a folder")
    data = args.data or shared_data()
    if data is None:
        p.error("no shared/data found: give --data DIR or set EDGE_ENHANCE_DATA")
    data = data / "eval" if (data / "eval").is_dir() else data
    for name in args.names:
        print(json.dumps(bundle(name, data, args.method, args.weights, args.rounding, args.out,
                                not args.no_flat_frames)), flush=True)
    return 0


if __name__ == "__main__":
    run_tool("bundle", main)
