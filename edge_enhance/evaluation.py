"""The evaluation protocol of ``../shared/data/README.md``, in numpy + Pillow only.

Super-resolution (task ``sr``, scale s): HR cropped top-left to a multiple of s, LR by Pillow
bicubic, PSNR/SSIM on luma Y after shaving s pixels from every border.
Denoising (``denoise``, sigma): clipped, quantised Gaussian noise seeded by the image's index in
sorted file-name order; PSNR/SSIM on RGB over the whole image.
JPEG artefact removal (``dejpeg``, quality): Pillow JPEG at that quality; RGB, whole image.
Real-world x2 (``enhance``, scale s): :func:`degrade` (blur, downscale, noise, JPEG, seeded per
image); scored like ``sr`` (Y, shave s).

>>> import numpy as np
>>> a = np.zeros((4, 4, 3), np.uint8); b = a + 1
>>> round(psnr(a, b), 2)  # MSE 1 on the 0..255 scale
48.13
"""
from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from . import imageio
from .errors import ConfigError, ImageInputError

log = logging.getLogger(__name__)

TASKS = ("sr", "denoise", "dejpeg", "enhance")
# The protocol's sets (../shared/data/README.md, and Urban100) and their sizes: a figure keyed by a set's name
# is of the whole set; one measured on a folder of another size is not that set's.
SET_SIZES = {"Set5": 5, "Set14": 14, "BSD100": 100, "Urban100": 100, "CBSD68": 68, "Kodak24": 24, "McMaster": 18}
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".ppm")
Y_WEIGHTS = (65.481, 128.553, 24.966)  # MATLAB rgb2ycbcr's luma row: Y = 16 + (Y_WEIGHTS . RGB) / 255


# The settings a denoise / dejpeg measurement takes when none is named (eval, quantize, prune, cards).
DEFAULT_SIGMA = 25.0
DEFAULT_QUALITY = 30


