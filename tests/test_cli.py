import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from edge_enhance.cli import main  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402


@pytest.fixture
def model(tmp_path):
    p = tmp_path / "m.onnx"
    residual_sr(p)
    return str(p)


def _img(path, size=(12, 9), mode="RGB"):
    Image.new(mode, size, (10, 120, 200) if mode == "RGB" else 100).save(path)
    return path


def test_single_file_to_named_output(tmp_path, model, capsys):
    src = _img(tmp_path / "a.png")
    assert main(["enhance", str(src), "-o", str(tmp_path / "b.png"), "--model", model]) == 0
    assert Image.open(tmp_path / "b.png").size == (24, 18)


def test_bare_file_argument_means_enhance_and_default_name(tmp_path, model):
    src = _img(tmp_path / "photo.jpg")
    assert main([str(src), "--model", model, "-q"]) == 0
    assert (tmp_path / "photo.m.jpg").exists()


def test_shorthand_with_enhance_options_before_the_file(tmp_path, model, capsys):
    """`edge-enhance --model M photo.jpg`: an enhance option first still means `enhance`."""
    src = _img(tmp_path / "photo.jpg")
    assert main(["--model", model, "-q", str(src)]) == 0
    assert (tmp_path / "photo.m.jpg").exists()
    assert main(["-v", "--strength", "0.5", "-o", str(tmp_path / "half.png"), "--model", model, str(src)]) == 0
    assert Image.open(tmp_path / "half.png").size == (24, 18)


def test_several_inputs_to_a_file_name_are_refused(tmp_path, model, capsys):
    """A folder / several inputs with `-o x.png` is an error naming it, not a folder called x.png or a traceback."""
    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    (tmp_path / "taken.png").write_bytes(b"keep")
    assert main([str(a), str(b), "-o", str(tmp_path / "new.png"), "--model", model]) == 2
    assert "new.png: a folder or several inputs need an output folder, and this is an image file name" in \
        capsys.readouterr().err and not (tmp_path / "new.png").exists()
    assert main([str(tmp_path), "-o", str(tmp_path / "taken.png"), "--model", model]) == 2
    assert "taken.png: a folder or several inputs need an output folder, and this is an existing file" in \
        capsys.readouterr().err and (tmp_path / "taken.png").read_bytes() == b"keep"
    (tmp_path / "file").write_bytes(b"")
    assert main([str(a), str(b), "-o", str(tmp_path / "file" / "sub"), "--model", model]) == 1
    assert "sub: cannot create the output folder" in capsys.readouterr().err


def test_version(capsys):
    from edge_enhance import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"edge-enhance {__version__}"


