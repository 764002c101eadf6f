import io
import json
import logging
import re

import numpy as np
import pytest
from PIL import Image

from edge_enhance import imageio, pipeline
from edge_enhance.errors import ConfigError
from edge_enhance.pipeline import (GREY_NOISE_THRESHOLD, LUMA_NOISE_THRESHOLD, NOISE_THRESHOLD, backprojection_psnr,
                                   blockiness, estimate_noise_sigma, jpeg_from_pixels, jpeg_quality_from_tables,
                                   luma_strength, Pipeline, plan_stages, shared_noise_sigma, sr_chain)


def smooth(h=192, w=256):
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = 128 + 60 * np.sin(x / 37.0) * np.cos(y / 29.0)
    return np.clip(np.stack([base, base * 0.8 + 20, 255 - base], -1), 0, 255)


@pytest.mark.parametrize("sigma", [5, 10, 15, 25, 50])
def test_noise_estimate_within_15_percent(sigma):
    clean = smooth()
    noisy = np.clip(np.round(clean + np.random.default_rng(sigma).normal(0, sigma, clean.shape)), 0, 255)
    est = estimate_noise_sigma(noisy.astype(np.uint8))
    # clipping at 0 / 255 (as the protocol does) removes some of the noise at sigma 50
    assert est == pytest.approx(sigma, rel=0.1 if sigma < 50 else 0.2)


@pytest.mark.parametrize("sigma", [5, 10, 25, 50])
def test_shared_noise_reading_tells_luma_noise_from_noise_drawn_per_channel(sigma):
    """Noise the same in R, G and B (luma noise, which denoise leaves) reads as itself; noise drawn apart in each
    channel (which denoise removes) reads as none, but where clipping at 0 / 255 couples the channels."""
    clean, rng = smooth(), np.random.default_rng(sigma)
    luma = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape[:2] + (1,))), 0, 255).astype(np.uint8)
    apart = np.clip(np.round(clean + rng.normal(0, sigma, clean.shape)), 0, 255).astype(np.uint8)
    assert shared_noise_sigma(luma) == pytest.approx(sigma, rel=0.1)
    assert shared_noise_sigma(luma.astype(np.uint16) * 257) == pytest.approx(shared_noise_sigma(luma))
    assert estimate_noise_sigma(luma) == pytest.approx(sigma, rel=0.1)  # per channel it is noise all the same
    assert shared_noise_sigma(apart) < (2 if sigma < 50 else 0.3 * sigma)
    assert shared_noise_sigma(clean.astype(np.uint8)) < 1.5
    assert shared_noise_sigma(luma, np.zeros(luma.shape[:2], np.uint8)) == 0.0  # nothing opaque to read


def test_a_pixel_pattern_never_reads_as_impossible_noise():
    # a 1-pixel checkerboard read as sigma 571 on 0..255, where no noise can exceed 127.5
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    sigma = estimate_noise_sigma(np.repeat(board[..., None], 3, axis=2))
    assert 50 < sigma <= 127.5


def test_clean_smooth_image_reads_as_noise_free():
    assert estimate_noise_sigma(smooth().astype(np.uint8)) < 1.5


@pytest.mark.parametrize("q", [1, 5, 10, 20, 30, 50, 75, 90, 99, 100])
def test_jpeg_quality_from_tables(tmp_path, q):
    """Exact, the extremes too (q 1..10 all have most entries clamped at 255, q 100 at 1)."""
    p = tmp_path / "x.jpg"
    Image.fromarray(smooth().astype(np.uint8)).save(p, quality=q)
    assert jpeg_quality_from_tables(p) == q


