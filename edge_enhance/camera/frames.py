"""Small frame operations the loop needs: resize, compose before/after, overlay, JPEG, atomic PNG.

OpenCV is used when installed (fast, in C); Pillow, a core dependency, is the fallback so the
synthetic source + web viewfinder work with numpy and Pillow alone.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_file
from .errors import OutputError
from .detect import optional_cv2


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear (area when shrinking) resize of an HxWx3 uint8 frame to (height, width)."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    cv2 = optional_cv2()
    if cv2 is not None:
        interp = cv2.INTER_AREA if width < w and height < h else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=interp)
    resample = Image.BOX if width < w and height < h else Image.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(frame)).resize((width, height), resample))


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """The plain 'before' picture at output size: what enhancement is compared against."""
    h, w = frame.shape[:2]
    return resize(frame, w * scale, h * scale)


def compose(before: np.ndarray, after: np.ndarray, *, split: bool) -> np.ndarray:
    """A new frame (never a view of its inputs): left half plain upscale, right half enhanced."""
    if not split:
        return after.copy()
    h, w = after.shape[:2]
    out = after.copy()
    half = w // 2
    out[:, :half] = resize(before, w, h)[:, :half]
    out[:, max(half - 1, 0):half + 1] = (255, 255, 255)  # divider so the boundary is visible
    return out


def draw_overlay(frame: np.ndarray, lines: list[str]) -> np.ndarray:
    """Draw text lines top-left, in place (callers pass a frame they own), and return it."""
    cv2 = optional_cv2()
    if cv2 is not None and frame.flags.writeable and frame.flags.c_contiguous:
        y = 18
        for line in lines:
            cv2.putText(frame, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
            cv2.putText(frame, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
            y += 18
        return frame
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((8, 6 + 14 * i), line, fill=(255, 255, 255), stroke_width=2, stroke_fill=(0, 0, 0))
    frame[...] = np.asarray(img)
    return frame


def encode_jpeg(frame: np.ndarray, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def save_png_atomic(frame: np.ndarray, path: str) -> str:
    """Write a PNG next to its destination under a temp name, then rename: readers never see half a file."""
    try:
        with atomic_file(path) as f:
            Image.fromarray(np.ascontiguousarray(frame)).save(f, "PNG")
    except OSError as e:
        raise OutputError(f"{path}: cannot write snapshot ({e})") from None
    return path
