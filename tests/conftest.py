import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


@pytest.fixture
def sr_model(tmp_path):
    pytest.importorskip("onnx", reason="onnx is needed to build test models")
    from tests.onnx_models import residual_sr

    path = tmp_path / "sr.onnx"
    residual_sr(path)
    return path


def cp1252_console(monkeypatch):
    """stdout and stderr as on a Western Windows console (cp1252, strict as Python opens stdout there);
    returns stdout, whose bytes are in ``.buffer.getvalue()``. Called in the test itself: pytest's capture
    sets its own streams back after the fixtures."""
    import io
    import sys

    out = io.TextIOWrapper(io.BytesIO(), encoding="cp1252", errors="strict", write_through=True)
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", io.TextIOWrapper(io.BytesIO(), encoding="cp1252", write_through=True))
    return out


def run_as_main(module: str, monkeypatch, *argv: str) -> int:
    """``python -m module *argv`` in this process; its exit code."""
    import runpy
    import sys
    import warnings

    monkeypatch.setattr(sys, "argv", [module, *argv])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            return e.code or 0
    return 0


@pytest.fixture
def narrow_fopen(monkeypatch):
    """The TFLite interpreter as on Windows, where it opens a model_path with the narrow fopen: a name
    outside the ANSI code page (here: any non-ASCII name) cannot be opened. model_content still works."""
    pytest.importorskip("ai_edge_litert", reason="ai-edge-litert is not installed")
    from edge_enhance.backends.litert import interpreter_module

    m, _ = interpreter_module()
    real = m.Interpreter

    def interpreter(model_path=None, **kw):
        if model_path is not None and not str(model_path).isascii():
            raise ValueError(f"Could not open '{model_path}'.")
        return real(model_path=model_path, **kw)

    monkeypatch.setattr(m, "Interpreter", interpreter)


@pytest.fixture
def non_ascii_tflite(tmp_path):
    """A bundled int8 .tflite model under a Cyrillic and Japanese name."""
    import shutil

    from edge_enhance.models import MODELS_DIR

    return Path(shutil.copy(MODELS_DIR / "sr-x2.int8.tflite", tmp_path / "модель_日本.tflite"))
