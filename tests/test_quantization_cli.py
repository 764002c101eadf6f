"""`edge-enhance quantize` / `edge-enhance prune`: reports, bars, exit codes, nothing written on a miss."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conversion_testkit import residual_sr_model

from conversion.verify import default_dataset

from edge_enhance import cli
from edge_enhance.card import ModelCard

pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed (pip install edge-enhance[litert])")


def _photos(d, n, size, seed):
    d.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        img = np.stack([0.5 + 0.4 * np.sin(5 * xx + k + i) * np.cos(3 * yy - k) for k in range(3)], -1)
        img = np.clip(np.round((img + rng.normal(0, 0.02, img.shape)) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"im{i}.png")
    return d


@pytest.fixture
def setup(tmp_path):
    import onnx

    card = ModelCard(name="t-sr", task="sr", scale=2, receptive_field=7, extra={"psnr": {"Set5": 37.5, "Set14": 33.0},
                                                                                "ssim": {"Set5": 0.95}})
    m = residual_sr_model(np.random.default_rng(3), scale=2, feat=8, card=card)
    path = tmp_path / "m.onnx"
    onnx.save(m, str(path))
    return path, _photos(tmp_path / "calib", 2, (40, 36), 0), _photos(tmp_path / "eval", 2, (24, 20), 1)


def _run(argv, capsys):
    rc = cli.main(argv)
    return rc, capsys.readouterr()


def test_quantize_writes_an_int8_model_and_reports(setup, capsys, tmp_path):
    model, calib, ev = setup
    out = tmp_path / "q.tflite"
    rc, cap = _run(["quantize", str(model), "--calib", str(calib), "--calib-count", "3", "--calib-crop", "16",
                    "--eval", str(ev), "--cle", "off", "--act-eq", "off", "--bias-correction", "off", "-o", str(out), "--json", "-q"],
                   capsys)
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert out.exists() and rep["size_bytes"]["tflite"] == out.stat().st_size
    assert {r["name"] for r in rep["layers"]} >= {"conv1", "conv2", "conv3"}
    assert abs(rep["eval"]["drop_db"]) < 1.0
    from conversion.tflite_writer import tflite_ops

    ops = tflite_ops(out)
    assert ops.count("CONV_2D") == 3 and ops[0] == "QUANTIZE" and ops[-1] == "DEQUANTIZE"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_the_quantised_files_card_carries_its_own_measured_psnr(setup, capsys, tmp_path):
    """Keyed by the folder's name, a 2-image folder named Set5 replaced the source's Set5 figure; no record
    of the calibration was kept."""
    from edge_enhance.backends import read_card

    model, calib, ev = setup
    sub = tmp_path / "sub"
    sub.mkdir()
    ev = ev.rename(sub / "Set5")  # 2 images under Set5's name: not the protocol's 5
    out = tmp_path / "q.tflite"
    rc, cap = _run(["quantize", str(model), "--calib", str(calib), "--calib-count", "3", "--calib-crop", "16",
                    "--calib-seed", "4", "--eval", str(ev), "--rounding", "nearest", "-o", str(out), "--json", "-q"],
                   capsys)
    rep = json.loads(cap.out)
    card = read_card(out)
    assert rep["eval"]["images"] == 2 and rep["eval"]["label"] == "Set5 (2 images)"
    assert card.extra["psnr"] == {"Set5 (2 images)": round(rep["eval"]["int8_psnr"], 3)}
    assert card.extra["psnr_fp32"] == {"Set5": 37.5, "Set14": 33.0,  # the source's, kept
                                       "Set5 (2 images)": round(rep["eval"]["fp32_psnr"], 3)}  # compared on the same
    assert "ssim" not in card.extra and card.extra["ssim_fp32"] == {"Set5": 0.95}  # not measured here: not claimed
    q = card.extra["quantization"]
    assert q["precision"] == "int8" and q["rounding"] == "nearest"
    assert q["calibration"] == {"folder": "calib", "images": 2, "crops": 3, "crop": 16, "seed": 4}
    assert rep["calibration"]["seed"] == 4 and rep["calibration"]["images"] == 2


def test_a_measured_drop_over_the_bar_tightens_the_simulated_one_and_quantises_again(setup, capsys, tmp_path,
                                                                                      monkeypatch):
    from quantization import cli as qcli, quantize as qz
    from quantization.report import Quality

    model, calib, ev = setup
    seen = []
    real = qz.quantize_model

    def spy(*a, **kw):
        seen.append(kw["max_drop"])
        return real(*a, **kw)

    def fake_measure(path, card, ds):  # the source at 30 dB; the first quantised file 0.4 dB under it, then 0.01
        return Quality(30.0 if str(path).endswith(".onnx") else 30.0 - (0.4 if len(seen) == 1 else 0.01), 0.0)
    monkeypatch.setattr(qz, "quantize_model", spy)
    monkeypatch.setattr(qcli, "measure", fake_measure)
    out = tmp_path / "q.tflite"
    rc, cap = _run(["quantize", str(model), "--calib", str(calib), "--calib-count", "3", "--calib-crop", "16",
                    "--eval", str(ev), "--max-drop", "0.2", "--rounding", "nearest", "-o", str(out), "-q"], capsys)
    assert len(seen) == 2 and seen[0] == 0.2 and 0 <= seen[1] < 0.2, seen
    assert rc == 0 and out.exists() and "drop 0.010 dB" in cap.out


@pytest.mark.parametrize("command,extra", [
    ("quantize", ["--cle", "off", "--act-eq", "off", "--bias-correction", "off", "--rounding", "nearest"]),
    ("prune", ["--target-macs", "0.3", "--multiple", "1"]),
])
def test_a_missed_bar_writes_nothing_unless_forced(setup, capsys, tmp_path, command, extra):
    model, calib, ev = setup
    out = tmp_path / ("o.tflite" if command == "quantize" else "o.onnx")
    base = [command, str(model), "--calib", str(calib), "--calib-count", "3", "--calib-crop", "16", "--eval", str(ev),
            "-o", str(out), "--json", "-q", "--max-drop", "0"] + extra
    rc, cap = _run(base, capsys)
    rep = json.loads(cap.out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))  # JSON alone
    missed = rep["bar"]["met"] is False
    assert rc == (1 if missed else 0)
    assert ("bar missed" in cap.err) == missed and "bar missed" not in cap.out
    assert out.exists() == (not missed)
    if missed:
        rc, cap = _run(base + ["--force"], capsys)
        assert rc == 0 and out.exists()


def test_prune_writes_a_smaller_onnx_with_an_updated_card(setup, capsys, tmp_path):
    import onnx

    model, calib, ev = setup
    out = tmp_path / "p.onnx"
    rc, cap = _run(["prune", str(model), "--target-macs", "0.6", "--multiple", "1", "--calib", str(calib),
                    "--calib-count", "3", "--calib-crop", "16", "--eval", str(ev), "-o", str(out), "--json", "-q",
                    "--force"], capsys)
    assert rc == 0, cap.err
    rep = json.loads(cap.out)
    assert rep["macs_per_pixel"]["after"] <= 0.6 * rep["macs_per_pixel"]["before"] + 1e-6
    m = onnx.load(str(out))
    card = json.loads({p.key: p.value for p in m.metadata_props}["edge_enhance.card"])
    assert card["params"] == rep["params"]["after"] < rep["params"]["before"]
    assert card["extra"]["pruned"]["target_macs"] == 0.6
    # The figures are the pruned model's own (the eval set's), the source's kept as psnr_before.
    assert card["extra"]["psnr"] == {"eval (2 images)": round(rep["eval"]["psnr_after"], 3)}
    assert card["extra"]["pruned"]["calibration"] == {"folder": "calib", "images": 2, "crops": 3, "crop": 16, "seed": 0}
    assert card["extra"]["pruned"]["psnr_before"] == {"Set5": 37.5, "Set14": 33.0}
    assert "ssim" not in card["extra"] and card["extra"]["pruned"]["ssim_before"] == {"Set5": 0.95}


@pytest.mark.parametrize("argv,code,msg", [
    (["quantize", "{missing}"], 2, "does not exist"),
    (["quantize", "{model}", "--calib", "{empty}"], 2, "no images"),
    (["quantize", "{model}", "-o", "{tmp}/x.onnx"], 2, ".tflite"),
    (["prune", "{model}", "--target-macs", "0.7", "-o", "{model}"], 2, "overwrite"),
    (["quantize", "{model}", "-o", "{tmp}/adir.tflite"], 2, "adir.tflite: is a folder"),
    (["prune", "{model}", "--target-macs", "0.7", "-o", "{tmp}/adir.onnx"], 2, "adir.onnx: is a folder"),
    (["convert", "{model}", "--to", "tflite", "-o", "{tmp}/adir.tflite"], 2, "adir.tflite: is a folder"),
    (["convert", "{model}", "--to", "onnx", "-o", "{tmp}/adir.onnx"], 2, "adir.onnx: is a folder"),
    (["convert", "{model}", "--to", "onnx", "--tile", "32x32"], 2, "--to onnx keeps the source's input shape"),
    (["quantize", "{model}", "--calib", "{model}"], 2, "is not a folder"),
    (["eval", "{model}", "--dataset", "{model}"], 1, "is not a folder"),
    # quantize / prune keep 1 for a missed --max-drop bar: a model or image they cannot use is bad input (2)
    (["quantize", "{model}", "--calib", "{small}", "--calib-crop", "16"], 2, "is smaller than the 16x16"),
    (["prune", "{model}", "--target-macs", "0.7", "--calib", "{small}", "--calib-crop", "16"], 2, "is smaller than"),
    (["quantize", "{garbage}", "--card-task", "sr"], 2, "garbage.onnx"),
    (["prune", "{garbage}", "--card-task", "sr", "--target-macs", "0.7"], 2, "garbage.onnx"),
    (["quantize", "{unsupported}", "--card-task", "sr"], 2, "unsupported"),
    (["quantize", "{model}", "--eval", "{small}", "--calib", "{calib}", "--calib-count", "2", "--calib-crop", "16",
      "--rounding", "nearest", "--cle", "off", "--act-eq", "off", "--bias-correction", "off", "-o", "{tmp}/q.tflite"],
     2, "no image is large enough"),
])
def test_bad_input_exit_codes(setup, capsys, tmp_path, argv, code, msg):
    from tests.conversion_testkit import h, make_model

    model, calib, ev = setup
    (tmp_path / "empty").mkdir()
    _photos(tmp_path / "small", 2, (12, 12), 4)
    (tmp_path / "garbage.onnx").write_bytes(b"not onnx")
    m = make_model([h.make_node("Sin", ["x"], ["y"], name="wave")], {}, [1, 3, "H", "W"])
    (tmp_path / "unsupported.onnx").write_bytes(m.SerializeToString())
    for d in ("adir.tflite", "adir.onnx"):  # an existing folder where the output would go: never deleted
        (tmp_path / d).mkdir()
        (tmp_path / d / "keep.txt").write_text("mine")
    fill = dict(missing=str(tmp_path / "nope.onnx"), model=str(model), empty=str(tmp_path / "empty"), tmp=str(tmp_path),
                small=str(tmp_path / "small"), garbage=str(tmp_path / "garbage.onnx"), calib=str(calib),
                unsupported=str(tmp_path / "unsupported.onnx"))
    rc, cap = _run([a.format(**fill) for a in argv], capsys)
    assert rc == code and msg in cap.err, cap.err
    assert all((tmp_path / d / "keep.txt").read_text() == "mine" for d in ("adir.tflite", "adir.onnx"))


@pytest.mark.parametrize("command,extra", [("quantize", ["-o", "o.tflite"]), ("prune", ["--target-macs", "0.7"]),
                                           ("convert", ["--to", "tflite"])])
def test_an_already_quantised_qdq_onnx_is_refused_in_one_line(setup, capsys, tmp_path, command, extra):
    """The package's own int8 QDQ ONNX, given back: the error listed 40 unsupported nodes."""
    import onnx
    from tests.conversion_testkit import quantised_graph

    from conversion.onnx_writer import to_onnx

    model, calib, ev = setup
    qdq = to_onnx(quantised_graph(onnx.load(str(model)), np.random.default_rng(0)), tmp_path / "q.onnx",
                  precision="int8")
    rc, cap = _run([command, str(qdq), *[str(tmp_path / a) if a == "o.tflite" else a for a in extra]], capsys)
    assert rc == (1 if command == "convert" else 2)
    assert cap.err.count("\n") == 1 and cap.err.endswith(
        f"{qdq}: already quantised (DequantizeLinear / QuantizeLinear nodes): give the float model (quantize and "
        "convert --precision int8 quantise it)\n"), cap.err


