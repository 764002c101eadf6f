"""The evaluation protocol against hand-computed values on tiny images."""
import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge_enhance.errors import ConfigError, ImageInputError
from edge_enhance import evaluation as ev


def shared_data() -> Path | None:
    env = os.environ.get("EDGE_ENHANCE_DATA")
    if env:
        return Path(env)
    for d in Path(__file__).resolve().parents[1].parents:  # ../shared from the repo root, or above
        if (d / "shared" / "data" / "eval").is_dir():
            return d / "shared" / "data"
    return None


@pytest.mark.parametrize("rgb, y", [
    ((0, 0, 0), 16.0), ((255, 255, 255), 235.0), ((255, 0, 0), 16 + 65.481),
    ((0, 255, 0), 16 + 128.553), ((0, 0, 255), 16 + 24.966), ((51, 102, 204), 16 + (65.481 * 51 + 128.553 * 102 + 24.966 * 204) / 255),
])
def test_rgb_to_y_pure_colours(rgb, y):
    img = np.full((2, 3, 3), rgb, np.uint8)
    assert ev.rgb_to_y(img).dtype == np.float64
    np.testing.assert_allclose(ev.rgb_to_y(img), y, rtol=0, atol=1e-9)


@pytest.mark.parametrize("err", [1, 5, 20])
def test_psnr_of_constant_error(err):
    a = np.full((5, 7, 3), 100, np.uint8)
    assert ev.psnr(a, a + err) == pytest.approx(10 * math.log10(255 ** 2 / err ** 2), abs=1e-12)


def test_psnr_identical_is_inf_and_shape_mismatch_errors():
    a = np.zeros((4, 4))
    assert ev.psnr(a, a) == math.inf
    with pytest.raises(ConfigError, match="shapes differ"):
        ev.psnr(a, np.zeros((4, 5)))


def test_ssim_identical_is_one():
    a = np.random.default_rng(0).integers(0, 256, (20, 24)).astype(np.float64)
    assert ev.ssim(a, a) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("m1, m2", [(100, 110), (30, 200), (0, 255)])
def test_ssim_of_flat_images_is_the_luminance_term(m1, m2):
    # No variance: contrast-structure term is C2/C2 = 1, only (2ab + C1) / (a^2 + b^2 + C1) is left.
    c1 = (0.01 * 255) ** 2
    a, b = np.full((16, 16), float(m1)), np.full((16, 16), float(m2))
    assert ev.ssim(a, b) == pytest.approx((2 * m1 * m2 + c1) / (m1 ** 2 + m2 ** 2 + c1), abs=1e-12)


def test_ssim_colour_is_mean_of_channels_and_small_images_error():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (12, 13, 3)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    assert ev.ssim(a, b) == pytest.approx(np.mean([ev.ssim(a[..., c], b[..., c]) for c in range(3)]))
    assert ev.ssim(a, b) < 1.0
    with pytest.raises(ConfigError, match="smaller than"):
        ev.ssim(np.zeros((10, 20)), np.zeros((10, 20)))


def test_shave_and_sr_pair_crop():
    hr = np.random.default_rng(2).integers(0, 256, (11, 14, 3)).astype(np.uint8)
    crop, lr = ev.sr_pair(hr, 3)
    assert crop.shape == (9, 12, 3) and lr.shape == (3, 4, 3)
    np.testing.assert_array_equal(crop, hr[:9, :12])
    np.testing.assert_array_equal(lr, np.asarray(Image.fromarray(crop).resize((4, 3), Image.BICUBIC)))
    assert ev.shave(np.zeros((10, 12)), 2).shape == (6, 8)
    assert ev.shave(np.zeros((10, 12)), 0).shape == (10, 12)


