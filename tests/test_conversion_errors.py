"""Bad input gives one clear error naming the file / nodes; nothing partial is written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tests.conversion_testkit import convert_main, h, make_model, nh, rand, residual_sr_model

from conversion.errors import ConfigError, ModelFormatError, UnsupportedOpError
from conversion.onnx_import import from_onnx
from conversion.tflite_writer import tflite_metadata, to_tflite
from edge_enhance.card import CARD_KEY, ModelCard


@pytest.mark.parametrize("content", [b"", b"not an onnx file at all \x00\xff" * 10, b"\x08\x07\x12"])
def test_malformed_file_names_the_file(tmp_path, content):
    p = tmp_path / "broken.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelFormatError, match="broken.onnx"):
        from_onnx(p)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFormatError, match="nope.onnx"):
        from_onnx(tmp_path / "nope.onnx")


def test_opset_too_old(tmp_path):
    m = make_model([h.make_node("Relu", ["x"], ["y"])], {}, [1, 3, 4, 4], opset=8)
    with pytest.raises(ModelFormatError, match="opset 8 is outside the supported 9"):
        from_onnx(m)


def test_every_unsupported_op_listed_once(tmp_path):
    rng = np.random.default_rng(0)
    m = make_model([
        h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Softmax", ["c"], ["s"], axis=1, name="my_softmax"),
        h.make_node("LRN", ["s"], ["l"], size=3, name="my_lrn"),
        h.make_node("Resize", ["l", "", "sc"], ["y"], mode="cubic", name="my_cubic"),
    ], {"w": rand(rng, 3, 3, 3, 3), "sc": np.array([1, 1, 1.5, 1.5], np.float32)}, [1, 3, 8, 8])
    p = tmp_path / "m.onnx"
    p.write_bytes(m.SerializeToString())
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(p)
    msg = str(e.value)
    assert "m.onnx" in msg and "3 unsupported" in msg
    for name in ("my_softmax (Softmax)", "my_lrn (LRN)", "my_cubic (Resize: cubic resize by (1.5, 1.5)"):
        assert name in msg


def test_non_image_input_rejected():
    m = make_model([h.make_node("Relu", ["x"], ["y"])], {}, [1, 3, 8])
    with pytest.raises(ModelFormatError, match="NCHW"):
        from_onnx(m)


def test_failed_write_leaves_nothing(tmp_path):
    """A dynamic align-corners bilinear resize cannot be written without a tile: error, and no file at all."""
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear",
                                coordinate_transformation_mode="align_corners", name="up")],
                   {"sc": np.array([1, 1, 2, 2], np.float32)}, [1, 3, "H", "W"])
    g = from_onnx(m)
    out = tmp_path / "m.tflite"
    with pytest.raises(UnsupportedOpError, match="--tile HxW"):  # the model's, not the options': exit 1
        to_tflite(g, out)
    assert list(tmp_path.iterdir()) == []
    to_tflite(g, out, tile=(8, 8))  # and with a tile it works
    assert out.stat().st_size > 0


def test_bad_options(tmp_path):
    g = from_onnx(make_model([h.make_node("Relu", ["x"], ["y"])], {}, [1, 3, 4, 4]))
    with pytest.raises(ConfigError, match="precision"):
        to_tflite(g, tmp_path / "a.tflite", precision="fp8")
    with pytest.raises(ConfigError, match="io"):
        to_tflite(g, tmp_path / "a.tflite", io="uint8")
    with pytest.raises(ConfigError, match="folder"):
        to_tflite(g, tmp_path / "missing" / "a.tflite")
    assert list(tmp_path.iterdir()) == []


def test_card_travels_into_tflite_metadata(tmp_path):
    card = ModelCard(name="t-x2", task="sr", scale=2, receptive_field=7, extra={"psnr_set5": 1.0})
    g = from_onnx(residual_sr_model(np.random.default_rng(0), card=card))
    assert g.metadata[CARD_KEY] == card.to_json()
    p = to_tflite(g, tmp_path / "m.tflite", tile=(16, 16))
    got = ModelCard.from_json(tflite_metadata(p)[CARD_KEY])
    assert got.layout == "nhwc" and got.tile == (16, 16) and got.scale == 2 and got.extra == card.extra


@pytest.mark.parametrize("to, name, message", [
    ("tflite", "m.onnx", "m.onnx: a .onnx name for --to tflite output (use .tflite)"),
    ("onnx", "m.TFLITE", "m.TFLITE: a .TFLITE name for --to onnx output (use .onnx)"),
    ("coreml", "m.mlmodel", "m.mlmodel: a Core ML mlprogram must be saved as .mlpackage"),
])
def test_convert_refuses_an_output_named_for_another_format(tmp_path, to, name, message):
    from conversion.cli import convert

    src = tmp_path / "src.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        convert(src, to, output=tmp_path / name)
    assert [p.name for p in tmp_path.iterdir()] == ["src.onnx"]


def test_convert_refuses_an_output_that_is_its_input_under_another_case(tmp_path):
    """macOS / Windows: m.onnx is m.ONNX there (simulated by a hard link, two names of one file)."""
    from conversion.cli import convert

    src = tmp_path / "m.ONNX"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    os.link(src, tmp_path / "m.onnx")
    before = src.read_bytes()
    with pytest.raises(ConfigError, match="m.onnx: output would overwrite the input model"):
        convert(src, "onnx", output=tmp_path / "m.onnx")
    assert src.read_bytes() == before


def test_replace_metadata_changes_only_the_card(tmp_path):
    from conversion.tflite_writer import replace_metadata

    card = ModelCard(name="t-x2", task="sr", scale=2, receptive_field=7, extra={"psnr": {"Set5 long label": 1.0}})
    data = to_tflite(from_onnx(residual_sr_model(np.random.default_rng(0), card=card)), tmp_path / "m.tflite").read_bytes()
    card = json.loads(tflite_metadata(data)[CARD_KEY])
    card["extra"] = {"psnr": {"Set5": 1.5}}
    new = replace_metadata(data, CARD_KEY, json.dumps(card, separators=(",", ":")).encode())
    assert len(new) == len(data) and json.loads(tflite_metadata(new)[CARD_KEY]) == card
    old_at = data.index(tflite_metadata(data)[CARD_KEY])
    assert new[:old_at] == data[:old_at]  # the graph and weights untouched
    with pytest.raises(ConfigError, match="has room for"):
        replace_metadata(data, CARD_KEY, b"x" * (len(tflite_metadata(data)[CARD_KEY]) + 1))
    with pytest.raises(ConfigError, match="no metadata entry 'nope'"):
        replace_metadata(data, "nope", b"{}")


def test_an_image_name_for_a_model_output_is_refused(tmp_path):
    from conversion.cli import convert

    src = tmp_path / "m.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    with pytest.raises(ConfigError, match=r"out.png: a .png name for --to tflite output \(use .tflite\)"):
        convert(src, "tflite", output=tmp_path / "out.png", card={"task": "sr"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_fixed_input_too_small_for_the_margins_is_refused_at_convert(tmp_path):
    from conversion.cli import convert

    src = tmp_path / "m.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    with pytest.raises(ConfigError, match=r"input 4x40 leaves no room inside the model's receptive-field margins"):
        convert(src, "tflite", tile=(4, 40), card={"task": "sr"}, verify=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_fixed_batch_or_an_integer_input_is_named_as_such():
    relu = [h.make_node("Relu", ["x"], ["y"])]
    with pytest.raises(ModelFormatError, match="input 'x' has a fixed batch of 4; photos go one at a time"):
        from_onnx(make_model(relu, {}, [4, 3, 8, 8]))
    ints = make_model(relu, {}, [1, 3, 8, 8])
    ints.graph.input[0].type.tensor_type.elem_type = 2  # UINT8
    with pytest.raises(ModelFormatError, match="input 'x' is uint8, not float32 or float16"):
        from_onnx(ints)
    assert from_onnx(make_model(relu, {}, ["N", 3, "H", "W"])).inputs  # a dynamic batch is fine


def test_convert_names_a_model_that_is_not_onnx(tmp_path):
    from conversion.cli import convert

    src = tmp_path / "m.tflite"
    src.write_bytes(b"TFL3")
    with pytest.raises(ConfigError, match=r"m.tflite: convert takes an ONNX model \(got .tflite\)"):
        convert(src, "tflite", output=tmp_path / "o.tflite")


def test_a_second_input_and_a_second_output_get_their_own_advice():
    two_in = make_model([h.make_node("Add", ["x", "sigma"], ["y"])], {}, [1, 3, "h", "w"], inputs=("x", "sigma"))
    with pytest.raises(ModelFormatError, match=r"2 input\(s\) \(x, sigma\).*image as the only input") as e:
        from_onnx(two_in)
    assert "output alone" not in str(e.value)
    two_out = make_model([h.make_node("Relu", ["x"], ["y"]), h.make_node("Neg", ["x"], ["z"])], {}, [1, 3, "h", "w"])
    two_out.graph.output.append(h.make_tensor_value_info("z", 1, [None] * 4))
    with pytest.raises(ModelFormatError, match="export the image output alone") as e:
        from_onnx(two_out)
    assert "only input" not in str(e.value)


def _resize_to_twice_the_input_shape():
    """What F.interpolate(x, size=(2 * h, 2 * w)) exports: the size is computed from Shape(x)."""
    return make_model([
        h.make_node("Shape", ["x"], ["s"], name="shape"),
        h.make_node("Slice", ["s", "b", "e"], ["hw"], name="take_hw"),
        h.make_node("Mul", ["hw", "two"], ["hw2"], name="double"),
        h.make_node("Concat", ["nc", "hw2"], ["size"], axis=0, name="join"),
        h.make_node("Resize", ["x", "", "", "size"], ["r"], mode="nearest", name="resize"),
        h.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1, 1, 1], name="conv"),
    ], {"b": np.array([2]), "e": np.array([4]), "two": np.array([2]), "nc": np.array([1, 3]),
        "w": rand(np.random.default_rng(0), 3, 3, 3, 3)}, [1, 3, "h", "w"])


def test_sizes_computed_from_the_input_shape_are_named_as_one_cause(tmp_path):
    m = _resize_to_twice_the_input_shape()
    with pytest.raises(UnsupportedOpError) as e:
        from_onnx(m)
    msg = str(e.value)
    assert "compute sizes from the input's shape" in msg and "F.interpolate(size=...)" in msg and "--tile" in msg
    assert "spatial slice" not in msg and "rank-1 Concat" not in msg
    named = msg.split("at run time (", 1)[1].split(")", 1)[0].split(", ")
    assert named == ["shape", "take_hw", "join", "resize"]  # the conv is fine, the Mul converts


def test_a_fixed_tile_folds_sizes_computed_from_the_input_shape(tmp_path):
    from conversion.cli import convert
    from tests.conversion_testkit import run_ort, run_tflite

    m = _resize_to_twice_the_input_shape()
    src = tmp_path / "interp.onnx"
    src.write_bytes(m.SerializeToString())
    res = convert(src, "tflite", output=tmp_path / "interp.tflite", tile=(12, 10), verify=False)
    x = rand(np.random.default_rng(1), 1, 3, 12, 10, lo=0.0)
    assert np.allclose(run_tflite(res.output, x.transpose(0, 2, 3, 1)), run_ort(m, x), atol=1e-5)
    with pytest.raises(UnsupportedOpError, match="compute sizes"):  # without a fixed size: the advice
        convert(src, "tflite", output=tmp_path / "dyn.tflite", verify=False)
    assert not (tmp_path / "dyn.tflite").exists()


def _photos(folder, *sizes):
    """Random RGB PNGs of the given (h, w) sizes in ``folder``."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (hh, ww) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_verification_pads_a_small_image_as_the_runtime_does_and_scores_its_own_pixels(tmp_path):
    from conversion.verify import compare
    from edge_enhance.evaluation import load_rgb

    files = sorted(_photos(tmp_path / "d", (10, 12)).iterdir())
    seen = []

    def src(x):
        seen.append(x)
        return x.repeat(2, 0).repeat(2, 1)

    def tgt(x):  # wrong only where the padding is: that part is not the image's
        y = src(x)
        y[20:], y[:, 24:] = 5.0, 5.0
        return y

    rep = compare("t", "fp32", src, tgt, None, files, crop=(16, 16), pad=True, tol=0.0)
    assert seen[0].shape == (16, 16, 3) and len(rep.images) == 1 and rep.max_abs_err == 0
    x = load_rgb(files[0]) / np.float32(255)
    assert np.array_equal(seen[0][:10, :12], x) and np.array_equal(seen[0][10, :12], x[8])  # reflected
    assert np.array_equal(seen[0][:10, 12], x[:, 10])  # at the bottom / right


