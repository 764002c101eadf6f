"""Numeric verification of a converted model against its ONNX source, on real images.

The source runs in onnxruntime (NCHW), the target in ai-edge-litert (NHWC) on the same inputs at
each image's own size (or cropped to the model's fixed tile). Reported per model: max abs error and
PSNR between source and target, and the task PSNR of each (SR: Y channel, border shaved, bicubic
LR as in ``../shared/data/README.md``; denoise: RGB, seeded clipped noise).

>>> r = VerifyReport("tflite", "fp32", [ImageResult("a.png", 2e-5, 120.0, 33.1, 33.1)])
>>> r.max_abs_err, round(r.psnr_between, 1)
(2e-05, 120.0)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_enhance.card import CARD_KEY, ModelCard
from edge_enhance.evaluation import list_images, shared_data  # noqa: F401  (coreml_writer imports list_images here)

from .errors import ConfigError, VerificationError
from .footprint import output_scale

log = logging.getLogger(__name__)
FP32_TOL = 1e-4
# fp16 weights (and Core ML's fp16 compute) move the bundled models' outputs by at most 0.002 on [0, 1]
# (sr-x2/x4, denoise, enhance-x2; TFLite, ONNX, Core ML): 4 pixel levels is room for deeper models, not for a
# file that overflows fp16 or was written wrong.
FP16_TOL = 4 / 255
TOLERANCE = {"fp32": FP32_TOL, "fp16": FP16_TOL}


def default_dataset() -> Path:
    """The check images when no --dataset is given: ``eval/Set5`` of the shared data
    (:func:`edge_enhance.evaluation.shared_data`), else the package's bundled sample photo (an installed
    package away from the data), said once in the log."""
    found = shared_data("eval/Set5")
    if found is not None:
        return found
    from edge_enhance.demo import SAMPLE

    log.warning("no shared/data/eval/Set5 found (set EDGE_ENHANCE_DATA or give --dataset DIR): checking on the "
                "bundled sample photo %s only", SAMPLE.name)
    return SAMPLE.parent


@dataclass(frozen=True)
class ImageResult:
    image: str
    max_abs_err: float
    psnr_between: float
    task_psnr_source: float | None
    task_psnr_target: float | None


@dataclass
class VerifyReport:
    target: str
    precision: str
    images: list = field(default_factory=list)
    source: str = "onnxruntime"

    @property
    def max_abs_err(self) -> float:
        return max(r.max_abs_err for r in self.images)

    @property
    def psnr_between(self) -> float:
        return min(r.psnr_between for r in self.images)

    def _mean(self, key):
        vals = [getattr(r, key) for r in self.images if getattr(r, key) is not None]
        return float(np.mean(vals)) if vals else None

    @property
    def task_psnr_source(self):
        return self._mean("task_psnr_source")

    @property
    def task_psnr_target(self):
        return self._mean("task_psnr_target")

    def table(self) -> str:
        rows = [("image", "max|err|", "PSNR(src,tgt)", "task PSNR src", "task PSNR tgt")]
        f = lambda v, p=2: "-" if v is None else ("inf" if v == float("inf") else f"{v:.{p}f}")
        for r in self.images:
            rows.append((r.image, f"{r.max_abs_err:.2e}", f(r.psnr_between), f(r.task_psnr_source),
                         f(r.task_psnr_target)))
        rows.append(("all", f"{self.max_abs_err:.2e}", f(self.psnr_between), f(self.task_psnr_source),
                     f(self.task_psnr_target)))
        from edge_enhance.cli import _cells, ljust_cells

        widths = [max(_cells(r[i]) for r in rows) for i in range(5)]  # a wide (CJK) character takes two columns
        head = f"verification: {self.target} {self.precision} vs {self.source}"
        return "\n".join([head] + ["  ".join(ljust_cells(c, w) for c, w in zip(r, widths)).rstrip() for r in rows])


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def _scale(card: ModelCard | None) -> int:
    """Output / input size of a carded model (upscaling tasks), else 1."""
    return card.scale if card is not None and card.task in ("sr", "enhance") else 1


def task_psnr(card: ModelCard | None, out: np.ndarray, ref: np.ndarray) -> float | None:
    """out, ref: HWC float in [0, 1]; the evaluation protocol of ../shared/data/README.md on 8-bit pixels
    (for a luma model, HW1: the PSNR of its own Y, shaved as the protocol shaves)."""
    if card is None:
        return None
    from edge_enhance.evaluation import psnr as psnr255
    from edge_enhance.evaluation import score_psnr, shave

    def u8(a):
        return np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)

    if out.shape[-1] == 1:
        s = _scale(card)
        return psnr255(shave(u8(ref)[..., 0], s), shave(u8(out)[..., 0], s))
    return score_psnr(card.task, u8(ref), u8(out), _scale(card))


def tolerance(precision: str, source) -> float | None:
    """The largest |target - source| a conversion at ``precision`` may show: fp16's where the source itself
    computes in float16 (its weights are float16), whatever the target's precision."""
    tol = TOLERANCE.get(precision)
    if tol is not None and any(i.data_type == 10 for i in source.graph.initializer):  # FLOAT16
        tol = max(tol, FP16_TOL)
    return tol


