"""The benchmark harness: its arithmetic on tiny runs and its plumbing end to end (no timing asserts)."""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from benchmarks import bars, cli, memory, quality, report, speed, stats, tiling
from benchmarks.errors import ConfigError
from benchmarks.subjects import Subject, bicubic_subject

from tests.conftest import SHARED, needs


# -- arithmetic ------------------------------------------------------------------------------------
@pytest.mark.parametrize("xs, want", [([3.0], 3.0), ([5, 1, 3], 3.0), ([4, 1, 3, 2], 2.5), ([2, 2, 9, 2, 2], 2.0)])
def test_median(xs, want):
    assert stats.median(xs) == want


def test_median_of_nothing_is_an_error():
    with pytest.raises(ConfigError):
        stats.median([])


@pytest.mark.parametrize("wh, secs, want", [((1280, 720), 0.5, 1.8432), ((1000, 1000), 1.0, 1.0), ((10, 5), 2.0, 25e-6)])
def test_mp_per_s(wh, secs, want):
    assert stats.mp_per_s(wh, secs) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("secs", [0.0, -1.0])
def test_mp_per_s_refuses_non_positive_time(secs):
    with pytest.raises(ConfigError):
        stats.mp_per_s((10, 10), secs)


def test_gmac_per_s_by_hand():
    # 2000 MACs per output pixel, 1920x1080 output in 0.25 s: 2000 * 2073600 / 0.25 / 1e9 = 16.5888
    assert stats.gmac_per_s(2000, (1920, 1080), 0.25) == pytest.approx(16.5888)
    assert stats.gmac_per_s(0, (1920, 1080), 0.25) == 0


@pytest.mark.parametrize("per_in, s, want", [(40000, 2, 10000), (9000, 3, 1000), (500, 1, 500)])
def test_macs_per_output_pixel(per_in, s, want):
    assert stats.macs_per_output_pixel(per_in, s) == want


@pytest.mark.parametrize("names, runs, warmup", [(["A", "B"], 5, 1), (["A", "B", "C"], 2, 2), (["A"], 3, 0)])
def test_interleave_schedule(names, runs, warmup):
    order = stats.interleave(names, runs, warmup)
    k = len(names)
    assert len(order) == k * (runs + warmup)
    assert all(w for _, w in order[:k * warmup]) and not any(w for _, w in order[k * warmup:])
    timed = [n for n, w in order if not w]
    # A B A B: every window of k consecutive timed calls holds each contender exactly once.
    for i in range(0, len(timed), k):
        assert timed[i:i + k] == list(names)


@pytest.mark.parametrize("runs, warmup", [(0, 1), (3, -1)])
def test_interleave_refuses_bad_counts(runs, warmup):
    with pytest.raises(ConfigError):
        stats.interleave(["A"], runs, warmup)


def test_time_calls_drops_warmups_and_keeps_per_contender_times():
    calls = []
    ticks = iter(range(1000))
    # Each call costs (its position in the schedule + 1) ticks on this fake clock.
    clock_times = []

    def clock():
        t = next(ticks)
        clock_times.append(t)
        return float(t * t)  # t0 = n^2, t1 = (n+1)^2: durations 1, 5, 9, ... distinct per call

    fns = {"A": lambda f: calls.append("A"), "B": lambda f: calls.append("B")}
    times = speed.time_calls(fns, None, runs=3, clock=clock)
    assert calls == ["A", "B"] * 4  # one warm-up round then three timed rounds
    durations = [(2 * i + 1) ** 2 - (2 * i) ** 2 for i in range(8)]  # 1, 5, 9, ...
    assert times["A"] == durations[2::2] and times["B"] == durations[3::2]


def test_speed_row_arithmetic():
    sub = bicubic_subject(2)
    sub.macs_per_out_px = 100.0
    r = speed.speed_row(sub, 1, (10, 5), [0.3, 0.1, 0.2, 0.5, 0.4])
    assert r["output"] == [20, 10] and r["median_s"] == pytest.approx(0.3)
    assert r["ms_per_frame"] == pytest.approx(300.0) and r["fps"] == pytest.approx(1 / 0.3)
    assert r["mp_per_s"] == pytest.approx(200 / 1e6 / 0.3)
    assert r["gmac_per_s"] == pytest.approx(100 * 200 / 0.3 / 1e9)


