"""Stages chained (cleanup first, then upscale), the estimators behind `--mode auto`, and the
back-projection quality check.

Estimators (documented so their numbers can be checked):
- noise: Immerkaer (1996), "Fast noise variance estimation": sigma = sqrt(pi/2) / (6 (W-2)(H-2)) *
  sum |I * N| with N = [[1,-2,1],[-2,4,-2],[1,-2,1]], per colour channel, read in the smoothest 5% of
  the 8x8 blocks (those with a clipped pixel left out) so texture is not mistaken for noise.
- luma noise (the same in R, G and B), read after denoise: the same reading in BT.601 Y, Cb and Cr; noise
  drawn apart per channel (sigma s) passes 0.669 s into Y, 0.623 s into Cb, 0.657 s into Cr, noise shared
  by R, G and B into Y alone, so the shared sigma is sqrt(Y^2 - (0.669 s)^2), s from Cb and Cr.
- JPEG: for a JPEG file, the IJG quality that reproduces its luminance quantisation table; for
  decoded pixels, the IJG quality whose table matches the steps that the low-frequency luma DCT coefficients
  of the 8x8 blocks sit on (quantisation steps survive decoding, Fan and de Queiroz 2003), and
  blockiness = mean |step| across 8-pixel block borders / mean |step| inside blocks.
"""
from __future__ import annotations

import functools
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image

from . import imageio, ycbcr
from .enhancer import Enhancer, _Processor
from .errors import ConfigError, EdgeEnhanceError

log = logging.getLogger(__name__)

MODES = ("upscale", "denoise", "dejpeg", "photo", "auto")
DEJPEG_MAX_QUALITY = 90  # dejpeg's training range is quality 10..90
# Without chroma subsampling (4:4:4, as editors and some cameras write) a JPEG keeps much more: dejpeg's gain on
# clean 4:4:4 JPEGs (int8, crops up to 320 px) at quality 75 / 80 / 85 / 90 was +0.75 / +0.56 / +0.25 / -0.41 dB
# on Kodak24 and +0.14 / -0.13 / -0.52 / -1.20 on McMaster (4:2:0 at 85 / 90: +0.58 / +0.16 there).
DEJPEG_MAX_QUALITY_444 = 75
NOISE_THRESHOLD = 6.0  # sigma (0..255) above which auto mode denoises
# A grey image is denoised through its copies one pixel apart in R, G and B (Enhancer._denoise_grey), which
# softens it a little: 8 Kodak24 images in grey, int8, sigma 7 / 8 / 10 / 25: 31.25 -> 30.47, 30.10 -> 30.32,
# 28.17 -> 30.03, 20.31 -> 27.95 dB. Auto denoises a grey image from this reading up.
GREY_NOISE_THRESHOLD = 10.0
# Luma noise (the same in R, G and B: film grain, a camera's) is left by denoise, trained on noise drawn apart per
# channel. Where denoise leaves a luma noise reading (shared_noise_sigma) of LUMA_NOISE_THRESHOLD or more, its luma
# pass (Enhancer.denoise_luma, the stage LUMA_STAGE) follows at strength min(1, (reading + 2) / 24): at full strength
# it softens texture where the noise is light. 24 Kodak24 / CBSD68 images with luma noise sigma 8 / 10 / 12 / 15 / 20
# (int8; read after denoise 8.4 / 10.4 / 12.4 / 15.4 / 20.3), the luma pass's gain over denoise alone at strength
# 0.5: +2.16 / +2.86 / +3.33 / +3.78 / +4.20 dB (worst image -0.47 / +0.69 / +1.51 / +2.34 / +3.13); at 0.75:
# +1.56 / +2.87 / +3.83 / +4.86 / +5.96 (worst -2.71 / -1.08 / +0.19 / +1.62 / +3.24); at 1: +0.06 / +1.68 / +2.94 /
# +4.41 / +6.13 (worst -4.88 / -3.11 / -1.69 / -0.02 / +2.03). Clean photos read at most 5.5 after denoise, noise
# drawn apart per channel at most 2.5.
LUMA_NOISE_THRESHOLD = 7.0
LUMA_STAGE = "denoise-luma"
# A JPEG smooths the noise it was saved with, so its noise reads low (sigma 15 under 4:4:4 q70 read 3.9): on one
# that dejpeg cleans, denoise follows from this reading up. 8 Kodak24 crops (256 px), noise then JPEG, int8:
# dejpeg then denoise against dejpeg alone +1.4 dB (sigma 15, q70 4:4:4, read 3.9), +3.6 (sigma 10, q85 4:4:4,
# read 5.2), +6.4 (sigma 10, q90 4:4:4, read 10.8); on clean JPEGs (read 0.3-1.2) it would cost 0.0-0.2.
JPEG_NOISE_THRESHOLD = 3.0
# The noise is read in the smoothest 8x8 blocks (this percentile of them): in the rest texture reads as
# noise (the median block read 6 to 13.5 on 25 of 212 clean Kodak24 / Set14 / CBSD68 images, full size
# and halved; this reads 2 over 6, baboon 6.8 the highest). The gain makes it exact on pure Gaussian noise.
NOISE_BLOCK_PERCENTILE = 5
_NOISE_PERCENTILE_GAIN = 1.34
# dejpeg runs on every JPEG of quality <= DEJPEG_MAX_QUALITY: on Kodak24 crops it gained +0.9 / +0.7 / +0.3 dB
# (worst -0.04) on clean JPEGs of quality 80 / 85 / 90, +1.5 to +2.1 on ones with sigma 5-10 noise, which
# the noise estimate misses once a JPEG has smoothed it (sigma 10 read 3 to 6).
# Pixels of a JPEG once (a PNG of it, a JPEG re-saved at a high quality): 212 clean Kodak24 / Set14 /
# CBSD68 images, full size and halved, read at most 1.375; re-saved at q95, q10 read 1.56 and more, q20 1.28
# and more (90% over 1.48), q30 1.17 and more (its median 1.50).
BLOCKINESS_THRESHOLD = 1.4
JPEG_STEP_MISFIT = 0.2  # mean |log| misfit of read quantisation steps to the nearest IJG table, at most
# Print borders and mount frames are flat and not the photo: the estimators read the picture without
# this share of it on each side (a 20-pixel border on an 800-pixel scan hid sigma 20 grain).
ANALYSIS_MARGIN = 0.08
MIN_ANALYSIS_SIDE = 32  # smaller pictures have too few 8x8 blocks to tell noise or JPEG blocks from content
# A photo once a JPEG changes between >= 25% of neighbouring pixels (Kodak24 at q10: 25-77%), flat graphics
# under 1%: below this share the block-border ratio says nothing.
MIN_MOVING_STEPS = 0.05
BACKPROJECTION_MIN_DB = 30.0  # the output downscaled must agree with the input this well

