"""Image loading and saving that keeps what a photographer cares about.

EXIF orientation is applied on load; ICC profile, EXIF (orientation reset, size updated) and DPI
are carried to the output; alpha, grey and 16-bit survive; writes are atomic.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import io
import logging
import math
import os
import re
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import makernote
from .atomic import atomic_file
from .errors import ConfigError, ImageInputError, OutputError

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 200_000_000  # input pixels; a 200 MP photo is plausible, a bomb is not
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".ppm", ".pgm", ".heic", ".heif"}
_ORIENTATION, _EXIF_IFD, _PIXEL_X, _PIXEL_Y = 0x0112, 0x8769, 0xA002, 0xA003
NO_ALPHA = {"JPEG", "BMP", "PPM"}  # output formats without an alpha channel
READ_FORMATS = {"JPEG", "MPO", "PNG", "TIFF", "WEBP", "BMP", "GIF", "PPM", "HEIF", "AVIF"}  # Pillow's names
READ_NAMES = "JPEG, PNG, TIFF, WebP, BMP, GIF, PPM / PGM, HEIC with pillow-heif"
# What Pillow's decoders raise on damaged files besides OSError (found by fuzzing: TIFF 'Missing
# dimensions' TypeError from n_frames, PNG 'Truncated IHDR chunk' ValueError from open).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, IndexError, KeyError, ZeroDivisionError,
                  struct.error)
# TIFF tags that a TIFF source's getexif() returns for its own pixel layout (size, samples, photometric,
# strips, tiles, palette, ...); copied to a TIFF output they contradict the new pixels (CMYK -> RGB made
# an unreadable file), and in any other output they are stale.
_TIFF_STRUCTURE = {254, 255, 256, 257, 258, 259, 262, 263, 266, 273, 277, 278, 279, 280, 281, 284, 317, 320,
                   322, 323, 324, 325, 330, 338, 339, 340, 341, 530, 532}
# A TIFF's file-level blobs in IFD0, which getexif() returns too: its ICC profile (carried as Photo.icc, or,
# CMYK, used for the conversion to sRGB: RGB pixels must not be tagged with it), Photoshop's image resources
# (thumbnail, resolution, paths of the old pixels) and its layers (ImageSourceData, the unenhanced picture,
# often megabytes: a JPEG's EXIF could then not hold them, and the camera's EXIF was dropped with them).
_TIFF_SOURCE_DATA = {34377, 34675, 37724}
_SIXTEEN_BIT = {"PNG", "TIFF"}
# A TIFF's lossless compressions, Pillow's name -> tifffile's (Pillow reads old Deflate as tiff_deflate)
_TIFF_LOSSLESS = {"tiff_lzw": "lzw", "tiff_adobe_deflate": "adobe_deflate", "tiff_deflate": "adobe_deflate",
                  "packbits": "packbits"}


@dataclass
class Photo:
    """Decoded pixels plus what must travel to the output."""

    rgb: np.ndarray  # H x W x 3, uint8 or uint16 (grey inputs are replicated to 3 channels)
    alpha: np.ndarray | None = None  # H x W, same dtype as rgb
    grey: bool = False
    icc: bytes | None = None
    exif: Image.Exif | None = None
    dpi: tuple[float, float] | None = None
    format: str | None = None
    extra: dict = field(default_factory=dict)
    xmp: bytes | None = None  # XMP packet (captions, keywords, people tags), carried as is
    comment: bytes | None = None  # a JPEG's COM segment
    iptc: bytes | None = None  # IPTC-IIM records (caption, keywords, copyright): a JPEG's APP13, a TIFF's tag 33723
    text: dict = field(default_factory=dict)  # a PNG's tEXt / iTXt / zTXt chunks, keyword -> str

    @property
    def maxval(self) -> int:
        return 65535 if self.rgb.dtype == np.uint16 else 255


@functools.lru_cache(maxsize=1)
def _sniff_problem(path: Path, head: bytes) -> str | None:
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"hevc", b"avif"):
        return "HEIC/AVIF needs a Pillow plugin: pip install pillow-heif"
    if head[:4] == b"TFL3" or head[4:8] == b"TFL3":
        return "this is a TFLite model, not an image"
    return None


def _usable_icc(icc: bytes | None, path: Path) -> bytes | None:
    """The ICC profile if it parses; a broken one is dropped (copying it would pass the damage on)."""
    if not icc:
        return None
    try:
        from PIL import ImageCms
    except ImportError:  # Pillow built without littlecms: cannot check, keep it as it came
        return icc
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except Exception as e:  # PyCMSError / OSError / TypeError, depending on the damage
        log.warning("%s: ignoring unreadable ICC profile (%s); colours are taken as sRGB", path, e)
        return None
    return icc


def _png16_colour_type(path: Path) -> int | None:
    """PNG colour type (2 RGB, 4 grey+alpha, 6 RGBA) of a 16-bit PNG that Pillow decodes to 8 bits, else None."""
    with open(path, "rb") as f:
        head = f.read(26)
    ok = head[:8] == b"\x89PNG\r\n\x1a\n" and len(head) == 26 and head[24] == 16 and head[25] in (2, 4, 6)
    return head[25] if ok else None


def wide_colour(im: Image.Image, path) -> bool:
    """Whether ``im``, open on ``path``, holds 16-bit colour samples that Pillow decodes to 8 bits (by
    truncation: load_image reads them whole)."""
    return (im.format == "PNG" and _png16_colour_type(Path(path)) is not None) \
        or (im.format == "TIFF" and _tiff16_samples(im) is not None)


def _io16(module: str, path: Path, kind: str):
    """The io16 extra's reader for what Pillow decodes to 8 bits (pypng, tifffile), or None with a warning."""
    try:
        return importlib.import_module(module)
    except ImportError:
        log.warning("%s: 16-bit %s decoded as 8-bit; pip install 'edge-enhance[io16]' to keep 16 bits", path, kind)
        return None


def _read_png16(path: Path) -> np.ndarray | None:
    png = _io16("png", path, "PNG")  # pypng
    if png is None:
        return None
    try:
        w, h, rows, info = png.Reader(filename=str(path)).asDirect()
        planes = info["planes"]
        return np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, planes)
    except (png.Error, ValueError, OSError) as e:  # Pillow got past the header; pypng reads every chunk
        raise corrupt(path, e) from None


def _tiff16_samples(im: Image.Image) -> int | None:
    """Samples per pixel (2 grey + alpha, 3 RGB, 4 RGBA) of a 16-bit TIFF that Pillow decodes to 8 bits, else None."""
    tags = getattr(im, "tag_v2", {})
    bits, samples = tags.get(258), tags.get(277, 1)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return samples if samples in (2, 3, 4) and set(bits) == {16} and im.mode in ("RGB", "RGBA", "LA") else None


