"""The Core ML backend: the card is readable anywhere coremltools installs; prediction is macOS only."""
import platform

import numpy as np
import pytest

pytest.importorskip("coremltools", reason="coremltools is not installed (pip install edge-enhance[coreml])")
pytest.importorskip("onnx")

from conversion.coreml_writer import to_coreml  # noqa: E402
from conversion.onnx_import import from_onnx  # noqa: E402
from edge_enhance.backends import read_card, sniff_format  # noqa: E402
from edge_enhance.enhancer import Enhancer  # noqa: E402
from edge_enhance.errors import BackendUnavailableError  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402


@pytest.fixture(scope="module")
def mlpackage(tmp_path_factory):
    d = tmp_path_factory.mktemp("coreml")
    residual_sr(d / "m.onnx", channels=4)
    to_coreml(from_onnx(str(d / "m.onnx")), d / "m.mlpackage", tile=(32, 32))
    return d / "m.mlpackage"


def test_card_is_read_from_user_metadata(mlpackage):
    assert sniff_format(mlpackage) == "coreml"
    card = read_card(mlpackage)
    assert card.scale == 2 and card.receptive_field == 9 and card.tile == (32, 32)


@pytest.mark.skipif(platform.system() == "Darwin", reason="Core ML predicts on macOS")
def test_prediction_off_macos_is_a_clear_error(mlpackage):
    with pytest.raises(BackendUnavailableError, match="only on macOS"):
        Enhancer(mlpackage)


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predict() needs macOS")
def test_prediction_on_macos_matches_onnx(mlpackage, tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    residual_sr(tmp_path / "m.onnx", channels=4)
    a = Enhancer(mlpackage).enhance(img).astype(int)
    b = Enhancer(tmp_path / "m.onnx").enhance(img).astype(int)
    assert np.abs(a - b).max() <= 2


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML predict() needs macOS")
def test_image_io_prediction_on_macos_matches_onnx(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    residual_sr(tmp_path / "m.onnx", channels=4)
    to_coreml(from_onnx(str(tmp_path / "m.onnx")), tmp_path / "i.mlpackage", tile=(32, 32), io="image")
    a = Enhancer(tmp_path / "i.mlpackage").enhance(img).astype(int)
    b = Enhancer(tmp_path / "m.onnx").enhance(img).astype(int)
    assert np.abs(a - b).max() <= 2


def test_coremltools_import_warnings_stay_out_of_the_user_log():
    """Off macOS coremltools logs 'Failed to load _MLModelProxy' (and more) as it imports; ours is quiet."""
    import subprocess
    import sys

    code = ("import logging; logging.basicConfig(format='%(levelname)s: %(message)s'); "
            "from edge_enhance.backends.coreml import import_coremltools; import_coremltools(); "
            "import coremltools.models.model; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
    assert "WARNING" not in p.stderr, p.stderr


def test_a_ctrl_c_during_the_coremltools_import_is_not_lost(monkeypatch):
    """coremltools' import swallows a KeyboardInterrupt raised inside it (seen: `convert --to coreml` ran on
    and wrote its file after Ctrl-C); the signal is held over the import and raised after it."""
    import importlib.abc
    import importlib.util
    import os
    import signal
    import sys

    from edge_enhance.backends import coreml

    class Swallowing(importlib.abc.Loader):
        def create_module(self, spec):
            return None

        def exec_module(self, module):
            try:
                os.kill(os.getpid(), signal.SIGINT)  # the user's Ctrl-C, mid-import
            except KeyboardInterrupt:
                pass  # what a bare `except:` inside a dependency does

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            return importlib.util.spec_from_loader(name, Swallowing()) if name == "coremltools" else None

    monkeypatch.delitem(sys.modules, "coremltools")
    monkeypatch.setattr(sys, "meta_path", [Finder(), *sys.meta_path])
    with pytest.raises(KeyboardInterrupt):
        coreml.import_coremltools()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
