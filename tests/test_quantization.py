"""Quantisation: observers, TFLite int8 spec round trips, calibration errors, CLE, GPTQ, LiteRT vs simulation."""
from __future__ import annotations

import copy

import numpy as np
import pytest
from PIL import Image

from tests.conversion_testkit import residual_sr_model

from conversion import executor
from conversion.onnx_import import from_onnx
from quantization import quantize as qz
from quantization.calibration import (CalibConfig, CalibSet, calibration_set, minmax_range, mse_range,
                                      percentile_range, quant_mse)
from quantization.errors import CalibrationError, ConfigError, ImageInputError

SMALL = CalibConfig(crop=16, count=4, seed=1)


def _photo(rng, h, w):
    """A smooth synthetic photo: gradients plus a few blobs plus mild noise (uint8 RGB)."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * xx + k) * np.cos(4 * yy - k) for k in range(3)], -1)
    img += rng.normal(0, 0.03, img.shape)
    return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)


@pytest.fixture
def calib_dir(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "calib"
    d.mkdir()
    for i in range(3):
        Image.fromarray(_photo(rng, 24 + 4 * i, 28)).save(d / f"im{i}.png")
    return d


@pytest.fixture
def sr_graph():
    pytest.importorskip("onnx")
    g = from_onnx(residual_sr_model(np.random.default_rng(7), scale=2, feat=8))
    # The shared fixture keeps its residual tiny (+-0.005 weights); a residual of SR-like size
    # (+-0.05) is what makes quantisation error, and CLE's repair of it, visible.
    last = [n for n in g.nodes if n.op == "Conv"][-1]
    g.tensors[last.inputs[1]].data *= 10
    return g


# --------------------------------------------------------------------------- observers
def test_minmax_and_percentile_on_a_hand_histogram():
    counts = np.array([1, 0, 0, 998, 1])
    edges = np.linspace(-1.0, 4.0, 6)
    assert minmax_range(counts, edges) == (-1.0, 4.0)
    assert percentile_range(counts, edges, 100.0) == (-1.0, 4.0)
    lo, hi = percentile_range(counts, edges, 99.8)
    assert (lo, hi) == (0.0, 3.0)  # one count clipped from each tail
    with pytest.raises(ConfigError):
        percentile_range(counts, edges, 40.0)


def test_mse_range_clips_a_lone_outlier_and_is_never_worse_than_minmax():
    rng = np.random.default_rng(0)
    # Clipping the outlier costs (3 - 1)^2 / 1e6; keeping it triples the step for a million values.
    v = np.concatenate([rng.uniform(0, 1, 1_000_000), [3.0]])
    counts, edges = np.histogram(v, bins=2048)
    centres = (edges[:-1] + edges[1:]) / 2
    lo, hi = mse_range(counts, edges)
    assert 0.95 < hi < 1.5 and lo == pytest.approx(0.0, abs=1e-3)
    e_mse = quant_mse(centres, counts.astype(float), lo, hi)
    e_mm = quant_mse(centres, counts.astype(float), *minmax_range(counts, edges))
    assert e_mse < e_mm


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_observers_keep_a_relu_range_at_zero(method):
    st = qz.RangeStats()
    v = np.abs(np.random.default_rng(3).standard_normal(50000))
    st.observe_range("t", v)
    st.observe_hist("t", v)
    lo, hi = st.range("t", method)
    assert lo == pytest.approx(0.0, abs=1e-3) and 2.0 < hi <= v.max() + 1e-9


def test_flat_frames_span_the_colour_cube_on_the_input_range():
    from quantization.calibration import flat_frames

    c = CalibSet([np.zeros((1, 5, 4, 3), np.float32)], [], "t", input_range=(0.0, 255.0))
    frames = flat_frames(c)
    assert len(frames) == 9 and all(f.shape == (1, 5, 4, 3) for f in frames)
    colours = {tuple(f[0, 0, 0]) for f in frames}
    assert (0.0, 0.0, 0.0) in colours and (255.0, 255.0, 255.0) in colours and (255.0, 0.0, 0.0) in colours
    assert (127.5, 127.5, 127.5) in colours and all(np.all(f == f[0, 0, 0]) for f in frames)
    luma = flat_frames(CalibSet([np.zeros((1, 4, 4, 1), np.float32)], [], "t"))
    assert sorted(float(f.flat[0]) for f in luma) == [0.0, 0.5, 1.0]


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_int8_ranges_cover_a_flat_frame_at_the_image_edge(sr_graph, calib_dir, method):
    # A white page or a blown sky meets the zero padding at the image's edge: activations larger
    # than any photo crop shows. Clipped, they darkened the edge of a white frame by up to 20 levels.
    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, method=method, cle=False, act_eq=False, bias_correction=False,
                          sensitivity=False)
    seen = {}
    for v in (0.0, 1.0):
        def obs(name, a):
            lo, hi = seen.get(name, (np.inf, -np.inf))
            seen[name] = (min(lo, float(a.min())), max(hi, float(a.max())))
        executor.run(g, {g.inputs[0]: np.full((1, 12, 10, 3), v, np.float32)}, observer=obs)
    checked = 0
    for n in g.nodes:
        q = g.tensors[n.outputs[0]].quant
        if n.op not in ("Conv", "Relu") or q is None:
            continue
        lo, hi = qz._real_range(q)
        assert lo <= seen[n.outputs[0]][0] + 1e-6 and seen[n.outputs[0]][1] <= hi + float(q.scale[0]), n.name
        checked += 1
    assert checked >= 2


def test_flat_frames_off_keeps_the_ranges_of_the_crops(sr_graph, calib_dir):
    c = calibration_set(calib_dir, config=SMALL)
    opts = dict(method="percentile", cle=False, act_eq=False, bias_correction=False, sensitivity=False)
    on, off = (qz.quantize_model(sr_graph, c, flat_frames=f, **opts) for f in (True, False))
    assert on.report.flat_frames and not off.report.flat_frames
    scale = lambda g, n: float(g.tensors[n.outputs[0]].quant.scale[0])  # noqa: E731
    scales = [(scale(on.graph, n), scale(off.graph, n)) for n in on.graph.nodes if n.op == "Conv"]
    assert all(b <= a * (1 + 1e-6) for a, b in scales) and any(b < a * 0.99 for a, b in scales)


# --------------------------------------------------------------------------- TFLite int8 spec
@pytest.mark.parametrize("per_channel", [True, False])
def test_weight_quantisation_follows_the_tflite_spec(per_channel):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 4)) * np.array([1, 10, 0.01, 3, 0.5, 2]).reshape(6, 1, 1, 1)
    q = qz.quantize_weights(w, per_channel)
    assert np.all(q.zero_point == 0) and q.dtype == "int8"
    assert q.scale.size == (6 if per_channel else 1)
    qi = q.quantize(w)
    assert qi.min() >= -127 and qi.max() <= 127  # -128 is never used by symmetric weights
    assert np.abs(qi).max() == 127
    np.testing.assert_array_equal(q.quantize(q.dequantize(qi)), qi)  # grid points are fixed points
    err = np.abs(q.dequantize(qi) - w)
    assert np.all(err <= q._bcast(q.scale, 4) / 2 + 1e-7)


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-0.3, 0.7), (0.2, 5.0), (-4.0, -1.0)])
def test_activation_params_follow_the_tflite_spec(lo, hi):
    q = qz.activation_params(lo, hi)
    s, z = float(q.scale[0]), int(q.zero_point[0])
    assert -128 <= z <= 127
    assert q.dequantize(np.array([z]))[0] == 0.0  # real zero is exactly representable
    assert (min(lo, 0.0) - s / 2 <= (-128 - z) * s) and ((127 - z) * s >= max(hi, 0.0) - s / 2)
    x = np.linspace(min(lo, 0), max(hi, 0), 1001)
    assert np.abs(q.fake_quantize(x) - x).max() <= s / 2 + 1e-6
    qi = q.quantize(x)
    np.testing.assert_array_equal(q.quantize(q.dequantize(qi)), qi)
    if (lo, hi) == (0.0, 1.0):
        assert s == pytest.approx(1 / 255) and z == -128  # 8-bit pixels exactly


def test_int16_activation_params_are_symmetric():
    q = qz.activation_params(-0.5, 2.0, "int16")
    assert q.zero_point.tolist() == [0] and q.scale[0] == pytest.approx(2.0 / 32767)


# --------------------------------------------------------------------------- calibration data
def test_calibration_set_from_a_folder(calib_dir):
    c = calibration_set(calib_dir, task="sr", scale=2, config=SMALL)
    assert len(c) == 4 and c.inputs[0].shape == (1, 8, 8, 3) and c.targets[0].shape == (16, 16, 3)
    assert c.inputs[0].dtype == np.float32 and 0.0 <= c.inputs[0].min() and c.inputs[0].max() <= 1.0
    again = calibration_set(calib_dir, task="sr", scale=2, config=SMALL)
    np.testing.assert_array_equal(c.inputs[2], again.inputs[2])  # seeded
    for task, scale, side in (("denoise", 1, 16), ("dejpeg", 1, 16), ("enhance", 2, 8)):
        d = calibration_set(calib_dir, task=task, scale=scale, config=SMALL)
        assert d.inputs[0].shape == (1, side, side, 3)
        assert not np.array_equal(d.inputs[0][0], d.targets[0][::scale, ::scale] / 255.0)  # degraded


@pytest.mark.parametrize("task,scale,align,crop,warned,suggested", [
    ("sr", 2, 1, 16, True, 36), ("sr", 2, 1, 18, False, None), ("denoise", 1, 1, 8, True, 18),
    ("sr", 2, 4, 16, True, 40)])
def test_calibration_crops_under_the_receptive_field_are_warned_of(calib_dir, caplog, task, scale, align, crop,
                                                                    warned, suggested):
    """Crops that give inputs smaller than the receptive field calibrate every activation on edges."""
    from edge_enhance.card import ModelCard
    from quantization.calibration import calibration_for

    card = ModelCard(name="m", task=task, scale=scale, receptive_field=9, align=align)
    with caplog.at_level("WARNING"):
        calibration_for(card, calib_dir, CalibConfig(crop=crop, count=2))
    said = [r.getMessage() for r in caplog.records if "receptive field" in r.getMessage()]
    assert bool(said) == warned
    if warned:
        assert f"calibration crops of {crop} px give model inputs of {crop // scale} px" in said[0]
        assert f"a --calib-crop of {suggested} or more" in said[0]


def test_a_calibration_folder_is_drawn_from_whole_and_only_the_drawn_images_are_decoded(tmp_path, monkeypatch):
    """Flat frames first by name, photos after: the crops came from the first --calib-count files only
    (all flat), and every file in the folder was decoded first."""
    from quantization import calibration

    rng = np.random.default_rng(0)
    d = tmp_path / "c"
    d.mkdir()
    for i in range(6):
        Image.fromarray(np.full((24, 24, 3), 40 * i, np.uint8)).save(d / f"a_{i}.png")
        Image.fromarray(_photo(rng, 24, 24)).save(d / f"b_{i}.png")
    loaded = []
    real = calibration._load
    monkeypatch.setattr(calibration, "_load", lambda p: loaded.append(p.name) or real(p))
    c = calibration_set(d, config=SMALL)
    assert len(loaded) == len(c) == 4 and len(set(loaded)) == 4  # one decode per drawn image
    assert any(n.startswith("b_") for n in loaded) and any(t.std() > 1 for t in c.targets)
    again = calibration_set(d, config=SMALL)
    assert loaded[4:] == loaded[:4] and all(np.array_equal(a, b) for a, b in zip(c.inputs, again.inputs))
    calibration_set(d, config=CalibConfig(crop=16, count=4, seed=2))
    assert loaded[8:] != loaded[:4]  # the seed picks the images


def test_empty_or_missing_calibration_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CalibrationError, match="no images"):
        calibration_set(tmp_path, config=SMALL)
    with pytest.raises(CalibrationError, match="does not exist"):
        calibration_set(tmp_path / "nope", config=SMALL)


def test_unreadable_calibration_images_are_left_out_by_name_and_hidden_files_are_not_read(calib_dir, caplog):
    """A macOS AppleDouble ._im0.png (and anything in a hidden folder) aborted the run; a broken image did too."""
    from quantization import calibration

    (calib_dir / "._im0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (calib_dir / ".thumbnails").mkdir()
    (calib_dir / ".thumbnails" / "t.png").write_bytes(b"not a png")
    (calib_dir / "sub").mkdir()
    Image.open(calib_dir / "im0.png").save(calib_dir / "sub" / "deep.png")  # subfolders do count
    (calib_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    assert [p.name for p in calibration.list_calibration_files(calib_dir)] == \
        ["broken.png", "im0.png", "im1.png", "im2.png", "deep.png"]
    c = calibration_set(calib_dir, config=SMALL)
    assert len(c) == 4 and "broken.png: cannot read calibration image" in caplog.text and "left out" in caplog.text
    assert "._im0" not in caplog.text and "thumbnails" not in caplog.text
    # A file whose header reads but whose data does not (a truncated copy): its crop comes from the next image.
    png = (calib_dir / "im1.png").read_bytes()
    (calib_dir / "im1.png").write_bytes(png[: len(png) // 2])
    c = calibration_set(calib_dir, config=SMALL)
    assert len(c) == 4 and "im1.png: cannot read calibration image" in caplog.text
    for p in list(calib_dir.glob("*.png")) + [calib_dir / "sub" / "deep.png"]:
        p.write_bytes(b"junk")
    with pytest.raises(ImageInputError, match=r"calib: none of the 5 calibration image\(s\) can be read"):
        calibration_set(calib_dir, config=SMALL)


def test_calibration_image_smaller_than_the_crop(calib_dir):
    Image.fromarray(np.zeros((10, 40, 3), np.uint8)).save(calib_dir / "strip.png")
    with pytest.raises(ImageInputError, match=r"strip.png: 40x10 is smaller than the 16x16"):
        calibration_set(calib_dir, config=SMALL)


def test_bad_calibration_config():
    with pytest.raises(ConfigError):
        CalibConfig(crop=4)
    with pytest.raises(ConfigError):
        CalibConfig(count=0)


def test_default_calibration_set_is_fixed():
    try:
        a = calibration_set(None, task="sr", scale=2, config=CalibConfig(crop=32, count=3))
    except CalibrationError as e:
        pytest.skip(f"shared training data not available: {e}")
    b = calibration_set(None, task="sr", scale=2, config=CalibConfig(crop=32, count=3))
    np.testing.assert_array_equal(a.inputs[1], b.inputs[1])


def test_quantize_rejects_bad_calibration_input(sr_graph):
    with pytest.raises(CalibrationError):
        qz.quantize_model(sr_graph, CalibSet([], [], "empty"))
    grey = CalibSet([np.zeros((1, 8, 8, 1), np.float32)], [np.zeros((16, 16, 3), np.uint8)], "grey")
    with pytest.raises(CalibrationError, match="does not fit"):
        qz.quantize_model(sr_graph, grey)


@pytest.mark.parametrize("task,scale,align,crop", [("denoise", 1, 2, 15), ("sr", 2, 2, 18), ("sr", 3, 4, 18)])
def test_calibration_crop_must_give_aligned_inputs(calib_dir, task, scale, align, crop):
    with pytest.raises(ConfigError, match=rf"crop {crop} makes model inputs of {crop // scale} pixels, not a "
                                          rf"multiple of the model's align {align}"):
        calibration_set(calib_dir, task=task, scale=scale, align=align, config=CalibConfig(crop=crop, count=2))
    ok = calibration_set(calib_dir, task=task, scale=scale, align=align, config=CalibConfig(crop=24, count=2))
    assert ok.inputs[0].shape == (1, 24 // scale, 24 // scale, 3)


def test_quantize_refuses_calibration_inputs_the_model_cannot_take(tmp_path):
    """An align-2 model calibrated on odd inputs: one clear error, not an engine failure mid-way."""
    from tests.onnx_models import half_res_denoise

    g = from_onnx(half_res_denoise(layers=1))
    odd = CalibSet([np.zeros((1, 9, 8, 3), np.float32)], [np.zeros((9, 8, 3), np.uint8)], "odd")
    with pytest.raises(CalibrationError, match=r"shape \(1, 9, 8, 3\): the model's input height and width must "
                                               r"be multiples of 2"):
        qz.quantize_model(g, odd)


def test_timing_refuses_a_size_the_model_cannot_take(tmp_path):
    from conversion.tflite_writer import to_tflite
    from quantization.timing import time_models
    from tests.onnx_models import half_res_denoise

    path = to_tflite(from_onnx(half_res_denoise(layers=1)), tmp_path / "half.tflite")
    with pytest.raises(ConfigError, match=r"half\.tflite: --size 33x32: .* multiples of 2"):
        time_models([path], size=(33, 32), rounds=1, warmup=0)
    assert len(time_models([path], size=(32, 32), rounds=1, warmup=0)) == 1


def test_timing_opens_a_tflite_under_any_name(non_ascii_tflite, narrow_fopen):
    """Windows: TFLite's narrow fopen cannot open модель_日本.tflite; timing reads the bytes."""
    from quantization.timing import time_models

    assert len(time_models([non_ascii_tflite], size=(16, 16), rounds=1, warmup=0)) == 1


