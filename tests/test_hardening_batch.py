"""Batches that go wrong part-way (extends tests/test_cli.py: text summary, an engine failing on one
file, SIGTERM in the middle of writing a file, SIGKILL, byte-exact resume with --skip-existing)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_enhance.cli import main  # noqa: E402
from tests import hardening_kit as kit  # noqa: E402
from tests.hardening_kit import model  # noqa: E402,F401  (fixture)


def _folder(d, n, size=(40, 30), black=()):
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.zeros((size[1], size[0], 3), np.uint8) if i in black else \
            np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(a).save(d / f"{i:02d}.png")
    return d


def test_text_summary_lists_the_bad_file(tmp_path, model, capsys):
    d = _folder(tmp_path / "in", 3)
    (d / "01.png").write_bytes(b"")
    rc = main(["enhance", str(d), "-o", str(tmp_path / "out"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1
    assert "2 enhanced, 1 failed" in err
    assert f"  failed: {d / '01.png'}: " in err and "empty file" in err
    assert kit.files_under(tmp_path / "out") == ["00.png", "02.png"]


def test_engine_failing_on_one_file_does_not_stop_the_batch(tmp_path, model, capsys, monkeypatch):
    from edge_enhance.backends.onnxruntime import OnnxRuntimeBackend

    real_run = OnnxRuntimeBackend.run

    def run(self, x):
        if x.max() == 0:  # the black image: the engine "crashes" on it
            raise RuntimeError("device lost")
        return real_run(self, x)

    monkeypatch.setattr(OnnxRuntimeBackend, "run", run)
    d = _folder(tmp_path / "in", 4, black=(2,))
    rc = main(["enhance", str(d), "-o", str(tmp_path / "out"), "--model", str(model), "--json"])
    s = json.loads(capsys.readouterr().out)
    assert rc == 1 and (s["ok"], s["failed"]) == (3, 1)
    bad = [f for f in s["files"] if f["status"] == "failed"][0]
    assert bad["input"].endswith("02.png")
    assert f"{model}: the engine failed on tile 1 of 1 (RuntimeError: device lost)" in bad["error"]
    assert kit.files_under(tmp_path / "out") == ["00.png", "01.png", "03.png"]


_HOOK = """
import io, os, signal, sys
from edge_enhance import imageio
real_write = imageio._write_png
n = [0]
def write(photo, f, *a, **k):
    n[0] += 1
    if n[0] == {at}:  # the signal lands with half the file written
        buf = io.BytesIO()
        real_write(photo, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[:len(data) // 2])
        f.flush()
        os.kill(os.getpid(), signal.{sig})
        f.write(data[len(data) // 2:])
        return
    return real_write(photo, f, *a, **k)
imageio._write_png = write
from edge_enhance.cli import main
sys.exit(main({argv!r}))
"""


def _run_hooked(argv, at, sig):
    code = _HOOK.format(at=at, sig=sig, argv=[str(a) for a in argv])
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**__import__("os").environ, "PYTHONPATH": str(kit.ROOT)})


def test_sigterm_while_writing_a_file_leaves_no_partial_and_resume_is_exact(tmp_path, model):
    d = _folder(tmp_path / "in", 6)
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert main(["enhance", str(d), "-o", str(clean), "--model", str(model), "-q"]) == 0
    r = _run_hooked(["enhance", d, "-o", out, "--model", model, "--json"], at=3, sig="SIGTERM")
    assert r.returncode == 130, r.stderr
    s = json.loads(r.stdout)
    # The signal lands while the third file is being written: that write completes (never a partial
    # file, never a stray temporary), and the batch stops before the fourth.
    assert s["interrupted"] and s["ok"] == 3 and s["not_done"] == 3
    assert kit.files_under(out) == ["00.png", "01.png", "02.png"]
    r2 = kit.cli("enhance", d, "-o", out, "--model", model, "--skip-existing", "--json")
    s2 = json.loads(r2.stdout)
    assert r2.returncode == 0 and (s2["ok"], s2["skipped"]) == (3, 3)
    assert kit.files_under(out) == kit.files_under(clean)
    for name in kit.files_under(clean):
        assert (out / name).read_bytes() == (clean / name).read_bytes(), name


def test_sigkill_while_writing_never_leaves_a_damaged_file_under_the_real_name(tmp_path, model):
    d = _folder(tmp_path / "in", 4)
    out = tmp_path / "out"
    r = _run_hooked(["enhance", d, "-o", out, "--model", model, "-q"], at=2, sig="SIGKILL")
    assert r.returncode == -signal.SIGKILL
    visible = [n for n in kit.files_under(out) if not n.startswith(".")]
    assert visible == ["00.png"]
    with Image.open(out / "00.png") as im:
        im.load()  # complete, decodable
    # Resume: the hidden temporary of the killed write is never mistaken for a finished output.
    r2 = kit.cli("enhance", d, "-o", out, "--model", model, "--skip-existing", "--json")
    s2 = json.loads(r2.stdout)
    assert r2.returncode == 0 and (s2["ok"], s2["skipped"]) == (3, 1)
    for n in ("00.png", "01.png", "02.png", "03.png"):
        with Image.open(out / n) as im:
            assert im.size == (80, 60)
    # ... and rewriting that output removed the killed process's temporary.
    assert not [n for n in kit.files_under(out) if n.endswith(".part")]


def test_sigterm_as_a_real_signal_from_outside(tmp_path, model):
    """The user's Ctrl-C / systemd stop arrives from another process at an arbitrary moment."""
    d = _folder(tmp_path / "in", 30, size=(160, 120))
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "edge_enhance.cli", "enhance", str(d), "-o", str(out),
                          "--model", str(model), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(kit.ROOT)})
    deadline = time.monotonic() + 60
    while not (out.is_dir() and any(n.endswith(".png") and not n.startswith(".") for n in kit.files_under(out))):
        assert p.poll() is None and time.monotonic() < deadline, "the batch ended before it could be stopped"
        time.sleep(0.01)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=60)
    assert p.returncode in (130, 0), stderr  # 0 only if the signal landed after the last file
    names = kit.files_under(out)
    assert not [n for n in names if n.startswith(".")], names  # no temporaries
    for n in names:
        with Image.open(out / n) as im:
            im.load()
            assert im.size == (320, 240)
    if p.returncode == 130:
        # A signal landing just after the rename reports that (complete) file as not done; never the reverse.
        assert json.loads(stdout)["ok"] in (len(names), len(names) - 1)


def test_sweep_stale_removes_only_dead_writers_temporaries(tmp_path):
    from edge_enhance.atomic import STALE_ELSEWHERE_S, atomic_file, process_space

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    here, there = process_space(), "0123abcd" if process_space() != "0123abcd" else "4567cdef"
    old = time.time() - STALE_ELSEWHERE_S - 60
    (tmp_path / f".a[1].png.{here}.{dead}-x1.part").write_bytes(b"half")      # killed writer: swept
    (tmp_path / f".a[1].png.{here}.{os.getppid()}-x2.part").write_bytes(b"")   # a live writer: kept
    (tmp_path / f".b.png.{here}.{dead}-x3.part").write_bytes(b"")              # another output: kept
    # Another container or NFS host: its PIDs mean nothing here, so its temporary is a live writer's...
    (tmp_path / f".a[1].png.{there}.{dead}-x4.part").write_bytes(b"")
    (tmp_path / f".a[1].png.{dead}-x5.part").write_bytes(b"")                  # (as is a name without the space)
    for stale in (f".a[1].png.{there}.{dead}-x6.part", f".a[1].png.{dead}-x7.part"):  # ... until a day old
        (tmp_path / stale).write_bytes(b"")
        os.utime(tmp_path / stale, (old, old))
    with atomic_file(tmp_path / "a[1].png") as f:
        f.write(b"ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a[1].png", f".a[1].png.{here}.{os.getppid()}-x2.part", f".b.png.{here}.{dead}-x3.part",
         f".a[1].png.{there}.{dead}-x4.part", f".a[1].png.{dead}-x5.part"])


