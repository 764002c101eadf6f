"""Builders of bad (and oddly shaped) inputs for the hardening tests: images as bytes, damaged models."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(w: int, h: int, depth: int, colour_type: int, rows: bytes) -> bytes:
    """A PNG written by hand, so the header can declare anything (bombs, 16-bit grey+alpha)."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def noise(w: int, h: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, len(mode)), dtype=np.uint8)
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def grey_alpha_16(w: int = 5, h: int = 4) -> bytes:
    rows = b"".join(b"\x00" + b"".join(struct.pack(">HH", (x * 10000 + y * 777) % 65536, 40000) for x in range(w))
                    for y in range(h))
    return raw_png(w, h, 16, 4, rows)


def broken_exif() -> bytes:
    # Big-endian TIFF header, 5 entries declared, the orientation entry's data points past the end.
    exif = b"Exif\x00\x00MM\x00\x2a\x00\x00\x00\x08\x00\x05\x01\x12\x00\x03\xff\xff\xff\xff\x00\x06" + b"\xff" * 40
    return encode(Image.new("RGB", (8, 8), (0, 255, 255)), "JPEG", exif=exif)


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:])


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def files_under(folder: Path) -> list[str]:
    """Every file (hidden temporaries included) under folder, relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def cli(*args, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m edge_enhance.cli ARGS` in a child process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "edge_enhance.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)


def cli_as_nobody(warm: list, args: list, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the CLI in a child that starts as root, does one warm-up run (so every lazily imported module
    is loaded while the interpreter under /root is still reachable), then drops to `nobody` for ARGS."""
    code = (
        "import os, sys\n"
        "from edge_enhance.cli import main\n"
        f"assert main({[str(a) for a in warm]!r}) == 0\n"
        f"os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
        f"sys.exit(main({[str(a) for a in args]!r}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=cwd)


@contextmanager
def world_readable_dir():
    """A temporary folder an unprivileged user can enter (pytest's tmp_path parents are 0700)."""
    with tempfile.TemporaryDirectory(prefix="ee-hardening-") as d:
        os.chmod(d, 0o755)
        yield Path(d)


# -- TFLite damage -----------------------------------------------------------------------------------
def tflite_model(onnx_path: Path, out: Path, *, op_version: dict[str, int] | None = None) -> Path:
    """Convert a test ONNX model to .tflite; op_version forces an operator code's version (e.g. 999)."""
    from conversion import tflite_writer
    from conversion.onnx_import import from_onnx

    orig = tflite_writer._FB.op

    def op(self, name, inputs, outputs, options=None, version=1):
        return orig(self, name, inputs, outputs, options, (op_version or {}).get(name, version))

    tflite_writer._FB.op = op
    try:
        tflite_writer.to_tflite(from_onnx(str(onnx_path)), out)
    finally:
        tflite_writer._FB.op = orig
    return out


def _patch(data: bytes, pos: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, pos, value)
    return bytes(b)


def corrupt_tflite(data: bytes, how: str) -> bytes:
    """Hand-corrupted offsets and indices in a valid .tflite, located through the tflite schema package."""
    import tflite

    m = tflite.Model.GetRootAsModel(data, 0)
    sg = m.Subgraphs(0)
    if how == "op_input_index":  # an operator input naming tensor 9999 of 17
        op = sg.Operators(1)
        return _patch(data, op._tab.Vector(op._tab.Offset(6)), "<i", 9999)
    if how == "negative_op_input":
        op = sg.Operators(1)
        return _patch(data, op._tab.Vector(op._tab.Offset(6)), "<i", -7)
    if how == "tensor_buffer_index":  # a tensor naming buffer 5000
        t = next(sg.Tensors(i) for i in range(sg.TensorsLength()) if sg.Tensors(i)._tab.Offset(8))
        return _patch(data, t._tab.Pos + t._tab.Offset(8), "<I", 5000)
    if how == "tensor_vector_length":  # the tensors vector claims 100000 entries
        return _patch(data, sg._tab.Vector(sg._tab.Offset(4)) - 4, "<I", 100000)
    if how == "root_offset":  # the root table offset points past the end of the file
        return _patch(data, 0, "<I", len(data) + 4096)
    raise ValueError(how)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A tiny residual x2 ONNX network (tests/onnx_models.residual_sr), one per test module."""
    from tests.onnx_models import residual_sr

    p = tmp_path_factory.mktemp("model") / "m.onnx"
    residual_sr(p)
    return p
