"""What pyproject.toml installs: each extra does what its README line says; the wheel carries no reports."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _extra(name: str) -> list[Requirement]:
    return [Requirement(r) for r in PROJECT["project"]["optional-dependencies"][name]]


def test_the_coreml_extra_alone_converts_an_onnx_model():
    assert {r.name for r in _extra("coreml")} >= {"coremltools", "onnx"}  # onnx reads the model converted


def test_the_tflite_runtime_extra_installs_on_python_3_12_and_later():
    reqs = _extra("tflite-runtime")
    assert any(r.name == "tflite-runtime" for r in reqs)
    for r in reqs:  # no tflite-runtime wheels there: ai-edge-litert ([litert]) is the engine
        assert r.marker is not None and r.marker.evaluate({"python_version": "3.11"})
        assert not r.marker.evaluate({"python_version": "3.12"}) and not r.marker.evaluate({"python_version": "3.13"})


def test_the_convert_extra_installs_on_windows_on_arm():
    """ai-edge-litert has no win_arm64 wheel: `pip install edge-enhance[convert]` failed there."""
    litert = [r for r in _extra("convert") if r.name == "ai-edge-litert"]
    assert len(litert) == 1 and litert[0].marker is not None
    assert not litert[0].marker.evaluate({"platform_machine": "ARM64", "sys_platform": "win32"})
    for machine in ("x86_64", "aarch64", "arm64", "AMD64"):  # Linux, a Pi, macOS, Windows on Intel
        assert litert[0].marker.evaluate({"platform_machine": machine})


def test_the_benchmark_report_is_in_the_sdist_but_not_installed():
    report = ["RESULTS.md", "results.json", "pareto.png"]
    manifest = (ROOT / "MANIFEST.in").read_text()
    assert all(f"benchmarks/{f}" in manifest for f in report)
    assert PROJECT["tool"]["setuptools"]["exclude-package-data"]["benchmarks"] == report


@pytest.mark.parametrize("tool", ["train", "qat", "export"])
def test_a_training_tool_without_torch_says_which_extra_in_one_line(tmp_path, tool):
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['torch'] = None\n")  # torch not installed
    p = subprocess.run([sys.executable, "-m", f"training.{tool}", "sr-x2", "--out", str(tmp_path / "o")], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 1 and not (tmp_path / "o").exists()
    assert p.stderr == f"python -m training.{tool}: error: torch is not installed: pip install 'edge-enhance[train]'\n"


def test_a_training_tool_prints_any_name_on_a_cp1252_console(monkeypatch):
    """Windows: a non-ASCII run folder raised UnicodeEncodeError at the end of a training run."""
    from tests.conftest import cp1252_console
    from training import run_tool

    out = cp1252_console(monkeypatch)
    with pytest.raises(SystemExit) as e:
        run_tool("report", lambda: print("runs/модель") or 0)
    assert e.value.code == 0 and out.buffer.getvalue() == b"runs/\\u043c\\u043e\\u0434\\u0435\\u043b\\u044c\n"


def test_the_core_ml_writer_without_coremltools_names_the_extra_quoted(monkeypatch):
    from conversion import coreml_writer
    from edge_enhance.backends import coreml
    from edge_enhance.errors import EdgeEnhanceError

    def missing():
        raise ModuleNotFoundError("No module named 'coremltools'", name="coremltools")

    monkeypatch.setattr(coreml, "import_coremltools", missing)
    with pytest.raises(EdgeEnhanceError, match=r"pip install 'edge-enhance\[coreml\]'$"):  # zsh globs it unquoted
        coreml_writer._ct()


def test_type_checkers_and_help_see_the_api():
    """No py.typed (a type checker ignored the hints), and dir() / help(edge_enhance) left out the lazily
    exported Enhancer."""
    import pydoc

    import edge_enhance

    assert (ROOT / "edge_enhance" / "py.typed").is_file()
    assert "py.typed" in PROJECT["tool"]["setuptools"]["package-data"]["edge_enhance"]
    assert {"Enhancer", "Pipeline", "ConfigError", "__version__"} <= set(dir(edge_enhance))
    text = pydoc.render_doc(edge_enhance, renderer=pydoc.plaintext)
    assert "class Enhancer" in text and "class Pipeline" in text


def test_make_stops_where_pip_fails(tmp_path):
    """`make demo` with no package index reachable: the filter over pip's output hid its failure, and the
    run went on to a ModuleNotFoundError traceback for ai_edge_litert."""
    import shutil

    if shutil.which("make") is None:
        pytest.skip("no make")
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    checked = tmp_path / "checked"
    python = venv / "bin" / "python"  # runs the import check; pip itself is the PIP below
    python.write_text(f"#!/bin/sh\ntouch {checked}\n")
    python.chmod(0o755)
    pip = "sh -c 'echo ERROR: No matching distribution found for ai-edge-litert; exit 1' --"
    r = subprocess.run(["make", "-C", str(ROOT), f"VENV={venv}", f"PIP={pip}", f"{venv}/.runtime"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "No matching distribution found" in r.stdout + r.stderr
    assert not checked.exists() and not (venv / ".runtime").exists()


def test_the_pillow_floor_reads_and_writes_jpeg_xmp():
    """With pillow 9.5, the floor declared before, a JPEG's or PNG's XMP (captions, keywords, ratings) was
    dropped from the output without a word: 11.0 is the first to read info["xmp"] and write save(xmp=)."""
    pillow = next(Requirement(r) for r in PROJECT["project"]["dependencies"] if Requirement(r).name == "pillow")
    assert not pillow.specifier.contains("10.4.0") and pillow.specifier.contains("11.0.0")