def textured(h=192, w=256, grain=2, share=0.4):
    """smooth() with a random texture of ``grain``-pixel grains: a photo's spread of DCT coefficients."""
    noise = np.random.default_rng(1).integers(0, 256, (h // grain, w // grain, 3), dtype=np.uint8)
    tex = np.asarray(Image.fromarray(noise).resize((w, h), Image.BICUBIC), np.float64)
    return np.clip(smooth(h, w) * (1 - share) + tex * share, 0, 255).astype(np.uint8)


def jpeg_pixels(rgb, quality, **kw):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality, **kw)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def jpeg_quality_from_pixels(rgb, alpha=None):
    return jpeg_from_pixels(rgb, alpha)[0]


@pytest.mark.parametrize("q", [30, 50, 75, 90])
def test_jpeg_quality_is_read_from_a_jpegs_decoded_pixels(q):
    """A PNG of a JPEG (no tables to read) keeps its quantisation steps in its DCT coefficients, cropped off the
    8x8 grid too; a picture that was never a JPEG, or was resized since, or has transparency, reads None."""
    img = textured()
    for x in (jpeg_pixels(img, q), jpeg_pixels(img, q)[3:, 5:], jpeg_pixels(img, q, subsampling=0)[7:, 1:]):
        assert abs(jpeg_quality_from_pixels(x) - q) <= 2
    assert jpeg_from_pixels(jpeg_pixels(img, q)[3:, 5:])[1] == "subsampled"  # Pillow's default, 4:2:0
    if q > 75:  # where it decides (4:2:2's vertical steps stay on the 8x8 grid: harsher, it can read unclear)
        assert jpeg_from_pixels(jpeg_pixels(img, q, subsampling=1))[1] == "subsampled"
    assert jpeg_from_pixels(jpeg_pixels(img, q, subsampling=0)[7:, 1:])[1] == "4:4:4"
    grey = np.repeat(img[..., :1], 3, axis=2)
    assert jpeg_from_pixels(jpeg_pixels(grey, q)) == (jpeg_quality_from_pixels(jpeg_pixels(grey, q)), None)  # no colour
    x = jpeg_pixels(img, q)
    assert jpeg_quality_from_pixels(img) is None
    assert jpeg_quality_from_pixels(np.asarray(Image.fromarray(x).resize((128, 96), Image.BICUBIC))) is None
    alpha = np.full(x.shape[:2], 255, np.uint8)
    assert jpeg_quality_from_pixels(x, alpha) == jpeg_quality_from_pixels(x)
    alpha[0, 0] = 0
    assert jpeg_quality_from_pixels(x, alpha) is None


def test_auto_cleans_a_png_of_a_jpeg_its_blocks_did_not_give_away():
    """A PNG of a quality-50 JPEG reads under the blockiness threshold; its pixels tell the quality, so dejpeg runs,
    as for a JPEG file: up to quality 90 where they tell chroma subsampling too, 75 for 4:4:4 (or no clear
    layout)."""
    ran = []

    def make(name):
        ran.append(name)
        return _Offset(0, scale=1 if name in ("denoise", "dejpeg") else 2)

    pipe = Pipeline("auto", 2, make_enhancer=make, check=False)
    for q, layout, cleaned in ((50, 2, True), (75, 0, True), (85, 2, True), (85, 0, False), (90, 1, True)):
        pipe.enhance_photo(imageio.Photo(jpeg_pixels(textured(grain=1, share=0.5), q, subsampling=layout)))
        an = pipe.last_analysis
        assert an.blockiness < 1.4 and an.jpeg_from_pixels and abs(an.jpeg_quality - q) <= 2
        assert an.jpeg_subsampling == ("4:4:4" if layout == 0 else "subsampled")
        assert pipe.last_stages[:1] == ["dejpeg"] * cleaned + ["denoise"] * (not cleaned)  # a noise-like texture
    pipe.enhance_photo(imageio.Photo(textured(grain=1, share=0.5)))
    assert "dejpeg" not in pipe.last_stages and pipe.last_analysis.jpeg_quality is None
    assert not pipe.last_analysis.jpeg_from_pixels


def test_jpeg_quality_of_png_is_none(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(smooth().astype(np.uint8)).save(p)
    assert jpeg_quality_from_tables(p) is None


def test_blockiness_rises_as_quality_falls():
    img = smooth().astype(np.uint8)

    def jpeg(q):
        b = io.BytesIO()
        Image.fromarray(img).save(b, "JPEG", quality=q)
        return np.asarray(Image.open(b))

    b10, b50, b95, clean = blockiness(jpeg(10)), blockiness(jpeg(50)), blockiness(jpeg(95)), blockiness(img)
    assert b10 > b50 > b95 and b10 > 1.25 and abs(clean - 1) < 0.1
    # A JPEG cropped by a few pixels (its grid no longer at 0, 0) and saved losslessly is still seen.
    assert blockiness(jpeg(10)[5:, 3:]) > 1.25


def test_flat_graphics_with_edges_on_the_8_grid_are_not_read_as_jpeg():
    """A logo / chart PNG whose shapes start at multiples of 8 read as blockiness in the millions (its
    inside steps are 0) and auto mode ran the JPEG-artefact model on it."""
    a = np.full((64, 96, 3), 255, np.uint8)
    a[:16, :16], a[:16, -16:], a[-16:, :16] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    assert blockiness(a) == 1.0
    ramp = np.broadcast_to(np.linspace(0, 255, 96, dtype=np.float32)[None, :, None], (64, 96, 3))
    b = io.BytesIO()
    Image.fromarray(np.rint(ramp).astype(np.uint8)).save(b, "JPEG", quality=10)
    assert blockiness(np.asarray(Image.open(b))) > 1.25  # a smooth picture once a JPEG still is


def test_backprojection_of_a_faithful_upscale_is_high():
    img = smooth(64, 64).astype(np.uint8)
    up = np.asarray(Image.fromarray(img).resize((128, 128), Image.BICUBIC))
    assert backprojection_psnr(img, up) > 35
    assert backprojection_psnr(img, np.zeros_like(up)) < 15


def test_auto_plan_picks_cleanup_then_upscale(tmp_path):
    clean = smooth()
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 20, clean.shape)), 0, 255).astype(np.uint8)
    stages, an = plan_stages("auto", 2, imageio.Photo(noisy))
    assert stages == ["denoise", "sr-x2"] and an.noise_sigma > 5
    p = tmp_path / "q.jpg"
    Image.fromarray(clean.astype(np.uint8)).save(p, quality=20)
    stages, an = plan_stages("auto", 4, imageio.load_image(p), p)
    assert stages == ["dejpeg", "sr-x4"] and an.jpeg_quality == 20
    stages, _ = plan_stages("auto", 2, imageio.Photo(clean.astype(np.uint8)))
    assert stages == ["sr-x2"]
    # A noisy photo saved as a good JPEG (a phone's, 4:2:0): dejpeg, then denoise for the noise the JPEG kept
    # (dejpeg alone left it: 6-7.6 dB below denoise on Kodak24 crops at sigma 15-25 under 4:4:4).
    p90 = tmp_path / "n.jpg"
    Image.fromarray(noisy).save(p90, quality=90)
    stages, an = plan_stages("auto", 1, imageio.load_image(p90), p90)
    assert stages == ["dejpeg", "denoise"] and an.jpeg_quality == 90 and an.noise_sigma > 6
    assert an.jpeg_subsampling == "4:2:0"
    # A clean one: dejpeg only (on Kodak24 it gained 0.3 dB on clean 4:2:0 q90 JPEGs).
    Image.fromarray(clean.astype(np.uint8)).save(p90, quality=90)
    assert plan_stages("auto", 1, imageio.load_image(p90), p90)[0] == ["dejpeg"]
    # Without chroma subsampling a q90 JPEG is left alone (dejpeg cost 0.41 dB on Kodak24, 1.20 on McMaster) ...
    yy, xx = np.indices(clean.shape[:2])  # texture, as a photo has: the smooth picture alone shows q90's blocks
    textured = np.clip(clean + 12 * (np.sin(xx * 0.9) * np.cos(yy * 0.6))[..., None], 0, 255).astype(np.uint8)
    Image.fromarray(textured).save(p90, quality=90, subsampling=0)
    stages, an = plan_stages("auto", 1, imageio.load_image(p90), p90)
    assert stages == [] and an.jpeg_subsampling == "4:4:4"
    Image.fromarray(noisy).save(p90, quality=90, subsampling=0)  # ... or denoised, its noise kept
    assert plan_stages("auto", 1, imageio.load_image(p90), p90)[0] == ["denoise"]
    Image.fromarray(textured).save(p90, quality=70, subsampling=0)
    assert plan_stages("auto", 1, imageio.load_image(p90), p90)[0] == ["dejpeg"]
    Image.fromarray(clean.astype(np.uint8)).save(p90, quality=95)  # above dejpeg's training range: left alone
    assert plan_stages("auto", 1, imageio.load_image(p90), p90)[0] == []
    Image.fromarray(noisy).save(p90, quality=95)  # ... or denoised
    assert plan_stages("auto", 1, imageio.load_image(p90), p90)[0] == ["denoise"]


