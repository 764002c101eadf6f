"""`--mode auto` on damaged photos as they come, against auto without its luma pass and pixel JPEG reading.

    python -m benchmarks.auto_inputs [--sets Kodak24,CBSD68] [--images 12] [--only noise,jpeg,chroma,resaved]
                                     [--scale 1]

Cases, each on the first ``--images`` images of every set (seeded by the image's index):
- noise: clean; noise drawn apart in R, G and B (the protocol's); luma noise, the same in all three (film grain, a
  camera's); and the two added together;
- jpeg: PNG copies (no tables to read) of Pillow 4:2:0 JPEGs at qualities 30 to 85;
- chroma: PNG copies of 4:2:0 and 4:4:4 JPEGs at qualities 80 to 90, where the chroma layout read from the
  pixels decides: "before" is auto with the quality read but not the layout (held to quality 75, as for 4:4:4);
- resaved: JPEG files of quality 95 (4:2:0) whose pixels were a harsher 4:2:0 JPEG's, as an editor or a messaging
  app saves a JPEG again.
Columns: the input's PSNR against the clean image, auto without the luma pass and without reading a JPEG's
quality from pixels (what auto did before them), and auto; the worst image's change from before to auto; on how
many images auto ran the luma pass, and dejpeg before / now.
"""
from __future__ import annotations

import argparse
import contextlib
import io

import numpy as np
from PIL import Image

from edge_enhance import imageio, pipeline
from edge_enhance.evaluation import jpeg, list_images, load_rgb, psnr, shared_data

NOISE = {"clean": (0, 0), "per channel 15": (0, 15), "per channel 25": (0, 25), "luma 5": (5, 0), "luma 8": (8, 0),
         "luma 10": (10, 0), "luma 15": (15, 0), "luma 25": (25, 0), "luma 10 + per channel 5": (10, 5),
         "luma 20 + per channel 10": (20, 10), "luma 10 + per channel 25": (10, 25)}
JPEG_QUALITIES = (30, 40, 50, 60, 75, 85)
CHROMA_CASES = tuple((q, layout) for layout in ("4:2:0", "4:4:4") for q in (80, 85, 90))
RESAVED_QUALITIES = (40, 50, 60, 75, 85)


def resaved(clean: np.ndarray, quality: int) -> imageio.Photo:
    """A quality-95 JPEG file (as load_image reads it: its tables too) of a JPEG of ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(jpeg(clean, quality)).save(buf, "JPEG", quality=95)
    return imageio.photo_from_pil(Image.open(buf))


def noisy(clean: np.ndarray, luma: float, apart: float, index: int) -> np.ndarray:
    rng = np.random.default_rng(index)
    x = clean.astype(np.float64) + rng.normal(0, luma, clean.shape[:2] + (1,)) + rng.normal(0, apart, clean.shape)
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@contextlib.contextmanager
def without_new_readings(only_chroma: bool = False):
    """Auto as it was before its luma pass and its JPEG quality read from pixels; ``only_chroma``: before it read
    the chroma layout (4:4:4 or subsampled) of those pixels."""
    saved = pipeline.LUMA_NOISE_THRESHOLD, pipeline.jpeg_from_pixels, pipeline._chroma_layout
    if only_chroma:
        pipeline._chroma_layout = lambda *a, **k: None
    else:
        pipeline.LUMA_NOISE_THRESHOLD, pipeline.jpeg_from_pixels = float("inf"), lambda *a, **k: (None, None)
    try:
        yield
    finally:
        pipeline.LUMA_NOISE_THRESHOLD, pipeline.jpeg_from_pixels, pipeline._chroma_layout = saved


def run_case(pipe: pipeline.Pipeline, pairs, only_chroma: bool = False) -> dict:
    """pairs: (clean, damaged) images. PSNR means (inf where every image is untouched and clean), worst change."""
    rows = {"input": [], "before": [], "auto": [], "luma pass": 0, "dejpeg before": 0, "dejpeg": 0}
    for clean, x in pairs:
        photo = x if isinstance(x, imageio.Photo) else imageio.Photo(x)
        x = photo.rgb
        with without_new_readings(only_chroma):
            before = pipe.enhance_photo(photo).rgb
        rows["dejpeg before"] += "dejpeg" in pipe.last_stages
        after = pipe.enhance_photo(photo).rgb
        rows["luma pass"] += pipeline.LUMA_STAGE in pipe.last_stages
        rows["dejpeg"] += "dejpeg" in pipe.last_stages
        if after.shape != clean.shape:  # --scale 2: judged downscaled to the clean image's size, as back-projection is
            after, before = (np.asarray(Image.fromarray(a).resize(clean.shape[1::-1], Image.BICUBIC))
                             for a in (after, before))
        for k, v in (("input", x), ("before", before), ("auto", after)):
            rows[k].append(psnr(clean, v))
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.auto_inputs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", default="Kodak24,CBSD68", help="comma list of eval sets (default Kodak24,CBSD68)")
    ap.add_argument("--images", type=int, default=12, help="first images of each set (default 12)")
    ap.add_argument("--only", default="noise,jpeg,chroma,resaved",
                    help="comma list of noise, jpeg, chroma, resaved (default all)")
    ap.add_argument("--scale", type=int, default=1, choices=(1, 2), help="auto's scale (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    data = shared_data("eval")
    sets = [s for s in a.sets.split(",") if s]
    if data is None or any(not (data / s).is_dir() for s in sets):
        ap.error(f"no shared data eval/ with {', '.join(sets)}: set EDGE_ENHANCE_DATA")
    cleans = [load_rgb(p) for s in sets for p in list_images(data / s)[:a.images]]
    pipe = pipeline.Pipeline("auto", a.scale, threads=a.threads)
    cases = {}  # name -> (pairs, whether "before" is auto without only the chroma layout reading)
    if "noise" in a.only:
        cases.update({f"noise {k}": ([(c, noisy(c, lu, ap_, i)) for i, c in enumerate(cleans)], False)
                      for k, (lu, ap_) in NOISE.items()})
    if "jpeg" in a.only:
        cases.update({f"PNG of JPEG q{q}": ([(c, jpeg(c, q)) for c in cleans], False) for q in JPEG_QUALITIES})
    if "chroma" in a.only:
        cases.update({f"PNG of JPEG q{q} {layout}": ([(c, jpeg(c, q, subsampling=layout)) for c in cleans], True)
                      for q, layout in CHROMA_CASES})
    if "resaved" in a.only:
        cases.update({f"JPEG q{q} saved again at q95": ([(c, resaved(c, q)) for c in cleans], False)
                      for q in RESAVED_QUALITIES})
    print(f"--mode auto --scale {a.scale}, {len(cleans)} images ({', '.join(sets)}, first {a.images} each), "
          f"PSNR against the clean image (dB)")
    print(f"{'case':<34} {'input':>7} {'before':>7} {'auto':>7} {'worst':>6} {'luma':>5} {'dejpeg before/now':>17}")
    for name, (pairs, only_chroma) in cases.items():
        r = run_case(pipe, pairs, only_chroma)
        with np.errstate(invalid="ignore"):
            worst = float(np.nan_to_num(np.min(np.subtract(r["auto"], r["before"]))))  # inf - inf: left clean
        print(f"{name:<34} {np.mean(r['input']):7.3f} {np.mean(r['before']):7.3f} {np.mean(r['auto']):7.3f} "
              f"{worst:+6.2f} {r['luma pass']:>5} {r['dejpeg before']:>8} / {r['dejpeg']:<6}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