def _read_tiff16(path: Path) -> np.ndarray | None:
    tifffile = _io16("tifffile", path, "TIFF")
    if tifffile is None:
        return None
    try:
        with tifffile.TiffFile(path) as t:
            page = t.pages[0]
            a = page.asarray()
            if page.axes.startswith("S"):  # planar (one plane per sample)
                a = np.moveaxis(a, 0, -1)
            premultiplied = tuple(page.extrasamples)[:1] == (1,)  # ExtraSamples: associated alpha
    except Exception as e:  # tifffile raises many types on damaged files; Pillow got past the header
        raise corrupt(path, e) from None
    if a.dtype != np.uint16 or a.ndim != 3:
        log.warning("%s: unexpected 16-bit TIFF layout %s %s; decoded as 8-bit", path, a.dtype, a.shape)
        return None
    a = np.ascontiguousarray(a)
    if premultiplied and a.shape[2] in (2, 4):
        _unpremultiply(a)
    return a


def _unpremultiply(a: np.ndarray) -> None:
    """Colour divided by the alpha (the last channel), in place: what Pillow does to an 8-bit RGBa TIFF, so a
    16-bit one is not darkened by its alpha and then written as straight alpha, as every output is."""
    for b in row_bands(a):
        alpha = a[b][..., -1:].astype(np.float32)
        a[b][..., :-1] = np.clip(np.rint(a[b][..., :-1] * (65535 / np.maximum(alpha, 1))), 0, 65535)


def corrupt(path, e: Exception) -> ImageInputError:
    """The one error for pixel data a decoder gave up on."""
    return ImageInputError(f"{path}: truncated or corrupt image data ({e})")


def photo_from_pil(im: Image.Image, name: str = "<image>") -> Photo:
    """A Pillow image an application opened itself (an upload: Image.open reads only the header) as a
    Photo: decoded now, so damaged data is an ImageInputError as in a file, and turned upright by its
    EXIF orientation. Of an animated image, the current frame."""
    try:
        im.load()
    except _DECODE_ERRORS as e:
        raise corrupt(name, e) from None
    path = Path(name)
    oriented, icc, dpi, exif = _upright_with_metadata(im, _format_of(im), path, [], borrowed=True)
    photo = _to_photo(oriented, path)
    photo.icc, photo.exif, photo.dpi = icc, exif, dpi
    photo.extra.update(jpeg_coding(im), **_exif_source(im))
    return photo


def jpeg_coding(im: Image.Image) -> dict:
    """A JPEG's luminance quantisation table and chroma subsampling (Pillow's get_sampling: 0 4:4:4,
    1 4:2:2, 2 4:2:0, -1 other), as read from the file; {} for other formats. Auto mode reads the
    JPEG's quality off them, from a file or an application's own Pillow image alike."""
    tables = getattr(im, "quantization", None)
    if not tables or _format_of(im) != "JPEG" or len(tables[0]) != 64:  # MPO is a JPEG to _format_of
        return {}
    from PIL import JpegImagePlugin

    return {"jpeg_luma_table": tuple(tables[0]), "jpeg_subsampling": JpegImagePlugin.get_sampling(im)}


def _exif_source(im: Image.Image) -> dict:
    """The EXIF bytes as the file has them, where they hold a MakerNote: its offsets are moved by how far
    the output's EXIF layout moves it (makernote.rebase)."""
    raw = im.info.get("exif")
    return {"exif_source": raw} if isinstance(raw, bytes) and makernote.position(raw) else {}


