"""Bad and odd image inputs through the real CLI: one clear message naming the file and the cause,
exit code 1 for a failed file (2 for usage), nothing lost (input bytes unchanged, no partial or
temporary file in the output folder). Odd-but-valid inputs must just work."""
from __future__ import annotations

import errno
import json
import os
import re
import warnings

import numpy as np
import pytest
from PIL import Image, ImageCms

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_enhance import imageio  # noqa: E402
from edge_enhance.cli import main  # noqa: E402
from tests import hardening_kit as kit  # noqa: E402
from tests.hardening_kit import model  # noqa: E402,F401  (fixture)

IS_ROOT = os.geteuid() == 0


def _jpeg() -> bytes:
    return kit.encode(kit.noise(64, 48, seed=1), "JPEG", quality=90)


def _png() -> bytes:
    return kit.encode(kit.noise(48, 40, seed=2), "PNG")


BAD = [
    # (file name, bytes, cause the message must give)
    ("zero.jpg", lambda: b"", r"empty file \(0 bytes\)"),
    ("truncated.jpg", lambda: kit.truncated(_jpeg()), r"truncated or corrupt image data"),
    ("truncated.png", lambda: kit.truncated(_png()), r"truncated or corrupt image data"),
    ("text.jpg", lambda: b"Dear family, the photos are attached.\n", r"not an image format edge-enhance reads"),
    ("bomb.png", lambda: kit.raw_png(100_000, 100_000, 8, 2, b"\x00" * 1000),
     r"10000\.0 MP exceeds the limit of 200\.0 MP \(raise it with --max-pixels; max_pixels= in Python\)"),
    ("huge.png", lambda: kit.raw_png(20_000, 15_000, 8, 2, b"\x00" * 1000),
     r"20000x15000 = 300\.0 MP exceeds the limit of 200\.0 MP \(raise it with --max-pixels; max_pixels= in Python\)"),
    ("animated.gif", lambda: kit.animated("GIF"), r"animated image \(2 frames\)"),
    ("animated.webp", lambda: kit.animated("WEBP"), r"animated image \(2 frames\)"),
    ("photo.heic", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
     r"HEIC/AVIF needs a Pillow plugin: pip install pillow-heif"),
    ("model.png", lambda: b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64, r"this is a TFLite model, not an image"),
]


