"""A whole small residual SR net, ONNX file -> every target, verified on real images; and the CLI."""
from __future__ import annotations

import argparse
import re

import numpy as np
import pytest

from tests.conversion_testkit import residual_sr_model, run_ort, run_tflite

from conversion.cli import add_arguments, convert, main
from conversion.errors import ConfigError, VerificationError
from conversion.verify import default_dataset, verify_tflite
from edge_enhance.card import ModelCard

SET5 = default_dataset()
needs_set5 = pytest.mark.skipif(not SET5.is_dir(), reason=f"evaluation images not found at {SET5}")
CROP = (40, 48)  # keep the suite fast: verify on crops of the real images


@pytest.fixture(params=[2, 3], ids=["x2", "x3"])
def sr_file(request, tmp_path):
    scale = request.param
    card = ModelCard(name=f"test-sr-x{scale}", task="sr", scale=scale, receptive_field=7)
    m = residual_sr_model(np.random.default_rng(scale), scale=scale, card=card)
    p = tmp_path / f"sr_x{scale}.onnx"
    p.write_bytes(m.SerializeToString())
    return p, m


@needs_set5
@pytest.mark.parametrize("to,precision", [("tflite", "fp32"), ("tflite", "fp16"), ("onnx", "fp32"), ("onnx", "fp16")])
def test_sr_net_every_target(tmp_path, sr_file, to, precision):
    src, model = sr_file
    res = convert(src, to, precision=precision, output=tmp_path / f"out_{to}_{precision}.bin", dataset=SET5,
                  max_images=2, crop=CROP)
    rep = res.report
    assert res.output.is_file() and res.size_bytes > 1000
    assert len(rep.images) == 2
    if precision == "fp32":
        assert rep.max_abs_err <= 1e-4
    else:
        assert rep.max_abs_err < 1e-2 and rep.psnr_between > 45
    # The task PSNR is measured on real images for both and must agree closely.
    assert abs(rep.task_psnr_source - rep.task_psnr_target) < (0.01 if precision == "fp32" else 0.2)
    if to == "tflite":
        assert "TRANSPOSE" not in res.ops and res.ops["DEPTH_TO_SPACE"] == 1
        x = np.random.default_rng(0).uniform(0, 1, (1, 3, 11, 13)).astype(np.float32)
        y = run_tflite(res.output, x.transpose(0, 2, 3, 1))  # dynamic shape: any size runs
        np.testing.assert_allclose(y, run_ort(model, x), atol=1e-2 if precision == "fp16" else 1e-4)


@needs_set5
def test_fixed_tile_and_transpose_conv_d2s(tmp_path, sr_file):
    src, _ = sr_file
    res = convert(src, "tflite", tile=(32, 40), d2s_as_transpose_conv=True, output=tmp_path / "t.tflite",
                  dataset=SET5, max_images=1)
    assert "DEPTH_TO_SPACE" not in res.ops and res.ops["TRANSPOSE_CONV"] == 1
    assert res.report.max_abs_err <= 1e-4


@needs_set5
def test_verification_failure_raises(tmp_path, sr_file):
    """A target that computes something else is caught (and the tolerance is real)."""
    src, model = sr_file
    from conversion.onnx_import import from_onnx
    from conversion.tflite_writer import to_tflite

    g = from_onnx(src)
    conv = next(n for n in g.nodes if n.op == "Conv")
    g.tensors[conv.inputs[2]].data = g.tensors[conv.inputs[2]].data + 1e-2  # a wrong bias
    bad = to_tflite(g, tmp_path / "bad.tflite")
    with pytest.raises(VerificationError, match="exceeds"):
        verify_tflite(model, bad, dataset=SET5, max_images=1, crop=CROP)