def load_image(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Photo:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except IsADirectoryError:
        raise ImageInputError(f"{path}: is a folder, not an image") from None
    except OSError as e:
        if path.is_symlink() and not path.exists():
            raise ImageInputError(f"{path}: a link to {os.readlink(path)}, which does not exist") from None
        raise ImageInputError(f"{path}: cannot read ({e.strerror})") from None
    if not head:
        raise ImageInputError(f"{path}: empty file (0 bytes)")
    problem = _sniff_problem(path, head)
    if problem:
        raise ImageInputError(f"{path}: {problem}")
    # Pillow is given a stream, not the path: by path it memory-maps an uncompressed TIFF strip, and
    # Pillow 13 maps an Orientation 5-8 file (L, P, I;16, RGBA, CMYK) into its turned size: scrambled rows.
    with open(path, "rb") as fh:
        return _decode(fh, path, max_pixels)


_PIL_LOCK = threading.Lock()  # guards the one process-wide Pillow bomb limit below
_pil_limits: list = []  # max_pixels of the decodes under way
_pil_saved = None  # Image.MAX_IMAGE_PIXELS as the application had it


@contextlib.contextmanager
def _pillow_limit(max_pixels: int):
    """Pillow's own bomb limit (one global) raised to ``max_pixels`` while a decode of ours runs, and
    given back as the application had it once none runs: concurrent decodes share the raised value."""
    global _pil_saved

    def apply():
        Image.MAX_IMAGE_PIXELS = None if _pil_saved is None else max(_pil_saved, *_pil_limits)

    with _PIL_LOCK:
        if not _pil_limits:
            _pil_saved = Image.MAX_IMAGE_PIXELS
        _pil_limits.append(max_pixels)
        apply()
    try:
        yield
    finally:
        with _PIL_LOCK:
            _pil_limits.remove(max_pixels)
            if _pil_limits:
                apply()
            else:
                Image.MAX_IMAGE_PIXELS = _pil_saved


_WARN_LOCK = threading.RLock()


@contextlib.contextmanager
def _recorded_warnings(into: list):
    """Python's warnings raised inside, appended to ``into`` instead of printed. catch_warnings swaps
    process-wide state, so our threads take turns: interleaved, they left the recorder installed."""
    with _WARN_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            into.extend(caught)


def _decode(fh, path: Path, max_pixels: int) -> Photo:
    with _pillow_limit(max_pixels):
        return _decode_limited(fh, path, max_pixels)


@functools.lru_cache(maxsize=1)
def _photo_readers() -> None:
    """Pillow's readers of the photo formats, and no others: Image.init imports all forty (20 ms of
    every start here, more on a Pi). HEIF is there when an application registered pillow-heif."""
    Image.preinit()  # BMP, GIF, JPEG (and MPO), PNG, PPM
    from PIL import TiffImagePlugin, WebPImagePlugin  # noqa: F401
    with contextlib.suppress(ImportError):  # Pillow 11.2+
        from PIL import AvifImagePlugin  # noqa: F401


def open_photo(fp, formats=READ_FORMATS):
    """``Image.open`` for photo formats only: ICO / ICNS decode the PNG inside (larger than their headers
    say, past any --max-pixels) on opening."""
    _photo_readers()
    return Image.open(fp, formats=sorted(set(formats).intersection(Image.OPEN)))


def _format_of(im) -> str | None:
    """What a photo is written as: a phone's multi-picture JPEG (MPO) is a JPEG."""
    return "JPEG" if im.format == "MPO" else im.format


def _too_large(path: Path, e: Exception, max_pixels: int) -> ImageInputError:
    n = re.search(r"Image size \((\d+) pixels\)", str(e))
    return ImageInputError(f"{path}: {_pixels(int(n.group(1))) if n else 'its size'} exceeds the limit of "
                           f"{_pixels(max_pixels)} (raise it with --max-pixels; max_pixels= in Python)")


def _decode_limited(fh, path: Path, max_pixels: int) -> Photo:
    caught: list = []
    try:
        # Pillow warns on stderr about damaged metadata (EXIF read for the DPI); recorded, logged once below.
        with _recorded_warnings(caught):
            im = open_photo(fh)
    except UnidentifiedImageError:
        raise ImageInputError(f"{path}: not an image format edge-enhance reads (photos: {READ_NAMES})") from None
    except Image.DecompressionBombError as e:  # Pillow's own check, at twice the limit: said as ours is
        raise _too_large(path, e, max_pixels) from None
    except _DECODE_ERRORS as e:
        raise corrupt(path, e) from None
    with im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageInputError(f"{path}: {w}x{h} = {_pixels(w * h)} exceeds the limit of {_pixels(max_pixels)} "
                                  "(raise it with --max-pixels; max_pixels= in Python)")
        try:
            frames = getattr(im, "n_frames", 1)  # TIFF / APNG walk every frame header here
            if frames > 1 and im.format == "TIFF":
                frames = _tiff_pictures(im, frames)
        except _DECODE_ERRORS as e:
            raise corrupt(path, e) from None
        if frames > 1 and im.format == "MPO":  # a phone's JPEG with a preview or depth map after the photo
            log.info("%s: the first of its %d pictures (the photo) is enhanced", path, frames)
        elif frames > 1:
            what = f"multi-page TIFF ({frames} pages); extract a page first" if im.format == "TIFF" else \
                f"animated image ({frames} frames); extract a frame first"
            raise ImageInputError(f"{path}: {what}")
        fmt = _format_of(im)
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise _too_large(path, e, max_pixels) from None
        except _DECODE_ERRORS as e:
            raise corrupt(path, e) from None
        tiff16 = _tiff16_samples(im) if fmt == "TIFF" else None
        comment = im.info.get("comment") if fmt == "JPEG" else None
        resources = im.info.get("photoshop") if fmt == "JPEG" else None  # APP13's image resources; 0x0404 is IPTC
        iptc = resources.get(0x0404) if isinstance(resources, dict) else None
        png_colour = {k: im.info[k] for k in _PNG_COLOUR if k in im.info} if fmt == "PNG" else {}
        text = {k: v for k, v in im.text.items() if k not in _PNG_NOT_TEXT} if fmt == "PNG" else {}
        min_is_white = fmt == "TIFF" and getattr(im, "tag_v2", {}).get(262) == 0
        oriented, icc, dpi, exif = _upright_with_metadata(im, fmt, path, caught)
        # From the upright copy: Pillow's exif_transpose took tiff:Orientation out of its XMP as it turned the
        # pixels (the input's said 6 of the upright output; a reader honouring XMP turned it again).
        xmp = oriented.info.get("xmp")
        if exif is not None and xmp:
            exif.pop(700, None)  # a TIFF's XMP tag, the same packet, still with its orientation: written from Photo.xmp
        photo = _to_photo(oriented, path)
    ctype = _png16_colour_type(path) if fmt == "PNG" and photo.rgb.dtype == np.uint8 else None
    if ctype is not None or (tiff16 and photo.rgb.dtype == np.uint8):
        # Pillow hands 16-bit colour (and grey + alpha) over as 8 bits: read the samples again
        photo.grey = ctype == 4 or tiff16 == 2
        data = _read_png16(path) if ctype is not None else _read_tiff16(path)
        if data is not None:
            data = _apply_orientation(data, exif_orientation(path))
            if data.shape[2] == 2:
                data = np.dstack([data[..., :1]] * 3 + [data[..., 1:]])
            photo.rgb, photo.alpha = data[..., :3], (data[..., 3] if data.shape[2] == 4 else None)
    if min_is_white and photo.rgb.dtype == np.uint16:  # Pillow inverts a MinIsWhite TIFF's 8-bit grey only
        photo.rgb = 65535 - photo.rgb
    photo.icc, photo.exif, photo.dpi, photo.format = icc, exif, dpi, fmt
    photo.xmp = xmp if isinstance(xmp, bytes) and xmp else None
    photo.comment, photo.text = comment or None, text
    if exif is not None and isinstance(exif.get(33723), bytes):  # a TIFF's IPTC: written from Photo.iptc
        iptc = iptc or exif.pop(33723)
    photo.iptc = iptc if isinstance(iptc, bytes) and iptc else None
    if fmt == "WEBP" and _webp_lossless(fh):
        photo.extra["lossless"] = True  # written back lossless
    photo.extra.update(png_colour)
    if fmt == "TIFF" and im.info.get("compression") in _TIFF_LOSSLESS:
        photo.extra["compression"] = im.info["compression"]  # written back so
    photo.extra.update(jpeg_coding(im), **_exif_source(im))
    if photo.rgb.shape[0] * photo.rgb.shape[1] == 0:
        raise ImageInputError(f"{path}: image has no pixels")
    return photo


def _tiff_pictures(im: Image.Image, pages: int) -> int:
    """How many of a TIFF's pages are pictures of their own: a reduced-resolution copy (NewSubfileType bit 0,
    a scanner's preview or an overview) or a transparency mask (bit 2) belongs to the full-size page."""
    n = 0
    for i in range(pages):
        im.seek(i)
        n += not im.tag_v2.get(254, 0) & 5
    im.seek(0)
    return n


def _upright_with_metadata(im: Image.Image, fmt: str | None, path: Path, caught: list, *, borrowed: bool = False):
    """(``im`` turned upright by its EXIF orientation, its ICC profile, DPI and EXIF as the output is to carry
    them: orientation 1, the source file's layout tags gone). Pillow's warnings about damaged EXIF, and
    those already in ``caught``, are said once through logging. ``borrowed``: ``im`` is an application's,
    whose EXIF is copied, not changed."""
    # A CMYK profile is used for the conversion to sRGB and must not be attached to the RGB output.
    icc = None if im.mode == "CMYK" else _usable_icc(im.info.get("icc_profile"), path)
    dpi = im.info.get("dpi")
    if fmt == "TIFF" and 282 not in getattr(im, "tag_v2", {}):
        dpi = None  # Pillow reports (1, 1) for a TIFF without a resolution: do not make one up
    if dpi is not None and not all(math.isfinite(d) and 0 < d <= MAX_DPI for d in dpi[:2]):
        log.warning("%s: its resolution, %s dpi, is not a real one; the output carries none", path,
                    " x ".join(f"{float(d):g}" for d in dpi[:2]))
        dpi = None
    try:
        # Pillow warns (UserWarning on stderr) about damaged EXIF; say it once through logging instead.
        with _recorded_warnings(caught):
            exif = im.getexif()
            # upright as stored: im itself (exif_transpose would hand back a copy, a second picture in memory)
            oriented = ImageOps.exif_transpose(im) if exif.get(_ORIENTATION, 1) != 1 else im
        caught = [w for w in caught if not issubclass(w.category, Image.DecompressionBombWarning)]
        if caught:
            log.warning("%s: EXIF partly unreadable (%s); the rest is kept", path, caught[0].message)
    except Exception as e:  # Pillow raises many types on malformed EXIF; the pixels are still good
        log.warning("%s: ignoring unreadable EXIF (%s)", path, e)
        exif, oriented = None, im.copy()
    if borrowed and exif is not None:
        exif = _exif_copy(exif, path)
    if fmt == "JPEG" and im.info.get("jfif_unit") not in (1, 2) and (exif is None or 282 not in exif):
        dpi = None  # Pillow reports 72 for a JPEG whose JFIF gives only an aspect ratio: do not make one up
    if exif is not None and not len(exif):  # no EXIF: none is made up for the output (72 dpi, empty IFDs)
        exif = None
    if exif is not None:
        exif[_ORIENTATION] = 1
        if isinstance(exif.get(270), str) and _shaped(exif[270]):  # tifffile's '{"shape": [h, w]}'
            del exif[270]
        if exif.get(305) == "tifffile.py":  # the software that wrote the input, not the output
            del exif[305]
        for tag in (_TIFF_STRUCTURE | _TIFF_SOURCE_DATA).intersection(exif):  # the source file's, not the photo's
            del exif[tag]
    return oriented, icc, dpi, exif


def _exif_copy(exif: Image.Exif, path: Path) -> Image.Exif | None:
    """A copy of ``exif`` to change: what an output would carry of it (its bytes, read back)."""
    try:
        own = Image.Exif()
        own.load(_exif_bytes(exif))
        return own
    except Exception as e:
        log.warning("%s: EXIF could not be re-encoded (%s); the result carries none", path, e)
        return None


def _webp_lossless(fh) -> bool:
    """Whether a WebP file's picture is VP8L (lossless), from its RIFF chunks."""
    fh.seek(12)
    while len(head := fh.read(8)) == 8:
        kind, size = head[:4], struct.unpack("<I", head[4:])[0]
        if kind in (b"VP8L", b"VP8 "):
            return kind == b"VP8L"
        fh.seek(size + (size & 1), 1)
    return False


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP" if n >= 100_000 else f"{n:,} pixels"


def exif_orientation(path: Path) -> int:
    try:
        with _recorded_warnings([]), open_photo(path) as im:
            return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:
        return 1


def _apply_orientation(a: np.ndarray, o: int) -> np.ndarray:
    ops = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.swapaxes(0, 1), 6: lambda a: a.swapaxes(0, 1)[:, ::-1],
           7: lambda a: a.swapaxes(0, 1)[::-1, ::-1], 8: lambda a: a.swapaxes(0, 1)[::-1]}
    return np.ascontiguousarray(ops[o](a)) if o in ops else a