@pytest.mark.parametrize("points, want", [
    ([(1, 30), (2, 29), (0.5, 31), (1, 28), (3, 27)], [2, 0, 1, 4]),
    ([(1, 1), (1, 1)], [0, 1]),  # equal points do not dominate each other
    ([(1, 1), (2, 2), (3, 3)], [2]),
    ([(1, float("nan")), (0.5, 1)], [1]),
    ([], []),
])
def test_pareto_front(points, want):
    assert stats.pareto_front(points) == want


def test_frame_for_megapixels_and_synthetic_image():
    h, w = stats.frame_for_megapixels(2)
    assert h % 2 == 0 and w % 2 == 0 and abs(h * w - 2e6) / 2e6 < 0.01 and abs(w / h - 4 / 3) < 0.01
    a, b = stats.synthetic_image(37, 300, seed=3), stats.synthetic_image(37, 300, seed=3)
    assert a.shape == (37, 300, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert a.std() > 10  # not a flat frame: an engine could not shortcut it


# -- bars ------------------------------------------------------------------------------------------
def _srow(model, engine, precision, threads, mp, fps=None, ours=True, size=bars.BAR_SIZE):
    return {"model": model, "engine": engine, "precision": precision, "threads": threads, "input": list(size),
            "mp_per_s": mp, "fps": fps if fps is not None else mp, "ms_per_frame": 1000 / (fps or mp), "ours": ours}


def _qrow(model, engine, precision, psnr, dataset="Set14"):
    return {"model": model, "engine": engine, "precision": precision, "dataset": dataset, "psnr": psnr}


@pytest.mark.parametrize("value, threshold, want", [(2.0, 2.0, "PASS"), (1.999, 2.0, "FAIL"), (None, 1.0, "not run"),
                                                    (math.nan, 1.0, "not run"), (-0.5, 1.5, "FAIL")])
def test_judge(value, threshold, want):
    assert bars.judge(value, threshold) == want


@pytest.mark.parametrize("ours_mp, peer_mp, ours_db, peer_db, want_speed, want_q", [
    (4.0, 2.0, 32.8, 31.2, "PASS", "PASS"),
    (3.9, 2.0, 32.6, 31.2, "FAIL", "FAIL"),
])
def test_judge_bars_sr_x2(ours_mp, peer_mp, ours_db, peer_db, want_speed, want_q):
    speed_rows = [_srow("sr-x2", "litert", "int8", 4, ours_mp), _srow("FSRCNN x2", "opencv", "fp32", 4, peer_mp, ours=False)]
    q = [_qrow("sr-x2", "litert", "int8", ours_db), _qrow("FSRCNN x2", "opencv", "fp32", peer_db)]
    got = bars.judge_bars(speed_rows, q, all_threads=4)
    assert got[0]["status"] == want_speed and got[0]["value"] == pytest.approx(ours_mp / peer_mp)
    assert got[1]["status"] == want_q and got[1]["value"] == pytest.approx(ours_db - peer_db)
    assert f"{ours_mp / peer_mp:.2f}x" in got[0]["figure"]


def test_a_quality_bar_on_part_of_its_set_says_so():
    q = [{**_qrow("sr-x2", "litert", "int8", 32.8), "images": 3}, {**_qrow("FSRCNN x2", "opencv", "fp32", 31.0), "images": 3}]
    got = bars.judge_bars([], q, all_threads=2)[1]
    assert got["status"] == "PASS" and got["figure"].endswith("; on 3 of Set14's 14 images: not the bar's set)")
    full = [{**r, "images": 14} for r in q]
    assert "not the bar's set" not in bars.judge_bars([], full, all_threads=2)[1]["figure"]


def test_judge_bars_missing_inputs_are_not_run_with_reason():
    got = bars.judge_bars([_srow("FSRCNN x2", "opencv", "fp32", 2, 1.0, ours=False)], [], all_threads=2)
    assert [b["status"] for b in got] == ["not run"] * 4
    assert all(b["reason"] and b["value"] is None for b in got)
    assert "sr-x2 int8" in got[0]["reason"]


def test_judge_bars_realtime_and_int8_vs_fp32():
    rows = [_srow("sr-x2-rt", "litert", "int8", 2, 30.0, fps=31.0), _srow("sr-x2-rt", "litert", "fp32", 2, 19.0),
            _srow("sr-x2", "litert", "int8", 2, 5.0), _srow("sr-x2", "litert", "fp32", 2, 4.0),
            _srow("sr-x2-rt", "litert", "int8", 1, 1.0)]  # other thread counts are not judged
    got = bars.judge_bars(rows, [], all_threads=2)
    rt = next(b for b in got if b["bar"].startswith("sr-x2-rt int8"))
    assert rt["status"] == "PASS" and rt["value"] == 31.0
    ratio = {b["bar"].split(":")[0]: b for b in got if "1.5x fp32" in b["bar"]}
    assert ratio["sr-x2-rt"]["status"] == "PASS" and ratio["sr-x2-rt"]["value"] == pytest.approx(30 / 19)
    assert ratio["sr-x2"]["status"] == "FAIL" and ratio["sr-x2"]["value"] == pytest.approx(1.25)


def test_judge_bars_ignores_other_sizes():
    rows = [_srow("sr-x2-rt", "litert", "int8", 2, 99.0, fps=99.0, size=(1280, 720))]
    rt = next(b for b in bars.judge_bars(rows, [], all_threads=2) if b["bar"].startswith("sr-x2-rt"))
    assert rt["status"] == "not run"


# -- quality on tiny runs --------------------------------------------------------------------------
@pytest.fixture
def tiny_data(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("Set5", "Set14", "McMaster"):
        d = tmp_path / "data" / "eval" / name
        d.mkdir(parents=True)
        for i in range(2):
            x = np.linspace(0, 255, 30)[None, :, None] + rng.normal(0, 20, (26, 30, 3))
            Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(d / f"im{i}.png")
    return tmp_path / "data"


def _y(rgb):
    x = rgb.astype(np.float64)
    return 16 + (65.481 * x[..., 0] + 128.553 * x[..., 1] + 24.966 * x[..., 2]) / 255


def test_quality_psnr_by_hand_for_bicubic(tiny_data):
    rows, notes = quality.run_quality([bicubic_subject(2)], tiny_data, quick=True)
    assert not notes and [r["dataset"] for r in rows] == ["Set5", "Set14"]
    want = []
    for p in sorted((tiny_data / "eval" / "Set5").iterdir()):
        hr = np.asarray(Image.open(p).convert("RGB"))[:26, :30]
        lr = np.asarray(Image.fromarray(hr).resize((15, 13), Image.BICUBIC))
        up = np.asarray(Image.fromarray(lr).resize((30, 26), Image.BICUBIC))
        mse = np.mean((_y(hr)[2:-2, 2:-2] - _y(up)[2:-2, 2:-2]) ** 2)
        want.append(10 * math.log10(255 ** 2 / mse))
    assert rows[0]["psnr"] == pytest.approx(np.mean(want), abs=1e-9)
    assert rows[0]["psnr"] == pytest.approx(rows[0]["input_psnr"])  # bicubic is the baseline itself
    assert rows[0]["images"] == 2


def test_quality_missing_dataset_is_not_run(tmp_path):
    rows, notes = quality.run_quality([bicubic_subject(2)], tmp_path, quick=True)
    assert rows == [] and len(notes) == 2 and "not found" in notes[0].reason


def test_quality_identity_denoiser_scores_the_input(tiny_data):
    sub = Subject("identity", "identity", False, "pillow", "-", "denoise", 1, 0.0, False, lambda t: (lambda x: x))
    (row,), _ = quality.run_quality([sub], tiny_data, quick=True)
    assert row["dataset"] == "McMaster" and row["psnr"] == pytest.approx(row["input_psnr"])
    assert 18 < row["psnr"] < 25  # sigma 25 clipped noise: about 20.5 dB


def test_quality_only_on_a_subjects_own_sets(tiny_data):
    ident = lambda t: (lambda x: x)  # noqa: E731
    only_mc = Subject("a", "a", False, "pillow", "-", "denoise", 1, 0.0, False, ident, datasets=("McMaster",))
    only_kodak = Subject("b", "b", False, "pillow", "-", "denoise", 1, 0.0, False, ident, datasets=("Kodak24",))
    rows, notes = quality.run_quality([only_mc, only_kodak], tiny_data, quick=True)
    assert [(r["label"], r["dataset"]) for r in rows] == [("a", "McMaster")]
    assert [n.what for n in notes] == ["quality b"] and "Kodak24 only" in notes[0].reason


def test_denoise_vs_cbm3d_bar_only_where_cbm3d_ran():
    row = {"ours": True, "model": "denoise", "engine": "litert", "precision": "int8", "dataset": "Kodak24"}
    peer = {**row, "ours": False, "model": "CBM3D", "engine": "bm3d", "precision": "-"}
    assert not [b for b in bars.judge_bars([], [{**row, "psnr": 30.0}]) if "CBM3D" in b["bar"]]
    for ours, want in ((31.9, "PASS"), (31.0, "FAIL"), (31.5, "FAIL")):
        (b,) = [b for b in bars.judge_bars([], [{**row, "psnr": ours}, {**peer, "psnr": 31.5}]) if "CBM3D" in b["bar"]]
        assert b["status"] == want and b["value"] == pytest.approx(ours - 31.5)


# -- report ----------------------------------------------------------------------------------------
def _result():
    meta = {"machine": "test box", "cpu_count": 2, "date": "2026-01-01", "command": "bench", "load": "idle",
            "quick": True, "sections": ["quality", "speed"]}
    row = {"label": "bicubic x2", "model": "bicubic x2", "ours": False, "engine": "pillow", "precision": "-",
           "task": "sr", "scale": 2, "macs_per_out_px": 0.0}
    q = [{**row, "dataset": "Set14", "images": 14, "psnr": 30.33, "ssim": 0.87, "input_psnr": 30.33},
         {**row, "label": "ours", "model": "m", "ours": True, "dataset": "Set14", "images": 14, "psnr": 31.0,
          "ssim": 0.9, "input_psnr": 30.33}]
    s = [{**row, "threads": 1, "input": [640, 360], "output": [1280, 720], "runs": 5, "ms_per_frame": 50.0, "fps": 20.0,
          "mp_per_s": 18.4, "gmac_per_s": 0.0},
         {**q[1], "threads": 2, "input": [640, 360], "output": [1280, 720], "runs": 5, "ms_per_frame": 500.0,
          "fps": 2.0, "mp_per_s": 1.84, "gmac_per_s": 3.0, "macs_per_out_px": 1000}]
    return {"meta": meta, "quality": q, "speed": s, "memory": [], "tiling": [],
            "bars": bars.judge_bars(s, q, 2), "not_run": [{"what": "x", "status": "not run", "reason": "because"}]}


def test_pareto_points_pick_headline_set_and_all_threads():
    pts = {p["label"]: p for p in report.pareto_points(_result())}
    assert pts["bicubic x2"]["mp_per_s"] == 18.4 and pts["ours"]["psnr"] == 31.0
    assert pts["bicubic x2"]["pareto"] and pts["ours"]["pareto"]


def test_write_all(tmp_path):
    res = _result()
    paths = report.write_all(res, tmp_path)
    md = paths["markdown"].read_text()
    assert "test box" in md and "2026-01-01" in md and "- x: not run: because" in md
    assert "**not run** sr-x2 int8" in md and "| bicubic x2 | 1 | 640x360 | 1280x720 | 5 | 50.0 |" in md
    assert json.loads(paths["json"].read_text())["quality"][0]["psnr"] == 30.33
    if "chart" in paths:
        assert paths["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.part*"))
    umask = os.umask(0o022)
    os.umask(umask)
    for p in paths.values():  # readable as any new file is (mkstemp's 0600 hid the report from others)
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, p.name


def test_the_report_names_the_cpu_features_the_software_and_each_files_hash(tmp_path):
    """One "AMD EPYC" VM with VNNI and one without give opposite int8 speed bars: the report says which."""
    info = tmp_path / "cpuinfo"
    info.write_text("model name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni\n" * 2)
    assert cli.cpu_features(str(info)) == ["sse4_2", "fma", "avx2", "avx512f", "avx512_vnni"]
    info.write_text("Features\t: fp asimd asimddp i8mm\n")
    assert cli.cpu_features(str(info)) == ["asimd", "asimddp", "i8mm"]
    assert cli.cpu_features(str(tmp_path / "none")) == []
    assert cli.versions()["numpy"] == np.__version__
    model = tmp_path / "m.tflite"
    model.write_bytes(b"abc")
    assert cli.file_sha256(str(model)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert cli.file_sha256(None) is None and cli.file_sha256(str(tmp_path)) is None
    res = _result()
    res["meta"].update(cpu_features=["avx2", "avx512_vnni"], versions={"python": "3.11.7", "numpy": "2.4.6"})
    res["subjects"] = [{"label": "ours", "path": str(model), "sha256": cli.file_sha256(str(model))},
                       {"label": "bicubic x2", "path": None, "sha256": None}]
    md = report.markdown(res)
    assert "- CPU features: avx2, avx512_vnni\n- software: python 3.11.7, numpy 2.4.6\n" in md
    assert f"| ours | {model} | ba7816bf" in md and "| bicubic x2 |" not in md.split("## Files measured")[1]


# -- CLI and plumbing --------------------------------------------------------------------------------
def _parser():
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p


@pytest.mark.parametrize("only", ["speed,bogus", ""])
def test_only_refuses_unknown_sections(only, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["--only", only])


def test_too_few_runs_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="at least 5"):
        cli.main(_parser().parse_args(["--runs", "3", "--out", str(tmp_path)]))


@pytest.fixture
def model_dir(tmp_path):
    """An ONNX test network (random weights: plumbing only, never reported) and its int8 TFLite."""
    pytest.importorskip("onnx")
    pytest.importorskip("ai_edge_litert")
    import onnx

    from conversion.ir import QuantParams
    from conversion.onnx_import import from_onnx
    from conversion.tflite_writer import to_tflite
    from edge_enhance.card import ModelCard
    from tests.conversion_testkit import minmax_calibrate, residual_sr_model

    rng = np.random.default_rng(0)
    card = ModelCard(name="sr-x2", task="sr", scale=2, receptive_field=7, layout="nchw", macs_per_pixel=3000)
    m = residual_sr_model(rng, scale=2, feat=4, card=card)
    d = tmp_path / "models"
    d.mkdir()
    onnx.save(m, d / "t.onnx")
    g = from_onnx(m)
    minmax_calibrate(g, [rng.uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)])
    g.tensors[g.inputs[0]].quant = QuantParams([1 / 255], [-128])
    to_tflite(g, d / "t.int8.tflite", precision="int8")
    return d


