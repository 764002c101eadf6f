"""LiteRT (TFLite) engine: ai-edge-litert, else tflite_runtime, else tensorflow.lite."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import threading
from pathlib import Path

import numpy as np

from ..card import CARD_KEY, MAX_TILE_PIXELS, ModelCard, check_channels
from ..errors import BackendUnavailableError, EdgeEnhanceError, ModelFormatError
from ..tiling import round_up
from . import Backend, EngineOptions, register
from .tflite_meta import read_metadata, verify_graph

log = logging.getLogger(__name__)


def _check_delegate_library(path: str) -> None:
    """Load the library ourselves first: LiteRT's Delegate, failing on a missing file or a library
    without the external-delegate entry point, prints a second, confusing traceback from its __del__."""
    import ctypes

    lib = ctypes.CDLL(path)  # OSError names the file and the loader's reason
    if not hasattr(lib, "tflite_plugin_create_delegate"):
        raise ValueError("not a TFLite external delegate (no tflite_plugin_create_delegate)")


_notice_done = False
# Held while stderr is on /dev/null: another thread's allocation waits for the first to have printed the
# notice there (with the flag set on entry, a second thread's allocation ran unredirected and printed it).
_notice_lock = threading.Lock()


@contextlib.contextmanager
def without_xnnpack_notice():
    """LiteRT's C++ logger writes "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to stderr, once
    per process, at the first allocation: a line `-q` and scripts should not get. Allocations run with
    stderr on /dev/null (errors come back as exceptions, not on stderr), one at a time, until one has
    succeeded; -vv keeps the notice."""
    global _notice_done
    if _notice_done or log.isEnabledFor(logging.DEBUG):
        yield
        return
    with _notice_lock:
        if _notice_done:  # another thread's allocation printed it while this one waited
            yield
            return
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
            _notice_done = True
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)


@functools.lru_cache(maxsize=1)
def interpreter_module():
    """(module with Interpreter and load_delegate, its name); cached, never run at import."""
    try:
        from ai_edge_litert import interpreter as m

        return m, "ai-edge-litert"
    except ImportError:
        pass
    try:
        import importlib.util

        if importlib.util.find_spec("tflite_runtime") is not None:  # checked first: the import itself misfires
            import numpy

            clash = numpy_clash(numpy.__version__, _engine_version("tflite-runtime"))
            if clash:
                raise BackendUnavailableError(clash)
        import tflite_runtime.interpreter as m  # Raspberry Pi OS with numpy < 2

        return m, "tflite-runtime"
    except ImportError:
        pass
    try:
        import tensorflow.lite as m  # last resort; the project itself never needs TensorFlow

        return m, "tensorflow"
    except ImportError:
        raise BackendUnavailableError(
            "no TFLite engine installed: pip install 'edge-enhance[litert]' (ai-edge-litert), or where only "
            "tflite-runtime installs (32-bit Raspberry Pi OS; Python <= 3.11): "
            "pip install 'edge-enhance[tflite-runtime]', which keeps numpy below 2 as it needs"
        ) from None


def open_interpreter(path, **kw):
    """An Interpreter of the runtime's engine on the file at ``path``, opened from its bytes: TFLite opens a
    path with the narrow fopen, which fails on Windows for a name outside the ANSI code page."""
    m, _ = interpreter_module()
    return m.Interpreter(model_content=Path(path).read_bytes(), **kw)


def numpy_clash(numpy_version: str, tflite_runtime_version: str) -> str | None:
    """Why tflite-runtime cannot run beside this numpy, or None: every tflite-runtime release (the last,
    2.14, included) is built against numpy 1, and under numpy 2 it fails inside its first call."""
    try:
        np_major = int(numpy_version.split(".")[0])
        tr = tuple(int(v) for v in tflite_runtime_version.split(".")[:2])
    except ValueError:
        return None  # a version we cannot read: let the engine try
    if np_major >= 2 and tr <= (2, 14):
        return (f"tflite-runtime {tflite_runtime_version} is built for numpy 1 and cannot run with numpy "
                f"{numpy_version}: pip install 'edge-enhance[tflite-runtime]' (numpy<2), or use ai-edge-litert: "
                f"pip install 'edge-enhance[litert]'")
    return None


def _engine_version(engine: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(engine)
    except PackageNotFoundError:
        return "(version unknown)"


def _load_error(path, engine: str, e: Exception) -> ModelFormatError:
    """One line naming the file and cause; an op too new for this runtime names the op, version and runtime."""
    text = " ".join(str(e).split())
    m = re.search(r"Didn't find op for (?:builtin|custom) opcode '([^']+)' version '(\d+)'", text)
    if m:
        return ModelFormatError(
            f"{path}: needs operator {m.group(1)} version {m.group(2)}, which the installed {engine} "
            f"{_engine_version(engine)} does not have; upgrade {engine} (or re-convert the model for this runtime)"
        )
    return ModelFormatError(f"{path}: {engine} {_engine_version(engine)} cannot load this model: {text}")


def quantise_io(x: np.ndarray, detail: dict) -> np.ndarray:
    """Float input -> the tensor's dtype on its (scale, zero point) grid; float tensors pass through."""
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x.astype(np.float32, copy=False)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def dequantise_io(y: np.ndarray, detail: dict) -> np.ndarray:
    """An output tensor back to float (the inverse grid of :func:`quantise_io`)."""
    if detail["dtype"] == np.float32:
        return y
    scale, zero = detail["quantization"]
    return (y.astype(np.float32) - zero) * np.float32(scale)


