"""`edge-enhance eval MODEL --dataset DIR`: the protocol of ../shared/data/README.md, for any format."""
from __future__ import annotations

import argparse
import logging
import math
import sys
import time

from .argtypes import number
from .card import TASKS
from .cli import Progress, _cells, add_model_arguments, build_enhancer, ljust_cells, strict_json
from .errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_arg", metavar="MODEL", help="bundled model name or model file")
    p.add_argument("--dataset", required=True, help="folder of reference images (e.g. ../shared/data/eval/Set5)")
    p.add_argument("--task", dest="eval_task", choices=TASKS,
                   help="protocol to apply (default: the model card's task)")
    # older spellings, left out of the help: enhance's --mode picks models, not a protocol
    p.add_argument("--eval-task", "--mode", dest="eval_task", choices=TASKS,
                   help=argparse.SUPPRESS)
    p.add_argument("--sigma", type=number(float, 0, 255), help="denoise: noise level on the 0..255 scale (default 25)")
    p.add_argument("--quality", type=number(int, 1, 100), help="dejpeg: JPEG quality of the input (default 30)")
    p.add_argument("--tile", default="auto", help="auto (from --memory), N or HxW input pixels per tile; the "
                                                  "scores do not depend on it (tiling is exact)")
    p.add_argument("--memory", type=float, default=256.0, help="MB the engine may use for a tile (default 256)")
    p.add_argument("--tta", action="store_true",
                   help="self-ensemble over the 8 rotations / mirror images (8-9x the time)")
    p.add_argument("--no-ssim", action="store_true", help="PSNR only (faster)")
    p.add_argument("--json", action="store_true", help="print the per-image and mean table as JSON")
    add_model_arguments(p, option=False)


def main(args) -> int:
    from .evaluation import DEFAULT_QUALITY, DEFAULT_SIGMA, evaluate, list_images
    from .tiling import TilingConfig, parse_tile

    args.model = args.model_arg
    enh = build_enhancer(args, tiling=TilingConfig(tile=parse_tile(args.tile), memory_mb=args.memory))
    task = args.eval_task or enh.card.task
    if task != enh.card.task and {task, enh.card.task} != {"sr", "enhance"}:  # sr-x2 on the real-world protocol: fine
        log.warning("%s: its card says %s, and it is judged under the %s protocol as --task asks", enh.path.name,
                    enh.card.task, task)
    for name, value, used_by in (("sigma", args.sigma, "denoise"), ("quality", args.quality, "dejpeg")):
        if value is not None and task != used_by:
            log.warning("--%s applies to the %s protocol; the %s protocol does not use it", name, used_by, task)
    sigma = DEFAULT_SIGMA if args.sigma is None else args.sigma
    quality = DEFAULT_QUALITY if args.quality is None else args.quality
    if (task in ("sr", "enhance")) != (enh.scale > 1):
        need = "an upscaling model" if task in ("sr", "enhance") else "a scale-1 model (same size out)"
        raise ConfigError(f"{enh.path.name}: the {task} protocol needs {need}; this model's scale is {enh.scale}")
    t0 = time.perf_counter()
    bar = Progress(len(list_images(args.dataset)), enabled=not args.json)  # one line on a terminal's stderr
    try:
        res = evaluate(lambda x: enh.enhance_rgb(x, progress=bar.tiles), args.dataset, task, scale=enh.scale,
                       sigma=sigma, quality=quality, with_ssim=not args.no_ssim,
                       on_image=lambda i, n, name: bar.file(i, name))
    finally:
        bar.clear()
    seconds = time.perf_counter() - t0
    setting = {"sr": f"x{enh.scale}", "enhance": f"x{enh.scale}", "denoise": f"sigma {sigma:g}",
               "dejpeg": f"quality {quality}"}[task]
    if args.json:
        print(strict_json({"model": str(enh.path), "engine": enh.backend.name, "dataset": args.dataset, "task": task,
                          "setting": setting, "tta": enh.tta, "psnr": res.psnr, "ssim": res.ssim,
                          "baseline_psnr": res.baseline_psnr,
                          "seconds": round(seconds, 2), "images": res.rows}, indent=1))
        return 0
    print(f"{enh.path.name} ({enh.backend.name}{', tta' if enh.tta else ''}) on {args.dataset}, {task} {setting}")
    w = max([24] + [_cells(r["name"]) for r in res.rows])  # columns line up under wide (CJK) and long names
    print(f"{ljust_cells('image', w)} {'PSNR':>8} {'SSIM':>7} {'input':>8}")
    for r in res.rows:
        print(f"{ljust_cells(r['name'], w)} {r['psnr']:8.3f} {_ssim(r['ssim'])} {r['baseline_psnr']:8.3f}")
    print(f"{ljust_cells('mean', w)} {res.psnr:8.3f} {_ssim(res.ssim)} {res.baseline_psnr:8.3f}   ({seconds:.1f} s)")
    sys.stdout.flush()
    return 0


def _ssim(v: float) -> str:
    return f"{v:7.4f}" if math.isfinite(v) else f"{'-':>7}"  # not measured (--no-ssim)
