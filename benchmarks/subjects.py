"""What gets benchmarked: our models per engine and precision, and the peers, behind one shape.

A :class:`Subject` makes, for a thread count, a function RGB uint8 H x W x 3 -> RGB uint8. Our
models run through :class:`edge_enhance.enhancer.Enhancer` (the path a user's photo takes, tiling
included); peers run through their own library exactly as a user would call it.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edge_enhance.errors import EdgeEnhanceError

from .stats import macs_per_output_pixel

log = logging.getLogger(__name__)

Fn = Callable[[np.ndarray], np.ndarray]

ENGINE_LABELS = {"litert": "LiteRT XNNPACK", "onnxruntime": "ONNX Runtime", "opencv": "OpenCV dnn",
                 "pillow": "Pillow", "bm3d": "bm3d"}

# MACs per *input* (LR) pixel of the peers' published architectures, all on the Y channel only:
# ESPCN (Shi 2016): 5x5 1->64, 3x3 64->32, 3x3 32->s^2.
# FSRCNN(d=56, s=12, m=4) and FSRCNN-s(d=32, s=5, m=1) (Dong 2016): 5x5 1->d, 1x1 d->s, m x 3x3 s->s,
# 1x1 s->d, 9x9 deconvolution d->1 (each LR pixel scatters 81*d MACs).
def _espcn_macs(s: int) -> int:
    return 25 * 64 + 9 * 64 * 32 + 9 * 32 * s * s


def _fsrcnn_macs(d: int, sh: int, m: int) -> int:
    return 25 * d + d * sh + m * 9 * sh * sh + sh * d + 81 * d


def _lapsrn_macs(s: int) -> int:
    """LapSRN as exported for OpenCV (TF-LapSRN): x2 levels in cascade, each on the image the one before
    gave (level k at 4^k times the LR pixels): 3x3 1->64, 9 x 3x3 64->64, then 4x4 64->4 (residual) and
    4x4 1->4 (image), both DepthToSpace x2. x2 / x4 / x8 files hold 1 / 2 / 3 levels (no x3)."""
    level = 9 * 64 + 9 * 9 * 64 * 64 + 16 * 64 * 4 + 16 * 4
    return level * sum(4 ** k for k in range(s.bit_length() - 1))


PEERS = {  # label -> (file stem, dnn_superres algorithm, MACs per LR pixel as f(scale))
    "ESPCN": ("ESPCN", "espcn", _espcn_macs),
    "FSRCNN": ("FSRCNN", "fsrcnn", lambda s: _fsrcnn_macs(56, 12, 4)),
    "FSRCNN-small": ("FSRCNN-small", "fsrcnn", lambda s: _fsrcnn_macs(32, 5, 1)),
    "LapSRN": ("LapSRN", "lapsrn", _lapsrn_macs),
}


@dataclass
class Subject:
    label: str  # unique, shown in tables: "sr-x2 LiteRT int8"
    model: str  # model or peer name: "sr-x2", "FSRCNN x2", "bicubic x2"
    ours: bool
    engine: str
    precision: str  # fp32 | fp16 | int8 | "-" (not a network)
    task: str
    scale: int
    macs_per_out_px: float | None
    threaded: bool  # whether the engine takes a thread count
    factory: Callable[[int | None], Fn] = field(repr=False)
    path: str | None = None
    datasets: tuple[str, ...] | None = None  # quality: only these sets (None: the task's usual ones)
    timed: bool = True  # False: quality only (too slow for the speed section's interleaved runs)

    def make(self, threads: int | None = None) -> Fn:
        return self.factory(threads if self.threaded else None)

    def row(self) -> dict:
        return {"label": self.label, "model": self.model, "ours": self.ours, "engine": self.engine,
                "precision": self.precision, "task": self.task, "scale": self.scale,
                "macs_per_out_px": self.macs_per_out_px, "path": self.path}


@dataclass
class NotRun:
    what: str
    reason: str

    def row(self) -> dict:
        return {"what": self.what, "status": "not run", "reason": self.reason}


# -- our models ------------------------------------------------------------------------------------
def tflite_precision(path: Path) -> str:
    """int8 if any tensor is int8 (a full-integer model), fp16 if weights are float16, else fp32."""
    from edge_enhance.backends.litert import open_interpreter

    it = open_interpreter(path)
    dtypes = {np.dtype(t["dtype"]) for t in it.get_tensor_details()}
    if np.dtype(np.int8) in dtypes:
        return "int8"
    return "fp16" if np.dtype(np.float16) in dtypes else "fp32"


def onnx_precision(path: Path) -> str:
    """int8 for a QDQ / integer-op ONNX model, else fp32 (by the file's ops, not its name)."""
    try:
        import onnx
    except ImportError:
        return "int8" if ".int8." in path.name else "fp32"
    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "int8" if ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger"} else "fp32"


def _enhancer_factory(path: Path, engine: str) -> Callable[[int | None], Fn]:
    def make(threads):
        from edge_enhance.enhancer import Enhancer

        return Enhancer(path, engine=engine, threads=threads).enhance_rgb
    return make


def model_subject(path: Path) -> Subject:
    """A Subject for one model file; raises EdgeEnhanceError when it cannot be opened."""
    from edge_enhance.backends import read_card, sniff_format

    path = Path(path)
    engine = sniff_format(path)
    card = read_card(path)
    if card is None:
        raise EdgeEnhanceError(f"{path}: model has no card (edge_enhance.card metadata); cannot benchmark it")
    if engine == "litert":
        precision = tflite_precision(path)
    elif engine == "onnxruntime":
        precision = onnx_precision(path)
    else:
        precision = "fp32"
    macs = macs_per_output_pixel(card.macs_per_pixel, card.scale) if card.macs_per_pixel else None
    label = f"{card.name} {ENGINE_LABELS.get(engine, engine)} {precision}"
    return Subject(label, card.name, True, engine, precision, card.task, card.scale, macs,
                   threaded=True, factory=_enhancer_factory(path, engine), path=str(path))


MODEL_SUFFIXES = (".onnx", ".tflite")


def model_files(items: list[str] | None) -> tuple[list[Path], list[NotRun]]:
    """Files named by --models (bundled names, files or folders); the bundled models by default."""
    from edge_enhance.models import bundled

    table = bundled()
    if not items:
        return [f for files in table.values() for f in files], []
    out, missing = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in MODEL_SUFFIXES and f.is_file())
            out += found
            if not found:
                missing.append(NotRun(item, "folder holds no .onnx / .tflite model"))
        elif p.is_file():
            out.append(p)
        elif item in table:
            out += table[item]
        else:
            missing.append(NotRun(item, "no such file, folder or bundled model"))
    return list(dict.fromkeys(out)), missing


