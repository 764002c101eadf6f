import importlib.util
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from edge_enhance import imageio, makernote
from edge_enhance.errors import ConfigError, ImageInputError, OutputError


def _save(tmp_path, name, im, **kw):
    p = tmp_path / name
    im.save(p, **kw)
    return p


@pytest.mark.parametrize("mode,expect_alpha,expect_grey", [
    ("RGB", False, False), ("RGBA", True, False), ("L", False, True), ("LA", True, True), ("1", False, True),
])
def test_modes(tmp_path, mode, expect_alpha, expect_grey):
    p = _save(tmp_path, "a.png", Image.new(mode, (5, 4)))
    ph = imageio.load_image(p)
    assert ph.rgb.shape == (4, 5, 3) and ph.rgb.dtype == np.uint8
    assert (ph.alpha is not None) == expect_alpha and ph.grey == expect_grey


def test_palette_with_transparency_becomes_rgba(tmp_path):
    im = Image.new("P", (4, 4))
    im.info["transparency"] = 0
    p = _save(tmp_path, "p.png", im, transparency=0)
    assert imageio.load_image(p).alpha is not None


def test_16bit_grey_roundtrip(tmp_path):
    a = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    p = _save(tmp_path, "g16.png", Image.fromarray(a))
    ph = imageio.load_image(p)
    assert ph.rgb.dtype == np.uint16 and ph.grey and np.array_equal(ph.rgb[..., 0], a)
    out = imageio.save_image(ph, tmp_path / "o16.png")
    assert np.array_equal(np.asarray(Image.open(out)), a)


def test_16bit_colour_png_roundtrip(tmp_path):
    png = pytest.importorskip("png", reason="pypng (edge-enhance[io16]) not installed")
    a = np.random.default_rng(0).integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    p = tmp_path / "c16.png"
    with open(p, "wb") as f:
        png.Writer(5, 4, greyscale=False, bitdepth=16).write(f, a.reshape(4, 15))
    ph = imageio.load_image(p)
    assert ph.rgb.dtype == np.uint16 and np.array_equal(ph.rgb, a)
    out = imageio.save_image(ph, tmp_path / "o.png")
    assert np.array_equal(imageio.load_image(out).rgb, a)