def _cmyk_to_rgb(im: Image.Image, path: Path) -> Image.Image:
    icc = im.info.get("icc_profile")
    if icc:
        try:
            import io

            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception as e:  # a broken profile: fall back rather than lose the photo
            log.warning("%s: CMYK ICC profile unusable (%s); converting without it", path, e)
    else:
        log.warning("%s: CMYK without an ICC profile; colours are approximate", path)
    return im.convert("RGB")


def _to_photo(im: Image.Image, path: Path) -> Photo:
    mode = im.mode
    if mode == "CMYK":
        im, mode = _cmyk_to_rgb(im, path), "RGB"
    elif mode == "P" or mode == "PA":
        im = im.convert("RGBA" if ("transparency" in im.info or mode == "PA") else "RGB")
        mode = im.mode
    elif mode == "1":
        im, mode = im.convert("L"), "L"
    elif mode in ("RGBa", "La"):
        im = im.convert(mode.upper())
        mode = im.mode
    elif mode in ("YCbCr", "LAB", "HSV", "RGBX"):
        im, mode = im.convert("RGB"), "RGB"
    elif mode in ("RGB", "L") and "transparency" in im.info:  # a PNG's tRNS colour key: that colour is transparent
        im = im.convert(mode + "A" if mode == "L" else "RGBA")
        mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I"):
        a = np.asarray(im)
        if mode == "I" and (a.min() < 0 or a.max() > 65535):
            raise ImageInputError(f"{path}: 32-bit integer image outside the 16-bit range")
        g = a.astype(np.uint16)
        key = im.info.get("transparency")  # a 16-bit grey PNG's tRNS colour key
        alpha = np.where(g == key, 0, 65535).astype(np.uint16) if isinstance(key, int) else None
        return Photo(np.repeat(g[..., None], 3, axis=2), alpha, grey=True)
    if mode == "F":
        raise ImageInputError(f"{path}: floating-point images are not supported")
    if mode not in ("RGB", "RGBA", "L", "LA"):
        raise ImageInputError(f"{path}: unsupported colour mode {mode}")
    return Photo(*_planes_of(im, mode), grey=mode in ("L", "LA"))


