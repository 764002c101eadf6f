import json
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_enhance.backends import read_card, sniff_format
from edge_enhance.backends import litert
from edge_enhance.backends.tflite_meta import read_metadata
from edge_enhance.card import CARD_KEY, ModelCard
from edge_enhance.errors import BackendUnavailableError, ModelFormatError

CARD = {"name": "t", "task": "sr", "scale": 2, "receptive_field": 9, "layout": "nhwc"}


def tflite_with_metadata(entries: dict[str, bytes]) -> bytes:
    """A Model flatbuffer holding only buffers and metadata (enough for the card reader)."""
    flatbuffers = pytest.importorskip("flatbuffers")
    tfl = pytest.importorskip("tflite")
    b = flatbuffers.Builder(256)
    bufs = [None]
    for data in entries.values():
        vec = b.CreateByteVector(data)
        tfl.BufferStart(b)
        tfl.BufferAddData(b, vec)
        bufs.append(tfl.BufferEnd(b))
    tfl.BufferStart(b)
    bufs[0] = tfl.BufferEnd(b)
    metas = []
    for i, name in enumerate(entries, start=1):
        s = b.CreateString(name)
        tfl.MetadataStart(b)
        tfl.MetadataAddName(b, s)
        tfl.MetadataAddBuffer(b, i)
        metas.append(tfl.MetadataEnd(b))
    tfl.ModelStartBuffersVector(b, len(bufs))
    for o in reversed(bufs):
        b.PrependUOffsetTRelative(o)
    bv = b.EndVector()
    tfl.ModelStartMetadataVector(b, len(metas))
    for o in reversed(metas):
        b.PrependUOffsetTRelative(o)
    mv = b.EndVector()
    tfl.ModelStart(b)
    tfl.ModelAddVersion(b, 3)
    tfl.ModelAddBuffers(b, bv)
    tfl.ModelAddMetadata(b, mv)
    b.Finish(tfl.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def test_metadata_reader_finds_the_card(tmp_path):
    data = tflite_with_metadata({"other": b"x", CARD_KEY: json.dumps(CARD).encode()})
    assert read_metadata(data)[CARD_KEY] == json.dumps(CARD).encode()
    p = tmp_path / "m.tflite"
    p.write_bytes(data)
    assert sniff_format(p) == "litert"
    assert read_card(p) == ModelCard.from_dict(CARD)


@given(st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_corrupt_flatbuffers_give_model_format_errors_only(data):
    good = bytearray(tflite_with_metadata({CARD_KEY: json.dumps(CARD).encode()}))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(8, len(good)))
    try:
        read_metadata(bytes(good[:cut]))
    except ModelFormatError:
        pass


@pytest.mark.parametrize("content,name", [
    (b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40, "litert"),
    (b"\x08\x07\x12\x04test", "onnxruntime"),
])
def test_sniff_by_content_not_extension(tmp_path, content, name):
    p = tmp_path / "model.bin"
    p.write_bytes(content)
    assert sniff_format(p) == name


def test_sniff_mlpackage_folder(tmp_path):
    d = tmp_path / "m.mlpackage"
    d.mkdir()
    (d / "Manifest.json").write_text("{}")
    assert sniff_format(d) == "coreml"


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\xff\xd8\xff\xe0 a jpeg", "not a model")])
def test_sniff_refuses(tmp_path, content, match):
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelFormatError, match=match):
        sniff_format(p)
    with pytest.raises(ModelFormatError, match="no such model"):
        sniff_format(tmp_path / "missing.onnx")


def test_missing_litert_names_the_extra(monkeypatch):
    for mod in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        monkeypatch.setitem(sys.modules, mod, None)
    litert.interpreter_module.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match=r"edge-enhance\[litert\]") as e:
            litert.interpreter_module()
        # the extra, not bare tflite-runtime, which then fails against the numpy 2 a bare install has
        assert "pip install 'edge-enhance[tflite-runtime]', which keeps numpy below 2" in str(e.value)
    finally:
        litert.interpreter_module.cache_clear()


def test_onnx_model_with_random_payload(tmp_path):
    pytest.importorskip("onnxruntime")
    p = tmp_path / "r.onnx"
    p.write_bytes(b"\x08" + np.random.default_rng(0).bytes(500))
    from edge_enhance.backends import open_backend

    with pytest.raises(ModelFormatError, match="ONNX Runtime cannot load"):
        open_backend(p)


@pytest.mark.parametrize("np_version, tr_version, clash", [("2.4.6", "2.14.0", True), ("1.26.4", "2.14.0", False),
                                                          ("2.0.0", "2.11.0", True), ("2.1.0", "2.20.0", False),
                                                          ("2.1.0", "(version unknown)", False)])
def test_tflite_runtime_under_numpy_2_is_refused_with_the_fix(np_version, tr_version, clash):
    from edge_enhance.backends.litert import numpy_clash

    why = numpy_clash(np_version, tr_version)
    assert (why is not None) == clash
    if clash:
        assert f"tflite-runtime {tr_version} is built for numpy 1 and cannot run with numpy {np_version}" in why
        assert "pip install 'edge-enhance[tflite-runtime]'" in why


def test_engine_threads_are_bounded():
    from edge_enhance.backends import MAX_THREADS, EngineOptions
    from edge_enhance.errors import ConfigError

    assert EngineOptions(threads=MAX_THREADS).threads == MAX_THREADS
    with pytest.raises(ConfigError, match=f"threads must be an integer from 1 to {MAX_THREADS}, got 100000"):
        EngineOptions(threads=100_000)