def source_io(onnx_model) -> tuple[bool, int, tuple | None]:
    """(NHWC?, colour channels, fixed (h, w) or None) of an ONNX model's image input: NCHW unless the
    last axis holds 1 or 3 channels and the second does not (tf2onnx's NHWC exports)."""
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4:
        return False, 3, None
    nhwc = dims[3] in (1, 3) and dims[1] not in (1, 3)
    c, hw = (dims[3], dims[1:3]) if nhwc else (dims[1], dims[2:4])
    return nhwc, 1 if c == 1 else 3, tuple(hw) if None not in hw else None


def make_pairs(card: ModelCard | None, files, *, crop: tuple | None = None, max_images: int | None = None,
               channels: int = 3):
    """(name, model_input HWC float, reference HWC float or None) per image: the task's degradation of
    the protocol (edge_enhance.evaluation.make_input, image i seeded by its index), ``crop`` an input HxW.
    Inputs are cropped (bottom / right) to multiples of the card's ``align``, as the model needs.
    ``channels`` 1: a luma model's, the Y (edge_enhance.ycbcr) of each, on 8-bit levels as a grayscale
    image would give it (so Core ML image I/O sees the same input)."""
    from edge_enhance.evaluation import load_rgb, make_input
    from edge_enhance.ycbcr import rgb_to_ycbcr

    def f32(a):
        return (np.rint(rgb_to_ycbcr(a, 255)[..., :1]) if channels == 1 else a.astype(np.float32)) / np.float32(255)

    s = _scale(card)
    for i, p in enumerate(files[:max_images]):
        clean = load_rgb(p)
        if crop is not None:
            clean = clean[: crop[0] * s, : crop[1] * s]
        if card is None:
            yield p.name, f32(clean), None
            continue
        ref, x = make_input(card.task, clean, i, scale=s, sigma=float(card.extra.get("sigma", 25)))
        h, w = x.shape[0] // card.align * card.align, x.shape[1] // card.align * card.align
        yield p.name, f32(x[:h, :w]), f32(ref[: h * s, : w * s])


def _tflite_runner(path):
    """The file as the runtime runs it, in the runtime's engine (ai-edge-litert, else tflite-runtime...):
    integer I/O quantised / dequantised by the LiteRT backend's helpers."""
    from edge_enhance.backends.litert import dequantise_io, open_interpreter, quantise_io, without_xnnpack_notice
    from edge_enhance.errors import BackendUnavailableError

    try:
        it = open_interpreter(path)
    except BackendUnavailableError as e:
        raise BackendUnavailableError(f"the converted {Path(path).name} is verified in a TFLite engine before it is "
                                      f"written: {e}. Windows on ARM has none: convert on another machine or under "
                                      "WSL, choose --to onnx, or write it unchecked with --no-verify") from None
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    sig = list(d.get("shape_signature", d["shape"]))  # a dynamic batch alone (-1 first) leaves H, W fixed
    fixed = None if -1 in sig[1:3] else tuple(int(v) for v in d["shape"][1:3])

    def run(x_hwc):
        x = quantise_io(x_hwc[None], d)
        it.resize_tensor_input(d["index"], list(x.shape))
        with without_xnnpack_notice():
            it.allocate_tensors()
        it.set_tensor(d["index"], x)
        it.invoke()
        return dequantise_io(it.get_tensor(o["index"]), o)[0]

    return run, fixed


def _ort_runner(onnx_model):
    import onnxruntime as ort

    import onnx

    model = onnx_model if hasattr(onnx_model, "SerializeToString") else onnx.load(str(onnx_model))
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    dtype = np.float16 if s.get_inputs()[0].type == "tensor(float16)" else np.float32  # a .half() export's I/O

    def run(x):
        return s.run(None, {name: np.ascontiguousarray(x, dtype)})[0].astype(np.float32, copy=False)

    if source_io(model)[0]:  # NHWC in and out
        return lambda x_hwc: run(x_hwc[None])[0]
    return lambda x_hwc: run(x_hwc.transpose(2, 0, 1)[None])[0].transpose(1, 2, 0)


def _card_of(onnx_model):
    props = {p.key: p.value for p in onnx_model.metadata_props} if hasattr(onnx_model, "metadata_props") else {}
    if CARD_KEY not in props:
        return None
    return ModelCard.from_json(props[CARD_KEY])


