"""ONNX Runtime engine."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from ..card import CARD_KEY, MAX_TILE_PIXELS, ModelCard, check_channels
from ..errors import BackendUnavailableError, ModelFormatError
from . import Backend, EngineOptions, register


@functools.lru_cache(maxsize=1)
def _ort():
    try:
        import onnxruntime

        return onnxruntime
    except ImportError:
        raise BackendUnavailableError("ONNX Runtime is not installed: pip install 'edge-enhance[onnx]'") from None


# Protobuf field numbers (onnx.proto) on the paths from a ModelProto to every TensorProto.
_MODEL_GRAPH, _MODEL_FUNCTIONS, _FUNCTION_NODE = 7, 25, 7
_GRAPH_NODE, _GRAPH_INIT, _GRAPH_SPARSE_INIT = 1, 5, 15
_NODE_ATTR, _ATTR_T, _ATTR_G, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_EXTERNAL, _ENTRY_KEY, _ENTRY_VALUE = 13, 1, 2
_MODEL_METADATA = 14


def _fields(buf: memoryview, source: str):
    """(field number, payload) of each length-delimited field of one protobuf message; others skipped."""
    i, n = 0, len(buf)

    def varint() -> int:
        nonlocal i
        v = shift = 0
        while True:
            if i >= n or shift > 63:
                raise ModelFormatError(f"{source}: not a valid ONNX protobuf (bad varint)")
            b = buf[i]
            i += 1
            v |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return v

    def skip(wire: int) -> None:
        nonlocal i
        if wire == 0:
            varint()
        elif wire == 1 or wire == 5:
            i += 8 if wire == 1 else 4
        elif wire == 2:
            i += varint()
        elif wire == 3:  # a (deprecated) group: skip to its end tag
            while (k := varint()) & 7 != 4:
                skip(k & 7)
        else:
            raise ModelFormatError(f"{source}: not a valid ONNX protobuf (wire type {wire})")

    while i < n:
        key = varint()
        wire = key & 7
        if wire == 2:
            size = varint()
            if i + size > n:
                raise ModelFormatError(f"{source}: not a valid ONNX protobuf (field runs past the end)")
            yield key >> 3, buf[i:i + size]
            i += size
        else:
            skip(wire)
    if i > n:
        raise ModelFormatError(f"{source}: not a valid ONNX protobuf (truncated)")


def external_data_locations(data: bytes, source: str = "model") -> list[str]:
    """Every TensorProto external_data `location` in an ONNX file (graphs, subgraphs, functions)."""
    found: list[str] = []

    def tensor(t):
        for f, entry in _fields(t, source):
            if f == _TENSOR_EXTERNAL:
                kv = dict(_fields(entry, source))
                if bytes(kv.get(_ENTRY_KEY, b"")) == b"location":
                    found.append(bytes(kv.get(_ENTRY_VALUE, b"")).decode("utf-8", "replace"))

    def sparse(sp):
        for f, v in _fields(sp, source):
            if f in (_SPARSE_VALUES, _SPARSE_INDICES):
                tensor(v)

    def node(nd):
        for f, attr in _fields(nd, source):
            if f != _NODE_ATTR:
                continue
            for af, v in _fields(attr, source):
                if af in (_ATTR_T, _ATTR_TENSORS):
                    tensor(v)
                elif af in (_ATTR_G, _ATTR_GRAPHS):
                    graph(v)
                elif af in (_ATTR_SPARSE, _ATTR_SPARSES):
                    sparse(v)

    def graph(g):
        for f, v in _fields(g, source):
            if f == _GRAPH_INIT:
                tensor(v)
            elif f == _GRAPH_SPARSE_INIT:
                sparse(v)
            elif f == _GRAPH_NODE:
                node(v)

    for f, v in _fields(memoryview(data), source):
        if f == _MODEL_GRAPH:
            graph(v)
        elif f == _MODEL_FUNCTIONS:
            for ff, fv in _fields(v, source):
                if ff == _FUNCTION_NODE:
                    node(fv)
    return found


def metadata_card(path: Path) -> ModelCard | None:
    """The card in an ONNX file's metadata_props, read off the protobuf: where ONNX Runtime is not
    installed, `edge-enhance models` / `info` still show a bundled .onnx model's card."""
    for f, entry in _fields(memoryview(path.read_bytes()), str(path)):
        if f == _MODEL_METADATA:
            kv = dict(_fields(entry, str(path)))
            if bytes(kv.get(_ENTRY_KEY, b"")) == CARD_KEY.encode():
                try:
                    return ModelCard.from_json(bytes(kv.get(_ENTRY_VALUE, b"")).decode("utf-8"), str(path))
                except UnicodeDecodeError as e:
                    raise ModelFormatError(f"{path}: model metadata is not valid UTF-8 ({e.reason})") from None
    return None