def io_description(detail: dict, span: tuple = (0.0, 1.0)) -> str:
    """How an app fills or reads one model input / output: name, dtype, shape (-1: any size) and, for an
    integer tensor, what its integers are in pixels 0..255 (``span``: the network's value range, its
    card's input range)."""
    shape = [int(d) for d in detail.get("shape_signature", detail["shape"])]
    head = f"'{detail['name']}' {np.dtype(detail['dtype']).name} {shape}"
    lo, hi = span
    if detail["dtype"] == np.float32:
        return f"{head}: values {lo:g}..{hi:g} for pixels 0..255"
    scale, zero = detail["quantization"]
    a, b = scale * 255 / (hi - lo), (-scale * zero - lo) * 255 / (hi - lo)  # pixel = a * q + b
    grid = f"scale {scale:.6g}, zero point {zero}"
    if abs(a - 1) < 1e-4 and abs(b) < 1e-3:
        return f"{head}: the pixel value itself ({grid})"
    if abs(a - 1) < 1e-4 and abs(b - 128) < 1e-3:  # --io int8: the uint8 grid shifted into int8's range
        return f"{head}: the pixel value minus 128 ({grid})"
    sign = "+" if b >= 0 else "-"
    return f"{head}: pixel = {a:.6g} * q {sign} {abs(b):.6g} ({grid}; not the pixel value, convert it)"


