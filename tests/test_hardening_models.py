"""Bad model files: one clear ModelFormatError naming the file and the cause, exit 1, never a crash.

Files that reach the C++ interpreter run in a child process, so a segfault would show as a negative
return code (a signal) instead of taking the test run down.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_enhance.cli import main  # noqa: E402
from edge_enhance.errors import ModelFormatError  # noqa: E402
from tests import hardening_kit as kit  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402

needs_litert = pytest.mark.skipif(__import__("importlib").util.find_spec("ai_edge_litert") is None,
                                  reason="ai-edge-litert is not installed")
needs_tflite_schema = pytest.mark.skipif(__import__("importlib").util.find_spec("tflite") is None,
                                         reason="the tflite schema package is not installed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    residual_sr(d / "m.onnx")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(d / "img.png")
    return d


def _expect_failure(tmp_path, files, model_path, cause, capsys, code=1):
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["enhance", str(files / "img.png"), "-o", str(out / "o.png"), "--model", str(model_path)])
    err = capsys.readouterr().err
    assert rc == code, err
    assert str(model_path) in err and re.search(cause, err), err
    assert "Traceback" not in err and kit.files_under(out) == []


@pytest.mark.parametrize("name,data,cause", [
    ("random.tflite", np.random.default_rng(1).bytes(3000), r"not a model this runtime knows"),
    ("random.onnx", np.random.default_rng(2).bytes(3000), r"not a model this runtime knows"),
    ("empty.tflite", b"", r"model file is empty"),
    ("header-only.tflite", b"\x1c\x00\x00\x00TFL3" + np.random.default_rng(3).bytes(3000), r"corrupt flatbuffer"),
    ("proto-noise.onnx", b"\x08" + np.random.default_rng(4).bytes(3000), r"ONNX Runtime cannot load"),
])
def test_garbage_model_files(tmp_path, files, capsys, name, data, cause):
    p = tmp_path / name
    p.write_bytes(data)
    _expect_failure(tmp_path, files, p, cause, capsys)


# -- TFLite damage, run in a child process ------------------------------------------------------------
@pytest.fixture(scope="module")
def tfl(files):
    pytest.importorskip("flatbuffers")
    pytest.importorskip("tflite")
    return kit.tflite_model(files / "m.onnx", files / "m.tflite")


@needs_litert
@needs_tflite_schema
@pytest.mark.parametrize("how,cause", [
    ("truncate", r"corrupt flatbuffer|not a valid Flatbuffer"),
    ("truncate_tail", r"corrupt flatbuffer|not a valid Flatbuffer"),
    ("op_input_index", r"input 0 is tensor 9999 of \d+"),
    ("negative_op_input", r"input 0 is tensor -7 of \d+"),
    ("tensor_buffer_index", r"tensor \d+ names buffer 5000 of \d+"),
    ("tensor_vector_length", r"not a valid Flatbuffer|corrupt flatbuffer"),
    ("root_offset", r"corrupt flatbuffer"),
])
def test_corrupt_tflite_is_refused_in_a_child_not_a_signal(tmp_path, files, tfl, how, cause):
    data = tfl.read_bytes()
    if how == "truncate":
        bad = data[: len(data) // 2]
    elif how == "truncate_tail":
        bad = data[:-100]
    else:
        bad = kit.corrupt_tflite(data, how)
    p = tmp_path / f"{how}.tflite"
    p.write_bytes(bad)
    r = kit.cli("enhance", files / "img.png", "-o", tmp_path / "o.png", "--model", p)
    assert r.returncode == 1, f"rc {r.returncode} (negative = killed by a signal)\n{r.stderr}"
    assert str(p) in r.stderr and re.search(cause, r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.png").exists()


@needs_litert
@needs_tflite_schema
def test_op_version_newer_than_the_runtime_names_the_runtime_version(tmp_path, files):
    from importlib.metadata import version

    p = kit.tflite_model(files / "m.onnx", tmp_path / "future.tflite", op_version={"CONV_2D": 999})
    r = kit.cli("enhance", files / "img.png", "-o", tmp_path / "o.png", "--model", p)
    assert r.returncode == 1, r.stderr
    want = f"{p}: needs operator CONV_2D version 999, which the installed ai-edge-litert {version('ai-edge-litert')}"
    assert want in r.stderr, r.stderr


@needs_litert
@needs_tflite_schema
def test_the_undamaged_tflite_works(tmp_path, files, tfl, capsys):
    assert main(["enhance", str(files / "img.png"), "-o", str(tmp_path / "o.png"), "--model", str(tfl)]) == 0
    assert Image.open(tmp_path / "o.png").size == (32, 24)


# -- ONNX external data ---------------------------------------------------------------------------------
def _with_external_weight(src, dst, location: str):
    """Copy of the model whose first initializer's data lives in `location` (never written by us)."""
    m = onnx.load(str(src))
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    e = t.external_data.add()
    e.key, e.value = "location", location
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_folder_is_refused_before_ort(tmp_path, files, capsys, monkeypatch, location):
    import onnxruntime

    d = tmp_path / "model"
    d.mkdir()
    (tmp_path / "secret.bin").write_bytes(np.zeros(216, np.float32).tobytes())
    if location == "link.bin":
        (d / "link.bin").symlink_to(tmp_path / "secret.bin")
    p = _with_external_weight(files / "m.onnx", d / "evil.onnx", location)

    def no_session(*a, **k):
        raise AssertionError("ONNX Runtime was handed a model with escaping external data")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    _expect_failure(tmp_path, files, p, re.escape(f"external data location {location!r} points outside"), capsys)