def test_quantize_rejects_bad_options(sr_graph, calib_dir):
    c = calibration_set(calib_dir, config=SMALL)
    for kw in ({"method": "kl"}, {"io": "int4"}, {"cle": "maybe"}, {"act_eq": "yes"}, {"keep_16x8": {"nope"}},
               {"max_drop": -1}, {"rounding": "up"}, {"max_drop": 0.1, "io": "uint8"}):
        with pytest.raises(ConfigError):
            qz.quantize_model(sr_graph, c, **kw)


# --------------------------------------------------------------------------- equalisation, rounding
def test_cle_preserves_fp32_outputs_and_equalises_ranges(sr_graph):
    g = copy.deepcopy(sr_graph)
    pairs = qz.conv_pairs(g)
    assert [(a.name, b.name) for a, b in pairs] == [("conv1", "conv2"), ("conv2", "conv3")]
    # Make one channel badly scaled (what DFQ is for): x100 out of conv1, /100 into conv2.
    g.tensors[pairs[0][0].inputs[1]].data[0] *= 100
    g.tensors[pairs[0][0].inputs[2]].data[0] *= 100
    g.tensors[pairs[0][1].inputs[1]].data[..., 0] /= 100
    x = np.random.default_rng(0).uniform(0, 1, (1, 9, 7, 3)).astype(np.float32)
    before = executor.run(g, {g.inputs[0]: x})[g.outputs[0]]
    qz.cross_layer_equalize(g)
    after = executor.run(g, {g.inputs[0]: x})[g.outputs[0]]
    np.testing.assert_allclose(after, before, atol=1e-5)
    w1, w2 = g.tensors[pairs[0][0].inputs[1]].data, g.tensors[pairs[0][1].inputs[1]].data
    r1 = np.abs(w1).reshape(w1.shape[0], -1).max(1)
    r2 = np.abs(w2).transpose(3, 0, 1, 2).reshape(w2.shape[3], -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=0.05)  # converged: r1 == r2 == sqrt(r1 r2)