def _planes_of(im: Image.Image, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(H x W x 3 colour, H x W alpha or None) of an 8-bit RGB / RGBA / L / LA image, copied over a band
    of rows at a time: np.asarray(im) puts the whole picture in a bytes object beside the image first
    (and twice over while Pillow joins its pieces), 72 MB more at the peak for a 12 MP photo."""
    w, h = im.size
    rgb = np.empty((h, w, 3), np.uint8)
    alpha = np.empty((h, w), np.uint8) if mode in ("RGBA", "LA") else None
    step = max(1, BAND_BYTES // 4 // (4 * w))
    for y in range(0, h, step):
        b = np.asarray(im.crop((0, y, w, min(y + step, h))))
        b = b[..., None] if b.ndim == 2 else b
        rgb[y:y + len(b)] = b[..., :3] if mode in ("RGB", "RGBA") else b[..., :1]
        if alpha is not None:
            alpha[y:y + len(b)] = b[..., -1]
    return rgb, alpha


def content_suffix(path: Path) -> str | None:
    """The suffix of what a file really holds when its name says otherwise (a JPEG saved as .heic by a
    phone or a sharing app: Pillow cannot write HEIC, so its derived output name says .jpg)."""
    try:
        with open_photo(path) as im:
            fmt = _format_of(im)
    except Exception:  # unreadable: the load reports it, with the cause
        return None
    exts = [e for e, f in Image.registered_extensions().items() if f == fmt]
    if not fmt or path.suffix.lower() in exts:
        return None
    return {"JPEG": ".jpg", "TIFF": ".tif"}.get(fmt, exts[0] if exts else None)


WRITE_FORMATS = ("JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "PPM")  # photo formats (not PDF, ICO, ...)


def format_for(path: Path, fmt: str | None = None) -> str:
    if fmt:
        # ASCII only: a Turkish 'tıff' upper-cases to TIFF but would name the file .tıff
        name = {"JPG": "JPEG", "TIF": "TIFF"}.get(fmt.upper(), fmt.upper()) if fmt.isascii() else None
        if name not in WRITE_FORMATS:
            raise ConfigError(f"unknown output format {name or fmt!r} ({', '.join(f.lower() for f in WRITE_FORMATS)})")
        return name
    ext = path.suffix.lower()
    known = Image.registered_extensions()
    if ext not in known:
        raise ConfigError(f"{path}: cannot tell the output format from {ext or 'a missing extension'!r}")
    if known[ext] not in WRITE_FORMATS:
        raise ConfigError(f"{path}: {known[ext]} is not a photo format edge-enhance writes "
                          f"({', '.join(f.lower() for f in WRITE_FORMATS)})")
    return known[ext]


BAND_BYTES = 16 << 20  # float32 working memory of a whole-image pass, done in bands of rows


def row_bands(rgb: np.ndarray):
    """Row slices of ``rgb`` whose float32 copy takes about BAND_BYTES: whole-image arithmetic done band by
    band needs that much beside the image, not several float copies of a 50 MP result."""
    h = rgb.shape[0]
    step = max(1, BAND_BYTES // max(1, rgb[:1].size * 4))
    return [np.s_[y:min(y + step, h)] for y in range(0, h, step)]


def looks_grey(rgb: np.ndarray) -> bool:
    """Whether the three channels are equal everywhere (a grey picture stored as RGB), band by band."""
    return all(np.array_equal(rgb[b][..., 0], rgb[b][..., 1]) and np.array_equal(rgb[b][..., 1], rgb[b][..., 2])
               for b in row_bands(rgb))


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma, as Pillow's convert('L'), kept in the input's dtype."""
    w, maxv = np.array([0.299, 0.587, 0.114], np.float32), np.iinfo(rgb.dtype).max
    out = np.empty(rgb.shape[:-1], rgb.dtype)
    for b in row_bands(rgb):
        out[b] = np.clip(np.rint(rgb[b].astype(np.float32) @ w), 0, maxv)
    return out


def _stored_planes(photo: Photo, y0: int, y1: int) -> np.ndarray:
    """Rows y0:y1 of the photo as a file stores them: grey or RGB, then alpha."""
    a = photo.rgb[y0:y1]
    a = to_grey(a)[..., None] if photo.grey else a
    if photo.alpha is not None:
        a = np.concatenate([a, photo.alpha[y0:y1, :, None]], axis=2)
    return a


def encoder_takes_rgbx(photo: Photo, fmt: str | None) -> bool:
    """Whether ``photo``'s output in ``fmt`` is written by Pillow from RGB pixels (8-bit colour, no alpha, JPEG
    or WebP), which it takes without a copy from an RGBX buffer (one from enhancer._output_buffer)."""
    return fmt in ("JPEG", "WEBP") and photo.rgb.dtype == np.uint8 and not photo.grey and photo.alpha is None


def _rgbx_of(rgb: np.ndarray) -> np.ndarray | None:
    """The H x W x 4 buffer ``rgb`` is the first three planes of, or None."""
    b = rgb.base
    if isinstance(b, np.ndarray) and b.shape == rgb.shape[:2] + (4,) and b.dtype == np.uint8 \
            and b.flags.c_contiguous and b.ctypes.data == rgb.ctypes.data and b.strides == rgb.strides:
        return b
    return None


def photo_to_pil(photo: Photo) -> Image.Image:
    """8-bit Pillow image of a Photo (16-bit colour is reduced; used for previews and JPEG). The RGB of an
    RGBX buffer is handed over as the buffer itself (read-only, no copy)."""
    rgbx = _rgbx_of(photo.rgb) if photo.alpha is None and not photo.grey else None
    if rgbx is not None:
        return Image.frombuffer("RGBX", rgbx.shape[1::-1], rgbx, "raw", "RGBX", 0, 1)
    a = _stored_planes(photo, 0, photo.rgb.shape[0])
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    mode = ("L", "LA", "RGB", "RGBA")[a.shape[2] - 1]
    return Image.fromarray(a[..., 0] if mode == "L" else a, mode)


def _has_tifffile() -> bool:
    return importlib.util.find_spec("tifffile") is not None


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


class _Checked:
    """A file as Pillow sees it, without ``fileno``: given one, its JPEG and TIFF encoders write to the
    descriptor themselves and ignore a short write (disk full, a file-size limit), so a cut-off file
    was renamed into place as a success. Through Python's own write that is an OSError."""

    def __init__(self, f):
        self._f = f

    def __getattr__(self, name):
        if name == "fileno":
            raise AttributeError(name)
        return getattr(self._f, name)


PNG_BAND_BYTES = 1 << 18  # the rows of a PNG filtered and compressed at a time (working memory: about 25 times this)


def _png_filtered(rows: np.ndarray, above: np.ndarray, bpp: int) -> np.ndarray:
    """PNG scanlines of ``rows`` (k, n bytes; ``above`` the row before them, zeros at the top): each row
    filtered by whichever of the five filters leaves the smallest sum of |signed byte| (libpng's and Pillow's
    heuristic), its filter type in front."""
    up = np.concatenate([above[None], rows[:-1]])
    left, corner = np.zeros_like(rows), np.zeros_like(rows)
    left[:, bpp:], corner[:, bpp:] = rows[:, :-bpp], up[:, :-bpp]
    cand = np.empty((5,) + rows.shape, np.uint8)
    cand[0] = rows
    np.subtract(rows, left, out=cand[1])  # uint8 arithmetic wraps modulo 256, as PNG's does
    np.subtract(rows, up, out=cand[2])
    np.subtract(rows, ((left.astype(np.uint16) + up) >> 1).astype(np.uint8), out=cand[3])
    a, b, c = left.astype(np.int16), up.astype(np.int16), corner.astype(np.int16)
    pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
    np.subtract(rows, np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, corner)), out=cand[4])
    cost = np.abs(cand.view(np.int8)).view(np.uint8).sum(axis=2, dtype=np.uint32)  # |-128| wraps to 128 as uint8
    best = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = cand[best, np.arange(rows.shape[0])]
    return out


