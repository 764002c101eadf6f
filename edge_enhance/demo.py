"""`make demo`: enhance the bundled sample photo with the bundled default model.

Writes the enhanced photo and a side-by-side (left: bicubic, right: the model) and prints where.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import EdgeEnhanceError

SAMPLE = Path(__file__).resolve().parent / "samples" / "parrots-256x192.png"


def side_by_side(before: Image.Image, after: Image.Image, label_left: str, label_right: str) -> Image.Image:
    w, h = after.size
    canvas = Image.new("RGB", (2 * w + 8, h + 24), "white")
    canvas.paste(before.resize((w, h), Image.BICUBIC), (0, 24))
    canvas.paste(after, (w + 8, 24))
    draw = ImageDraw.Draw(canvas)
    draw.text((6, 6), label_left, fill="black")
    draw.text((w + 14, 6), label_right, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> int:
    from .enhancer import Enhancer
    import numpy as np

    from .imageio import Photo, load_image, photo_to_pil, save_image

    import argparse

    ap = argparse.ArgumentParser(prog="python -m edge_enhance.demo",
                                 description="Enhance the bundled sample photo with the default bundled model.")
    ap.add_argument("out_dir", nargs="?", type=Path, default=Path("out/demo"),
                    help="folder for the enhanced photo and a side-by-side (default out/demo)")
    out_dir = ap.parse_args(argv).out_dir
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"demo: error: {out_dir}: cannot make the output folder ({e.strerror})", file=sys.stderr)
        return 1
    try:
        enh = Enhancer()
        t0 = time.perf_counter()
        photo = load_image(SAMPLE)
        result = enh.enhance_photo(photo)
        ms = (time.perf_counter() - t0) * 1000
        enhanced = save_image(result, out_dir / f"parrots.{enh.card.name}.png")
        after = photo_to_pil(result)
        sbs = side_by_side(Image.open(SAMPLE).convert("RGB"), after, "bicubic x%d" % enh.scale,
                           f"{enh.card.name} ({enh.backend.name}, {ms:.0f} ms)")
        sbs_path = out_dir / "parrots.side-by-side.png"
        save_image(Photo(np.asarray(sbs)), sbs_path)  # atomic, as every output
    except EdgeEnhanceError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 1
    print(f"model    : {enh.path.name} ({enh.card.task} x{enh.scale}, engine {enh.backend.name})")
    print(f"input    : {SAMPLE} {photo.rgb.shape[1]}x{photo.rgb.shape[0]}")
    print(f"enhanced : {enhanced} {after.size[0]}x{after.size[1]} in {ms:.0f} ms")
    print(f"compare  : {sbs_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
