"""Full-range BT.601 YCbCr (JPEG's; Pillow's "YCbCr", OpenCV's YCrCb) for luma models.

A luma model (card ``colour: "y"``, one input channel, as ESPCN, FSRCNN and the ONNX model zoo's
super-resolution-10) sees only Y; its chroma is upscaled bicubic, as the Pillow / OpenCV pipelines
those models come with do. Values are on the image's own scale, 0..maxval; chroma is centred on
(maxval + 1) / 2 (128 for 8-bit).

>>> ycc = rgb_to_ycbcr(np.array([[[255, 0, 0]]], np.uint8), 255)
>>> [round(float(v), 3) for v in ycc[0, 0]]
[76.245, 84.972, 255.5]
>>> [round(float(v), 3) + 0 for v in to_rgb(ycc[..., 0], ycc[..., 1], ycc[..., 2], 255)[0, 0]]
[255.0, 0.0, 0.0]
"""
from __future__ import annotations

import numpy as np

TO_YCC = np.array([[0.299, 0.587, 0.114],
                   [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]], np.float32)  # rows: Y, Cb, Cr (chroma uncentred)


def rgb_to_ycbcr(rgb: np.ndarray, maxval: float) -> np.ndarray:
    """H x W x 3 (any dtype) -> float32 H x W x 3: Y, Cb, Cr."""
    ycc = rgb.astype(np.float32) @ TO_YCC.T
    ycc[..., 1:] += np.float32((maxval + 1) / 2)
    return ycc


def to_rgb(y: np.ndarray, cb: np.ndarray, cr: np.ndarray, maxval: float) -> np.ndarray:
    """Planes (H x W each, float) -> float32 H x W x 3 RGB, unclipped."""
    c = np.float32((maxval + 1) / 2)
    cb = cb.astype(np.float32) - c
    cr = cr.astype(np.float32) - c
    y = y.astype(np.float32, copy=False)
    return np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1)


def upscale_plane(plane: np.ndarray, s: int, dtype) -> np.ndarray:
    """One float plane resized s times each way with Pillow's bicubic, rounded into ``dtype`` (8-bit
    planes are rounded first and resized as 8-bit, as Pillow pipelines do: a third of the time)."""
    from PIL import Image

    maxv = np.iinfo(dtype).max
    if dtype == np.uint8:
        plane = np.clip(np.rint(plane), 0, maxv).astype(np.uint8)
        if s == 1:
            return plane
        return np.asarray(Image.fromarray(plane, "L").resize((plane.shape[1] * s, plane.shape[0] * s), Image.BICUBIC))
    if s != 1:
        h, w = plane.shape
        plane = np.asarray(Image.fromarray(np.ascontiguousarray(plane, np.float32), "F").resize((w * s, h * s),
                                                                                               Image.BICUBIC))
    return np.clip(np.rint(plane), 0, maxv).astype(dtype)