def test_external_data_inside_the_folder_still_loads(tmp_path, files, capsys):
    m = onnx.load(str(files / "m.onnx"))
    d = tmp_path / "model"
    d.mkdir()
    onnx.save(m, str(d / "ok.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0)
    from edge_enhance.backends.onnxruntime import external_data_locations

    assert "weights.bin" in external_data_locations((d / "ok.onnx").read_bytes())
    assert main(["enhance", str(files / "img.png"), "-o", str(tmp_path / "o.png"), "--model", str(d / "ok.onnx")]) == 0


def test_external_data_in_a_subgraph_is_found():
    from onnx import TensorProto, helper

    from edge_enhance.backends.onnxruntime import external_data_locations

    t = helper.make_tensor("c", TensorProto.FLOAT, [1], [0.0])
    t.ClearField("float_data")
    t.data_location = TensorProto.EXTERNAL
    e = t.external_data.add()
    e.key, e.value = "location", "../../deep.bin"
    inner = helper.make_graph([helper.make_node("Constant", [], ["y"], value=t)], "inner", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    outer = helper.make_graph([helper.make_node("If", ["b"], ["y"], then_branch=inner, else_branch=inner)], "outer",
                              [helper.make_tensor_value_info("b", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    data = helper.make_model(outer).SerializeToString()
    assert external_data_locations(data) == ["../../deep.bin", "../../deep.bin"]


# -- cards that lie ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change,cause", [
    ({"scale": 3}, r"output shape \(1, \d+, \d+, 3\) does not match the card \(scale 3"),
    ({"layout": "nhwc"}, r"the card says layout nhwc but the input tensor is \[1, 3, 'h', 'w'\]"),
    ({"receptive_field": 0}, r"receptive_field 0 must be an integer 1\.\.4097"),
    ({"receptive_field": 1_000_000_000}, r"receptive_field 1000000000 must be an integer"),
    ({"task": "colourise"}, r"task 'colourise' is not one of"),
    ({"align": 0}, r"align 0 must be an integer 1\.\.64"),
    # Malformed fields: one line naming the file (they were TypeError / ValueError tracebacks).
    ({"extra": [1]}, r"malformed model card"),
    ({"input_range": 5}, r"malformed model card"),
    ({"input_range": [0, 1, 2]}, r"malformed model card"),
    ({"input_range": [0, 1e309]}, r"input_range \(0\.0, inf\) must be finite"),
    ({"tile": 7}, r"malformed model card"),
    ({"tile": [16.9, 16.9]}, r"tile \(16\.9, 16\.9\) must be \[height, width\]"),
    ({"tile": [100000, 100000]}, r"tile 100000x100000 is implausibly large"),
    ({"scale": True}, r"scale True must be an integer 1\.\.8"),
    ({"params": "lots"}, r"malformed model card: params 'lots' is not an integer"),
    ({"max_channels": "lots"}, r"extra\.max_channels 'lots' is not a channel count"),
])
def test_card_that_does_not_match_the_tensors(tmp_path, files, capsys, change, cause):
    card = {"name": "liar", "task": "sr", "scale": 2, "receptive_field": 9, "layout": "nchw", "base": "nearest"}
    p = tmp_path / "liar.onnx"
    residual_sr(p, card={**card, **change})
    _expect_failure(tmp_path, files, p, cause, capsys)


def test_model_without_card_names_the_flags(tmp_path, files, capsys):
    p = tmp_path / "bare.onnx"
    residual_sr(p, card={})
    _expect_failure(tmp_path, files, p, r"--card-task .* --card-scale N --card-receptive-field N", capsys, code=2)


# -- conversion refuses what it cannot lower ----------------------------------------------------------------
def test_convert_lists_every_unsupported_op_and_writes_nothing(tmp_path, capsys):
    import argparse

    from onnx import TensorProto, helper

    from conversion.cli import add_arguments
    from conversion.cli import main as convert_main

    nodes = [helper.make_node("Softmax", ["x"], ["a"], name="soft", axis=1),
             helper.make_node("Erf", ["a"], ["b"], name="erf1"),
             helper.make_node("Erf", ["b"], ["y"], name="erf2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = tmp_path / "odd.onnx"
    onnx.save(m, str(src))
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "odd.tflite"
    rc = convert_main(p.parse_args([str(src), "--to", "tflite", "-o", str(out)]))
    err = capsys.readouterr().err
    assert rc == 1 and str(src) in err, err
    assert "Softmax" in err and "Erf" in err and "erf1" in err and "erf2" in err
    assert sorted(f.name for f in tmp_path.iterdir()) == ["odd.onnx"]


def test_card_json_damage_is_a_model_format_error(tmp_path):
    from edge_enhance.card import ModelCard

    for text in ("{", "[]", json.dumps({"name": "x"}), json.dumps({"name": "x", "task": "sr", "scale": "2",
                                                                    "receptive_field": 9})):
        with pytest.raises(ModelFormatError, match="model card|card"):
            ModelCard.from_json(text, "m.onnx")


def test_a_model_that_outputs_nan_or_inf_fails_instead_of_writing_junk(tmp_path, files, capsys):
    from edge_enhance.card import CARD_KEY, ModelCard
    from tests.conversion_testkit import h, make_model

    card = ModelCard(name="div0", task="denoise", scale=1, receptive_field=1)
    m = make_model([h.make_node("Div", ["x", "z"], ["y"], name="div")], {"z": np.float32(0.0)}, [1, 3, "H", "W"],
                   metadata={CARD_KEY: card.to_json()})
    p = tmp_path / "div0.onnx"
    p.write_bytes(m.SerializeToString())
    _expect_failure(tmp_path, files, p, r"non-finite values \(NaN / inf\) on tile 1 of 1", capsys)


def test_a_huge_fixed_onnx_input_is_refused_at_load(tmp_path, files, capsys):
    p = tmp_path / "huge.onnx"
    residual_sr(p, fixed=(6000, 6000))
    _expect_failure(tmp_path, files, p, r"fixed input of 6000x6000 pixels is implausibly large", capsys)


def test_info_reads_no_fifo_and_follows_no_symlink_out_of_a_package(tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.mlmodel"
    os.mkfifo(fifo)  # reading it would block forever
    assert main(["info", str(fifo)]) == 1
    assert "not a model this runtime knows" in capsys.readouterr().err
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_text("{}")
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of the model")
    (pkg / "Data" / "notes.txt").symlink_to(outside)
    from edge_enhance.cli import _file_summary

    assert _file_summary(pkg)["bytes"] == 2  # the Manifest's "{}" alone