def test_nan_drops_miss_the_bar_and_too_small_images_are_left_out(setup, capsys, tmp_path):
    """4x4 images leave nothing after the SR shave: they are named and left out, and a set of only those is
    refused (it gave NaN PSNR, and a NaN drop passed --max-drop)."""
    model, calib, ev = setup
    tiny = _photos(tmp_path / "tiny", 2, (4, 4), 2)
    rc, cap = _run(["prune", str(model), "--target-macs", "0.6", "--multiple", "1", "--calib", str(calib),
                    "--calib-count", "3", "--calib-crop", "16", "--eval", str(tiny), "--max-drop", "0.1",
                    "-o", str(tmp_path / "p.onnx")], capsys)
    assert rc != 0 and "no image is large enough" in cap.err and not (tmp_path / "p.onnx").exists()
    mixed = _photos(tmp_path / "mixed", 1, (4, 4), 3)
    Image.open(ev / "im0.png").save(mixed / "big.png")
    rc, cap = _run(["eval", str(model), "--dataset", str(mixed), "--json"], capsys)
    assert rc == 0 and [r["name"] for r in json.loads(cap.out)["images"]] == ["big.png"]


def test_bad_target_macs_is_a_usage_error(setup, capsys):
    model, _, _ = setup
    with pytest.raises(SystemExit) as e:
        cli.main(["prune", str(model), "--target-macs", "7"])
    assert e.value.code == 2