def test_gptq_rounding_lowers_the_layer_output_error():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 1)) @ np.ones((1, 24)) + 0.3 * rng.standard_normal((2000, 24))  # correlated inputs
    w = rng.standard_normal((5, 24))
    q = qz.quantize_weights(w)
    nearest = q.fake_quantize(w)
    g = qz.gptq_round(w, x.T @ x, q)
    np.testing.assert_allclose(q.fake_quantize(g), g, atol=1e-12)  # on the int8 grid
    assert np.abs(np.round(g / q.scale[:, None])).max() <= 127
    err = lambda v: np.sum((x @ (v - w).T) ** 2)
    assert err(g) < 0.5 * err(nearest)


def test_im2col_matches_the_executor_conv():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 6, 5, 3))
    w = rng.standard_normal((4, 3, 3, 3))
    want = executor.conv2d(x, w, np.zeros(4), pads=(1, 1, 1, 1))
    got = qz.im2col(x, 3, 3, pads=(1, 1, 1, 1)) @ w.reshape(4, -1).T
    np.testing.assert_allclose(got.reshape(want.shape), want, atol=1e-10)


def test_residual_lands_on_the_output_grid(sr_graph, calib_dir):
    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, method="minmax", cle=False, act_eq=False, bias_correction=False,
                          sensitivity=False)
    add = next(n for n in g.nodes if n.op == "Add")
    out_q = g.tensors[g.outputs[0]].quant
    assert float(out_q.scale[0]) == pytest.approx(1 / 255) and int(out_q.zero_point[0]) == -128
    res = [g.tensors[i].quant for i in add.inputs]
    assert all(float(q.scale[0]) * 255 == pytest.approx(round(float(q.scale[0]) * 255)) for q in res)