@needs("onnxruntime")
def test_end_to_end_quick(tmp_path, tiny_data, model_dir, monkeypatch, capsys):
    monkeypatch.setattr(speed, "QUICK_SIZES", ((24, 16),))
    monkeypatch.setattr(tiling, "QUICK_SIZES", ((24, 16),))
    monkeypatch.setattr(bars, "BAR_SIZE", (24, 16))
    monkeypatch.setattr(report, "BAR_SIZE", (24, 16))
    out = tmp_path / "out"
    args = _parser().parse_args(["--quick", "--models", str(model_dir), "--out", str(out), "--data", str(tiny_data),
                                 "--only", "quality,speed,tiling", "--no-peers"])
    assert cli.main(args) == 0
    res = json.loads((out / "results.json").read_text())
    labels = {s["label"] for s in res["subjects"]}
    # ONNX fp32, its fp32 TFLite conversion, and the int8 TFLite file.
    assert labels == {"sr-x2 ONNX Runtime fp32", "sr-x2 LiteRT XNNPACK fp32", "sr-x2 LiteRT XNNPACK int8"}
    assert {r["dataset"] for r in res["quality"]} == {"Set5", "Set14"}
    fp32 = {r["dataset"]: r["psnr"] for r in res["quality"] if r["engine"] == "onnxruntime"}
    tfl = {r["dataset"]: r["psnr"] for r in res["quality"] if r["label"] == "sr-x2 LiteRT XNNPACK fp32"}
    assert tfl == pytest.approx(fp32, abs=0.05)  # same network, two engines
    assert all(r["runs"] == 5 and len(r["times_s"]) == 5 for r in res["speed"] + res["tiling"])
    assert {r["threads"] for r in res["speed"] if r["engine"] == "litert"} == set(speed.thread_counts(True))
    assert all(r["macs_per_out_px"] == 750 for r in res["speed"])
    assert any(r["config"] == "whole" and r["ratio_to_whole"] == 1.0 for r in res["tiling"])
    status = {b["bar"].split(":")[0]: b["status"] for b in res["bars"]}
    assert status["sr-x2"] in ("PASS", "FAIL")  # int8 vs fp32 is judged: both rows exist
    assert any("FSRCNN" in b["reason"] for b in res["bars"])  # --no-peers: the FSRCNN bar says why
    assert "Core ML" in (out / "report.md").read_text()
    printed = capsys.readouterr().out
    assert "PASS" in printed or "FAIL" in printed