def derive_fp32_tflite(onnx_path: Path, cache: Path) -> Path:
    """fp32 TFLite converted from an ONNX model (cached in ``cache``) so the two engines compare."""
    from conversion.onnx_import import from_onnx
    from conversion.tflite_writer import to_tflite

    cache.mkdir(parents=True, exist_ok=True)
    dst = cache / (onnx_path.stem + ".fp32.tflite")
    if not dst.exists() or dst.stat().st_mtime < onnx_path.stat().st_mtime:
        to_tflite(from_onnx(str(onnx_path)), dst, precision="fp32")
    return dst


def our_subjects(items: list[str] | None, cache: Path) -> tuple[list[Subject], list[NotRun]]:
    files, notes = model_files(items)
    subjects: list[Subject] = []
    seen: dict[str, str] = {}
    for f in files:
        try:
            sub = model_subject(f)
        except (EdgeEnhanceError, OSError) as e:
            notes.append(NotRun(str(f), str(e)))
            continue
        if sub.label in seen:  # two files of one model, engine and precision: time the first only
            notes.append(NotRun(str(f), f"same model, engine and precision as {seen[sub.label]}"))
            continue
        seen[sub.label] = str(f)
        subjects.append(sub)
    have = {(s.model, s.engine, s.precision) for s in subjects}
    for s in list(subjects):
        if s.engine == "onnxruntime" and s.precision == "fp32" and (s.model, "litert", "fp32") not in have:
            try:
                subjects.append(model_subject(derive_fp32_tflite(Path(s.path), cache)))
                have.add((s.model, "litert", "fp32"))
            except Exception as e:  # a converter refusal is a finding to report, not a crash
                notes.append(NotRun(f"{s.model} LiteRT fp32", f"ONNX -> TFLite conversion failed: {e}"))
    for name in sorted({s.model for s in subjects}):
        if (name, "litert", "int8") not in {(s.model, s.engine, s.precision) for s in subjects}:
            notes.append(NotRun(f"{name} LiteRT int8", "no int8 TFLite file of this model was given or bundled"))
        if (name, "onnxruntime", "int8") not in {(s.model, s.engine, s.precision) for s in subjects}:
            notes.append(NotRun(f"{name} ONNX Runtime int8", "no int8 ONNX file of this model was given or bundled"))
        if sys.platform != "darwin":
            notes.append(NotRun(f"{name} Core ML", "Core ML predict() runs only on macOS"))
    # Stable order: by model name, then engine, then precision.
    subjects.sort(key=lambda s: (s.model, s.engine, s.precision))
    return subjects, notes


