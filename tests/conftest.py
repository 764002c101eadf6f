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