@pytest.mark.parametrize("first,cleaned", [(50, True), (85, True), (None, False), ("flat", False)])
def test_auto_reads_an_earlier_harsher_jpeg_under_a_fine_one(tmp_path, first, cleaned):
    """A q50 JPEG that an editor or a messaging app saved again at q95: its tables say 95 (left alone before), its
    pixels still sit on q50's steps. A first q95 JPEG reads 95 or nothing from its pixels: left alone; so does
    one with a phone's own tables, flatter than IJG's (q93 by all 64 steps, its pixels q90 by the low ones)."""
    img = textured(grain=1, share=0.5)
    p = tmp_path / "again.jpg"
    if first == "flat":
        q93 = np.array(pipeline._IJG_LUMA[92], np.float64)
        flat = np.clip(np.round(q93.mean() * (q93 / q93.mean()) ** 0.6), 1, 255).astype(int).tolist()
        Image.fromarray(img).save(p, qtables=[flat, flat])
    else:
        Image.fromarray(jpeg_pixels(img, first) if first else img).save(p, quality=95)
    stages, an = plan_stages("auto", 1, imageio.load_image(p), p)
    assert ("dejpeg" in stages) == cleaned and an.jpeg_from_pixels == cleaned  # (its grain reads as noise too)
    if cleaned:
        assert abs(an.jpeg_quality - first) <= 2 and an.jpeg_subsampling == "subsampled"
    else:
        assert an.jpeg_quality == (93 if first else 95) and an.jpeg_subsampling == "4:2:0"
        if first:
            assert jpeg_quality_from_pixels(imageio.load_image(p).rgb) == 90  # what fooled the first version


def test_auto_reads_the_jpeg_an_application_opened_itself(tmp_path):
    """Pipeline("auto").enhance(Image.open(jpg)) never read the quantisation tables: a q60 JPEG got sr-x2 alone
    in Python and dejpeg + sr-x2 from the CLI."""
    p = tmp_path / "q.jpg"
    Image.fromarray(smooth().astype(np.uint8)).save(p, quality=60)
    with Image.open(p) as im:
        stages, an = plan_stages("auto", 2, imageio.photo_from_pil(im))
    assert stages == ["dejpeg", "sr-x2"] and an.jpeg_quality == 60 and an.jpeg_subsampling == "4:2:0"


def test_auto_does_not_denoise_a_pixel_pattern():
    """A 1-pixel checkerboard reads as the largest sigma there is (127.5): denoise turned it grey (9.7 dB)."""
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    stages, an = plan_stages("auto", 2, imageio.Photo(np.repeat(board[..., None], 3, axis=2), grey=True))
    assert an.noise_sigma == 127.5 and "denoise" not in stages


def test_auto_sees_through_a_high_quality_copy_of_a_harsh_jpeg(tmp_path):
    """A q10 JPEG re-saved at q95 (a copy of a copy): the tables say 95, the pixels still show the blocks."""
    p = tmp_path / "copy.jpg"
    Image.fromarray(smooth(128, 160).astype(np.uint8)).save(p, quality=10)
    Image.open(p).save(p, quality=95)
    stages, an = plan_stages("auto", 2, imageio.load_image(p), p)
    assert stages == ["dejpeg", "sr-x2"] and an.jpeg_quality == 95 and an.blockiness > 1.4


@pytest.mark.parametrize("frame", [245, 12])
def test_a_flat_print_border_neither_hides_noise_nor_reads_as_jpeg_blocks(frame):
    rng = np.random.default_rng(3)
    photo = smooth(172, 212)
    framed = np.full((200, 240, 3), float(frame))  # a 14-pixel border, 6% of the sides
    framed[14:186, 14:226] = photo
    clean = np.clip(np.round(framed + rng.normal(0, 1, framed.shape)), 0, 255).astype(np.uint8)  # scanner noise
    stages, an = plan_stages("auto", 2, imageio.Photo(clean))
    assert stages == ["sr-x2"] and an.blockiness < 1.4  # the frame's edges fall on one phase of the 8-pixel grid
    framed[14:186, 14:226] += rng.normal(0, 20, photo.shape)  # grain in the photo, not on the border
    grainy = np.clip(np.round(framed), 0, 255).astype(np.uint8)
    stages, an = plan_stages("auto", 2, imageio.Photo(grainy))
    assert stages == ["denoise", "sr-x2"] and 16 < an.noise_sigma < 24