# IJG standard luminance table (JPEG Annex K), natural order.
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)

# The IJG luminance table of every quality 1..100 (libjpeg's jpeg_quality_scaling, clamped to 1..255), one row each.
_QUALITIES = np.arange(1, 101)
_IJG_LUMA = np.clip((_STD_LUMA[None] * np.where(_QUALITIES < 50, 5000 // _QUALITIES, 200 - 2 * _QUALITIES)[:, None]
                     + 50) // 100, 1, 255)


def _plane(rgb: np.ndarray, row) -> np.ndarray:
    """row[0] R + row[1] G + row[2] B on the 0..255 scale, as float64, built up a channel at a time: no float
    copy of all three (a 12 MP picture's is 288 MB)."""
    scale = 255.0 / np.iinfo(rgb.dtype).max
    y = rgb[..., 0] * (float(row[0]) * scale)
    for k in (1, 2):
        y += rgb[..., k] * (float(row[k]) * scale)
    return y


def _luma(rgb: np.ndarray) -> np.ndarray:
    return _plane(rgb, (0.299, 0.587, 0.114))


def _opaque(alpha: np.ndarray | None, shape) -> np.ndarray:
    """Where the estimators may look: fully opaque pixels (the colour under transparent ones is hidden
    and often junk: noise, black, a stale layer)."""
    return np.ones(shape[:2], bool) if alpha is None else alpha == np.iinfo(alpha.dtype).max


MAX_NOISE_SIGMA = 127.5  # the largest standard deviation of values in 0..255


def estimate_noise_sigma(rgb: np.ndarray, alpha: np.ndarray | None = None) -> float:
    """Per-channel Gaussian noise sigma on the 0..255 scale (median over channels); with ``alpha``,
    from the fully opaque 8x8 blocks only (0.0 when there are none).

    >>> flat = np.full((64, 64, 3), 128, np.uint8)
    >>> estimate_noise_sigma(flat)
    0.0
    """
    scale = 255.0 / np.iinfo(rgb.dtype).max
    sigmas = _block_sigmas(rgb, alpha, (rgb[..., c].astype(np.float64) * scale for c in range(rgb.shape[2])),
                           channelwise=True)
    # A pixel-level pattern (a 1-pixel checkerboard, halftone) reads as more than any noise on 0..255
    # can be: its standard deviation is at most half the range.
    return min(float(np.median(sigmas)), MAX_NOISE_SIGMA) if sigmas else 0.0


# How much of a noise drawn apart in R, G and B (sigma 1) each of BT.601 Y, Cb and Cr passes on.
_YCC_GAIN = np.sqrt((ycbcr.TO_YCC.astype(np.float64) ** 2).sum(axis=1))  # 0.669, 0.623, 0.657


def shared_noise_sigma(rgb: np.ndarray, alpha: np.ndarray | None = None) -> float:
    """The sigma (0..255) of the noise R, G and B share (the same value added to all three: luma noise, as
    film grain and cameras leave it), apart from noise drawn apart in each. Read like
    :func:`estimate_noise_sigma` in luma Y and chroma Cb, Cr: shared noise shows in Y alone (Cb and Cr
    rows sum to 0), separate noise sigma s in all three (Y 0.669 s, Cb 0.623 s, Cr 0.657 s), so the
    shared part is what Y holds beyond what Cb and Cr account for. On 24 Kodak24 / CBSD68 images: shared
    sigma 10 / 25 read 10.6 / 25.1; separate sigma 25 read 4.1 (at most 9.0), clean 1.1 (at most 5.7).

    >>> rng = np.random.default_rng(0)
    >>> base = np.full((96, 96, 3), 128.0)
    >>> grain = np.clip(np.rint(base + rng.normal(0, 10, (96, 96, 1))), 0, 255).astype(np.uint8)
    >>> round(shared_noise_sigma(grain))
    10
    """
    s = _block_sigmas(rgb, alpha, (_plane(rgb, row) for row in ycbcr.TO_YCC))
    if not s:
        return 0.0
    separate = (s[1] / _YCC_GAIN[1] + s[2] / _YCC_GAIN[2]) / 2
    return min(math.sqrt(max(0.0, s[0] ** 2 - (_YCC_GAIN[0] * separate) ** 2)), MAX_NOISE_SIGMA)


def luma_strength(reading: float) -> float:
    """The luma pass's share (0..1) for a luma noise reading left after denoise (LUMA_NOISE_THRESHOLD).

    >>> luma_strength(5.0), luma_strength(10.0), luma_strength(30.0)
    (0.0, 0.5, 1.0)
    """
    return 0.0 if reading < LUMA_NOISE_THRESHOLD else min(1.0, (reading + 2.0) / 24.0)


def _block_sigmas(rgb: np.ndarray, alpha: np.ndarray | None, planes, channelwise: bool = False) -> list[float]:
    """Immerkaer's sigma of each plane (0..255 floats of ``rgb``'s size, made one at a time by the iterable ``planes``:
    one float copy of a large picture at once), read in its smoothest 8x8 blocks without a clipped pixel
    (``channelwise``: plane c is channel c of ``rgb``, and only its clipping counts); [] for a picture under 10
    pixels a side or, with ``alpha``, without a fully opaque block."""
    h, w = rgb.shape[:2]
    if h < 10 or w < 10:
        return []
    bh, bw = (h - 2) // 8, (w - 2) // 8
    keep = np.ones((bh, bw), bool)
    if alpha is not None:  # blocks whose every pixel under the 3x3 Laplacian is opaque
        m = _opaque(alpha, rgb.shape)
        m = m[:-2, :-2] & m[:-2, 1:-1] & m[:-2, 2:] & m[1:-1, :-2] & m[1:-1, 1:-1] & m[1:-1, 2:] & m[2:, :-2] \
            & m[2:, 1:-1] & m[2:, 2:]
        keep = m[:bh * 8, :bw * 8].reshape(bh, 8, bw, 8).all(axis=(1, 3))
        if not keep.any():
            return []
    top = np.iinfo(rgb.dtype).max
    sigmas = []
    for c, y in enumerate(planes):
        conv = (y[:-2, :-2] - 2 * y[:-2, 1:-1] + y[:-2, 2:] - 2 * y[1:-1, :-2] + 4 * y[1:-1, 1:-1]
                - 2 * y[1:-1, 2:] + y[2:, :-2] - 2 * y[2:, 1:-1] + y[2:, 2:])
        a = np.abs(conv)
        blocks = a[:bh * 8, :bw * 8].reshape(bh, 8, bw, 8).mean(axis=(1, 3))
        # A block with a clipped pixel (0 or white) has lost its noise there: it would read too smooth.
        inner = rgb[1:bh * 8 + 1, 1:bw * 8 + 1, c:c + 1] if channelwise else rgb[1:bh * 8 + 1, 1:bw * 8 + 1]
        clipped = ((inner == 0) | (inner == top)).any(axis=2).reshape(bh, 8, bw, 8).any(axis=(1, 3))
        use = keep & ~clipped
        if use.sum() < 16:  # mostly clipped: the clipped blocks are all there is
            use = keep
        sigmas.append(_NOISE_PERCENTILE_GAIN * math.sqrt(math.pi / 2)
                      * float(np.percentile(blocks[use], NOISE_BLOCK_PERCENTILE)) / 6.0)
    return sigmas


def jpeg_quality_from_tables(path) -> int | None:
    """IJG quality (1..100) of a JPEG file from its luminance table; None if not a JPEG."""
    try:
        with imageio.open_photo(path, ("JPEG", "MPO")) as im:  # MPO: a phone's JPEG with a preview after it
            table = imageio.jpeg_coding(im).get("jpeg_luma_table")
    except (OSError, ValueError):
        return None
    return None if table is None else quality_of_table(table)


def quality_of_table(table) -> int:
    """The IJG quality (1..100) of a JPEG luminance quantisation table (64 values, natural order)."""
    table = np.asarray(table, np.float64)
    # The quality whose IJG table (libjpeg's jpeg_quality_scaling, clamped to 1..255) is nearest. At the
    # extremes most entries sit at the clamp (q <= 10: 255, q 100: 1), so only the exact tables tell
    # them apart; an encoder with its own tables gets the nearest IJG quality.
    return int(_QUALITIES[np.argmin(np.abs(np.log(_IJG_LUMA) - np.log(table[None])).sum(axis=1))])


# Orthonormal 8-point DCT-II (JPEG's), and the AC coefficients (row, column) read for their quantisation steps: the
# first 14 in zigzag order, which JPEG quantises finest and photos fill (higher ones are mostly 0 at low quality).
_DCT8 = np.array([[math.sqrt((1 if k == 0 else 2) / 8) * math.cos((2 * n + 1) * k * math.pi / 16) for n in range(8)]
                  for k in range(8)])
_LOW_AC = ((0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0), (4, 0), (3, 1), (2, 2), (1, 3),
           (0, 4))
_LOW_AC_AT = [u * 8 + v for u, v in _LOW_AC]  # their places in a table in natural order


def _block_dct(rgb: np.ndarray, dy: int, dx: int, most: int, plane: np.ndarray = ycbcr.TO_YCC[0]) -> np.ndarray:
    """DCT coefficients (N, 8, 8) of one plane of ``rgb`` (its weights of R, G, B: luma, or a row of
    TO_YCC's; on the 0..255 scale, DC not centred) in its 8x8 blocks from row ``dy``, column ``dx``: at most
    ``most`` blocks, spread over the picture (only those are read)."""
    ny, nx = (rgb.shape[0] - dy) // 8, (rgb.shape[1] - dx) // 8
    pick = np.unique(np.linspace(0, ny * nx - 1, min(most, ny * nx)).astype(np.int64))
    by, bx = np.divmod(pick, nx)
    k = np.arange(8)
    blocks = rgb[(dy + 8 * by)[:, None, None] + k[None, :, None], (dx + 8 * bx)[:, None, None] + k[None, None, :]]
    return np.einsum("ij,njk,lk->nil", _DCT8, _plane(blocks, plane), _DCT8)


# Chroma frequencies whose quantisation steps tell a 4:4:4 JPEG (its Cb / Cr blocks on the luma's 8x8 grid)
# from a subsampled one (blocks 16 pixels wide, upsampled on decoding: on no 8x8 grid's steps); those that vary
# across, as 4:2:2 halves only across. Kodak24, CBSD68, McMaster and Set14 (every other image, cropped off the
# grid), Pillow JPEG q75 / 85 / 90: 4:4:4 showed steps at 3 to 6 of these 6 (Cb and Cr) on every colour image,
# 4:2:0 and 4:2:2 at 0 or 1 (at q40, 4:2:2 at up to 3: quality 75 and under is cleaned whatever the layout).
# All 124 images at q80 / 85 / 90: 4:4:4 never read "subsampled"; 4:2:0 and 4:2:2 did on 117 to 119, the rest None.
_CHROMA_AC = ((0, 1), (0, 2), (1, 1))
# A "subsampled" needs steps on none of those 6, and at least 3 of them with this many coefficients |c| >= 3 to
# look at (a grey, pale or small picture has too few to tell)
MIN_CHROMA_COEFFICIENTS = 100


def _quantisation_step(c: np.ndarray) -> int | None:
    """The step that a JPEG quantised these DCT coefficients (of one frequency) on, or None where they show none.
    Values on multiples of q give mean cos(2 pi c / q) near 1 (rounding of the decoded pixels blurs them a
    little), also for q's divisors, but not for 2q or other steps: the largest q that scores near the best."""
    scores = []
    for q in range(2, 80):
        big = c[np.abs(c) >= q / 2]  # the zero level is on every lattice: left out
        if len(big) < 50:
            break
        score = float(np.mean(np.cos(2 * np.pi * big / q)))
        if score >= 0.6:
            scores.append((q, score))
    if not scores:
        return None
    best = max(s for _, s in scores)
    return max(q for q, s in scores if s >= 0.8 * best)


def _chroma_layout(rgb: np.ndarray, dy: int, dx: int) -> str | None:
    """"4:4:4" where the chroma's DCT coefficients on the JPEG's 8x8 grid (from ``dy``, ``dx``) sit on
    quantisation steps, "subsampled" (4:2:0 or 4:2:2) where there is colour to read but they sit on none,
    None where neither is clear."""
    steps = coloured = 0
    for plane in ycbcr.TO_YCC[1:]:
        c = _block_dct(rgb, dy, dx, 20000, plane)
        for u, v in _CHROMA_AC:
            steps += _quantisation_step(c[:, u, v]) is not None
            coloured += np.count_nonzero(np.abs(c[:, u, v]) >= 3) >= MIN_CHROMA_COEFFICIENTS
    if steps >= 3:
        return "4:4:4"
    return "subsampled" if steps == 0 and coloured >= 3 else None


def jpeg_from_pixels(rgb: np.ndarray, alpha: np.ndarray | None = None) -> tuple[int | None, str | None]:
    """(The IJG quality of the JPEG that these pixels were once decoded from (a PNG of a JPEG, a screenshot
    of one at 100%), its chroma layout: "4:4:4", "subsampled" or None where unclear); (None, None) where the
    pixels were never a JPEG's. The quality is read off the quantisation steps its luma DCT coefficients still
    sit on; None where they sit on none (never a JPEG, resized, noise or a filter added since, quality over 90,
    or a picture with transparency). The 8x8 grid need not start at pixel 0 (a crop): of the 64 offsets, the
    one whose blocks hold the most zero coefficients. First 6 Kodak24 and 6 CBSD68 images, cropped off the grid,
    Pillow JPEG 4:2:0: quality 20 / 40 / 50 / 60 / 75 / 85 / 90 read 19 / 38-39 / 48-50 / 59-60 / 75 / 85 / 90;
    clean and quality 95 read None.

    >>> jpeg_from_pixels(np.full((64, 64, 3), 128, np.uint8))
    (None, None)
    """
    if alpha is not None and (alpha != np.iinfo(alpha.dtype).max).any():
        return None, None
    if min(rgb.shape[:2]) < 16:
        return None, None
    zeros = {(dy, dx): float(np.mean(np.abs(_block_dct(rgb, dy, dx, 500)[:, 2:, 2:]) < 1.0))
             for dy in range(8) for dx in range(8)}
    grid = max(zeros, key=zeros.get)
    c = _block_dct(rgb, *grid, 20000)
    found = [(at, q) for (u, v), at in zip(_LOW_AC, _LOW_AC_AT) if (q := _quantisation_step(c[:, u, v])) is not None]
    if len(found) < 3:
        return None, None
    quality, misfit = _nearest_ijg([i for i, _ in found], [q for _, q in found])
    if misfit > JPEG_STEP_MISFIT:
        return None, None  # steps, but not an IJG table's (another encoder's tables, or chance)
    return quality, _chroma_layout(rgb, *grid)


def _nearest_ijg(at, steps) -> tuple[int, float]:
    """(The IJG quality whose luminance table is nearest ``steps`` at the natural-order places ``at``, by mean
    |log| misfit; of tied qualities, which neighbouring ones often are at low frequencies, the middle one;
    that misfit)."""
    err = np.abs(np.log(_IJG_LUMA[:, list(at)]) - np.log(np.asarray(steps, np.float64))[None]).mean(axis=1)
    tied = _QUALITIES[err <= err.min() + 1e-9]
    return int(tied[len(tied) // 2]), float(err.min())



def blockiness(rgb: np.ndarray, alpha: np.ndarray | None = None) -> float:
    """~1 for natural images, > 1 where 8x8 JPEG block borders show; with ``alpha``, from steps between
    fully opaque pixels only."""
    y, m = _luma(rgb), _opaque(alpha, rgb.shape)
    mx, my = m[:, 1:] & m[:, :-1], m[1:] & m[:-1]
    dx, dy = np.abs(np.diff(y, axis=1)), np.abs(np.diff(y, axis=0))
    if alpha is not None:
        dx, dy = dx * mx, dy * my
    # The grid need not start at pixel 0 (a JPEG cropped, then saved losslessly): per axis, the phase of the
    # 8 whose steps are largest on average is taken as the block border.
    border_sum = border_n = 0.0
    for d, mk, ax in ((dx, mx, 1), (dy, my, 0)):
        sums = [np.take(d, np.arange(k, d.shape[ax], 8), axis=ax).sum() for k in range(8)]
        counts = [np.take(mk, np.arange(k, mk.shape[ax], 8), axis=ax).sum() for k in range(8)]
        k = max(range(8), key=lambda k: sums[k] / counts[k] if counts[k] else -1.0)
        border_sum, border_n = border_sum + sums[k], border_n + counts[k]
    inside_sum, inside_n = dx.sum() + dy.sum() - border_sum, mx.sum() + my.sum() - border_n
    if border_n == 0 or inside_n == 0:
        return 1.0
    if (dx > 0.5).sum() + (dy > 0.5).sum() < MIN_MOVING_STEPS * (mx.sum() + my.sum()):
        return 1.0  # flat graphics (a logo, a chart): edges on the 8-grid are no sign of JPEG blocks
    return float((border_sum / border_n) / max(inside_sum / inside_n, 1e-6))


def backprojection_psnr(inp: np.ndarray, out: np.ndarray, alpha: np.ndarray | None = None) -> float:
    """PSNR (luma, 0..255) between the input and the output bicubic-downscaled to the input's size;
    with the input's ``alpha``, each pixel weighted by its opacity (hidden colour is not judged)."""
    if inp.shape == out.shape:
        small = out
    else:
        h, w = inp.shape[:2]
        if out.dtype == np.uint16:
            out = (out >> 8).astype(np.uint8)
            inp = (inp >> 8).astype(np.uint8)
        small = np.asarray(Image.fromarray(out).resize((w, h), Image.BICUBIC))
    err = (_luma(inp) - _luma(small)) ** 2
    if alpha is None:
        mse = np.mean(err)
    else:
        wgt = alpha.astype(np.float64)
        mse = float((err * wgt).sum() / wgt.sum()) if wgt.sum() else 0.0
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def bicubic_backprojection(inp: np.ndarray, out_shape: tuple, alpha: np.ndarray | None = None) -> float:
    """The back-projection PSNR of a plain bicubic upscale of ``inp`` to ``out_shape``: what any faithful
    upscale can be expected to reach on this input."""
    img = (inp >> 8).astype(np.uint8) if inp.dtype == np.uint16 else inp
    up = np.asarray(Image.fromarray(img).resize((out_shape[1], out_shape[0]), Image.BICUBIC))
    return backprojection_psnr(img, up, alpha)


_SUBSAMPLING = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}  # Pillow's get_sampling


@dataclass
class Analysis:
    noise_sigma: float | None  # None (and blockiness): a picture under MIN_ANALYSIS_SIDE, too small to read
    jpeg_quality: int | None
    blockiness: float | None
    # of a JPEG: 4:4:4, 4:2:2, 4:2:0 (None: not a JPEG, or another layout); read from pixels: 4:4:4 or subsampled
    # (None: unclear)
    jpeg_subsampling: str | None = None
    stages: list[str] = field(default_factory=list)
    backprojection_db: float | None = None
    strength: float = 1.0
    luma_noise_sigma: float | None = None  # the luma noise denoise left in a colour photo (None: not read)
    jpeg_from_pixels: bool = False  # jpeg_quality read from the pixels (a PNG of a JPEG, a JPEG saved again finer)


def _analysed_part(rgb: np.ndarray, alpha: np.ndarray | None):
    """The picture the estimators read: ``ANALYSIS_MARGIN`` of each side left out (a print border or frame)."""
    h, w = rgb.shape[:2]
    mh, mw = (int(n * ANALYSIS_MARGIN) if n * (1 - 2 * ANALYSIS_MARGIN) >= MIN_ANALYSIS_SIDE else 0 for n in (h, w))
    part = (slice(mh, h - mh), slice(mw, w - mw))
    return rgb[part], None if alpha is None else alpha[part]


def sr_chain(scale: int) -> list[str]:
    """Bundled SR models for a scale: 2, 3, 4 direct; 8 = x4 then x2 (8x detail is speculative)."""
    chains = {1: [], 2: ["sr-x2"], 3: ["sr-x3"], 4: ["sr-x4"], 8: ["sr-x4", "sr-x2"]}
    if scale not in chains:
        raise ConfigError(f"scale {scale!r} is not one of 1, 2, 3, 4, 8")
    return chains[scale]


def dejpeg_limit(subsampling: str | None, from_pixels: bool = False) -> int:
    """The highest JPEG quality auto cleans: the top of dejpeg's training range (10-90), 75 without chroma
    subsampling (on a clean, textured q95 JPEG, kodim13, dejpeg cost 2.4 dB). Pixels whose chroma layout is
    unclear (None) are held to the lower limit; a JPEG file's unknown layout (None) is not."""
    subsampled = subsampling not in (None, "4:4:4") if from_pixels else subsampling != "4:4:4"
    return DEJPEG_MAX_QUALITY if subsampled else DEJPEG_MAX_QUALITY_444


def plan_stages(mode: str, scale: int, photo: imageio.Photo | None = None, src=None) -> tuple[list[str], Analysis | None]:
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "upscale":
        if scale == 1:
            raise ConfigError("--scale 1 with --mode upscale (the default) would run no model; for a same-size "
                              "clean-up use --mode denoise, dejpeg or auto")
        return sr_chain(scale), None
    if mode in ("denoise", "dejpeg"):
        return [mode] + sr_chain(scale), None
    if mode == "photo":  # real-world x2 (blur + noise + JPEG + low resolution) in one model
        if scale not in (2, 4):
            raise ConfigError(f"--mode photo upscales x2 (enhance-x2), or x4 with sr-x2 after it; not x{scale}")
        return ["enhance-x2"] + (["sr-x2"] if scale == 4 else []), None
    rgb, alpha = _analysed_part(photo.rgb, photo.alpha)
    # Read with the photo (a file, or an application's Pillow image); the file again only for a Photo made
    # otherwise (load_image sets its format).
    table = photo.extra.get("jpeg_luma_table")
    quality = quality_of_table(table) if table else jpeg_quality_from_tables(src) if src and photo.format is None \
        else None
    subsampling = _SUBSAMPLING.get(photo.extra.get("jpeg_subsampling")) if quality is not None else None
    if min(rgb.shape[:2]) < MIN_ANALYSIS_SIDE:
        an = Analysis(None, quality, None, subsampling)
    else:
        an = Analysis(estimate_noise_sigma(rgb, alpha), quality, blockiness(rgb, alpha), subsampling)
        if quality is None or quality > dejpeg_limit(subsampling):
            # Not a JPEG file, or one too fine to clean: its pixels may still be an earlier, harsher JPEG's (a
            # PNG of a JPEG; a JPEG that an editor or a messaging app saved again at q95).
            q, layout = jpeg_from_pixels(rgb, alpha)
            # The file's own quality as its pixels would read it: from the low frequencies alone (a phone's own,
            # flatter tables read q93 in all and q90 there); a read is within 2 of it.
            own = _nearest_ijg(_LOW_AC_AT, np.asarray(table, np.float64)[_LOW_AC_AT])[0] if table else quality
            if q is not None and (quality is None or q < own - 2):
                an.jpeg_quality, an.jpeg_subsampling, an.jpeg_from_pixels = q, layout, True
    stages = []
    limit = dejpeg_limit(an.jpeg_subsampling, an.jpeg_from_pixels)
    if (an.jpeg_quality is not None and an.jpeg_quality <= limit) or (an.blockiness or 0) > BLOCKINESS_THRESHOLD:
        stages.append("dejpeg")
    noise = an.noise_sigma or 0
    # A reading at the ceiling is a pixel pattern (a 1-pixel checkerboard, halftone), not noise: denoise greys it.
    if noise < MAX_NOISE_SIGMA and noise > (JPEG_NOISE_THRESHOLD if stages else NOISE_THRESHOLD):
        stages.append("denoise")
    stages += sr_chain(scale)
    an.stages = stages
    return stages, an


class Pipeline(_Processor):
    """Enhancers chained by mode. Models load once, on first use, and are reused across files."""

    def __init__(self, mode: str = "upscale", scale: int = 2, *, strength: float = 1.0, check: bool = True,
                 engine: str | None = None, threads: int | None = None, tile: int | tuple[int, int] | None = None,
                 memory_mb: float | None = None, make_enhancer: Callable[[str], Enhancer] | None = None):
        """``mode``: upscale (sr-x``scale``); denoise or dejpeg, then the upscale for ``scale`` > 1; photo
        (enhance-x2, x4 with sr-x2 after it); auto (dejpeg or denoise where the image needs it, then the
        upscale, checked by back-projection unless ``check`` is False). In denoise and auto, denoise is followed
        by its luma pass (stage ``denoise-luma``) where a colour photo still holds luma noise. ``scale``: 1, 2, 3, 4 or 8.
        ``strength``: each call's unless it gives its own (0 the input .. 1 the models .. 1.5).
        The bundled models load as Enhancers with ``engine``, ``threads``, ``tile`` and ``memory_mb`` (as
        Enhancer takes them); or ``make_enhancer(name)`` makes each stage.

        >>> with Pipeline("denoise", 2, threads=2) as pipe:          # doctest: +SKIP
        ...     pipe.enhance(np.zeros((10, 12), np.uint8)).shape   # what Enhancer.enhance takes
        (20, 24)
        """
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        sr_chain(scale)  # a bad scale is refused now, in auto mode too, not at the first file
        self.mode, self.scale, self.strength, self.check = mode, scale, strength, check
        if make_enhancer is None:
            make_enhancer = functools.partial(Enhancer, engine=engine, threads=threads, tile=tile, memory_mb=memory_mb)
        elif (engine, threads, tile, memory_mb) != (None, None, None, None):
            raise ConfigError("give make_enhancer or engine / threads / tile / memory_mb, not both")
        self._make = make_enhancer
        self._loaded: dict[str, object] = {}
        self._local = threading.local()  # last_run, last_stages, last_analysis: each thread sees its own
        # auto on a video: (the first frame's stages, [its luma pass's share]), kept for the rest
        self._sequence: tuple | None = None
        self._said_strength = False
        if mode != "auto":
            for name in plan_stages(mode, scale)[0]:
                self.stage(name)  # fail early if a model is missing

    def close(self) -> None:
        """Free every loaded model's engine now; a later file loads them again."""
        for enh in self._loaded.values():
            getattr(enh, "close", lambda: None)()
        self._loaded.clear()

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def last_stages(self) -> list[str]:
        """The models the calling thread's last image went through, in order."""
        return getattr(self._local, "stages", [])

    @property
    def last_analysis(self) -> Analysis | None:
        """What auto mode found in the calling thread's last image (None in other modes)."""
        return getattr(self._local, "analysis", None)

    def stage(self, name: str):
        if name not in self._loaded:
            self._loaded[name] = self._make(name)
        return self._loaded[name]

    def new_sequence(self) -> None:
        """Frames of one video follow: auto decides on the first and keeps that chain for the rest (decided
        per frame, a noise estimate either side of the threshold switched denoise on and off: flicker)."""
        self._sequence = ()

    def end_sequence(self) -> None:
        self._sequence = None

    def enhance_photo(self, photo: imageio.Photo, *, src=None, out=None, progress=None,
                      strength: float | None = None) -> imageio.Photo:
        strength = self._strength_for(strength)
        replay = bool(self._sequence)
        if replay:  # a later frame of a video: the first one's chain (and luma share), its analysis and check kept
            stages, an = list(self._sequence[0]), None
        else:
            stages, an = plan_stages(self.mode, self.scale, photo, src)
        if an is not None:
            from .models import bundled

            missing = [n for n in stages if n in ("denoise", "dejpeg") and n not in bundled()]
            for n in missing:
                log.warning("auto: the input wants %s, but no %s model is bundled; skipping that stage", n, n)
            stages = an.stages = [n for n in stages if n not in missing]
        if an is not None and "denoise" in stages and an.noise_sigma < GREY_NOISE_THRESHOLD \
                and (photo.grey or imageio.looks_grey(photo.rgb)):
            stages = an.stages = [n for n in stages if n != "denoise"]
            log.info("%s: a greyscale image with noise sigma %.1f: auto denoises grey images from sigma %g on",
                     src or "<image>", an.noise_sigma, GREY_NOISE_THRESHOLD)
        if self._sequence == ():
            self._sequence = (stages, [1.0])  # the same lists: a luma pass added below is kept for later frames
        if not self._sequence or an is not None:
            self._local.analysis = an
        self._local.stages = stages
        if an is not None:
            an.strength = strength
        if strength > 1 and stages[-1:] == ["denoise"] and not self._said_strength:
            self._said_strength = True
            log.warning("--strength %g past 1 puts denoise's removed noise back inverted (1 is the model's best)",
                        strength)
        if not stages:
            return photo
        # The check compares the upscale with what it upscaled: cleanup departs from a noisy input on purpose.
        first_sr = next((i for i, n in enumerate(stages) if n.startswith("sr-")), len(stages))
        # Before an upscale the cleanup runs at most at its model's best (1): past it, the removed noise or blocks
        # come back inverted, and the upscale sharpens them (strength 1.5 cost 3.2 dB at x2, sigma 25).
        cleanup = min(strength, 1.0) if first_sr < len(stages) else strength
        ends = first_sr == len(stages)  # cleanup alone: it writes into `out` and reports progress
        luma = self._sequence[1] if self._sequence else [1.0]  # the luma pass's share, kept for a video's frames
        base = self._run(stages[:first_sr], photo, cleanup, out if ends else None, progress if ends else None,
                         luma[0]) if first_sr else photo
        if not replay and stages[first_sr - 1:first_sr] == ["denoise"] and self._has_luma_pass():
            luma[0] = self._luma_share(base, an, src)
            if luma[0]:
                stages.insert(first_sr, LUMA_STAGE)
                base = self._run([LUMA_STAGE], base, cleanup, out if ends else None, progress if ends else None,
                                 luma[0])
                first_sr += 1
        result = self._run(stages[first_sr:], base, strength, out, progress) if not ends else base
        if an is not None and self.check and first_sr < len(stages):
            an.backprojection_db = backprojection_psnr(base.rgb, result.rgb, base.alpha)
            an.strength = strength
            if an.backprojection_db < BACKPROJECTION_MIN_DB:
                # An input no upscale can agree with (a 1-bit dither, a pixel checkerboard: aliased) is judged
                # against what bicubic achieves on it, not against a bar made for photos.
                floor = min(BACKPROJECTION_MIN_DB, bicubic_backprojection(base.rgb, result.rgb.shape, base.alpha))
                if an.backprojection_db < floor and strength > 0:
                    gentler = strength / 2
                    log.warning("%s: back-projection %.1f dB < %.1f dB; retrying the upscale at strength %.2f",
                                src or "<image>", an.backprojection_db, floor, gentler)
                    result = self._run(stages[first_sr:], base, gentler, out, progress)
                    an.backprojection_db, an.strength = backprojection_psnr(base.rgb, result.rgb, base.alpha), gentler
                    if an.backprojection_db < floor:
                        raise EdgeEnhanceError(
                            f"quality check failed: the upscale disagrees with its input (back-projection "
                            f"{an.backprojection_db:.1f} dB < {floor:.1f} dB, the bar or bicubic's own on this "
                            "input); nothing written")
        return result

    def _has_luma_pass(self) -> bool:
        """Whether the denoise stage is an rgb denoise model with its luma pass (make_enhancer may make others)."""
        enh = self.stage("denoise")
        card = getattr(enh, "card", None)
        return hasattr(enh, "denoise_luma") and getattr(card, "task", None) == "denoise" \
            and getattr(card, "colour", None) == "rgb"

    @staticmethod
    def _luma_share(photo: imageio.Photo, an: Analysis | None, src) -> float:
        """The strength (0: none) of denoise's luma pass on what denoise made of a colour photo, from the luma
        noise it left (luma_strength); kept in ``an``."""
        if photo.grey or imageio.looks_grey(photo.rgb):
            return 0.0  # a grey photo went through the model as its luma pass would put it
        part, alpha = _analysed_part(photo.rgb, photo.alpha)
        if min(part.shape[:2]) < MIN_ANALYSIS_SIDE:
            return 0.0
        reading = shared_noise_sigma(part, alpha)
        if an is not None:
            an.luma_noise_sigma = reading
        share = luma_strength(reading)
        log.info("%s: luma noise sigma %.1f after denoise: %s", src or "<image>", reading,
                 f"its luma pass at strength {share:.2f}" if share else f"no luma pass (from {LUMA_NOISE_THRESHOLD:g})")
        return share

    def _run(self, stages, photo, strength, out, progress, luma=1.0):
        """``stages`` in turn; LUMA_STAGE is denoise's luma pass at ``luma`` times ``strength``."""
        for i, name in enumerate(stages):  # the last stage writes into `out` and reports progress
            # its strength is given per call: a stage may be shared with other threads
            enh = self.stage("denoise" if name == LUMA_STAGE else name)
            last = i == len(stages) - 1
            run, k = (enh.denoise_luma, luma) if name == LUMA_STAGE else (enh.enhance_photo, 1.0)
            photo = run(photo, out=out if last else None, progress=progress if last else None, strength=strength * k)
            self._local.run = enh.last_run  # the last stage's tiling, as --json reports it
        return photo