def test_verification_with_no_image_says_so(tmp_path):
    from conversion.verify import compare

    with pytest.raises(ConfigError, match="t: no image to verify on"):
        compare("t", "fp32", lambda x: x, lambda x: x, None, [], tol=1e-4)


def _static_sr(tmp_path):
    src = tmp_path / "static.onnx"
    card = ModelCard(name="s", task="sr", scale=2, receptive_field=7)
    src.write_bytes(residual_sr_model(np.random.default_rng(0), feat=4, card=card,
                                      in_shape=(1, 3, 16, 16)).SerializeToString())
    return src


@pytest.mark.parametrize("to,kw,opt", [("tflite", {"tile": (8, 8)}, "--tile"), ("coreml", {"tile": (8, 8)}, "--tile"),
                                       ("coreml", {"enumerated_shapes": ((16, 16), (8, 8))}, "--enumerated-shapes")])
def test_a_model_fixed_at_one_size_refuses_another_before_converting(tmp_path, to, kw, opt):
    from conversion.cli import convert

    src = _static_sr(tmp_path)
    with pytest.raises(ConfigError, match=rf"static.onnx: input fixed at 16x16 by the model; {opt} must be 16x16 or "
                                          "left out"):
        convert(src, to, dataset=_photos(tmp_path / "d", (40, 40)), **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "static.onnx"]


