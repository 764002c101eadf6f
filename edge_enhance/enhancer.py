"""The Enhancer: one model, loaded once, applied to arrays, Pillow images and files with exact tiling."""
from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import numbers
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, TypeVar

import numpy as np

from . import imageio, ycbcr
from .atomic import refuse_overwriting_input, unwritable
from .backends import EngineOptions, open_backend
from .card import ModelCard, missing_card_error
from .errors import ConfigError, EdgeEnhanceError, EngineError, ModelFormatError, NothingToDo, OutputError
from .models import DEFAULT_MODEL, resolve
from .tiling import TilingConfig, choose_tile, extract, min_tile_side, plan_tiles, round_up

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (tiles done, tiles total)
ImageT = TypeVar("ImageT", np.ndarray, "Image.Image")  # enhance gives back the kind it was given
MAX_STRENGTH = 1.5


@functools.lru_cache(maxsize=64)  # a video's or a preview's tiles repeat frame after frame
def _cubic_taps(n_in: int, start: int, count: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``start .. start + count`` of an x``s`` bicubic of ``n_in`` rows, as Pillow's BICUBIC (a =
    -0.5, pixel centres aligned, taps beyond the image's edge dropped and the rest renormalised): the
    first of the 4 consecutive source rows each reads (from -2: taps outside the image have weight 0) and
    their weights. Each output row's taps depend on its own index only, so a tile's rows equal the whole
    image's."""
    c = (np.arange(start, start + count) + 0.5) / s - 0.5
    first = np.floor(c).astype(np.int64) - 1
    idx = first[:, None] + np.arange(4)
    t = np.abs(c[:, None] - idx)
    w = np.where(t <= 1, (1.5 * t - 2.5) * t * t + 1, ((-0.5 * t + 2.5) * t - 4) * t + 2)
    w[(idx < 0) | (idx >= n_in)] = 0
    w = (w / w.sum(1, keepdims=True)).astype(np.float32)
    first.flags.writeable = w.flags.writeable = False  # shared by the cache
    return first, w


def _cubic_pass(a: np.ndarray, axis: int, lo: int, n_in: int, start: int, count: int, s: int) -> np.ndarray:
    """``a`` (float32) resampled along ``axis`` to output rows ``start .. start + count``; ``a`` there starts
    at source row ``lo`` and holds every row the taps read. Output row s * q + p reads from row
    first + q on: each phase p is 4 slices of ``a``, not a gather of 4 copies (2.6x slower per frame)."""
    first, w = _cubic_taps(n_in, start, count, s)
    out = np.empty(a.shape[:axis] + (count,) + a.shape[axis + 1:], np.float32)
    at = [slice(None)] * a.ndim
    for p in range(min(s, count)):
        m = len(range(p, count, s))
        wp = w[p::s].reshape((m, 4) + (1,) * (a.ndim - axis - 1))
        j = int(first[p]) - lo
        acc = None
        for k in range(4):  # summed in the same order as before: results are bit for bit the same
            at[axis] = slice(j + k, j + k + m)
            term = wp[:, k] * a[tuple(at)]
            acc = term if acc is None else acc + term
        at[axis] = slice(p, None, s)
        out[tuple(at)] = acc
    return out


def upscale_bicubic(src: np.ndarray, y: int, x: int, h: int, w: int, s: int) -> np.ndarray:
    """The x``s`` bicubic upscale of ``src`` (H x W x C), only the part covering its region (y, x, h, w):
    (h * s) x (w * s) x C float32, equal to the same part of the whole image's upscale."""
    n_rows, n_cols = src.shape[:2]
    r0, c0 = _cubic_taps(n_rows, y * s, h * s, s)[0], _cubic_taps(n_cols, x * s, w * s, s)[0]
    # The source part the taps read, edge-padded where they reach past the image (with weight 0 there).
    rows = np.clip(np.arange(r0[0], r0[-1] + 4), 0, n_rows - 1)
    cols = np.clip(np.arange(c0[0], c0[-1] + 4), 0, n_cols - 1)
    part = src[rows][:, cols].astype(np.float32)
    part = _cubic_pass(part, 1, int(c0[0]), n_cols, x * s, w * s, s)
    return _cubic_pass(part, 0, int(r0[0]), n_rows, y * s, h * s, s)


def _check_strength(s: float) -> float:
    if isinstance(s, bool) or not isinstance(s, numbers.Real):  # '0.5' or None: a TypeError from the comparison
        raise ConfigError(f"strength {s!r} is not a number (0..{MAX_STRENGTH})")
    if not 0.0 <= s <= MAX_STRENGTH:
        raise ConfigError(f"strength {s} is outside 0..{MAX_STRENGTH}")
    return float(s)


def _samples(a: np.ndarray) -> np.ndarray:
    """``a`` as uint8 / uint16 samples in this machine's byte order (big-endian ones: FITS, np.frombuffer of a
    file), else ConfigError."""
    if a.dtype.kind == "u" and a.dtype.itemsize == 2 and not a.dtype.isnative:
        a = a.astype(np.uint16)
    if a.dtype not in (np.uint8, np.uint16):
        hint = " (from floats in 0..1: (img * 255).round().astype(np.uint8))" if a.dtype.kind == "f" else ""
        raise ConfigError(f"expected uint8 or uint16 pixels, got {a.dtype}{hint}")
    return a


_ACCEPTED = ("a numpy array H x W or H x W x 1 (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) of uint8 / uint16, "
            "or a PIL image")


def _pixels(image) -> np.ndarray:
    """An array ``enhance`` takes (what _ACCEPTED says, PIL images aside), checked: the error says what came."""
    if isinstance(image, (str, os.PathLike)):
        raise ConfigError(f"expected {_ACCEPTED}, got a path ({image!r}); for files: enhance_file(src, dst)")
    a = np.asarray(image)
    if not isinstance(image, np.ndarray) and (a.ndim == 0 or a.dtype.kind in "OSUV"):
        hint = "; for an encoded image in memory: Image.open(io.BytesIO(data))" if isinstance(image, bytes) else ""
        raise ConfigError(f"expected {_ACCEPTED}, got {type(image).__name__}{hint}")
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3, 4))):
        raise ConfigError(f"expected {_ACCEPTED}, got an array of shape {a.shape}")
    return _samples(a)