# -- peers -----------------------------------------------------------------------------------------
def bicubic_subject(scale: int) -> Subject:
    from edge_enhance.evaluation import bicubic_resize

    def make(_threads):
        return lambda rgb: bicubic_resize(rgb, (rgb.shape[1] * scale, rgb.shape[0] * scale))
    return Subject(f"bicubic x{scale}", f"bicubic x{scale}", False, "pillow", "-", "sr", scale, None,
                   threaded=False, factory=make)


def _read_model(cv2, sr, pb: Path) -> None:
    """``sr.readModel(pb)`` without OpenCV 5's log noise: its new TF importer logs an ERROR on LapSRN's
    DepthToSpace and hands the graph to the old importer, which reads it."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    level = logging.getLogLevel() if logging else None
    if logging:
        logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        sr.readModel(str(pb))
    finally:
        if logging:
            logging.setLogLevel(level)


def opencv_subjects(peer_dir: Path | None, scales: list[int]) -> tuple[list[Subject], list[NotRun]]:
    if importlib.util.find_spec("cv2") is None:
        return [], [NotRun("OpenCV dnn_superres peers", "cv2 is not installed (pip install opencv-contrib-python-headless)")]
    import cv2

    if not hasattr(cv2, "dnn_superres"):
        return [], [NotRun("OpenCV dnn_superres peers", "this cv2 lacks dnn_superres (needs opencv-contrib)")]
    if peer_dir is None or not Path(peer_dir).is_dir():
        return [], [NotRun("OpenCV dnn_superres peers", f"peer model folder {peer_dir} not found (--peers)")]
    subjects, notes = [], []
    for scale in scales:
        for label, (stem, algo, macs) in PEERS.items():
            pb = Path(peer_dir) / f"{stem}_x{scale}.pb"
            if not pb.is_file():
                notes.append(NotRun(f"OpenCV {label} x{scale}", f"{pb} not found"))
                continue
            try:  # read once here: a truncated or empty .pb is one peer left out, not the run lost
                _read_model(cv2, cv2.dnn_superres.DnnSuperResImpl_create(), pb)
            except cv2.error as e:
                why = (str(e).strip().splitlines() or ["OpenCV error"])[-1]
                notes.append(NotRun(f"OpenCV {label} x{scale}", f"{pb}: unreadable ({why})"))
                continue

            def make(threads, pb=pb, algo=algo, scale=scale):
                sr = cv2.dnn_superres.DnnSuperResImpl_create()
                _read_model(cv2, sr, pb)
                sr.setModel(algo, scale)
                n = threads or os.cpu_count() or 1

                def fn(rgb):
                    cv2.setNumThreads(n)  # global in OpenCV: set on every call, contenders interleave
                    return np.ascontiguousarray(sr.upsample(np.ascontiguousarray(rgb[..., ::-1]))[..., ::-1])
                return fn
            subjects.append(Subject(f"OpenCV {label} x{scale}", f"{label} x{scale}", False, "opencv", "fp32", "sr",
                                    scale, macs(scale) / (scale * scale), threaded=True, factory=make, path=str(pb)))
    return subjects, notes


def bm3d_subjects(tasks: set[str]) -> tuple[list[Subject], list[NotRun]]:
    if not tasks & {"denoise"}:
        return [], []
    if importlib.util.find_spec("bm3d") is None:
        return [], [NotRun("CBM3D", "the bm3d package is not installed")]

    def make(_threads, sigma=25.0):
        import bm3d

        def fn(rgb):
            out = bm3d.bm3d_rgb(rgb.astype(np.float32) / 255.0, sigma / 255.0)
            return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
        return fn
    # Tens of seconds per Kodak image: judged on Kodak24 only (the set the denoise bar names), not timed.
    return [Subject("CBM3D sigma 25", "CBM3D", False, "bm3d", "-", "denoise", 1, None, threaded=False,
                    factory=make, datasets=("Kodak24",), timed=False)], []


def peer_subjects(peer_dir: Path | None, tasks: set[str], scales: list[int],
                  slow: bool = False) -> tuple[list[Subject], list[NotRun]]:
    subjects: list[Subject] = []
    notes: list[NotRun] = []
    if "sr" in tasks:
        subjects += [bicubic_subject(s) for s in scales]
        s2, n2 = opencv_subjects(peer_dir, scales)
        subjects += s2
        notes += n2
    if slow:
        s3, n3 = bm3d_subjects(tasks)
        subjects, notes = subjects + s3, notes + n3
    elif "denoise" in tasks:
        notes.append(NotRun("CBM3D", "runs with --slow only (about a minute per Kodak image on two cores)"))
    return subjects, notes