def _cli(argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return main(p.parse_args(argv))


@needs_set5
def test_cli_prints_table_and_summary(tmp_path, sr_file, capsys):
    src, _ = sr_file
    out = tmp_path / "cli.tflite"
    rc = _cli([str(src), "--to", "tflite", "-o", str(out), "--dataset", str(SET5), "--verify-images", "1"])
    text = capsys.readouterr().out
    assert rc == 0 and out.is_file()
    assert "max|err|" in text and "CONV_2D" in text and "delegate-friendly" in text


def test_cli_errors_write_nothing(tmp_path, sr_file, capsys):
    src, _ = sr_file
    before = set(tmp_path.iterdir())
    assert _cli([str(src), "--to", "coreml", "--precision", "int16x8"]) == 2
    assert "int16x8 (16-bit activations, 8-bit weights) applies to --to tflite only" in capsys.readouterr().err
    assert _cli([str(src), "--to", "tflite", "--tile", "abc"]) == 2
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    assert _cli([str(bad), "--to", "tflite", "-o", str(tmp_path / "x.tflite")]) == 1
    assert "bad.onnx" in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == before | {bad}


def test_convert_rejects_overwriting_input(tmp_path, sr_file):
    src, _ = sr_file
    with pytest.raises(ConfigError, match="overwrite"):
        convert(src, "onnx", output=src)


@pytest.fixture
def small_and_calib(tmp_path):
    pytest.importorskip("quantization")
    from PIL import Image

    from tests.onnx_models import residual_sr

    src = tmp_path / "small.onnx"
    residual_sr(src, layers=2, channels=4)
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (100, 120, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    return src, calib


def test_cli_int8_tflite_is_calibrated_quantisation(tmp_path, small_and_calib, capsys):
    src, calib = small_and_calib
    out = tmp_path / "q.tflite"
    rc = _cli([str(src), "--to", "tflite", "--precision", "int8", "--io", "uint8", "--calib", str(calib),
               "--dataset", str(calib), "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(out))
    assert it.get_input_details()[0]["dtype"] == np.uint8
    assert "drop" in capsys.readouterr().out


def _op_dtypes(path):
    """(op name, output dtype, [input dtypes]) per operator, as the LiteRT interpreter sees them."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    it.allocate_tensors()
    dt = {d["index"]: d["dtype"] for d in it.get_tensor_details()}
    return [(op["op_name"], dt[op["outputs"][0]], [dt[i] for i in op["inputs"] if i >= 0])
            for op in it._get_ops_details()]


def test_cli_int16x8_tflite_runs_16x8_layers_in_litert(tmp_path, small_and_calib, capsys):
    src, calib = small_and_calib
    outs = {}
    for precision in ("int8", "int16x8"):
        outs[precision] = tmp_path / f"q.{precision}.tflite"
        rc = _cli([str(src), "--to", "tflite", "--precision", precision, "--calib", str(calib),
                   "--dataset", str(calib), "-o", str(outs[precision])])
        text = capsys.readouterr().out
        assert rc == 0
    assert "16x8 (int16 activations, int8 weights): Add x1, Conv x3" in text
    assert "int8: Clip x1, Concat x1, DepthToSpace x1" in text and re.search(r"fp32 [\d.]+ dB, int16x8 [\d.]+ dB", text)
    ops = _op_dtypes(outs["int16x8"])
    for name, out, ins in ops:
        if name == "CONV_2D":  # 16x8: int16 activations, int8 weights, int64 bias
            assert (out, ins[0], ins[1], ins[2]) == (np.int16, np.int16, np.int8, np.int64)
        if name in ("ADD", "DEPTH_TO_SPACE", "RELU_0_TO_1"):
            assert out == (np.int16 if name == "ADD" else np.int8), name
    assert sum(name == "CONV_2D" for name, _, _ in ops) == 3
    import onnx

    x = np.round(np.random.default_rng(1).uniform(0, 1, (1, 3, 24, 20)) * 255).astype(np.float32) / 255
    want = run_ort(onnx.load(str(src)), x)
    err = {p: np.abs(run_tflite(f, x.transpose(0, 2, 3, 1)) - want) for p, f in outs.items()}
    # A random-weight net on noise: int8 weight rounding is most of the error, still 16x8 must be
    # closer to float on average and clip nothing (0.26 / 3.4 vs int8's 0.31 / 3.9 steps of 1/255).
    assert err["int16x8"].mean() < err["int8"].mean() and err["int16x8"].max() <= 4 / 255
    # Delegates and TFLite Micro gate on op versions and options: the int16 kernels' (op_version.cc).
    import tflite

    m = tflite.Model.GetRootAsModel(outs["int16x8"].read_bytes(), 0)
    sg = m.Subgraphs(0)
    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    codes = [m.OperatorCodes(i) for i in range(m.OperatorCodesLength())]
    versions = {names[c.BuiltinCode()]: c.Version() for c in codes}
    assert versions["ADD"] == 3 and versions["QUANTIZE"] >= 2, versions
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        if names[m.OperatorCodes(op.OpcodeIndex()).BuiltinCode()] == "ADD":
            opts = tflite.AddOptions()
            opts.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
            assert not opts.PotScaleInt16()  # calibrated scales: the general-scale kernel


def test_cli_int16x8_needs_float_io_and_tflite(tmp_path, small_and_calib, capsys):
    src, calib = small_and_calib
    assert _cli([str(src), "--to", "tflite", "--precision", "int16x8", "--io", "uint8", "--calib", str(calib)]) == 2
    assert "float I/O" in capsys.readouterr().err
    assert _cli([str(src), "--to", "onnx", "--precision", "int16x8"]) == 2
    assert "--to tflite only" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib", "small.onnx"]


@pytest.mark.parametrize("precision", ["int8", "int16x8"])
def test_cli_quantised_tflite_with_tile_and_transpose_conv_d2s(tmp_path, small_and_calib, capsys, precision):
    src, calib = small_and_calib
    out = tmp_path / "q.tflite"
    assert _cli([str(src), "--to", "tflite", "--precision", precision, "--tile", "24x20", "--d2s-as-transpose-conv",
                 "--calib", str(calib), "--dataset", str(calib), "-o", str(out)]) == 0, capsys.readouterr().err
    ops = _op_dtypes(out)
    names = [name for name, _, _ in ops]
    assert "TRANSPOSE_CONV" in names and "DEPTH_TO_SPACE" not in names
    tconv = next(o for o in ops if o[0] == "TRANSPOSE_CONV")
    assert tconv[1] == np.int8  # the pixel shuffle stays int8 in 16x8 models too
    x = np.round(np.random.default_rng(2).uniform(0, 1, (1, 3, 24, 20)) * 255).astype(np.float32) / 255
    import onnx

    y, d, _ = run_tflite(out, x.transpose(0, 2, 3, 1), details=True)
    assert list(d["shape_signature"]) == [1, 24, 20, 3]  # fixed
    assert np.abs(y - run_ort(onnx.load(str(src)), x)).max() <= 4 / 255


# -- the half-resolution (FFDNet / mobile) denoiser: card align 2 ---------------------------------------------------
@pytest.fixture
def half_res_file(tmp_path):
    from tests.onnx_models import half_res_denoise

    p = tmp_path / "half.onnx"
    return p, half_res_denoise(p, layers=2, seed=7)


@needs_set5
@pytest.mark.parametrize("to", ["tflite", "onnx"])
def test_half_res_net_converts_exactly_and_verifies_on_odd_crops(tmp_path, half_res_file, to):
    src, model = half_res_file
    # Verification feeds the protocol's inputs cropped to multiples of 2 (41x47 -> 40x46): odd ones
    # would fail in onnxruntime itself.
    res = convert(src, to, output=tmp_path / f"out.{to}", dataset=SET5, max_images=2, crop=(41, 47))
    assert res.report.max_abs_err <= 1e-4 and len(res.report.images) == 2
    if to == "tflite":  # dynamic size, even by the card: the strided conv is SAME, no PAD
        assert res.ops == {"CONV_2D": 4, "DEPTH_TO_SPACE": 1, "ADD": 1, "RELU_0_TO_1": 1}
        x = np.random.default_rng(0).uniform(0, 1, (1, 3, 22, 30)).astype(np.float32)
        np.testing.assert_allclose(run_tflite(res.output, x.transpose(0, 2, 3, 1)), run_ort(model, x), atol=1e-4)


def test_half_res_net_int8_and_int16x8_through_the_quantiser(tmp_path, half_res_file):
    """Calibrated on aligned crops; the integer file runs like the quantiser's simulation, and the
    runtime's tiles of it (any image size, an odd --tile) equal the whole image bit for bit."""
    pytest.importorskip("quantization")
    from conversion import executor
    from conversion.onnx_import import from_onnx
    from conversion.tflite_writer import tflite_ops
    from edge_enhance.enhancer import Enhancer
    from edge_enhance.tiling import TilingConfig
    from quantization.calibration import CalibConfig, calibration_set
    from quantization.quantize import INT16_OPS, quantize_graph, write_tflite
    from tests.conversion_testkit import calib_dir

    src, model = half_res_file
    g = from_onnx(src)
    calib = calibration_set(calib_dir(tmp_path), task="denoise", scale=1, align=2, config=CalibConfig(crop=48, count=4))
    x = np.round(np.random.default_rng(3).uniform(0, 1, (1, 3, 26, 34)) * 255).astype(np.float32) / 255
    want = run_ort(model, x)
    for keep in (frozenset(), frozenset(n.name for n in g.nodes if n.op in INT16_OPS)):
        q = quantize_graph(g, calib, method="minmax", keep_16x8=keep, cle=False, act_eq=False,
                           bias_correction=False, sensitivity=False, rounding="nearest")
        sim = executor.run(q, {q.inputs[0]: x.transpose(0, 2, 3, 1)}, simulate_quant=True)[q.outputs[0]]
        for tile in (None, (26, 34)):
            path = write_tflite(q, tmp_path / f"q{len(keep)}{'' if tile is None else '_tile'}.tflite", tile=tile)
            ops = tflite_ops(path)
            assert ops.count("CONV_2D") == 4 and "DEPTH_TO_SPACE" in ops
            # int16 input converters sit before the strided conv: a dynamic size then keeps the exact PAD
            assert ("PAD" in ops) == (bool(keep) and tile is None)
            y = run_tflite(path, x.transpose(0, 2, 3, 1))
            step = float(q.tensors[q.outputs[0]].quant.scale[0])
            assert np.abs(y - sim).max() <= 2 * step + 1e-6
            assert np.abs(y - want).max() < 0.05
    img = np.random.default_rng(4).integers(0, 256, (45, 37, 3), dtype=np.uint8)
    int8 = tmp_path / "q0.tflite"  # dynamic size
    whole = Enhancer(int8, tiling=TilingConfig(tile=(10**4, 10**4))).enhance(img)
    enh = Enhancer(int8, tiling=TilingConfig(tile=(19, 23)))
    assert np.array_equal(enh.enhance(img), whole) and enh.last_run.tile == (20, 24) and enh.last_run.tiles > 4


def test_half_res_net_refuses_unaligned_sizes_before_any_work(tmp_path, half_res_file, capsys):
    src, _ = half_res_file
    before = set(tmp_path.iterdir())
    assert _cli([str(src), "--to", "tflite", "--tile", "41x40"]) == 2
    err = capsys.readouterr().err
    assert "half.onnx: --tile 41x40: the model's input height and width must be multiples of 2" in err
    assert _cli([str(src), "--to", "tflite", "--precision", "int8", "--tile", "40x41"]) == 2
    assert "half.onnx: --tile 40x41" in capsys.readouterr().err
    assert set(tmp_path.iterdir()) == before


def test_cli_int16x8_with_constant_operands_runs_in_litert(tmp_path, small_and_calib, capsys):
    """(x - mean) / std before the body, a scale after it: 16x8 ADD / MUL take their constants in int16
    (LiteRT refused the file: 'input1->type != input2->type (INT16 != INT8)')."""
    from edge_enhance.card import CARD_KEY
    from tests.conversion_testkit import h, make_model, rand

    _, calib = small_and_calib
    rng = np.random.default_rng(5)
    card = ModelCard(name="norm", task="denoise", scale=1, receptive_field=3)
    m = make_model([h.make_node("Sub", ["x", "mean"], ["a"], name="sub"), h.make_node("Div", ["a", "std"], ["n"], name="div"),
                    h.make_node("Conv", ["n", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Relu", ["c"], ["c2"], name="relu"),
                    h.make_node("Mul", ["c2", "k"], ["r"], name="mul"), h.make_node("Add", ["x", "r"], ["y"], name="add")],
                   {"mean": np.array([0.4, 0.45, 0.5], np.float32).reshape(3, 1, 1),
                    "std": np.array([0.2, 0.25, 0.3], np.float32).reshape(3, 1, 1), "w": rand(rng, 3, 3, 3, 3, lo=-0.2, hi=0.2),
                    "b": rand(rng, 3, lo=-0.05, hi=0.05), "k": np.float32(0.3)},
                   [1, 3, "H", "W"], metadata={CARD_KEY: card.to_json()})
    src = tmp_path / "norm.onnx"
    src.write_bytes(m.SerializeToString())
    out = tmp_path / "n16.tflite"
    rc = _cli([str(src), "--to", "tflite", "--precision", "int16x8", "--calib", str(calib), "--dataset", str(calib),
               "-o", str(out)])
    assert rc == 0, capsys.readouterr().err
    for name, o, ins in _op_dtypes(out):
        if name in ("ADD", "MUL"):
            assert o == np.int16 and all(d == np.int16 for d in ins), (name, ins)


@needs_set5
def test_a_dynamic_batch_alone_leaves_a_fixed_tile_that_verification_keeps(tmp_path):
    """A tutorial export: fixed 1x3x48x40 with only the batch dynamic. Verification runs the fixed tile."""
    card = ModelCard(name="fixed", task="sr", scale=2, receptive_field=7)
    m = residual_sr_model(np.random.default_rng(7), scale=2, card=card, in_shape=("N", 3, 48, 40))
    src = tmp_path / "dynbatch.onnx"
    src.write_bytes(m.SerializeToString())
    assert _cli([str(src), "--to", "tflite", "-o", str(tmp_path / "d.tflite")]) == 0


def test_verification_opens_a_tflite_under_any_name(non_ascii_tflite, narrow_fopen):
    """Windows: TFLite's narrow fopen cannot open модель_日本.tflite; verification reads the bytes."""
    from conversion.verify import _tflite_runner

    run, fixed = _tflite_runner(non_ascii_tflite)
    assert run(np.zeros((16, 16, 3), np.float32)).shape == (32, 32, 3)