def test_quantize_refuses_another_tile_for_a_model_fixed_at_one_size(tmp_path, capsys):
    from edge_enhance.cli import main

    src = _static_sr(tmp_path)
    rc = main(["quantize", str(src), "--tile", "8x8", "--calib", str(_photos(tmp_path / "d", (40, 40))), "--no-eval"])
    assert rc == 2 and "input fixed at 16x16 by the model; --tile must be 16x16" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "static.onnx"]


@pytest.mark.parametrize("to", ["tflite", "onnx"])
def test_a_model_fixed_at_one_size_carries_it_in_its_card(tmp_path, to):
    from conversion.cli import convert
    from edge_enhance.backends import read_card

    res = convert(_static_sr(tmp_path), to, dataset=_photos(tmp_path / "d", (40, 40), (36, 44)))
    assert len(res.report.images) == 2 and read_card(res.output).tile == (16, 16)


def _channels_model(c_in, c_out):
    """Conv to c_out * 4 channels + DepthToSpace(2): c_in channels in, c_out out."""
    rng = np.random.default_rng(0)
    return make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                       h.make_node("DepthToSpace", ["c"], ["y"], blocksize=2, name="d2s")],
                      {"w": rand(rng, 4 * c_out, c_in, 3, 3), "b": rand(rng, 4 * c_out)}, [1, c_in, "H", "W"])