@register
class LiteRTBackend(Backend):
    name = "litert"
    extra = "litert"

    @staticmethod
    def sniff(path: Path, head: bytes) -> bool:
        return len(head) >= 8 and head[4:8] == b"TFL3"

    @staticmethod
    def read_card(path: Path) -> ModelCard | None:
        meta = read_metadata(Path(path).read_bytes(), str(path))
        raw = meta.get(CARD_KEY)
        return ModelCard.from_json(raw, str(path)) if raw is not None else None

    def __init__(self, path: Path, options: EngineOptions = EngineOptions()):
        self.path = Path(path)
        self._data = data = self.path.read_bytes()  # kept: the memory-estimate probe builds from it too
        meta = read_metadata(data, str(path))  # also refuses corrupt offsets before the C++ side sees them
        verify_graph(data, str(path))  # and indices the interpreter trusts (a bad one can segfault it)
        self.card = ModelCard.from_json(meta[CARD_KEY], str(path)) if CARD_KEY in meta else None
        m, self.engine_name = interpreter_module()
        delegates = []
        if options.delegate:
            try:
                _check_delegate_library(options.delegate)
                delegates.append(m.load_delegate(options.delegate, dict(options.delegate_options)))
            except (ValueError, OSError, RuntimeError) as e:
                if not options.fallback_cpu:
                    raise BackendUnavailableError(
                        f"{options.delegate}: cannot load TFLite delegate ({e}); use --fallback cpu to run on the CPU"
                    ) from None
                log.warning("delegate %s did not load (%s); running on the CPU", options.delegate, e)
        try:
            self.interp = m.Interpreter(
                model_content=data, num_threads=options.threads, experimental_delegates=delegates or None
            )
        except (ValueError, RuntimeError) as e:
            raise _load_error(path, self.engine_name, e) from None
        ins, outs = self.interp.get_input_details(), self.interp.get_output_details()
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFormatError(f"{path}: expected one input and one output, found {len(ins)} and {len(outs)}")
        self._in, self._out = ins[0], outs[0]
        # Integer activations: the model sees its input on a 1/255 grid, whatever the image's bit depth.
        self.integer = any(d["dtype"] in (np.int8, np.uint8, np.int16) for d in self.interp.get_tensor_details())
        layout = self.card.layout if self.card else "nhwc"
        if layout != "nhwc":
            raise ModelFormatError(f"{path}: TFLite models must be NHWC; the card says {layout}")
        shape, sig = self._in["shape"], self._in.get("shape_signature", self._in["shape"])
        if len(shape) != 4 or shape[3] not in (1, 3):
            raise ModelFormatError(f"{path}: input shape {list(shape)} is not (1, H, W, 3), or (1, H, W, 1) for a "
                                   "luma model")
        self.channels = int(shape[3])
        self.fixed_shape = None if (sig[1] == -1 or sig[2] == -1) else (int(shape[1]), int(shape[2]))
        self._size: tuple[int, int] | None = None
        if self.fixed_shape and self.fixed_shape[0] * self.fixed_shape[1] > MAX_TILE_PIXELS:
            raise ModelFormatError(f"{path}: fixed input of {self.fixed_shape[0]}x{self.fixed_shape[1]} pixels is "
                                   f"implausibly large (limit {MAX_TILE_PIXELS} pixels)")
        self._align = self.card.align if self.card else 1
        try:  # the interpreter checks the graph only when allocating: do it at load, at a small size
            if not self.fixed_shape:
                side = round_up(16, self._align)
                self.interp.resize_tensor_input(self._in["index"], [1, side, side, self.channels], strict=False)
            with without_xnnpack_notice():
                self.interp.allocate_tensors()
        except (RuntimeError, ValueError) as e:
            raise _load_error(path, self.engine_name, e) from None
        out = self.interp.get_output_details()[0]["shape"]
        check_channels(path, self.channels, int(out[3]) if len(out) == 4 else None)

    def describe_io(self) -> list[str]:
        """One line for the input and one for the output: see :func:`io_description`."""
        span = tuple(self.card.input_range) if self.card else (0.0, 1.0)
        return [f"{role} {io_description(d, span)}" for role, d in (("input", self._in), ("output", self._out))]

    def prepare(self, h: int, w: int) -> None:
        if self._size == (h, w):
            return
        if self.fixed_shape and self.fixed_shape != (h, w):
            raise ModelFormatError(f"{self.path}: model input is fixed at {self.fixed_shape}, asked for {(h, w)}")
        if not self.fixed_shape:
            self.interp.resize_tensor_input(self._in["index"], [1, h, w, self.channels], strict=False)
        try:
            self.interp.allocate_tensors()
        except RuntimeError as e:
            raise ModelFormatError(f"{self.path}: cannot allocate tensors at {h}x{w}: {e}") from None
        self._in = self.interp.get_input_details()[0]
        self._out = self.interp.get_output_details()[0]
        self._size = (h, w)

    def run(self, x: np.ndarray) -> np.ndarray:
        self.interp.set_tensor(self._in["index"], quantise_io(x, self._in))
        self.interp.invoke()
        return dequantise_io(self.interp.get_tensor(self._out["index"]), self._out)

    def activation_bytes_per_pixel(self) -> float:
        """Memory per input pixel of a tile: every activation and scratch tensor of a probe
        interpreter without XNNPACK (which hides its intermediates) plus one pointer per kernel tap
        per pixel for each convolution (XNNPACK's indirection buffers). Deliberately an upper bound,
        so --memory is a bound: measured RSS per pixel was 0.4x (a 4-conv fp32 test net) to 0.6x
        (sr-x2 int8, 4000x3000) of it. Activations at a fraction of the input size (after a
        stride-2 conv) count too: any 4-D tensor wider than a kernel (7) each way."""
        m, _ = interpreter_module()
        side = round_up(64, self._align)
        probe = self.fixed_shape or (side, side)
        kw = {}
        if hasattr(m, "OpResolverType"):
            kw["experimental_op_resolver_type"] = m.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            it = m.Interpreter(model_content=self._data, **kw)
            if not self.fixed_shape:
                it.resize_tensor_input(self._in["index"], [1, *probe, self.channels], strict=False)
            it.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise _load_error(self.path, self.engine_name, e) from None
        total = 0
        for t in it.get_tensor_details():
            shape = t["shape"]
            if len(shape) != 4:
                continue
            if shape[1] > 7 and shape[2] > 7:
                total += int(np.prod(shape)) * np.dtype(t["dtype"]).itemsize
            elif shape[1] <= 7 and shape[2] <= 7:  # an OHWI (or 1HWO depthwise) kernel
                total += int(shape[1] * shape[2]) * 8
        return total / (probe[0] * probe[1])


def io_lines(path) -> list[str] | None:
    """A .tflite's input and output lines (:meth:`LiteRTBackend.describe_io`), or None where LiteRT cannot
    open it here (not installed, or a file it refuses): info and convert say what they can without them."""
    try:
        return LiteRTBackend(path).describe_io()
    except (EdgeEnhanceError, ImportError):
        return None