def _models_into_a_dead_end(pair):
    """`edge-enhance models` with stdout on the writing end of ``pair`` (read end, write end), whose
    other end is closed before it writes."""
    far, near = pair
    os.close(far)
    try:
        return subprocess.run([sys.executable, "-m", "edge_enhance.cli", "models"], stdout=near,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(near)


def test_closed_stdout_pipe_ends_quietly():
    """`edge-enhance models | head`: the reader has gone; exit 141 with no traceback."""
    p = _models_into_a_dead_end(os.pipe())
    assert p.returncode == 141, p.stderr
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_a_stdout_reader_that_left_is_told_by_windows_einval(monkeypatch):
    """Windows reports a closed pipe on stdout as OSError(EINVAL) (cpython#79935): a traceback, not exit 141."""
    import errno
    import io

    from edge_enhance import cli

    class Gone(io.StringIO):
        def flush(self):
            raise OSError(errno.EINVAL, "Invalid argument")

    e = OSError(errno.EINVAL, "Invalid argument")
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        m.setattr(sys, "stdout", Gone())
        assert cli._reader_left(e)
        m.setattr(sys, "stdout", io.StringIO())
        assert not cli._reader_left(e)  # another EINVAL (a name Windows refuses) with stdout fine: raised
    monkeypatch.setattr(sys, "stdout", Gone())
    assert not cli._reader_left(e)  # elsewhere EINVAL says no such thing


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
def test_a_terminal_that_hung_up_ends_quietly():
    """The SSH session closed: writing to its terminal fails with EIO. Exit as a hangup (129), with no
    traceback (there is no one to read one)."""
    p = _models_into_a_dead_end(os.openpty())  # (master, slave): the terminal hangs up first
    assert p.returncode == 129, p.stderr
    assert p.stderr == ""


@pytest.mark.parametrize("closed", ["1", "2"])
def test_a_closed_stdout_or_stderr_does_not_fail_the_batch(tmp_path, model, closed):
    """Daemons and cron may start a command with fd 1 or 2 closed: the photo is written, exit 0, and no
    line meant for the terminal lands in it."""
    _img(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    p = subprocess.run(["sh", "-c", f'exec "$0" -m edge_enhance.cli enhance "$1" -o "$2" --model "$3" {closed}>&-',
                        sys.executable, str(tmp_path / "a.png"), str(out), model], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    (written,) = out.iterdir()
    with Image.open(written) as im:
        im.load()  # a whole PNG: no stray text inside
        assert im.size == (24, 18)


def test_batch_with_a_bad_file_goes_on_and_exits_1(tmp_path, model, capsys):
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    _img(d / "a.png")
    _img(d / "sub" / "c.png")
    (d / "b.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    rc = main(["enhance", str(d), "-r", "-o", str(out), "--model", model, "--json"])
    assert rc == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 2 and summary["failed"] == 1
    bad = [f for f in summary["files"] if f["status"] == "failed"][0]
    assert bad["input"].endswith("b.jpg") and "not an image" in bad["error"]
    assert (out / "a.png").exists() and (out / "sub" / "c.png").exists() and not (out / "b.jpg").exists()


def test_skip_existing_resumes(tmp_path, model, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for n in "abc":
        _img(d / f"{n}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").write_bytes(b"done before")
    assert main(["enhance", str(d), "-o", str(out), "--model", model, "--skip-existing", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ok"], s["skipped"]) == (2, 1) and (out / "a.png").read_bytes() == b"done before"


def test_format_changes_extension_not_appends(tmp_path, model):
    src = _img(tmp_path / "x.jpg")
    assert main(["enhance", str(src), "--model", model, "--format", "png", "-q"]) == 0
    assert (tmp_path / "x.m.png").exists() and not list(tmp_path.glob("*.jpg.png"))


def test_colliding_outputs_are_refused(tmp_path, model, capsys):
    a, b = _img(tmp_path / "x.jpg"), _img(tmp_path / "x.png")
    rc = main(["enhance", str(a), str(b), "-o", str(tmp_path / "o"), "--format", "png", "--model", model, "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 1 and s["ok"] == 1 and "collide" in [f for f in s["files"] if f["status"] == "failed"][0]["error"]


def test_outputs_differing_only_in_case_are_refused_as_colliding(tmp_path, model, capsys):
    """On macOS's and Windows' disks out/Photo.png and out/photo.png are one file: the second replaced the first
    while the summary said 2 enhanced."""
    (tmp_path / "d1").mkdir(), (tmp_path / "d2").mkdir()
    a, b = _img(tmp_path / "d1" / "Photo.png"), _img(tmp_path / "d2" / "photo.png")
    rc = main(["enhance", str(a), str(b), "-o", str(tmp_path / "out"), "--model", model, "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 1 and s["ok"] == 1
    assert "would collide with the output of" in [f for f in s["files"] if f["status"] == "failed"][0]["error"]


def test_an_output_folder_may_end_in_either_separator_on_windows(tmp_path, monkeypatch):
    """Windows: `-o results/` (a forward slash) named a file called results."""
    from pathlib import Path

    from edge_enhance.cli import plan_outputs

    monkeypatch.chdir(tmp_path)
    with monkeypatch.context() as m:
        m.setattr(os, "sep", "\\")
        m.setattr(os, "altsep", "/")
        jobs = plan_outputs([(Path("a.png"), None)], "results/", None, "m", single=True)
    assert jobs[0].dst == Path("results") / "a.png"


def test_never_overwrites_input(tmp_path, model, capsys):
    src = _img(tmp_path / "a.png")
    before = src.read_bytes()
    assert main(["enhance", str(src), "-o", str(src), "--model", model]) == 1
    assert "would overwrite the input" in capsys.readouterr().err and src.read_bytes() == before


@pytest.mark.parametrize("order", ["nested first", "folder first"])
def test_an_output_never_lands_on_another_input(tmp_path, model, capsys, order):
    # album/rescans/x.png -> album/x.png would destroy album/x.png, itself an input of the same run
    (tmp_path / "album" / "rescans").mkdir(parents=True)
    outer, inner = _img(tmp_path / "album" / "x.png"), _img(tmp_path / "album" / "rescans" / "x.png", size=(8, 8))
    before = {p: p.read_bytes() for p in (outer, inner)}
    srcs = [str(inner), str(outer)] if order == "nested first" else [str(outer), str(inner)]
    assert main(["enhance", *srcs, "-o", str(tmp_path / "album"), "--model", model]) == 1
    assert "another input of this run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (outer, inner)} == before


@pytest.mark.parametrize("argv", [["enhance", "x.png", "--model", "nope"], ["enhance", "x.png", "--model", "plain.onnx"],
                                  ["preview", "--model", "nope", "--source", "synthetic:16x16", "--sink", "null"]])
def test_a_model_that_cannot_be_used_as_given_exits_2(argv, tmp_path, monkeypatch, capsys):
    """An unknown name or a card-less model without --card-task exited 1, so the Pi unit (RestartPreventExitStatus=2)
    restarted a typo every 5 s for ever."""
    from tests.onnx_models import residual_sr

    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "x.png")
    residual_sr(tmp_path / "plain.onnx", card={})
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no such model file and no bundled model of that name" in err or "pass --card-task" in err


@pytest.mark.parametrize("argv,code", [
    (["enhance", "x.png", "--strength", "3"], 2),
    (["enhance", "x.png", "--tile", "abc"], 2),
    (["enhance"], 2),
    (["info", "/nonexistent/model.onnx"], 2),  # a model that is not there: an option to change, nothing ran
])
def test_usage_and_error_exit_codes(argv, code, tmp_path, model, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "x.png")
    try:
        rc = main(argv + (["--model", model] if argv[0] == "enhance" and len(argv) > 1 else []))
    except SystemExit as e:
        rc = e.code
    assert rc == code


def test_info_prints_card_and_sha(model, capsys):
    assert main(["info", model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "onnxruntime" and info["scale"] == 2 and len(info["sha256"]) == 64


def test_info_of_a_card_less_model_says_what_the_graph_gives_and_how_to_add_a_card(tmp_path, capsys):
    from tests.onnx_models import residual_sr

    residual_sr(tmp_path / "bare.onnx", scale=3, layers=2, colours=1, card={})
    assert main(["info", str(tmp_path / "bare.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["card"] is None
    assert info["read off the graph"] == {"scale": 3, "receptive_field": 7, "align": 1, "colour": "y"}
    assert "--card-task TASK, or write a card in: edge-enhance convert bare.onnx" in info["hint"]
    assert main(["info", str(tmp_path / "bare.onnx")]) == 0
    assert "card: none" in capsys.readouterr().out


def test_a_missing_optional_package_names_its_extra_not_a_traceback(tmp_path, capsys, monkeypatch):
    residual_sr(tmp_path / "bare.onnx", layers=2, card={})
    residual_sr(tmp_path / "m.onnx", layers=2)
    monkeypatch.setitem(sys.modules, "onnx", None)  # as on an install without the convert extra
    assert main(["info", str(tmp_path / "bare.onnx"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["graph not read"] == (
        "onnx is not installed: pip install 'edge-enhance[convert]'")
    assert main(["convert", str(tmp_path / "m.onnx"), "--to", "tflite", "-o", str(tmp_path / "m.tflite")]) == 1
    assert capsys.readouterr().err.strip() == "edge-enhance: error: onnx is not installed: pip install 'edge-enhance[convert]'"
    assert not (tmp_path / "m.tflite").exists()


def test_unknown_model_file(tmp_path, capsys):
    bogus = tmp_path / "model.tflite"
    bogus.write_bytes(np.random.default_rng(0).bytes(300))
    _img(tmp_path / "a.png")
    assert main(["enhance", str(tmp_path / "a.png"), "--model", str(bogus)]) == 1
    err = capsys.readouterr().err
    assert str(bogus) in err and "not a model" in err


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])  # SIGHUP: the SSH session closing
def test_a_stop_signal_mid_batch_leaves_no_partial_output(tmp_path, model, sig):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(40):
        _img(d / f"{i:02d}.png", size=(160, 120))
    out = tmp_path / "out"
    code = (
        "import os, signal, sys\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"  # as a terminal starts it, even if these tests run under nohup
        "from edge_enhance import enhancer\n"
        "orig = enhancer.Enhancer.enhance_rgb\n"
        "n = [0]\n"
        "def run(self, *a, **k):\n"
        "    n[0] += 1\n"
        f"    if n[0] == 3: os.kill(os.getpid(), signal.{sig})\n"
        "    return orig(self, *a, **k)\n"
        "enhancer.Enhancer.enhance_rgb = run\n"
        "from edge_enhance.cli import main\n"
        f"sys.exit(main(['enhance', {str(d)!r}, '-o', {str(out)!r}, '--model', {model!r}, '--json']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, r.stderr
    s = json.loads(r.stdout)
    assert s["interrupted"] and s["ok"] == 2
    written = sorted(p.name for p in out.iterdir())
    assert written == ["00.png", "01.png"]  # no partial or temporary files
    if sig != "SIGTERM":
        return
    r2 = subprocess.run([sys.executable, "-m", "edge_enhance.cli", "enhance", str(d), "-o", str(out), "--model", model,
                         "--skip-existing", "--json"], capture_output=True, text=True, timeout=300)
    s2 = json.loads(r2.stdout)
    assert r2.returncode == 0 and s2["skipped"] == 2 and s2["ok"] == 38


def test_quiet_still_names_failures_once(tmp_path, model, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    assert main(["enhance", str(bad), "-o", str(tmp_path / "o.png"), "--model", model, "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count(str(bad)) == 1 and "not an image" in err


def test_number_argtype_bounds_and_messages():
    import argparse

    from edge_enhance.argtypes import number

    assert number(int, lo=1)("3") == 3
    assert number(float, 0, 1.5)("1.5") == 1.5
    for parse, text, msg in [(number(int, lo=1), "0", "'0' must be >= 1"),
                             (number(int, lo=1), "2.5", "'2.5' is not an integer"),
                             (number(float, 0, 1.5), "nan", "'nan' must be in 0..1.5"),
                             (number(float, lo=0, unit="dB"), "x", "'x' is not a number of dB")]:
        with pytest.raises(argparse.ArgumentTypeError, match=msg):
            parse(text)


def test_verbose_flag_before_or_after_the_command(capsys):
    """`edge-enhance -v models`, `edge-enhance models -v` and `edge-enhance -v photo.jpg` all parse."""
    from edge_enhance.cli import build_parser

    assert main(["-v", "models", "--json"]) == 0
    assert main(["models", "-v", "--json"]) == 0
    args = build_parser("bench").parse_args(["-v", "bench", "--quick", "-v"])
    assert args.command == "bench" and args.quick and args.verbose == 1
    assert main(["-v", "missing-photo.jpg"]) == 1  # the bare-file shorthand still applies after an option
    assert "missing-photo.jpg" in capsys.readouterr().err
    import logging

    assert main(["-vv", "models", "--json"]) == 0  # our debug log, not Pillow's chunk-by-chunk one
    assert logging.getLogger("PIL").getEffectiveLevel() == logging.INFO


def test_cardless_half_res_model_with_card_align(tmp_path):
    from tests.onnx_models import half_res_denoise

    p = tmp_path / "bare-half.onnx"
    half_res_denoise(p, card={})
    src = _img(tmp_path / "odd.png", size=(13, 9))
    card = ["--card-task", "denoise", "--card-scale", "1", "--card-receptive-field", "17"]
    assert main(["enhance", str(src), "-o", str(tmp_path / "out.png"), "--model", str(p), "--tile", "19",
                 *card, "--card-align", "2", "-q"]) == 0
    assert Image.open(tmp_path / "out.png").size == (13, 9)
    # a wrong one feeds the model odd sizes and fails, naming the file
    assert main(["enhance", str(src), "-o", str(tmp_path / "bad.png"), "--model", str(p), *card, "--card-align", "1",
                 "-q"]) == 1
    assert not (tmp_path / "bad.png").exists()
    # --card-task alone: scale, receptive field and align (2) are read off the ONNX graph
    assert main(["enhance", str(src), "-o", str(tmp_path / "auto.png"), "--model", str(p), "--tile", "19",
                 "--card-task", "denoise", "-q"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "auto.png")), np.asarray(Image.open(tmp_path / "out.png")))


def test_card_task_alone_needs_the_rest_where_no_graph_can_be_read(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from conversion.onnx_import import from_onnx
    from conversion.tflite_writer import to_tflite
    from tests.onnx_models import residual_sr

    residual_sr(tmp_path / "bare.onnx", scale=2, card={})
    to_tflite(from_onnx(str(tmp_path / "bare.onnx")), tmp_path / "bare.tflite")
    src = _img(tmp_path / "a.png", size=(12, 10))
    assert main(["enhance", str(src), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "bare.tflite"),
                 "--card-task", "sr", "-q"]) != 0
    assert "needs --card-scale and --card-receptive-field too; they could not be read off its graph (only an .onnx" \
        in capsys.readouterr().err
    assert main(["enhance", str(src), "-o", str(tmp_path / "o.png"), "--model", str(tmp_path / "bare.tflite"),
                 "--card-task", "sr", "--card-scale", "2", "--card-receptive-field", "9", "-q"]) == 0
    assert Image.open(tmp_path / "o.png").size == (24, 20)


def test_enhance_tta_runs_the_8_turns_and_says_so(tmp_path, model, capsys):
    src = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (9, 12, 3), dtype=np.uint8)).save(src)
    outs, runs = [], []
    for extra in ([], ["--tta"]):
        dst = tmp_path / f"b{len(extra)}.png"
        assert main(["enhance", str(src), "-o", str(dst), "--model", model, "--json", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out)["files"][0])
        outs.append(np.asarray(Image.open(dst)))
    assert [r["passes"] for r in runs] == [1, 8]
    assert outs[0].shape == outs[1].shape == (18, 24, 3) and not np.array_equal(*outs)


def test_unknown_format_fails_once_before_any_file(tmp_path, model, capsys):
    a, b = _img(tmp_path / "a.png"), _img(tmp_path / "b.png")
    assert main([str(a), str(b), "--format", "heic", "-o", str(tmp_path / "o"), "--model", model]) == 2
    assert "unknown output format 'HEIC'" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_rerun_over_a_folder_leaves_its_own_outputs_out(tmp_path, model, capsys):
    d = tmp_path / "in"
    d.mkdir()
    _img(d / "a.png"), _img(d / "b.jpg")
    assert main(["enhance", str(d), "--model", model, "-q"]) == 0
    assert sorted(p.name for p in d.iterdir()) == ["a.m.png", "a.png", "b.jpg", "b.m.jpg"]
    assert main(["enhance", str(d), "--model", model, "--skip-existing", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ok"], s["skipped"]) == (0, 2) and len(list(d.iterdir())) == 4  # no a.m.m.png
    (d / "c.m.png").write_bytes((d / "a.png").read_bytes())  # a file that only looks like an output is kept
    assert main(["enhance", str(d), "--model", model, "--skip-existing", "-q"]) == 0
    assert (d / "c.m.m.png").exists()


def test_a_folder_run_leaves_out_another_bundled_models_outputs(tmp_path, model, capsys):
    """After `--model sr-x2` (or --mode denoise) on a folder, a run with another model does not take
    photo.sr-x2.png for a photo of its own; named on the command line, it runs."""
    d = tmp_path / "in"
    d.mkdir()
    _img(d / "a.png")
    for tag in ("sr-x2", "denoise", "auto-x2", "sr-x2-rt"):
        (d / f"a.{tag}.png").write_bytes((d / "a.png").read_bytes())
    assert main(["enhance", str(d), "--model", model, "--json"]) == 0
    assert [f["input"] for f in json.loads(capsys.readouterr().out)["files"]] == [str(d / "a.png")]
    assert main(["enhance", str(d / "a.sr-x2.png"), "--model", model, "-q"]) == 0
    assert (d / "a.sr-x2.m.png").exists()


def test_the_same_file_twice_runs_once(tmp_path, model, capsys):
    src = _img(tmp_path / "a.png")
    assert main(["enhance", str(src), str(tmp_path / "." / "a.png"), str(tmp_path), "--model", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] == 1
    # Two names given: -o is still a folder, though they are one file.
    assert main(["enhance", str(src), str(src), "-o", str(tmp_path / "dup"), "--model", model, "-q"]) == 0
    assert (tmp_path / "dup" / "a.png").exists()


def test_an_output_folder_that_cannot_be_made_fails_that_file_and_the_batch_goes_on(tmp_path, model, capsys):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    _img(tree / "a" / "b" / "x.png"), _img(tree / "z.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a file where a folder should go")
    assert main(["enhance", str(tree), "-r", "-o", str(out), "--model", model]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "cannot create the output folder" in err and "Traceback" not in err
    assert (out / "z.png").exists()
    blocker = tmp_path / "afile"
    blocker.write_text("")
    assert main(["enhance", str(_img(tmp_path / "y.png")), "-o", str(blocker / "y.png"), "--model", model]) == 1
    assert "cannot create the output folder" in capsys.readouterr().err


def test_format_contradicting_the_output_name_is_refused(tmp_path, model, capsys):
    src = _img(tmp_path / "a.png")
    assert main(["enhance", str(src), "-o", str(tmp_path / "y.png"), "--format", "jpg", "--model", model]) == 2
    assert "--format says JPEG" in capsys.readouterr().err and not (tmp_path / "y.png").exists()


def test_a_name_the_console_cannot_encode_does_not_stop_the_batch(tmp_path, model):
    d = tmp_path / "in"
    d.mkdir()
    _img(d / "写真.png"), _img(d / "z.png")
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    r = subprocess.run([sys.executable, "-m", "edge_enhance.cli", "enhance", str(d), "-o", str(tmp_path / "o"),
                        "--model", model], capture_output=True, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "o" / "写真.png").exists() and (tmp_path / "o" / "z.png").exists()


def test_a_graph_the_converter_cannot_read_is_named_with_its_reason(tmp_path, capsys):
    from tests.conversion_testkit import h, make_model

    m = make_model([h.make_node("Slice", ["x", "s", "e", "a"], ["y"], name="split")],
                   {"s": np.array([0], np.int64), "e": np.array([2], np.int64), "a": np.array([2], np.int64)},
                   [1, 3, "H", "W"])
    (tmp_path / "slice.onnx").write_bytes(m.SerializeToString())
    assert main(["info", str(tmp_path / "slice.onnx"), "--json"]) == 0
    assert "split (Slice: only step-1 slices of the channel axis" in json.loads(capsys.readouterr().out)["graph not read"]
    src = _img(tmp_path / "a.png")
    assert main(["enhance", str(src), "--model", str(tmp_path / "slice.onnx"), "--card-task", "sr"]) == 2
    assert "could not be read off its graph (1 unsupported node(s): split (Slice: only step-1" in capsys.readouterr().err


def test_an_engine_that_cannot_run_the_file_says_which_can(tmp_path, model, capsys):
    src = _img(tmp_path / "a.png")
    assert main(["enhance", str(src), "--model", model, "--engine", "coreml"]) == 2
    assert "--engine coreml cannot run it: the file is ONNX, which the onnxruntime engine runs" \
        in capsys.readouterr().err


def test_a_file_or_folder_named_like_a_bundled_model_does_not_replace_it(tmp_path, monkeypatch, model, caplog):
    pytest.importorskip("ai_edge_litert")
    import shutil

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sr-x2").mkdir()  # left by an earlier `-o sr-x2/`
    shutil.copy(model, tmp_path / "denoise")  # an x2 test net under a bundled name
    src = _img(tmp_path / "a.png", size=(12, 9))
    assert main(["enhance", "a.png", "-o", "o.png", "-q"]) == 0
    assert Image.open("o.png").size == (24, 18)
    assert main(["enhance", "a.png", "--mode", "denoise", "-o", "d.png", "-q"]) == 0
    assert Image.open("d.png").size == (12, 9)  # the bundled denoiser, not the local x2 file
    assert "the bundled model is used, not the file of that name here (write ./denoise" in caplog.text
    assert main(["enhance", str(src), "--model", "./denoise", "-o", "l.png", "-q"]) == 0
    assert Image.open("l.png").size == (24, 18)  # ./ names the local file


def test_the_bundled_fp32_file_is_reachable_by_engine_or_by_its_file_name(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ai_edge_litert")
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.models import MODELS_DIR, resolve

    monkeypatch.chdir(tmp_path)
    assert Enhancer("sr-x2", engine="onnxruntime").path == MODELS_DIR / "sr-x2.onnx"
    assert Enhancer("sr-x2", engine="litert").path == MODELS_DIR / "sr-x2.int8.tflite"
    assert resolve("sr-x2.onnx") == MODELS_DIR / "sr-x2.onnx"
    src = np.array(Image.open(_img(tmp_path / "a.png", size=(12, 9))).convert("RGB"))
    assert main(["enhance", "a.png", "--model", "sr-x2.onnx", "-o", "o.png", "-q"]) == 0
    out = np.array(Image.open("o.png"))
    assert np.array_equal(out, Enhancer(MODELS_DIR / "sr-x2.onnx").enhance(src))
    assert not np.array_equal(out, Enhancer(MODELS_DIR / "sr-x2.int8.tflite").enhance(src))
    (tmp_path / "sr-x2.onnx").write_bytes(b"mine")  # a file of that name here is the one meant
    assert str(resolve("sr-x2.onnx")) == "sr-x2.onnx"


def test_python_m_edge_enhance_is_the_command_and_the_demo_takes_help(tmp_path, capsys, monkeypatch):
    from edge_enhance import demo

    p = subprocess.run([sys.executable, "-m", "edge_enhance", "--version"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith("edge-enhance ")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        demo.main(["--help"])
    assert e.value.code == 0 and "out_dir" in capsys.readouterr().out and not any(tmp_path.iterdir())
    (tmp_path / "f").write_text("x")
    assert demo.main([str(tmp_path / "f" / "sub")]) == 1
    assert "cannot make the output folder" in capsys.readouterr().err


def test_an_output_too_large_for_its_format_fails_that_file_before_the_model_and_the_batch_goes_on(tmp_path, model,
                                                                                                  capsys):
    (tmp_path / "in").mkdir()
    _img(tmp_path / "in" / "a.png", size=(8200, 4))  # x2: 16400 wide, over WebP's 16383
    _img(tmp_path / "in" / "b.png")
    assert main(["enhance", str(tmp_path / "in"), "--model", model, "--format", "webp", "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "a.webp: a 16400x8 output exceeds WEBP's limit of 16383 pixels a side; write PNG or TIFF" in err
    assert "Traceback" not in err and sorted(p.name for p in (tmp_path / "o").iterdir()) == ["b.webp"]


def test_an_encoder_refusal_is_an_output_error(tmp_path):
    from edge_enhance.errors import OutputError
    from edge_enhance.imageio import Photo, save_image

    photo = Photo(np.zeros((4, 17000, 3), np.uint8), None, False)  # past the size check: straight to the encoder
    with pytest.raises(OutputError, match=r"x\.webp: cannot write \(.*WebP"):
        save_image(photo, tmp_path / "x.webp")
    assert list(tmp_path.iterdir()) == []


def test_sighup_is_left_alone_under_nohup():
    import signal

    from edge_enhance.cli import stop_signals

    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP here")
    old = signal.getsignal(signal.SIGHUP)
    try:
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        assert stop_signals() == [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup edge-enhance ...` starts it
        assert stop_signals() == [signal.SIGINT, signal.SIGTERM]
    finally:
        signal.signal(signal.SIGHUP, old)


def test_ctrl_c_before_the_command_runs_is_said_not_a_traceback(monkeypatch, capsys):
    from edge_enhance import cli

    def interrupted(*a, **k):  # Ctrl-C while the parser is built (imports), the first ~0.2 s
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        rc = cli.main(["models"])
    except KeyboardInterrupt:  # would stop pytest itself
        pytest.fail("KeyboardInterrupt escaped main()")
    assert rc == 130
    assert capsys.readouterr().err == "edge-enhance: interrupted\n"


@pytest.mark.parametrize("term", ["xterm", "dumb"])
def test_the_progress_line_uses_cursor_control_only_where_the_terminal_has_it(monkeypatch, capsys, term):
    from edge_enhance.cli import Progress

    monkeypatch.setenv("TERM", term)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    p = Progress(2, True)
    p.file(0, "a-long-name.png")
    p.tiles(1, 2)
    p.file(1, "b.png")
    p.clear()
    err = capsys.readouterr().err
    assert ("\033" in err) == (term != "dumb")
    if term == "dumb":  # each line padded over the one before, then blanked
        lines = err.split("\r")[1:]
        assert lines[2].startswith("[2/2] b.png") and len(lines[2]) == len(lines[1]) and lines[-2].strip() == ""


def test_the_progress_line_says_saving_once_the_last_tile_is_done(monkeypatch, capsys):
    """A 48 MP PNG sat at '100%  ETA 0:00' for 21 s of encoding, 82% of the run."""
    from edge_enhance.cli import Progress

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    p = Progress(1, True)
    p.file(0, "big.png")
    p.tiles(3, 4)
    assert " 75%  ETA " in capsys.readouterr().err
    p.tiles(4, 4)
    err = capsys.readouterr().err
    assert err.endswith("big.png  saving") and "100%" not in err


def test_progress_into_a_log_is_a_plain_line_every_half_minute(monkeypatch, capsys):
    """stderr a file (ssh ... 2>log, a systemd journal): no CR / escape codes, one line per LOG_EVERY s."""
    from edge_enhance import cli

    clock = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    p = cli.Progress(2, True)
    p.file(0, "big.png")
    said = []
    for t, done in ((10, 1), (31, 2), (40, 3), (70, 4)):
        clock[0] = 100.0 + t
        p.tiles(done, 4)
        said.append(capsys.readouterr().err)
    p.clear()
    clock[0] = 161.0
    p.file(1, "next.png")  # 30 s after the last line: the next file's start is said
    assert said == ["", "[1/2] big.png   50%  ETA 1:33\n", "", ""]  # 'saving' is not logged
    assert capsys.readouterr().err == "[2/2] next.png    0%  ETA 1:01\n"
    quiet = cli.Progress(1, False)
    clock[0] = 1000.0
    quiet.tiles(1, 2)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("terminal", [None, "Windows Terminal"])
def test_the_progress_line_on_windows_uses_cursor_control_only_in_windows_terminal(monkeypatch, capsys, terminal):
    """The classic Windows console shows ESC [K as a literal ←[K; Windows Terminal (WT_SESSION) takes it."""
    from edge_enhance.cli import Progress

    monkeypatch.delenv("TERM", raising=False)
    if terminal:
        monkeypatch.setenv("WT_SESSION", "1")
    else:
        monkeypatch.delenv("WT_SESSION", raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        p = Progress(2, True)
    p.file(0, "a.png")
    p.clear()
    assert ("\033" in capsys.readouterr().err) == bool(terminal)


def test_a_file_cut_by_ctrl_c_is_said_interrupted_not_failed(tmp_path, model, capsys, monkeypatch):
    from edge_enhance import enhancer

    for i in range(3):
        _img(tmp_path / f"{i}.png")
    orig, calls = enhancer.Enhancer.enhance_file, []

    def stop_at_second(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return orig(self, *a, **k)

    monkeypatch.setattr(enhancer.Enhancer, "enhance_file", stop_at_second)
    rc = main(["enhance", *(str(tmp_path / f"{i}.png") for i in range(3)), "-o", str(tmp_path / "out"),
               "--model", model])
    err = capsys.readouterr().err
    assert rc == 130 and "INTERRUPTED" in err and "1.png: stopped by the user" in err and "FAILED" not in err


def test_the_first_ctrl_c_is_answered_at_once_and_the_file_being_saved_is_finished(tmp_path, model, caplog,
                                                                                    monkeypatch):
    """A first Ctrl-C during a long save was met with silence until the save ended."""
    import os
    import signal

    from edge_enhance import imageio

    for i in range(2):
        _img(tmp_path / f"{i}.png")
    orig = imageio.save_image

    def ctrl_c_while_saving(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        assert "stopping: a file being saved is finished first" in caplog.text  # before the save ends
        return orig(*a, **k)

    monkeypatch.setattr(imageio, "save_image", ctrl_c_while_saving)
    rc = main(["enhance", str(tmp_path / "0.png"), str(tmp_path / "1.png"), "-o", str(tmp_path / "out"),
               "--model", model])
    assert rc == 130 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0.png"]


@pytest.mark.parametrize("argv", [["enhance", "x.png", "--quality", "500"], ["eval", "sr-x2"], ["models", "--bogus"]])
def test_an_option_error_answers_a_json_caller_on_stdout(capsys, argv):
    """Errors found after parsing came back as {"error", "exit"} on stdout; argparse's own gave nothing."""
    with pytest.raises(SystemExit) as e:
        main(argv + ["--json"])
    cap = capsys.readouterr()
    assert e.value.code == 2 and json.loads(cap.out)["exit"] == 2
    prog, message = json.loads(cap.out)["error"].split(": ", 1)
    assert f"{prog}: error: {message}" in cap.err
    with pytest.raises(SystemExit):
        main(argv)
    assert capsys.readouterr().out == ""  # without --json: the usage and message on stderr only


def test_control_characters_in_names_and_cards_are_shown_escaped_not_sent_to_the_terminal(tmp_path, capsys):
    """ESC sequences in a file name or a model card retitled / cleared the terminal that printed them."""
    evil = "a\x1b]0;PWNED\x07\x1b[2J\r"
    src = tmp_path / f"{evil}.png"
    _img(src)
    m = tmp_path / "m.onnx"
    residual_sr(m, name=f"n{evil}")
    rc = main(["enhance", str(src), "-o", str(tmp_path / "out.png"), "--model", str(m)])
    (tmp_path / f"{evil}.jpg").write_bytes(b"not a photo")
    rc2 = main(["enhance", str(tmp_path / f"{evil}.jpg"), "--model", str(m)])
    rc3 = main(["info", str(m)])
    io = capsys.readouterr()
    assert (rc, rc2, rc3) == (0, 1, 0)
    assert "a\\x1b]0;PWNED\\x07\\x1b[2J\\r.png -> " in io.out and "a\\x1b]0;PWNED\\x07\\x1b[2J\\r.jpg: " in io.err
    assert "name: na\\x1b]0;PWNED" in io.out
    assert not any(c in io.out + io.err for c in "\x1b\x07\r")
    assert (tmp_path / "out.png").exists()  # the file itself keeps its name


def test_the_eta_of_a_resumed_batch_is_from_this_runs_rate(monkeypatch, capsys):
    """27 of 30 files skipped as done took no time: counted as work, they made every ETA 0:00."""
    from edge_enhance import cli

    clock = [100.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    p = cli.Progress(30, True)
    clock[0] = 500.0  # planning and skipping took a while
    p.file(27, "a.png")
    assert capsys.readouterr().err.endswith("ETA -:--")  # nothing measured yet
    clock[0] = 502.0
    p.tiles(1, 2)  # half a file in 2 s: 2.5 files left, 10 s
    assert capsys.readouterr().err.endswith("[28/30] a.png   50%  ETA 0:10")


def test_json_keeps_the_progress_line_on_a_terminals_stderr(tmp_path, model, capsys, monkeypatch):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    _img(tmp_path / "a.png")
    assert main(["enhance", str(tmp_path / "a.png"), "--model", model, "--json"]) == 0
    io = capsys.readouterr()
    assert "[1/1] a.png" in io.err and json.loads(io.out)["ok"] == 1


def test_output_formats_are_photo_formats_named_in_ascii(tmp_path, model, capsys):
    """--format tıff (Turkish lower case) wrote a.m.tıff, JPEG2000 a.m.jpg2000; -o x.pdf ended in a traceback."""
    _img(tmp_path / "a.png")
    for fmt in ("tıff", "JPEG2000", "pdf", "ico"):
        assert main(["enhance", str(tmp_path / "a.png"), "--model", model, "--format", fmt]) == 2
        assert "unknown output format" in capsys.readouterr().err
    assert main(["enhance", str(tmp_path / "a.png"), "--model", model, "-o", str(tmp_path / "x.pdf")]) == 2
    err = capsys.readouterr().err
    assert "x.pdf: PDF is not a photo format edge-enhance writes" in err and "PNG file): name it .png" in err
    assert "--format" not in err  # --format png with -o x.pdf is refused too
    # An -o name of no format is an option error: exit 2 before the model loads (it was exit 1, as a failed file)
    assert main(["enhance", str(tmp_path / "a.png"), "--model", str(tmp_path / "nope.onnx"), "-o",
                 str(tmp_path / "x.xyz")]) == 2
    assert "x.xyz: cannot tell the output format from '.xyz' (the input is a PNG file): name it .png or add --format png" in \
        capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.onnx"]


def test_a_camera_file_without_an_extension_gets_the_one_of_what_it_holds(tmp_path, model, capsys):
    Image.new("RGB", (12, 9), (200, 30, 30)).save(tmp_path / "IMG_0001", format="JPEG")
    assert main(["enhance", str(tmp_path / "IMG_0001"), "--model", model, "-q"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0001", "IMG_0001.m.jpg", "m.onnx"]
    assert main(["enhance", str(tmp_path), "--model", model, "-q"]) == 0  # its output is not a new photo
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0001", "IMG_0001.m.jpg", "m.onnx"]


def test_a_newline_or_a_bidi_override_in_a_name_cannot_forge_or_reorder_a_line(tmp_path, model, capsys):
    forged, flipped = "evil\n3 enhanced, 0 failed in 0.1 s\nok.png", "rlo\u202egpj.png"
    for name in (forged, flipped):
        _img(tmp_path / name)
    (tmp_path / "bad\nname.png").write_bytes(b"not a photo")
    assert main(["enhance", str(tmp_path), "-o", str(tmp_path / "out"), "--model", model]) == 1
    io = capsys.readouterr()
    text = io.out + io.err
    assert "evil\\n3 enhanced, 0 failed in 0.1 s\\nok.png -> " in io.out and "rlo\\u202egpj.png -> " in io.out
    assert "\u202e" not in text and not any(line.startswith("3 enhanced") for line in text.splitlines())
    assert "FAILED " + str(tmp_path / "bad\\nname.png") in io.err and "failed: " + str(tmp_path / "bad\\nname.png") in io.err


def test_help_wraps_to_the_terminal_and_gives_the_exit_codes(monkeypatch, capsys):
    """The card group's title was one 147-column line and the naming rule was wrapped at 101 columns."""
    monkeypatch.setenv("COLUMNS", "60")
    for argv in (["enhance", "--help"], ["--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        out = capsys.readouterr().out
        long = [line for line in out.splitlines() if len(line) > 60]
        assert all("{" in line for line in long), long  # only argparse's unbreakable choice lists
        assert "Exit codes: 0 done; 1 a file" in " ".join(out.split())


def test_a_file_named_like_an_option_is_pointed_out(tmp_path, model, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _img(tmp_path / "-photo.png")
    with pytest.raises(SystemExit) as e:
        main(["enhance", "--model", model, "-photo.png"])
    assert e.value.code == 2
    assert "(-photo.png is a file, read as an option here: give it as ./-photo.png, or after --)" in capsys.readouterr().err
    assert main(["enhance", "--model", model, "-q", "--", "-photo.png"]) == 0
    assert (tmp_path / "-photo.m.png").exists()


def test_the_progress_line_fits_one_terminal_row_in_any_script(monkeypatch, capsys):
    """A line wider than the terminal wrapped, and each redraw left a row behind; wide characters were
    counted as one column, so TERM=dumb padding left pieces of the line before."""
    import os as _os

    from edge_enhance import cli

    monkeypatch.setattr(cli.shutil, "get_terminal_size", lambda *a: _os.terminal_size((40, 24)))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "dumb")
    p = cli.Progress(2, True)
    p.file(0, "2024年夏の北海道旅行_家族写真_富良野ラベンダー畑_IMG_0001.jpg")
    p.tiles(1, 2)
    p.file(1, "b.jpg")
    lines = capsys.readouterr().err.split("\r")[1:]
    assert lines[0].startswith("[1/2] …") and lines[0].endswith("ETA -:--")
    assert all(cli._cells(line) <= 39 for line in lines)
    assert cli._cells(lines[2]) == cli._cells(lines[1])  # padded over the wide line before, column for column


def test_version_and_help_import_no_numpy_nor_the_optional_commands():
    code = ("import contextlib, io, sys\n"
            "from edge_enhance.cli import main\n"
            "for argv in (['--version'], ['--help']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "    heavy = [m for m in sys.modules if m == 'numpy' or m.startswith(('conversion', 'edge_enhance.camera'))]\n"
            "    assert not heavy, (argv, heavy)\n"
            "assert 'preview' in out.getvalue() and 'convert' in out.getvalue()\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env={**os.environ, "PYTHONPATH": root},
                   timeout=120)


def test_models_lists_the_onnx_cards_where_onnx_runtime_is_not_installed(monkeypatch, capsys):
    from edge_enhance.backends import onnxruntime as ort_backend
    from edge_enhance.errors import BackendUnavailableError

    assert main(["models", "--json"]) == 0
    with_ort = json.loads(capsys.readouterr().out)

    def not_installed():
        raise BackendUnavailableError("ONNX Runtime is not installed: pip install 'edge-enhance[onnx]'")

    monkeypatch.setattr(ort_backend, "_ort", not_installed)  # a [litert]-only install
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows == with_ort and any(r["file"].endswith(".onnx") for r in rows)
    assert all("error" not in r and r["task"] for r in rows)
    assert main(["models"]) == 0 and "ERROR" not in capsys.readouterr().out


def test_auto_on_a_picture_too_small_to_read_says_so_not_a_clean_reading():
    """A 30x30 crop with sigma 20 noise printed 'noise sigma 0.0, blockiness 1.00', a clean picture's reading."""
    from edge_enhance.cli import _auto_note

    note = _auto_note({"noise_sigma": None, "jpeg_quality": None, "blockiness": None, "stages": ["sr-x2"],
                       "backprojection_db": 30.0, "strength": 1})
    assert note == " (auto: too small to estimate noise or blocks; sr-x2; back-projection 30.0 dB)"


@pytest.mark.parametrize("argv,usage", [(["enhance", "x.png", "--bogus"], "usage: edge-enhance enhance"),
                                        (["x.png", "--bogus"], "usage: edge-enhance enhance"),
                                        (["convert", "m.onnx", "--to", "tflite", "--bogus"], "usage: edge-enhance convert")])
def test_an_unknown_option_is_said_with_its_commands_usage(argv, usage, capsys):
    """argparse said it with the top level's usage, which lists the commands, not the options."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and "unrecognized arguments: --bogus" in err
