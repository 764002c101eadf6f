import io
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from edge_enhance.enhancer import Enhancer  # noqa: E402
from edge_enhance.errors import ConfigError, ModelFormatError  # noqa: E402
from edge_enhance.tiling import TilingConfig  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    out = {}
    for scale, layers in [(2, 3), (3, 2), (1, 4)]:
        p = d / f"m{scale}.onnx"
        residual_sr(p, scale=scale, layers=layers, channels=6, seed=scale)
        out[scale] = p
    return out


@given(h=st.integers(1, 41), w=st.integers(1, 41), th=st.integers(0, 30), tw=st.integers(0, 30),
       scale=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**16))
@settings(max_examples=40, deadline=None)
def test_tiled_equals_whole_image_bit_for_bit(models, h, w, th, tw, scale, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole_enh = Enhancer(models[scale], tiling=TilingConfig(tile=(10**4, 10**4)))
    whole = whole_enh.enhance(img)
    assert whole_enh.last_run.tiles == 1
    margin = whole_enh.card.margin
    tile = (2 * margin + 1 + th, 2 * margin + 1 + tw)
    enh = Enhancer(models[scale], tiling=TilingConfig(tile=tile))
    tiled = enh.enhance(img)
    assert tiled.shape == (h * scale, w * scale, 3)
    assert np.array_equal(tiled, whole)


@given(th=st.integers(0, 12), tw=st.integers(0, 12), dh=st.integers(0, 30), dw=st.integers(0, 30),
       seed=st.integers(0, 2**16))
@settings(max_examples=25, deadline=None)
def test_fixed_shape_tiles_equal_the_whole_image_run(models, th, tw, dh, dw, seed):
    """A model frozen to a tile smaller than the image: its windows lie inside the image (the last ones
    shifted back against the edge), so the result is the dynamic model's on the whole image, bit for bit."""
    import dataclasses

    whole_enh = Enhancer(models[2], tiling=TilingConfig(tile=(10**4, 10**4)))
    m = whole_enh.card.margin
    tile = (2 * m + 1 + th, 2 * m + 1 + tw)
    img = np.random.default_rng(seed).integers(0, 256, (tile[0] + dh, tile[1] + dw, 3), dtype=np.uint8)
    fixed = Enhancer(models[2], card=dataclasses.replace(whole_enh.card, tile=tile))
    assert np.array_equal(fixed.enhance(img), whole_enh.enhance(img))
    assert fixed.last_run.tile == tile


def test_tiling_is_really_used_and_auto_tile_fits_budget(models):
    img = np.zeros((300, 200, 3), np.uint8)
    enh = Enhancer(models[2], tiling=TilingConfig(memory_mb=0.5))
    enh.enhance(img)
    th, tw = enh.last_run.tile
    assert enh.last_run.tiles > 1 and th * tw * enh.backend.activation_bytes_per_pixel() <= 0.5 * 2**20 * 1.01


def test_uint16_in_uint16_out_and_matches_8bit_scaled(models):
    img8 = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    img16 = img8.astype(np.uint16) * 257
    enh = Enhancer(models[2])
    o8, o16 = enh.enhance(img8), enh.enhance(img16)
    assert o16.dtype == np.uint16
    assert np.abs(o16 / 257.0 - o8).max() <= 1.0


def test_strength_zero_gives_the_input_and_one_the_model(models):
    from PIL import Image

    img = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    enh = Enhancer(models[2], strength=0.0)
    # an upscaler at strength 0 gives the plain bicubic upscale (Pillow's), not a blocky nearest one
    bicubic = np.stack([np.asarray(Image.fromarray(img[..., c].astype(np.float32), "F").resize((16, 16), Image.BICUBIC))
                        for c in range(3)], -1).round().clip(0, 255)
    assert np.abs(enh.enhance(img).astype(int) - bicubic).max() <= 1
    enh1 = Enhancer(models[1], strength=0.0)
    assert np.array_equal(enh1.enhance(img), img)
    with pytest.raises(ConfigError):
        enh.strength = 2.0


def test_strength_per_call_leaves_the_enhancers_own_and_threads_sharing_it_get_theirs(models):
    """Threads sharing one Enhancer could only set enh.strength, which another thread changed under them."""
    from concurrent.futures import ThreadPoolExecutor

    img = np.random.default_rng(7).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    enh = Enhancer(models[2], tile=8)
    expected = {s: Enhancer(models[2], tile=8, strength=s).enhance(img) for s in (0.0, 0.5, 1.0)}
    assert not np.array_equal(expected[0.0], expected[1.0])
    assert np.array_equal(enh.enhance(img, strength=0.5), expected[0.5]) and enh.strength == 1.0
    assert np.array_equal(enh.enhance_rgb(img, strength=0.0), expected[0.0])
    assert np.array_equal(enh.enhance(img[..., 0], strength=0.0), Enhancer(models[2], strength=0.0).enhance(img[..., 0]))
    with ThreadPoolExecutor(2) as pool:
        got = list(pool.map(lambda s: (s, enh.enhance(img, strength=s)), [0.0, 1.0, 0.5] * 4))
    assert all(np.array_equal(out, expected[s]) for s, out in got)
    with pytest.raises(ConfigError, match="strength 1.6 is outside"):
        enh.enhance(img, strength=1.6)


@pytest.mark.parametrize("bad", ["0.5", None, True])
def test_a_strength_that_is_not_a_number_is_a_config_error_naming_it(models, bad):
    """It was a raw TypeError from the range check ('<=' not supported between float and str)."""
    with pytest.raises(ConfigError, match=rf"strength {re.escape(repr(bad))} is not a number \(0\.\.1\.5\)"):
        Enhancer(models[2], strength=bad)


def test_bad_arrays_get_one_clear_error(models):
    enh = Enhancer(models[2])
    with pytest.raises(ConfigError, match=r"empty image \(9x0 pixels\)"):
        enh.enhance(np.zeros((0, 9, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"got float64 \(from floats in 0\.\.1: \(img \* 255\)"):
        enh.enhance(np.zeros((4, 4, 3)))
    with pytest.raises(ConfigError, match="expected uint8 or uint16 pixels, got int64$"):
        enh.enhance(np.zeros((4, 4, 3), np.int64))
    with pytest.raises(ConfigError, match="out= must be 8 x 8 x 3 uint8, got 8 x 8 x 3 float32"):
        enh.enhance_rgb(np.zeros((4, 4, 3), np.uint8), out=np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ConfigError, match="out= must be 8 x 8 x 3 uint8, got 5 x 5 x 3 uint8"):
        enh.enhance_rgb(np.zeros((4, 4, 3), np.uint8), out=np.zeros((5, 5, 3), np.uint8))


@pytest.mark.parametrize("scale", [1, 2])
def test_out_overlapping_the_input_gives_the_tiled_result(models, scale):
    """In place (out=rgb), cores written to out were read back as later tiles' margins: wrong pixels."""
    img = np.random.default_rng(9).integers(0, 256, (40, 37, 3), dtype=np.uint8)
    enh = Enhancer(models[scale], tile=16)
    expected = enh.enhance_rgb(img)
    buf = np.zeros((40 * scale, 37 * scale, 3), np.uint8)
    buf[:40, :37] = img  # the input is a view at the start of out
    assert enh.enhance_rgb(buf[:40, :37], out=buf) is buf
    assert enh.last_run.tiles > 1 and np.array_equal(buf, expected)


ACCEPTS = ("expected a numpy array H x W or H x W x 1 (grey), H x W x 3 (RGB) or H x W x 4 (RGBA) of uint8 / uint16, "
           "or a PIL image, got ")


@pytest.mark.parametrize("image,got", [
    (None, "NoneType"), ([[1, None]], "list"), ("photo.jpg", "a path ('photo.jpg'); for files: enhance_file(src, dst)"),
    (b"\xff\xd8", "bytes; for an encoded image in memory: Image.open(io.BytesIO(data))"),
    (np.zeros((8, 8, 2), np.uint8), "an array of shape (8, 8, 2)"), (np.zeros(5, np.uint8), "an array of shape (5,)")])
def test_what_is_not_an_image_is_named_with_what_enhance_takes(models, image, got):
    """None, a path or bytes read as 'expected an H x W x 3 image, got shape ()'; an LA array named no
    shape enhance takes."""
    with pytest.raises(ConfigError, match=re.escape(ACCEPTS + got) + "$"):
        Enhancer(models[2]).enhance(image)


def test_a_model_that_is_not_a_name_or_path_is_a_config_error():
    with pytest.raises(ConfigError, match="model must be a bundled model's name or a model file's path, not None"):
        Enhancer(None)  # was a raw TypeError from Path(None)


@pytest.mark.parametrize("channels", [3, 4])
def test_big_endian_16_bit_arrays_are_16_bit_arrays(models, channels):
    """RGBA: the alpha plane kept its '>u2' order into Pillow's resize, which gave scrambled bytes back."""
    img = np.random.default_rng(3).integers(0, 65536, (9, 7, channels)).astype(np.uint16)
    enh = Enhancer(models[2])
    assert np.array_equal(enh.enhance(img.astype(">u2")), enh.enhance(img))


@pytest.mark.parametrize("kw,msg", [({"quality": 500}, r"quality 500 is not a whole number in 1\.\.100"),
                                    ({"quality": 0}, "quality 0"), ({"quality": 9.5}, "quality 9.5"),
                                    ({"dpi_mode": "bogus"},
                                     "dpi_mode 'bogus' is not one of keep-print-size, keep-value"),
                                    ({"src": b"\x89PNG"}, r"src must be a path, not bytes \(for an image in memory: "
                                                          r"Image.open\(io.BytesIO\(data\)\)")])
def test_enhance_file_refuses_bad_arguments_before_any_work(models, tmp_path, kw, msg):
    from PIL import Image

    src = tmp_path / "a.png"
    Image.new("RGB", (4, 4)).save(src)
    args = {"src": src, "dst": tmp_path / "b.jpg"} | kw
    with pytest.raises(ConfigError, match=msg):
        Enhancer(models[2]).enhance_file(args.pop("src"), args.pop("dst"), **args)
    assert not (tmp_path / "b.jpg").exists()


@pytest.mark.parametrize("damage", ["truncated", "damaged"])
def test_a_corrupt_pillow_image_is_an_image_input_error(models, damage):
    """The usual service path, Image.open(BytesIO(upload)) then enhance(): Pillow reads only the header
    there, so the decoding error came out of the EXIF step as a bare OSError, or was logged as bad
    EXIF and half a picture was enhanced."""
    import io

    from PIL import Image

    from edge_enhance import ImageInputError

    b = io.BytesIO()
    Image.fromarray(np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(b, "PNG")
    png = b.getvalue()
    damaged = png[:100] + bytes(x ^ 0xFF for x in png[100:200]) + png[200:]
    data = png[:len(png) // 2] if damage == "truncated" else damaged
    with pytest.raises(ImageInputError, match=r"<image>: truncated or corrupt image data"):
        Enhancer(models[2]).enhance(Image.open(io.BytesIO(data)))


def test_grey_and_rgba_arrays_keep_their_kind(models):
    enh = Enhancer(models[2])
    grey = np.full((6, 7), 128, np.uint8)
    assert enh.enhance(grey).shape == (12, 14)
    rgba = np.zeros((6, 7, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:3, :, 3] = 0
    out = enh.enhance(rgba)
    assert out.shape == (12, 14, 4)
    assert (out[:4, :, :3] == 0).all()  # fully transparent areas carry no colour


def test_pil_image_in_pil_image_out(models):
    from PIL import Image

    im = Image.new("RGB", (10, 6), (10, 200, 30))
    out = Enhancer(models[2]).enhance(im)
    assert isinstance(out, Image.Image) and out.size == (20, 12) and out.mode == "RGB"


def test_a_pillow_image_keeps_its_icc_profile_dpi_and_exif_as_a_file_does(models):
    """enhance(PIL image) returned none of them (out.info was empty), where enhance_file keeps them."""
    import io

    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = Image.new("RGB", (10, 4), (10, 200, 30))
    exif = src.getexif()
    exif[0x0112], exif[0x010F] = 6, "Maker"  # orientation: displayed 4 wide, 10 high
    exif.get_ifd(0x8769).update({0xA002: 10, 0xA003: 4})  # the pixel size in the EXIF sub-IFD
    b = io.BytesIO()
    src.save(b, "JPEG", exif=exif.tobytes(), icc_profile=icc, dpi=(300, 300))
    im = Image.open(io.BytesIO(b.getvalue()))
    out = Enhancer(models[2]).enhance(im)
    assert out.size == (8, 20) and out.info["icc_profile"] == icc and out.info["dpi"] == (600, 600)
    e = out.getexif()
    assert (e[0x0112], e[0x010F], e.get_ifd(0x8769)[0xA002], e.get_ifd(0x8769)[0xA003]) == (1, "Maker", 8, 20)
    assert im.getexif()[0x0112] == 6  # the caller's image is left as it was
    assert Enhancer(models[2]).enhance(Image.new("RGB", (3, 2))).info == {}  # nothing made up


def test_the_api_is_typed_and_documented():
    """enhance(self, image) had no hints, enhance_file took **kw, and __init__'s docstring named 2 of its 11
    parameters."""
    import inspect
    import typing

    from edge_enhance.enhancer import enhance_file

    for method in (Enhancer.enhance, Enhancer.enhance_rgb, Enhancer.enhance_file):
        sig = inspect.signature(method)
        assert sig.return_annotation is not sig.empty and typing.get_type_hints(method)
        assert all(p.annotation is not p.empty for name, p in sig.parameters.items() if name != "self")
    params = list(inspect.signature(Enhancer.enhance_file).parameters.values())[1:]
    assert params == list(inspect.signature(enhance_file).parameters.values())[1:]  # the function's, no **kw
    doc = inspect.getdoc(Enhancer.__init__)
    assert all(f"``{name}``" in doc for name in list(inspect.signature(Enhancer.__init__).parameters)[1:])


def test_missing_card_names_the_fields(tmp_path):
    p = tmp_path / "nocard.onnx"
    residual_sr(p, card={})
    with pytest.raises(ModelFormatError, match="--card-receptive-field"):
        Enhancer(p)


def test_card_that_lies_about_scale_is_caught(tmp_path):
    p = tmp_path / "liar.onnx"
    residual_sr(p, card={"name": "liar", "task": "sr", "scale": 3, "receptive_field": 9})
    with pytest.raises(ModelFormatError, match="does not match the card"):
        Enhancer(p).enhance(np.zeros((5, 5, 3), np.uint8))


def test_fixed_shape_model_runs_with_its_tile(tmp_path, caplog):
    p = tmp_path / "fixed.onnx"
    residual_sr(p, fixed=(24, 24))
    whole_p = tmp_path / "dyn.onnx"
    residual_sr(whole_p)
    img = np.random.default_rng(3).integers(0, 256, (50, 33, 3), dtype=np.uint8)
    enh = Enhancer(p, tiling=TilingConfig(tile=(64, 64)))
    assert np.array_equal(enh.enhance(img), Enhancer(whole_p).enhance(img))
    assert enh.last_run.tile == (24, 24)
    # The tile asked for is not the one run: said once, naming the model, not on every image.
    said = [r.getMessage() for r in caplog.records if "tiles only" in r.getMessage()]
    assert said == [f"{p}: the model takes 24x24 tiles only (its input is fixed); the 64x64 tile asked for is not used"]
    enh.enhance(img)
    assert len([r for r in caplog.records if "tiles only" in r.getMessage()]) == 1
    caplog.clear()
    Enhancer(p, tiling=TilingConfig(tile=(24, 24))).enhance(img)
    assert not [r for r in caplog.records if "tiles only" in r.getMessage()]


@pytest.mark.parametrize("channels", [3, 4])
def test_output_streams_into_a_memory_map_when_ram_is_short(models, tmp_path, monkeypatch, channels):
    from PIL import Image

    from edge_enhance import enhancer as enh_mod

    src = tmp_path / "in.png"
    img = np.random.default_rng(4).integers(0, 256, (30, 40, channels), dtype=np.uint8)  # RGBA too: in place now
    Image.fromarray(img).save(src)
    used = []
    real = enh_mod._output_buffer

    def spy(photo, dst, s, fmt):
        buf = real(photo, dst, s, fmt)
        used.append(type(buf).__name__)
        return buf

    monkeypatch.setattr(enh_mod, "_available_ram", lambda: 1000)  # bytes: anything is "too big"
    monkeypatch.setattr(enh_mod, "_output_buffer", spy)
    enh = Enhancer(models[2])
    out = enh.enhance_file(src, tmp_path / "out.png")
    assert used == ["memmap"]
    assert np.array_equal(np.asarray(Image.open(out)), enh.enhance(img))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png", "out.png"]  # the map is gone


@pytest.mark.parametrize("name, ram, rgbx", [("out.jpg", None, True), ("out.jpg", 1000, True), ("out.webp", None, True),
                                            ("grey.jpg", None, False), ("rgba.webp", None, False), ("out.png", None, False)])
def test_a_jpeg_output_is_encoded_from_the_output_buffer_itself(models, tmp_path, monkeypatch, name, ram, rgbx):
    """An 8-bit colour JPEG / WebP output is enhanced into the RGB of an RGBX buffer, which Pillow's encoder
    takes as it is: no 4-byte-a-pixel copy of a 48 MP result (192 MB). In RAM or memory-mapped, the file is
    the one a plain RGB array gives."""
    from PIL import Image

    from edge_enhance import enhancer as enh_mod
    from edge_enhance import imageio

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    src = tmp_path / "in.png"
    if name.startswith("grey"):
        Image.fromarray(img[..., 0]).save(src)  # mode L: a grey photo, written grey
    else:
        Image.fromarray(np.dstack([img, img[..., 0]]) if name.startswith("rgba") else img).save(src)
    if ram:
        monkeypatch.setattr(enh_mod, "_available_ram", lambda: ram)
    handed, real = [], imageio.photo_to_pil
    monkeypatch.setattr(imageio, "photo_to_pil", lambda photo: handed.append(real(photo)) or handed[-1])
    enh = Enhancer(models[2])
    out = enh.enhance_file(src, tmp_path / name)
    assert [im.mode for im in handed] == ["RGBX" if rgbx else "L" if name.startswith("grey") else "RGBA"][:len(handed)]
    assert len(handed) == (not name.endswith(".png"))
    if rgbx:
        want = io.BytesIO()
        Image.fromarray(enh.enhance(img)).save(want, out.suffix[1:].replace("jpg", "jpeg"), quality=92,
                                               **({"subsampling": 0} if name.endswith(".jpg") else {}))
        assert out.read_bytes() == want.getvalue()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, name])


@pytest.mark.parametrize("ram_mb,out,said", [(0.005, "out.bmp", True), (4096, "out.bmp", False), (0.005, "out.png", False),
                                             (0.03, "out.png", False), (0.03, "out.bmp", True), (0.005, "out.jpg", False)])
def test_an_output_past_the_ram_available_is_said_before_the_work(models, tmp_path, monkeypatch, caplog, ram_mb, out,
                                                                  said):
    """A 24 MP photo x2 took 788 MB: on a 1 GB board the system stops it, and nothing had said it might.
    A PNG is written a band at a time from the output, and a JPEG from the output itself (an RGBX buffer),
    which streams through a file where RAM is short: nothing to say. A BMP needs Pillow's copy of it."""
    from PIL import Image

    from edge_enhance import enhancer as enh_mod

    src = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(src)
    monkeypatch.setattr(enh_mod, "_available_ram", lambda: int(ram_mb * 2**20))
    enh = Enhancer(models[2])
    real, before = enh.enhance_photo, []

    def spy(*a, **k):
        before.append("lack of memory" in caplog.text)
        return real(*a, **k)

    monkeypatch.setattr(enh, "enhance_photo", spy)
    enh.enhance_file(src, tmp_path / out)
    assert before == [said]
    assert (f"in.png: its {40 * enh.scale}x{30 * enh.scale} output needs about" in caplog.text) == said


def test_a_memory_mapped_output_with_no_room_on_disk_is_an_error_before_the_work(models, tmp_path, monkeypatch):
    """A disk that filled under the memory map killed the process with SIGBUS, no message, no exit status."""
    import errno

    from PIL import Image

    from edge_enhance import enhancer as enh_mod
    from edge_enhance.errors import OutputError

    src = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(src)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(enh_mod, "_available_ram", lambda: 1000)
    monkeypatch.setattr(enh_mod.os, "posix_fallocate", full, raising=False)
    enh = Enhancer(models[2])
    monkeypatch.setattr(enh, "enhance_photo", lambda *a, **k: pytest.fail("enhanced with no room for the output"))
    with pytest.raises(OutputError, match=r"out.png: no room in .* for the 0 MB output, which streams through a file "
                                          r"there as it does not fit in RAM \(No space left on device\)"):
        enh.enhance_file(src, tmp_path / "out.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_the_ram_available_on_windows_is_asked_of_the_system(monkeypatch):
    """Windows has no /proc/meminfo: a result larger than the free RAM was built in memory, never memory-mapped."""
    import ctypes
    import os
    import types

    from edge_enhance import enhancer as enh_mod

    def global_memory_status_ex(ref):
        st = ref._obj
        assert ctypes.sizeof(st) == st.dwLength == 64  # MEMORYSTATUSEX, as the call requires
        st.ullAvailPhys = 3 << 30
        return 1

    kernel32 = types.SimpleNamespace(GlobalMemoryStatusEx=global_memory_status_ex)
    monkeypatch.setattr(ctypes, "windll", types.SimpleNamespace(kernel32=kernel32), raising=False)
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        ram = enh_mod._available_ram()
    assert ram == 3 << 30


# -- align 2: a half-resolution model (stride-2 first conv) -------------------------------------------------------
@pytest.fixture(scope="module")
def half_res(tmp_path_factory):
    from tests.onnx_models import half_res_denoise

    p = tmp_path_factory.mktemp("half") / "half.onnx"
    half_res_denoise(p, layers=2, seed=5)
    return p


def _reference_half_res(path, img):
    """The whole-image result by hand: the model on the image itself (its own zero padding at the
    edges), reflect-padded at the bottom / right only up to even sides, then cropped back."""
    import onnxruntime as ort

    h, w, _ = img.shape
    x = np.pad(img, ((0, h % 2), (0, w % 2), (0, 0)), mode="reflect")
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    xin = x.astype(np.float32) * np.float32(1 / 255)  # as the Enhancer scales
    y = s.run(None, {"input": xin.transpose(2, 0, 1)[None]})[0][0].transpose(1, 2, 0)
    return np.clip(np.rint(y[:h, :w] * np.float32(255)), 0, 255).astype(np.uint8)


def test_half_res_model_tiled_equals_whole_on_odd_sizes(half_res):
    img = np.random.default_rng(6).integers(0, 256, (481, 321, 3), dtype=np.uint8)
    whole_enh = Enhancer(half_res, tiling=TilingConfig(tile=(10**4, 10**4)))
    whole = whole_enh.enhance(img)
    assert whole_enh.card.align == 2 and whole_enh.card.margin == 8
    assert whole_enh.last_run.tile == (482, 322) and whole_enh.last_run.tiles == 1
    assert np.array_equal(whole, _reference_half_res(half_res, img))
    enh = Enhancer(half_res, tiling=TilingConfig(tile=(101, 101)))
    tiled = enh.enhance(img)
    assert enh.last_run.tile == (102, 102) and enh.last_run.tiles == 6 * 4  # cores of 94 at the edges, 86 inside
    assert tiled.shape == img.shape and np.array_equal(tiled, whole)
    auto = Enhancer(half_res, tiling=TilingConfig(memory_mb=0.5))
    assert np.array_equal(auto.enhance(img), whole)
    assert auto.last_run.tiles > 1 and all(t % 2 == 0 for t in auto.last_run.tile)


@given(h=st.integers(1, 41), w=st.integers(1, 41), th=st.integers(0, 30), tw=st.integers(0, 30),
       seed=st.integers(0, 2**16))
@settings(max_examples=30, deadline=None)
def test_half_res_tiled_equals_whole_for_any_size_and_tile(half_res, h, w, th, tw, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = Enhancer(half_res, tiling=TilingConfig(tile=(10**4, 10**4))).enhance(img)
    enh = Enhancer(half_res, tiling=TilingConfig(tile=(17 + th, 17 + tw)))  # any side, odd ones rounded up
    tiled = enh.enhance(img)
    assert tiled.shape == (h, w, 3) and np.array_equal(tiled, whole)


def test_fixed_shape_not_a_multiple_of_align_is_refused(tmp_path):
    from tests.onnx_models import residual_sr

    p = tmp_path / "odd-fixed.onnx"
    residual_sr(p, fixed=(25, 24), card={"name": "t", "task": "sr", "scale": 2, "receptive_field": 9, "align": 2})
    with pytest.raises(ModelFormatError, match=r"odd-fixed\.onnx: the model's fixed input 25x24 is not a multiple "
                                               r"of its card's align 2"):
        Enhancer(p)


def _plain_outputs_of_the_8_turns(path, img):
    """The non-TTA model on each rotation / mirror image of img, turned back: float, 0..255."""
    plain = Enhancer(path, tiling=TilingConfig(tile=(10**4, 10**4)))
    outs = []
    for t in range(8):
        x = np.rot90(img, t % 4)
        x = x[:, ::-1] if t >= 4 else x
        y = plain.enhance(np.ascontiguousarray(x)).astype(np.float64)
        y = y[:, ::-1] if t >= 4 else y
        outs.append(np.rot90(y, -(t % 4)))
    return outs


def test_tta_is_the_mean_of_the_model_over_the_8_turns(models):
    img = np.random.default_rng(5).integers(0, 256, (11, 14, 3), dtype=np.uint8)
    outs = _plain_outputs_of_the_8_turns(models[2], img)
    enh = Enhancer(models[2], tta=True)
    got = enh.enhance(img).astype(np.float64)
    assert enh.last_run.passes == 8 and enh.last_run.tile[0] == enh.last_run.tile[1]
    # The plain runs are rounded to uint8 before averaging, TTA averages before rounding: within 1 level.
    assert np.abs(got - np.mean(outs, axis=0)).max() <= 1.0
    assert not np.array_equal(got, outs[0])  # the random-weight model is not symmetric, so TTA changes it


@given(h=st.integers(1, 30), w=st.integers(1, 30), th=st.integers(0, 12), tw=st.integers(0, 12),
       scale=st.sampled_from([1, 3]), seed=st.integers(0, 2**16))
@settings(max_examples=15, deadline=None)
def test_tta_tiled_equals_tta_whole_image(models, h, w, th, tw, scale, seed):
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    whole = Enhancer(models[scale], tiling=TilingConfig(tile=(10**4, 10**4)), tta=True)
    m = whole.card.margin
    tiled = Enhancer(models[scale], tiling=TilingConfig(tile=(2 * m + 1 + th, 2 * m + 1 + tw)), tta=True)
    assert np.array_equal(tiled.enhance(img), whole.enhance(img))
    th, tw = tiled.last_run.tile
    side = min(tiled.tile_for(h, w))  # squared to the plain tile's smaller side, grown only to leave a core
    assert th == tw and (th == side if side > 2 * m or side >= max(h, w) else th > 2 * m + 1)


@pytest.mark.parametrize("extra, tile", [(0, (1, 5)), (3, (4, 40)), (7, (1000, 3))])
def test_tta_with_a_tile_under_the_margins_on_a_side_that_holds_a_core_stays_exact(models, extra, tile):
    whole = Enhancer(models[1], tta=True)
    m = whole.card.margin
    img = np.random.default_rng(extra).integers(0, 256, (2 * m + 1 + extra, 9 * m, 3), dtype=np.uint8)
    tiled = Enhancer(models[1], tiling=TilingConfig(tile=tile), tta=True)
    assert np.array_equal(tiled.enhance(img), whole.enhance(img))  # a grown square was reflect-padded past the edge
    assert tiled.last_run.tile == (img.shape[0], img.shape[0])  # flush with the short side, as the whole run


def test_tta_on_a_strip_thinner_than_the_margins(models):
    img = np.random.default_rng(8).integers(0, 256, (3, 70, 3), dtype=np.uint8)
    enh = Enhancer(models[2], tta=True)
    got = enh.enhance(img)
    m = enh.card.margin
    side = enh.last_run.tile[0]
    assert enh.last_run.tile == (side, side) and side >= 3 + m and side > 2 * m and enh.last_run.tiles > 1
    assert got.shape == (6, 140, 3)
    other = Enhancer(models[2], tiling=TilingConfig(tile=(3, 40)), tta=True)
    assert np.array_equal(other.enhance(img), got)


def test_tta_on_a_non_square_fixed_shape_uses_the_4_shape_keeping_turns(models):
    import dataclasses

    base = Enhancer(models[2])
    m = base.card.margin
    card = dataclasses.replace(base.card, tile=(2 * m + 4, 2 * m + 6))
    # larger than the fixed shape, so every window lies inside the image as in the plain whole-image runs
    img = np.random.default_rng(6).integers(0, 256, (2 * m + 15, 2 * m + 17, 3), dtype=np.uint8)
    enh = Enhancer(models[2], card=card, tta=True)
    got = enh.enhance(img).astype(np.float64)
    assert enh.last_run.passes == 4 and enh.last_run.tile == card.tile
    outs = _plain_outputs_of_the_8_turns(models[2], img)
    assert np.abs(got - np.mean([outs[t] for t in (0, 2, 4, 6)], axis=0)).max() <= 1.0


def test_tta_stays_exact_on_an_align_2_model(tmp_path):
    from tests.onnx_models import half_res_denoise

    p = tmp_path / "h.onnx"
    half_res_denoise(p)
    rng = np.random.default_rng(0)
    for h, w, tile in [(40, 9, (22, 26)), (30, 17, (20, 20)), (5, 28, (26, 18))]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        whole = Enhancer(p, tiling=TilingConfig(tile=(10**4, 10**4)), tta=True).enhance(img)
        tiled = Enhancer(p, tiling=TilingConfig(tile=tile), tta=True)
        assert np.array_equal(tiled.enhance(img), whole)
        assert tiled.last_run.tiles > 1 and tiled.last_run.passes == 8


def test_one_enhancer_shared_by_threads_gives_each_its_own_result():
    """A LiteRT interpreter is resized per tile shape: callers on several threads must take turns."""
    pytest.importorskip("ai_edge_litert")
    from concurrent.futures import ThreadPoolExecutor

    enh = Enhancer("sr-x2", threads=1)  # the bundled int8 .tflite
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (10 + 7 * i, 23 - 2 * i, 3), dtype=np.uint8) for i in range(8)]
    expected = [enh.enhance(im) for im in images]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(enh.enhance, images * 3))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected * 3))


def test_last_run_is_the_calling_threads_own(models):
    import threading

    enh = Enhancer(models[2], tile=12)
    small, big = (np.zeros((8, 8, 3), np.uint8), np.zeros((40, 40, 3), np.uint8))
    both_ran, seen = threading.Barrier(2), {}

    def work(name, img):
        enh.enhance(img)
        both_ran.wait()  # each thread reads last_run after both have run
        seen[name] = enh.last_run.tiles

    threads = [threading.Thread(target=work, args=a) for a in (("small", small), ("big", big))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["small"] == 1 and seen["big"] > 1
    assert enh.last_run is None  # this thread ran nothing


def test_api_conveniences_tile_memory_and_one_channel_arrays(models):
    whole = Enhancer(models[2])
    a = np.random.default_rng(3).integers(0, 256, (21, 17, 3), dtype=np.uint8)
    assert np.array_equal(Enhancer(models[2], tile=12).enhance(a), whole.enhance(a))
    assert np.array_equal(Enhancer(models[2], tile=(12, 9), memory_mb=1).enhance(a), whole.enhance(a))
    assert TilingConfig(tile=8).tile == (8, 8)
    for bad in ({"tile": 0}, {"tile": (4,)}, {"memory_mb": float("inf")}, {"memory_mb": 0}):
        with pytest.raises(ConfigError):
            Enhancer(models[2], **bad)
    with pytest.raises(ConfigError, match="not both"):
        Enhancer(models[2], tiling=TilingConfig(), tile=8)
    g = a[..., :1]
    out = whole.enhance(g)
    assert out.shape == (42, 34, 1) and np.array_equal(out[..., 0], whole.enhance(g[..., 0]))


def test_pil_16bit_grey_and_exif_orientation(models):
    from PIL import Image

    enh = Enhancer(models[2])
    g16 = Image.fromarray((np.arange(35, dtype=np.uint16) * 1800).reshape(5, 7))
    out = enh.enhance(g16)
    assert out.mode == "I;16" and out.size == (14, 10)
    im = Image.new("RGB", (8, 4), (10, 200, 30))
    exif = im.getexif()
    exif[0x0112] = 6  # rotated: displayed 4 wide, 8 high
    tagged = Image.open(_roundtrip_jpeg(im, exif))
    out = enh.enhance(tagged)
    assert out.size == (8, 16)  # upright, as enhance_file gives


def _roundtrip_jpeg(im, exif):
    import io

    b = io.BytesIO()
    im.save(b, "JPEG", exif=exif.tobytes())
    b.seek(0)
    return b


def test_a_grey_picture_stored_as_rgb_comes_out_grey(models):
    from edge_enhance import imageio

    g = np.random.default_rng(5).integers(0, 256, (13, 11), dtype=np.uint8)
    photo = imageio.Photo(np.repeat(g[..., None], 3, axis=2))
    out = Enhancer(models[2]).enhance_photo(photo).rgb
    assert out.shape == (26, 22, 3) and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.array_equal(Enhancer(models[2]).enhance(photo.rgb), out)  # an RGB array alike
    tinted = np.random.default_rng(6).integers(0, 256, (13, 11, 3), dtype=np.uint8)
    assert not (Enhancer(models[2]).enhance_photo(imageio.Photo(tinted)).rgb[..., 0]
                == Enhancer(models[2]).enhance_photo(imageio.Photo(tinted)).rgb[..., 1]).all()


def test_16_bit_input_through_a_quantised_model_is_said_once(caplog):
    pytest.importorskip("ai_edge_litert")
    enh = Enhancer("sr-x2", threads=1)  # the bundled int8 .tflite
    a = np.random.default_rng(0).integers(0, 65536, (9, 10, 3), dtype=np.uint16)
    enh.enhance(a), enh.enhance(a)
    assert caplog.text.count("keeps 8-bit precision") == 1
    caplog.clear()
    enh.enhance((a >> 8).astype(np.uint8))
    assert "8-bit precision" not in caplog.text


def _traced(fn, *args):
    """fn(*args) and the peak of the memory Python and numpy allocated meanwhile (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        return fn(*args), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_grey_looking_and_transparent_photos_need_no_float_copy_of_the_result(models, monkeypatch):
    """The grey collapse and the un-premultiply run in bands of rows: a 12 MP photo's x2 result must not
    take several float32 copies of itself (it took 1 GB for a grey-looking and 2.2 GB for an RGBA one)."""
    from edge_enhance import imageio

    monkeypatch.setattr(imageio, "BAND_BYTES", 1 << 16)  # bands this test's small photo has many of
    enh = Enhancer(models[2], tiling=TilingConfig(tile=(64, 64)))
    rng = np.random.default_rng(0)
    g = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (300, 400), dtype=np.uint8)
    for photo in (imageio.Photo(rgb), imageio.Photo(np.repeat(g[..., None], 3, axis=2)), imageio.Photo(rgb, alpha)):
        res, peak = _traced(enh.enhance_photo, photo)
        assert peak < 2.5 * res.rgb.nbytes, (photo.alpha is not None, peak / res.rgb.nbytes)
    monkeypatch.setattr(imageio, "BAND_BYTES", 1 << 30)  # one band: the same pixels
    assert np.array_equal(enh.enhance_photo(photo).rgb, res.rgb)


@pytest.mark.parametrize("hidden", [0, 255])
def test_transparent_edges_get_no_outline_from_the_hidden_colour(models, hidden):
    """A flat card on a transparent background: what shows is the model on the card's colour alone, as if
    the colour went on under the transparent part (premultiplying made dark / light outlines)."""
    from edge_enhance import imageio

    rgb = np.full((24, 30, 3), hidden, np.uint8)
    rgb[6:18, 8:22] = (128, 90, 200)
    alpha = np.zeros((24, 30), np.uint8)
    alpha[6:18, 8:22] = 255
    alpha[6:18, 8] = 100  # an antialiased column
    before = rgb.copy()
    enh = Enhancer(models[2])
    out = enh.enhance_photo(imageio.Photo(rgb, alpha))
    flat = enh.enhance_rgb(np.broadcast_to(np.array((128, 90, 200), np.uint8), rgb.shape).copy())
    shows = out.alpha > 0
    assert shows.any() and not shows.all()
    np.testing.assert_array_equal(out.rgb[shows], flat[shows])
    assert not out.rgb[~shows].any() and np.array_equal(rgb, before)


def test_bleed_hidden_colour_fills_ring_by_ring_up_to_its_reach():
    from edge_enhance.enhancer import bleed_hidden_colour

    rgb = np.zeros((1, 8, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)
    alpha = np.zeros((1, 8), np.uint8)
    alpha[0, 0] = 1
    out = bleed_hidden_colour(rgb, alpha, 3)
    assert out[0, :4].tolist() == [[10, 20, 30]] * 4 and not out[0, 4:].any() and not rgb[0, 1:].any()
    opaque = np.full((1, 8), 255, np.uint8)
    assert bleed_hidden_colour(rgb, opaque, 3) is rgb  # nothing hidden: no copy


def test_a_tile_too_small_for_the_margins_is_grown_once_with_a_warning(models, caplog):
    """--tile under twice the model's margin failed every file of a batch; it runs at the smallest tile
    that holds a core, exact as ever, and says so once."""
    img = np.random.default_rng(4).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    enh = Enhancer(models[2], tiling=TilingConfig(tile=(2, 3)))
    m = enh.card.margin
    got, again = enh.enhance(img), enh.enhance(img)
    assert enh.last_run.tile == (min(30, 2 * m + 8), 2 * m + 8) and enh.last_run.tiles > 1
    assert np.array_equal(got, Enhancer(models[2]).enhance(img)) and np.array_equal(got, again)
    assert caplog.text.count("leaves no room inside the model's margins") == 1


def test_a_tiles_output_takes_one_float_copy_beside_the_engines(tmp_path):
    """Scaling, rounding and clipping a tile's output worked on fresh float arrays: three of them, for an
    x4 model most of its memory (sr-x4.onnx ran over --memory); now one, worked on in place."""
    from tests.onnx_models import residual_sr

    residual_sr(tmp_path / "m4.onnx", scale=4, layers=2, channels=6, seed=4)
    enh = Enhancer(tmp_path / "m4.onnx", tile=10**4)
    img = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    want = enh.enhance(img)
    got, peak = _traced(enh.enhance, img)
    assert np.array_equal(got, want) and peak < 2 * got.size * 4, peak / (got.size * 4)


def test_close_frees_the_engine_and_later_use_says_so(models):
    import gc
    import weakref

    with Enhancer(models[2]) as enh:
        assert enh.enhance(np.zeros((6, 7, 3), np.uint8)).shape == (12, 14, 3)
        engine = weakref.ref(enh.backend)
    gc.collect()
    assert engine() is None  # nothing holds the engine (and its memory) any more
    with pytest.raises(ConfigError, match=r"m2\.onnx: this Enhancer was closed"):
        enh.enhance(np.zeros((6, 7, 3), np.uint8))
    enh.close()  # twice is harmless


def test_pipeline_close_frees_every_stage(models):
    from edge_enhance.pipeline import Pipeline

    made = []

    def make(name):
        made.append(Enhancer(models[2]))
        return made[-1]

    with Pipeline("upscale", 2, make_enhancer=make) as pipe:
        assert len(pipe._loaded) == 1
    with pytest.raises(ConfigError, match="closed"):
        made[0].enhance(np.zeros((4, 4, 3), np.uint8))
    assert pipe._loaded == {}


def _bicubic_by_gathers(src, y, x, h, w, s):
    """upscale_bicubic as it was (4 fancy-index gathers per pass): the reference the fast one must equal."""
    def taps(n_in, start, count):
        c = (np.arange(start, start + count) + 0.5) / s - 0.5
        idx = np.floor(c).astype(np.int64)[:, None] + np.arange(-1, 3)
        t = np.abs(c[:, None] - idx)
        wt = np.where(t <= 1, (1.5 * t - 2.5) * t * t + 1, ((-0.5 * t + 2.5) * t - 4) * t + 2)
        wt[(idx < 0) | (idx >= n_in)] = 0
        return np.clip(idx, 0, n_in - 1), (wt / wt.sum(1, keepdims=True)).astype(np.float32)

    ri, rw = taps(src.shape[0], y * s, h * s)
    ci, cw = taps(src.shape[1], x * s, w * s)
    cols = sum(cw[None, :, k, None] * src.astype(np.float32)[:, ci[:, k]] for k in range(4))
    return sum(rw[:, k, None, None] * cols[ri[:, k]] for k in range(4))


def test_the_bicubic_base_of_strength_is_the_same_and_its_taps_are_computed_once_per_tile():
    # Any --strength but 1 ran a gather-based bicubic per tile: 2.6x the preview's time per frame. The sliced
    # one gives the same floats, bit for bit, for any region, scale, channel count and value range.
    from edge_enhance.enhancer import _cubic_taps, upscale_bicubic

    rng = np.random.default_rng(7)
    for trial in range(200):
        hh, ww = (int(v) for v in rng.integers(1, 30, 2))
        s, c = int(rng.integers(1, 5)), int(rng.integers(1, 4))
        src = rng.integers(0, 256, (hh, ww, c)).astype(np.uint8) if trial % 2 else \
            (rng.random((hh, ww, c)) * 65535).astype(np.float32)
        y, x = int(rng.integers(0, hh)), int(rng.integers(0, ww))
        h, w = int(rng.integers(1, hh - y + 1)), int(rng.integers(1, ww - x + 1))
        got, want = upscale_bicubic(src, y, x, h, w, s), _bicubic_by_gathers(src, y, x, h, w, s)
        assert got.dtype == np.float32 and np.array_equal(got, want), (hh, ww, c, s, y, x, h, w)
    frame = rng.integers(0, 256, (24, 32, 3)).astype(np.uint8)
    upscale_bicubic(frame, 0, 0, 24, 32, 2)
    before = _cubic_taps.cache_info()
    upscale_bicubic(frame, 0, 0, 24, 32, 2)  # the next frame's tile: rows' and columns' taps reused
    after = _cubic_taps.cache_info()
    assert after.misses == before.misses and after.hits > before.hits


@pytest.mark.parametrize("strength", [0.0, 0.4, 1.3])
def test_tiles_at_any_strength_equal_the_whole_image(models, strength):
    img = np.random.default_rng(4).integers(0, 256, (37, 29, 3), dtype=np.uint8)
    whole = Enhancer(models[2], strength=strength).enhance(img)
    tiled = Enhancer(models[2], strength=strength, tiling=TilingConfig(tile=(12, 10)))
    assert np.array_equal(tiled.enhance(img), whole) and tiled.last_run.tiles > 4


def test_a_gentler_strength_is_not_blocky(models):
    # a blend towards nearest-neighbour (the model's own base) left 2x2 steps that grew as strength fell
    yy, xx = np.mgrid[0:16, 0:16]
    img = np.clip(np.stack([yy * 9 + xx * 5 + k for k in range(3)], -1), 0, 255).astype(np.uint8)  # not grey-looking
    out = Enhancer(models[2], strength=0.25).enhance(img).astype(int)
    across = np.abs(np.diff(out, axis=1))[:, 1::2].mean()  # steps across 2x2 block borders
    inside = np.abs(np.diff(out, axis=1))[:, 0::2].mean()
    assert across < 1.5 * inside


def test_rgba_to_jpeg_keeps_the_colour_under_transparent_pixels(models, tmp_path, caplog):
    from PIL import Image

    from edge_enhance.enhancer import enhance_file

    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 255
    rgba[:, :4, 3] = 0  # a third of it transparent, its stored colour the same grey
    Image.fromarray(rgba).save(tmp_path / "a.png")
    enhance_file(Enhancer(models[1]), tmp_path / "a.png", tmp_path / "a.jpg")
    out = np.asarray(Image.open(tmp_path / "a.jpg")).astype(int)
    assert np.abs(out - 200).max() <= 3 and "transparency dropped" in caplog.text  # not black where it was hidden


def test_an_exception_from_the_progress_callback_cancels_and_writes_nothing(models, tmp_path):
    """The README's way to cancel a long run: raise in the callback."""
    from PIL import Image

    class Cancelled(Exception):
        pass

    def stop_at_3(done, total):
        if done == 3:
            raise Cancelled

    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(src)
    enh = Enhancer(models[2], tile=12)
    with pytest.raises(Cancelled):
        enh.enhance_file(src, dst, progress=stop_at_3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]
    assert enh.enhance_file(src, dst) == dst and enh.last_run.tiles > 3


@pytest.mark.parametrize("fmt", ["tif", "bmp"])
def test_an_uncompressed_output_the_disk_cannot_hold_is_refused_before_the_work(models, tmp_path, monkeypatch, fmt):
    """A TIFF / BMP output's size is known in advance; a full disk was found only when saving, after the work."""
    import collections

    from PIL import Image

    from edge_enhance import enhancer as enh_mod
    from edge_enhance.errors import OutputError

    src = tmp_path / "in.png"
    Image.new("RGB", (40, 30), (10, 120, 200)).save(src)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(enh_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10_000, 10_000))
    enh = Enhancer(models[2])  # x2: 80 x 60 x 3 = 14,400 bytes
    monkeypatch.setattr(enh, "enhance_photo", lambda *a, **k: pytest.fail("enhanced with no room for the output"))
    with pytest.raises(OutputError, match=rf"out.{fmt}: no room in .* for the 0 MB .* output \(0 MB free; PNG or JPEG"):
        enh.enhance_file(src, tmp_path / f"out.{fmt}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
    monkeypatch.undo()
    monkeypatch.setattr(enh_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10_000, 10_000))
    Enhancer(models[2]).enhance_file(src, tmp_path / "out.png")  # compressed: its size is not estimated
    monkeypatch.setattr(enh_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 15_000, 15_000))
    Enhancer(models[2]).enhance_file(src, tmp_path / f"out.{fmt}")  # 14,400 bytes of pixels fit