def test_auto_leaves_a_picture_too_small_to_read_alone():
    rng = np.random.default_rng(4)
    tiny = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)  # reads as noise and blocks alike
    stages, an = plan_stages("auto", 2, imageio.Photo(tiny))
    assert stages == ["sr-x2"] and an.noise_sigma is None and an.blockiness is None  # not a reading of 0 / 1


def test_scale_chains():
    assert sr_chain(8) == ["sr-x4", "sr-x2"] and sr_chain(3) == ["sr-x3"]
    with pytest.raises(ConfigError):
        sr_chain(5)
    assert plan_stages("denoise", 1)[0] == ["denoise"]
    assert plan_stages("dejpeg", 2)[0] == ["dejpeg", "sr-x2"]
    assert plan_stages("photo", 2)[0] == ["enhance-x2"]
    assert plan_stages("photo", 4)[0] == ["enhance-x2", "sr-x2"]
    with pytest.raises(ConfigError, match="not x3"):
        plan_stages("photo", 3)
    with pytest.raises(ConfigError, match="--scale 1 with --mode upscale .the default. would run no model"):
        plan_stages("upscale", 1)


class _Offset:
    """Test double: nearest x2 plus a constant residual scaled by strength (no model involved)."""

    def __init__(self, offset, scale=2):
        self.offset, self.scale, self.strength, self.last_run = offset, scale, 1.0, None

    def enhance_photo(self, photo, *, src=None, out=None, progress=None, strength=None):
        strength = self.strength if strength is None else strength
        up = photo.rgb.repeat(self.scale, 0).repeat(self.scale, 1).astype(float) + strength * self.offset
        return imageio.Photo(np.clip(up, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("offset,expect_strength", [(12, 0.5), (40, None)])
def test_backprojection_check_falls_back_then_refuses(offset, expect_strength):
    from edge_enhance.errors import EdgeEnhanceError
    from edge_enhance.pipeline import Pipeline

    pipe = Pipeline("auto", 2, make_enhancer=lambda name: _Offset(offset))
    photo = imageio.Photo(np.full((40, 40, 3), 100, np.uint8))
    if expect_strength is None:
        with pytest.raises(EdgeEnhanceError, match="quality check failed"):
            pipe.enhance_photo(photo)
    else:
        out = pipe.enhance_photo(photo)
        assert pipe.last_analysis.strength == expect_strength and out.rgb.shape == (80, 80, 3)
        assert pipe.last_analysis.backprojection_db > 30


def test_auto_on_a_video_keeps_the_first_frames_chain_for_every_frame():
    """Per frame, a noise estimate either side of the threshold switched denoise on and off (4 dB flicker)."""
    from edge_enhance.pipeline import Pipeline

    ran = []

    def make(name):
        ran.append(name)
        enh = _Offset(0, scale=1 if name in ("denoise", "dejpeg") else 2)
        enh.enhance_photo = lambda photo, _e=enh, _n=name, **kw: ran.append(_n) or _Offset.enhance_photo(_e, photo, **kw)
        return enh

    rng = np.random.default_rng(0)
    noisy = np.clip(128 + rng.normal(0, 15, (48, 48, 3)), 0, 255).astype(np.uint8)
    clean = np.full((48, 48, 3), 128, np.uint8)
    pipe = Pipeline("auto", 2, make_enhancer=make, check=False)
    pipe.enhance(clean)
    assert pipe.last_stages == ["sr-x2"]  # alone, each frame is planned for itself
    pipe.new_sequence()
    first = pipe.enhance(noisy)
    assert pipe.last_stages == ["denoise", "sr-x2"] and first.shape == (96, 96, 3)
    analysis = pipe.last_analysis
    ran.clear()
    pipe.enhance(clean)
    assert pipe.last_stages == ["denoise", "sr-x2"] and ran == ["denoise", "sr-x2"]  # the first frame's chain
    assert pipe.last_analysis is analysis
    pipe.end_sequence()
    pipe.enhance(clean)
    assert pipe.last_stages == ["sr-x2"]


@pytest.mark.parametrize("mode,scale,factor", [("upscale", None, 2), ("upscale", 3, 3), ("denoise", None, 1),
                                               ("dejpeg", 2, 2), ("photo", None, 2), ("auto", None, 2)])
def test_every_mode_runs_the_bundled_models_from_the_cli(tmp_path, mode, scale, factor):
    """`edge-enhance enhance --mode M` end to end with the bundled files (whatever engine resolves)."""
    from edge_enhance.cli import main

    rng = np.random.default_rng(3)
    src = tmp_path / "in.jpg"
    yy, xx = np.mgrid[0:30, 0:44]
    smooth = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1) + rng.normal(0, 8, (30, 44, 3))
    Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8)).save(src, quality=30)
    dst = tmp_path / "out.png"
    argv = ["enhance", str(src), "-o", str(dst), "--mode", mode, "-q"] + (["--scale", str(scale)] if scale else [])
    assert main(argv) == 0
    with Image.open(dst) as im:
        assert im.size == (44 * factor, 30 * factor)


