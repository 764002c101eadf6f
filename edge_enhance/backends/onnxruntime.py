"""ONNX Runtime engine."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..card import CARD_KEY, ModelCard
from ..errors import BackendUnavailableError, ModelFormatError
from . import Backend, EngineOptions, register


@functools.lru_cache(maxsize=1)
def _ort():
    try:
        import onnxruntime

        return onnxruntime
    except ImportError:
        raise BackendUnavailableError("ONNX Runtime is not installed: pip install 'edge-enhance[onnx]'") from None


@register
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extra = "onnx"

    @staticmethod
    def sniff(path: Path, head: bytes) -> bool:
        # A ModelProto starts with a field tag: ir_version (0x08) in every exporter we know of.
        return path.is_file() and head[:1] == b"\x08" and head[4:8] != b"TFL3"

    @staticmethod
    def read_card(path: Path) -> ModelCard | None:
        return OnnxRuntimeBackend(path, EngineOptions(threads=1)).card

    def __init__(self, path: Path, options: EngineOptions = EngineOptions()):
        ort = _ort()
        self.path = Path(path)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        providers = list(options.providers) or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here lacks {', '.join(missing)}; available: {', '.join(ort.get_available_providers())}"
            )
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # ORT raises its own exception types for every kind of bad file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelFormatError(f"{path}: ONNX Runtime cannot load this model: {msg}") from None
        raw = self.sess.get_modelmeta().custom_metadata_map.get(CARD_KEY)
        self.card = ModelCard.from_json(raw, str(path)) if raw is not None else None
        ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFormatError(f"{path}: expected one input and one output, found {len(ins)} and {len(outs)}")
        self._in_name, self._out_name = ins[0].name, outs[0].name
        shape = ins[0].shape
        self.layout = self.card.layout if self.card else ("nchw" if len(shape) == 4 and shape[1] == 3 else "nhwc")
        if len(shape) != 4:
            raise ModelFormatError(f"{path}: input shape {shape} is not 4-D")
        hw = shape[2:4] if self.layout == "nchw" else shape[1:3]
        self.fixed_shape = tuple(hw) if all(isinstance(d, int) for d in hw) else None
        if ins[0].type != "tensor(float)":
            raise ModelFormatError(f"{path}: input type {ins[0].type} is not float32")

    def prepare(self, h: int, w: int) -> None:
        if self.fixed_shape and self.fixed_shape != (h, w):
            raise ModelFormatError(f"{self.path}: model input is fixed at {self.fixed_shape}, asked for {(h, w)}")

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (y,) = self.sess.run([self._out_name], {self._in_name: x.astype(np.float32, copy=False)})
        return y.transpose(0, 2, 3, 1) if self.layout == "nchw" else y

    def activation_bytes_per_pixel(self) -> float:
        # ORT does not expose intermediate shapes; count the widest layer twice (input and output of a
        # conv are live together) plus the model's I/O, as float32, and 1.5x for the arena's slack.
        width = int((self.card.extra.get("max_channels") if self.card else None) or 64)
        s = self.card.scale if self.card else 1
        return 1.5 * 4 * (2 * width + 3 + 3 * s * s)
