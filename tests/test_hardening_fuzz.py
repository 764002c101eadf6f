"""Property and fuzz tests (hypothesis): tiling stays exact over sizes, tiles, margins, scales and
dtypes; every image mode round-trips through load/save; mutated images and models either load or
raise an EdgeEnhanceError subclass, never anything else (and never kill the process).

Inputs that once broke something live in tests/fuzz_corpus/ and are replayed by test_corpus_replays.
Set EE_FUZZ_EXAMPLES to run the fuzzers longer (default: a quick pass)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge_enhance import imageio
from edge_enhance.card import ModelCard
from edge_enhance.enhancer import Enhancer
from edge_enhance.errors import EdgeEnhanceError, ImageInputError, ModelFormatError
from edge_enhance.tiling import TilingConfig
from tests import hardening_kit as kit

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"
FUZZ = int(os.environ.get("EE_FUZZ_EXAMPLES", "60"))
QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- tiling stays exact ---------------------------------------------------------------------------------
class BoxBackend:
    """A pure-numpy 'model' with a known receptive field: box mean over k x k, nearest upscale by s.
    Each output pixel is summed in the same order wherever it sits, so any exact tiling is bit-exact."""

    def __init__(self, k: int, s: int):
        self.k, self.s, self.fixed_shape, self.card = k, s, None, None

    def prepare(self, h, w):
        pass

    def activation_bytes_per_pixel(self):
        return 64.0

    def run(self, x):
        k, s = self.k, self.s
        p = k // 2
        xp = np.pad(x[0], ((p, p), (p, p), (0, 0)), mode="edge")  # its own padding, as a conv's zeros
        h, w = x.shape[1:3]
        acc = np.zeros((h, w, 3), np.float32)
        for dy in range(k):
            for dx in range(k):
                acc += xp[dy:dy + h, dx:dx + w]
        y = acc / np.float32(k * k)
        return y.repeat(s, 0).repeat(s, 1)[None]


class PooledBoxBackend(BoxBackend):
    """An align-a 'model': mean over a x a cells, the box at that low resolution, nearest upscale by
    a * s. It refuses sides that are not multiples of a, and commutes only with shifts by multiples
    of a. Receptive field 2 * (a * r + a - 1) + 1 for a box of 2r + 1 cells."""

    def __init__(self, k: int, s: int, a: int):
        super().__init__(k, s)
        self.a = a

    def run(self, x):
        a, (h, w) = self.a, x.shape[1:3]
        if h % a or w % a:
            raise ValueError(f"input {h}x{w} is not a multiple of {a}")
        low = x[0].reshape(h // a, a, w // a, a, 3).mean(axis=(1, 3), dtype=np.float32)
        y = BoxBackend.run(self, low[None])[0]  # the box, then nearest by s
        return y.repeat(a, 0).repeat(a, 1)[None]


def _box_enhancer(k, s, tile, strength=1.0, a=1):
    enh = Enhancer.__new__(Enhancer)  # no model file: the backend is the double above
    enh.path, enh.backend = Path("box"), BoxBackend(k, s) if a == 1 else PooledBoxBackend(k, s, a)
    rf = k if a == 1 else 2 * (a * (k // 2) + a - 1) + 1
    enh.card = ModelCard(name="box", task="sr" if s > 1 else "denoise", scale=s, receptive_field=rf,
                         base="nearest" if s > 1 else "identity", align=a)
    enh.tiling, enh._local, enh._bpp, enh._lock = TilingConfig(tile=tile), threading.local(), None, threading.Lock()
    enh._said_8bit = False
    enh.strength, enh.tta = strength, False
    return enh


@given(h=st.integers(1, 40), w=st.integers(1, 40), r=st.integers(0, 3), s=st.integers(1, 3),
       th=st.integers(0, 24), tw=st.integers(0, 24), dtype=st.sampled_from([np.uint8, np.uint16]),
       strength=st.sampled_from([1.0, 0.0, 0.6, 1.5]), seed=st.integers(0, 2**16))
@settings(QUICK, max_examples=80)
def test_tiling_is_exact_for_any_size_tile_and_margin(h, w, r, s, th, tw, dtype, strength, seed):
    k = 2 * r + 1
    tile = (2 * r + 1 + th, 2 * r + 1 + tw)  # at least one core pixel inside the margins
    img = np.random.default_rng(seed).integers(0, np.iinfo(dtype).max + 1, (h, w, 3), dtype=dtype)
    whole = _box_enhancer(k, s, (10**6, 10**6), strength).enhance_rgb(img)
    tiled_enh = _box_enhancer(k, s, tile, strength)
    tiled = tiled_enh.enhance_rgb(img)
    assert tiled.shape == (h * s, w * s, 3) and tiled.dtype == dtype
    assert np.array_equal(tiled, whole)


@given(h=st.integers(1, 40), w=st.integers(1, 40), r=st.integers(0, 2), s=st.integers(1, 2), a=st.sampled_from([2, 3, 4]),
       th=st.integers(0, 24), tw=st.integers(0, 24), strength=st.sampled_from([1.0, 0.6]), seed=st.integers(0, 2**16))
@settings(QUICK, max_examples=80)
@example(h=481, w=321, r=2, s=1, a=2, th=0, tw=0, strength=1.0, seed=0)
def test_tiling_is_exact_with_align_for_odd_sizes_and_tiles(h, w, r, s, a, th, tw, strength, seed):
    k = 2 * r + 1
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole_enh = _box_enhancer(k, s, (10**6, 10**6), strength, a)
    whole = whole_enh.enhance_rgb(img)
    m = whole_enh.card.margin
    assert whole_enh.last_run.tiles == 1 and m % a == 0
    tiled_enh = _box_enhancer(k, s, (2 * m + 1 + th, 2 * m + 1 + tw), strength, a)  # sides of any remainder
    tiled = tiled_enh.enhance_rgb(img)
    assert all(t % a == 0 for t in tiled_enh.last_run.tile)
    assert tiled.shape == (h * s, w * s, 3) and np.array_equal(tiled, whole)


# -- every mode round-trips through load / save -----------------------------------------------------
MODES = {
    "RGB": lambda a: Image.fromarray(a[..., :3], "RGB"),
    "RGBA": lambda a: Image.fromarray(a, "RGBA"),
    "L": lambda a: Image.fromarray(a[..., 0], "L"),
    "LA": lambda a: Image.fromarray(a[..., :2].copy(), "LA"),
    "1": lambda a: Image.fromarray(a[..., 0] > 127).convert("1"),
    "P": lambda a: Image.fromarray(a[..., :3], "RGB").quantize(16),
    "I;16": lambda a: Image.fromarray((a[..., 0].astype(np.uint16) * 257 + a[..., 1]).astype(np.uint16)),
    "CMYK": lambda a: Image.fromarray(a, "RGBA").convert("RGB").convert("CMYK"),
}
FORMATS = {"PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "PPM": ".ppm"}
CAN = {  # which source modes each format stores without loss (after load: CMYK is RGB, P is RGB, 1 is L)
    "PNG": set(MODES), "TIFF": set(MODES), "BMP": {"RGB", "L", "1", "P", "CMYK"},
    "PPM": {"RGB", "L", "1", "P", "CMYK"},
}


@given(mode=st.sampled_from(sorted(MODES)), fmt=st.sampled_from(["PNG", "TIFF", "BMP", "PPM"]),
       w=st.integers(1, 17), h=st.integers(1, 13), seed=st.integers(0, 2**16))
@settings(QUICK, max_examples=80)
@example(mode="CMYK", fmt="TIFF", w=1, h=1, seed=0)  # TIFF layout tags carried over made an unreadable file
def test_every_mode_round_trips(mode, fmt, w, h, seed):
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    im = MODES[mode](a)
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / ("src.tif" if mode == "CMYK" else "src.png")  # PNG has no CMYK
        im.save(src)
        first = imageio.load_image(src)
        if mode not in CAN[fmt]:
            return
        back = imageio.load_image(imageio.save_image(first, Path(d) / ("out" + FORMATS[fmt])))
    assert back.rgb.shape == first.rgb.shape == (h, w, 3)
    assert back.grey == first.grey and back.rgb.dtype == first.rgb.dtype
    assert np.array_equal(back.rgb, first.rgb)
    assert (back.alpha is None) == (first.alpha is None)
    if first.alpha is not None:
        assert np.array_equal(back.alpha, first.alpha)


# -- fuzzing the image loader --------------------------------------------------------------------------------
def _seed_images() -> dict[str, bytes]:
    rgb = kit.noise(9, 7, seed=1)
    rgba = kit.noise(6, 5, seed=2, mode="RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": kit.encode(rgb, "PNG"),
        "png-rgba": kit.encode(rgba, "PNG"),
        "png-16-ga": kit.grey_alpha_16(4, 3),
        "jpeg": kit.encode(rgb, "JPEG", quality=80, exif=exif.tobytes()),
        "jpeg-cmyk": kit.encode(Image.new("CMYK", (5, 4), (10, 200, 30, 0)), "JPEG"),
        "gif": kit.encode(rgb.quantize(8), "GIF"),
        "tiff": kit.encode(rgb, "TIFF"),
        "bmp": kit.encode(rgb, "BMP"),
        "webp": kit.encode(rgb, "WEBP", lossless=True),
    }


SEEDS = _seed_images()


def _mutate(data: bytes, draw) -> bytes:
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["set", "set", "insert", "delete", "int"]))
        i = draw(st.integers(0, max(len(b) - 1, 0)))
        if kind == "set" and b:
            b[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            b[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and b:
            del b[i:i + draw(st.integers(1, 16))]
        elif kind == "int" and len(b) > i + 4:  # interesting integers where lengths and sizes live
            b[i:i + 4] = draw(st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff",
                                               b"\x80\x00\x00\x00", b"\x00\x01\x00\x00"]))
    return bytes(b[: draw(st.integers(1, len(b)))]) if b and draw(st.booleans()) else bytes(b)


def _load_or_clear_error(data: bytes, suffix: str):
    """Load bytes as an image: return the Photo or the ImageInputError; anything else propagates."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("fuzz" + suffix)
        p.write_bytes(data)
        try:
            photo = imageio.load_image(p, max_pixels=2_000_000)
        except ImageInputError as e:
            assert str(p) in str(e)
            return e
        assert photo.rgb.ndim == 3 and photo.rgb.shape[2] == 3 and photo.rgb.size > 0
        return photo