def shared_folder(sub: str) -> Path | None:
    """``shared/<sub>`` in the nearest folder holding one, above the code (``../shared`` beside a
    checkout; worktrees sit one level deeper), else above the working folder (an installed package run
    inside a checkout's tree); None when there is none."""
    for start in (Path(__file__).resolve().parents[1], Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (d / "shared" / sub).is_dir():
                return d / "shared" / sub
    return None


def shared_data(part: str = "") -> Path | None:
    """The project's data folder (train/ and eval/), or ``part`` of it (e.g. ``eval/Set5``):
    ``$EDGE_ENHANCE_DATA``, else :func:`shared_folder` ``data/part``."""
    import os

    env = os.environ.get("EDGE_ENHANCE_DATA")
    if env:
        return Path(env) / part
    return shared_folder(f"data/{part}".rstrip("/"))


def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma on the 16..235 scale, float64, as MATLAB's rgb2ycbcr (SR papers).

    >>> rgb_to_y(np.array([[[255, 255, 255]]], np.uint8))[0, 0].round(3)
    np.float64(235.0)
    """
    x = np.asarray(rgb, dtype=np.float64)
    r, g, b = Y_WEIGHTS
    return 16.0 + (r * x[..., 0] + g * x[..., 1] + b * x[..., 2]) / 255.0


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB between two arrays on the 0..peak scale (float64); inf when identical."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"psnr: shapes differ {a.shape} vs {b.shape}")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_1d(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with 'valid' borders (as MATLAB filter2(..., 'valid'))."""
    n = len(g)
    h, w = x.shape
    rows = sum(g[k] * x[k:h - n + 1 + k, :] for k in range(n))
    return sum(g[k] * rows[:, k:w - n + 1 + k] for k in range(n))


def ssim(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """Mean SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, valid borders.

    2-D inputs are one channel; (H, W, C) inputs give the mean of the per-channel SSIMs.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ConfigError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ssim(a[..., c], b[..., c], peak) for c in range(a.shape[2])]))
    if min(a.shape) < 11:
        raise ConfigError(f"ssim: image {a.shape} is smaller than the 11x11 window")
    g = _gaussian_1d(1.5, 5)
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_a, mu_b = _filter_valid(a, g), _filter_valid(b, g)
    saa = _filter_valid(a * a, g) - mu_a * mu_a
    sbb = _filter_valid(b * b, g) - mu_b * mu_b
    sab = _filter_valid(a * b, g) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (saa + sbb + c2))
    return float(m.mean())


def shave(x: np.ndarray, s: int) -> np.ndarray:
    """Drop s pixels from every border (the SR protocol's shave)."""
    return x[s:-s, s:-s] if s > 0 else x


def mod_crop(rgb: np.ndarray, s: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[: h - h % s, : w - w % s]


def bicubic_resize(rgb: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize(size_wh, Image.BICUBIC))


def sr_pair(hr_rgb: np.ndarray, s: int) -> tuple[np.ndarray, np.ndarray]:
    """(HR cropped top-left to a multiple of s, LR by Pillow bicubic at 1/s)."""
    hr = mod_crop(np.asarray(hr_rgb, dtype=np.uint8), s)
    h, w = hr.shape[:2]
    return hr, bicubic_resize(hr, (w // s, h // s))


def noisy(clean: np.ndarray, sigma: float, index: int) -> np.ndarray:
    """The protocol's noise: clipped and quantised, seeded by the image's index in the set."""
    rng = np.random.default_rng(index)
    return np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)


def jpeg(clean: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """Round trip through Pillow's JPEG encoder (4:2:0 chroma subsampling, the protocol's, unless told)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(clean, dtype=np.uint8)).save(buf, format="JPEG", quality=int(quality),
                                                            subsampling=subsampling)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur, kernel radius ceil(3 sigma), reflect borders, rounded to uint8."""
    r = max(1, math.ceil(3 * sigma))
    g = _gaussian_1d(sigma, r)
    x = np.pad(np.asarray(rgb, dtype=np.float64), ((r, r), (r, r), (0, 0)), mode="reflect")
    out = np.stack([_filter_valid(x[..., c], g) for c in range(x.shape[2])], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Degradation:
    """One draw of the real-world pipeline: blur -> bicubic downscale -> noise -> JPEG."""

    blur_sigma: float
    noise_sigma: float
    quality: int

    @classmethod
    def draw(cls, rng: np.random.Generator) -> "Degradation":
        # Ranges of a decent phone camera's output: mild optical blur, sensor noise, re-compression.
        return cls(
            blur_sigma=float(rng.uniform(0.4, 1.6)),
            noise_sigma=float(rng.uniform(1.0, 10.0)),
            quality=int(rng.integers(40, 91)),
        )


def degrade(hr_rgb: np.ndarray, s: int, rng: np.random.Generator, params: Degradation | None = None) -> np.ndarray:
    """Real-world degradation of an HR image (already a multiple of s) to its LR input.

    Parameters are drawn from ``rng`` unless given; the noise is drawn from ``rng`` after them.
    For evaluation the rng is ``default_rng(i)`` for image i of the set in sorted file-name order.
    """
    p = params or Degradation.draw(rng)
    x = gaussian_blur(hr_rgb, p.blur_sigma)
    h, w = x.shape[:2]
    x = bicubic_resize(x, (w // s, h // s))
    x = np.clip(np.round(x + rng.normal(0, p.noise_sigma, x.shape)), 0, 255).astype(np.uint8)
    return jpeg(x, p.quality)


def rgb8(im: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 of a Pillow image. A 16-bit grey one (mode I;16 / I) is scaled, 65535 -> 255:
    Pillow's convert("RGB") clips it to 255, turning a 16-bit grey image white."""
    if im.mode.startswith("I;16") or im.mode == "I":
        y = np.clip(np.round(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(y[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def load_rgb(path: Path) -> np.ndarray:
    """The image as RGB uint8. 16-bit colour is rounded to 8 bits, as 16-bit grey is (Pillow's own 8-bit
    decode of it keeps the top byte: 0.12 dB off on a Set14 image stored as 16-bit)."""
    try:
        with Image.open(path) as im:
            if not imageio.wide_colour(im, path):
                return rgb8(im)
    except (OSError, ValueError) as e:
        raise ImageInputError(f"{path}: cannot read image ({e})") from None
    rgb = imageio.load_image(path).rgb
    return rgb if rgb.dtype == np.uint8 else np.clip(np.round(rgb / 257.0), 0, 255).astype(np.uint8)


def list_images(dataset_dir) -> list[Path]:
    d = Path(dataset_dir)
    if not d.is_dir():
        raise ImageInputError(f"{d}: is not a folder (a dataset is a folder of images)" if d.exists()
                              else f"{d}: dataset folder does not exist")
    entries = list(d.iterdir())
    files = sorted(p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES)
    other = sorted(p.name for p in entries if p.suffix.lower() in imageio.IMAGE_SUFFIXES.difference(IMAGE_SUFFIXES))
    if other:  # not silently: the mean (and, for noise, the later images' seeds) would be of another set
        log.warning("%s: %d image(s) of other formats left out (%s%s); the protocol reads %s", d, len(other),
                    ", ".join(other[:3]), ", ..." if len(other) > 3 else "", ", ".join(IMAGE_SUFFIXES))
    if not files:
        raise ImageInputError(f"{d}: no images ({', '.join(IMAGE_SUFFIXES)}) in the folder")
    return files


@dataclass
class EvalResult:
    """Per-image rows (name, psnr, ssim, baseline_psnr) and their means.

    The baseline is the degraded input itself: Pillow bicubic upscale of LR for sr / enhance,
    the noisy or JPEG image for denoise / dejpeg.
    """

    task: str
    dataset: str
    rows: list[dict] = field(default_factory=list)

    def _mean(self, key: str) -> float:
        return float(np.mean([r[key] for r in self.rows]))

    @property
    def psnr(self) -> float:
        return self._mean("psnr")

    @property
    def ssim(self) -> float:
        return self._mean("ssim")

    @property
    def baseline_psnr(self) -> float:
        return self._mean("baseline_psnr")


def make_input(task: str, clean: np.ndarray, index: int, *, scale: int = 2, sigma: float = DEFAULT_SIGMA,
               quality: int = DEFAULT_QUALITY) -> tuple[np.ndarray, np.ndarray]:
    """(reference, degraded input) for image ``index`` of a set, per the protocol."""
    if task == "sr":
        return sr_pair(clean, scale)
    if task == "enhance":
        hr = mod_crop(clean, scale)
        return hr, degrade(hr, scale, np.random.default_rng(index))
    if task == "denoise":
        return clean, noisy(clean, sigma, index)
    if task == "dejpeg":
        return clean, jpeg(clean, quality)
    raise ConfigError(f"evaluate: task {task!r} is not one of {', '.join(TASKS)}")


def setting_label(task: str, dataset: str, *, sigma: float = DEFAULT_SIGMA, quality: int = DEFAULT_QUALITY) -> str:
    """How a card names one measurement: ``Set5``, ``CBSD68/sigma25``, ``Kodak24/q30``,
    ``Kodak24/degraded``; the same label in every card, fp32 or int8, whichever tool measured it."""
    if task == "denoise":
        return f"{dataset}/sigma{sigma:g}"
    if task == "dejpeg":
        return f"{dataset}/q{quality}"
    if task == "enhance":
        return f"{dataset}/degraded"
    return dataset


def bar_plan(task: str) -> list[tuple[str, str, dict]]:
    """(label, eval set, ``evaluate`` keywords besides scale) of the settings a model's card reports:
    the ones the bars are stated on (SR: Set5 / Set14 / BSD100; denoise: CBSD68 sigma 15 / 25 / 50
    and Kodak24 sigma 25, the comparison with CBM3D, 31.456 dB on this protocol with bm3d 4.0.3; dejpeg: Kodak24 q20 / 30 / 40; enhance: the
    degraded Kodak24)."""
    if task == "denoise":
        kws = [("CBSD68", {"sigma": float(s)}) for s in (15, 25, 50)] + [("Kodak24", {"sigma": 25.0})]
    elif task == "dejpeg":
        kws = [("Kodak24", {"quality": q}) for q in (20, 30, 40)]
    elif task == "enhance":
        kws = [("Kodak24", {})]
    else:
        kws = [(d, {}) for d in ("Set5", "Set14", "BSD100")]
    return [(setting_label(task, d, **kw), d, kw) for d, kw in kws]


def score(task: str, ref: np.ndarray, out: np.ndarray, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of an output against its reference, per the task's protocol."""
    if task in ("sr", "enhance"):
        y_ref, y_out = shave(rgb_to_y(ref), scale), shave(rgb_to_y(out), scale)
        return psnr(y_ref, y_out), ssim(y_ref, y_out)
    return psnr(ref, out), ssim(ref, out)


def evaluate(fn: Callable[[np.ndarray], np.ndarray], dataset_dir, task: str, *, scale: int = 2,
             sigma: float = DEFAULT_SIGMA, quality: int = DEFAULT_QUALITY, with_ssim: bool = True,
             on_image: Callable[[int, int, str], None] | None = None) -> EvalResult:
    """Run ``fn`` (RGB uint8 HxWx3 -> RGB uint8) over a folder of images and score it exactly.

    ``scale`` is used by sr / enhance, ``sigma`` by denoise, ``quality`` by dejpeg. ``on_image(index,
    count, name)`` is called as each image starts (a progress line).
    """
    if task not in TASKS:
        raise ConfigError(f"evaluate: task {task!r} is not one of {', '.join(TASKS)}")
    if task in ("sr", "enhance") and not (isinstance(scale, int) and scale >= 1):
        raise ConfigError(f"evaluate: scale {scale!r} must be a positive integer")
    if task == "dejpeg" and not 1 <= int(quality) <= 100:
        raise ConfigError(f"evaluate: JPEG quality {quality!r} must be 1..100")
    if task == "denoise" and sigma < 0:
        raise ConfigError(f"evaluate: sigma {sigma!r} must be >= 0")
    result = EvalResult(task=task, dataset=str(dataset_dir))
    s = scale if task in ("sr", "enhance") else 1
    shave_px = scale if task in ("sr", "enhance") else 0
    paths = list_images(dataset_dir)
    # The shaved reference must hold an SSIM window, with or without SSIM: --no-ssim scores the same images.
    need = 2 * shave_px + 11
    for i, path in enumerate(paths):
        if on_image:
            on_image(i, len(paths), path.name)
        clean = load_rgb(path)
        h, w = (n - n % s for n in clean.shape[:2])  # the reference's size, cropped to a multiple of the scale
        if min(h, w) < need:
            log.warning("%s: %dx%d is too small for the %s protocol (at least %dx%d); left out",
                        path, w, h, task, need, need)
            continue
        ref, inp = make_input(task, clean, i, scale=s, sigma=sigma, quality=quality)
        out = np.asarray(fn(inp))
        if out.shape != ref.shape:
            raise ConfigError(f"{path.name}: model output {out.shape} does not match the reference {ref.shape}")
        if out.dtype != np.uint8:
            raise ConfigError(f"{path.name}: model output dtype {out.dtype} is not uint8")
        base = bicubic_resize(inp, (ref.shape[1], ref.shape[0])) if s > 1 else inp
        if with_ssim:
            p, q = score(task, ref, out, shave_px)
        else:  # SSIM costs as much as a small model's inference; training logs skip it
            p, q = score_psnr(task, ref, out, shave_px), float("nan")
        result.rows.append({
            "name": path.name, "psnr": p, "ssim": q,
            "baseline_psnr": score_psnr(task, ref, base, shave_px),
        })
        log.debug("%s: %.3f dB", path.name, p)
    if not result.rows:
        raise ImageInputError(f"{dataset_dir}: no image is large enough for the {task} protocol (at least {need}x{need})")
    return result


def score_psnr(task: str, ref: np.ndarray, out: np.ndarray, scale: int) -> float:
    if task in ("sr", "enhance"):
        return psnr(shave(rgb_to_y(ref), scale), shave(rgb_to_y(out), scale))
    return psnr(ref, out)
