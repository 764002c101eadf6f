"""Minimal, bounds-checked reader of a TFLite flatbuffer's metadata, with no dependencies.

Used to read the model card without an interpreter and to refuse files whose offsets point
outside the buffer before they reach the C++ interpreter (which trusts them).
"""
from __future__ import annotations

import struct

from ..errors import ModelFormatError

# Field indices in the tflite schema's `Model` table.
_BUFFERS, _METADATA = 4, 6


class _Reader:
    def __init__(self, buf: bytes, source: str):
        self.buf, self.source = buf, source

    def _u(self, fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > len(self.buf):
            raise ModelFormatError(f"{self.source}: corrupt flatbuffer (offset {at} outside the {len(self.buf)}-byte file)")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def table(self, pos: int):
        vt = pos - self._u("<i", pos)
        vt_len = self._u("<H", vt)

        def field(i: int) -> int | None:
            o = 4 + 2 * i
            if o >= vt_len:
                return None
            off = self._u("<H", vt + o)
            return pos + off if off else None

        return field

    def deref(self, at: int) -> int:
        return at + self._u("<I", at)

    def vector(self, at: int) -> tuple[int, int]:
        start = self.deref(at)
        n = self._u("<I", start)
        if start + 4 + n > len(self.buf) * 8:  # elements are at least one byte; reject absurd lengths
            raise ModelFormatError(f"{self.source}: corrupt flatbuffer (vector of {n} elements)")
        return start + 4, n

    def bytes_(self, at: int) -> bytes:
        start, n = self.vector(at)
        if start + n > len(self.buf):
            raise ModelFormatError(f"{self.source}: corrupt flatbuffer (data runs past the end of the file)")
        return self.buf[start:start + n]


def read_metadata(buf: bytes, source: str = "model") -> dict[str, bytes]:
    """{name: bytes} of the Model.metadata entries of a .tflite file."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFormatError(f"{source}: not a TFLite flatbuffer (no TFL3 identifier)")
    r = _Reader(buf, source)
    model = r.table(r.deref(0))
    out: dict[str, bytes] = {}
    meta_at, buffers_at = model(_METADATA), model(_BUFFERS)
    if meta_at is None:
        return out
    if buffers_at is None:
        raise ModelFormatError(f"{source}: corrupt flatbuffer (metadata without buffers)")
    bstart, nbuf = r.vector(buffers_at)
    mstart, nmeta = r.vector(meta_at)
    for k in range(nmeta):
        entry = r.table(r.deref(mstart + 4 * k))
        name_at, idx_at = entry(0), entry(1)
        if name_at is None or idx_at is None:
            continue
        name = r.bytes_(name_at).decode("utf-8", "replace")
        idx = r._u("<I", idx_at)
        if idx >= nbuf:
            raise ModelFormatError(f"{source}: corrupt flatbuffer (metadata {name!r} names buffer {idx} of {nbuf})")
        b = r.table(r.deref(bstart + 4 * idx))
        data_at, off_at, size_at = b(0), b(1), b(2)
        if data_at is not None:
            out[name] = r.bytes_(data_at)
        elif off_at is not None and size_at is not None:
            off, size = r._u("<Q", off_at), r._u("<Q", size_at)
            if off + size > len(buf):
                raise ModelFormatError(f"{source}: corrupt flatbuffer (buffer {idx} runs past the end of the file)")
            out[name] = buf[off:off + size]
        else:
            out[name] = b""
    return out


# Field indices in the schema's Model / SubGraph / Tensor / Operator / OperatorCode tables.
_OPCODES, _SUBGRAPHS = 1, 2
_SG_TENSORS, _SG_INPUTS, _SG_OUTPUTS, _SG_OPERATORS = 0, 1, 2, 3
_T_BUFFER = 2
_OP_OPCODE, _OP_INPUTS, _OP_OUTPUTS = 0, 1, 2
_OC_DEPRECATED, _OC_BUILTIN = 0, 3
# Where an operator input may be -1 ("absent"): biases of the conv family. The LSTM family leaves many
# inputs out. Anywhere else the interpreter dereferences the missing tensor (a segfault in ai-edge-litert
# 2.3 for CONCATENATION, found by fuzzing), so it is refused here.
_OPTIONAL_INPUTS = {3: {2}, 4: {2}, 9: {2}, 67: {3}}  # CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV
_ANY_OPTIONAL = {16, 44, 52}  # LSTM, UNIDIRECTIONAL_SEQUENCE_LSTM, BIDIRECTIONAL_SEQUENCE_LSTM


def verify_graph(buf: bytes, source: str = "model") -> None:
    """Check every index the C++ interpreter would trust: operator codes, tensor and buffer indices,
    absent (-1) inputs. Raises ModelFormatError naming the subgraph, operator and value."""
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise ModelFormatError(f"{source}: not a TFLite flatbuffer (no TFL3 identifier)")
    r = _Reader(buf, source)
    model = r.table(r.deref(0))

    def ints(at: int | None, fmt: str = "<i") -> list[int]:
        if at is None:
            return []
        start, n = r.vector(at)
        return [r._u(fmt, start + 4 * k) for k in range(n)]

    def tables(at: int | None) -> list:
        if at is None:
            return []
        start, n = r.vector(at)
        return [r.table(r.deref(start + 4 * k)) for k in range(n)]

    codes = []
    for oc in tables(model(_OPCODES)):
        dep, new = oc(_OC_DEPRECATED), oc(_OC_BUILTIN)
        codes.append(max(r._u("<b", dep) if dep is not None else 0, r._u("<i", new) if new is not None else 0))
    nbuf = len(tables(model(_BUFFERS)))
    for g, sg in enumerate(tables(model(_SUBGRAPHS))):
        tensors = tables(sg(_SG_TENSORS))
        nt = len(tensors)
        for k, t in enumerate(tensors):
            at = t(_T_BUFFER)
            b = r._u("<I", at) if at is not None else 0
            if b >= max(nbuf, 1):
                raise ModelFormatError(f"{source}: corrupt model (subgraph {g} tensor {k} names buffer {b} of {nbuf})")
        for what, idx in (("input", ints(sg(_SG_INPUTS))), ("output", ints(sg(_SG_OUTPUTS)))):
            bad = [i for i in idx if not 0 <= i < nt]
            if bad:
                raise ModelFormatError(f"{source}: corrupt model (subgraph {g} {what} tensor {bad[0]} of {nt})")
        for j, op in enumerate(tables(sg(_SG_OPERATORS))):
            at = op(_OP_OPCODE)
            oc = r._u("<I", at) if at is not None else 0
            if oc >= len(codes):
                raise ModelFormatError(f"{source}: corrupt model (operator {j} names operator code {oc} of {len(codes)})")
            code = codes[oc]
            for p, i in enumerate(ints(op(_OP_INPUTS))):
                if i == -1 and (code in _ANY_OPTIONAL or p in _OPTIONAL_INPUTS.get(code, ())):
                    continue
                if not 0 <= i < nt:
                    raise ModelFormatError(
                        f"{source}: corrupt model (subgraph {g} operator {j} (builtin code {code}) input {p} "
                        f"is tensor {i} of {nt})")
            for p, i in enumerate(ints(op(_OP_OUTPUTS))):
                if not 0 <= i < nt:
                    raise ModelFormatError(
                        f"{source}: corrupt model (subgraph {g} operator {j} output {p} is tensor {i} of {nt})")