@needs("ai_edge_litert")
def test_memory_child_subprocess(model_dir, monkeypatch):
    monkeypatch.setattr(memory, "QUICK_MEGAPIXELS", (0.01,))
    monkeypatch.setattr(memory, "BUDGETS_MB", (64,))
    from benchmarks.subjects import model_subject

    rows, notes = memory.run_memory([model_subject(model_dir / "t.int8.tflite")], quick=True, slow=False)
    assert len(rows) == 1 and "--slow" in notes[0].reason
    r = rows[0]
    assert r["input"][0] * r["input"][1] == pytest.approx(1e4, rel=0.05) and r["output"] == [2 * r["input"][0], 2 * r["input"][1]]
    assert r["peak_rss_mb"] >= r["rss_before_mb"] > 0 and r["tiles"] >= 1


@needs("ai_edge_litert")
def test_memory_from_files_through_the_cli(model_dir, capsys):
    """``python -m benchmarks.memory --files``: four inputs through the CLI, each in a fresh process, with the
    peak RSS and its anonymous part; a small RAM makes the output stream through a memory-mapped file."""
    rows = memory.run_files(str(model_dir / "t.int8.tflite"), 64, 0.01, 0.05)
    assert [(r["input"], r["output"]) for r in rows] == [("photo.jpg", "png"), ("photo.jpg", "jpg"),
                                                        ("grey.jpg", "png"), ("rgba.png", "png")]
    assert all(r["rc"] == 0 and r["peak_rss_mb"] >= r["peak_anon_mb"] > 0 and "error" not in r for r in rows)
    (bad, *_) = memory.run_files(str(model_dir / "none.onnx"), 64, 0.01, 0)
    assert bad["rc"] == 2 and "none.onnx: no such model file" in bad["error"]