@pytest.mark.skipif(not (default_dataset().is_dir() and (default_dataset().parents[1] / "train").is_dir()),
                    reason="shared/data (Set5, train) is not above the repository")
def test_bundled_sr_x2_rt_int16x8_loses_less_than_int8_in_litert(tmp_path, capsys):
    """What `convert --to tflite --precision int16x8` runs, on the bundled model (a small, quick
    calibration; the defaults measure 0.005 vs 0.015 dB), evaluated on Set5 in LiteRT."""
    from edge_enhance.models import bundled
    from tests.test_conversion_e2e import _op_dtypes

    src = next(f for f in bundled()["sr-x2-rt"] if f.suffix == ".onnx")
    drops = {}
    for precision in ("int8", "int16x8"):
        out = tmp_path / f"m.{precision}.tflite"
        rc, cap = _run(["quantize", str(src), "--precision", precision, "--calib-count", "8", "--calib-crop", "64",
                        "--cle", "off", "--act-eq", "off", "--bias-correction", "off", "-o", str(out), "--json", "-q"], capsys)
        assert rc == 0, cap.err
        rep = json.loads(cap.out)
        drops[precision] = rep["eval"]["drop_db"]
        assert rep["eval"][f"{precision}_psnr"] > 35.8  # Set5, fp32 35.92
    assert drops["int16x8"] < drops["int8"]
    assert rep["activations"] == {"int16": {"Conv": 6, "Add": 1}, "int8": {"Concat": 1, "DepthToSpace": 1, "Clip": 1},
                                  "boundaries": 3}
    kinds = {(name, out) for name, out, _ in _op_dtypes(out)}
    assert ("CONV_2D", np.int16) in kinds and ("DEPTH_TO_SPACE", np.int8) in kinds
    assert ("CONV_2D", np.int8) not in kinds