def _write_png(photo: Photo, f, chunks: list) -> None:
    """A PNG of the photo (8 or 16 bits; grey, grey + alpha, RGB, RGBA) written a band of rows at a time, so
    a large output needs no second copy of itself (Pillow's encoder wants a 4-byte-a-pixel image of it).
    ``chunks`` (type, data) go ahead of the pixels, as given (_png_head: in Pillow's order)."""
    h, w = photo.rgb.shape[:2]
    planes = (1 if photo.grey else 3) + (photo.alpha is not None)
    depth = photo.rgb.dtype.itemsize
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[planes]
    f.write(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8 * depth, colour_type, 0, 0, 0)))
    for kind, data in chunks:
        f.write(_png_chunk(kind, data))
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_FILTERED)  # as Pillow's: smaller on filtered rows
    n = w * planes * depth
    above, pending = np.zeros(n, np.uint8), bytearray()
    step = max(1, PNG_BAND_BYTES // n)
    for y in range(0, h, step):
        rows = _stored_planes(photo, y, min(y + step, h)).astype(">u%d" % depth, copy=False)
        rows = np.ascontiguousarray(rows).view(np.uint8).reshape(-1, n)
        pending += z.compress(_png_filtered(rows, above, planes * depth))
        above = rows[-1].copy()
        if len(pending) >= 1 << 16:  # IDAT chunks of 64 KB or more, as zlib hands them over
            f.write(_png_chunk(b"IDAT", pending))
            pending.clear()
    pending += z.flush()
    f.write(_png_chunk(b"IDAT", pending) + _png_chunk(b"IEND", b""))


_TIFF_TEXT_TAGS = (270, 271, 272, 305, 306, 315, 33432)  # description, make, model, software, date, artist, copyright


def _shaped(description: str) -> bool:
    """tifffile's own ImageDescription ('{"shape": [h, w, 3]}'): the input's size, wrong for any output
    (a TIFF reader checks it against the pixels; a JPEG's EXIF shows it as the caption)."""
    import json

    if not description.startswith("{") or len(description) > 1024:  # tifffile's is short; a caption is not JSON
        return False
    try:
        return isinstance(d := json.loads(description), dict) and "shape" in d
    except (ValueError, RecursionError):  # RecursionError: '{"a": [[[[...' nested thousands deep
        return False


def _sub_ifds(exif: Image.Exif) -> list:
    """The EXIF and GPS sub-IFDs the EXIF has (``get_ifd`` of one it lacks adds an empty one to what is written)."""
    return [exif.get_ifd(i) for i in (_EXIF_IFD, 0x8825) if i in exif]


def _text_as_bytes(exif: Image.Exif) -> list:
    """Pillow reads EXIF text as latin-1 and writes it back as ASCII, each other character a '?' (a
    Japanese caption or an Angstrom came out as ????): each such text becomes the bytes read (or, set
    by a caller, UTF-8, as phones write it). Returns what was changed, (ifd, tag, text), to undo it."""
    changed = []
    for ifd in (exif, *_sub_ifds(exif)):
        for tag, v in list(ifd.items()):
            if isinstance(v, str) and not v.isascii():
                changed.append((ifd, tag, v))
                try:
                    ifd[tag] = v.encode("latin-1")
                except UnicodeEncodeError:
                    ifd[tag] = v.encode("utf-8")
    return changed


def _exif_bytes(exif: Image.Exif) -> bytes:
    """``exif.tobytes()`` with its text as the file had it, in classic TIFF layout (a BigTIFF scan's EXIF
    read back as BigTIFF, which no EXIF reader takes); the photo's own EXIF is left as it was."""
    changed, big = _text_as_bytes(exif), getattr(exif, "bigtiff", False)
    exif.bigtiff = False
    try:
        return exif.tobytes()
    finally:
        exif.bigtiff = big
        for ifd, tag, v in changed:
            ifd[tag] = v


def _write_tiff16(photo: Photo, f, dst: Path, *, icc: bytes | None, dpi, exif: Image.Exif | None,
                  xmp: bytes | None, iptc: bytes | None, compression: str | None) -> None:
    import tifffile

    compression = _TIFF_LOSSLESS.get(compression)
    if compression in ("lzw", "packbits") and importlib.util.find_spec("imagecodecs") is None:
        compression = "adobe_deflate"  # tifffile encodes these only through imagecodecs; Deflate is as lossless

    a = photo.rgb if not photo.grey else to_grey(photo.rgb)[..., None]
    if photo.alpha is not None:
        a = np.dstack([a, photo.alpha])
    # bytes as the file had them (Pillow decodes TIFF / EXIF text as latin-1): tifffile takes only ASCII str
    tags = [(t, "s", 0, exif[t].encode("latin-1", "replace"), True) for t in _TIFF_TEXT_TAGS
            if exif is not None and isinstance(exif.get(t), str)]
    if xmp:
        tags.append((700, "B", len(xmp), xmp, True))
    if iptc:
        tags.append((33723, 7, len(iptc), iptc, True))  # UNDEFINED, as Pillow reads it back as bytes
    if exif is not None and any(_sub_ifds(exif)):
        log.warning("%s: 16-bit colour TIFF is written with its IFD0 tags (make, model, date, ...) but without the "
                    "EXIF / GPS sub-IFDs", dst)
    # tifffile takes the name of an open file from `f.name`: an fd here, so it is given the destination's.
    tifffile.imwrite(tifffile.FileHandle(f, mode="wb", name=dst.name), a, photometric="minisblack" if photo.grey else "rgb",
                     extrasamples=["unassalpha"] if photo.alpha is not None else None,
                     iccprofile=icc, resolution=tuple(dpi) if dpi else None, resolutionunit="INCH" if dpi else None,
                     software=False, metadata=None, extratags=tags, compression=compression)


MAX_SIDE = {"JPEG": 65500, "WEBP": 16383, "GIF": 65535}  # the encoders' own limits, pixels a side
MAX_DPI = 1e6  # past any scanner's: a larger (or 0, NaN) resolution read from a file is dropped
FORMAT_MAX_DPI = {"JPEG": 65535, "PNG": 1e8}  # JFIF's 16-bit density (past it Pillow wraps), pHYs' 32-bit per metre


def check_output_size(dst, fmt: str | None, width: int, height: int) -> None:
    """Before any inference: an output the format cannot hold is refused, naming a format that can."""
    f = format_for(Path(dst), fmt)
    limit = MAX_SIDE.get(f)
    if limit is not None and max(width, height) > limit:
        raise OutputError(f"{dst}: a {width}x{height} output exceeds {f}'s limit of {limit} pixels a side; "
                          f"write PNG or TIFF (--format png)")


_PNG_XMP = "XML:com.adobe.xmp"  # the iTXt keyword PNG keeps XMP under
# Not carried as text: XMP (Photo.xmp), and ImageMagick's hex copy of the EXIF, which getexif() reads and the
# output has as eXIf, orientation reset; the copy kept the old orientation.
_PNG_NOT_TEXT = {_PNG_XMP, "Raw profile type exif"}


# A PNG's colour encoding besides an ICC profile (Pillow's info keys): gAMA (1.0 is linear light), cHRM, sRGB.
# Pillow reads them and writes them only as chunks given in pnginfo.
_PNG_COLOUR = ("gamma", "chromaticity", "srgb")


def _png_colour_chunks(photo: Photo, icc: bytes | None) -> list:
    """(chunk type, data) of the input PNG's gAMA / cHRM / sRGB; no sRGB beside an iCCP (PNG allows one of them)."""
    x = photo.extra
    chunks = [(b"gAMA", struct.pack(">I", round(x["gamma"] * 100000)))] if "gamma" in x else []
    if "chromaticity" in x:
        chunks.append((b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in x["chromaticity"]))))
    if "srgb" in x and not icc:
        chunks.append((b"sRGB", bytes([x["srgb"]])))
    return chunks


def _png_head(kw: dict, colour: list) -> list:
    """The (type, data) chunks ahead of a PNG's pixels for save_image's Pillow arguments, as Pillow writes them:
    iCCP, then ``colour`` (gAMA / cHRM / sRGB), pHYs, eXIf, then the text (tEXt / iTXt) of its pnginfo."""
    head = [(b"iCCP", b"ICC Profile\0\0" + zlib.compress(kw["icc_profile"]))] if kw.get("icc_profile") else []
    head += colour
    if kw.get("dpi"):
        head.append((b"pHYs", struct.pack(">IIB", *(int(d / 0.0254 + 0.5) for d in kw["dpi"][:2]), 1)))
    if kw.get("exif"):
        head.append((b"eXIf", kw["exif"][6:] if kw["exif"].startswith(b"Exif\0\0") else kw["exif"]))
    return head + ([c[:2] for c in kw["pnginfo"].chunks] if "pnginfo" in kw else [])


