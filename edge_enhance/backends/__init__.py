"""Engines behind one small protocol, chosen by sniffing the model file.

A backend takes float32 NHWC RGB tiles in the model's input range and returns float32 NHWC; each
one hides its own layout (NCHW ONNX), dtype (int8 / uint8 TFLite I/O) and resizing.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..card import ModelCard
from ..errors import ConfigError, ModelFormatError

log = logging.getLogger(__name__)

BACKENDS: dict[str, type["Backend"]] = {}


def register(cls):
    if cls.name in BACKENDS:
        raise ValueError(f"backend {cls.name!r} registered twice")
    BACKENDS[cls.name] = cls
    return cls


MAX_THREADS = 1024  # an engine's threads are OS threads: 100,000 of them took 16 GB or crashed the process


@dataclass(frozen=True)
class EngineOptions:
    threads: int | None = None
    delegate: str | None = None  # path of a TFLite external delegate library
    delegate_options: tuple[tuple[str, str], ...] = ()
    fallback_cpu: bool = False  # if the delegate cannot load, warn and run on the CPU
    providers: tuple[str, ...] = ()  # ONNX Runtime execution providers, in order

    def __post_init__(self):
        if self.threads is not None and not (isinstance(self.threads, int) and 1 <= self.threads <= MAX_THREADS):
            raise ConfigError(f"threads must be an integer from 1 to {MAX_THREADS}, got {self.threads!r} "
                              f"(this machine has {os.cpu_count()} CPUs)")


class Backend:
    """Protocol. Subclasses set `name`, `extra` and implement sniff / __init__ / prepare / run."""

    name: ClassVar[str]
    extra: ClassVar[str]  # the pip extra that installs this engine

    path: Path
    card: ModelCard | None
    fixed_shape: tuple[int, int] | None  # (h, w) the model's input is frozen at, if any

    @staticmethod
    def sniff(path: Path, head: bytes) -> bool:
        raise NotImplementedError

    def prepare(self, h: int, w: int) -> None:
        """Set the input spatial size once per run (the interpreter is resized at most once)."""
        raise NotImplementedError

    def run(self, x: np.ndarray) -> np.ndarray:
        """x: float32 (1, h, w, 3) at the prepared size. Returns float32 (1, h*s, w*s, 3)."""
        raise NotImplementedError

    def activation_bytes_per_pixel(self) -> float:
        """Memory the engine needs per input pixel of a tile (for --tile auto)."""
        raise NotImplementedError


def _import_all():
    # Imported here, not at package import, so each engine module stays lazy about its engine.
    from . import coreml, litert, onnxruntime  # noqa: F401


def sniff_format(path: Path) -> str:
    """Name of the backend that reads `path`, from its magic bytes (the extension is not trusted)."""
    _import_all()
    path = Path(path)
    if not path.exists():
        raise ModelFormatError(f"{path}: no such model file")
    head = b""
    if path.is_file():
        try:
            with open(path, "rb") as f:
                head = f.read(64)
        except OSError as e:
            raise ModelFormatError(f"{path}: cannot read model file ({e.strerror})") from None
        if not head:
            raise ModelFormatError(f"{path}: model file is empty")
    for name, cls in BACKENDS.items():
        if cls.sniff(path, head):
            return name
    raise ModelFormatError(
        f"{path}: not a model this runtime knows (expected a .tflite flatbuffer, an ONNX protobuf "
        "or a Core ML .mlpackage / .mlmodel)"
    )


def open_backend(path, options: EngineOptions = EngineOptions(), engine: str | None = None) -> Backend:
    path = Path(path)
    name = sniff_format(path)
    if engine is not None and engine != name:
        if engine not in BACKENDS:
            raise ConfigError(f"unknown engine {engine!r}; known: {', '.join(BACKENDS)}")
        raise ConfigError(f"{path}: --engine {engine} cannot run it: the file is {_FORMATS[name]}, which "
                          f"the {name} engine runs")
    return BACKENDS[name](path, options)


_FORMATS = {"litert": "TFLite", "onnxruntime": "ONNX", "coreml": "Core ML"}


def read_card(path) -> ModelCard | None:
    """The card embedded in a model file, without starting an engine where the format allows."""
    _import_all()
    name = sniff_format(Path(path))
    return BACKENDS[name].read_card(Path(path))