def test_no_pid_is_probed_on_windows_and_a_failing_probe_is_no_error(monkeypatch):
    """Windows: os.kill(pid, 0) sends CTRL_C_EVENT to pid's console, and a dead pid raises OSError(EINVAL),
    which failed every later write of that output."""
    import errno

    from edge_enhance import atomic

    def windows_kill(pid, sig):
        raise OSError(errno.EINVAL, "The parameter is incorrect")

    monkeypatch.setattr(os, "kill", windows_kill)
    assert atomic._alive(999999) is True  # any other OSError: someone's process, left alone
    sent = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append((pid, sig)))
    with monkeypatch.context() as m:
        m.setattr(os, "name", "nt")
        assert atomic._alive(999999) is None
    assert sent == []


def test_where_no_pid_can_be_asked_a_temporary_goes_when_a_day_old(tmp_path, monkeypatch):
    from edge_enhance import atomic

    monkeypatch.setattr(atomic, "_alive", lambda pid: None)  # Windows
    here, old = atomic.process_space(), time.time() - atomic.STALE_ELSEWHERE_S - 60
    (tmp_path / f".a.png.{here}.999999-x1.part").write_bytes(b"")      # a writer maybe still at work: kept
    (tmp_path / f".a.png.{here}.999998-x2.part").write_bytes(b"")      # a day old: left over
    os.utime(tmp_path / f".a.png.{here}.999998-x2.part", (old, old))
    assert atomic.sweep_stale(tmp_path / "a.png") == 1
    assert [p.name for p in tmp_path.iterdir()] == [f".a.png.{here}.999999-x1.part"]


@pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux PID namespaces")
def test_the_pid_space_tells_a_container_from_the_host(tmp_path):
    """What the PID namespace adds: a process in another one (unshare as root, else skipped) names
    another space, so neither sweeps the other's live writer."""
    from edge_enhance.atomic import process_space

    code = "from edge_enhance.atomic import process_space; print(process_space())"
    same = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert same == process_space()
    other = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
                           capture_output=True, text=True)
    if other.returncode:
        pytest.skip(f"unshare not permitted here ({other.stderr.strip()[:80]})")
    assert other.stdout.strip() != process_space()


def test_a_resumed_run_into_a_folder_inside_its_input_tree_leaves_its_outputs_alone(tmp_path, model, capsys):
    d = _folder(tmp_path / "photos", 2)
    out = d / "enhanced"
    assert main(["enhance", str(d), "-r", "-o", str(out), "--model", str(model), "-q"]) == 0
    assert main(["enhance", str(d), "-r", "-o", str(out), "--model", str(model), "--skip-existing", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ok"], s["skipped"]) == (0, 2) and not (out / "enhanced").exists()


def test_a_resumed_recursive_pattern_leaves_its_output_folder_alone_unless_it_names_it(tmp_path, model, capsys):
    d = _folder(tmp_path / "photos", 2)
    out, pattern = d / "enhanced", str(d / "**" / "*.png")
    assert main(["enhance", pattern, "-r", "-o", str(out), "--model", str(model), "-q"]) == 0
    assert main(["enhance", pattern, "-r", "-o", str(out), "--model", str(model), "--skip-existing", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert (s["ok"], s["skipped"], s["failed"]) == (0, 2, 0)
    # A pattern that starts in the output folder asks for its files.
    assert main(["enhance", str(out / "*.png"), "-o", str(tmp_path / "again"), "--model", str(model), "-q"]) == 0
    assert kit.files_under(tmp_path / "again") == ["00.png", "01.png"]


def test_a_dangling_link_in_a_folder_or_a_pattern_is_a_failure_not_a_gap(tmp_path, model, capsys):
    d = _folder(tmp_path / "frames", 2)
    os.symlink(tmp_path / "gone" / "02.png", d / "02.png")
    for given in (d, d / "*.png"):
        rc = main(["enhance", str(given), "-o", str(tmp_path / "out"), "--model", str(model), "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 1 and f"{d / '02.png'}: a link to {tmp_path / 'gone' / '02.png'}, which does not exist" in err
        assert kit.files_under(tmp_path / "out") == ["00.png", "01.png"]


def test_a_pattern_that_matches_nothing_fails_alone(tmp_path, model, capsys):
    d = _folder(tmp_path / "in", 1)
    rc = main(["enhance", str(d / "*.png"), str(d / "*.JPG"), "-o", str(tmp_path / "out"), "--model", str(model)])
    err = capsys.readouterr().err
    assert rc == 1 and kit.files_under(tmp_path / "out") == ["00.png"]
    assert f"failed: {d / '*.JPG'}: no files match" in err
    assert main(["enhance", str(d / "*.JPG"), "--model", str(model), "--json"]) == 2  # nothing at all to do
    assert json.loads(capsys.readouterr().out) == {"error": f"{d / '*.JPG'}: no files match", "exit": 2}


def test_recursive_runs_follow_symlinked_folders_once(tmp_path, model, capsys):
    elsewhere = _folder(tmp_path / "elsewhere", 1)
    d = _folder(tmp_path / "in", 1)
    os.symlink(elsewhere, d / "linked")
    os.symlink(d, elsewhere / "back")  # a loop: each real folder is walked once
    assert main(["enhance", str(d), "-r", "-o", str(tmp_path / "out"), "--model", str(model), "-q"]) == 0
    assert kit.files_under(tmp_path / "out") == ["00.png", "linked/00.png"]


def test_a_jpeg_named_heic_comes_out_as_jpg_or_says_how_to(tmp_path, model, capsys):
    d = _folder(tmp_path / "in", 1)
    fake = d / "fake.heic"
    Image.open(d / "00.png").convert("RGB").save(fake, format="JPEG")
    assert main(["enhance", str(d), "--model", str(model), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["00.png", "fake.jpg"]  # derived names take
    assert main(["enhance", str(fake), "--model", str(model), "-q"]) == 0  # what the file holds
    assert Image.open(d / f"fake.{model.stem}.jpg").format == "JPEG"
    capsys.readouterr()
    assert main(["enhance", str(fake), "--model", str(model), "-o", str(d / "named.heic")]) == 2  # a name given
    assert ("cannot tell the output format from '.heic' (the input is a JPEG file): name it .jpg or add --format "
            "jpg") in capsys.readouterr().err