@pytest.mark.parametrize("argv", [["convert", "{model}", "--to", "tflite", "--verify-images", "0"],
                                  ["convert", "{model}", "--to", "tflite", "--verify-images", "-1"],
                                  ["eval", "{model}", "--task", "denoise", "--sigma", "nan"],
                                  ["eval", "{model}", "--task", "denoise", "--sigma", "inf"],
                                  ["prune", "{model}", "--target-macs", "0.7", "--max-drop", "-1"],
                                  ["quantize", "{model}", "--max-drop", "-1"]])
def test_out_of_range_numbers_are_usage_errors(setup, argv):
    model, _, _ = setup
    with pytest.raises(SystemExit) as e:
        cli.main([a.format(model=model) for a in argv])
    assert e.value.code == 2


def test_convert_int8_takes_a_calibration_crop_and_warns_about_few_images(setup, capsys, tmp_path, caplog):
    model, calib, ev = setup  # calib: two 40x36 photos, under the default 96 crop
    out = tmp_path / "c.tflite"
    rc, cap = _run(["convert", str(model), "--to", "tflite", "--precision", "int8", "--calib", str(calib),
                    "--calib-crop", "16", "--dataset", str(ev), "-o", str(out)], capsys)
    assert rc == 0 and out.exists(), cap.err
    assert "calibrating from 2 image(s)" in caplog.text
    assert "--verify-images does not apply" not in caplog.text
    rc, cap = _run(["convert", str(model), "--to", "tflite", "--precision", "int8", "--calib", str(calib),
                    "--calib-crop", "16", "--dataset", str(ev), "-o", str(out), "--verify-images", "1"], capsys)
    assert rc == 0  # an option int8 TFLite does not take is said, not silently dropped
    assert f"--verify-images does not apply to --precision int8 TFLite: `quantize` makes it and evaluates it on " \
           f"the whole {ev}" in caplog.text