def test_ratios_against_peers():
    (r,) = report.ratios(_result())
    assert r["subject"] == "ours" and r["peer"] == "bicubic x2"
    assert r["speed_ratio"] == pytest.approx(1.84 / 18.4) and r["psnr_delta"] == pytest.approx(31.0 - 30.33)
    assert "| ours | bicubic x2 | 0.10x | +0.67 | Set14 |" in report.markdown(_result())


def test_duplicate_model_files_are_reported_not_timed_twice(model_dir, tmp_path):
    import shutil

    from benchmarks.subjects import our_subjects

    shutil.copy(model_dir / "t.int8.tflite", model_dir / "copy.int8.tflite")
    subs, notes = our_subjects([str(model_dir)], tmp_path / "cache")
    labels = [s.label for s in subs]
    assert len(labels) == len(set(labels)) == 3
    assert any("same model, engine and precision" in n.reason for n in notes)


def test_missing_model_argument_is_not_run(tmp_path):
    from benchmarks.subjects import our_subjects

    subs, notes = our_subjects([str(tmp_path / "nope.onnx")], tmp_path / "cache")
    assert subs == [] and "no such file" in notes[0].reason


def test_child_peak_is_its_own_not_the_parents(tmp_path):
    """A parent holding a large buffer must not raise its child's reported peak (ru_maxrss would)."""
    import subprocess
    import sys

    big = np.ones(400 * 2**20 // 8)  # 400 MB touched in the parent  # noqa: F841
    code = "from benchmarks.memory import _peak_mb; print(_peak_mb())"
    peak = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                cwd=str(memory.ROOT)).stdout)
    assert 0 < peak < 300


