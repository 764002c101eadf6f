"""Transparent edges: what shows of a cut-out after upscaling, three ways, one process.

    python -m benchmarks.alpha_edges [--model sr-x2] [--set Set14] [--images 8]

Each HR image is bicubic-downscaled (the protocol's LR) and cut out as an antialiased disc (alpha 0
outside, the colour there black); the visible result, composited over white, is compared with the HR
image composited the same way (PSNR over the pixels whose output alpha is above 0). Rows: the runtime
(hidden colour filled from the edge), the colour premultiplied by alpha and divided back (what it did
before), and the opaque image (the upper bound: nothing hidden).
"""
from __future__ import annotations

import argparse

import numpy as np

from edge_enhance import imageio
from edge_enhance.enhancer import Enhancer
from edge_enhance.evaluation import bicubic_resize, list_images, load_rgb, mod_crop, psnr, shared_data


def _disc(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    d = np.hypot(yy - h / 2, xx - w / 2) - min(h, w) * 0.35
    return np.clip(np.rint(255 * (0.5 - d)), 0, 255).astype(np.uint8)


def _premultiplied(enh: Enhancer, rgb: np.ndarray, alpha: np.ndarray, up_alpha: np.ndarray) -> np.ndarray:
    pre = np.rint(rgb * (alpha[..., None] / 255.0)).astype(np.uint8)
    res = enh.enhance_rgb(pre).astype(np.float64)
    a = up_alpha[..., None] / 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.clip(np.rint(np.where(a > 0, res / a, 0)), 0, 255)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.alpha_edges", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="sr-x2")
    ap.add_argument("--set", default="Set14", help="eval set under the shared data (default Set14)")
    ap.add_argument("--images", type=int, default=8)
    a = ap.parse_args(argv)
    data = shared_data("eval")
    if data is None or not (data / a.set).is_dir():
        ap.error(f"no shared data eval/{a.set}: set EDGE_ENHANCE_DATA")
    enh = Enhancer(a.model, threads=2)
    s = enh.scale
    rows: dict[str, list] = {"runtime (edge fill)": [], "premultiplied": [], "opaque": []}
    for p in list_images(data / a.set)[:a.images]:
        hr = mod_crop(load_rgb(p), s)
        lr = bicubic_resize(hr, (hr.shape[1] // s, hr.shape[0] // s))
        alpha = _disc(*lr.shape[:2])
        cut = lr.copy()
        cut[alpha == 0] = 0
        out = enh.enhance_photo(imageio.Photo(cut, alpha))
        a_up = out.alpha.astype(np.float64)[..., None] / 255
        shows = out.alpha > 0

        def over_white(x):
            return (x * a_up + 255 * (1 - a_up))[shows]

        ref = over_white(hr)
        rows["runtime (edge fill)"].append(psnr(ref, over_white(out.rgb)))
        rows["premultiplied"].append(psnr(ref, over_white(_premultiplied(enh, cut, alpha, out.alpha))))
        rows["opaque"].append(psnr(ref, over_white(enh.enhance_rgb(lr))))
    print(f"{a.model} on {a.set} ({len(rows['opaque'])} images), PSNR over white where alpha > 0:")
    for k, v in rows.items():
        print(f"  {k:<22} {np.mean(v):.3f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