def _available_ram() -> int | None:
    """Bytes of RAM available now: Linux's MemAvailable, Windows' GlobalMemoryStatusEx; None elsewhere
    (macOS has no cheap call for it)."""
    if os.name == "nt":
        import ctypes

        class Status(ctypes.Structure):  # MEMORYSTATUSEX
            _fields_ = [("dwLength", ctypes.c_uint32), ("dwMemoryLoad", ctypes.c_uint32)] + [
                (n, ctypes.c_uint64) for n in ("ullTotalPhys", "ullAvailPhys", "ullTotalPageFile",
                                               "ullAvailPageFile", "ullTotalVirtual", "ullAvailVirtual",
                                               "ullAvailExtendedVirtual")]

        st = Status(dwLength=ctypes.sizeof(Status))
        return int(st.ullAvailPhys) if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(st)) else None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _dihedral(x: np.ndarray, t: int) -> np.ndarray:
    """Transform t of the 8 rotations / mirror images of an H x W x C array (0 is the identity)."""
    x = np.rot90(x, t % 4)
    return x[:, ::-1] if t >= 4 else x


def _undo_dihedral(y: np.ndarray, t: int) -> np.ndarray:
    return np.rot90(y[:, ::-1] if t >= 4 else y, -(t % 4))


@dataclass(frozen=True)
class RunInfo:
    tile: tuple[int, int]
    tiles: int
    margin: int
    passes: int = 1  # model runs per tile: 8 (or 4 on a non-square fixed-shape model) with tta


class _Closed:
    """Stands in for a closed Enhancer's engine: any use names the model and says what happened."""

    def __init__(self, path: Path):
        self.path = path

    def __getattr__(self, name):
        raise ConfigError(f"{self.path}: this Enhancer was closed; make a new one to run the model again")


class _Processor:
    """What an Enhancer and a Pipeline share: arrays, Pillow images and files in through their
    ``enhance_photo`` and ``scale``; ``_local``, a threading.local, holds each thread's last run."""

    @property
    def last_run(self) -> RunInfo | None:
        """How the calling thread's last run was tiled (threads sharing the object each see their own)."""
        return getattr(self._local, "run", None)

    @property
    def strength(self) -> float:
        """How far towards the model's result: 0 the input (upscaled bicubic), 1 the model, up to 1.5."""
        return self._strength

    @strength.setter
    def strength(self, value: float) -> None:
        self._strength = _check_strength(value)

    def _strength_for(self, strength: float | None) -> float:
        """A call's own strength (checked), else the object's: threads sharing one object pass theirs per call."""
        return self.strength if strength is None else _check_strength(strength)

    def enhance(self, image: ImageT, *, strength: float | None = None) -> ImageT:
        """numpy H x W x 3 RGB (not OpenCV's BGR: flip it, ``frame[..., ::-1]``; or H x W / H x W x 1 grey,
        H x W x 4 RGBA) or a Pillow image in, the same kind out. A Pillow image's EXIF orientation is
        applied first, as for files, and the result carries its ICC profile, DPI (times the scale) and
        EXIF (orientation 1: it is upright) in ``.info``, as enhance_file writes them. Of an animated
        image, the current frame is enhanced. A Pillow image whose data cannot be decoded
        (a truncated or damaged upload) raises ImageInputError, as a file does. ``strength``: this
        call's (None: ``self.strength``); threads sharing the object pass theirs here."""
        from PIL import Image

        if isinstance(image, Image.Image):
            res = self.enhance_photo(imageio.photo_from_pil(image), strength=strength)
            out = imageio.photo_to_pil(res) if res.rgb.dtype == np.uint8 else self._pil16(res)
            return imageio.with_metadata(out, res, dpi_scale=self.scale)  # as enhance_file's keep-print-size
        a = _pixels(image)
        if a.ndim == 2 or a.shape[2] == 1:
            grey = imageio.Photo(np.repeat(a.reshape(a.shape[:2])[..., None], 3, axis=2), grey=True)
            g = imageio.to_grey(self.enhance_photo(grey, strength=strength).rgb)
            return g if a.ndim == 2 else g[..., None]
        if a.shape[2] == 4:
            p = self.enhance_photo(imageio.Photo(np.ascontiguousarray(a[..., :3]), a[..., 3].copy()), strength=strength)
            return np.dstack([p.rgb, p.alpha])
        return self.enhance_photo(imageio.Photo(a), strength=strength).rgb  # a grey picture stored as RGB stays grey

    @staticmethod
    def _pil16(photo: imageio.Photo) -> Image.Image:
        from PIL import Image

        return Image.fromarray(imageio.to_grey(photo.rgb).astype("<u2"))  # uint16 grey: mode I;16

    def enhance_file(self, src: str | os.PathLike, dst: str | os.PathLike, *, fmt: str | None = None,
                     quality: int = 92, strip_metadata: bool = False, dpi_mode: str = "keep-print-size",
                     max_pixels: int = imageio.DEFAULT_MAX_PIXELS, overwrite: bool = False,
                     progress: Progress | None = None) -> Path:
        """Load ``src``, enhance it, save it to ``dst`` atomically (a temporary file, renamed); returns ``dst``.
        ``fmt``: the output format ('jpg', 'png', ...; else dst's extension says); ``quality``: JPEG / WebP,
        1..100; ``strip_metadata``: no EXIF, DPI or captions (the ICC profile, colour
        not metadata, is kept); ``dpi_mode``: keep-print-size (the DPI
        times the scale) or keep-value; ``max_pixels``: the largest input; ``overwrite``: dst may be src;
        ``progress(done_tiles, total_tiles)``."""
        return enhance_file(self, src, dst, fmt=fmt, quality=quality, strip_metadata=strip_metadata,
                            dpi_mode=dpi_mode, max_pixels=max_pixels, overwrite=overwrite, progress=progress)