def test_bench_runs_where_there_is_no_load_average_nor_resource_module(monkeypatch):
    """Windows: os.getloadavg and the resource module are Unix-only; `edge-enhance bench` ended in a traceback."""
    import subprocess
    import sys

    from benchmarks import soak

    monkeypatch.delattr(os, "getloadavg")
    assert cli.load_text(None) == "load average at start unknown"
    assert soak.machine()["loadavg_1_5_15"] is None
    code = ("import sys; sys.modules['resource'] = None\n"
            "import edge_enhance.procmem as p; p.status_mb = lambda key: None  # no /proc either\n"
            "from benchmarks import cli, memory; print(memory._peak_mb())")
    peak = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(memory.ROOT))
    assert peak.returncode == 0 and peak.stdout == "nan\n", peak.stderr  # the report's "-"
    assert report._f(float(peak.stdout), ".0f") == "-"


def test_onnx_precision_by_ops(tmp_path, model_dir):
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h

    from benchmarks.subjects import onnx_precision

    assert onnx_precision(model_dir / "t.onnx") == "fp32"
    g = h.make_graph([h.make_node("QuantizeLinear", ["x", "s"], ["q"]), h.make_node("DequantizeLinear", ["q", "s"], ["y"])],
                     "qdq", [h.make_tensor_value_info("x", 1, [1, 3, 4, 4])], [h.make_tensor_value_info("y", 1, [1, 3, 4, 4])],
                     [h.make_tensor("s", 1, [], [0.1])])
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 13)]), tmp_path / "q.onnx")
    assert onnx_precision(tmp_path / "q.onnx") == "int8"