# --------------------------------------------------------------------------- LiteRT vs simulation
@pytest.mark.parametrize("method,io", [("minmax", "float"), ("percentile", "uint8"), ("mse", "int8")])
def test_litert_matches_the_simulated_int8_output(tmp_path, sr_graph, calib_dir, method, io):
    from tests.conversion_testkit import run_tflite

    c = calibration_set(calib_dir, config=SMALL)
    res = qz.quantize_model(sr_graph, c, method=method, io=io, sensitivity=False)
    g = res.graph
    path = qz.write_tflite(g, tmp_path / "q.tflite")
    x = np.round(np.random.default_rng(5).uniform(0, 1, (1, 11, 9, 3)) * 255).astype(np.float32) / 255
    y, din, _ = run_tflite(path, x, details=True)
    assert din["dtype"] == {"float": np.float32, "uint8": np.uint8, "int8": np.int8}[io]
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    step = float(g.tensors[g.outputs[0]].quant.scale[0])
    lsb = np.abs(y - sim) / step
    assert lsb.max() <= 1.0 + 1e-3, f"max {lsb.max():.2f} LSB"
    flt = executor.run(sr_graph, {sr_graph.inputs[0]: x})[sr_graph.outputs[0]]
    assert np.abs(y - flt).max() < 0.05
    assert res.report.layers and res.report.quant_psnr > 20


def _badly_scaled(g, k=300.0):
    """conv1's channel 0 scaled up by k and conv2's use of it down: same function, awful int8 range."""
    g = copy.deepcopy(g)
    a, b = qz.conv_pairs(g)[0]
    g.tensors[a.inputs[1]].data[0] *= k
    g.tensors[a.inputs[2]].data[0] *= k
    g.tensors[b.inputs[1]].data[..., 0] /= k
    return g