@pytest.mark.parametrize("command", ["quantize", "convert"])
def test_d2s_as_transpose_conv_without_a_fixed_size_is_refused_before_calibration(setup, capsys, command, monkeypatch):
    """TRANSPOSE_CONV stores its output shape: without --tile the int8 run failed after 90 s of calibration."""
    from quantization import cli as qcli

    model, calib, ev = setup
    monkeypatch.setattr(qcli, "calibration_for", lambda *a, **k: pytest.fail("calibrated first"))
    extra = ["--to", "tflite", "--precision", "int8"] if command == "convert" else []
    rc, cap = _run([command, str(model), *extra, "--d2s-as-transpose-conv", "--calib", str(calib), "-o",
                    str(ev.parent / "x.tflite")], capsys)
    assert rc == 2 and "--d2s-as-transpose-conv needs a fixed input size" in cap.err and "--tile HxW" in cap.err
    assert not (ev.parent / "x.tflite").exists()


@pytest.mark.parametrize("io", ["uint8", "int8"])
def test_max_drop_with_integer_io_is_refused_before_calibration(setup, capsys, monkeypatch, io):
    """16x8 layers need float I/O: the whole calibration and search ran, then nothing was written."""
    from quantization import cli as qcli

    model, calib, ev = setup
    monkeypatch.setattr(qcli, "calibration_for", lambda *a, **k: pytest.fail("calibrated first"))
    rc, cap = _run(["quantize", str(model), "--max-drop", "0.1", "--io", io, "--calib", str(calib), "-o",
                    str(ev.parent / "x.tflite")], capsys)
    assert rc == 2 and f"--max-drop moves layers to 16x8, and a model with 16x8 layers has float I/O (got --io {io})" \
        in cap.err
    assert not (ev.parent / "x.tflite").exists()


@pytest.mark.parametrize("command", ["quantize", "prune", "convert"])
def test_an_unwritable_output_folder_is_said_before_any_work(setup, capsys, command):
    """/proc/self: a folder no one, root included, can create a file in (permission bits do not stop root;
    an immutable or read-only-mounted folder does)."""
    model, calib, ev = setup
    extra = {"quantize": ["--calib", str(calib)], "prune": ["--target-macs", "0.7"], "convert": ["--to", "tflite"]}
    out = "/proc/self/x." + ("onnx" if command == "prune" else "tflite")
    rc, cap = _run([command, str(model), *extra[command], "-o", out], capsys)
    assert rc == 2 and f"{out}: output folder /proc/self is not writable" in cap.err
    assert "Traceback" not in cap.err and "calibration" not in cap.err


def test_a_lossless_model_loses_nothing_and_json_stays_strict():
    """Flat test images give an infinite PSNR: the drop from inf to inf is 0 (it was NaN, a missed bar),
    and a card or report holding inf is still JSON that strict parsers read."""
    import math

    from edge_enhance.card import ModelCard, strict_json
    from quantization.report import psnr_drop

    assert psnr_drop(math.inf, math.inf) == 0.0 and psnr_drop(math.inf, 30.0) == math.inf
    assert math.isnan(psnr_drop(math.nan, 30.0)) and psnr_drop(31.5, 31.25) == 0.25
    card = ModelCard(name="n", task="sr", scale=2, receptive_field=1, extra={"psnr": {"flat": math.inf}})
    assert json.loads(card.to_json())["extra"]["psnr"] == {"flat": None}
    assert strict_json({"drop_db": math.nan, "x": [math.inf, 1.5]}) == '{"drop_db": null, "x": [null, 1.5]}'