@given(st.data())
@settings(QUICK, max_examples=FUZZ)
def test_fuzz_image_loader(data):
    kind = data.draw(st.sampled_from(sorted(SEEDS)))
    _load_or_clear_error(_mutate(SEEDS[kind], data.draw), ".jpg")


# -- fuzzing the model loaders ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seed_models(tmp_path_factory):
    pytest.importorskip("onnx")
    from tests.onnx_models import residual_sr

    d = tmp_path_factory.mktemp("seedmodels")
    residual_sr(d / "m.onnx", layers=1, channels=4)
    out = {"onnx": (d / "m.onnx").read_bytes()}
    if __import__("importlib").util.find_spec("tflite") is not None:
        out["tflite"] = kit.tflite_model(d / "m.onnx", d / "m.tflite").read_bytes()
    return out


@given(st.data())
@settings(QUICK, max_examples=FUZZ)
def test_fuzz_model_readers_in_process(seed_models, data):
    """The pure-Python readers that run before any engine: card / metadata / external-data walk."""
    from edge_enhance.backends.onnxruntime import external_data_locations
    from edge_enhance.backends.tflite_meta import read_metadata

    kind = data.draw(st.sampled_from(sorted(seed_models)))
    bad = _mutate(seed_models[kind], data.draw)
    try:
        if kind == "tflite":
            read_metadata(bad, "fuzz.tflite")
        else:
            external_data_locations(bad, "fuzz.onnx")
    except ModelFormatError as e:
        assert "fuzz." in str(e)