def _teacher_set(g, c, noise=3.0):
    """Targets = the float model's own output plus fixed noise (~38 dB): a random-weight fixture is
    no real SR model, so against real HR crops quantisation noise could even 'help' it."""
    rng = np.random.default_rng(0)
    t = []
    for x in c.inputs:
        y = executor.run(g, {g.inputs[0]: x})[g.outputs[0]][0] * 255
        t.append(np.clip(np.round(y + rng.normal(0, noise, y.shape)), 0, 255).astype(np.uint8))
    return CalibSet(c.inputs, t, "teacher")


def test_mixed_precision_keeps_sensitive_layers_at_16x8(sr_graph, calib_dir):
    sr_graph = _badly_scaled(sr_graph)
    c = _teacher_set(sr_graph, calibration_set(calib_dir, config=SMALL))
    kw = dict(cle=False, act_eq=False, bias_correction=False, rounding="nearest")
    loose = qz.quantize_model(sr_graph, c, max_drop=100.0, **kw)
    assert all(r.precision == "int8" for r in loose.report.layers)
    tight = qz.quantize_model(sr_graph, c, max_drop=0.0, **kw)
    kept = [r.name for r in tight.report.layers if r.precision == "16x8"]
    assert kept, "a zero drop budget must promote at least one layer"
    assert all(tight.graph.tensors[r.tensor].quant.dtype == "int16" for r in tight.report.layers if r.name in kept)
    assert tight.report.drop < loose.report.drop
    assert "conv1" in kept  # the layer with the ruined range is the one promoted


def test_cle_auto_repairs_a_badly_scaled_pair(sr_graph, calib_dir):
    g = _badly_scaled(sr_graph)
    c = _teacher_set(g, calibration_set(calib_dir, config=SMALL))
    r = qz.quantize_model(g, c, method="minmax", rounding="nearest", act_eq=False, bias_correction=False,
                          sensitivity=False)
    assert r.report.cle and not r.report.act_eq
    assert r.report.variants["cle=off,ae=off,bc=off"] > r.report.variants["cle=on,ae=off,bc=off"] + 0.5


def test_activation_equalisation_preserves_fp32_outputs_and_balances_channel_peaks(sr_graph, calib_dir):
    g = _badly_scaled(sr_graph, k=1 / 50)  # conv1's channel 0 now peaks far below the others
    c = calibration_set(calib_dir, config=SMALL)
    a, _ = qz.conv_pairs(g)[0]

    def peaks(graph):
        runs = [executor.run(graph, {graph.inputs[0]: x}, keep_all=True)[a.outputs[0]] for x in c.inputs]
        return np.max([np.abs(v).max(axis=(0, 1, 2)) for v in runs], axis=0)

    x = c.inputs[0]
    before, p0 = executor.run(g, {g.inputs[0]: x})[g.outputs[0]], peaks(g)
    e = copy.deepcopy(g)
    assert qz.equalize_activations(e, c, alpha=1.0) == 2
    np.testing.assert_allclose(executor.run(e, {e.inputs[0]: x})[e.outputs[0]], before, atol=1e-5)
    p1 = peaks(e)
    np.testing.assert_allclose(p1[p0 > 0], p0.max(), rtol=1e-4)  # alpha 1: every live channel at the top
    h = copy.deepcopy(g)
    qz.equalize_activations(h, c, alpha=0.5)
    np.testing.assert_allclose(peaks(h)[p0 > 0], np.sqrt(p0[p0 > 0] * p0.max()), rtol=1e-4)


def test_act_eq_auto_repairs_a_starved_channel(sr_graph, calib_dir):
    g = _badly_scaled(sr_graph, k=1 / 300)
    c = _teacher_set(g, calibration_set(calib_dir, config=SMALL))
    r = qz.quantize_model(g, c, method="minmax", rounding="nearest", cle=False, bias_correction=False,
                          sensitivity=False)
    assert r.report.act_eq and not r.report.cle
    assert r.report.variants["cle=off,ae=off,bc=off"] > r.report.variants["cle=off,ae=on,bc=off"] + 0.1
    assert any("activation equalisation on" in line for line in r.report.lines())


@pytest.mark.parametrize("keep", [{"conv2"}, {"conv1", "residual"}, {"conv1", "conv2", "conv3", "residual"}])
def test_16x8_layers_run_in_litert_like_the_simulation(tmp_path, sr_graph, calib_dir, keep):
    from conversion.tflite_writer import tflite_ops
    from tests.conversion_testkit import run_tflite

    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, method="minmax", keep_16x8=keep, cle=False, act_eq=False, bias_correction=False,
                          sensitivity=False, rounding="nearest")
    for n in g.nodes:
        dt = g.tensors[n.outputs[0]].quant.dtype
        if n.op == "Maximum":  # the int8 <-> int16 converters
            continue
        assert dt == ("int16" if n.name in keep else "int8")
        acts = [g.tensors[i] for i in n.inputs if not g.tensors[i].is_const]
        assert all(t.quant.dtype == dt for t in acts), n.name  # every op sees one dtype
    x = np.round(np.random.default_rng(6).uniform(0, 1, (1, 10, 8, 3)) * 255).astype(np.float32) / 255
    flt = executor.run(g, {g.inputs[0]: x})[g.outputs[0]]
    want = executor.run(sr_graph, {sr_graph.inputs[0]: x})[sr_graph.outputs[0]]
    np.testing.assert_allclose(flt, want, atol=1e-6)  # the converters are identities in float
    path = qz.write_tflite(g, tmp_path / "mixed.tflite")
    ops = tflite_ops(path)
    # each converter is one QUANTIZE (int8 <-> int16), no identity MAXIMUM after it
    assert "MAXIMUM" not in ops and ops.count("QUANTIZE") == 1 + qz.precision_split(g)["boundaries"]
    y = run_tflite(path, x)
    sim = executor.run(g, {g.inputs[0]: x}, simulate_quant=True)[g.outputs[0]]
    assert np.abs(y - sim).max() <= 1 / 255 + 1e-6