def test_noisy_is_exactly_the_protocol_formula():
    clean = np.random.default_rng(3).integers(0, 256, (6, 5, 3)).astype(np.uint8)
    want = np.clip(np.round(clean + np.random.default_rng(4).normal(0, 25, clean.shape)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(ev.noisy(clean, 25, 4), want)
    assert not np.array_equal(ev.noisy(clean, 25, 4), ev.noisy(clean, 25, 5))
    np.testing.assert_array_equal(ev.noisy(clean, 0, 0), clean)


def test_jpeg_quality_orders_error():
    x = np.random.default_rng(5).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    x = ev.gaussian_blur(x, 1.0)
    assert ev.psnr(x, ev.jpeg(x, 90)) > ev.psnr(x, ev.jpeg(x, 10))


def test_blur_keeps_flat_image_and_degrade_is_seeded():
    flat = np.full((9, 10, 3), 77, np.uint8)
    np.testing.assert_array_equal(ev.gaussian_blur(flat, 1.3), flat)
    hr = np.random.default_rng(6).integers(0, 256, (24, 32, 3)).astype(np.uint8)
    a = ev.degrade(hr, 2, np.random.default_rng(7))
    assert a.shape == (12, 16, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, ev.degrade(hr, 2, np.random.default_rng(7)))
    assert not np.array_equal(a, ev.degrade(hr, 2, np.random.default_rng(8)))


@pytest.fixture
def tiny_set(tmp_path):
    rng = np.random.default_rng(9)
    for name, mode in (("b.png", "RGB"), ("a.png", "L"), ("c.png", "RGB")):
        arr = ev.gaussian_blur(rng.integers(0, 256, (26, 30, 3)).astype(np.uint8), 1.0)
        Image.fromarray(arr).convert(mode).save(tmp_path / name)
    return tmp_path


def test_evaluate_denoise_matches_manual_computation_in_sorted_order(tiny_set):
    res = ev.evaluate(lambda x: x, tiny_set, "denoise", sigma=15)
    assert [r["name"] for r in res.rows] == ["a.png", "b.png", "c.png"]
    for i, row in enumerate(res.rows):
        clean = np.asarray(Image.open(tiny_set / row["name"]).convert("RGB"))
        assert row["psnr"] == pytest.approx(ev.psnr(clean, ev.noisy(clean, 15, i)))
        assert row["psnr"] == row["baseline_psnr"]
    assert res.psnr == pytest.approx(np.mean([r["psnr"] for r in res.rows]))


@pytest.mark.parametrize("task, kw", [("sr", {"scale": 3}), ("enhance", {"scale": 2}), ("dejpeg", {"quality": 30})])
def test_evaluate_bicubic_or_identity_equals_baseline(tiny_set, task, kw):
    s = kw.get("scale", 1)
    fn = (lambda x: ev.bicubic_resize(x, (x.shape[1] * s, x.shape[0] * s))) if s > 1 else (lambda x: x)
    res = ev.evaluate(fn, tiny_set, task, **kw)
    for r in res.rows:
        assert r["psnr"] == pytest.approx(r["baseline_psnr"])
        assert 0 < r["ssim"] < 1


def test_evaluate_errors(tiny_set, tmp_path):
    with pytest.raises(ConfigError, match="does not match"):
        ev.evaluate(lambda x: x, tiny_set, "sr", scale=2)
    with pytest.raises(ConfigError, match="task"):
        ev.evaluate(lambda x: x, tiny_set, "deblur")
    with pytest.raises(ImageInputError, match="does not exist"):
        ev.evaluate(lambda x: x, tmp_path / "nope", "denoise")
    (tiny_set / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageInputError, match="broken.png"):
        ev.evaluate(lambda x: x, tiny_set, "denoise")


@pytest.mark.skipif(shared_data() is None, reason="../shared/data (Set5) is not present")
def test_set5_x2_bicubic_baseline_is_33_67():
    res = ev.evaluate(lambda x: ev.bicubic_resize(x, (x.shape[1] * 2, x.shape[0] * 2)),
                      shared_data() / "eval" / "Set5", "sr", scale=2, with_ssim=False)
    assert len(res.rows) == 5
    assert res.psnr == pytest.approx(33.67, abs=0.01)


def test_shared_data_is_found_from_the_environment_the_code_or_the_working_folder(tmp_path, monkeypatch):
    from edge_enhance import evaluation
    from conversion import verify

    monkeypatch.setenv("EDGE_ENHANCE_DATA", str(tmp_path / "d"))
    assert evaluation.shared_data("eval/Set5") == tmp_path / "d" / "eval" / "Set5"
    monkeypatch.delenv("EDGE_ENHANCE_DATA")
    monkeypatch.setattr(evaluation, "__file__", str(tmp_path / "site" / "edge_enhance" / "evaluation.py"))
    (tmp_path / "work" / "shared" / "data" / "eval" / "Set5").mkdir(parents=True)
    (tmp_path / "work" / "photos").mkdir()
    monkeypatch.chdir(tmp_path / "work" / "photos")  # an installed package, run inside a checkout's tree
    assert evaluation.shared_data("eval/Set5") == tmp_path / "work" / "shared" / "data" / "eval" / "Set5"
    assert evaluation.shared_data("train") is None
    monkeypatch.chdir(tmp_path)
    assert verify.default_dataset().name == "samples"  # nowhere: the bundled sample photo, said in the log


def test_a_16_bit_grey_image_is_read_as_its_8_bit_self_not_white(tmp_path):
    """Pillow's convert("RGB") clips mode I;16 to 255; eval and calibration read these through rgb8."""
    from PIL import Image

    from edge_enhance.evaluation import load_rgb
    from quantization.calibration import _load

    y8 = np.random.default_rng(0).integers(0, 256, (9, 11)).astype(np.uint8)
    Image.fromarray(y8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    for read in (load_rgb, _load):
        got = read(tmp_path / "g16.png")
        assert got.dtype == np.uint8 and got.shape == (9, 11, 3)
        assert np.array_equal(got, np.repeat(y8[..., None], 3, axis=2))


@pytest.mark.parametrize("ssim", [True, False])
def test_too_small_images_are_left_out_the_same_way_with_or_without_ssim(tiny_set, caplog, ssim):
    """64x1 crops to 64x0 at x2 (it crashed in the LR resize); 12x12 holds a pixel but no SSIM window
    after the shave: both are named and left out, and --no-ssim scores exactly the same images."""
    for name, hw in (("thin.png", (1, 64)), ("small.png", (12, 12))):
        Image.fromarray(np.full(hw + (3,), 128, np.uint8)).save(tiny_set / name)
    up = lambda x: ev.bicubic_resize(x, (x.shape[1] * 2, x.shape[0] * 2))
    res = ev.evaluate(up, tiny_set, "sr", scale=2, with_ssim=ssim)
    assert [r["name"] for r in res.rows] == ["a.png", "b.png", "c.png"]
    assert "thin.png: 64x0 is too small" in caplog.text and "small.png: 12x12 is too small" in caplog.text