class Enhancer(_Processor):
    """Apply a model to photos.

    >>> with Enhancer("sr-x2") as enh:                      # doctest: +SKIP
    ...     enh.enhance(np.zeros((10, 12, 3), np.uint8)).shape
    (20, 24, 3)

    ``close()`` (or leaving the ``with`` block) frees the engine and its memory at once; otherwise
    that happens when the Enhancer is garbage-collected.
    """

    def __init__(self, model: str | Path = DEFAULT_MODEL, *, engine: str | None = None, threads: int | None = None,
                 tiling: TilingConfig | None = None, tile: int | tuple[int, int] | None = None,
                 memory_mb: float | None = None, strength: float = 1.0,
                 options: EngineOptions | None = None, card: ModelCard | None = None, tta: bool = False):
        """``model``: a bundled model's name ('sr-x2'; ``edge-enhance models`` lists them) or a model file's
        path (.tflite, .onnx, .mlpackage). ``engine``: 'litert', 'onnxruntime' or 'coreml' (None: the one
        that runs the file; a bundled name then picks the file that engine runs). ``threads``: the engine's
        CPU threads (None: its default; with ``options``, set them there). ``tiling``: a TilingConfig;
        ``tile`` (N or (h, w) input pixels) and ``memory_mb`` (the auto tile's budget, default 256) are
        shorthands for ``tiling=TilingConfig(tile, memory_mb)``. ``strength``: 0 the input (its bicubic
        upscale), 1 the model, up to 1.5; each call may give its own. ``options``: EngineOptions (threads,
        a TFLite delegate, ONNX Runtime providers). ``card``: a ModelCard for a model file without one, or in
        place of its own. ``tta``: self-ensemble, each tile in its 8 rotations / mirror images averaged
        (about 8x the time)."""
        if tiling is None:
            tiling = TilingConfig(tile, 256.0 if memory_mb is None else memory_mb)
        elif tile is not None or memory_mb is not None:
            raise ConfigError("give tiling=TilingConfig(...) or tile / memory_mb, not both")
        if not isinstance(model, (str, os.PathLike)):
            raise ConfigError(f"model must be a bundled model's name or a model file's path, not {model!r}")
        self.path = resolve(model, engine)
        options = options or EngineOptions(threads=threads)
        self.backend = open_backend(self.path, options, engine)
        self.card = card or self.backend.card
        if self.card is None:
            raise missing_card_error(self.path)
        colour = "y" if getattr(self.backend, "channels", 3) == 1 else "rgb"
        if self.card.colour != colour:
            if card is None:  # the model's own card contradicts it
                raise ModelFormatError(f"{self.path}: the card says colour {self.card.colour!r} but the model's input has "
                                       f"{1 if colour == 'y' else 3} channel(s)")
            self.card = dataclasses.replace(self.card, colour=colour)  # a card from the caller: the model decides
        fixed, a = self.fixed_tile, self.card.align
        if fixed and (fixed[0] % a or fixed[1] % a):
            raise ModelFormatError(f"{self.path}: the model's fixed input {fixed[0]}x{fixed[1]} is not a multiple of "
                                   f"its card's align {a} (input height and width must be multiples of {a})")
        self.tiling = tiling
        self.strength = strength
        # Self-ensemble: every tile is run in its 8 rotations / mirror images and the outputs, turned
        # back, are averaged. About 8x the compute for a small PSNR gain; never for the live preview.
        self.tta = bool(tta)
        self._local = threading.local()  # last_run: each thread sees its own run's
        self._bpp: float | None = None
        self._said_fixed = False  # the tile asked for is not the model's fixed one: said once
        # One engine, resized per tile shape: calls from several threads take turns (a LiteRT interpreter
        # cannot be resized while another thread reads its tensors). One Enhancer per thread runs in parallel.
        self._lock = threading.Lock()
        self._said_8bit = False

    def close(self) -> None:
        """Free the engine now. Later calls raise ConfigError; closing twice is harmless."""
        with self._lock:  # a run in another thread finishes first
            self.backend = _Closed(self.path)

    def __enter__(self) -> "Enhancer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def scale(self) -> int:
        return self.card.scale

    @property
    def fixed_tile(self) -> tuple[int, int] | None:
        """The (h, w) every tile must have: the engine's frozen input shape, else the card's, else None."""
        return self.backend.fixed_shape or self.card.tile

    def tile_for(self, h: int, w: int) -> tuple[int, int]:
        fixed, asked = self.fixed_tile, self.tiling.tile
        if fixed and asked and tuple(asked) != tuple(fixed) and not self._said_fixed:
            self._said_fixed = True
            log.warning("%s: the model takes %dx%d tiles only (its input is fixed); the %dx%d tile asked for is "
                        "not used", self.path, *fixed, *asked)
        if self._bpp is None and not self.backend.fixed_shape:  # an asked-for tile is checked against --memory too
            self._bpp = self.backend.activation_bytes_per_pixel()
        return choose_tile(h, w, self.card.margin, self._bpp or 1.0, self.tiling.memory_mb,
                           self.tiling.tile, self.fixed_tile, self.card.align)

    # -- core -------------------------------------------------------------------------------------
    def enhance_rgb(self, rgb: np.ndarray, *, out: np.ndarray | None = None, progress: Progress | None = None,
                    strength: float | None = None) -> np.ndarray:
        """H x W x 3 uint8 / uint16 -> (H*s) x (W*s) x 3 of the same dtype, tile by tile, at ``strength``
        (None: ``self.strength``).

        Any H and W: for a card with ``align`` > 1 (or a fixed shape larger than the image) the
        windows run past the image's bottom and right edges into its reflection up to a multiple of
        ``align`` (or that shape), and only H*s x W*s is kept. ``out`` may be ``rgb`` itself (in place)."""
        if not isinstance(rgb, np.ndarray):
            raise ConfigError(f"expected a numpy array H x W x 3, got {type(rgb).__name__}")
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ConfigError(f"expected an H x W x 3 image, got shape {rgb.shape}")
        rgb = _samples(rgb)
        strength = self._strength_for(strength)
        h, w, _ = rgb.shape
        if not (h and w):
            raise ConfigError(f"empty image ({w}x{h} pixels)")
        if rgb.dtype == np.uint16 and getattr(self.backend, "integer", False) and not self._said_8bit:
            self._said_8bit = True
            log.warning("%s: a quantised model sees and returns 8-bit steps, so a 16-bit image keeps 8-bit precision "
                        "(a float model, such as the bundled .onnx beside it, keeps 16)", self.path)
        s = self.card.scale
        if out is None:
            out = np.empty((h * s, w * s, 3), rgb.dtype)
        elif out.shape != (h * s, w * s, 3) or out.dtype != rgb.dtype:
            raise ConfigError(f"out= must be {h * s} x {w * s} x 3 {rgb.dtype}, got {' x '.join(map(str, out.shape))} "
                              f"{out.dtype}")
        elif np.may_share_memory(out, rgb):  # in place (out=rgb), or overlapping it: cores written to out would
            rgb = rgb.copy()                   # be read back as later tiles' margins
        tile = self.tile_for(h, w)
        if self.tta and tile[0] != tile[1] and not self.fixed_tile:
            tile = self._square_tile(tile, h, w)  # a square window turns a quarter without resizing the engine
        maxv = float(np.iinfo(rgb.dtype).max)
        src, chroma = rgb, None
        if self.card.colour == "y":  # a luma model: Y through the model, Cb / Cr upscaled bicubic
            ycc = ycbcr.rgb_to_ycbcr(rgb, maxv)
            src = np.ascontiguousarray(ycc[..., :1])
            chroma = [ycbcr.upscale_plane(ycc[..., k], s, rgb.dtype) for k in (1, 2)]
            del ycc
        try:
            with self._lock:
                return self._run_tiles(src, out, tile, progress, maxv, strength, chroma)
        except MemoryError:
            smaller = self._smaller_tile(tile)
            if smaller is None:
                raise
            # Every tile is re-run at the new size, so nothing from the failed attempt is kept.
            log.warning("%s: out of memory on a %dx%d tile; retrying once with %dx%d tiles",
                        self.path, tile[0], tile[1], smaller[0], smaller[1])
            with self._lock:
                return self._run_tiles(src, out, smaller, progress, maxv, strength, chroma)

    def _square_tile(self, tile: tuple[int, int], h: int, w: int) -> tuple[int, int]:
        """A square tile for --tta: the smaller side, unless that leaves no core to step along the
        longer side (a strip thinner than the margins). A square that would grow past the image's short
        side is flush with it when that side holds a core, as the whole-image run's is (an overhang is
        reflect-padded where the whole-image tile meets the model's zero padding); past a strip thinner
        than the margins it overhangs by at least a margin, so the cores do not depend on how far:
        tiled and whole-image TTA agree."""
        m, a = self.card.margin, self.card.align
        side = min(tile)
        extents = sorted((round_up(h, a), round_up(w, a)))
        if side < extents[1] and side - 2 * m < 1:
            side = min_tile_side(m, a)
        if side > extents[0] >= 2 * m + 1:
            return extents[0], extents[0]
        for n in extents:
            if n < side < n + m:
                side = round_up(n + m, a)
        return side, side

    def _smaller_tile(self, tile: tuple[int, int]) -> tuple[int, int] | None:
        """Half the tile each way (keeping a core inside the margins), or None for a fixed-shape model."""
        if self.fixed_tile:
            return None
        a = self.card.align
        floor = min_tile_side(self.card.margin, a)
        smaller = (max(floor, tile[0] // 2 // a * a), max(floor, tile[1] // 2 // a * a))
        return smaller if smaller != tile else None

    def _run_tiles(self, src: np.ndarray, out: np.ndarray, tile: tuple[int, int], progress: Progress | None,
                   maxv: float, strength: float, chroma: list | None = None) -> np.ndarray:
        """src: H x W x C pixels on 0..maxv (the RGB image, or for a luma model its float Y, with
        ``chroma`` its Cb, Cr planes at the output size); out: the RGB output, filled core by core."""
        h, w, _ = src.shape
        card, s, m = self.card, self.card.scale, self.card.margin
        lo, hi = card.input_range
        k_in, k_out = np.float32((hi - lo) / maxv), np.float32(maxv / (hi - lo))
        tiles = plan_tiles(h, w, tile, m, card.align)
        self.backend.prepare(*tile)
        # Quarter turns need a square window; a non-square fixed-shape model gets the 4 that keep its shape.
        passes = (range(8) if tile[0] == tile[1] else (0, 2, 4, 6)) if self.tta else (0,)
        self._local.run = RunInfo(tile, len(tiles), m, len(passes))
        for i, t in enumerate(tiles):
            (y, x, ch, cw), (wy, wx) = t
            win = extract(src, wy, wx, *tile)
            oy, ox = y - wy, x - wx  # the core's offset in the window
            xin = win.astype(np.float32) * k_in + np.float32(lo)
            acc = None
            for p in passes:
                yout = self._run_one(np.ascontiguousarray(_dihedral(xin, p))[None], tile, i, len(tiles))
                yout = _undo_dihedral(yout[0], p)
                if acc is None:  # an engine may hand back its own buffer: copy it before the next pass
                    acc = yout.copy() if len(passes) > 1 else yout
                else:
                    acc += yout
            if len(passes) > 1:
                acc *= np.float32(1 / len(passes))
            res = acc[oy * s:(oy + ch) * s, ox * s:(ox + cw) * s]
            if strength != 1.0:  # towards the input itself, or its plain (bicubic) upscale: never blocky
                base = xin[oy:oy + ch, ox:ox + cw] if s == 1 else \
                    upscale_bicubic(src, y, x, ch, cw, s) * k_in + np.float32(lo)
                res = base + np.float32(strength) * (res - base)
            res = res - np.float32(lo)  # one float copy of the core, worked on in place (an x4 tile's is large)
            res *= k_out
            core = np.s_[y * s:(y + ch) * s, x * s:(x + cw) * s]
            if chroma is not None:
                res = ycbcr.to_rgb(res[..., 0], chroma[0][core], chroma[1][core], maxv)
            out[core] = np.clip(np.rint(res, out=res), 0, maxv, out=res)
            if progress:
                progress(i + 1, len(tiles))
        return out

    def _run_one(self, xin: np.ndarray, tile: tuple[int, int], i: int, n: int) -> np.ndarray:
        s = self.card.scale
        try:
            yout = self.backend.run(xin)
        except (MemoryError, EdgeEnhanceError):
            raise
        except Exception as e:  # each engine raises its own types; the CLI reports one clear line
            raise EngineError(f"{self.path}: the engine failed on tile {i + 1} of {n} "
                              f"({type(e).__name__}: {e})") from e
        c = xin.shape[3]
        if yout.shape != (1, tile[0] * s, tile[1] * s, c):
            raise ModelFormatError(
                f"{self.path}: output shape {tuple(yout.shape)} does not match the card "
                f"(scale {s} of input {tile[0]}x{tile[1]} -> (1, {tile[0] * s}, {tile[1] * s}, {c}))"
            )
        if not np.isfinite(yout).all():  # NaN / inf would be cast to arbitrary pixels and reported as a success
            raise EngineError(f"{self.path}: the model output non-finite values (NaN / inf) on tile {i + 1} of {n}")
        return yout

    # -- convenience ------------------------------------------------------------------------------
    def _denoise_grey(self, rgb: np.ndarray, *, out, progress, strength) -> np.ndarray:
        """A grey picture through a denoiser trained on noise drawn apart in R, G and B. Given as it is (R = G
        = B), its noise is the same in all three, which such a model keeps as texture (bundled denoise, 4
        Kodak24 images in grey, sigma 25: 20.22 dB in, 20.23 out). Given with G one pixel to the left and B
        one pixel up, each pixel's three noise values come from three pixels, independent as in training
        (as pixel-shuffle sampling decorrelates camera noise); the three outputs, moved back and averaged,
        give 27.97 dB (the first 8 Kodak24 images in grey, sigma 25, fp32: 20.31 dB in), for one pass."""
        g = rgb[..., 0]
        x = np.empty_like(rgb)
        x[..., 0] = g
        x[:, :-1, 1], x[:, -1, 1] = g[:, 1:], g[:, -1]
        x[:-1, :, 2], x[-1, :, 2] = g[1:], g[-1]
        res = self.enhance_rgb(x, out=out, progress=progress, strength=strength)
        del x
        maxv = np.iinfo(res.dtype).max
        for b in reversed(imageio.row_bands(res)):  # bottom up, in place: a band reads the row above it
            a, e = b.start, b.stop
            r0 = res[a:e, :, 0].astype(np.float32)
            r1, r2 = r0.copy(), r0.copy()  # the first column / row: G's and B's estimates of it are off the image
            r1[:, 1:] = res[a:e, :-1, 1]
            r2[1:] = res[a:e - 1, :, 2]
            if a:
                r2[0] = res[a - 1, :, 2]
            res[a:e] = np.clip(np.rint((r0 + r1 + r2) / 3), 0, maxv).astype(res.dtype)[..., None]
        return res

    def denoise_luma(self, photo: imageio.Photo, *, out: np.ndarray | None = None, progress: Progress | None = None,
                     strength: float | None = None) -> imageio.Photo:
        """A colour photo's luma noise (the same in R, G and B: film grain, a camera's) removed by this denoise
        model, which, trained on noise drawn apart in each channel, leaves such noise as texture. Its luma Y
        goes through the model as a grey picture does (one pixel apart in R, G and B), and each pixel's R, G
        and B move by Y's change, so its colour (Cb, Cr) stays. The first 4 Kodak24 and 4 CBSD68 images with
        luma noise sigma 10 / 25 (int8, 28.28 / 20.48 dB in): denoise 28.32 / 20.53, then this 30.15 / 27.98.
        At full strength it softens texture where such noise is light (sigma 5: 34.29 -> 30.88), so
        :class:`Pipeline` runs it after denoise only where luma noise is left, at a strength that grows with it
        (pipeline.luma_strength). ``out``: may be ``photo.rgb``."""
        if self.card.task != "denoise" or self.card.colour != "rgb":
            raise ConfigError(f"{self.path}: denoise_luma needs an rgb denoise model, not a {self.card.colour} "
                              f"{self.card.task} one")
        rgb = photo.rgb
        y = imageio.to_grey(rgb)
        grey = self.enhance_photo(imageio.Photo(np.repeat(y[..., None], 3, axis=2), photo.alpha, grey=True),
                                  progress=progress, strength=strength)
        new_y = grey.rgb[..., 0]
        del grey
        res = np.empty_like(rgb) if out is None else out
        w, maxv = ycbcr.TO_YCC[0], np.iinfo(rgb.dtype).max  # luma Y's row
        for b in imageio.row_bands(rgb):
            x = rgb[b].astype(np.float32)
            res[b] = np.clip(np.rint(x + (new_y[b] - x @ w)[..., None]), 0, maxv)
            if photo.alpha is not None:
                res[b][photo.alpha[b] == 0] = 0  # hidden colour: none, as enhance_photo leaves it
        return dataclasses.replace(photo, rgb=res)

    def _upscale_alpha(self, alpha: np.ndarray) -> np.ndarray:
        from PIL import Image

        s = self.card.scale
        if s == 1:
            return alpha
        im = Image.fromarray(alpha).resize((alpha.shape[1] * s, alpha.shape[0] * s), Image.BICUBIC)
        return np.asarray(im).astype(alpha.dtype)

    def enhance_photo(self, photo: imageio.Photo, *, src=None, out: np.ndarray | None = None,
                      progress: Progress | None = None, strength: float | None = None) -> imageio.Photo:
        rgb, alpha = photo.rgb, photo.alpha
        if alpha is not None:
            # The colour under fully transparent pixels is arbitrary (often black or white): within the
            # model's reach of what shows it becomes the colour at the visible edge, so nothing hidden
            # rings into the edge (premultiplying did: dark or light outlines of up to 126 levels).
            rgb = bleed_hidden_colour(rgb, alpha, self.card.margin + 2)  # + bicubic alpha's reach
        grey_looking = not photo.grey and imageio.looks_grey(rgb)
        if (photo.grey or grey_looking) and self.card.task == "denoise" and self.card.colour == "rgb":
            res = self._denoise_grey(rgb, out=out, progress=progress, strength=strength)
            grey_looking = False  # already grey
        else:
            res = self.enhance_rgb(rgb, out=out, progress=progress, strength=strength)
        new_alpha = self._upscale_alpha(alpha) if alpha is not None else None
        for b in imageio.row_bands(res) if grey_looking or alpha is not None else ():
            if grey_looking:  # a grey picture stored as RGB comes out grey, not tinted
                res[b] = imageio.to_grey(res[b])[..., None]
            if alpha is not None:
                res[b][new_alpha[b] == 0] = 0  # hidden colour: none, as the un-premultiplied result had
        return dataclasses.replace(photo, rgb=res, alpha=new_alpha)


def bleed_hidden_colour(rgb: np.ndarray, alpha: np.ndarray, reach: int) -> np.ndarray:
    """``rgb`` with its fully transparent pixels up to ``reach`` pixels from a visible one given the mean
    colour of their already-filled 8-neighbours, ring by ring outwards (texture artists' edge padding):
    a network then sees the visible colour continue across the edge. The input is not modified."""
    known = alpha > 0
    if known.all() or not known.any():
        return rgb
    out = rgb.copy()
    h, w = known.shape
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]  # rings are squares, as a receptive field
    for _ in range(reach):
        near = np.zeros_like(known)
        for dy, dx in steps:
            near[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] |= \
                known[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        ys, xs = np.nonzero(near & ~known)
        if not len(ys):
            break
        acc, cnt = np.zeros((len(ys), rgb.shape[2]), np.float32), np.zeros(len(ys), np.float32)
        for dy, dx in steps:
            y2, x2 = np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)
            ok = known[y2, x2] & (y2 == ys + dy) & (x2 == xs + dx)
            acc[ok] += out[y2[ok], x2[ok]]
            cnt[ok] += 1
        out[ys, xs] = np.rint(acc / cnt[:, None])
        known[ys, xs] = True
    return out


DPI_MODES = ("keep-print-size", "keep-value")  # the output's DPI: scaled with the pixels, or copied


def enhance_file(processor, src: str | os.PathLike, dst: str | os.PathLike, *, fmt: str | None = None,
                 quality: int = 92, strip_metadata: bool = False, dpi_mode: str = "keep-print-size",
                 max_pixels: int = imageio.DEFAULT_MAX_PIXELS, overwrite: bool = False,
                 progress: Progress | None = None) -> Path:
    """Load, enhance (an Enhancer or a Pipeline), save atomically. Checks the output is writable first."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ConfigError(f"quality {quality!r} is not a whole number in 1..100")
    if dpi_mode not in DPI_MODES:
        raise ConfigError(f"dpi_mode {dpi_mode!r} is not one of {', '.join(DPI_MODES)}")
    for name, p in (("src", src), ("dst", dst)):
        if not isinstance(p, (str, os.PathLike)):
            raise ConfigError(f"{name} must be a path, not {type(p).__name__} (for an image in memory: "
                              "Image.open(io.BytesIO(data)) and Enhancer.enhance)")
    src, dst = Path(src), Path(dst)
    refuse_overwriting_input(src, dst, overwrite)
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: output folder {dst.parent} does not exist")
    why = unwritable(dst.parent)
    if why:
        raise OutputError(f"{dst}: output folder {dst.parent} is not writable ({why})")
    # Load first (cheap next to enhancing): an unreadable input, e.g. HEIC without its plugin, must be
    # reported as such, not as the output format its extension implies.
    photo = imageio.load_image(src, max_pixels)
    try:  # fail on a bad extension, or an output the format cannot hold, before the model
        out_fmt = imageio.format_for(dst, fmt)
    except ConfigError as e:
        from PIL import Image

        if fmt is None and photo.format and dst.suffix.lower() not in Image.registered_extensions():
            # a JPEG named .heic: say what it is and how to keep it
            ext = photo.format.lower().replace("jpeg", "jpg")
            raise ConfigError(f"{e} (the input is a {photo.format} file: add --format {ext}; fmt='{ext}' in "
                              "Python)") from None
        raise
    imageio.check_output_size(dst, fmt, photo.rgb.shape[1] * processor.scale, photo.rgb.shape[0] * processor.scale)
    if out_fmt in imageio.NO_ALPHA and photo.alpha is not None:
        # Dropped before enhancing: the colours as stored are enhanced and kept, as Pillow's convert("RGB")
        # keeps them (enhanced with their alpha, the colour under transparent pixels would come out black).
        log.warning("%s: %s has no alpha channel; transparency dropped, the stored colours kept", dst, out_fmt)
        photo = dataclasses.replace(photo, alpha=None)
    out = _output_buffer(photo, dst, processor.scale, out_fmt)
    _check_room_for_uncompressed(photo, dst, out_fmt, processor.scale, strip_metadata)  # after the memory map
    _warn_if_short_of_memory(photo, src, processor, mapped=isinstance(out, np.memmap), fmt=out_fmt)
    result = processor.enhance_photo(photo, src=src, out=out, progress=progress)
    if result is photo:  # auto at scale 1 ran no stage
        raise NothingToDo(f"{src}: auto found nothing to clean at scale 1; nothing written")
    dpi_scale = processor.scale if dpi_mode == "keep-print-size" else 1.0
    return imageio.save_image(result, dst, fmt=fmt, quality=quality, strip_metadata=strip_metadata,
                              dpi_scale=dpi_scale)


UNCOMPRESSED = ("BMP", "PPM", "TIFF")  # as written here (TIFF unless its input's compression): their size is known


def _check_room_for_uncompressed(photo: imageio.Photo, dst: Path, fmt: str, s: int, strip_metadata: bool) -> None:
    """A BMP / PPM / TIFF output that the disk cannot hold is refused before the work, not after it (a TIFF
    written compressed, as its TIFF input was, has no size known in advance: not checked)."""
    if fmt not in UNCOMPRESSED or imageio.tiff_compression(photo, fmt, strip_metadata):
        return
    h, w, _ = photo.rgb.shape
    channels = (1 if photo.grey else 3) + (photo.alpha is not None and fmt not in imageio.NO_ALPHA)
    depth = 2 if imageio.keeps_16bit(photo, fmt) else 1
    size = h * s * w * s * channels * depth
    try:
        free = shutil.disk_usage(dst.parent).free
    except OSError:
        return
    if size > free:
        raise OutputError(f"{dst}: no room in {dst.parent} for the {size / 2**20:.0f} MB {fmt} output "
                          f"({free / 2**20:.0f} MB free; PNG or JPEG are smaller: --format png)")


def _warn_if_short_of_memory(photo: imageio.Photo, src: Path, processor, mapped: bool, fmt: str) -> None:
    """Say so before the work where the output (unless memory-mapped) and the encoder's memory (Pillow copies
    the picture at 4 bytes a pixel, except an 8-bit colour JPEG / WebP's RGBX output; libwebp needs 13 bytes
    a pixel of its own; a PNG is written a band of rows at a time) need more than the RAM available: the
    system would otherwise stop the process for lack of memory with no word from us."""
    ram = _available_ram()
    if ram is None:
        return
    h, w, _ = photo.rgb.shape
    px = h * w * processor.scale ** 2
    k = photo.rgb.itemsize
    rgbx = imageio.encoder_takes_rgbx(photo, fmt)  # the output is the encoder's image: no copy
    if fmt == "WEBP":
        encoder = px * 13  # libwebp's own working memory: 121 MB for a 9 MP picture (measured)
    else:
        encoder = 0 if fmt == "PNG" or rgbx else px * (4 if k == 1 else 6)
    need = (0 if mapped else px * (4 if rgbx else 3) * k) + encoder
    if need > ram:
        log.warning("%s: its %dx%d output needs about %.0f MB of memory (%s), and %.0f MB is available: the system "
                    "may stop the run for lack of memory", src, w * processor.scale, h * processor.scale,
                    need / 2**20, "the picture and the encoder's memory" if encoder else "the picture",
                    ram / 2**20)


def _in_ram(h: int, w: int, planes: int) -> np.ndarray | None:
    """The RGB of an RGBX buffer in RAM for ``planes`` 4; None (the enhancer's own array) for 3."""
    return np.empty((h, w, 4), np.uint8)[..., :3] if planes == 4 else None


def _output_buffer(photo: imageio.Photo, dst: Path, s: int, fmt: str) -> np.ndarray | None:
    """Where the output goes: for an 8-bit colour JPEG or WebP, the RGB of an RGBX buffer, which Pillow's
    encoder takes as it is (imageio.photo_to_pil; a plain RGB array it copies at 4 bytes a pixel); a
    memory-mapped file beside dst when the result would not fit comfortably in RAM; else None (the
    enhancer's own array)."""
    h, w, _ = photo.rgb.shape
    planes = 4 if imageio.encoder_takes_rgbx(photo, fmt) else 3
    nbytes = h * s * w * s * planes * photo.rgb.itemsize
    ram = _available_ram()
    if ram is None or nbytes < ram // 2:
        return _in_ram(h * s, w * s, planes)
    log.info("output of %.0f MB streams into a memory-mapped file (RAM available: %.0f MB)", nbytes / 2**20, ram / 2**20)
    f = tempfile.TemporaryFile(dir=dst.parent, prefix=f".{dst.name}.", suffix=".mmap")
    try:  # the blocks are claimed now: a disk that fills under a memory map kills the process (SIGBUS)
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(f.fileno(), 0, nbytes)
        elif shutil.disk_usage(dst.parent).free < nbytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        f.close()
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):  # a file system without fallocate: memory it is
            return _in_ram(h * s, w * s, planes)
        raise OutputError(f"{dst}: no room in {dst.parent} for the {nbytes / 2**20:.0f} MB output, which streams "
                          f"through a file there as it does not fit in RAM ({e.strerror})") from None
    return np.memmap(f, dtype=photo.rgb.dtype, mode="w+", shape=(h * s, w * s, planes))[..., :3]
