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