@pytest.mark.parametrize("peers", [[], ["--no-peers"]])
def test_models_none_of_which_load_stop_the_run_before_anything_is_measured(tmp_path, capsys, monkeypatch, peers):
    from benchmarks.errors import BenchmarkError

    monkeypatch.setattr(speed, "run_speed", lambda *a, **k: pytest.fail("timed runs before the bad model was said"))
    bad = tmp_path / "trunc.tflite"
    bad.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(40))
    args = _parser().parse_args(["--quick", "--models", str(bad), "--out", str(tmp_path / "out"), "--only", "speed",
                                 *peers])
    with pytest.raises(BenchmarkError, match="none of the --models given could be loaded"):
        cli.main(args)
    assert f"not run: {bad}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_peers_alone_exit_1_and_no_data_is_said_as_such(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("benchmarks.subjects.our_subjects", lambda items, cache: ([], []))  # none bundled
    args = _parser().parse_args(["--quick", "--out", str(tmp_path / "out"), "--only", "speed"])
    assert cli.main(args) == 1  # the peers were timed, but nothing of ours was there to compare with them
    assert "no model of ours ran, so nothing was compared" in capsys.readouterr().err
    rows, notes = quality.run_quality([bicubic_subject(2)], None, quick=True)
    assert rows == [] and "no --data given and no shared/data found (set EDGE_ENHANCE_DATA" in notes[0].reason


def test_an_unreadable_peer_file_is_left_out_with_its_reason(tmp_path):
    pytest.importorskip("cv2")
    from benchmarks.subjects import opencv_subjects

    (tmp_path / "ESPCN_x2.pb").write_bytes(b"")
    (tmp_path / "FSRCNN_x2.pb").write_bytes(b"\x0a\x05trunc")
    subs, notes = opencv_subjects(tmp_path, [2])
    assert subs == []
    why = {n.what: n.reason for n in notes}
    assert "ESPCN_x2.pb: unreadable" in why["OpenCV ESPCN x2"] and "FSRCNN_x2.pb: unreadable" in why["OpenCV FSRCNN x2"]
    assert why["OpenCV FSRCNN-small x2"].endswith("not found")


def test_every_shipped_peer_runs_lapsrn_included_and_opencv_says_nothing_on_reading_it(capfd):
    pytest.importorskip("cv2")
    from benchmarks.subjects import opencv_subjects

    folder = SHARED / "peer_models" / "opencv_dnn_superres"
    if not folder.is_dir():
        pytest.skip("../shared/peer_models is not beside the repository")
    subs, notes = opencv_subjects(folder, [2, 3, 4])
    got = {s.label: s for s in subs}
    shipped = {f"OpenCV {p.stem.replace('_', ' ')}" for p in folder.glob("*_x[234].pb")}
    assert set(got) == shipped and "OpenCV LapSRN x2" in got
    assert [n.what for n in notes] == ["OpenCV LapSRN x3"]  # TF-LapSRN has no x3
    # One x2 level: 3x3 1->64, 9 x 3x3 64->64, 4x4 64->4 and 1->4 at LR; x4 runs a second on the x2 image.
    assert got["OpenCV LapSRN x2"].macs_per_out_px * 4 == 336512
    assert got["OpenCV LapSRN x4"].macs_per_out_px * 16 == 5 * 336512
    out = got["OpenCV LapSRN x2"].factory(1)(np.full((12, 10, 3), 128, np.uint8))
    assert out.shape == (24, 20, 3) and abs(int(out.mean()) - 128) < 8
    assert "DepthToSpace" not in capfd.readouterr().err


def test_the_memory_child_gets_an_absolute_model_path(tmp_path, monkeypatch):
    import subprocess

    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"x")
    sub = Subject("m", "m", True, "onnxruntime", "fp32", "sr", 2, None, True, lambda t: None, path="m.onnx")
    seen = []
    monkeypatch.setattr(memory.subprocess, "run",
                        lambda cmd, **kw: seen.append(cmd) or subprocess.CompletedProcess(cmd, 1, "", "stop"))
    memory.run_memory([sub], quick=True, slow=False)
    assert seen and all(cmd[3] == str(tmp_path / "m.onnx") for cmd in seen)


def test_python_m_benchmarks_ctrl_c_is_one_line(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "main", interrupted)
    assert cli.run(["--quick"]) == 130 and capsys.readouterr().err == "bench: interrupted\n"