def test_a_16x8_output_goes_back_to_int8_on_its_calibrated_range(sr_graph, calib_dir):
    # It took the int16 range, widened 2x for headroom: twice int8's step before DEPTH_TO_SPACE / TANH
    c = calibration_set(calib_dir, config=SMALL)
    opts = dict(method="minmax", cle=False, act_eq=False, bias_correction=False, sensitivity=False, rounding="nearest")
    g8 = qz.quantize_graph(sr_graph, c, **opts)
    g16 = qz.quantize_graph(sr_graph, c, keep_16x8={"conv2"}, **opts)
    assert g16.tensors["r2"].quant.dtype == "int16" and next(n for n in g16.nodes if n.op == "Conv" and
                                                            n.name == "conv3").inputs[0] == "r2_to_int8"
    s8, s16 = float(g8.tensors["r2"].quant.scale[0]), float(g16.tensors["r2_to_int8"].quant.scale[0])
    assert s16 == pytest.approx(s8, rel=0.02)


def test_max_drop_keeps_a_layer_at_16x8_only_where_it_helps(sr_graph, calib_dir, monkeypatch):
    c = _teacher_set(sr_graph, calibration_set(calib_dir, config=SMALL), noise=0.5)
    opts = dict(method="minmax", cle=False, act_eq=False, bias_correction=False, rounding="nearest")
    base = qz.quantize_model(sr_graph, c, sensitivity=False, **opts).report.quant_psnr
    real_build = qz._build

    def worse_at_16x8(graph, calib, **kw):  # every 16x8 layer made to cost: it must then stay int8
        g = real_build(graph, calib, **kw)
        for n in g.nodes:
            if n.name in kw["keep_16x8"]:  # an int16 grid coarser than int8's
                g.tensors[n.outputs[0]].quant.scale = g.tensors[n.outputs[0]].quant.scale * 1000
        return g

    monkeypatch.setattr(qz, "_build", worse_at_16x8)
    res = qz.quantize_model(sr_graph, c, max_drop=0.0, **opts)
    assert res.report.float_psnr > base  # a drop to close, so layers were tried at 16x8
    assert res.report.quant_psnr >= base - 1e-9 and not any(lr.precision == "16x8" for lr in res.report.layers)


def test_16x8_with_a_dynamic_size_conv_transpose_loads_in_litert(tmp_path, calib_dir):
    # FSRCNN's last layer: written as CONV_2D + DEPTH_TO_SPACE, whose int16 version LiteRT cannot load
    from onnx import helper as h

    from tests.conversion_testkit import make_model, rand, run_tflite

    rng = np.random.default_rng(3)
    inits = {"w1": rand(rng, 8, 3, 3, 3, lo=-0.3, hi=0.3), "b1": rand(rng, 8, lo=-0.1, hi=0.1),
             "wt": rand(rng, 8, 3, 4, 4, lo=-0.2, hi=0.2), "bt": rand(rng, 3, lo=-0.05, hi=0.05)}
    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c1"], ["r1"]),
             h.make_node("ConvTranspose", ["r1", "wt", "bt"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1], name="up")]
    g = from_onnx(make_model(nodes, inits, [1, 3, "H", "W"]))
    c = calibration_set(calib_dir, config=SMALL)
    keep = {n.name for n in g.nodes if n.op in qz.INT16_OPS}
    assert "up" in keep
    res = qz.quantize_model(g, c, keep_16x8=keep, sensitivity=False, cle=False, act_eq=False, bias_correction=False)
    path = qz.write_tflite(res.graph, tmp_path / "up.tflite")
    x = np.round(rng.uniform(0, 1, (1, 10, 12, 3)) * 255).astype(np.float32) / 255
    y = run_tflite(path, x)
    q = res.graph
    sim = executor.run(q, {q.inputs[0]: x}, simulate_quant=True)[q.outputs[0]]
    step = float(q.tensors[q.outputs[0]].quant.scale[0])
    assert y.shape == (1, 20, 24, 3) and np.abs(y - sim).max() <= 1.5 * step


def test_int8_to_int16_boundary_spans_the_int8_grid(sr_graph, calib_dir):
    """The repeated input (Concat) keeps the input's [0, 1] params in int8; its int16 converter must
    not clip it to the calibrated range of the Concat (lower when calibration pixels stay below 1)."""
    c = calibration_set(calib_dir, config=SMALL)
    assert max(float(x.max()) for x in c.inputs) < 0.95  # the smooth photos never reach white
    g = qz.quantize_graph(sr_graph, c, method="minmax", keep_16x8={"residual"}, cle=False, act_eq=False,
                          bias_correction=False, sensitivity=False, rounding="nearest")
    add = next(n for n in g.nodes if n.name == "residual")
    conv = next(i for i in add.inputs if g.tensors[i].quant.dtype == "int16" and i.startswith("rep"))
    assert float(g.tensors[conv].quant.scale[0]) * 32767 >= 1.0 - 1e-6


def test_int16_ranges_are_min_max_with_headroom(sr_graph, calib_dir):
    """int16 steps are fine enough to cover every calibration value twice over (a photo's peaks
    exceed a few crops'), flat frames' included, whatever observer int8 uses (a 90th percentile here)."""
    from quantization.calibration import flat_frames

    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, method="percentile", percentile=90.0, keep_16x8={"conv2"}, cle=False, act_eq=False,
                          bias_correction=False, sensitivity=False, rounding="nearest")
    out = next(n for n in g.nodes if n.name == "conv2").outputs[0]
    peak = max(float(np.abs(executor.run(g, {g.inputs[0]: x}, keep_all=True)[out]).max())
               for x in c.inputs + flat_frames(c))
    assert float(g.tensors[out].quant.scale[0]) * 32767 == pytest.approx(qz.HEADROOM_16 * peak, rel=1e-2)


