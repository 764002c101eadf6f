"""Receptive field, scale and align read off the IR, and cards made from them for card-less models."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conversion_testkit import h, make_model, rand
from tests.onnx_models import half_res_denoise, residual_sr

from conversion.errors import ConfigError
from conversion.footprint import attach_card, check_card, footprint
from conversion.onnx_import import from_onnx
from edge_enhance import Enhancer
from edge_enhance.card import CARD_KEY, ModelCard
from edge_enhance.tiling import TilingConfig

MODELS = Path(__file__).resolve().parents[1] / "edge_enhance" / "models"


@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_residual_nets_and_half_res_match_their_known_receptive_fields(tmp_path, scale):
    residual_sr(tmp_path / "m.onnx", scale=scale, layers=3)
    fp = footprint(from_onnx(str(tmp_path / "m.onnx")))
    assert (fp.receptive_field, fp.scale, fp.align) == (9, scale, 1)
    fp = footprint(from_onnx(half_res_denoise(layers=2)))
    assert (fp.receptive_field, fp.scale, fp.align) == (17, 1, 2)


@pytest.mark.parametrize("path", sorted(MODELS.glob("*.onnx")), ids=lambda p: p.stem)
def test_bundled_models_cards_agree_with_their_graphs(path):
    g = from_onnx(path)
    card = ModelCard.from_json(g.metadata[CARD_KEY])
    fp = footprint(g)
    assert (fp.receptive_field, fp.scale, fp.align) == (card.receptive_field, card.scale, card.align)


def _conv(rng, name, x, cin, cout, k=3, **attrs):
    w, b = rand(rng, cout, cin, k, k, lo=-0.4, hi=0.4), rand(rng, cout, lo=-0.1, hi=0.1)
    return h.make_node("Conv", [x, name + "w", name + "b"], [name], name=name, **attrs), {name + "w": w, name + "b": b}


def _net(kind, rng):
    """Small card-less nets whose reach the tests check by tiling: dilation, stride 2 + DepthToSpace,
    ConvTranspose, bilinear Resize, reflect padding, a 5x5 first conv (ESPCN-like), a luma input."""
    c = 1 if kind == "luma" else 3
    nodes, inits = [], {}

    def add(node_inits):
        nodes.append(node_inits[0])
        inits.update(node_inits[1])
        return node_inits[0].output[0]

    if kind == "dilated":
        t = add(_conv(rng, "c1", "x", c, 6, pads=[2, 2, 2, 2], dilations=[2, 2]))
        t = add(_conv(rng, "c2", t, 6, 3, pads=[1, 1, 1, 1]))
    elif kind == "stride2":
        t = add(_conv(rng, "c1", "x", c, 8, k=4, strides=[2, 2], pads=[1, 1, 1, 1]))
        t = add(_conv(rng, "c2", t, 8, 12, pads=[1, 1, 1, 1]))
        nodes.append(h.make_node("DepthToSpace", [t], ["d"], blocksize=2, mode="DCR", name="d2s"))
        t = "d"
    elif kind == "transpose":
        t = add(_conv(rng, "c1", "x", c, 6, pads=[1, 1, 1, 1]))
        inits.update({"tw": rand(rng, 6, 3, 4, 4, lo=-0.3, hi=0.3), "tb": rand(rng, 3, lo=-0.1, hi=0.1)})
        nodes.append(h.make_node("ConvTranspose", [t, "tw", "tb"], ["ct"], strides=[2, 2], pads=[1, 1, 1, 1],
                                 name="up"))
        t = "ct"
    elif kind == "reflect":  # nn.Conv2d(padding_mode="reflect") twice
        inits["p"] = np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)
        nodes.append(h.make_node("Pad", ["x", "p"], ["xp"], mode="reflect", name="pad1"))
        t = add(_conv(rng, "c1", "xp", c, 6))
        nodes.append(h.make_node("Pad", [t, "p"], ["tp"], mode="reflect", name="pad2"))
        t = add(_conv(rng, "c2", "tp", 6, 3))
    elif kind == "bicubic":  # a residual over F.interpolate(x, 2, "bicubic")
        inits["sc"] = np.array([1, 1, 2, 2], np.float32)
        nodes.append(h.make_node("Resize", ["x", "", "sc"], ["up"], mode="cubic", name="bicubic"))
        t = add(_conv(rng, "c1", "x", c, 12, pads=[1, 1, 1, 1]))
        nodes.append(h.make_node("DepthToSpace", [t], ["d"], blocksize=2, mode="DCR", name="d2s"))
        nodes.append(h.make_node("Add", ["d", "up"], ["sum"], name="add"))
        t = "sum"
    elif kind == "resize":
        t = add(_conv(rng, "c1", "x", c, 3, pads=[1, 1, 1, 1]))
        inits["sc"] = np.array([1, 1, 2, 2], np.float32)
        nodes.append(h.make_node("Resize", [t, "", "sc"], ["r"], mode="linear", name="up"))
        t = "r"
    else:  # espcn-like, luma
        t = add(_conv(rng, "c1", "x", c, 8, k=5, pads=[2, 2, 2, 2]))
        nodes.append(h.make_node("Relu", [t], ["r1"], name="relu"))
        t = add(_conv(rng, "c2", "r1", 8, 9 * c, pads=[1, 1, 1, 1]))
        nodes.append(h.make_node("DepthToSpace", [t], ["d"], blocksize=3, mode="CRD", name="ps"))
        t = "d"
    nodes.append(h.make_node("Identity", [t], ["y"], name="out"))
    return make_model(nodes, inits, [1, c, "H", "W"], opset=13)


@pytest.mark.parametrize("kind,expect", [("dilated", (7, 1, 1)), ("stride2", (9, 1, 2)), ("transpose", (5, 2, 1)),
                                         ("resize", (5, 2, 1)), ("luma", (7, 3, 1)), ("reflect", (5, 1, 1)), ("bicubic", (5, 2, 1))])
def test_card_from_the_graph_makes_tiling_exact(tmp_path, kind, expect):
    m = _net(kind, np.random.default_rng(len(kind)))
    src = tmp_path / f"{kind}.onnx"
    src.write_bytes(m.SerializeToString())
    g = from_onnx(str(src))
    card = attach_card(g, src, "sr" if expect[1] > 1 else "denoise")
    assert (card.receptive_field, card.scale, card.align) == expect
    assert card.colour == ("y" if kind == "luma" else "rgb")
    img = np.random.default_rng(0).integers(0, 256, (38, 46, 3), dtype=np.uint8)
    whole = Enhancer(src, card=card).enhance(img)
    tiled = Enhancer(src, card=card, tiling=TilingConfig(tile=(16, 16)))
    assert np.array_equal(tiled.enhance(img), whole) and tiled.last_run.tiles > 4


def test_the_receptive_field_is_tight_for_plain_convs(tmp_path):
    """One pixel less of margin and the tiles show: the field read off the graph is not padded."""
    residual_sr(tmp_path / "m.onnx", scale=2, layers=3, card={})
    card = attach_card(from_onnx(str(tmp_path / "m.onnx")), tmp_path / "m.onnx", "sr")
    img = np.random.default_rng(1).integers(0, 256, (40, 44, 3), dtype=np.uint8)
    whole = Enhancer(tmp_path / "m.onnx", card=card).enhance(img)
    small = ModelCard(name="m", task="sr", scale=2, receptive_field=card.receptive_field - 2)
    tiled = Enhancer(tmp_path / "m.onnx", card=small, tiling=TilingConfig(tile=(16, 16))).enhance(img)
    assert not np.array_equal(tiled, whole)


def test_a_graph_without_one_scale_needs_the_card_given(tmp_path):
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest", name="up")],
                   {"sc": np.array([1, 1, 2, 3], np.float32)}, [1, 3, 5, 6])
    g = from_onnx(m)
    with pytest.raises(ConfigError, match="up: Resize by 2 x 3"):
        footprint(g)
    with pytest.raises(ConfigError, match="pass --card-scale, --card-receptive-field and --card-align"):
        attach_card(g, "m.onnx", "sr")


def test_an_align_corners_resize_is_refused_as_untileable(tmp_path):
    """Its samples sit at k (n_in - 1) / (n_out - 1): a 64-pixel tile and the whole photo sample differently
    (a probe measured 45 levels between them), though the card said receptive field 3."""
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", name="up",
                                coordinate_transformation_mode="align_corners")],
                   {"sc": np.array([1, 1, 2, 2], np.float32)}, [1, 3, "H", "W"])
    with pytest.raises(ConfigError, match="up: a Resize with align_corners samples by the whole image's size"):
        attach_card(from_onnx(m), "m.onnx", "sr")


def test_a_model_carrying_its_own_card_is_checked_against_its_graph(tmp_path, caplog):
    """convert / quantize / prune trust a card for its task, but not for what the graph contradicts."""
    from conversion.cli import convert

    card = {"name": "m", "task": "sr", "scale": 2, "receptive_field": 9, "base": "nearest"}
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["r"], mode="linear", name="up",
                                coordinate_transformation_mode="align_corners"),
                    h.make_node("Relu", ["r"], ["y"])],
                   {"sc": np.array([1, 1, 2, 2], np.float32)}, [1, 3, "H", "W"], metadata={CARD_KEY: json.dumps(card)})
    (tmp_path / "ac.onnx").write_bytes(m.SerializeToString())
    with pytest.raises(ConfigError, match=r"ac\.onnx: up: a Resize with align_corners"):
        convert(tmp_path / "ac.onnx", "tflite", output=tmp_path / "ac.tflite", verify=False)
    assert not (tmp_path / "ac.tflite").exists()
    from quantization.report import load_model  # quantize and prune load through it

    with pytest.raises(ConfigError, match="align_corners"):
        load_model(tmp_path / "ac.onnx")

    residual_sr(tmp_path / "liar.onnx", scale=2, layers=3, card={**card, "scale": 3})
    with pytest.raises(ConfigError, match=r"liar\.onnx: the card says scale 3, but the graph's output is 2x"):
        check_card(from_onnx(str(tmp_path / "liar.onnx")), tmp_path / "liar.onnx")

    residual_sr(tmp_path / "narrow.onnx", scale=2, layers=3, card={**card, "receptive_field": 5})
    with caplog.at_level("WARNING"):
        convert(tmp_path / "narrow.onnx", "tflite", output=tmp_path / "narrow.tflite", verify=False)
    assert "receptive field 5 is below the graph's 9" in caplog.text and "(a bound" not in caplog.text
    assert (tmp_path / "narrow.tflite").exists()  # a warning: the file is still the graph it was given
    caplog.clear()
    residual_sr(tmp_path / "fair.onnx", scale=2, layers=3)
    check_card(from_onnx(str(tmp_path / "fair.onnx")), "fair.onnx")
    assert caplog.text == ""


def test_attach_card_refuses_a_carded_model_a_missing_task_and_a_wrong_scale(tmp_path):
    residual_sr(tmp_path / "carded.onnx", scale=2)
    with pytest.raises(ConfigError, match="carries its own card"):
        attach_card(from_onnx(str(tmp_path / "carded.onnx")), "carded.onnx", "sr")
    residual_sr(tmp_path / "plain.onnx", scale=2, card={})
    g = from_onnx(str(tmp_path / "plain.onnx"))
    with pytest.raises(ConfigError, match="needs --card-task"):
        attach_card(g, "plain.onnx")
    with pytest.raises(ConfigError, match="--card-scale 3, but the graph's output is 2x"):
        attach_card(g, "plain.onnx", "sr", scale=3)


def _convert_cli(argv):
    from conversion.cli import add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args(argv))


def test_convert_and_quantize_write_the_card_of_a_card_less_model(tmp_path, capsys):
    pytest.importorskip("ai_edge_litert")
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")
    src = tmp_path / "plain.onnx"
    residual_sr(src, scale=3, layers=2, card={})
    out = tmp_path / "plain.tflite"
    assert _convert_cli([str(src), "--to", "tflite", "--card-task", "sr", "-o", str(out), "--verify-images", "1"]) == 0
    assert "task PSNR" in capsys.readouterr().out
    e = Enhancer(out)  # no --card-* needed any more
    assert (e.card.task, e.card.scale, e.card.receptive_field, e.card.layout) == ("sr", 3, 7, "nhwc")
    rc = _convert_cli([str(src), "--to", "tflite", "--precision", "int8", "-o", str(tmp_path / "q.tflite")])
    assert rc != 0 and "--card-task" in capsys.readouterr().err
    q = tmp_path / "q.tflite"
    assert _convert_cli([str(src), "--to", "tflite", "--precision", "int8", "--card-task", "sr", "-o", str(q)]) == 0
    assert Enhancer(q).card.receptive_field == 7


def test_converting_a_card_less_model_without_a_card_says_what_the_output_will_lack(tmp_path, caplog):
    src = tmp_path / "plain.onnx"
    residual_sr(src, scale=2, layers=1, card={})
    with caplog.at_level("WARNING"):
        assert _convert_cli([str(src), "--to", "onnx", "-o", str(tmp_path / "o.onnx")]) == 0
    assert "plain.onnx has no edge-enhance card, so neither will o.onnx" in caplog.text
    assert "--card-task TASK" in caplog.text


def test_prune_writes_the_card_of_a_card_less_model(tmp_path):
    from quantization import prune_cli

    src = tmp_path / "plain.onnx"
    residual_sr(src, scale=2, layers=2, channels=8, card={})
    out = tmp_path / "p.onnx"
    p = argparse.ArgumentParser()
    prune_cli.add_arguments(p)
    calib = tmp_path / "calib"
    calib.mkdir()
    from PIL import Image

    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (100, 100, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    argv = [str(src), "--target-macs", "0.7", "--card-task", "sr", "--calib", str(calib), "--eval", str(calib),
            "--force", "-o", str(out), "-q"]
    assert prune_cli.main(p.parse_args(argv)) == 0
    import onnx

    card = json.loads({q.key: q.value for q in onnx.load(str(out)).metadata_props}[CARD_KEY])
    assert (card["task"], card["scale"], card["receptive_field"]) == ("sr", 2, 7)


@pytest.mark.parametrize("to", ["onnx", "tflite"])
def test_fixed_tile_too_large_for_the_protocol_is_verified_on_the_images(tmp_path, to, caplog):
    """A zoo-style x3 luma model fixed at 200x200 would need 600-pixel originals under the sr protocol:
    verified on the images as they are, without a task PSNR, instead of failing."""
    pytest.importorskip("ai_edge_litert")
    from conversion.cli import convert
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")
    src = tmp_path / "zoo.onnx"
    residual_sr(src, scale=3, layers=2, colours=1, fixed=(200, 200), card={})
    res = convert(src, to, output=tmp_path / f"out.{to}", max_images=1, card={"task": "sr"})
    assert res.report.max_abs_err < 1e-4 and res.report.task_psnr_source is None
    assert "no task PSNR" in caplog.text
    assert Enhancer(res.output).card.receptive_field == 7


def _nhwc_model():
    """A TensorFlow / Keras SR net as tf2onnx exports it: NHWC in and out around an NCHW body."""
    rng = np.random.default_rng(9)
    nodes = [h.make_node("Transpose", ["input_1:0"], ["t0"], perm=[0, 3, 1, 2], name="in_t"),
             h.make_node("Conv", ["t0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="c1"),
             h.make_node("Relu", ["c1"], ["r1"], name="r1"),
             h.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="c2"),
             h.make_node("DepthToSpace", ["c2"], ["d"], blocksize=2, mode="DCR", name="d2s"),
             h.make_node("Transpose", ["d"], ["Identity:0"], perm=[0, 2, 3, 1], name="out_t")]
    inits = {"w1": rand(rng, 8, 3, 3, 3, lo=-0.3, hi=0.3), "b1": rand(rng, 8, lo=0, hi=0.1),
             "w2": rand(rng, 12, 8, 3, 3, lo=-0.3, hi=0.3), "b2": rand(rng, 12, lo=0, hi=0.1)}
    return make_model(nodes, inits, ["unk", "h", "w", 3], out="Identity:0", inputs=("input_1:0",))


def test_nhwc_io_model_from_tf2onnx_converts_without_transposes(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from tests.conversion_testkit import run_tflite

    from conversion.tflite_writer import tflite_ops, to_tflite

    m = _nhwc_model()
    g = from_onnx(m)
    assert [n.op for n in g.nodes] == ["Conv", "Conv", "DepthToSpace"] and g.tensors[g.inputs[0]].shape[3] == 3
    path = to_tflite(g, tmp_path / "m.tflite")
    assert tflite_ops(path) == ["CONV_2D", "CONV_2D", "DEPTH_TO_SPACE"]
    x = rand(np.random.default_rng(1), 1, 9, 7, 3, lo=0, hi=1)
    import onnxruntime as ort

    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input_1:0": x})[0]
    np.testing.assert_allclose(run_tflite(path, x), ref, atol=1e-5, rtol=0)
    assert footprint(g).receptive_field == 5


def test_nhwc_io_model_verifies_and_runs_as_its_conversion(tmp_path):
    pytest.importorskip("ai_edge_litert")
    from conversion.cli import convert
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")
    src = tmp_path / "keras.onnx"
    src.write_bytes(_nhwc_model().SerializeToString())
    res = convert(src, "tflite", output=tmp_path / "keras.tflite", max_images=2, crop=(24, 24), card={"task": "sr"})
    assert res.report.max_abs_err < 1e-4
    img = np.random.default_rng(2).integers(0, 256, (20, 26, 3), dtype=np.uint8)
    card = ModelCard(name="keras", task="sr", scale=2, receptive_field=5)
    a = Enhancer(src, card=card)  # ONNX Runtime reads NHWC from the input's shape
    assert a.backend.layout == "nhwc"
    assert np.abs(a.enhance(img).astype(int) - Enhancer(res.output).enhance(img)).max() <= 1


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_nhwc_io_model_converted_to_onnx_keeps_its_nhwc_interface(tmp_path, precision):
    """--to onnx wrote NCHW input and output ([1, 3, h, w]) for an NHWC model, and said nothing: an app that fed
    the tensors it fed before got INVALID_ARGUMENT; the verification ran each file in its own layout."""
    import onnx
    import onnxruntime as ort

    from conversion.cli import convert
    from conversion.verify import default_dataset

    if not default_dataset().is_dir():
        pytest.skip("evaluation images not found")
    src = tmp_path / "keras.onnx"
    m = _nhwc_model()
    src.write_bytes(m.SerializeToString())
    res = convert(src, "onnx", precision=precision, output=tmp_path / "out.onnx", max_images=1, crop=(24, 24),
                  card={"task": "sr"})
    out = onnx.load(str(res.output))
    dims = [[d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim] for v in (out.graph.input[0],
                                                                                        out.graph.output[0])]
    assert dims[0][3] == 3 and dims[1][3] == 3
    x = rand(np.random.default_rng(3), 1, 9, 7, 3, lo=0, hi=1)
    ref = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"input_1:0": x})[0]
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {out.graph.input[0].name: x})[0]
    np.testing.assert_allclose(got, ref, atol=1e-5 if precision == "fp32" else 2e-3, rtol=0)
    assert Enhancer(res.output).card.layout == "nhwc"