def compare(name_target: str, precision: str, source_fn, target_fn, card, files, *, crop=None, max_images=None,
            tol: float | None = None, source: str = "onnxruntime", channels: int = 3, pad: bool = False) -> VerifyReport:
    """Run both callables (HWC float -> HWC float) over the images; raise if beyond ``tol``. Inputs
    go in on the card's input range; outputs, errors and ``tol`` are on [0, 1]. ``pad``: an input
    smaller than ``crop`` is reflect-padded at its bottom / right up to it, as the runtime runs a
    fixed-shape model on a small image, and the outputs are compared on the image's own part."""
    from edge_enhance.tiling import extract

    rep = VerifyReport(name_target, precision, source=source)
    lo, hi = card.input_range if card is not None else (0.0, 1.0)
    for name, x, ref in make_pairs(card, files, crop=crop, max_images=max_images, channels=channels):
        h, w = x.shape[:2]
        if pad:
            x = extract(x, 0, 0, *crop)
        xm = x * np.float32(hi - lo) + np.float32(lo)
        a, b = ((f(xm) - lo) / (hi - lo) for f in (source_fn, target_fn))
        if a.shape != b.shape:
            raise VerificationError(f"{name_target}: output shape {b.shape} differs from the source's {a.shape}")
        if not np.isfinite(b).all() and np.isfinite(a).all():  # fp16 overflow: any precision fails on it
            raise VerificationError(f"{name_target} {precision}: the output holds inf / NaN on {name} where the "
                                    "source's is finite (values past the precision's range)")
        s = output_scale(f"{name_target}: the source", x.shape[:2], a.shape[:2], _scale(card) if card else None)
        a, b = a[: h * s, : w * s], b[: h * s, : w * s]
        err = float(np.abs(a.astype(np.float64) - b).max())
        rep.images.append(ImageResult(name, err, psnr(a, b), task_psnr(card, a, ref) if ref is not None else None,
                                      task_psnr(card, b, ref) if ref is not None else None))
        log.info("%s: max abs err %.3g", name, err)
    if not rep.images:
        raise ConfigError(f"{name_target}: no image to verify on ({len(files)} given, max_images {max_images})")
    if tol is not None and rep.max_abs_err > tol:
        raise VerificationError(
            f"{name_target} {precision}: max abs error {rep.max_abs_err:.3g} exceeds {tol:g} "
            f"(worst image {max(rep.images, key=lambda r: r.max_abs_err).image})")
    return rep


def verify_tflite(onnx_model, tflite_path, *, precision: str = "fp32", dataset=None, max_images: int | None = None,
                  crop: tuple | None = None, tol: float | None = None) -> VerifyReport:
    """onnxruntime vs LiteRT on real images. fp32 must agree within 1e-4, fp16 within 4/255 (``VerificationError``).

    ``crop`` (h, w) limits the model-input size (fast checks); fixed-tile models use their tile.
    """
    import onnx

    model = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
    card = _card_of(model)
    target, fixed = _tflite_runner(tflite_path)
    files, crop, card = _for_shape(list_images(dataset or default_dataset()), fixed, card, crop)
    if tol is None:
        tol = tolerance(precision, model)
    return compare("tflite", precision, _ort_runner(model), target, card, files, crop=crop, max_images=max_images,
                   tol=tol, channels=source_io(model)[1])


def _for_shape(files, fixed, card, crop):
    """(files, crop, card) for a model whose input is fixed at ``fixed`` (h, w), else as given: every
    input must be exactly the tile, so smaller images are skipped. A tile too large for the task's
    protocol (an x3 model fixed at 224x224 needs 672-pixel originals) is verified on the images
    themselves, without the task's degradation and its PSNR (card None)."""
    if fixed is None:
        return files, crop, card
    fitting = [f for f in files if _fits(f, fixed, card)]
    if not fitting and card is not None:
        fitting, card = [f for f in files if _fits(f, fixed, None)], None
        if fitting:
            log.warning("no image is large enough for the model's %dx%d tile under its task's protocol; "
                        "verifying on the images as they are (no task PSNR)", *fixed)
    if not fitting:
        raise ConfigError(f"no image in the dataset is at least the model's tile {fixed}")
    return fitting, fixed, card


def _fits(path, tile, card):
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    s = _scale(card)
    return h // s >= tile[0] and w // s >= tile[1]


def verify_onnx(onnx_model, target_path, *, precision: str = "fp32", dataset=None, max_images: int | None = None,
                crop: tuple | None = None, tol: float | None = None) -> VerifyReport:
    """onnxruntime on the source vs onnxruntime on the rewritten ONNX."""
    import onnx

    model = onnx_model if isinstance(onnx_model, onnx.ModelProto) else onnx.load(str(onnx_model))
    if tol is None:
        tol = tolerance(precision, model)
    _, channels, fixed = source_io(model)
    files, crop, card = _for_shape(list_images(dataset or default_dataset()), fixed, _card_of(model), crop)
    return compare("onnx", precision, _ort_runner(model), _ort_runner(target_path), card, files, crop=crop,
                   max_images=max_images, tol=tol, channels=channels)