def test_the_room_check_counts_16bit_pgm_and_leaves_a_compressed_tiff_alone(tmp_path, monkeypatch):
    """A TIFF written with its input's LZW / Deflate has no size known in advance; a 16-bit grey PGM takes
    2 bytes a pixel (it was written 8-bit, and counted so)."""
    import collections

    from edge_enhance import enhancer as enh_mod
    from edge_enhance import imageio
    from edge_enhance.errors import OutputError

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(enh_mod.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 150, 150))
    grey16 = imageio.Photo(np.zeros((10, 10, 3), np.uint16), grey=True)  # 200 bytes as PGM
    with pytest.raises(OutputError, match="no room"):
        enh_mod._check_room_for_uncompressed(grey16, tmp_path / "o.pgm", "PPM", 1, False)
    rgb = imageio.Photo(np.zeros((10, 10, 3), np.uint8), extra={"compression": "tiff_lzw"})  # 300 bytes raw
    enh_mod._check_room_for_uncompressed(rgb, tmp_path / "o.tif", "TIFF", 1, False)
    with pytest.raises(OutputError, match="no room"):
        enh_mod._check_room_for_uncompressed(rgb, tmp_path / "o.bmp", "BMP", 1, False)


def test_a_grey_photo_is_denoised_through_channels_one_pixel_apart(monkeypatch):
    """Trained on noise drawn apart in R, G and B, the bundled denoise kept a grey photo's noise (the same in
    all three) as texture; given G one pixel to the left and B one pixel up, it removes it."""
    from edge_enhance import imageio

    y, x = np.mgrid[0:64, 0:80]
    clean = 60 + 120 * x / 79 + 30 * np.sin(y / 7)
    noisy = np.clip(np.rint(clean + np.random.default_rng(0).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)

    def psnr(a):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - clean) ** 2))

    enh = Enhancer("denoise", engine="onnxruntime", threads=1)
    rgb = np.repeat(noisy[..., None], 3, axis=2)
    outs = [enh.enhance_photo(imageio.Photo(rgb, grey=True)).rgb, enh.enhance_photo(imageio.Photo(rgb)).rgb]
    for out in outs:
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert psnr(out[..., 0]) > psnr(noisy) + 6  # as fed before: +0.1
    assert np.array_equal(outs[0], outs[1])
    monkeypatch.setattr(imageio, "BAND_BYTES", 80 * 4 * 5)  # bands of 5 rows: the in-place averaging, band by band
    assert np.array_equal(enh.enhance_photo(imageio.Photo(rgb, grey=True)).rgb, outs[0])
    wide = enh.enhance_photo(imageio.Photo(rgb.astype(np.uint16) * 257, grey=True)).rgb
    assert wide.dtype == np.uint16 and np.abs(wide.astype(int) // 257 - outs[0]).max() <= 1
    colour = np.clip(noisy[..., None] + np.array([0, 10, 20]), 0, 255).astype(np.uint8)  # not grey: as they are
    assert np.array_equal(enh.enhance_photo(imageio.Photo(colour)).rgb, enh.enhance_rgb(colour))


def test_denoise_luma_removes_the_noise_r_g_and_b_share_and_keeps_the_colour(monkeypatch):
    """The bundled denoise, trained on noise drawn apart per channel, kept luma noise (the same in R, G and B:
    film grain) as texture; its luma pass denoises Y as a grey picture and moves R, G and B by Y's change."""
    from edge_enhance import imageio

    y, x = np.mgrid[0:64, 0:80]
    grey = 60 + 100 * x / 79 + 30 * np.sin(y / 7)
    clean = np.stack([grey, grey * 0.7 + 40, 220 - grey * 0.8], axis=-1)
    grain = np.random.default_rng(0).normal(0, 20, (64, 80, 1))
    noisy = np.clip(np.rint(clean + grain), 0, 255).astype(np.uint8)

    def psnr(a):
        return 10 * np.log10(255 ** 2 / np.mean((a.astype(float) - clean) ** 2))

    enh = Enhancer("denoise", engine="onnxruntime", threads=1)
    plain = enh.enhance_photo(imageio.Photo(noisy)).rgb
    assert psnr(plain) < psnr(noisy) + 1  # as it was
    out = enh.denoise_luma(imageio.Photo(noisy)).rgb
    assert psnr(out) > psnr(noisy) + 6
    ycc = np.array([[-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])  # Cb, Cr: the colour
    assert np.abs((out.astype(float) - noisy) @ ycc.T).max() < 1.5  # moved along (1, 1, 1) alone, but for rounding
    monkeypatch.setattr(imageio, "BAND_BYTES", 80 * 4 * 5)  # bands of 5 rows, in place
    inplace = noisy.copy()
    assert enh.denoise_luma(imageio.Photo(inplace), out=inplace).rgb is inplace and np.array_equal(inplace, out)
    half = enh.denoise_luma(imageio.Photo(noisy), strength=0.5).rgb
    assert psnr(noisy) < psnr(half) < psnr(out)
    alpha = np.full((64, 80), 255, np.uint8)
    alpha[:, :8] = 0
    hidden = enh.denoise_luma(imageio.Photo(noisy, alpha))
    assert (hidden.rgb[:, :8] == 0).all() and hidden.alpha is alpha
    with pytest.raises(ConfigError, match="denoise_luma needs an rgb denoise model, not a rgb sr one"):
        Enhancer("sr-x2", engine="onnxruntime", threads=1).denoise_luma(imageio.Photo(noisy))