@pytest.mark.parametrize("name,make,cause", BAD, ids=[b[0] for b in BAD])
def test_bad_image_fails_with_one_clear_message(tmp_path, model, capsys, name, make, cause):
    src = tmp_path / "in" / name
    src.parent.mkdir()
    src.write_bytes(make())
    before = src.read_bytes()
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["enhance", str(src), "-o", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1
    failed = [line for line in err.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, err
    assert str(src) in failed[0]
    assert re.search(cause, failed[0]), failed[0]
    assert "Traceback" not in err
    assert src.read_bytes() == before
    assert kit.files_under(out) == []


@pytest.mark.parametrize("name,make,cause", [BAD[0], BAD[2], BAD[4]], ids=["zero", "truncated-png", "bomb"])
def test_bad_image_in_a_child_process(tmp_path, model, name, make, cause):
    src = tmp_path / name
    src.write_bytes(make())
    r = kit.cli("enhance", src, "-o", tmp_path / "out.png", "--model", model)
    assert r.returncode == 1, r.stderr
    assert str(src) in r.stderr and "Traceback" not in r.stderr
    assert re.search(cause, r.stderr)
    assert not (tmp_path / "out.png").exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_input_file(tmp_path, model, capsys):
    rc = main(["enhance", str(tmp_path / "gone.jpg"), "-o", str(tmp_path / "o.jpg"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and f"{tmp_path / 'gone.jpg'}: cannot read (No such file or directory)" in err


@pytest.mark.parametrize("argv", [["--tile", "0"], ["--tile", "wide"], ["--strength", "2"], ["--max-pixels", "-1"]])
def test_usage_errors_exit_2(tmp_path, model, argv, capsys):
    src = tmp_path / "a.png"
    src.write_bytes(_png())
    try:
        rc = main(["enhance", str(src), "--model", str(model), *argv])
    except SystemExit as e:  # argparse type errors
        rc = e.code
    assert rc == 2
    assert "Traceback" not in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


# -- odd but valid inputs: they must just work ---------------------------------------------------------
def _ok(tmp_path, model, name, data, capsys, *extra):
    src = tmp_path / "in" / name
    src.parent.mkdir()
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["enhance", str(src), "-o", str(out), "--model", str(model), *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert src.read_bytes() == data
    assert not [w for w in caught if "PIL" in w.filename], [str(w.message) for w in caught]
    assert kit.files_under(out) == [name]  # the output, and no temporary beside it
    return out / name


def test_png_named_jpg_just_works(tmp_path, model, capsys):
    data = kit.encode(Image.new("RGB", (8, 6), (10, 20, 30)), "PNG")
    dst = _ok(tmp_path, model, "really-a-png.jpg", data, capsys)
    with Image.open(dst) as im:
        assert im.format == "JPEG" and im.size == (16, 12)  # the output follows its own extension


def test_one_pixel(tmp_path, model, capsys):
    dst = _ok(tmp_path, model, "dot.png", kit.encode(Image.new("RGB", (1, 1), (200, 100, 50)), "PNG"), capsys)
    with Image.open(dst) as im:
        assert im.size == (2, 2) and im.mode == "RGB"


def test_sixteen_bit_grey_with_alpha_stays_grey_with_alpha(tmp_path, model, capsys):
    dst = _ok(tmp_path, model, "ga16.png", kit.grey_alpha_16(), capsys)
    from edge_enhance.imageio import load_image

    back = load_image(dst)  # (Pillow itself opens a 16-bit grey+alpha PNG as 8-bit RGBA)
    assert back.grey and back.rgb.shape == (8, 10, 3) and back.alpha is not None
    assert np.all(back.alpha.astype(np.float64) / back.maxval > 0.55)  # alpha was 40000/65535 everywhere


def test_cmyk_without_profile(tmp_path, model, capsys, caplog):
    data = kit.encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG")
    dst = _ok(tmp_path, model, "print.jpg", data, capsys)
    assert "CMYK without an ICC profile" in caplog.text
    with Image.open(dst) as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info


@pytest.mark.parametrize("mode", ["RGB", "CMYK"])
def test_broken_icc_profile_is_dropped_not_copied(tmp_path, model, capsys, caplog, mode):
    colour = (0, 255, 255) if mode == "RGB" else (0, 255, 255, 0)
    data = kit.encode(Image.new(mode, (8, 8), colour), "JPEG", icc_profile=b"not a profile" * 20)
    dst = _ok(tmp_path, model, "icc.jpg", data, capsys)
    assert "ICC profile" in caplog.text and ("unusable" in caplog.text or "unreadable" in caplog.text)
    with Image.open(dst) as im:
        assert not im.info.get("icc_profile")


def test_good_icc_profile_still_travels(tmp_path, model, capsys):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    dst = _ok(tmp_path, model, "srgb.png", kit.encode(Image.new("RGB", (6, 6)), "PNG", icc_profile=icc), capsys)
    with Image.open(dst) as im:
        assert im.info.get("icc_profile") == icc


def test_broken_exif_one_warning_and_an_output(tmp_path, model, capsys, caplog):
    dst = _ok(tmp_path, model, "exif.jpg", kit.broken_exif(), capsys)
    assert len([r for r in caplog.records if "EXIF" in r.getMessage()]) == 1
    with Image.open(dst) as im:
        assert im.size == (16, 16)


def test_output_is_readable_by_others_like_any_new_file(tmp_path, model, capsys):
    dst = _ok(tmp_path, model, "a.png", _png(), capsys)
    umask = os.umask(0o022)
    os.umask(umask)
    assert dst.stat().st_mode & 0o777 == 0o666 & ~umask


def test_long_strip_is_enhanced_and_correct(tmp_path, model, capsys):
    """100000 x 1: tiling must cope with a one-pixel-high image and stay exact."""
    ort = pytest.importorskip("onnxruntime")

    rgb = np.random.default_rng(3).integers(0, 256, (1, 100_000, 3), dtype=np.uint8)
    dst = _ok(tmp_path, model, "strip.png", kit.encode(Image.fromarray(rgb), "PNG"), capsys, "--memory", "4")
    got = np.asarray(Image.open(dst))
    assert got.shape == (2, 200_000, 3)
    # Reference: the model run once on the whole strip by ONNX Runtime directly.
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = (rgb.astype(np.float32) / 255).transpose(2, 0, 1)[None]
    y = sess.run(None, {"x": x})[0][0].transpose(1, 2, 0)
    want = np.clip(np.rint(y * 255), 0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() <= 1  # float summation order may flip a rounding
    assert (got != want).mean() < 1e-3


# -- the file system fights back ---------------------------------------------------------------------
def test_disk_full_removes_the_partial_file_and_keeps_the_input(tmp_path, model, capsys, monkeypatch):
    src = tmp_path / "in" / "a.png"
    src.parent.mkdir()
    data = _png()
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    writes = []

    def half_then_enospc(self, b):  # the first bytes reach the temporary file; the disk is full after them
        if writes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(len(b))
        return self._f.write(b)

    monkeypatch.setattr(imageio._Checked, "write", half_then_enospc, raising=False)
    rc = main(["enhance", str(src), "-o", str(out), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and f"{out / 'a.png'}: cannot write (No space left on device)" in err
    assert kit.files_under(out) == [] and src.read_bytes() == data


@pytest.mark.parametrize("fmt", ["jpg", "tif"])
def test_a_write_cut_short_by_the_file_size_limit_is_a_failure_not_a_truncated_photo(tmp_path, fmt):
    """Pillow's JPEG / TIFF encoders, handed a real file, write to its descriptor and ignore a short
    write (disk full, ulimit -f): the cut-off file was renamed into place as enhanced, exit 0."""
    import subprocess
    import sys

    src = tmp_path / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)).save(src)
    out = tmp_path / f"a.{fmt}"
    code = ("import resource, sys; from edge_enhance.imageio import load_image, save_image; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
            "save_image(load_image(sys.argv[1]), sys.argv[2], **({'fmt': 'tiff'} if sys.argv[2].endswith('tif') else {}))")
    r = subprocess.run([sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True)
    assert r.returncode == 1 and f"{out}: cannot write (File too large)" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_disk_full_keeps_a_previous_output(tmp_path, model, capsys, monkeypatch):
    src = tmp_path / "a.png"
    src.write_bytes(_png())
    dst = tmp_path / "o.png"
    dst.write_bytes(b"last week's result")

    def enospc(self, b):
        self._f.write(b[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(imageio._Checked, "write", enospc, raising=False)
    assert main(["enhance", str(src), "-o", str(dst), "--model", str(model)]) == 1
    assert dst.read_bytes() == b"last week's result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "o.png"]


def _as_unprivileged(tmp_path, model, setup):
    """Run the CLI where permissions bite: in-process when not root, as `nobody` in a child when root."""
    if not IS_ROOT:
        src, out = setup(tmp_path)
        rc = main(["enhance", str(src), "-o", str(out), "--model", str(model)])
        return rc, None, src, out
    with kit.world_readable_dir() as d:
        (d / "m.onnx").write_bytes(model.read_bytes())
        src, out = setup(d)
        (d / "warm.png").write_bytes(_png())
        warm = ["enhance", d / "warm.png", "-o", d / "warm-out.png", "--model", d / "m.onnx", "-q"]
        r = kit.cli_as_nobody(warm, ["enhance", src, "-o", out, "--model", d / "m.onnx"], cwd=d)
        return r.returncode, r.stderr, src, kit.files_under(out) if out.is_dir() else None


def test_unreadable_input(tmp_path, model, capsys):
    def setup(d):
        src = d / "secret.png"
        src.write_bytes(_png())
        src.chmod(0)
        out = d / "out"
        out.mkdir()
        out.chmod(0o777)
        return src, out

    rc, err, src, out = _as_unprivileged(tmp_path, model, setup)
    err = err if err is not None else capsys.readouterr().err
    assert rc == 1 and f"{src}: cannot read (Permission denied)" in err and "Traceback" not in err
    assert (kit.files_under(out) if not isinstance(out, list) else out) == []


def test_output_folder_not_writable(tmp_path, model, capsys):
    def setup(d):
        src = d / "a.png"
        src.write_bytes(_png())
        src.chmod(0o644)
        out = d / "out"
        out.mkdir()
        out.chmod(0o555)
        return src, out

    rc, err, src, out = _as_unprivileged(tmp_path, model, setup)
    err = err if err is not None else capsys.readouterr().err
    assert rc == 1 and "is not writable" in err and "Traceback" not in err
    assert (kit.files_under(out) if not isinstance(out, list) else out) == []


def _with_phys(ppm: int) -> bytes:
    """A PNG whose pHYs chunk says ``ppm`` pixels per metre (legal up to 2^32 - 1)."""
    import struct
    import zlib

    body = b"pHYs" + struct.pack(">IIB", ppm, ppm, 1)
    data = _png()
    return data[:33] + struct.pack(">I", 9) + body + struct.pack(">I", zlib.crc32(body)) + data[33:]


def test_a_resolution_no_device_has_is_dropped_and_one_a_format_cannot_hold_is_not_wrapped(tmp_path, model, caplog):
    """pHYs at 2^32 - 1 per metre (1.1e8 dpi) overflowed the PNG writer (a traceback that stopped the
    batch); a TIFF's 0/0 resolution is NaN dpi (every output failed); 100000 dpi wrapped to 34464 in JPEG."""
    from PIL import TiffImagePlugin

    from edge_enhance.imageio import load_image, save_image

    (tmp_path / "huge.png").write_bytes(_with_phys(2**32 - 1))
    nan = TiffImagePlugin.IFDRational(0, 0)
    Image.new("RGB", (12, 9)).save(tmp_path / "nan.tif", tiffinfo={282: nan, 283: nan, 296: 2})
    for name in ("huge.png", "nan.tif"):
        photo = load_image(tmp_path / name)
        assert photo.dpi is None and f"{name}: its resolution" in caplog.text
        for ext in ("png", "jpg", "tif"):
            assert main(["enhance", str(tmp_path / name), "-o", str(tmp_path / f"o-{name}.{ext}"), "--model", str(model),
                         "-q"]) == 0
    fine = load_image(tmp_path / "huge.png")
    fine.dpi = (100000.0, 100000.0)
    save_image(fine, tmp_path / "fine.jpg")
    assert "JPEG cannot store 100000 dpi" in caplog.text
    assert Image.open(tmp_path / "fine.jpg").info.get("dpi") != (34464, 34464)
    save_image(fine, tmp_path / "fine.png")  # PNG holds it
    assert round(Image.open(tmp_path / "fine.png").info["dpi"][0]) == 100000


def test_a_caption_of_json_nested_thousands_deep_is_a_caption(tmp_path, model):
    exif = Image.Exif()
    exif[270] = "[" * 60000
    Image.new("RGB", (12, 9)).save(tmp_path / "deep.jpg", exif=exif.tobytes())
    assert main(["enhance", str(tmp_path / "deep.jpg"), "-o", str(tmp_path / "o.jpg"), "--model", str(model), "-q"]) == 0
    assert Image.open(tmp_path / "o.jpg").getexif()[270] == "[" * 60000


def test_metadata_too_large_for_a_jpeg_is_left_out_not_the_photo(tmp_path, model, caplog):
    """A PNG's 100 KB XMP or EXIF fits in PNG but not in one JPEG marker: the photo was lost after inference."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", "<x>" + "a" * 100_000 + "</x>")
    exif = Image.Exif()
    exif[270] = "b" * 100_000
    Image.new("RGB", (12, 9), (200, 40, 40)).save(tmp_path / "a.png", pnginfo=info, exif=exif.tobytes())
    assert main(["enhance", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.jpg"), "--model", str(model), "-q"]) == 0
    assert "EXIF (" in caplog.text and "XMP (" in caplog.text and "does not fit in a JPEG" in caplog.text
    assert Image.open(tmp_path / "a.jpg").size == (24, 18)


def test_an_icon_container_is_refused_before_decoding_and_a_phones_mpo_jpeg_is_its_photo(tmp_path, model, capsys):
    """An ICO whose header says 16x16 holds a 2000x2000 PNG: Pillow decoded it on opening, past any
    --max-pixels (715 MB for a 531 KB file at 13000x13000). A multi-picture JPEG (a phone's photo with
    its preview after it) was refused as an animated image."""
    import io
    import struct

    buf = io.BytesIO()
    Image.new("RGB", (2000, 2000)).save(buf, "PNG")
    png = buf.getvalue()
    (tmp_path / "icon.png").write_bytes(struct.pack("<HHHBBBBHHII", 0, 1, 1, 16, 16, 0, 0, 1, 32, len(png), 22) + png)
    rc = main(["enhance", str(tmp_path / "icon.png"), "--max-pixels", "400", "--model", str(model)])
    assert rc == 1 and "icon.png: not an image format edge-enhance reads (photos: JPEG, PNG" in capsys.readouterr().err
    photo, preview = Image.new("RGB", (12, 9), (200, 30, 30)), Image.new("RGB", (6, 4), (0, 200, 0))
    photo.save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=[preview])
    assert Image.open(tmp_path / "phone.jpg").format == "MPO"
    assert main(["enhance", str(tmp_path / "phone.jpg"), "-o", str(tmp_path / "o.jpg"), "--model", str(model), "-q"]) == 0
    out = Image.open(tmp_path / "o.jpg")
    assert out.size == (24, 18) and out.getpixel((12, 9))[0] > 150


def test_names_near_the_file_systems_limit_are_written_or_refused_in_one_line(tmp_path, model, capsys):
    """A 239-byte output name failed ('File name too long'): its temporary's name was 30 bytes longer. A
    255-byte input written beside itself needs a longer name than the file system takes: one line, no
    traceback, and the batch goes on; into -o it keeps its name."""
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.errors import OutputError

    near, at = "照" * 75 + "x.png", "照" * 83 + "xx.png"  # 231 and 255 bytes
    for name in (near, at):
        (tmp_path / name).write_bytes(_png())
    rc = main(["enhance", str(tmp_path / near), str(tmp_path / at), "--model", str(model), "--json"])
    io = capsys.readouterr()
    summary = json.loads(io.out)
    assert rc == 1 and (summary["ok"], summary["failed"]) == (1, 1)
    failed = next(f for f in summary["files"] if f["status"] == "failed")
    assert failed["error"].endswith("xx.m.png: cannot write (File name too long)") and "Traceback" not in io.err
    assert (tmp_path / f"{near[:-4]}.m.png").exists()
    out = tmp_path / "out"
    assert main(["enhance", str(tmp_path / at), "-o", str(out) + "/", "--model", str(model), "-q"]) == 0
    assert [p.name for p in out.iterdir()] == [at]
    with pytest.raises(OutputError, match="cannot write .File name too long."):
        Enhancer(model).enhance_file(tmp_path / near, tmp_path / ("照" * 86 + ".png"))