def test_16x8_needs_float_io(tmp_path, sr_graph, calib_dir):
    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, keep_16x8={"conv2"}, io="int8", cle=False, act_eq=False, bias_correction=False,
                          sensitivity=False)
    with pytest.raises(ConfigError, match="float model I/O"):
        qz.write_tflite(g, tmp_path / "m.tflite")
    assert not list(tmp_path.glob("*.tflite"))


def test_residual_window_clips_rare_tails_but_widens_for_wide_residuals():
    rng = np.random.default_rng(8)
    s0 = 1 / 255
    narrow = np.concatenate([rng.uniform(-0.3, 0.3, 100000), [-0.8, 0.8]])
    wide = rng.uniform(-0.8, 0.8, 100000)
    for v, k_want in ((narrow, 1), (wide, 2)):
        counts, edges = np.histogram(v, bins=2048)
        step, lo, hi = qz._best_residual_window(counts, edges, s0, 3)
        assert step == pytest.approx(k_want * s0)
        assert hi - lo == pytest.approx(255 * step) and lo <= 0 <= hi


def test_bias_correction_removes_the_mean_shift_of_weight_rounding(sr_graph):
    g = copy.deepcopy(sr_graph)
    qz.quantize_all_weights(g, per_channel=False)  # coarse per-tensor rounding: a visible bias
    rng = np.random.default_rng(12)
    c = CalibSet([rng.uniform(0.2, 1, (1, 10, 10, 3)).astype(np.float32) for _ in range(4)], [None] * 4, "x")
    conv = next(n for n in g.nodes if n.op == "Conv")

    def mean_shift(h):
        errs = []
        for x in c.inputs:
            f = executor.run(sr_graph, {h.inputs[0]: x}, keep_all=True)[conv.outputs[0]]
            q = executor.run(h, {h.inputs[0]: x}, simulate_quant=True, keep_all=True)[conv.outputs[0]]
            errs.append((q - f)[:, 1:-1, 1:-1].reshape(-1, f.shape[-1]).mean(0))  # borders aside
        return np.abs(np.mean(errs, 0)).max()

    before = mean_shift(g)
    qz.bias_correct(g, c)
    assert mean_shift(g) < 0.5 * before