@pytest.mark.parametrize("c_in,c_out", [(4, 3), (1, 3), (3, 1)])
def test_a_model_that_is_not_1_to_1_or_3_to_3_channels_is_refused_everywhere(tmp_path, capsys, c_in, c_out):
    from PIL import Image

    from edge_enhance.cli import main

    src = tmp_path / "m.onnx"
    src.write_bytes(_channels_model(c_in, c_out).SerializeToString())
    Image.new("RGB", (12, 10)).save(tmp_path / "a.png")
    said = f"m.onnx: the model takes {c_in} channel(s) and returns {c_out}; edge-enhance runs 1 -> 1 (luma) or 3 -> 3"
    for to in ("tflite", "onnx", "coreml"):
        assert convert_main([src, "--to", to, "--card-task", "sr"] + (["--tile", "16x16"] if to == "coreml" else [])) == 1
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, err
    assert main(["info", str(src)]) != 0 and said in capsys.readouterr().err
    assert main(["enhance", str(tmp_path / "a.png"), "--model", str(src), "--card-task", "sr"]) != 0
    assert said in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.onnx"]
    if c_in in (1, 3):  # a .tflite made elsewhere: refused when loaded (other inputs are refused by their shape)
        from edge_enhance.backends import open_backend

        with pytest.raises(ModelFormatError) as e:
            open_backend(to_tflite(from_onnx(src), tmp_path / "m.tflite"))
        assert said.replace("m.onnx", "m.tflite") in str(e.value)