def check_external_data(path: Path) -> None:
    """Refuse external-data locations that are absolute or leave the model's folder (symlinks resolved),
    before ONNX Runtime opens anything: a downloaded model must not read other files."""
    folder = path.resolve().parent
    try:
        locations = external_data_locations(path.read_bytes(), str(path))
    except ModelFormatError:
        return  # not valid protobuf (every legal encoding is walked): ONNX Runtime refuses it, naming the cause
    except RecursionError:
        raise ModelFormatError(f"{path}: ONNX graph nested too deeply to check") from None
    for loc in locations:
        target = (folder / loc).resolve()
        if Path(loc).is_absolute() or loc.startswith(("/", "\\")) or ":" in loc or not target.is_relative_to(folder):
            raise ModelFormatError(
                f"{path}: external data location {loc!r} points outside the model's folder {folder}; refused"
            )


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
        try:
            _ort()
        except BackendUnavailableError:
            return metadata_card(path)  # the card alone: the model is not checked, nor can it run here
        return OnnxRuntimeBackend(path, EngineOptions(threads=1)).card

    def __init__(self, path: Path, options: EngineOptions = EngineOptions()):
        ort = _ort()
        self.path = Path(path)
        so = ort.SessionOptions()
        so.log_severity_level = 4  # its own errors come back as exceptions, said once by us
        if options.threads:
            so.intra_op_num_threads = options.threads
            so.inter_op_num_threads = 1
        providers = list(options.providers) or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailableError(
                f"ONNX Runtime here lacks {', '.join(missing)}; available: {', '.join(ort.get_available_providers())}"
            )
        check_external_data(self.path)
        try:
            self.sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # ORT raises its own exception types for every kind of bad file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelFormatError(f"{path}: ONNX Runtime cannot load this model: {msg}") from None
        try:  # ORT decodes names and metadata as UTF-8 only when asked, and raises if they are not
            raw = self.sess.get_modelmeta().custom_metadata_map.get(CARD_KEY)
            ins, outs = self.sess.get_inputs(), self.sess.get_outputs()
            names = [(i.name, i.shape, i.type) for i in ins], [(o.name, o.shape) for o in outs]
        except UnicodeDecodeError as e:
            raise ModelFormatError(f"{path}: model metadata or tensor names are not valid UTF-8 ({e.reason})") from None
        self.card = ModelCard.from_json(raw, str(path)) if raw is not None else None
        if len(ins) != 1 or len(outs) != 1:
            raise ModelFormatError(f"{path}: expected one input and one output, found {len(ins)} and {len(outs)}")
        (self._in_name, shape, in_type), (self._out_name, out_shape) = names[0][0], names[1][0]
        if len(shape) != 4:
            raise ModelFormatError(f"{path}: input shape {shape} is not 4-D")
        # No card: NCHW unless the last axis holds 1 or 3 channels and the second does not (tf2onnx's NHWC).
        self.layout = self.card.layout if self.card else ("nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3)
                                                          else "nchw")
        axis = 1 if self.layout == "nchw" else 3
        channels, other = shape[axis], shape[4 - axis]
        if channels not in (1, 3) and other in (1, 3):
            raise ModelFormatError(
                f"{path}: the card says layout {self.layout} but the input tensor is {shape} "
                f"(3 colour channels, or 1 for a luma model, expected at axis {axis})"
            )
        known = lambda d: d if isinstance(d, int) else None
        check_channels(path, known(channels), known(out_shape[axis]) if len(out_shape) == 4 else None)
        self.channels = channels if isinstance(channels, int) else 3
        hw = shape[2:4] if self.layout == "nchw" else shape[1:3]
        self.fixed_shape = tuple(hw) if all(isinstance(d, int) for d in hw) else None
        if self.fixed_shape and self.fixed_shape[0] * self.fixed_shape[1] > MAX_TILE_PIXELS:
            raise ModelFormatError(f"{path}: fixed input of {hw[0]}x{hw[1]} pixels is implausibly large "
                                   f"(limit {MAX_TILE_PIXELS} pixels)")
        # A .half() export takes and gives float16: fed as such, its output read back as float32.
        self._in_dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(in_type)
        if self._in_dtype is None:
            raise ModelFormatError(f"{path}: input type {in_type} is not float32 or float16")

    def prepare(self, h: int, w: int) -> None:
        if self.fixed_shape and self.fixed_shape != (h, w):
            raise ModelFormatError(f"{self.path}: model input is fixed at {self.fixed_shape}, asked for {(h, w)}")

    def run(self, x: np.ndarray) -> np.ndarray:
        if self.layout == "nchw":
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        (y,) = self.sess.run([self._out_name], {self._in_name: x.astype(self._in_dtype, copy=False)})
        y = y.astype(np.float32, copy=False)
        return y.transpose(0, 2, 3, 1) if self.layout == "nchw" else y

    def activation_bytes_per_pixel(self) -> float:
        # ORT does not expose intermediate shapes; count the widest layer twice (input and output of a
        # conv are live together) plus the model's input and its output twice (ORT's and the enhancer's
        # float copy of the core: s*s per input pixel, most of an x4 model's), as float32, and 1.5x for
        # the arena's slack. Measured: sr-x4.onnx 1,070 bytes per tile pixel, this 1,362.
        width = (self.card.extra.get("max_channels") if self.card else None) or 64
        if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 65536:
            raise ModelFormatError(f"{self.path}: model card extra.max_channels {width!r} is not a channel count")
        s = self.card.scale if self.card else 1
        return 1.5 * 4 * (2 * width + self.channels * (1 + 2 * s * s))