@pytest.mark.parametrize("weight", [0.0, 1e-9])
def test_a_dead_channel_with_a_bias_keeps_it_in_litert_and_qdq_onnx(tmp_path, sr_graph, calib_dir, caplog, weight):
    """What torch's ln_structured pruning leaves (an all-zero filter, its bias kept), or a nearly dead one:
    the weight scale was 1e-8 (or ~1e-11), so bias / (in_scale * w_scale) passed int32 and was clipped
    silently, 28 levels off in the file. Now the scale is widened until the bias fits."""
    from conversion.onnx_writer import to_onnx
    from onnx import numpy_helper as nh
    import onnx
    import onnxruntime as ort
    from tests.conversion_testkit import run_tflite

    g0 = copy.deepcopy(sr_graph)
    conv = next(n for n in g0.nodes if n.name == "conv2")
    g0.tensors[conv.inputs[1]].data[3] = weight
    g0.tensors[conv.inputs[2]].data[3] = 0.3
    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(g0, c, method="minmax", cle=False, act_eq=False, bias_correction=False, rounding="nearest",
                          sensitivity=False)
    x = np.round(np.random.default_rng(5).uniform(0, 1, (1, 11, 9, 3)) * 255).astype(np.float32) / 255
    flt = executor.run(g0, {g0.inputs[0]: x})[g0.outputs[0]]
    path = qz.write_tflite(g, tmp_path / "q.tflite")
    assert np.abs(run_tflite(path, x) - flt).max() < 4 / 255
    onnx_path = to_onnx(g, tmp_path / "q.onnx", precision="int8")
    inits = {i.name: nh.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    b = conv.inputs[2]
    step = float(inits[b + "_scale"][3])
    assert abs(float(inits[b + "_q"][3]) * step - 0.3) <= step / 2 + 1e-7 and abs(inits[b + "_q"][3]) < 2**31 - 1
    s = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = s.run(None, {s.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})[0].transpose(0, 2, 3, 1)
    assert np.abs(y - flt).max() < 4 / 255
    assert "do not fit the integer bias" not in caplog.text


def test_a_bias_the_integer_bias_cannot_hold_is_warned_of_naming_the_layer(tmp_path, sr_graph, calib_dir, caplog):
    from conversion.tflite_writer import to_tflite

    c = calibration_set(calib_dir, config=SMALL)
    g = qz.quantize_graph(sr_graph, c, method="minmax", cle=False, act_eq=False, bias_correction=False,
                          rounding="nearest", sensitivity=False)
    conv = next(n for n in g.nodes if n.name == "conv2")
    g.tensors[conv.inputs[1]].quant.scale[3] = 1e-12  # params set by hand, past what the quantiser would give
    to_tflite(g, tmp_path / "q.tflite", precision="int8")
    assert "conv2: 1 bias value(s) do not fit the integer bias" in caplog.text and "channel(s) 3" in caplog.text


def test_bias_correction_is_not_applied_after_gptq_and_says_so(sr_graph, calib_dir, caplog):
    """GPTQ already takes each layer's mean output shift away; bias correction after it, from the float
    model's input means, cost sr-x2-rt 0.3 dB (--bias-correction on), and auto paid a full extra pass."""
    c = calibration_set(calib_dir, config=SMALL)
    kw = dict(method="minmax", cle=False, act_eq=False, rounding="gptq", sensitivity=False)
    off = qz.quantize_model(sr_graph, c, bias_correction=False, **kw).report
    assert "bias correction" not in caplog.text
    on = qz.quantize_model(sr_graph, c, bias_correction=True, **kw).report
    assert "bias correction is not applied after GPTQ rounding" in caplog.text
    assert on.bias_correction is False and on.quant_psnr == off.quant_psnr
    auto = qz.quantize_model(sr_graph, c, bias_correction="auto", **kw).report
    assert list(auto.variants) == ["cle=off,ae=off,bc=off"]
    nearest = qz.quantize_model(sr_graph, c, bias_correction="auto", **{**kw, "rounding": "nearest"}).report
    assert "cle=off,ae=off,bc=on" in nearest.variants  # nearest rounding still tries it


def test_max_drop_reaches_a_producer_and_consumer_pair_that_only_helps_together(sr_graph, calib_dir):
    """conv1's output channel 0 is 300x wide: only conv1 and conv2 both at 16x8 keep it off the int8 grid.
    conv2, ranked first, gained nothing alone and was never tried again once conv1 had moved: the bar was
    missed (drop 6.98 dB; 2.93 with both)."""
    g = _badly_scaled(sr_graph)
    c = _teacher_set(g, calibration_set(calib_dir, config=SMALL))
    kw = dict(method="minmax", cle=False, act_eq=False, bias_correction=False, rounding="nearest")
    res = qz.quantize_model(g, c, max_drop=4.0, **kw)
    assert res.report.drop <= 4.0
    assert {r.name for r in res.report.layers if r.precision == "16x8"} == {"conv1", "conv2"}
    assert res.report.tried_16x8[0][0] == ["conv2"] and res.report.tried_16x8[1][0] == ["conv1", "conv2"]
    assert any(line.startswith("  16x8 conv1+conv2: simulated drop") for line in res.report.lines())


def _depthwise_separable(k=300.0):
    """conv 3->8 + ReLU, depthwise 3x3 (8 groups) + ReLU, pointwise 1x1 to 12, + input x4, DepthToSpace 2,
    Clip: the MobileNet block DFQ equalises. The depthwise channel 0 is k times too wide and the pointwise
    conv takes it back: the same function, one channel hogging the tensor's int8 range."""
    from tests.conversion_testkit import h, make_model, rand

    rng = np.random.default_rng(21)
    dw, bdw, pw = rand(rng, 8, 1, 3, 3, lo=-0.4, hi=0.4), rand(rng, 8, lo=0.0, hi=0.1), rand(rng, 12, 8, 1, 1, lo=-0.05, hi=0.05)
    dw[0] *= k
    bdw[0] *= k
    pw[:, 0] /= k
    m = make_model([
        h.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        h.make_node("Relu", ["c1"], ["r1"]),
        h.make_node("Conv", ["r1", "dw", "bdw"], ["c2"], pads=[1, 1, 1, 1], group=8, name="dw"),
        h.make_node("Relu", ["c2"], ["r2"]),
        h.make_node("Conv", ["r2", "pw", "bpw"], ["c3"], name="pw"),
        h.make_node("Concat", ["x"] * 4, ["rep"], axis=1),
        h.make_node("Add", ["c3", "rep"], ["s"], name="residual"),
        h.make_node("DepthToSpace", ["s"], ["d"], blocksize=2, mode="DCR"),
        h.make_node("Clip", ["d", "lo", "hi"], ["y"]),
    ], {"w1": rand(rng, 8, 3, 3, 3, lo=-0.3, hi=0.3), "b1": rand(rng, 8, lo=0.0, hi=0.1), "dw": dw, "bdw": bdw,
        "pw": pw, "bpw": rand(rng, 12, lo=-0.01, hi=0.01), "lo": np.float32(0), "hi": np.float32(1)}, [1, 3, "H", "W"])
    return from_onnx(m)


def test_cle_and_act_eq_equalise_a_depthwise_then_pointwise_pair(calib_dir):
    """--cle on / --act-eq on did nothing on a depthwise-separable block and the report said 'off'."""
    g = _depthwise_separable()
    pair = [(a.name, b.name) for a, b in qz.conv_pairs(g, depthwise=True)]
    assert ("dw", "pw") in pair and ("dw", "pw") not in [(a.name, b.name) for a, b in qz.conv_pairs(g)]  # not pruned
    x = np.random.default_rng(2).uniform(0, 1, (1, 10, 12, 3)).astype(np.float32)
    e = copy.deepcopy(g)
    qz.cross_layer_equalize(e)
    np.testing.assert_allclose(executor.run(e, {e.inputs[0]: x})[e.outputs[0]],
                               executor.run(g, {g.inputs[0]: x})[g.outputs[0]], atol=1e-5)
    w = np.abs(e.tensors[next(n for n in e.nodes if n.name == "dw").inputs[1]].data).reshape(8, -1).max(1)
    assert w.max() / w.min() < 30  # the 300x channel evened out
    c = _teacher_set(g, calibration_set(calib_dir, config=SMALL))
    kw = dict(method="minmax", bias_correction=False, rounding="nearest", sensitivity=False)
    off = qz.quantize_model(g, c, cle=False, act_eq=False, **kw).report
    on = qz.quantize_model(g, c, cle=True, act_eq=True, **kw).report
    assert on.cle and on.act_eq and on.drop < off.drop - 0.5


def test_equalisation_asked_for_where_there_is_no_pair_says_so(calib_dir, caplog):
    from tests.conversion_testkit import h, make_model, rand

    rng = np.random.default_rng(3)
    g = from_onnx(make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
                              h.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                             {"w": rand(rng, 3, 3, 3, 3, lo=-0.2, hi=0.2), "b": rand(rng, 3), "lo": np.float32(0),
                              "hi": np.float32(1)}, [1, 3, "H", "W"]))
    c = calibration_set(calib_dir, task="denoise", scale=1, config=SMALL)
    r = qz.quantize_model(g, c, cle=True, act_eq="auto", rounding="nearest", bias_correction=False,
                          sensitivity=False).report
    assert not r.cle and "cross-layer equalisation left off: no pair to equalise" in caplog.text
    assert "activation equalisation" not in caplog.text  # auto: nothing asked, nothing said