def _png_text(photo: Photo):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in photo.text.items():
        try:
            v.encode("latin-1")  # what tEXt can hold; the rest goes in iTXt (UTF-8)
            info.add_text(k, v)
        except UnicodeEncodeError:  # with its language tag and translated keyword, as read
            info.add_itxt(k, v, getattr(v, "lang", None) or "", getattr(v, "tkey", None) or "")
    if photo.xmp:
        info.add_itxt(_PNG_XMP, photo.xmp.decode("utf-8", "replace"))
    return info


def _scaled_dpi(photo: Photo, dpi_scale: float) -> tuple[float, float] | None:
    return tuple(float(d) * dpi_scale for d in photo.dpi) if photo.dpi else None


# MakerNotes whose offsets count from their own start (or their own TIFF header, Nikon's): they stay readable
# wherever the EXIF puts them. Others (Canon's headerless IFD, Sony's, Panasonic's, ...) count from the EXIF's
# TIFF header, and Pillow's tobytes() lays the EXIF out anew: makernote.rebase moves their offsets with them.
_MAKERNOTE_SELF_CONTAINED = (b"Nikon\0\x02", b"OLYMPUS\0", b"OM SYSTEM\0", b"FUJIFILM", b"Apple iOS\0", b"PENTAX \0")


def _output_exif(photo: Photo, dpi, name: str | Path = "<image>", fmt: str | None = None) -> bytes:
    """The photo's EXIF as its output's: resolution tags saying ``dpi`` (none without), the output's pixel
    size, its MakerNote's offsets moved to the note's new place (or, where they cannot be, no MakerNote).
    ``fmt`` "TIFF": the writer lays the EXIF out once more, which no offset here can foresee. Raises what
    Pillow raises on EXIF it cannot re-encode."""
    exif = photo.exif
    # EXIF's own resolution tags (a TIFF's are its file's) must say what the output's dpi says.
    for tag in (282, 283, 296):
        exif.pop(tag, None)
    if dpi:
        exif[282], exif[283], exif[296] = (*dpi, 2)
    sub = exif.get_ifd(_EXIF_IFD) if _EXIF_IFD in exif else None
    if sub:
        sub[_PIXEL_X], sub[_PIXEL_Y] = photo.rgb.shape[1], photo.rgb.shape[0]
    note = sub.get(makernote.MAKER_NOTE) if sub else None
    source = photo.extra.get("exif_source")
    if not isinstance(note, bytes) or note.startswith(_MAKERNOTE_SELF_CONTAINED):
        return _exif_bytes(exif)
    data = makernote.rebase(source, _exif_bytes(exif)) if isinstance(source, bytes) and fmt != "TIFF" else None
    if data is None:
        del sub[makernote.MAKER_NOTE]
        log.warning("%s: the %s MakerNote (%d bytes) is left out: its offsets count from the input's EXIF layout, "
                    "which is written anew, and would point at other data", name, exif.get(271) or "camera's",
                    len(note))
        data = _exif_bytes(exif)
    return data


def with_metadata(im: Image.Image, photo: Photo, dpi_scale: float = 1.0) -> Image.Image:
    """``im``, the Pillow image of ``photo``, carrying its ICC profile, DPI (times ``dpi_scale``) and EXIF in
    ``im.info``, where getexif() and Pillow's writers find them: what save_image writes into a file."""
    if photo.icc:
        im.info["icc_profile"] = photo.icc
    dpi = _scaled_dpi(photo, dpi_scale)
    if dpi:
        im.info["dpi"] = dpi
    if photo.exif is not None:
        try:
            im.info["exif"] = _output_exif(photo, dpi)
        except Exception as e:
            log.warning("<image>: EXIF could not be re-encoded (%s); returned without it", e)
    return im


def keeps_16bit(photo: Photo, fmt: str) -> bool:
    """Whether a 16-bit photo is written with its 16 bits: PNG, TIFF, and a grey one as a 16-bit PGM
    (Pillow writes maxval 65535 for grey, but no 48-bit colour PPM)."""
    return photo.rgb.dtype == np.uint16 and (fmt in _SIXTEEN_BIT or fmt == "PPM" and photo.grey)


def _written_by_pillow(photo: Photo, fmt: str) -> bool:
    """Whether save_image hands the pixels to Pillow's encoder (not tifffile's or its own PNG writer)."""
    return not (keeps_16bit(photo, fmt) and _has_tifffile()) or photo.grey and photo.alpha is None


def tiff_compression(photo: Photo, fmt: str, strip_metadata: bool = False) -> str | None:
    """The lossless compression (Pillow's name) a TIFF output is written with: its TIFF input's, so an LZW or
    Deflate scan does not come back 3-6 times larger. Other inputs give an uncompressed TIFF (what any reader
    takes; its size is known before the work). Pillow compresses through libtiff, which cannot write EXIF /
    GPS sub-IFDs: a photo with them that Pillow writes stays uncompressed, its metadata kept."""
    c = photo.extra.get("compression") if fmt == "TIFF" else None
    if c and not strip_metadata and photo.exif is not None and any(_sub_ifds(photo.exif)) \
            and _written_by_pillow(photo, fmt):
        return None
    return c


def _icc_for_output(photo: Photo, fmt: str, dst: Path) -> bytes | None:
    """The photo's ICC profile if its colour space (header bytes 16-20) is that of the pixels written: grey
    is written grey except in WebP, which has no grey. A Gray profile on WebP's RGB, or a CMYK / Lab one on
    RGB, makes a colour-managed reader refuse the file or show wrong colours."""
    want = b"GRAY" if photo.grey and fmt != "WEBP" else b"RGB "
    space = photo.icc[16:20]
    if space == want:
        return photo.icc
    log.warning("%s: the input's ICC profile is for %s, and %s pixels are written; written without a profile",
                dst, space.decode("latin-1").strip() or "no colour space", "grey" if want == b"GRAY" else "RGB")
    return None


_APP13_ROOM = 65533 - 14 - 12  # a marker segment less 'Photoshop 3.0', the resource's header and padding


def _app13(jpeg, iptc: bytes) -> tuple[int, bytes]:
    """(where in ``jpeg``, a Photoshop APP13 segment holding the IPTC-IIM resource 0x0404): after its leading
    APPn segments (JFIF, EXIF, XMP, ICC), where Photoshop and ExifTool put it."""
    resource = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(iptc)) + iptc + b"\0" * (len(iptc) & 1)
    segment = b"\xff\xed" + struct.pack(">H", 2 + 14 + len(resource)) + b"Photoshop 3.0\0" + resource
    i = 2
    while jpeg[i] == 0xFF and 0xE0 <= jpeg[i + 1] <= 0xEF:
        i += 2 + struct.unpack(">H", jpeg[i + 2:i + 4])[0]
    return i, segment


def _pillow_save(im: Image.Image, f, fmt: str, kw: dict, dst: Path) -> None:
    """``im.save``; a TIFF whose tags libtiff (Pillow's compressed TIFF writer) refuses is written uncompressed."""
    try:
        im.save(f, format=fmt, **kw)
    except RuntimeError as e:  # 'Error setting from dictionary', before anything is written
        if "compression" not in kw:
            raise
        log.info("%s: written uncompressed: libtiff refused its tags (%s)", dst, e)
        f.seek(0)
        f.truncate()
        im.save(f, format=fmt, **{k: v for k, v in kw.items() if k != "compression"})