def test_convert_json_answers_a_script_on_stdout_both_ways(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    data = _photos(tmp_path / "d", (24, 20), (16, 16))
    out = tmp_path / "m.tflite"
    assert convert_main([src, "--to", "tflite", "--card-task", "sr", "--dataset", data, "-o", out, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)  # stdout is the JSON alone
    assert d["output"] == str(out) and d["target"] == "tflite" and d["precision"] == "fp32"
    assert d["size_bytes"] == out.stat().st_size and d["ops"]["DEPTH_TO_SPACE"] == 1
    v = d["verification"]
    assert [r["image"] for r in v["images"]] == ["0.png", "1.png"] and v["max_abs_err"] < 1e-4
    assert v["psnr_between"] == min(r["psnr_between"] for r in v["images"])
    assert convert_main([src, "--to", "tflite", "--tile", "0x3", "--json", "-o", tmp_path / "n.tflite"]) == 2
    io = capsys.readouterr()
    assert json.loads(io.out) == {"error": "--tile '0x3' must be positive", "exit": 2} and "must be positive" in io.err
    assert not (tmp_path / "n.tflite").exists()


@pytest.mark.parametrize("op", ["ConstantOfShape", "Expand", "Tile", "Range"])
def test_a_folded_constant_of_gigabytes_is_refused_before_it_is_made(op):
    # A few hundred bytes of ONNX may ask for any size of constant; folding it used to allocate it all.
    big = np.array([1, 3, 3000, 3000], np.int64)
    make = {
        "ConstantOfShape": ([h.make_node("ConstantOfShape", ["s"], ["c"], name="grow")], {"s": big}),
        "Expand": ([h.make_node("Expand", ["one", "s"], ["c"], name="grow")],
                   {"one": np.ones((1, 1, 1, 1), np.float32), "s": big}),
        "Tile": ([h.make_node("Tile", ["one", "s"], ["c"], name="grow")],
                 {"one": np.ones((1, 1, 1, 1), np.float32), "s": big}),
        "Range": ([h.make_node("Range", ["a", "b", "d"], ["c"], name="grow")],
                  {"a": np.array(0, np.float32), "b": np.array(3e7, np.float32), "d": np.array(1, np.float32)}),
    }
    nodes, inits = make[op]
    nodes = nodes + [h.make_node("ReduceMean", ["c"], ["m"], keepdims=0), h.make_node("Add", ["x", "m"], ["y"])]
    with pytest.raises(ModelFormatError, match=rf"node grow \({op}\) makes a constant of 27,000,000 values"
                                               if op != "Range" else r"node grow \(Range\) makes a constant of 30,000,000"):
        from_onnx(make_model(nodes, inits, [1, 3, None, None]))


def test_verification_table_columns_line_up_under_wide_names():
    from conversion.verify import ImageResult, VerifyReport
    from edge_enhance.cli import _cells

    rep = VerifyReport("tflite", "fp32", [ImageResult("夕焼け.png", 1e-6, 120.0, 30.0, 30.0),
                                          ImageResult("a.png", 2e-6, 110.0, 31.0, 31.0)])
    lines = rep.table().splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == ["image", "夕焼け.png", "a.png", "all"]
    assert len({_cells(ln[:ln.index(ln.split()[1])]) for ln in lines}) == 1  # the second column starts in one place


def test_int8_folds_sizes_computed_from_the_input_shape_for_a_tile_and_calibrates_at_it(tmp_path, capsys):
    from edge_enhance import cli
    from tests.conversion_testkit import run_ort, run_tflite

    m = _resize_to_twice_the_input_shape()
    src = tmp_path / "interp.onnx"
    src.write_bytes(m.SerializeToString())
    calib = _photos(tmp_path / "calib", *[(40, 40)] * 4)
    base = ["--card-task", "sr", "--calib", str(calib), "--calib-count", "4", "--no-eval"]
    out = tmp_path / "interp.int8.tflite"
    assert cli.main(["quantize", str(src), "--tile", "12x12", "-o", str(out), *base]) == 0, capsys.readouterr().err
    x = rand(np.random.default_rng(1), 1, 3, 12, 12, lo=0.0, hi=1.0)
    got, want = run_tflite(out, x.transpose(0, 2, 3, 1)), run_ort(m, x)
    assert got.shape == want.shape == (1, 24, 24, 3) and np.abs(got - want).max() < 0.05
    capsys.readouterr()
    # Without a tile: the advice (a model quantize cannot take as given: bad input, 2; 1 is a missed --max-drop);
    # with a non-square one: calibration's square crops cannot feed it.
    assert cli.main(["quantize", str(src), "-o", str(tmp_path / "a.tflite"), *base]) == 2
    assert "compute sizes" in capsys.readouterr().err
    assert cli.main(["quantize", str(src), "--tile", "12x10", "-o", str(tmp_path / "b.tflite"), *base]) == 2
    assert "give a square --tile" in capsys.readouterr().err
    assert not (tmp_path / "a.tflite").exists() and not (tmp_path / "b.tflite").exists()


@pytest.mark.parametrize("to, kw", [("onnx", {}), ("tflite", {}), ("coreml", {"tile": (16, 16)})])
def test_fp16_output_past_its_tolerance_or_overflowing_is_refused(tmp_path, to, kw):
    from conversion.cli import SUFFIX, convert
    from conversion.errors import VerificationError

    if to == "coreml":
        pytest.importorskip("coremltools")
    # Activations of about 3e5 between two convs: past fp16's 65504 where fp16 computes (ONNX fp16, Core ML),
    # and weights fp16 cannot hold to 1e-4 where it only stores them (TFLite).
    w1, w2 = np.full((3, 3, 3, 3), 30.0, np.float32), np.full((3, 3, 3, 3), 30 / 810 / 27 + 1e-3, np.float32)
    m = make_model([h.make_node("Conv", ["x", "w1"], ["c"], pads=[1] * 4), h.make_node("Mul", ["c", "k"], ["d"]),
                    h.make_node("Conv", ["d", "w2"], ["y"], pads=[1] * 4)],
                   {"w1": w1, "w2": w2, "k": np.array(100.0, np.float32)}, [1, 3, "h", "w"])
    src = tmp_path / "overflow.onnx"
    src.write_bytes(m.SerializeToString())
    photos = _photos(tmp_path / "photos", (24, 24), (20, 28))
    out = tmp_path / f"o{SUFFIX[to]}"
    with pytest.raises(VerificationError, match=r"fp16: (max abs error [\d.]+ exceeds 0\.0156863|the output holds "
                                                r"inf / NaN)"):
        convert(src, to, output=out, precision="fp16", dataset=photos, **kw)
    assert not out.exists()
    fine = tmp_path / "fine_src.onnx"  # the same graph at a scale fp16 holds passes
    m.graph.initializer[2].CopyFrom(nh.from_array(np.array(1e-3, np.float32), "k"))
    fine.write_bytes(m.SerializeToString())
    assert convert(fine, to, output=tmp_path / f"fine{SUFFIX[to]}", precision="fp16", dataset=photos, **kw).report


def test_an_output_made_by_a_final_slice_keeps_the_onnx_name(tmp_path):
    """A conv to 4 channels then x[:, :3] (or a crop back after padding): the app's signature key was the
    tensor before the slice ('sl' / '/Add_output_0'), not the ONNX output's name."""
    from conversion.cli import convert
    from tests.conversion_testkit import run_ort, run_tflite

    rng = np.random.default_rng(2)
    m = make_model([h.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4, name="conv"),
                    h.make_node("Slice", ["c", "s", "e", "a"], ["y"], name="sl")],
                   {"w": rand(rng, 4, 3, 3, 3), "s": np.array([0]), "e": np.array([3]), "a": np.array([1])},
                   [1, 3, "h", "w"])
    g = from_onnx(m)
    assert g.outputs == ["y"] and "y" in g.tensors and g.producer("y") is not None
    src = tmp_path / "sl.onnx"
    src.write_bytes(m.SerializeToString())
    out = convert(src, "tflite", output=tmp_path / "sl.tflite", verify=False).output
    x = rand(rng, 1, 3, 6, 5, lo=0.0)
    y, _, o = run_tflite(out, x.transpose(0, 2, 3, 1), details=True)
    assert np.allclose(y, run_ort(m, x), atol=1e-5) and o["name"] == "y"


@pytest.mark.parametrize("cmd", [["convert", "--to", "tflite"], ["convert", "--to", "coreml"], ["quantize", "--no-eval"],
                                 ["prune", "--target-macs", "0.5", "--no-eval"]])
def test_an_output_smaller_than_the_input_is_named_before_any_work(tmp_path, capsys, cmd):
    """A 3x3 conv without pads gives 30x30 for 32x32: the runtime cannot tile it; convert / quantize / prune say so
    at once, with the file and the likely cause (before: a raw numpy error out of verification or calibration)."""
    from edge_enhance.cli import main

    w = np.random.default_rng(0).normal(0, 0.1, (3, 3, 3, 3)).astype(np.float32)
    src = tmp_path / "valid.onnx"
    src.write_bytes(make_model([h.make_node("Conv", ["x", "w"], ["y"])], {"w": w}, [1, 3, None, None])
                    .SerializeToString())
    calib = ["--calib", str(_photos(tmp_path / "d", (40, 40)))] if cmd[0] != "convert" else []
    rc = main([cmd[0], str(src), *cmd[1:], "--card-task", "denoise", *calib])
    err = capsys.readouterr().err
    assert rc != 0 and "valid.onnx: output 30x30 for a 32x32 input, not the input scaled by 1 (convolutions without " \
                       "padding shrink it" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == (["d"] if calib else []) + ["valid.onnx"]


def test_python_m_conversion_cli_prints_any_name_on_a_cp1252_console(monkeypatch):
    """Windows: `wrote выход.tflite` raised UnicodeEncodeError after the model was written."""
    from tests.conftest import cp1252_console, run_as_main

    out = cp1252_console(monkeypatch)
    assert run_as_main("conversion.cli", monkeypatch, "--help") == 0
    print("wrote выход.tflite")
    assert out.buffer.getvalue().endswith(b"wrote \\u0432\\u044b\\u0445\\u043e\\u0434.tflite\n")


def test_convert_without_a_tflite_engine_says_what_verifying_needs(tmp_path, monkeypatch, capsys):
    """Windows on ARM: no ai-edge-litert wheel, so the convert extra installs without it (and no other engine
    is there); convert ended in a ModuleNotFoundError traceback."""
    import sys

    from conversion.cli import convert
    from edge_enhance.backends.litert import interpreter_module
    from edge_enhance.errors import BackendUnavailableError

    src = tmp_path / "m.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    for engine in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
        monkeypatch.setitem(sys.modules, engine, None)
    interpreter_module.cache_clear()
    try:
        with pytest.raises(BackendUnavailableError, match=r"the converted m\.tflite is verified in a TFLite engine "
                           r"before it is written: no TFLite engine installed: .* choose --to onnx, or write it "
                           r"unchecked with --no-verify"):
            convert(src, "tflite", output=tmp_path / "m.tflite", card={"task": "sr"})
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
        # --no-verify writes it all the same, and says it was not checked
        assert convert_main([src, "--to", "tflite", "--card-task", "sr", "--no-verify", "-o", tmp_path / "m.tflite"]) == 0
    finally:
        interpreter_module.cache_clear()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.tflite"]
    out = capsys.readouterr().out
    assert out.startswith("not verified (--no-verify)") and "wrote " in out
    assert (tmp_path / "m.tflite").read_bytes()[4:8] == b"TFL3"


def test_no_verify_with_verification_options_is_refused(tmp_path, capsys):
    src = tmp_path / "m.onnx"
    src.write_bytes(residual_sr_model(np.random.default_rng(0)).SerializeToString())
    for extra in (["--verify-images", "2"], ["--dataset", str(tmp_path)]):
        assert convert_main([src, "--to", "tflite", "--card-task", "sr", "--no-verify", *extra]) == 2
        assert "--no-verify runs no images" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]

