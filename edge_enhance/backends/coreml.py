"""Core ML engine (macOS only for prediction; the card is readable anywhere coremltools installs)."""
from __future__ import annotations

import functools
import logging
import platform
import signal
import threading
from pathlib import Path

import numpy as np

from ..card import CARD_KEY, ModelCard
from ..errors import BackendUnavailableError, ModelFormatError
from . import Backend, EngineOptions, register


def import_coremltools():
    """``import coremltools`` (ImportError if absent) without its import-time warnings, unless -vv: off
    macOS it cannot load its native runtime and says so four to six times, and it warns about any torch
    newer than it was tested with; neither matters to reading, writing or converting models."""
    quiet = not logging.getLogger("edge_enhance").isEnabledFor(logging.DEBUG)
    ct_log = logging.getLogger("coremltools")
    level = ct_log.level
    if quiet:
        ct_log.setLevel(logging.ERROR)
    # Its import (a second or more) swallows a Ctrl-C that lands inside it: hold the signal, raise it after.
    held, old = [], None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGINT, lambda *_: held.append(1))
    try:
        import coremltools
    finally:
        ct_log.setLevel(level)
        if old is not None:
            signal.signal(signal.SIGINT, old)
    if held:
        raise KeyboardInterrupt
    return coremltools


@functools.lru_cache(maxsize=1)
def _ct():
    try:
        return import_coremltools()
    except ImportError:
        raise BackendUnavailableError("coremltools is not installed: pip install 'edge-enhance[coreml]'") from None


def _spec_card(path: Path):
    try:
        model = _ct().models.MLModel(str(path), skip_model_load=True)
    except Exception as e:  # coremltools raises bare Exceptions for unreadable packages
        raise ModelFormatError(f"{path}: not a readable Core ML model ({e})") from None
    raw = model.user_defined_metadata.get(CARD_KEY)
    return (ModelCard.from_json(raw, str(path)) if raw else None), model


def spec_channels(spec, layout: str = "nchw") -> int:
    """Colour channels of a Core ML model's input: 1 for a grayscale image or a 1-channel tensor, else 3."""
    t = spec.description.input[0].type
    if t.WhichOneof("Type") == "imageType":
        return 1 if t.imageType.colorSpace == t.imageType.GRAYSCALE else 3
    shape = list(t.multiArrayType.shape)
    return 1 if len(shape) == 4 and shape[1 if layout == "nchw" else 3] == 1 else 3


@register
class CoreMLBackend(Backend):
    name = "coreml"
    extra = "coreml"

    @staticmethod
    def sniff(path: Path, head: bytes) -> bool:
        if path.is_dir():
            return (path / "Manifest.json").is_file()
        return path.suffix == ".mlmodel" and path.is_file()  # not a FIFO or a device that would be read forever

    @staticmethod
    def read_card(path: Path) -> ModelCard | None:
        return _spec_card(path)[0]

    def __init__(self, path: Path, options: EngineOptions = EngineOptions()):
        self.path = Path(path)
        if platform.system() != "Darwin":
            raise BackendUnavailableError(
                f"{path}: Core ML models run only on macOS; convert the ONNX model to .tflite for this machine"
            )
        self.card, _ = _spec_card(self.path)
        self.model = _ct().models.MLModel(str(self.path))
        spec = self.model.get_spec()
        self._in = spec.description.input[0].name
        self._out = spec.description.output[0].name
        # Image I/O models (convert --io image) take and give 8-bit pixels; their card's input_range is 0..255.
        self._image = spec.description.input[0].type.WhichOneof("Type") == "imageType"
        self.layout = self.card.layout if self.card else "nchw"
        self.channels = spec_channels(spec, self.layout)
        self.fixed_shape = tuple(self.card.tile) if self.card and self.card.tile else None

    def prepare(self, h: int, w: int) -> None:
        if self.fixed_shape and self.fixed_shape != (h, w):
            raise ModelFormatError(f"{self.path}: model input is fixed at {self.fixed_shape}, asked for {(h, w)}")

    def run(self, x: np.ndarray) -> np.ndarray:
        if self._image:
            from PIL import Image

            px = np.clip(np.rint(x[0]), 0, 255).astype(np.uint8)
            img = Image.fromarray(px[..., 0] if px.shape[-1] == 1 else px, "L" if px.shape[-1] == 1 else "RGB")
            y = np.asarray(self.model.predict({self._in: img})[self._out], dtype=np.float32)
            return y.reshape(1, y.shape[0], y.shape[1], -1)
        if self.layout == "nchw":
            x = x.transpose(0, 3, 1, 2)
        y = np.asarray(self.model.predict({self._in: x})[self._out], dtype=np.float32)
        return y.transpose(0, 2, 3, 1) if self.layout == "nchw" else y

    def activation_bytes_per_pixel(self) -> float:
        s = self.card.scale if self.card else 1
        return 1.5 * 4 * (2 * 64 + self.channels * (1 + s * s))