_CHILD = r"""
import json, sys
import numpy as np
from edge_enhance.enhancer import Enhancer
from edge_enhance.errors import EdgeEnhanceError
img = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
for path in sys.argv[1:]:
    print("TRY", path, flush=True)
    try:
        Enhancer(path, threads=1).enhance(img)
        print("OK", path, flush=True)
    except EdgeEnhanceError as e:
        print("ERR", type(e).__name__, path, flush=True)
    except MemoryError:
        print("ERR MemoryError", path, flush=True)
"""


def _mutations(seed_bytes: bytes, n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        b = bytearray(seed_bytes)
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(0, len(b)))
            if rng.random() < 0.7:
                b[i] = int(rng.integers(0, 256))
            else:
                b[i:i + 4] = bytes(rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"]))
        if rng.random() < 0.2:
            b = b[: int(rng.integers(8, len(b)))]
        out.append(bytes(b))
    return out


@pytest.mark.parametrize("kind", ["tflite", "onnx"])
def test_fuzz_model_loaders_in_a_child_never_crash(seed_models, tmp_path, kind):
    """Mutated models through the real engines, in a child process: a segfault would be a signal."""
    if kind not in seed_models:
        pytest.skip("the tflite schema package is not installed")
    if kind == "tflite":
        pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
    else:
        pytest.importorskip("onnxruntime")
    paths = []
    for i, b in enumerate(_mutations(seed_models[kind], max(FUZZ // 2, 20), seed=int(os.environ.get("EE_FUZZ_SEED", "1234")))):
        p = tmp_path / f"{i:03d}.{kind}"
        p.write_bytes(b)
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-c", _CHILD, *paths], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(kit.ROOT)})
    tried = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("TRY")]
    assert r.returncode == 0, f"child died (rc {r.returncode}) on {tried[-1] if tried else '?'}:\n{r.stderr[-2000:]}"
    results = [line for line in r.stdout.splitlines() if line.startswith(("OK", "ERR"))]
    assert len(results) == len(paths), r.stderr[-2000:]


# -- the corpus: inputs that once broke something ------------------------------------------------------------
CORPUS_FILES = sorted(p for p in CORPUS.glob("*") if p.is_file() and p.name != "README.md") if CORPUS.is_dir() else []


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.name for p in CORPUS_FILES])
def test_corpus_replays(path, tmp_path):
    """Images must load or raise ImageInputError; models must open or raise an EdgeEnhanceError, in a child."""
    if path.suffix in (".tflite", ".onnx"):
        r = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONPATH": str(kit.ROOT)})
        assert r.returncode == 0 and ("OK" in r.stdout or "ERR" in r.stdout), r.stderr[-2000:]
        return
    result = _load_or_clear_error(path.read_bytes(), path.suffix)
    expect = json.loads((CORPUS / "README.md").read_text().split("```json", 1)[1].split("```", 1)[0]).get(path.name)
    if expect == "error":
        assert isinstance(result, EdgeEnhanceError)
    elif expect == "ok":
        assert not isinstance(result, Exception)


def test_seed_images_themselves_load():
    for kind, b in SEEDS.items():
        assert not isinstance(_load_or_clear_error(b, ".img"), Exception), kind
    assert isinstance(_load_or_clear_error(io.BytesIO(b"x").getvalue(), ".jpg"), ImageInputError)