@pytest.mark.skipif(not (SHARED / "data" / "eval" / "Set5").is_dir(), reason="../shared/data is not beside the repository")
def test_alpha_edges_benchmark_ranks_the_edge_fill_above_premultiplying(capsys, monkeypatch):
    from benchmarks import alpha_edges

    monkeypatch.setenv("EDGE_ENHANCE_DATA", str(SHARED / "data"))
    assert alpha_edges.main(["--set", "Set5", "--images", "1"]) == 0
    got = {line.split("  ")[1].strip(): float(line.split()[-2]) for line in capsys.readouterr().out.splitlines()[1:]}
    assert got["runtime (edge fill)"] > got["premultiplied"] and got["opaque"] >= got["runtime (edge fill)"] - 0.1


def test_a_mistyped_model_stops_bench_before_any_peer_runs(tmp_path, capsys, monkeypatch):
    from benchmarks import quality
    from edge_enhance.cli import main

    monkeypatch.setattr(quality, "run_quality", lambda *a, **k: pytest.fail("peers ran before the typo was said"))
    out = tmp_path / "b"
    assert main(["bench", "--quick", "--only", "quality", "--models", "nosuch", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "nosuch: no such file, folder or bundled model" in err and "nothing was run" in err
    assert not out.exists()  # the folder it would have made is not left behind


@pytest.mark.parametrize("module", ["benchmarks", "benchmarks.soak"])
def test_python_m_benchmarks_prints_any_name_on_a_cp1252_console(module, monkeypatch):
    """Windows: a non-ASCII model name raised UnicodeEncodeError in the report, after the runs."""
    from tests.conftest import cp1252_console, run_as_main

    out = cp1252_console(monkeypatch)
    assert run_as_main(module, monkeypatch, "--help") == 0
    print("м.onnx")
    assert out.buffer.getvalue().endswith(b"\\u043c.onnx\n")


def test_a_tflite_precision_is_read_under_any_name(non_ascii_tflite, narrow_fopen):
    """Windows: TFLite's narrow fopen cannot open модель_日本.tflite; the benchmark reads the bytes."""
    from benchmarks.subjects import tflite_precision

    assert tflite_precision(non_ascii_tflite) == "int8"


def test_the_tiling_section_without_its_engine_is_not_run_with_the_reason(monkeypatch):
    """A bare install (no engine): bench ran every section, then stopped in the tiling section on the missing
    engine, with no report written and none of the "not run" reasons printed."""
    from pathlib import Path

    from edge_enhance import backends, models
    from edge_enhance.errors import BackendUnavailableError

    def missing(*a, **k):
        raise BackendUnavailableError("no TFLite engine installed: pip install 'edge-enhance[litert]'")

    monkeypatch.setattr(backends, "open_backend", missing)
    monkeypatch.setattr("edge_enhance.enhancer.open_backend", missing)
    sub = Subject("sr-x2 LiteRT int8", "sr-x2", True, "litert", "int8", "sr", 2, None, True, lambda t: None,
                  path=str(Path(models.__file__).parent / "sr-x2.int8.tflite"))
    rows, notes = tiling.run_tiling(sub, quick=True)
    assert rows == []
    assert [(n.what, n.reason) for n in notes] == [
        ("tiling sr-x2 LiteRT int8", "no TFLite engine installed: pip install 'edge-enhance[litert]'")]


def test_auto_inputs_benchmark_shows_the_luma_pass_and_the_png_of_a_jpeg(capsys):
    from benchmarks import auto_inputs

    assert auto_inputs.main(["--sets", "Set5", "--images", "1"]) == 0
    rows = {line[:34].strip(): line[34:].split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["noise clean"][:3] == ["inf"] * 3 and rows["noise per channel 25"][4] == "0"  # no luma pass
    luma = rows["noise luma 15"]
    assert float(luma[2]) > float(luma[1]) + 3 and luma[4] == "1"  # before, auto; the luma pass ran
    jpeg = rows["PNG of JPEG q75"]
    assert float(jpeg[2]) > float(jpeg[1]) and jpeg[5:] == ["0", "/", "1"]  # dejpeg now, not before
    assert rows["PNG of JPEG q85 4:2:0"][5:] == ["0", "/", "1"]  # its chroma layout read: subsampled
    assert rows["PNG of JPEG q85 4:4:4"][5:] == ["0", "/", "0"]
    again = rows["JPEG q75 saved again at q95"]  # its tables say 95, its pixels 75
    assert float(again[2]) > float(again[1]) and again[5:] == ["0", "/", "1"]