def test_auto_mode_says_what_it_found_and_did(tmp_path, capsys):
    from edge_enhance.cli import _auto_note, main

    clean = smooth(64, 80)
    noisy = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")
    assert main(["enhance", str(tmp_path / "noisy.png"), "-o", str(tmp_path / "a.png"), "--mode", "auto"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{tmp_path / 'noisy.png'} -> {tmp_path / 'a.png'} (auto: noise sigma 2")
    assert "; denoise + sr-x2; back-projection " in line and line.endswith(" dB)")
    assert re.search(r"blockiness \d\.\d\d, luma noise \d\.\d after denoise; ", line)
    grain = np.clip(np.round(clean + np.random.default_rng(0).normal(0, 20, (64, 80, 1))), 0, 255).astype(np.uint8)
    Image.fromarray(grain).save(tmp_path / "grain.png")  # noise the same in R, G and B: film grain
    assert main(["enhance", str(tmp_path / "grain.png"), "-o", str(tmp_path / "g.png"), "--mode", "auto"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert re.search(r", luma noise \d+\.\d after denoise; denoise \+ denoise-luma \+ sr-x2; back-projection ", line)
    assert main(["enhance", str(tmp_path / "noisy.png"), "-o", str(tmp_path / "u.png")]) == 0
    assert "(auto" not in capsys.readouterr().out  # other modes: no analysis
    fell_back = {"noise_sigma": 0.4, "jpeg_quality": 20, "blockiness": 2.0, "stages": ["dejpeg", "sr-x2"],
                 "backprojection_db": 31.26, "strength": 0.5}
    assert _auto_note(fell_back) == " (auto: noise sigma 0.4, JPEG quality 20; dejpeg + sr-x2; back-projection 31.3 dB at strength 0.5)"
    assert _auto_note({**fell_back, "jpeg_subsampling": "4:4:4", "strength": 1}) == \
        " (auto: noise sigma 0.4, JPEG quality 20 4:4:4; dejpeg + sr-x2; back-projection 31.3 dB)"
    assert _auto_note({**fell_back, "jpeg_from_pixels": True, "strength": 1}) == \
        " (auto: noise sigma 0.4, JPEG quality 20 from its pixels; dejpeg + sr-x2; back-projection 31.3 dB)"
    assert _auto_note({**fell_back, "jpeg_from_pixels": True, "jpeg_subsampling": "subsampled", "strength": 1}) == \
        " (auto: noise sigma 0.4, JPEG quality 20 from its pixels, chroma subsampled; dejpeg + sr-x2; " \
        "back-projection 31.3 dB)"


@pytest.mark.parametrize("hidden", ["noise", "black"])
def test_auto_ignores_the_colour_under_transparent_pixels(hidden):
    """A clean cutout PNG: whatever lies under alpha 0 (noise, black) is neither noise nor JPEG damage."""
    clean = smooth(96, 128).astype(np.uint8)
    y, x = np.mgrid[0:96, 0:128]
    alpha = np.where((x - 64) ** 2 + (y - 48) ** 2 < 1600, 255, 0).astype(np.uint8)
    under = np.random.default_rng(0).integers(0, 256, clean.shape) if hidden == "noise" else np.zeros_like(clean)
    rgb = np.where(alpha[..., None] > 0, clean, under).astype(np.uint8)
    if hidden == "black":
        assert blockiness(rgb) > 1.25  # what the whole image suggests
    stages, an = plan_stages("auto", 2, imageio.Photo(rgb, alpha))
    assert stages == ["sr-x2"] and an.noise_sigma < 1.5 and abs(an.blockiness - 1) < 0.1
    up = np.asarray(Image.fromarray(clean).resize((256, 192), Image.BICUBIC))
    shown = np.where(np.repeat(np.repeat(alpha, 2, 0), 2, 1)[..., None] > 0, up, 255).astype(np.uint8)
    assert backprojection_psnr(rgb, shown) < 20 and backprojection_psnr(rgb, shown, alpha) > 30


def test_noise_is_read_in_the_opaque_part_even_when_junk_covers_nearly_all_the_rest():
    clean = smooth(96, 128).astype(np.uint8)
    y, x = np.mgrid[0:96, 0:128]
    alpha = np.where((x - 64) ** 2 + (y - 48) ** 2 < 196, 255, 0).astype(np.uint8)  # 5% of the picture
    rgb = np.where(alpha[..., None] > 0, clean, np.random.default_rng(0).integers(0, 256, clean.shape)).astype(np.uint8)
    assert estimate_noise_sigma(rgb) > 20 and estimate_noise_sigma(rgb, alpha) < 1.5


@pytest.mark.parametrize("sigma", [0, 10])
def test_texture_is_not_read_as_noise(sigma):
    """A clean photo mostly of fine texture (fur, foliage, a halftone comic: the median 8x8 block read
    baboon at 13.5) with some smooth sky: the noise is read in the smoothest blocks; clipped ones
    (blown highlights, crushed shadows) are left out, as they have lost their noise."""
    rng = np.random.default_rng(7)
    h, w = 192, 256
    texture = 128 + 50 * np.sign(np.sin(np.mgrid[0:h, 0:w][1] * 1.3 + rng.normal(0, 0.5, (h, w))))
    img = smooth(h, w)
    img[:, 40:] = np.stack([texture] * 3, -1)[:, 40:]  # 85% texture
    img[:8, :] = 255  # a blown-out strip: no noise left there
    noisy = np.clip(np.round(img + rng.normal(0, sigma, img.shape)), 0, 255).astype(np.uint8)
    est = estimate_noise_sigma(noisy)
    # Smooth blocks are 15% of this picture, so the 5th-percentile block is a middling smooth one and
    # the gain (set for a picture of noise alone) over-reads by up to itself; texture read 25 before.
    assert est < 1.0 if sigma == 0 else 0.9 * sigma < est < 1.35 * sigma


def test_estimators_of_a_fully_transparent_image_say_nothing():
    rgb = np.random.default_rng(1).integers(0, 256, (40, 40, 3)).astype(np.uint8)
    alpha = np.zeros((40, 40), np.uint8)
    assert estimate_noise_sigma(rgb, alpha) == 0.0 and blockiness(rgb, alpha) == 1.0


def test_an_aliased_input_is_judged_against_what_bicubic_reaches_on_it():
    """A 1-px checkerboard: no upscale agrees with it at 30 dB (bicubic itself scores far below), so a result
    at least as faithful as bicubic is kept, not refused; one far worse than bicubic still is."""
    from edge_enhance.errors import EdgeEnhanceError
    from edge_enhance.pipeline import Pipeline, bicubic_backprojection

    board = (np.indices((40, 40)).sum(0) % 2 * 255).astype(np.uint8)
    photo = imageio.Photo(np.repeat(board[..., None], 3, axis=2))
    floor = bicubic_backprojection(photo.rgb, (80, 80, 3))
    assert floor < 20
    pipe = Pipeline("auto", 2, make_enhancer=lambda name: _Offset(0, scale=2 if name.startswith("sr-") else 1))
    out = pipe.enhance_photo(photo)  # nearest x2: as faithful as bicubic here, or more
    assert out.rgb.shape == (80, 80, 3) and pipe.last_analysis.backprojection_db >= floor
    flat = imageio.Photo(np.full((40, 40, 3), 100, np.uint8))
    with pytest.raises(EdgeEnhanceError, match="the bar or bicubic's own"):
        Pipeline("auto", 2, make_enhancer=lambda name: _Offset(40)).enhance_photo(flat)


def test_each_file_says_which_models_ran(tmp_path, capsys):
    """--scale 8 (x4 then x2), and any mode, name the chain on the file's line and in --json."""
    pytest.importorskip("ai_edge_litert")
    from edge_enhance.cli import main

    src = tmp_path / "a.png"
    Image.fromarray(smooth(12, 10).astype(np.uint8)).save(src)
    assert main(["enhance", str(src), "--scale", "8", "-o", str(tmp_path / "o.png")]) == 0
    assert "(sr-x4 + sr-x2)" in capsys.readouterr().out
    assert main(["enhance", str(src), "--mode", "denoise", "--strength", "0.5", "-o", str(tmp_path / "d.png"),
                 "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["files"][0]
    assert (f["stages"], f["strength"], f["tta"]) == (["denoise"], 0.5, False)
    assert main(["enhance", str(src), "--mode", "auto", "--scale", "1", "--strength", "0.25", "-o",
                 str(tmp_path / "x.png"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files"][0]["strength"] == 0.25


def test_json_of_a_mode_run_reports_its_tiling(tmp_path, capsys):
    import json

    from edge_enhance.cli import main

    Image.fromarray(smooth(40, 50).astype(np.uint8)).save(tmp_path / "a.png")
    assert main(["enhance", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--mode", "photo", "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["files"][0]
    assert f["stages"] == ["enhance-x2"] and f["tiles"] == 1 and f["tile"] and f["passes"] == 1


def test_auto_at_scale_1_with_nothing_to_clean_writes_nothing(tmp_path, capsys):
    """It wrote a re-encoded copy (q92 of a q95 JPEG: 44 dB from its input) and counted it enhanced."""
    import json

    from edge_enhance.cli import main
    from edge_enhance.enhancer import enhance_file
    from edge_enhance.errors import NothingToDo

    p = tmp_path / "clean.jpg"
    Image.fromarray(smooth(64, 80).astype(np.uint8)).save(p, quality=95)
    assert main(["enhance", str(p), "--mode", "auto", "--scale", "1", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ok"], s["skipped"]) == (0, 1) and s["files"][0]["reason"] == "nothing to do"
    assert s["files"][0]["stages"] == [] and s["files"][0]["jpeg_quality"] == 95
    assert main(["enhance", str(p), "--mode", "auto", "--scale", "1"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{p}: left as it is, nothing written (auto: ") and "1 left as they were" in err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["clean.jpg"]
    with pytest.raises(NothingToDo, match="nothing written"):  # the library says so too
        enhance_file(Pipeline("auto", 1, make_enhancer=lambda name: None), p, tmp_path / "o.jpg")
    assert not (tmp_path / "o.jpg").exists()


def test_a_strength_past_1_on_denoise_is_warned_of_once(tmp_path, caplog):
    noisy = np.clip(np.round(smooth(48, 64) + np.random.default_rng(5).normal(0, 20, (48, 64, 3))), 0, 255)
    pipe = Pipeline("denoise", 1, make_enhancer=lambda name: _Offset(0, scale=1), strength=1.25)
    for _ in range(2):
        pipe.enhance_photo(imageio.Photo(noisy.astype(np.uint8)))
    said = [r.getMessage() for r in caplog.records if "inverted" in r.getMessage()]
    assert said == ["--strength 1.25 past 1 puts denoise's removed noise back inverted (1 is the model's best)"]
    caplog.clear()
    up = Pipeline("upscale", 2, make_enhancer=lambda name: _Offset(0), strength=1.25)
    up.enhance_photo(imageio.Photo(noisy.astype(np.uint8)))
    assert not caplog.records


def test_a_cleanup_before_an_upscale_runs_at_most_at_strength_1(caplog):
    """--strength 1.5 at x2 ran denoise at 1.5 too: the removed noise came back inverted and the upscale
    sharpened it (3.2 dB lost at sigma 25); the strength is the upscale's, the cleanup stays at its best."""
    used = []

    class Recording(_Offset):
        def enhance_photo(self, photo, *, strength=None, **kw):
            used.append((self.name, strength))
            return super().enhance_photo(photo, strength=strength, **kw)

    def make(name):
        r = Recording(0, scale=2 if name.startswith("sr-") else 1)
        r.name = name
        return r

    photo = imageio.Photo(np.full((40, 40, 3), (100, 110, 120), np.uint8))  # a colour one: no greyscale warning
    Pipeline("denoise", 2, make_enhancer=make, strength=1.5).enhance_photo(photo)
    assert used == [("denoise", 1.0), ("sr-x2", 1.5)] and not caplog.records  # no "inverted" warning: it is not
    used.clear()
    Pipeline("denoise", 2, make_enhancer=make, strength=0.5).enhance_photo(photo)
    assert used == [("denoise", 0.5), ("sr-x2", 0.5)]
    used.clear()
    Pipeline("denoise", 1, make_enhancer=make, strength=1.25).enhance_photo(photo)  # alone, it is the strength's
    assert used == [("denoise", 1.25)]


@pytest.mark.parametrize("strength,msg", [(-1, "strength -1 is outside 0..1.5"), (7, "strength 7 is outside 0..1.5"),
                                          ("high", "strength 'high' is not a number"),
                                          (None, "strength None is not a number")])
def test_a_bad_strength_is_refused_when_the_pipeline_is_made(strength, msg):
    """It was stored as given and failed at the first file (after a --strength warning), or as a TypeError."""
    made = []
    with pytest.raises(ConfigError, match=re.escape(msg)):
        Pipeline("denoise", 1, make_enhancer=lambda name: made.append(name) or _Offset(0, scale=1), strength=strength)
    assert made == []  # no model was loaded for it
    pipe = Pipeline("denoise", 1, make_enhancer=lambda name: _Offset(0, scale=1))
    with pytest.raises(ConfigError, match=re.escape(msg)):
        pipe.strength = strength


@pytest.mark.parametrize("mode", ["upscale", "auto"])
def test_a_bad_scale_is_named_as_given_when_the_pipeline_is_made(mode):
    with pytest.raises(ConfigError, match=re.escape("scale '2' is not one of 1, 2, 3, 4, 8")):
        Pipeline(mode, "2", make_enhancer=lambda name: _Offset(0))


def test_a_pipeline_gives_its_strength_per_call_and_leaves_shared_stages_as_they_were():
    """It set each stage's .strength: a stage Enhancer shared with other threads (or pipelines) ran at the
    strength the last pipeline set, not its caller's."""
    shared = _Offset(10, scale=2)
    pipe = Pipeline("upscale", 2, make_enhancer=lambda name: shared, strength=0.5, check=False)
    photo = imageio.Photo(np.full((8, 8, 3), 100, np.uint8))
    assert (pipe.enhance_photo(photo).rgb == 105).all()
    assert (pipe.enhance_photo(photo, strength=0.0).rgb == 100).all() and pipe.strength == 0.5
    assert shared.strength == 1.0
    with pytest.raises(ConfigError, match="strength 2 is outside"):
        pipe.enhance_photo(photo, strength=2)


class _Denoise(_Offset):
    """Test double of denoise: returns ``left`` (what denoise leaves) and records its luma passes' strengths."""

    card = type("Card", (), {"task": "denoise", "colour": "rgb"})

    def __init__(self, left):
        super().__init__(0, scale=1)
        self.left, self.luma = left, []

    def enhance_photo(self, photo, **kw):
        return imageio.Photo(self.left.copy())

    def denoise_luma(self, photo, *, out=None, progress=None, strength=None):
        self.luma.append(strength)
        return photo


@pytest.mark.parametrize("mode", ["auto", "denoise"])
def test_denoise_is_followed_by_its_luma_pass_where_luma_noise_is_left(mode):
    """The bundled denoise (trained on noise drawn apart per channel) left luma noise, the same in R, G and B, as
    it was: where a colour photo still reads as holding some after denoise, its luma pass follows, the stronger
    the more is left; not on a grey photo, nor a clean one, nor on what denoise leaves clean."""
    clean, rng = smooth(64, 64), np.random.default_rng(0)
    grain = np.clip(np.round(clean + rng.normal(0, 12, (64, 64, 1))), 0, 255).astype(np.uint8)
    noisy = np.clip(np.round(clean + rng.normal(0, 15, clean.shape)), 0, 255).astype(np.uint8)
    for left, photo, passes, grey in ((grain, noisy, True, False), (clean.astype(np.uint8), noisy, False, False),
                                      (grain[..., :1].repeat(3, 2), noisy[..., :1].repeat(3, 2), False, True)):
        den = _Denoise(left)
        pipe = Pipeline(mode, 2, make_enhancer=lambda n: den if n == "denoise" else _Offset(0), check=False)
        out = pipe.enhance_photo(imageio.Photo(photo))
        assert out.rgb.shape == (128, 128, 3)
        assert pipe.last_stages == ["denoise"] + ["denoise-luma"] * passes + ["sr-x2"]
        reading = shared_noise_sigma(left[5:-5, 5:-5])  # auto reads without an 8% margin (a frame, a border)
        assert den.luma == ([luma_strength(reading)] if passes else [])
        if mode == "auto":
            assert pipe.last_analysis.stages == pipe.last_stages
            assert pipe.last_analysis.luma_noise_sigma == (None if grey else reading)  # a grey one is not read
    assert 0.5 < luma_strength(12.0) < 0.6 and luma_strength(LUMA_NOISE_THRESHOLD - 0.1) == 0.0
    # a video: the first frame's luma pass, at its strength, for every frame
    den = _Denoise(grain)
    pipe = Pipeline(mode, 1, make_enhancer=lambda n: den, check=False)
    pipe.new_sequence()
    pipe.enhance_photo(imageio.Photo(noisy))
    den.left = clean.astype(np.uint8)
    pipe.enhance_photo(imageio.Photo(noisy))
    assert pipe.last_stages == ["denoise", "denoise-luma"] and len(den.luma) == 2 and den.luma[0] == den.luma[1] > 0
    pipe.end_sequence()
    pipe.enhance_photo(imageio.Photo(noisy))
    assert pipe.last_stages == ["denoise"] and len(den.luma) == 2


def test_last_stages_and_analysis_are_the_calling_threads_own():
    """A service sharing one auto Pipeline between requests read another request's stages and analysis."""
    import threading

    pipe = Pipeline("auto", 2, make_enhancer=lambda name: _Offset(0, scale=1 if name in ("denoise", "dejpeg") else 2),
                    check=False)
    noisy = np.clip(128 + np.random.default_rng(0).normal(0, 15, (48, 48, 3)), 0, 255).astype(np.uint8)
    clean = np.full((48, 48, 3), 128, np.uint8)
    both_ran, seen = threading.Barrier(2), {}

    def work(name, img):
        pipe.enhance(img)
        both_ran.wait()  # each thread reads after both have run
        seen[name] = (pipe.last_stages, pipe.last_analysis.noise_sigma > 6)

    threads = [threading.Thread(target=work, args=a) for a in (("noisy", noisy), ("clean", clean))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"noisy": (["denoise", "sr-x2"], True), "clean": (["sr-x2"], False)}
    assert (pipe.last_stages, pipe.last_analysis, pipe.last_run) == ([], None, None)  # this thread ran nothing


def test_pipeline_is_a_library_object_made_from_the_bundled_models():
    """It was not exported, needed make_enhancer (a TypeError without it) and took H x W x 3 arrays only."""
    pytest.importorskip("onnxruntime")
    import edge_enhance
    from edge_enhance.enhancer import Enhancer

    assert edge_enhance.Pipeline is Pipeline and "Pipeline" in edge_enhance.__all__
    with Pipeline("denoise", 2, engine="onnxruntime", threads=1, tile=24) as pipe:
        stages = [pipe.stage(n) for n in ("denoise", "sr-x2")]
        assert all(isinstance(e, Enhancer) and e.path.suffix == ".onnx" and e.tiling.tile == (24, 24) for e in stages)
        assert pipe.enhance(np.zeros((6, 5), np.uint8)).shape == (12, 10)
    with pytest.raises(ConfigError, match="give make_enhancer or engine / threads / tile / memory_mb, not both"):
        Pipeline("upscale", 2, make_enhancer=lambda name: _Offset(0), threads=2)


def test_pipeline_enhance_takes_what_enhancer_enhance_takes(sr_model):
    from edge_enhance.enhancer import Enhancer

    enh = Enhancer(sr_model)
    pipe = Pipeline("upscale", 2, make_enhancer=lambda name: enh, strength=0.5)
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    for image in (rgb, rgb[..., 0], rgb[..., :1], np.dstack([rgb, rgb[..., :1]]), rgb.astype(np.uint16) * 257):
        assert np.array_equal(pipe.enhance(image), enh.enhance(image, strength=0.5))
    out = pipe.enhance(Image.fromarray(rgb[..., 0]))
    assert out.mode == "L" and np.array_equal(np.asarray(out), enh.enhance(rgb[..., 0], strength=0.5))
    with pytest.raises(ConfigError, match=r"H x W x 4 \(RGBA\).*got an array of shape \(9, 11, 2\)"):
        pipe.enhance(rgb[..., :2])


def test_auto_denoises_a_grey_image_from_a_higher_noise_reading(caplog):
    # a grey image goes through denoise as copies one pixel apart (Enhancer), which softens it a little:
    # worth it from sigma 10 on, where a colour photo is denoised from 6
    caplog.set_level(logging.INFO, logger="edge_enhance.pipeline")
    rng = np.random.default_rng(0)
    ran = []

    def make(name):
        ran.append(name)
        return _Offset(0, scale=1 if name == "denoise" else 2)

    def noisy(sigma, channels=1):
        n = rng.normal(0, sigma, (48, 64, channels))
        return np.clip(np.round(smooth(48, 64)[..., :channels] + n), 0, 255).astype(np.uint8)

    pipe = Pipeline("auto", 2, make_enhancer=make, check=False)
    for g in (noisy(20), noisy(8)):
        for grey in (imageio.Photo(np.repeat(g, 3, axis=2), grey=True), imageio.Photo(np.repeat(g, 3, axis=2))):
            pipe.enhance_photo(grey)
            strong = pipe.last_analysis.noise_sigma >= GREY_NOISE_THRESHOLD
            assert pipe.last_stages == (["denoise", "sr-x2"] if strong else ["sr-x2"])
            assert pipe.last_analysis.noise_sigma > NOISE_THRESHOLD
    assert ran == ["denoise", "sr-x2"]
    said = [r.getMessage() for r in caplog.records if "greyscale" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("<image>: a greyscale image with noise sigma ")
    pipe.enhance_photo(imageio.Photo(noisy(8, 3)))  # the same reading in colour: denoised
    assert pipe.last_stages == ["denoise", "sr-x2"]


def test_a_cleanup_alone_writes_into_the_output_and_reports_progress():
    """--mode denoise / dejpeg at scale 1 ran its model without the output buffer (a memory map for a picture
    larger than RAM) and without progress, so no bar and no Ctrl-C check between its tiles."""
    seen = []

    class Cleanup(_Offset):
        def enhance_photo(self, photo, *, src=None, out=None, progress=None, strength=None):
            seen.append((out, progress))
            return super().enhance_photo(photo, strength=strength)

    def progress(done, total):
        pass

    out = np.zeros((40, 40, 3), np.uint8)
    for mode in ("denoise", "dejpeg"):
        seen.clear()
        Pipeline(mode, 1, make_enhancer=lambda n: Cleanup(0, scale=1)).enhance_photo(
            imageio.Photo(np.full((40, 40, 3), 100, np.uint8)), out=out, progress=progress)
        assert seen == [(out, progress)]