@pytest.mark.parametrize("command, extra, default", [
    ("convert", ["--to", "tflite"], "sr-x2-rt.tflite"),
    ("quantize", [], "sr-x2-rt.int8.tflite"),
    ("prune", ["--target-macs", "0.5"], "sr-x2-rt.pruned50.onnx"),
])
@pytest.mark.parametrize("named", ["bare", "path"])
def test_tools_take_a_bundled_model_by_name_and_write_beside_the_user_not_into_the_package(
        tmp_path, monkeypatch, command, extra, default, named):
    from conversion import cli as ccli
    from edge_enhance.models import MODELS_DIR

    before = sorted(p.name for p in MODELS_DIR.iterdir())
    monkeypatch.chdir(tmp_path)
    seen = {}

    def stop(out, src, *a, **k):  # where the tool would write, then no work
        seen["out"], seen["src"] = Path(out), Path(src)
        raise ccli.ConfigError("stop here")

    monkeypatch.setattr(ccli, "check_output", stop)
    model = "sr-x2-rt" if named == "bare" else str(MODELS_DIR / "sr-x2-rt.onnx")
    assert cli.main([command, model, *extra]) == 2
    assert seen["src"] == MODELS_DIR / "sr-x2-rt.onnx"
    assert seen["out"] == Path(default)  # the current folder: the quantised one would have replaced the bundled file
    assert sorted(p.name for p in MODELS_DIR.iterdir()) == before


@pytest.mark.parametrize("command,extra", [("quantize", []), ("prune", ["--target-macs", "0.6"])])
def test_no_evaluation_set_is_said_before_any_work_naming_eval_and_no_eval(setup, capsys, tmp_path, monkeypatch,
                                                                            command, extra):
    import quantization.prune
    import quantization.quantize

    def work(*a, **k):
        raise AssertionError("quantised / pruned before the evaluation set was found")

    monkeypatch.setattr(quantization.quantize, "quantize_model", work)
    monkeypatch.setattr(quantization.prune, "prune_graph", work)
    monkeypatch.setenv("EDGE_ENHANCE_DATA", str(tmp_path / "no-data"))  # an install without the shared data
    model, calib, _ = setup
    out = ["-o", str(tmp_path / ("o.tflite" if command == "quantize" else "o.onnx"))]
    rc, cap = _run([command, str(model), "--calib", str(calib), "--calib-crop", "16"] + out + extra, capsys)
    assert rc == 2 and "--eval DIR" in cap.err and "--no-eval" in cap.err and "--calib" not in cap.err
    rc, cap = _run([command, str(model), "--calib", str(calib), "--calib-crop", "16", "--eval", str(tmp_path / "nope")] + out
                   + extra, capsys)
    assert rc != 0 and "nope: dataset folder does not exist" in cap.err


def test_prune_no_eval_writes_the_model_and_says_the_bar_was_not_checked(setup, capsys, tmp_path):
    model, calib, _ = setup
    out = tmp_path / "p.onnx"
    rc, cap = _run(["prune", str(model), "--target-macs", "0.6", "--multiple", "1", "--calib", str(calib),
                    "--calib-count", "3", "--calib-crop", "16", "--no-eval", "-o", str(out), "--json", "-q"], capsys)
    assert rc == 0 and out.exists(), cap.err
    rep = json.loads(cap.out)
    assert rep["eval"] is None and rep["bar"]["met"] is None
    rc, cap = _run(["prune", str(model), "--target-macs", "0.6", "--multiple", "1", "--calib", str(calib),
                    "--calib-count", "3", "--calib-crop", "16", "--no-eval", "-o", str(out), "-q"], capsys)
    assert rc == 0 and "--max-drop bar (0.15 dB) was not checked" in cap.out


@pytest.mark.parametrize("module", ["quantization.prune_curve", "quantization.table", "quantization.timing"])
def test_a_tool_run_with_python_m_prints_any_name_on_a_cp1252_console(module, monkeypatch):
    """Windows: a non-ASCII model or output name raised UnicodeEncodeError after the work was done."""
    from tests.conftest import cp1252_console, run_as_main

    out = cp1252_console(monkeypatch)
    assert run_as_main(module, monkeypatch, "--help") == 0
    print("модель_日本.tflite")
    assert out.buffer.getvalue().endswith(b"\\u043c\\u043e\\u0434\\u0435\\u043b\\u044c_\\u65e5\\u672c.tflite\n")


@pytest.mark.parametrize("module,folder", [("prune_curve", "edge-enhance-prune"), ("table", "edge-enhance-quant")])
def test_a_measuring_tool_works_in_the_systems_temporary_folder(tmp_path, monkeypatch, module, folder):
    """Windows: the default --workdir /tmp/... is no temporary folder there (a /tmp at the drive's root)."""
    import importlib
    import tempfile

    from edge_enhance.errors import EdgeEnhanceError

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # what gettempdir() answers: %TEMP% on Windows
    with pytest.raises(EdgeEnhanceError):  # no such model (or no calibration set): after the folder is made
        importlib.import_module(f"quantization.{module}").main([str(tmp_path / "nope.onnx")])
    assert (tmp_path / folder).is_dir()