def test_exif_orientation_applied_and_reset(tmp_path):
    im = Image.new("RGB", (6, 3), (255, 0, 0))
    im.putpixel((0, 0), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = _save(tmp_path, "o.jpg", im, exif=exif.tobytes(), quality=100)
    ph = imageio.load_image(p)
    assert ph.rgb.shape == (6, 3, 3)
    out = imageio.save_image(ph, tmp_path / "out.jpg")
    with Image.open(out) as o:
        assert o.getexif().get(0x0112) == 1 and o.size == (3, 6)


@pytest.mark.parametrize("alpha", [False, True])
def test_16bit_colour_png_keeps_icc_dpi_and_exif(tmp_path, alpha):
    """16-bit colour pixels (our PNG writer; pypng reads them back) keep the ICC profile, DPI and EXIF as 8 bits do."""
    pytest.importorskip("png", reason="pypng (edge-enhance[io16]) not installed")
    rng = np.random.default_rng(1)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Epson"
    a = rng.integers(0, 65536, (4, 5, 3), dtype=np.uint16)
    ph = imageio.Photo(a, rng.integers(0, 65536, (4, 5), dtype=np.uint16) if alpha else None, False, icc, exif,
                       (300, 300), "PNG")
    out = imageio.load_image(imageio.save_image(ph, tmp_path / "o.png", dpi_scale=2))
    assert np.array_equal(out.rgb, a) and (out.alpha is not None) == alpha
    assert out.icc == icc and out.exif.get(0x010F) == "Epson" and out.dpi == pytest.approx((600, 600), abs=0.01)
    stripped = imageio.load_image(imageio.save_image(ph, tmp_path / "s.png", strip_metadata=True))
    assert stripped.icc == icc and stripped.dpi is None and stripped.exif is None


@pytest.mark.parametrize("mode", ["L", "P", "I;16", "RGBA", "CMYK", "RGB"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_tiff_orientation_every_mode(tmp_path, mode, orientation):
    """An uncompressed TIFF with Orientation 5-8 in a mode Pillow can memory-map (L, P, I;16, RGBA,
    CMYK) came out scrambled through Pillow 13's by-path load: upright pixels are what is read."""
    rng = np.random.default_rng(orientation)
    up = Image.fromarray(rng.integers(0, 256, (5, 8, 3), dtype=np.uint8))
    R = Image.Transpose
    turn, undo = {3: (R.ROTATE_180, R.ROTATE_180), 6: (R.ROTATE_90, R.ROTATE_270), 8: (R.ROTATE_270, R.ROTATE_90)}[orientation]
    stored = up.transpose(turn)
    stored = stored.convert("I;16") if mode == "I;16" else stored.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    p = _save(tmp_path, "o.tif", stored, exif=exif)
    want = imageio._to_photo(stored.transpose(undo), p)
    ph = imageio.load_image(p)
    assert ph.rgb.shape == want.rgb.shape == (5, 8, 3)
    np.testing.assert_array_equal(ph.rgb, want.rgb)
    assert ph.exif is None or ph.exif.get(0x0112) in (None, 1)


def test_icc_and_dpi_carried_or_stripped(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = _save(tmp_path, "m.png", Image.new("RGB", (4, 4)), icc_profile=icc, dpi=(300, 300))
    ph = imageio.load_image(p)
    kept = imageio.save_image(ph, tmp_path / "k.png", dpi_scale=2)
    with Image.open(kept) as o:
        assert o.info.get("icc_profile") == icc and round(o.info["dpi"][0]) == 600
    stripped = imageio.save_image(ph, tmp_path / "s.png", strip_metadata=True)
    with Image.open(stripped) as o:  # the profile is colour, not metadata: a P3 photo without it shifts
        assert o.info.get("icc_profile") == icc and "dpi" not in o.info


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_strip_metadata_keeps_the_colour_and_drops_the_rest(tmp_path, ext):
    p3 = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()  # stands in for Display P3
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    exif.get_ifd(0x8825)[1] = "N"
    ph = imageio.Photo(np.full((4, 6, 3), 90, np.uint8), None, False, p3, exif, (300, 300), "PNG")
    ph.text = {"Author": "Zo\u00eb"}
    ph.extra.update(gamma=0.5, chromaticity=(0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06))
    out = imageio.save_image(ph, tmp_path / f"s.{ext}", strip_metadata=True)
    with Image.open(out) as o:
        o.load()
        assert o.info.get("icc_profile") == p3
        assert not o.getexif().get(0x010F) and not o.getexif().get_ifd(0x8825)
        assert round(o.info.get("dpi", (0, 0))[0]) != 300  # a TIFF says 1 dpi when given none
        if ext == "png":
            assert o.info.get("gamma") == pytest.approx(0.5) and "Author" not in o.text


def test_cmyk_without_profile_converts(tmp_path):
    p = _save(tmp_path, "c.jpg", Image.new("CMYK", (4, 4), (0, 255, 255, 0)))
    ph = imageio.load_image(p)
    assert ph.rgb.shape == (4, 4, 3) and ph.rgb[0, 0, 0] > 200 and ph.rgb[0, 0, 1] < 60


@pytest.mark.parametrize("content,match", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image"),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "pillow-heif"),
])
def test_bad_files_named_with_cause(tmp_path, content, match):
    p = tmp_path / "bad.jpg"
    p.write_bytes(content)
    with pytest.raises(ImageInputError, match=match) as e:
        imageio.load_image(p)
    assert str(p) in str(e.value)


def test_truncated_jpeg(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buf, "JPEG")
    p = tmp_path / "t.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        imageio.load_image(p)


def test_pixel_limit_names_size_and_limit(tmp_path):
    p = _save(tmp_path, "big.png", Image.new("L", (100, 50)))
    with pytest.raises(ImageInputError, match=r"100x50 = 5,000 pixels exceeds the limit of 4,999 pixels"):
        imageio.load_image(p, max_pixels=4999)


@pytest.mark.parametrize("app_limit", [89_478_485, 1000, None])
def test_pillow_bomb_limit_is_given_back(tmp_path, monkeypatch, app_limit):
    """Pillow's limit is one process-wide value: a decode raises it for itself, then the application's
    own setting (Pillow's default, a stricter one, or none) is back, whatever max_pixels was asked."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", app_limit)
    p = _save(tmp_path, "s.png", Image.new("RGB", (60, 50)))
    for limit in (imageio.DEFAULT_MAX_PIXELS, 10**10, 3000):
        assert imageio.load_image(p, max_pixels=limit).rgb.shape == (50, 60, 3)
        assert Image.MAX_IMAGE_PIXELS == app_limit


def test_decoding_from_threads_leaves_the_warning_filters_alone(tmp_path):
    """catch_warnings swaps process-wide state: interleaved from several threads, it left its
    recorder installed, and every later warning of the application vanished into it."""
    import threading
    import warnings

    exif = Image.Exif()
    exif[0x0112] = 6
    p = _save(tmp_path, "o.jpg", Image.new("RGB", (16, 8), (9, 90, 200)), exif=exif)
    filters, show = list(warnings.filters), warnings.showwarning
    errors = []

    def work():
        try:
            for _ in range(40):
                assert imageio.load_image(p).rgb.shape == (16, 8, 3)
        except Exception as e:  # reported below: an assert in a thread does not fail the test
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    assert warnings.filters == filters and warnings.showwarning is show
    with pytest.warns(UserWarning, match="still heard"):
        warnings.warn("still heard")


def test_animated_refused(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageInputError, match="animated"):
        imageio.load_image(p)
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageInputError, match=r"multi-page TIFF \(2 pages\); extract a page first"):
        imageio.load_image(tmp_path / "pages.tif")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable(tmp_path):
    p = _save(tmp_path, "x.png", Image.new("RGB", (2, 2)))
    p.chmod(0)
    with pytest.raises(ImageInputError, match="cannot read"):
        imageio.load_image(p)


@pytest.mark.parametrize("name, encoder", [("out.png", (imageio, "_write_png")), ("out.jpg", (Image.Image, "save"))])
def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch, name, encoder):
    ph = imageio.Photo(np.zeros((4, 4, 3), np.uint8))
    dst = tmp_path / name
    dst.write_bytes(b"previous")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(*encoder, disk_full)
    with pytest.raises(OutputError, match="No space left"):
        imageio.save_image(ph, dst)
    assert dst.read_bytes() == b"previous"
    assert sorted(f.name for f in tmp_path.iterdir()) == [name]


def test_an_atomic_write_without_fchmod_writes_the_file(tmp_path, monkeypatch):
    """Windows before Python 3.13 has no os.fchmod: every write raised AttributeError."""
    from edge_enhance import atomic

    monkeypatch.delattr(os, "fchmod")
    assert atomic.write_bytes(tmp_path / "a.bin", b"ok").read_bytes() == b"ok"
    imageio.save_image(imageio.Photo(np.zeros((2, 2, 3), np.uint8)), tmp_path / "o.png")
    assert Path(atomic.closed_temp(tmp_path, ".tmp-", ".mp4")).read_bytes() == b""  # the video writers' temporary
    assert sorted(f.name for f in tmp_path.iterdir() if not f.name.startswith(".tmp-")) == ["a.bin", "o.png"]


def test_a_failing_chmod_closes_the_temporary_before_removing_it(tmp_path, monkeypatch):
    """Windows cannot remove a file that is still open: the temporary's descriptor is closed first."""
    from edge_enhance import atomic

    fds = []

    def refuse(fd, mode):
        fds.append(fd)
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refuse)
    for write in (lambda: atomic.write_bytes(tmp_path / "a.bin", b"ok"),
                  lambda: atomic.closed_temp(tmp_path, ".tmp-", ".mp4")):  # the video writers' temporary
        with pytest.raises(OSError, match="not permitted"):
            write()
        with pytest.raises(OSError):  # EBADF: closed
            os.fstat(fds[-1])
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_is_the_input_under_another_name_is_refused(tmp_path):
    """macOS's case-insensitive disk: IMG_0001.jpg is IMG_0001.JPG (here: a hard link, two names of one file)."""
    from edge_enhance.atomic import refuse_overwriting_input

    src = tmp_path / "IMG_0001.JPG"
    src.write_bytes(b"original")
    os.link(src, tmp_path / "IMG_0001.jpg")
    with pytest.raises(OutputError, match="would overwrite the input"):
        refuse_overwriting_input(src, tmp_path / "IMG_0001.jpg")
    refuse_overwriting_input(src, tmp_path / "IMG_0001.jpg", overwrite=True)
    refuse_overwriting_input(src, tmp_path / "IMG_0002.jpg")  # not there yet: another file


def test_output_folder_missing_and_unknown_extension(tmp_path):
    ph = imageio.Photo(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(OutputError, match="does not exist"):
        imageio.save_image(ph, tmp_path / "nope" / "o.png")
    with pytest.raises(ConfigError, match="output format"):
        imageio.save_image(ph, tmp_path / "o.xyz")


def test_jpeg_drops_alpha_with_warning(tmp_path, caplog):
    ph = imageio.Photo(np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 128, np.uint8))
    out = imageio.save_image(ph, tmp_path / "o.jpg")
    assert Image.open(out).mode == "RGB" and "transparency dropped" in caplog.text


def test_gif_warns_when_partial_transparency_is_lost(tmp_path, caplog):
    alpha = np.array([[0, 255], [255, 255]], np.uint8)
    imageio.save_image(imageio.Photo(np.zeros((2, 2, 3), np.uint8), alpha), tmp_path / "a.gif")
    assert "GIF keeps only" not in caplog.text
    imageio.save_image(imageio.Photo(np.zeros((2, 2, 3), np.uint8), alpha // 2 + 1), tmp_path / "b.gif")
    assert "partly transparent ones become opaque" in caplog.text


def test_output_format_by_name_in_a_fresh_process():
    """--format png / webp / tif work before Pillow has opened any such file (its writers register lazily)."""
    import subprocess
    import sys

    code = ("from pathlib import Path; from edge_enhance.imageio import format_for; "
            "print(*(format_for(Path('x'), f) for f in ('png', 'webp', 'tif', 'TIFF', 'jpg', 'bmp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["PNG", "WEBP", "TIFF", "TIFF", "JPEG", "BMP"]
    with pytest.raises(ConfigError, match="unknown output format 'HEIC'"):
        imageio.format_for(Path("x"), "heic")


@pytest.mark.parametrize("planar,alpha", [(False, False), (True, True), (False, True)])
def test_16bit_colour_tiff_roundtrip_with_its_metadata(tmp_path, planar, alpha):
    """Pillow decodes 16-bit RGB(A) TIFF (a scanner's 48-bit output) to 8 bits; tifffile keeps all 16."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    a = np.random.default_rng(1).integers(0, 65536, (6, 7, 4 if alpha else 3), dtype=np.uint16)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p = tmp_path / "scan.tif"
    tifffile.imwrite(p, np.moveaxis(a, 2, 0) if planar else a, photometric="rgb", metadata=None,
                     planarconfig="separate" if planar else "contig", extrasamples=["unassalpha"] if alpha else None,
                     resolution=(600, 600), resolutionunit="INCH", iccprofile=icc, extratags=[(271, "s", 0, "Epson", True), (315, "s", 0, "Zoë".encode(), True)])
    ph = imageio.load_image(p)
    assert ph.rgb.dtype == np.uint16 and np.array_equal(ph.rgb, a[..., :3]) and not ph.grey
    assert (ph.alpha is None) != alpha and (not alpha or np.array_equal(ph.alpha, a[..., 3]))
    out = imageio.save_image(ph, tmp_path / "o.tif", dpi_scale=2)
    back = imageio.load_image(out)
    assert np.array_equal(back.rgb, a[..., :3]) and (not alpha or np.array_equal(back.alpha, a[..., 3]))
    assert back.icc == icc and round(back.dpi[0]) == 1200 and back.exif.get(271) == "Epson"
    assert back.exif.get(315) == ph.exif.get(315)  # a non-ASCII artist (tifffile takes only ASCII str) comes back


def test_tiff_without_a_resolution_gets_none_made_up(tmp_path):
    p = tmp_path / "g.tif"
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(p, np.zeros((4, 5), np.uint8), metadata=None)  # no XResolution / YResolution tags
    ph = imageio.load_image(p)
    assert ph.dpi is None
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif", dpi_scale=2)) as o:
        assert 282 not in o.tag_v2


def test_jpeg_output_keeps_full_resolution_chroma(tmp_path):
    from PIL import JpegImagePlugin

    out = imageio.save_image(imageio.Photo(np.zeros((16, 16, 3), np.uint8)), tmp_path / "o.jpg")
    assert JpegImagePlugin.get_sampling(Image.open(out)) == 0  # 4:4:4


@pytest.mark.parametrize("bits", [8, 16])
def test_tifffiles_shape_description_is_not_carried_to_any_output(tmp_path, bits):
    tifffile = pytest.importorskip("tifffile")
    a = np.random.default_rng(2).integers(0, 2 ** bits, (5, 6, 3), dtype=np.uint8 if bits == 8 else np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", a, photometric="rgb")  # metadata default: '{"shape": [5, 6, 3]}'
    ph = imageio.load_image(tmp_path / "t.tif")
    assert ph.exif.get(270) is None and ph.exif.get(305) is None  # nor "Software: tifffile.py"
    big = imageio.Photo(np.repeat(np.repeat(ph.rgb, 2, 0), 2, 1), None, False, exif=ph.exif)
    out = imageio.save_image(big, tmp_path / "o.tif")
    with tifffile.TiffFile(out) as t:
        assert t.pages[0].shape == (10, 12, 3) and t.series[0].shape == (10, 12, 3)
        assert 270 not in t.pages[0].tags
    with Image.open(imageio.save_image(big, tmp_path / "o.jpg")) as j:  # no caption in a viewer either
        assert 270 not in j.getexif()


def test_a_jpeg_without_a_resolution_gets_none_made_up(tmp_path):
    """Pillow reports 72 dpi for a JPEG whose JFIF gives only an aspect ratio and whose EXIF has no
    resolution; written back at keep-print-size that became a real 144 dpi."""
    exif = Image.Exif()
    exif[0x010F] = "Cam"
    p = _save(tmp_path, "a.jpg", Image.new("RGB", (8, 8)), exif=exif)
    assert Image.open(p).info.get("dpi") == (72, 72)
    ph = imageio.load_image(p)
    assert ph.dpi is None
    with Image.open(imageio.save_image(ph, tmp_path / "o.jpg", dpi_scale=2)) as o:
        assert o.info.get("jfif_unit") == 0 and 282 not in o.getexif()
    assert imageio.load_image(_save(tmp_path, "d.jpg", Image.new("RGB", (8, 8)), dpi=(300, 300))).dpi == (300, 300)


@pytest.mark.parametrize("lossless", [True, False])
def test_webp_comes_back_as_lossless_or_lossy_as_it_was(tmp_path, lossless):
    a = np.random.default_rng(3).integers(0, 256, (8, 10, 4), dtype=np.uint8)
    p = _save(tmp_path, "a.webp", Image.fromarray(a), lossless=lossless)
    ph = imageio.load_image(p)
    assert ph.extra.get("lossless", False) == lossless
    out = imageio.save_image(ph, tmp_path / "o.webp").read_bytes()
    assert (b"VP8L" in out[12:40]) == lossless
    if lossless:
        got, shows = np.asarray(Image.open(tmp_path / "o.webp")), a[..., 3] > 0  # colour under alpha 0 is free
        np.testing.assert_array_equal(got[shows], a[shows])


@pytest.mark.parametrize("bits", [8, 16])
def test_a_min_is_white_grey_tiff_reads_as_it_looks(tmp_path, bits):
    # Scanners and archives store grey as MinIsWhite (0 = white); Pillow inverts only the 8-bit kind
    tifffile = pytest.importorskip("tifffile")
    full = 2 ** bits - 1
    shown = np.linspace(0, full, 24 * 16).reshape(16, 24).astype(np.uint16 if bits == 16 else np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", full - shown, photometric="miniswhite")
    ph = imageio.load_image(tmp_path / "s.tif")
    assert ph.grey and ph.rgb.dtype == shown.dtype
    np.testing.assert_array_equal(ph.rgb[..., 0], shown)


XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:description>Oma, 1950</dc:description>'
       b'</rdf:Description></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_captions_travel_xmp_comments_and_png_text(tmp_path, fmt):
    from PIL import PngImagePlugin

    src = tmp_path / f"a.{fmt.lower()}"
    kw = {"xmp": XMP}
    if fmt == "JPEG":
        kw["comment"] = b"scanned 2026"
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("Description", "Oma, 1950")
        info.add_itxt("Author", "Zo\u00eb")
        info.add_itxt("XML:com.adobe.xmp", XMP.decode())
        kw = {"pnginfo": info}
    Image.new("RGB", (8, 8), (90, 60, 30)).save(src, fmt, **kw)
    ph = imageio.load_image(src)
    out = imageio.save_image(ph, tmp_path / f"o.{fmt.lower()}")
    with Image.open(out) as im:
        im.load()
        assert im.info.get("xmp") == XMP
        if fmt == "JPEG":
            assert im.info["comment"] == b"scanned 2026"
        if fmt == "PNG":
            assert im.text["Description"] == "Oma, 1950" and im.text["Author"] == "Zo\u00eb"
    stripped = imageio.save_image(ph, tmp_path / f"s.{fmt.lower()}", strip_metadata=True)
    with Image.open(stripped) as im:
        im.load()
        assert "xmp" not in im.info and "comment" not in im.info and "Description" not in im.info


@pytest.mark.parametrize("ext", ["jpg", "png", "webp", "tif"])
def test_exif_text_in_any_script_is_written_byte_for_byte(tmp_path, ext):
    """Pillow reads EXIF text as latin-1 and wrote it back as ASCII: '東京の夜景 café' came out as '?' per byte."""
    from edge_enhance.imageio import load_image, save_image

    exif = Image.Exif()
    exif[270], exif[315] = "東京の夜景 café".encode(), "Zo\xeb".encode("latin-1")  # UTF-8, and a latin-1 camera's
    Image.new("RGB", (8, 6)).save(tmp_path / "a.jpg", exif=exif.tobytes())
    photo = load_image(tmp_path / "a.jpg")
    save_image(photo, tmp_path / f"o.{ext}")
    got = Image.open(tmp_path / f"o.{ext}").getexif()
    assert got[270].encode("latin-1") == "東京の夜景 café".encode() and got[315].encode("latin-1") == b"Zo\xeb"
    assert photo.exif[270] == "東京の夜景 café".encode().decode("latin-1")  # the photo's own EXIF untouched
    photo.exif[270] = "写真"  # set by a caller as text: written as UTF-8
    save_image(photo, tmp_path / f"p.{ext}")
    assert Image.open(tmp_path / f"p.{ext}").getexif()[270].encode("latin-1") == "写真".encode()


def test_png_international_text_keeps_its_language_and_translated_keyword(tmp_path):
    from PIL import PngImagePlugin

    from edge_enhance.imageio import load_image, save_image

    info = PngImagePlugin.PngInfo()
    info.add_itxt("Author", "山田", lang="ja", tkey="作者")
    Image.new("RGB", (8, 6)).save(tmp_path / "a.png", pnginfo=info)
    save_image(load_image(tmp_path / "a.png"), tmp_path / "o.png")
    got = Image.open(tmp_path / "o.png").text["Author"]
    assert (got, got.lang, got.tkey) == ("山田", "ja", "作者")


@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_a_photo_without_exif_gets_none_in_its_output(tmp_path, ext):
    """An EXIF block made up for the output (orientation, empty EXIF / GPS sub-IFDs) made viewers read
    a JPEG's resolution as 72 dpi and said the file had been through a camera's metadata."""
    p = tmp_path / f"a.{ext}"
    Image.new("RGB", (16, 12), (10, 120, 200)).save(p)
    ph = imageio.load_image(p)
    assert ph.exif is None
    with Image.open(imageio.save_image(ph, tmp_path / f"o.{ext}")) as o:
        assert "exif" not in o.info and not dict(o.getexif()) and o.info.get("dpi") in (None, (72, 72))
    if ext == "jpg":
        with Image.open(tmp_path / "o.jpg") as o:
            assert o.info.get("dpi") is None


@pytest.mark.parametrize("ext", ["tif", "png", "jpg"])
def test_a_bigtiff_scans_exif_is_written_in_classic_layout(tmp_path, ext):
    """A film scanner's BigTIFF: its EXIF went out in BigTIFF layout, so a TIFF output failed after the work
    ('cannot write (unpack requires a buffer of 8 bytes)') and PNG / JPEG outputs held EXIF no reader takes."""
    tifffile = pytest.importorskip("tifffile")
    src = tmp_path / "scan.tif"
    tifffile.imwrite(src, np.full((12, 16, 3), 90, np.uint8), bigtiff=True, metadata=None, software="scanner x")
    with Image.open(imageio.save_image(imageio.load_image(src), tmp_path / f"o.{ext}")) as o:
        assert o.getexif().get(305) == "scanner x"


def test_exif_that_cannot_be_re_encoded_is_left_out_and_the_file_written(tmp_path, monkeypatch, caplog):
    src = tmp_path / "a.jpg"
    ex = Image.Exif()
    ex[305] = "camera"
    Image.new("RGB", (16, 12), (10, 120, 200)).save(src, exif=ex)
    monkeypatch.setattr(imageio, "_exif_bytes", lambda exif: b"Exif\x00\x00II+\x00\x08\x00")
    with Image.open(imageio.save_image(imageio.load_image(src), tmp_path / "o.tif")) as o:
        assert o.getexif().get(305) is None
    assert "EXIF could not be re-encoded" in caplog.text


def test_damaged_exif_of_a_pillow_image_is_logged_not_warned_on_stderr(caplog):
    """Image.open(upload) then enhance(): Pillow's raw UserWarning reached stderr, where a file's is logged."""
    import warnings

    b = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(b, "JPEG", dpi=(300, 300),  # the DPI from JFIF: EXIF unread at open
                                           exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x05\x01\x12")
    im = Image.open(io.BytesIO(b.getvalue()))
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        photo = imageio.photo_from_pil(im)
    assert photo.rgb.shape == (20, 20, 3) and warned == []
    assert "<image>: EXIF partly unreadable (Corrupt EXIF data." in caplog.text


def _srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("ext", ["tif", "png", "jpg"])
def test_a_cmyk_tiffs_profile_does_not_tag_the_rgb_output(tmp_path, ext, caplog):
    """Pillow reads a TIFF's profile into info *and* returns it as tag 34675 of getexif(): it used to ride
    to the RGB output in the EXIF (a TIFF output's ICC tag). The profile is not a CMYK one here (none can be
    built with ImageCms): the conversion falls back, but what is attached is the same question."""
    exif = Image.Exif()
    exif[271] = "Canon"
    p = _save(tmp_path, "c.tif", Image.new("CMYK", (4, 4), (0, 255, 255, 0)), icc_profile=_srgb_icc(),
              exif=exif)
    out = imageio.save_image(imageio.load_image(p), tmp_path / f"o.{ext}")
    with Image.open(out) as o:
        assert o.mode == "RGB" and "icc_profile" not in o.info
        assert 34675 not in o.getexif() and o.getexif().get(271) == "Canon"


def test_photoshop_layers_and_resources_of_a_tiff_are_not_carried(tmp_path):
    """Tags 37724 (layers) and 34377 (image resources) describe the source's pixels; 80 KB of layers
    also made the EXIF too large for a JPEG, and the camera's make, date and GPS were dropped with them."""
    exif = Image.Exif()
    exif[271], exif[306] = "Canon", "2024:05:06 07:08:09"
    exif.get_ifd(0x8825)[1] = "N"
    exif[37724] = b"Adobe Photoshop Document Data Block\0" + bytes(80000)
    exif[34377] = b"8BIM\x03\xed\0\0\0\0\0\x10" + bytes(16)
    p = _save(tmp_path, "ps.tif", Image.new("RGB", (4, 4)), exif=exif.tobytes())
    ph = imageio.load_image(p)
    for ext in ("tif", "jpg"):
        with Image.open(imageio.save_image(ph, tmp_path / f"o.{ext}")) as o:
            e = o.getexif()
            assert 37724 not in e and 34377 not in e
            assert e.get(271) == "Canon" and e.get(306) == "2024:05:06 07:08:09" and e.get_ifd(0x8825).get(1) == "N"


def test_a_16bit_tiff_with_premultiplied_alpha_is_read_straight(tmp_path):
    """ExtraSamples = 1 (associated alpha): the colour is stored times the alpha. Read as it was stored, it came
    out about half as bright at alpha 0.5, and was written as straight alpha; the 8-bit path (Pillow's RGBa) was right."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    colour, alpha = np.array([60000, 30000, 10000]), np.array([[32768, 65535], [1000, 0]], np.uint16)
    stored = np.rint(colour * (alpha[..., None] / 65535)).astype(np.uint16)
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, np.dstack([stored, alpha]), photometric="rgb", extrasamples=["assocalpha"])
    ph = imageio.load_image(p)
    assert ph.rgb.dtype == np.uint16 and np.array_equal(ph.alpha, alpha)
    assert np.abs(ph.rgb[alpha > 30000].astype(int) - colour).max() <= 2  # at 1000 the stored colour is coarse
    assert np.array_equal(ph.rgb[1, 1], [0, 0, 0])


@pytest.mark.parametrize("mode,bits", [("RGB", 8), ("L", 8), ("L", 16), ("RGB", 16)])
def test_a_png_colour_key_becomes_transparency(tmp_path, mode, bits):
    """tRNS of an RGB or grey PNG names one colour that is transparent (only a palette's tRNS was read):
    the key showed, opaque, in the output."""
    png = pytest.importorskip("png", reason="pypng (edge-enhance[io16]) not installed")
    grey, planes = mode == "L", 1 if mode == "L" else 3
    key = (7,) * planes if bits == 8 else (700, 1, 2)[:planes]
    a = np.zeros((2, 3, planes), np.uint8 if bits == 8 else np.uint16)
    a[0, 0] = key
    p = tmp_path / "k.png"
    with open(p, "wb") as f:
        png.Writer(3, 2, greyscale=grey, bitdepth=bits, transparent=key[0] if grey else key).write(f, a.reshape(2, -1))
    ph = imageio.load_image(p)
    assert ph.alpha is not None and ph.grey == grey and ph.rgb.dtype == (np.uint8 if bits == 8 else np.uint16)
    assert ph.alpha[0, 0] == 0 and (ph.alpha.ravel()[1:] == ph.maxval).all()
    with Image.open(imageio.save_image(ph, tmp_path / "o.png")) as o:
        assert o.mode in ("RGBA", "LA") or "transparency" in o.info


def _icc_for(space: bytes) -> bytes:
    """sRGB's profile relabelled: the output check reads only the header's colour space (ImageCms builds no grey one)."""
    icc = _srgb_icc()
    return icc[:16] + space + icc[20:]


@pytest.mark.parametrize("grey,space,ext,kept", [
    (True, b"GRAY", "png", True), (True, b"GRAY", "jpg", True), (True, b"GRAY", "tif", True),
    (True, b"GRAY", "webp", False),  # WebP has no grey: RGB pixels
    (False, b"GRAY", "png", False), (False, b"CMYK", "jpg", False), (True, b"RGB ", "png", False),
])
def test_an_icc_profile_goes_only_on_pixels_of_its_colour_space(tmp_path, caplog, grey, space, ext, kept):
    """A grey photo's Gray profile was attached to WebP's RGB pixels: a colour-managed reader cannot use it."""
    icc = _icc_for(space)
    ph = imageio.Photo(np.full((4, 5, 3), 90, np.uint8), None, grey, icc)
    with Image.open(imageio.save_image(ph, tmp_path / f"o.{ext}")) as o:
        assert o.info.get("icc_profile") == (icc if kept else None)
    assert ("written without a profile" in caplog.text) != kept


_XMP_TURNED = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               b'<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:dc="http://purl.org/dc/'
               b'elements/1.1/" tiff:Orientation="6" dc:format="image/jpeg"/></rdf:RDF></x:xmpmeta>')


@pytest.mark.parametrize("src,ext", [("jpg", "jpg"), ("jpg", "png"), ("jpg", "webp"), ("jpg", "tif"), ("tif", "tif"),
                                     ("tif", "jpg"), ("png", "png")])
def test_orientation_is_not_left_stale_in_xmp_or_a_raw_exif_text(tmp_path, src, ext):
    """The pixels are turned upright and EXIF says 1; XMP's tiff:Orientation (and ImageMagick's PNG text
    copy of the EXIF) still said 6, so a reader honouring them turned the upright output again."""
    from PIL import PngImagePlugin

    exif = Image.Exif()
    exif[0x0112], exif[271] = 6, "Canon"
    kw = {"exif": exif.tobytes(), "xmp": _XMP_TURNED} if src == "jpg" else {}
    if src == "tif":  # XMP in IFD0's tag 700
        exif[700] = _XMP_TURNED
        kw = {"exif": exif}
    if src == "png":  # ImageMagick: the EXIF as hex text, XMP in iTXt
        raw, info = exif.tobytes(), PngImagePlugin.PngInfo()
        info.add_text("Raw profile type exif", f"\nexif\n{len(raw):8d}\n{raw.hex()}\n", zip=True)
        info.add_itxt("XML:com.adobe.xmp", _XMP_TURNED.decode())
        kw = {"pnginfo": info}
    p = _save(tmp_path, f"s.{src}", Image.new("RGB", (6, 4)), **kw)
    ph = imageio.load_image(p)
    assert ph.rgb.shape[:2] == (6, 4)
    with Image.open(imageio.save_image(ph, tmp_path / f"o.{ext}")) as o:
        o.load()
        xmp = o.info.get("xmp") or b""
        assert b'dc:format="image/jpeg"' in xmp and b"tiff:Orientation" not in xmp  # the rest of the XMP is kept
        assert o.getexif().get(0x0112) in (None, 1) and o.getexif().get(271) == "Canon"
        assert "Raw profile type exif" not in o.info and xmp.count(b"<x:xmpmeta") == 1
        if ext == "jpg":
            assert 700 not in o.getexif()  # not a second time in the EXIF


def test_xmp_goes_into_a_16bit_tiff(tmp_path):
    pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    ph = imageio.Photo(np.zeros((4, 5, 3), np.uint16), xmp=_XMP_TURNED)
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif")) as o:
        assert o.info.get("xmp") == _XMP_TURNED


def test_a_tiff_with_a_reduced_resolution_preview_is_one_picture(tmp_path):
    """Page 2 with NewSubfileType = 1 is a preview of page 1: the TIFF was refused as 'multi-page (2 pages)'."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    a = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    p = tmp_path / "scan.tif"
    with tifffile.TiffWriter(p) as t:
        t.write(a, photometric="rgb")
        t.write(a[::2, ::2], photometric="rgb", subfiletype=1)
    assert np.array_equal(imageio.load_image(p).rgb, a)
    with tifffile.TiffWriter(p) as t:  # two pictures: still refused
        t.write(a, photometric="rgb")
        t.write(a, photometric="rgb")
    with pytest.raises(ImageInputError, match="multi-page TIFF"):
        imageio.load_image(p)


def test_a_16bit_pgm_stays_16bit(tmp_path, caplog):
    """Pillow reads and writes 16-bit PGM (maxval 65535); it was written with maxval 255 and a warning that
    PPM stores 8 bits. A 48-bit colour PPM Pillow cannot write: that warning stays there."""
    a = (np.arange(20, dtype=np.uint16) * 3001).reshape(4, 5)
    p = _save(tmp_path, "g.pgm", Image.fromarray(a))
    ph = imageio.load_image(p)
    assert ph.grey and ph.rgb.dtype == np.uint16
    out = imageio.save_image(ph, tmp_path / "o.pgm")
    assert out.read_bytes().startswith(b"P5\n5 4\n65535\n") and np.array_equal(imageio.load_image(out).rgb[..., 0], a)
    assert "8 bits" not in caplog.text
    imageio.save_image(imageio.Photo(ph.rgb), tmp_path / "o.ppm")
    assert "PPM stores 8 bits per channel" in caplog.text


@pytest.mark.parametrize("compression,mode,bits", [
    ("tiff_lzw", "RGB", 8), ("tiff_adobe_deflate", "L", 8), ("packbits", "RGBA", 8), ("tiff_lzw", "L", 16),
    ("tiff_adobe_deflate", "RGB", 16), ("tiff_adobe_deflate", "RGBA", 16), ("raw", "RGB", 8), ("jpeg", "RGB", 8)])
def test_a_tiff_comes_back_with_its_lossless_compression(tmp_path, compression, mode, bits):
    """An LZW scan (228 KB) came back uncompressed (787 KB at x2, 3.4 times its input)."""
    tifffile = pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    planes = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    a = np.random.default_rng(0).integers(0, 2 ** bits, (8, 8, planes), dtype=np.uint8 if bits == 8 else np.uint16)
    p = tmp_path / "c.tif"
    if bits == 16 and planes > 1:  # Pillow writes no 16-bit colour
        tifffile.imwrite(p, a, photometric="rgb", compression="adobe_deflate",
                         extrasamples=["unassalpha"] if planes == 4 else None)
    else:
        Image.fromarray(a[..., 0] if planes == 1 else a).save(p, compression=compression)
    ph = imageio.load_image(p)
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif")) as o:
        assert o.info["compression"] == ("raw" if compression == "jpeg" else compression)  # lossy: not made lossless
    if compression != "jpeg":
        back = imageio.load_image(tmp_path / "o.tif")
        assert np.array_equal(back.rgb, ph.rgb) and (back.alpha is None or np.array_equal(back.alpha, ph.alpha))


def test_a_16bit_colour_tiff_from_lzw_is_written_deflated_without_imagecodecs(tmp_path):
    """tifffile encodes LZW and PackBits only through imagecodecs: Deflate, as lossless, stands in."""
    pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    if importlib.util.find_spec("imagecodecs"):
        pytest.skip("imagecodecs installed: LZW is written as it is")
    ph = imageio.Photo(np.full((4, 5, 3), 40000, np.uint16), extra={"compression": "tiff_lzw"})
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif")) as o:
        assert o.info["compression"] == "tiff_adobe_deflate"


def test_a_compressed_tiffs_exif_sub_ifds_are_kept_uncompressed(tmp_path, caplog):
    """Pillow compresses through libtiff, which cannot write the EXIF / GPS sub-IFDs: the metadata wins."""
    exif = Image.Exif()
    exif[271] = "Canon"
    exif.get_ifd(0x8825)[1] = "N"
    p = _save(tmp_path, "c.tif", Image.new("RGB", (6, 4)), exif=exif.tobytes())
    ph = imageio.load_image(p)
    ph.extra["compression"] = "tiff_lzw"  # as read from an LZW TIFF (which Pillow cannot write with a GPS IFD)
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif")) as o:
        assert o.info["compression"] == "raw" and o.getexif().get_ifd(0x8825).get(1) == "N"
    with Image.open(imageio.save_image(ph, tmp_path / "s.tif", strip_metadata=True)) as o:
        assert o.info["compression"] == "tiff_lzw"


def test_tags_libtiff_refuses_give_an_uncompressed_tiff_not_a_failure(tmp_path, monkeypatch):
    exif = Image.Exif()
    exif.get_ifd(0x8825)[1] = "N"
    ph = imageio.load_image(_save(tmp_path, "c.tif", Image.new("RGB", (6, 4)), exif=exif.tobytes()))
    monkeypatch.setattr(imageio, "tiff_compression", lambda *a: "tiff_lzw")  # past the sub-IFD rule
    with Image.open(imageio.save_image(ph, tmp_path / "o.tif")) as o:
        assert o.info["compression"] == "raw" and o.getexif().get_ifd(0x8825).get(1) == "N"


@pytest.mark.parametrize("bits", [8, 16])
def test_png_gamma_and_chromaticity_are_carried(tmp_path, caplog, bits):
    """A linear-light PNG (gAMA 1.0) came out with no gAMA, so viewers read it as sRGB (darker)."""
    png = pytest.importorskip("png", reason="pypng (edge-enhance[io16]) not installed")
    white = (0.3127, 0.329, 0.64, 0.33, 0.3, 0.6, 0.15, 0.06)
    b = io.BytesIO()
    png.Writer(3, 2, greyscale=False, bitdepth=bits, gamma=1.0).write(b, np.zeros((2, 9), np.uint8 if bits == 8 else np.uint16))
    chrm = imageio._png_chunk(b"cHRM", struct.pack(">8I", *(round(v * 100000) for v in white)))  # after IHDR
    p = tmp_path / "g.png"
    p.write_bytes(b.getvalue()[:33] + chrm + b.getvalue()[33:])
    ph = imageio.load_image(p)
    with Image.open(imageio.save_image(ph, tmp_path / "o.png")) as o:
        assert o.info.get("gamma") == 1.0 and o.info.get("chromaticity") == pytest.approx(white)
    imageio.save_image(ph, tmp_path / "o.jpg")
    assert "gamma 1 (not sRGB's 0.45) cannot be kept in JPEG" in caplog.text


def _iim(*records) -> bytes:
    return b"".join(b"\x1c\x02" + bytes([tag]) + struct.pack(">H", len(v)) + v for tag, v in records)


_IPTC = _iim((0, b"\x00\x04"), (120, b"Harbour at dawn"), (25, b"harbour"), (116, b"(c) 2024 Ana"))


@pytest.mark.parametrize("src,ext", [("jpg", "jpg"), ("jpg", "tif"), ("tif", "jpg"), ("tif", "tif"), ("jpg", "png")])
def test_iptc_captions_and_copyright_are_kept(tmp_path, caplog, src, ext):
    """A JPEG's IPTC-IIM (APP13) was dropped silently; a TIFF's (tag 33723) went into a JPEG's EXIF, where
    no reader looks for it. Kept in JPEG and TIFF; said where the format has no place for it."""
    from PIL import IptcImagePlugin

    p = tmp_path / f"s.{src}"
    if src == "jpg":
        resource = b"8BIM\x04\x04\0\0" + struct.pack(">I", len(_IPTC)) + _IPTC + b"\0" * (len(_IPTC) & 1)
        app13 = b"Photoshop 3.0\0" + resource
        b = io.BytesIO()
        Image.new("RGB", (6, 4)).save(b, "JPEG")
        p.write_bytes(b.getvalue()[:2] + b"\xff\xed" + struct.pack(">H", 2 + len(app13)) + app13 + b.getvalue()[2:])
    else:
        exif = Image.Exif()
        exif[33723] = _IPTC
        _save(tmp_path, p.name, Image.new("RGB", (6, 4)), exif=exif)
    ph = imageio.load_image(p)
    assert ph.iptc == _IPTC
    with Image.open(imageio.save_image(ph, tmp_path / f"o.{ext}")) as o:
        o.load()
        info = IptcImagePlugin.getiptcinfo(o) or {}
        if ext == "png":
            assert f"IPTC-IIM (caption, keywords, copyright; {len(_IPTC)} bytes) cannot be kept in PNG" in caplog.text
        else:
            assert info.get((2, 120)) == b"Harbour at dawn" and info.get((2, 116)) == b"(c) 2024 Ana"
            assert ext == "tif" or 33723 not in o.getexif()


def test_iptc_goes_into_a_16bit_tiff(tmp_path):
    pytest.importorskip("tifffile", reason="tifffile (edge-enhance[io16]) not installed")
    ph = imageio.Photo(np.zeros((4, 5, 3), np.uint16), iptc=_IPTC)
    assert imageio.load_image(imageio.save_image(ph, tmp_path / "o.tif")).iptc == _IPTC


def _canon_exif(header: bytes = b"", inside: bool = True, footer: bool = False) -> bytes:
    """Little-endian EXIF (as Canon, Sony and Panasonic write it) whose MakerNote is an IFD with its camera
    name out of line, at an offset from the EXIF's TIFF header, and a short inline; ``inside``: the name is
    in the note (else at offset 0, outside it); ``footer``: Canon's "II*\\0" + the note's offset at its end."""
    def note(at: int) -> bytes:
        name_at = at + len(header) + 2 + 2 * 12 + 4 if inside else 0
        ifd = struct.pack("<HHHII", 2, 6, 2, 32, name_at) + struct.pack("<HHIHH", 0x10, 3, 1, 0x8000, 0)
        body = header + ifd + bytes(4) + b"Canon EOS R5\0".ljust(32, b"\0")
        return body + (b"II*\0" + struct.pack("<I", at) if footer else b"")

    exif = Image.Exif()
    exif.endian = "<"
    exif[271], exif[0x0112] = "Canon", 6
    exif.get_ifd(0x8769)[0x927C] = note(0)
    at = makernote.position(exif.tobytes())[0]
    exif.get_ifd(0x8769)[0x927C] = note(at)
    return exif.tobytes()


def _tiff_of(exif_bytes: bytes) -> bytes:
    return exif_bytes[6:] if exif_bytes.startswith(b"Exif\0\0") else exif_bytes


def _camera_name(exif_bytes: bytes, header: bytes = b"") -> bytes:
    """The 32 bytes the note's first entry points at, read as a camera's reader reads them."""
    t = _tiff_of(exif_bytes)
    off = struct.unpack_from("<I", t, makernote.position(exif_bytes)[0] + len(header) + 2 + 8)[0]
    return t[off:off + 32].rstrip(b"\0")


@pytest.mark.parametrize("header,footer", [(b"", False), (b"", True), (b"SONY DSC \0\0\0", False)])
@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_a_makernote_moved_by_the_new_exif_layout_has_its_offsets_moved_with_it(tmp_path, caplog, ext, header,
                                                                                footer):
    """Pillow lays EXIF out anew (the note moves 24 bytes with the output's size tags): a Canon / Sony note's
    entries, whose offsets count from the EXIF's TIFF header, would read other data; they are moved with it."""
    src = _save(tmp_path, "m.jpg", Image.new("RGB", (6, 4)), exif=_canon_exif(header, footer=footer))
    with Image.open(src) as im:
        was = im.info["exif"]
    assert _camera_name(was, header) == b"Canon EOS R5"
    with Image.open(imageio.save_image(imageio.load_image(src), tmp_path / f"o.{ext}")) as o:
        o.load()
        raw = o.info["exif"]
    (at, size) = makernote.position(raw)
    assert at != makernote.position(was)[0]  # it moved
    assert _camera_name(raw, header) == b"Canon EOS R5"
    if footer:
        assert _tiff_of(raw)[at + size - 4:at + size] == struct.pack("<I", at)
    assert "MakerNote" not in caplog.text


@pytest.mark.parametrize("case", ["outside", "tiff", "nikon"])
def test_a_makernote_whose_offsets_cannot_be_moved_is_left_out_and_said(tmp_path, caplog, case):
    """Data outside the note (what it points at is not carried), or a TIFF output (whose writer lays the EXIF
    out once more): left out with a word. A note with its own TIFF header (Nikon's) is kept as it is."""
    exif = _canon_exif(inside=case != "outside")
    note = None
    if case == "nikon":
        e = Image.Exif()
        e.load(exif)
        e.get_ifd(0x8769)[0x927C] = note = b"Nikon\0\x02\x10\0\0II*\0\x08\0\0\0" + bytes(30)
        exif = e.tobytes()
    ph = imageio.load_image(_save(tmp_path, "m.jpg", Image.new("RGB", (6, 4)), exif=exif))
    with Image.open(imageio.save_image(ph, tmp_path / ("o.tif" if case == "tiff" else "o.jpg"))) as o:
        assert o.getexif().get_ifd(0x8769).get(0x927C) == note
        assert o.getexif().get(271) == "Canon"
    assert ("MakerNote (" in caplog.text) != (case == "nikon")



def _png_chunks(data: bytes) -> list:
    out, at = [], 8
    while at < len(data):
        n, kind = struct.unpack(">I4s", data[at:at + 8])
        out.append((kind, data[at + 8:at + 8 + n]))
        at += 12 + n
    return out


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("grey, alpha", [(False, False), (False, True), (True, False), (True, True)])
def test_png_is_written_band_by_band_and_reads_back_as_written(tmp_path, monkeypatch, bits, grey, alpha):
    """save_image writes PNG itself, a few rows at a time (each row by the filter that suits it), with no
    second copy of the picture: Pillow's encoder wanted one at 4 bytes a pixel, 192 MB for a 48 MP result."""
    monkeypatch.setattr(imageio, "PNG_BAND_BYTES", 100)  # many bands on a small picture
    rng = np.random.default_rng(bits)
    top = 257 if bits == 16 else 1
    y, x = np.mgrid[:24, :21]
    a = np.stack([x * 9, y * 7, (x + y) * 5], axis=2).astype(np.uint16) * top  # gradients: Sub, Up, Paeth rows
    a[8:12] = rng.integers(0, 256, (4, 21, 3)) * top  # noise
    a[16:18] = a[15:16]  # rows repeating the one above
    if grey:
        a[:] = a[..., :1]
    dtype = np.uint8 if bits == 8 else np.uint16
    a = a.astype(dtype)
    al = (rng.integers(0, 256, (24, 21)) * top).astype(dtype) if alpha else None
    bands, real = [], imageio._png_filtered
    monkeypatch.setattr(imageio, "_png_filtered", lambda rows, *a: bands.append(len(rows)) or real(rows, *a))
    out = imageio.save_image(imageio.Photo(a, al, grey), tmp_path / "o.png")
    assert len(bands) > 2 and sum(bands) == 24
    chunks = _png_chunks(out.read_bytes())
    n = 21 * ((1 if grey else 3) + alpha) * bits // 8
    raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
    assert len(raw) == 24 * (n + 1) and len({raw[i * (n + 1)] for i in range(24)}) >= 3  # filters chosen per row
    if bits == 16:
        pytest.importorskip("png", reason="pypng (edge-enhance[io16]) not installed")
    back = imageio.load_image(out)
    assert back.grey == grey and back.rgb.dtype == dtype and np.array_equal(back.rgb, a)
    assert (back.alpha is None) == (not alpha) and (not alpha or np.array_equal(back.alpha, al))


@pytest.mark.parametrize("bits", [8, 16])
def test_png_metadata_chunks_come_in_pillows_order_text_in_16bit_too(tmp_path, bits):
    """iCCP, gAMA, pHYs, eXIf, then the text, ahead of the pixels, as Pillow wrote them. A 16-bit colour
    PNG (written by pypng before) lost its text chunks and XMP."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Epson"
    dtype = np.uint8 if bits == 8 else np.uint16
    ph = imageio.Photo(np.full((5, 6, 3), 40, dtype), None, False, icc, exif, (300, 300), "PNG",
                       xmp=b"<x:xmpmeta/>", text={"Title": "Harbour", "Author": "Ana \u0141"}, extra={"gamma": 0.5})
    out = imageio.save_image(ph, tmp_path / "o.png")
    kinds = [k for k, _ in _png_chunks(out.read_bytes())]
    assert kinds == [b"IHDR", b"iCCP", b"gAMA", b"pHYs", b"eXIf", b"tEXt", b"iTXt", b"iTXt", b"IDAT", b"IEND"]
    with Image.open(out) as o:
        assert o.text["Title"] == "Harbour" and o.text["Author"] == "Ana \u0141" and o.info["gamma"] == 0.5
        assert o.info["dpi"] == pytest.approx((300, 300), abs=0.01) and o.getexif()[0x010F] == "Epson"
    back = imageio.load_image(out)
    assert back.xmp == b"<x:xmpmeta/>" and back.icc == icc


# The child's own peak resident memory in kB, VmHWM (ru_maxrss would start from its parent's: Linux carries
# the high-water mark over fork and exec).
_HWM = "from edge_enhance.procmem import status_mb\ndef hwm():\n    return int(status_mb('VmHWM') * 1024)\n"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
@pytest.mark.parametrize("name, planes", [("big.png", 3), ("big.jpg", 4)])
def test_a_large_png_is_written_without_a_copy_of_the_picture(tmp_path, name, planes):
    """Peak memory of save_image on a 27 MB RGB picture, in a child process: Pillow's encoder took a
    36 MB copy (4 bytes a pixel); the banded writer needs about 13 MB, most of it numpy and zlib at work.
    A JPEG is Pillow's, given the RGB of an RGBX buffer (as enhance_file's output is): no copy (WebP too,
    but libwebp's own working memory, 121 MB here, is larger than the copy was)."""
    import subprocess
    import sys

    code = (_HWM + "import sys, numpy as np; from edge_enhance import imageio; "
            f"x = np.arange(3000); a = np.empty((3000, 3000, {planes}), np.uint8)[..., :3]; a[..., 0] = x % 251; "
            "a[..., 1] = (x % 241)[:, None]\nfor y in range(3000): a[y, :, 2] = x * y % 239\n"
            "ph = imageio.Photo(a); before = hwm(); imageio.save_image(ph, sys.argv[1]); print(hwm() - before)")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 20 * 1024, f"save_image grew the peak by {int(r.stdout) / 1024:.0f} MB"
    with Image.open(tmp_path / name) as o:
        want = (2999 % 251, 1000 % 241, 2999000 % 239)
        assert o.size == (3000, 3000) and o.mode == "RGB"
        assert np.abs(np.subtract(o.getpixel((2999, 1000)), want)).max() <= (0 if name == "big.png" else 40)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's VmHWM")
@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_a_large_photo_is_loaded_without_extra_copies_of_it(tmp_path, ext):
    """Peak memory of load_image on a 27 MB RGB photo, in a child process: np.asarray(im) put a bytes copy
    beside Pillow's image (twice over while joined) and exif_transpose a copy of the image, 123 MB in all;
    the pixels copied over a band at a time need Pillow's image (36 MB), the array (27 MB) and the decoder."""
    import subprocess
    import sys

    y, x = np.mgrid[:3000, :3000]
    a = np.dstack([x % 251, y % 241, (x + y) % 239]).astype(np.uint8)
    Image.fromarray(a).save(tmp_path / f"big.{ext}", **({"quality": 95} if ext == "jpg" else {}))
    code = (_HWM + "import sys; from edge_enhance import imageio; "
            "before = hwm(); ph = imageio.load_image(sys.argv[1]); print(hwm() - before); "
            "print(int(ph.rgb[1000, 2999, 0]), int(ph.rgb[1000, 2999, 1]), int(ph.rgb[1000, 2999, 2]))")
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"big.{ext}")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    grew, pixel = r.stdout.split("\n", 1)
    assert int(grew) < 100 * 1024, f"load_image grew the peak by {int(grew) / 1024:.0f} MB"
    want = (2999 % 251, 1000 % 241, 3999 % 239)
    assert (list(map(int, pixel.split())) == list(want)) if ext == "png" else \
        np.abs(np.subtract(list(map(int, pixel.split())), want)).max() <= 8