def save_image(photo: Photo, dst, *, fmt: str | None = None, quality: int = 92, strip_metadata: bool = False,
               dpi_scale: float = 1.0) -> Path:
    """Write atomically: a temporary file in the destination folder, fsync, then rename."""
    dst = Path(dst)
    fmt = format_for(dst, fmt)
    if not dst.parent.is_dir():
        raise OutputError(f"{dst}: output folder {dst.parent} does not exist")
    kw: dict = {}
    iptc = None
    if photo.icc:  # kept by strip_metadata too: it says how to read the colours (a P3 photo without it shifts)
        icc = _icc_for_output(photo, fmt, dst)
        if icc:
            kw["icc_profile"] = icc
    png_colour = _png_colour_chunks(photo, kw.get("icc_profile")) if fmt == "PNG" else []
    if not strip_metadata:
        dpi = _scaled_dpi(photo, dpi_scale)
        if dpi and max(dpi) > FORMAT_MAX_DPI.get(fmt, MAX_DPI * 8):
            log.warning("%s: %s cannot store %g dpi; written without a resolution", dst, fmt, max(dpi))
            dpi = None
        if photo.exif is not None and fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
            try:
                kw["exif"] = _output_exif(photo, dpi, dst, fmt)
                if fmt == "TIFF":  # Pillow's TIFF writer parses bytes again, then writes text as ASCII
                    tags = Image.Exif()
                    tags.load(kw["exif"])
                    _text_as_bytes(tags)
                    kw["exif"] = tags
            except Exception as e:
                kw.pop("exif", None)
                log.warning("%s: EXIF could not be re-encoded (%s); written without it", dst, e)
        if dpi:
            kw["dpi"] = dpi
        if photo.xmp and fmt == "TIFF":  # IFD0's XMP tag: Pillow's TIFF writer has no xmp=
            kw.setdefault("exif", Image.Exif())[700] = photo.xmp
        if photo.iptc and fmt == "TIFF":
            kw.setdefault("exif", Image.Exif())[33723] = photo.iptc
        elif photo.iptc and fmt == "JPEG" and len(photo.iptc) <= _APP13_ROOM:
            iptc = photo.iptc  # an APP13 segment, spliced in below: Pillow writes none
        elif photo.iptc:
            log.warning("%s: the input's IPTC-IIM (caption, keywords, copyright; %d bytes) cannot be kept in %s; "
                        "written without it (XMP, where the input has it, is kept)", dst, len(photo.iptc),
                        fmt if fmt != "JPEG" else "one JPEG segment")
        if photo.xmp and fmt in ("JPEG", "WEBP"):
            kw["xmp"] = photo.xmp
        if photo.comment and fmt == "JPEG":
            kw["comment"] = photo.comment
        if fmt == "PNG" and (photo.text or photo.xmp):
            kw["pnginfo"] = _png_text(photo)
    gamma = photo.extra.get("gamma")
    if fmt != "PNG" and gamma and abs(gamma - 1 / 2.2) > 0.01 and "srgb" not in photo.extra \
            and "icc_profile" not in kw:  # an ICC profile, which overrides gAMA, says it all
        log.warning("%s: the input's PNG gamma %g (not sRGB's 0.45) cannot be kept in %s; viewers will read it as "
                    "sRGB and show other tones (write PNG to keep it)", dst, gamma, fmt)
    if fmt == "JPEG":  # one marker segment each: more (a PNG's or TIFF's metadata can be) is refused
        for key, room in (("exif", 65533), ("xmp", 65504), ("comment", 65533)):
            if key in kw and len(kw[key]) > room:
                log.warning("%s: the input's %s (%d bytes) does not fit in a JPEG (%d at most); written without it",
                            dst, key.upper() if key != "comment" else key, len(kw.pop(key)), room)
    if fmt in ("JPEG", "WEBP"):
        kw["quality"] = quality
    if fmt == "WEBP" and photo.extra.get("lossless"):
        kw["lossless"] = True  # as the input was: an archive's lossless WebP does not come back lossy
    if fmt == "JPEG":  # full-resolution chroma: 4:2:0 undid much of what dejpeg restored (measured: below its input)
        kw["subsampling"] = 0
    compression = tiff_compression(photo, fmt, strip_metadata)
    if compression:
        kw["compression"] = compression
    elif fmt == "TIFF" and photo.extra.get("compression"):
        log.info("%s: written uncompressed: Pillow's compressed TIFF writer (libtiff) cannot hold the EXIF / GPS "
                 "sub-IFDs, which are kept", dst)
    keep16 = keeps_16bit(photo, fmt)
    if fmt in NO_ALPHA and photo.alpha is not None:
        log.warning("%s: %s has no alpha channel; transparency dropped", dst, fmt)
        photo = Photo(photo.rgb, None, photo.grey)
    elif fmt == "GIF" and photo.alpha is not None and np.any((photo.alpha > 0) & (photo.alpha < photo.maxval)):
        log.warning("%s: GIF keeps only fully transparent pixels; partly transparent ones become opaque", dst)
    try:
        with atomic_file(dst) as raw:
            f = _Checked(raw)
            if fmt == "PNG":  # gAMA / cHRM / sRGB: colour, as the ICC profile, so kept by strip_metadata too
                _write_png(photo, f, _png_head(kw, png_colour))
            elif keep16 and photo.grey and photo.alpha is None:
                _pillow_save(Image.fromarray(to_grey(photo.rgb)), f, fmt, kw, dst)
            elif keep16 and fmt == "TIFF" and _has_tifffile():
                try:
                    _write_tiff16(photo, raw, dst,  # tifffile writes through Python (and wants fileno)
                                  icc=kw.get("icc_profile"), dpi=kw.get("dpi"), compression=compression,
                                  exif=None if strip_metadata else photo.exif,
                                  xmp=None if strip_metadata else photo.xmp,
                                  iptc=None if strip_metadata else photo.iptc)
                except (ValueError, TypeError) as e:
                    raise OutputError(f"{dst}: cannot write 16-bit TIFF ({e})") from None
            else:
                if keep16:
                    log.warning("%s: written as 8-bit; pip install 'edge-enhance[io16]' for 16-bit colour TIFF", dst)
                elif photo.rgb.dtype == np.uint16:
                    log.warning("%s: %s stores 8 bits per channel; 16-bit precision reduced", dst, fmt)
                if iptc:  # the segment goes in between, written from views of the encoded file (no copies)
                    b = io.BytesIO()
                    _pillow_save(photo_to_pil(photo), b, fmt, kw, dst)
                    data = b.getbuffer()
                    at, segment = _app13(data, iptc)
                    f.write(data[:at])
                    f.write(segment)
                    f.write(data[at:])
                    del data
                else:
                    _pillow_save(photo_to_pil(photo), f, fmt, kw, dst)
    except (OSError, ValueError, OverflowError, struct.error) as e:  # an encoder's refusal (WebP's size limit, ...)
        raise OutputError(f"{dst}: cannot write ({getattr(e, 'strerror', None) or e})") from None
    return dst
