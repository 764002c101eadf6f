"""Per-op tests: 1-3 node ONNX graphs -> IR -> .tflite, run in LiteRT against onnxruntime."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conversion_testkit import h, make_model, rand, run_ort, run_tflite

from conversion import executor
from conversion.onnx_import import from_onnx
from conversion.tflite_writer import tflite_ops, to_tflite

ATOL = {"fp32": 1e-4, "fp16": 3e-2}


def convert_and_compare(tmp_path, model, x, *, precision="fp32", expect=None, tile=None, **kw):
    """Convert, check structure, run LiteRT vs onnxruntime (and the IR executor); returns op list."""
    ref = run_ort(model, x)
    g = from_onnx(model)
    got_exec = executor.run(g, {g.inputs[0]: x.transpose(0, 2, 3, 1)})[g.outputs[0]]
    np.testing.assert_allclose(got_exec, ref, atol=1e-4, rtol=0)
    path = to_tflite(g, tmp_path / f"m_{precision}.tflite", precision=precision, tile=tile, **kw)
    ops = tflite_ops(path)
    assert "TRANSPOSE" not in ops and "RESHAPE" not in ops, ops
    if expect is not None:
        compute = [o for o in ops if o != "DEQUANTIZE"]
        assert compute == expect, ops
    y, din, dout = run_tflite(path, x.transpose(0, 2, 3, 1), details=True)
    assert din["dtype"] == np.float32 and dout["dtype"] == np.float32
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=ATOL[precision], rtol=0)
    return ops


def rng_for(*key):
    """A generator seeded from the test's parameters: random shapes, yet reproducible."""
    return np.random.default_rng([ord(c) for c in repr(key)])


# --------------------------------------------------------------------------- Conv family
CONV_CASES = [
    # (kernel, stride, dilation, pads, group-kind)
    (3, 1, 1, [1, 1, 1, 1], "dense"),
    (1, 1, 1, [0, 0, 0, 0], "dense"),
    (5, 1, 1, [2, 2, 2, 2], "depthwise"),
    (3, 2, 1, [1, 1, 1, 1], "dense"),  # stride 2 with symmetric pads: needs an explicit PAD
    (3, 1, 2, [2, 2, 2, 2], "dense"),
    (3, 1, 1, [1, 1, 1, 1], "grouped"),
    (3, 1, 1, [0, 1, 2, 1], "dense"),  # asymmetric pads
    (3, 1, 1, [1, 1, 1, 1], "depthwise_x2"),
]


@pytest.mark.parametrize("k,s,d,pads,kind", CONV_CASES)
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_conv(tmp_path, k, s, d, pads, kind, precision):
    rng = rng_for("conv", k, s, d, pads, kind)
    c = int(rng.integers(2, 7)) * 2
    group = {"dense": 1, "depthwise": c, "depthwise_x2": c, "grouped": 2}[kind]
    o = {"depthwise_x2": 2 * c, "depthwise": c}.get(kind, int(rng.integers(1, 9)) * 2)
    hh, ww = int(rng.integers(5, 14)) | 1, int(rng.integers(5, 14)) | 1  # odd sizes
    w = rand(rng, o, c // group, k, k, lo=-0.5, hi=0.5)
    b = rand(rng, o)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                dilations=[d, d], pads=pads, group=group, name="conv")],
                   {"w": w, "b": b}, [1, c, hh, ww])
    x = rand(rng, 1, c, hh, ww)
    ops = convert_and_compare(tmp_path, m, x, precision=precision)
    main = "DEPTHWISE_CONV_2D" if kind.startswith("depthwise") else "CONV_2D"
    assert main in ops


def test_conv_without_bias_and_fused_relu(tmp_path):
    rng = rng_for("conv-relu")
    m = make_model([h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Relu", ["c"], ["y"], name="relu")], {"w": rand(rng, 5, 3, 3, 3)}, [1, 3, 9, 7])
    ops = convert_and_compare(tmp_path, m, rand(rng, 1, 3, 9, 7), expect=["CONV_2D"])
    assert ops == ["CONV_2D"]


@pytest.mark.parametrize("clip,act", [((0.0, 6.0), "relu6"), ((-1.0, 1.0), "relu_n1_to_1")])
def test_conv_fused_clip(tmp_path, clip, act):
    rng = rng_for("conv-clip", clip)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")],
                   {"w": rand(rng, 4, 3, 3, 3, lo=-3, hi=3), "b": rand(rng, 4), "lo": np.float32(clip[0]),
                    "hi": np.float32(clip[1])}, [1, 3, 8, 8])
    g = from_onnx(m)
    assert [(n.op, n.attrs.get("activation")) for n in g.nodes] == [("Conv", act)]
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 8, 8), expect=["CONV_2D"])


def test_conv_batchnorm_folded(tmp_path):
    rng = rng_for("bn")
    c = 6
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("BatchNormalization", ["c", "g", "be", "mu", "var"], ["y"], name="bn")],
                   {"w": rand(rng, c, 3, 3, 3), "b": rand(rng, c), "g": rand(rng, c, lo=0.5, hi=2),
                    "be": rand(rng, c), "mu": rand(rng, c), "var": rand(rng, c, lo=0.1, hi=2)}, [1, 3, 7, 9])
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 7, 9), expect=["CONV_2D"])


# The half-resolution models' first layer: 4x4 stride 2 pads 1. On an even side TFLite's SAME pads 1
# and 1 (exactly ONNX's), on an odd one 1 and 2 (so an explicit PAD + VALID). A dynamic side is even
# when the card's align says so (the model's input); else PAD + VALID, exact at any size.
@pytest.mark.parametrize("hw,align,expect", [((10, 14), 1, ["CONV_2D"]), ((9, 14), 1, ["PAD", "CONV_2D"]),
                                             (("H", "W"), 1, ["PAD", "CONV_2D"]), (("H", "W"), 2, ["CONV_2D"])])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_conv_4x4_stride_2_pads_1(tmp_path, hw, align, expect, precision):
    from edge_enhance.card import CARD_KEY, ModelCard

    rng = rng_for("conv4s2", hw, align)
    meta = {CARD_KEY: ModelCard(name="t", task="denoise", scale=1, receptive_field=9, align=align).to_json()}
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[4, 4], strides=[2, 2],
                                pads=[1, 1, 1, 1], name="down")],
                   {"w": rand(rng, 8, 3, 4, 4, lo=-0.5, hi=0.5), "b": rand(rng, 8)}, [1, 3, *hw], opset=17,
                   metadata=meta)
    sizes = [hw] if isinstance(hw[0], int) else [(10, 14), (6, 32)] + ([(9, 13)] if align == 1 else [])
    for hh, ww in sizes:
        convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), precision=precision, expect=expect)


@pytest.mark.parametrize("k,s,pads,opad", [(2, 2, [0, 0, 0, 0], [0, 0]), (4, 2, [1, 1, 1, 1], [0, 0]),
                                           (3, 2, [1, 1, 1, 1], [1, 1]), (3, 3, [0, 0, 0, 0], [0, 0])])
def test_conv_transpose(tmp_path, k, s, pads, opad):
    rng = rng_for("convT", k, s, pads, opad)
    c, o = int(rng.integers(2, 6)), int(rng.integers(2, 6))
    m = make_model([h.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                pads=pads, output_padding=opad, name="up")],
                   {"w": rand(rng, c, o, k, k), "b": rand(rng, o)}, [1, c, 5, 7])
    convert_and_compare(tmp_path, m, rand(rng, 1, c, 5, 7), expect=["TRANSPOSE_CONV"], tile=(5, 7))


@pytest.mark.parametrize("k,s,pads,opad", [(9, 2, [4, 4, 4, 4], [1, 1]), (4, 2, [1, 1, 1, 1], [0, 0]),
                                           (2, 2, [0, 0, 0, 0], [0, 0]), (3, 2, [1, 1, 1, 1], [1, 1]),
                                           (7, 3, [2, 2, 2, 2], [0, 0]), (8, 4, [2, 2, 2, 2], [0, 0]),
                                           (5, 2, [1, 2, 2, 1], [0, 0])])
def test_dynamic_conv_transpose_becomes_subpixel_conv(tmp_path, k, s, pads, opad):
    """FSRCNN's last layer (9x9, stride 2, pads 4, output_padding 1) and kin, at any input size: an
    output exactly s times the input is a Conv to s*s*C channels + DEPTH_TO_SPACE, exactly."""
    rng = rng_for("convT-dyn", k, s, pads, opad)
    c, o = int(rng.integers(2, 6)), int(rng.integers(1, 4))
    m = make_model([h.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[k, k], strides=[s, s],
                                pads=pads, output_padding=opad, name="up")],
                   {"w": rand(rng, c, o, k, k), "b": rand(rng, o)}, [1, c, "H", "W"])
    for hh, ww in [(5, 7), (9, 4)]:
        convert_and_compare(tmp_path, m, rand(rng, 1, c, hh, ww), expect=["CONV_2D", "DEPTH_TO_SPACE"])


def test_dynamic_conv_transpose_not_s_times_its_input_is_a_clear_error(tmp_path, capsys):
    """A property of the model: exit 1 with the file named (it was exit 2, "bad options", without the file)."""
    from tests.conversion_testkit import convert_main

    from conversion.errors import UnsupportedOpError

    rng = rng_for("convT-dyn-odd")
    m = make_model([h.make_node("ConvTranspose", ["x", "w", "b"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                pads=[1, 1, 1, 1], name="up")], {"w": rand(rng, 2, 2, 3, 3), "b": rand(rng, 2)},
                   [1, 2, "H", "W"])
    with pytest.raises(UnsupportedOpError, match="up: TRANSPOSE_CONV needs a fixed input size; convert with --tile HxW"):
        to_tflite(from_onnx(m), tmp_path / "t.tflite")
    # The same through the CLI, for a bilinear align_corners Resize at a dynamic size (as F.interpolate exports it)
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], mode="linear", name="up",
                                coordinate_transformation_mode="align_corners")],
                   {"sc": np.array([1, 1, 2, 2], np.float32)}, [1, 3, "H", "W"])
    src = tmp_path / "up.onnx"
    src.write_bytes(m.SerializeToString())
    assert convert_main([src, "--to", "tflite", "-o", tmp_path / "up.tflite"]) == 1
    assert f"{src}: up: bilinear resize by (2.0, 2.0) needs a fixed input size" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["up.onnx"]


@pytest.mark.parametrize("mode,opset,axes", [("reflect", 13, False), ("constant", 13, False), ("reflect", 18, True),
                                             ("constant", 10, False)])
def test_spatial_pad_reflect_is_mirror_pad_and_zero_pad_folds_into_the_conv(tmp_path, mode, opset, axes):
    """nn.Conv2d(padding_mode="reflect") and ZeroPad2d + Conv as PyTorch exports them: Pad, then a
    valid Conv; pads as an input (opset 11+, with axes at 18) or an attribute (opset 10)."""
    rng = rng_for("pad", mode, opset, axes)
    pads = np.array([1, 2, 2, 1] if axes else [0, 0, 1, 2, 0, 0, 2, 1], np.int64)
    inits = {"w": rand(rng, 4, 3, 3, 3), "b": rand(rng, 4)}
    if opset < 11:
        pad = h.make_node("Pad", ["x"], ["xp"], mode=mode, pads=pads.tolist(), name="pad")
    else:
        ins = ["x", "p", "", "ax"] if axes else ["x", "p"]
        inits.update({"p": pads, **({"ax": np.array([2, 3], np.int64)} if axes else {})})
        pad = h.make_node("Pad", ins, ["xp"], mode=mode, name="pad")
    m = make_model([pad, h.make_node("Conv", ["xp", "w", "b"], ["y"], name="conv")], inits, [1, 3, "H", "W"],
                   opset=opset)
    expect = ["MIRROR_PAD", "CONV_2D"] if mode == "reflect" else ["PAD", "CONV_2D"]  # asymmetric pads: explicit PAD
    g = from_onnx(m)
    assert [n.op for n in g.nodes] == (["Pad", "Conv"] if mode == "reflect" else ["Conv"])
    for hh, ww in [(6, 7), (9, 5)]:
        convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), expect=expect)


@pytest.mark.parametrize("pads", [[0, 0, 2, 1, 0, 0, 1, 3], [0, 0, 1, 1, 0, 0, 1, 1]])
def test_edge_pad_is_repeated_symmetric_mirror_pads(tmp_path, pads):
    """nn.Conv2d(padding_mode="replicate"): TFLite has no replicate pad; k SYMMETRIC pads of 1 are one."""
    rng = rng_for("edge-pad", *pads)
    m = make_model([h.make_node("Pad", ["x", "p"], ["xp"], mode="edge", name="pad"),
                    h.make_node("Conv", ["xp", "w", "b"], ["y"], name="conv")],
                   {"p": np.array(pads, np.int64), "w": rand(rng, 4, 3, 3, 3), "b": rand(rng, 4)}, [1, 3, "H", "W"])
    k = max(pads)
    for hh, ww in [(6, 7), (3, 4)]:
        convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), expect=["MIRROR_PAD"] * k + ["CONV_2D"])


@pytest.mark.parametrize("mode,ctm,s,a", [("cubic", "half_pixel", 2, -0.75), ("cubic", "pytorch_half_pixel", 3, -0.75),
                                          ("cubic", "asymmetric", 2, -0.5), ("cubic", "half_pixel", 4, -0.5),
                                          ("linear", "half_pixel", 2, None), ("linear", "asymmetric", 3, None),
                                          ("linear", "pytorch_half_pixel", 4, None)])
def test_integer_upsampling_at_any_size_is_edge_pad_conv_depth_to_space(tmp_path, mode, ctm, s, a):
    """F.interpolate(mode="bicubic" / "bilinear") as a residual's base: exact to the border (ONNX
    clamps there, the edge pad does too), and with no fixed tile (RESIZE_BILINEAR needs one)."""
    rng = rng_for("upsample", mode, ctm, s, a)
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm, **({"cubic_coeff_a": a} if a is not None else {})}
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], name="up", **attrs)],
                   {"sc": np.array([1, 1, s, s], np.float32)}, [1, 3, "H", "W"], opset=13)
    pads = 2 if mode == "cubic" else 1
    for hh, ww in [(5, 7), (9, 4)]:
        convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww, lo=0, hi=1),
                            expect=["MIRROR_PAD"] * pads + ["CONV_2D", "DEPTH_TO_SPACE"])


@pytest.mark.parametrize("attrs,sc,why", [({"coordinate_transformation_mode": "align_corners"}, [1, 1, 2, 2], "align_corners"),
                                          ({}, [1, 1, 1.5, 1.5], "integer scale"),
                                          ({"exclude_outside": 1}, [1, 1, 2, 2], "exclude_outside")])
def test_unsupported_cubic_resizes_are_named(attrs, sc, why):
    from conversion.errors import UnsupportedOpError

    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], name="up", mode="cubic", **attrs)],
                   {"sc": np.array(sc, np.float32)}, [1, 3, 6, 6])
    with pytest.raises(UnsupportedOpError, match=f"up \\(Resize: .*{why}"):
        from_onnx(m)


@pytest.mark.parametrize("attrs,inits,why", [({"mode": "wrap"}, {}, "mode wrap"),
                                             ({}, {"v": np.float32(0.5)}, "value other than 0"),
                                             ({}, {"p": np.array([0, 1, 0, 0, 0, 1, 0, 0], np.int64)}, "pad batch or channels")])
def test_unsupported_pads_are_named(attrs, inits, why):
    from conversion.errors import UnsupportedOpError

    pads = {"p": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)}
    pads.update(inits)
    ins = ["x", "p", "v"] if "v" in pads else ["x", "p"]
    m = make_model([h.make_node("Pad", ins, ["y"], name="pad", **attrs)], pads, [1, 3, 5, 5])
    with pytest.raises(UnsupportedOpError, match=f"pad \\(Pad: .*{why}"):
        from_onnx(m)


# --------------------------------------------------------------------------- elementwise
@pytest.mark.parametrize("op,const_shape", [("Add", None), ("Mul", None), ("Add", "c11"), ("Mul", "scalar"),
                                            ("Sub", "c11"), ("Div", "scalar"), ("Max", "scalar"), ("Min", None)])
def test_binary(tmp_path, op, const_shape):
    rng = rng_for("bin", op, const_shape)
    c, hh, ww = int(rng.integers(1, 9)), 6, 5
    if const_shape is None:  # two activations: x and relu(x)
        nodes = [h.make_node("Sigmoid", ["x"], ["s"], name="sig"), h.make_node(op, ["x", "s"], ["y"], name="op")]
        inits = {}
    else:
        k = rand(rng, c, 1, 1, lo=0.5, hi=2) if const_shape == "c11" else np.float32(rng.uniform(0.5, 2))
        nodes = [h.make_node(op, ["x", "k"], ["y"], name="op")]
        inits = {"k": k}
    convert_and_compare(tmp_path, make_model(nodes, inits, [1, c, hh, ww]), rand(rng, 1, c, hh, ww))


def test_concat_skip_path(tmp_path):
    rng = rng_for("concat")
    c = 5
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Concat", ["x", "c", "x"], ["y"], axis=1, name="cat")],
                   {"w": rand(rng, 7, c, 3, 3), "b": rand(rng, 7)}, [1, c, 9, 11])
    convert_and_compare(tmp_path, m, rand(rng, 1, c, 9, 11), expect=["CONV_2D", "CONCATENATION"])


@pytest.mark.parametrize("case", ["relu", "prelu_channel", "prelu_scalar", "leaky", "sigmoid", "tanh", "clip01", "clip6",
                                  "clip_generic", "clip_min_only"])
def test_activations(tmp_path, case):
    rng = rng_for("act", case)
    c = int(rng.integers(2, 9))
    inits, attrs, ins = {}, {}, ["x"]
    op = {"relu": "Relu", "leaky": "LeakyRelu", "sigmoid": "Sigmoid", "tanh": "Tanh"}.get(case.split("_")[0], None)
    expect = {"relu": ["RELU"], "leaky": ["LEAKY_RELU"], "sigmoid": ["LOGISTIC"], "tanh": ["TANH"],
              "clip01": ["RELU_0_TO_1"],
              "clip6": ["RELU6"], "clip_generic": ["MAXIMUM", "MINIMUM"], "clip_min_only": ["MAXIMUM"]}
    if case.startswith("prelu"):
        op, ins = "PRelu", ["x", "slope"]
        inits["slope"] = rand(rng, c, 1, 1, lo=0, hi=0.5) if case == "prelu_channel" else np.array([0.2], np.float32)
        expect[case] = ["PRELU"]
    elif case == "leaky":
        attrs["alpha"] = 0.15
    elif case.startswith("clip"):
        op = "Clip"
        lo, hi = {"clip01": (0, 1), "clip6": (0, 6), "clip_generic": (-0.3, 0.45), "clip_min_only": (0.1, None)}[case]
        inits["lo"] = np.float32(lo)
        ins = ["x", "lo"]
        if hi is not None:
            inits["hi"] = np.float32(hi)
            ins.append("hi")
    m = make_model([h.make_node(op, ins, ["y"], name="act", **attrs)], inits, [1, c, 7, 6])
    convert_and_compare(tmp_path, m, rand(rng, 1, c, 7, 6, lo=-8, hi=8), expect=expect[case])


# --------------------------------------------------------------------------- pixel shuffle / resize
@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("r", [2, 3])
def test_depth_to_space(tmp_path, mode, r):
    rng = rng_for("d2s", mode, r)
    c = int(rng.integers(1, 4))
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("DepthToSpace", ["c"], ["y"], blocksize=r, mode=mode, name="d2s")],
                   {"w": rand(rng, c * r * r, 3, 3, 3), "b": rand(rng, c * r * r)}, [1, 3, 5, 7])
    # CRD's channel order is folded into the conv's weights: no extra op.
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 5, 7), expect=["CONV_2D", "DEPTH_TO_SPACE"])


@pytest.mark.parametrize("r", [2, 3])
def test_pixel_shuffle_reshape_pattern(tmp_path, r):
    """torch.nn.PixelShuffle as some exporters write it: Reshape -> Transpose -> Reshape."""
    rng = rng_for("ps", r)
    c, hh, ww = 3, 5, 7
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Reshape", ["c", "s1"], ["r1"], name="ps_reshape1"),
                    h.make_node("Transpose", ["r1"], ["t"], perm=[0, 1, 4, 2, 5, 3], name="ps_transpose"),
                    h.make_node("Reshape", ["t", "s2"], ["y"], name="ps_reshape2")],
                   {"w": rand(rng, c * r * r, 3, 3, 3), "b": rand(rng, c * r * r),
                    "s1": np.array([1, c, r, r, hh, ww], np.int64), "s2": np.array([1, c, hh * r, ww * r], np.int64)},
                   [1, 3, hh, ww])
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), expect=["CONV_2D", "DEPTH_TO_SPACE"])


@pytest.mark.parametrize("r", [2, 3])
def test_d2s_as_transpose_conv(tmp_path, r):
    rng = rng_for("d2stc", r)
    m = make_model([h.make_node("DepthToSpace", ["x"], ["y"], blocksize=r, mode="DCR", name="d2s")], {},
                   [1, 2 * r * r, 5, 6])
    convert_and_compare(tmp_path, m, rand(rng, 1, 2 * r * r, 5, 6), expect=["TRANSPOSE_CONV"],
                        d2s_as_transpose_conv=True, tile=(5, 6))


RESIZE_CASES = [
    ("nearest", "asymmetric", "floor", 2), ("nearest", "half_pixel", "round_prefer_floor", 3),
    ("nearest", "asymmetric", "round_prefer_ceil", 2),  # not TFLite-expressible: expect an error
    ("linear", "half_pixel", None, 2), ("linear", "align_corners", None, 2), ("linear", "asymmetric", None, 3),
    ("linear", "pytorch_half_pixel", None, 2),
]


@pytest.mark.parametrize("mode,ctm,nmode,s", RESIZE_CASES)
def test_resize(tmp_path, mode, ctm, nmode, s):
    from conversion.errors import UnsupportedOpError

    rng = rng_for("resize", mode, ctm, nmode, s)
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    if nmode:
        attrs["nearest_mode"] = nmode
    m = make_model([h.make_node("Resize", ["x", "", "sc"], ["y"], name="up", **attrs)],
                   {"sc": np.array([1, 1, s, s], np.float32)}, [1, 3, 5, 6])
    x = rand(rng, 1, 3, 5, 6)
    if (ctm, nmode) == ("asymmetric", "round_prefer_ceil"):
        with pytest.raises(UnsupportedOpError, match="up"):
            from_onnx(m)
        return
    op = "RESIZE_NEAREST_NEIGHBOR" if mode == "nearest" else "RESIZE_BILINEAR"
    convert_and_compare(tmp_path, m, x, expect=[op])


def test_tile_repeat_skip_and_identity_dropout_removed(tmp_path):
    rng = rng_for("tile")
    m = make_model([h.make_node("Identity", ["x"], ["xi"], name="id"),
                    h.make_node("Tile", ["xi", "rep"], ["t"], name="repeat"),
                    h.make_node("Dropout", ["t"], ["y"], name="drop")],
                   {"rep": np.array([1, 4, 1, 1], np.int64)}, [1, 3, 5, 5])
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 5, 5), expect=["CONCATENATION"])


def test_dynamic_spatial_shape_runs_at_any_size(tmp_path):
    """No tile: shape_signature -1, and integer nearest resize becomes copies + DEPTH_TO_SPACE."""
    rng = rng_for("dyn")
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Resize", ["x", "", "sc"], ["u"], mode="nearest",
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor", name="up"),
                    h.make_node("Resize", ["c", "", "sc"], ["cu"], mode="nearest",
                                coordinate_transformation_mode="asymmetric", nearest_mode="floor", name="up2"),
                    h.make_node("Add", ["u", "cu"], ["y"], name="add")],
                   {"w": rand(rng, 3, 3, 3, 3), "b": rand(rng, 3), "sc": np.array([1, 1, 2, 2], np.float32)},
                   [1, 3, "H", "W"])
    g = from_onnx(m)
    assert g.tensors[g.inputs[0]].shape == (1, None, None, 3)
    path = to_tflite(g, tmp_path / "dyn.tflite")
    assert "RESIZE_NEAREST_NEIGHBOR" not in tflite_ops(path)
    for hh, ww in [(5, 7), (12, 9)]:
        x = rand(rng, 1, 3, hh, ww)
        np.testing.assert_allclose(run_tflite(path, x.transpose(0, 2, 3, 1)), run_ort(m, x), atol=1e-4, rtol=0)


@pytest.mark.parametrize("opset", [9, 10, 11, 13, 17, 21])
def test_opsets(tmp_path, opset):
    rng = rng_for("opset", opset)
    bounds = {"lo": np.float32(0), "hi": np.float32(6)} if opset >= 11 else {}
    clip = (h.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip") if opset >= 11 else
            h.make_node("Clip", ["c"], ["y"], min=0.0, max=6.0, name="clip"))  # attributes before opset 11
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"), clip],
                   {"w": rand(rng, 4, 3, 3, 3), "b": rand(rng, 4), **bounds}, [1, 3, 6, 6], opset=opset)
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 6, 6, lo=-5, hi=5), expect=["CONV_2D"])


@pytest.mark.parametrize("op,opset,mode", [("Upsample", 9, "nearest"), ("Upsample", 9, "linear"),
                                           ("Resize", 10, "nearest"), ("Resize", 10, "linear")])
def test_opset_9_and_10_upsampling(tmp_path, op, opset, mode):
    """Upsample-9 and Resize-10: (X, scales), asymmetric coordinates, as ONNX Runtime runs them."""
    rng = rng_for("old-resize", op, mode)
    m = make_model([h.make_node(op, ["x", "sc"], ["y"], mode=mode, name="up")],
                   {"sc": np.array([1, 1, 2, 3], np.float32)}, [1, 3, 5, 6], opset=opset)
    expect = None if mode == "nearest" else ["RESIZE_BILINEAR"]
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 5, 6), expect=expect)


@pytest.mark.parametrize("opset", [10, 11])
def test_old_pytorch_pixel_shuffle_export_folds_to_depth_to_space(tmp_path, opset):
    """A luma SR net as older PyTorch exported it (the ONNX model zoo's super-resolution-10 has this
    shape at opset 10): a fixed 1-channel input, PixelShuffle as Reshape-Transpose-Reshape whose
    shapes come from Shape / Gather / Unsqueeze(axes attribute) / Concat, folded at the model's opset."""
    rng = rng_for("old-ps", opset)
    r, hh, ww = 3, 4, 5
    m = make_model([
        h.make_node("Conv", ["x", "w", "b"], ["cv"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Shape", ["cv"], ["shp"], name="shape"),
        h.make_node("Gather", ["shp", "i2"], ["hdim"], axis=0, name="gather_h"),
        h.make_node("Unsqueeze", ["hdim"], ["hdim1"], axes=[0], name="unsqueeze_h"),
        h.make_node("Concat", ["head", "hdim1", "wdims"], ["s1"], axis=0, name="shape_cat"),
        h.make_node("Reshape", ["cv", "s1"], ["r1"], name="ps_reshape1"),
        h.make_node("Transpose", ["r1"], ["t"], perm=[0, 1, 4, 2, 5, 3], name="ps_transpose"),
        h.make_node("Reshape", ["t", "s2"], ["y"], name="ps_reshape2"),
    ], {"w": rand(rng, r * r, 1, 3, 3), "b": rand(rng, r * r), "i2": np.array(2, np.int64),
        "head": np.array([1, 1, r, r], np.int64), "wdims": np.array([ww], np.int64),
        "s2": np.array([1, 1, hh * r, ww * r], np.int64)}, [1, 1, hh, ww], opset=opset)
    convert_and_compare(tmp_path, m, rand(rng, 1, 1, hh, ww), expect=["CONV_2D", "DEPTH_TO_SPACE"])


@pytest.mark.parametrize("opset,r", [(9, 2), (10, 3)])
def test_pytorch_pixel_shuffle_at_opset_9_10_with_a_dynamic_size_becomes_depth_to_space(tmp_path, opset, r):
    """torch.onnx.export(nn.PixelShuffle(r), opset_version=9 or 10, dynamic H / W) writes it through a
    6-D detour whose shapes need no Shape(): Unsqueeze(2, 3) -> Reshape(0, -1, r, r, 0, 0) -> Transpose
    -> Reshape(0, 0, -1, 1, 0, 0) -> Reshape(0, 0, 0, 0, -1, 1) -> Squeeze(3, 5)."""
    rng = rng_for("ps6", opset, r)
    m = make_model([
        h.make_node("Conv", ["x", "w", "b"], ["cv"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Unsqueeze", ["cv"], ["u"], axes=[2, 3], name="unsqueeze"),
        h.make_node("Reshape", ["u", "s1"], ["r1"], name="reshape1"),
        h.make_node("Transpose", ["r1"], ["t"], perm=[0, 1, 4, 2, 5, 3], name="transpose"),
        h.make_node("Reshape", ["t", "s2"], ["r2"], name="reshape2"),
        h.make_node("Reshape", ["r2", "s3"], ["r3"], name="reshape3"),
        h.make_node("Squeeze", ["r3"], ["y"], axes=[3, 5], name="squeeze"),
    ], {"w": rand(rng, 3 * r * r, 3, 3, 3), "b": rand(rng, 3 * r * r), "s1": np.array([0, -1, r, r, 0, 0]),
        "s2": np.array([0, 0, -1, 1, 0, 0]), "s3": np.array([0, 0, 0, 0, -1, 1])}, [1, 3, "h", "w"], opset=opset)
    for hh, ww in [(5, 7), (4, 9)]:  # one dynamic-size file, run at two sizes
        convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), expect=["CONV_2D", "DEPTH_TO_SPACE"])


def test_constant_folding_of_initializer_subgraphs(tmp_path):
    """Weights computed from initializers (weight-norm style) and shapes from Shape() on a static input."""
    rng = rng_for("fold")
    r, c, hh, ww = 2, 3, 5, 6
    m = make_model([
        h.make_node("Mul", ["v", "g"], ["w"], name="weight_norm"),
        h.make_node("Conv", ["x", "w", "b"], ["cv"], pads=[1, 1, 1, 1], name="conv"),
        h.make_node("Shape", ["cv"], ["shp"], name="shape"),
        h.make_node("Gather", ["shp", "i2"], ["hdim"], axis=0, name="gather_h"),
        h.make_node("Gather", ["shp", "i3"], ["wdim"], axis=0, name="gather_w"),
        h.make_node("Concat", ["head", "hdim", "wdim"], ["s1"], axis=0, name="shape_cat"),
        h.make_node("Reshape", ["cv", "s1"], ["r1"], name="ps_reshape1"),
        h.make_node("Transpose", ["r1"], ["t"], perm=[0, 1, 4, 2, 5, 3], name="ps_transpose"),
        h.make_node("Reshape", ["t", "s2"], ["y"], name="ps_reshape2"),
    ], {"v": rand(rng, c * r * r, 3, 3, 3), "g": rand(rng, c * r * r, 1, 1, 1), "b": rand(rng, c * r * r),
        "i2": np.array([2], np.int64), "i3": np.array([3], np.int64), "head": np.array([1, c, r, r], np.int64),
        "s2": np.array([1, c, hh * r, ww * r], np.int64)}, [1, 3, hh, ww])
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, hh, ww), expect=["CONV_2D", "DEPTH_TO_SPACE"])


@pytest.mark.parametrize("case", ["x_minus_conv", "const_minus_act", "act_minus_act"])
def test_sub_of_activations(tmp_path, case):
    """DnCNN's ``x - net(x)`` and a gate's ``1 - g``: Add of -1 times the subtrahend; after a conv the -1
    goes into its weights (no MUL left)."""
    rng = rng_for("sub", case)
    c = 4
    conv = h.make_node("Conv", ["x", "w", "b"], ["r"], pads=[1, 1, 1, 1], name="conv")
    inits = {"w": rand(rng, c, c, 3, 3), "b": rand(rng, c)}
    if case == "x_minus_conv":
        nodes, expect = [conv, h.make_node("Sub", ["x", "r"], ["y"], name="sub")], ["CONV_2D", "ADD"]
    elif case == "const_minus_act":
        inits = {"one": np.float32(1.0)}
        nodes = [h.make_node("Sigmoid", ["x"], ["g"], name="sig"), h.make_node("Sub", ["one", "g"], ["y"], name="sub")]
        expect = ["LOGISTIC", "MUL", "ADD"]
    else:
        nodes = [h.make_node("Sigmoid", ["x"], ["g"], name="sig"), h.make_node("Sub", ["g", "x"], ["y"], name="sub")]
        expect = ["LOGISTIC", "MUL", "ADD"]
    convert_and_compare(tmp_path, make_model(nodes, inits, [1, c, 7, 6]), rand(rng, 1, c, 7, 6), expect=expect)


@pytest.mark.parametrize("k", ["scalar", "per_channel"])
def test_mul_by_a_constant_after_a_conv_folds_into_its_weights(tmp_path, k):
    """EDSR's residual scaling (``conv(x) * 0.1``) costs no op; a weight shared with another conv is copied."""
    rng = rng_for("fold", k)
    c = 5
    kk = np.float32(0.1) if k == "scalar" else rand(rng, c, 1, 1, lo=0.5, hi=2)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["r"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Conv", ["x", "w", "b"], ["r2"], pads=[1, 1, 1, 1], name="conv2"),
                    h.make_node("Mul", ["r", "k"], ["s"], name="scale"),
                    h.make_node("Add", ["s", "r2"], ["y"], name="add")],
                   {"w": rand(rng, c, c, 3, 3), "b": rand(rng, c), "k": kk}, [1, c, 6, 7])
    convert_and_compare(tmp_path, m, rand(rng, 1, c, 6, 7), expect=["CONV_2D", "CONV_2D", "ADD"])


def test_models_of_several_inputs_or_outputs_are_refused_at_import():
    from conversion.errors import ModelFormatError

    m = make_model([h.make_node("Relu", ["x"], ["y"], name="r"), h.make_node("Sigmoid", ["x"], ["z"], name="s")],
                   {}, [1, 3, 4, 4])
    m.graph.output.append(h.make_tensor_value_info("z", 1, [1, 3, 4, 4]))
    with pytest.raises(ModelFormatError, match=r"2 output\(s\) \(y, z\).*one image output"):
        from_onnx(m)


@pytest.mark.parametrize("op,attrs,expect", [
    ("HardSwish", {}, ["ADD", "MUL", "MUL"]),
    ("HardSigmoid", {"alpha": 0.25, "beta": 0.4}, ["MUL", "ADD", "RELU_0_TO_1"]),
])
def test_hard_swish_and_hard_sigmoid(tmp_path, op, attrs, expect):
    rng = rng_for("hard", op)
    m = make_model([h.make_node(op, ["x"], ["y"], name="act", **attrs)], {}, [1, 4, 6, 5], opset=14)
    convert_and_compare(tmp_path, m, rand(rng, 1, 4, 6, 5, lo=-5, hi=5), expect=expect)


@pytest.mark.parametrize("op,words", [("GlobalAveragePool", "whole image"), ("Erf", "GELU")])
def test_refused_ops_say_why(op, words):
    from conversion.errors import UnsupportedOpError

    with pytest.raises(UnsupportedOpError, match=f"gp \\({op}: .*{words}"):
        from_onnx(make_model([h.make_node(op, ["x"], ["y"], name="gp")], {}, [1, 3, 4, 4]))


@pytest.mark.parametrize("case,expect", [
    ("split_gate", ["CONV_2D", "CONV_2D", "MUL"]),  # NAFNet's SimpleGate: the conv is cut in two, no 1x1 left
    ("slice_through_prelu", ["CONV_2D", "PRELU"]),  # IMDN: conv, activation, then x[:, :d]
    ("slice_of_the_input", ["CONV_2D", "CONV_2D"]),  # nothing to fold into: an exact 0 / 1 1x1 conv stays
    ("slice_via_shape", ["CONV_2D", "CONV_2D", "ADD"]),  # torch.chunk with dynamic H, W: Shape -> Gather of C
])
def test_channel_split_and_slice(tmp_path, case, expect):
    rng = rng_for("split", case)
    c, hh, ww = 6, 7, 5
    conv = h.make_node("Conv", ["x", "w", "b"], ["f"], pads=[1, 1, 1, 1], name="conv")
    inits = {"w": rand(rng, 2 * c, c, 3, 3), "b": rand(rng, 2 * c)}
    if case == "split_gate":
        inits["sp"] = np.array([c, c], np.int64)
        nodes = [conv, h.make_node("Split", ["f", "sp"], ["a", "b2"], axis=1, name="split"),
                 h.make_node("Mul", ["a", "b2"], ["y"], name="gate")]
    elif case == "slice_through_prelu":
        inits.update(slope=rand(rng, 2 * c, 1, 1, lo=0, hi=0.3), s=np.array([2], np.int64), e=np.array([5], np.int64),
                     ax=np.array([1], np.int64))
        nodes = [conv, h.make_node("PRelu", ["f", "slope"], ["p"], name="prelu"),
                 h.make_node("Slice", ["p", "s", "e", "ax"], ["y"], name="slice")]
    elif case == "slice_of_the_input":
        inits.update(s=np.array([1], np.int64), e=np.array([4], np.int64), ax=np.array([1], np.int64),
                     w=rand(rng, 4, 3, 3, 3))
        inits["b"] = rand(rng, 4)
        nodes = [h.make_node("Slice", ["x", "s", "e", "ax"], ["xs"], name="slice"),
                 h.make_node("Conv", ["xs", "w", "b"], ["y"], pads=[1, 1, 1, 1], name="conv")]
    else:
        inits.update(i1=np.array(1, np.int64), two=np.array(2, np.int64), z=np.array([0], np.int64),
                     ax=np.array([1], np.int64), big=np.array([1 << 30], np.int64), u=np.array([0], np.int64))
        nodes = [conv, h.make_node("Shape", ["f"], ["sh"], name="shape"),
                 h.make_node("Gather", ["sh", "i1"], ["ch"], axis=0, name="gather"),
                 h.make_node("Div", ["ch", "two"], ["half"], name="div"),
                 h.make_node("Unsqueeze", ["half", "u"], ["half1"], name="unsq"),
                 h.make_node("Slice", ["f", "z", "half1", "ax"], ["lo"], name="lo"),
                 h.make_node("Slice", ["f", "half1", "big", "ax"], ["hi"], name="hi"),
                 h.make_node("Add", ["lo", "hi"], ["y"], name="add")]
    m = make_model(nodes, inits, [1, c if case != "slice_of_the_input" else 6, "H", "W"])
    convert_and_compare(tmp_path, m, rand(rng, 1, c, hh, ww), expect=expect)


def test_spatial_slices_are_refused_with_the_reason():
    from conversion.errors import UnsupportedOpError

    m = make_model([h.make_node("Slice", ["x", "s", "e", "ax"], ["y"], name="crop")],
                   {"s": np.array([1], np.int64), "e": np.array([3], np.int64), "ax": np.array([2], np.int64)},
                   [1, 3, 6, 6])
    with pytest.raises(UnsupportedOpError, match="crop \\(Slice: only step-1 slices of the channel axis"):
        from_onnx(m)


def _pad_to_4_and_crop_back():
    """F.pad(x, to a multiple of 4, "reflect") -> stride-2 conv -> DepthToSpace(2) + the padded input ->
    y[:, :, :h, :w]: pads and crop computed from Shape(x), which a fixed tile folds."""
    rng = np.random.default_rng(3)
    return make_model([
        h.make_node("Shape", ["x"], ["s"], name="shape"),
        h.make_node("Gather", ["s", "i23"], ["hw"], axis=0, name="hw"),
        h.make_node("Mod", ["hw", "four"], ["m"], name="mod"),
        h.make_node("Sub", ["four", "m"], ["r"], name="sub"),
        h.make_node("Mod", ["r", "four"], ["p"], name="mod2"),
        h.make_node("Concat", ["zeros", "p"], ["pads"], axis=0, name="pads"),
        h.make_node("Pad", ["x", "pads"], ["xp"], mode="reflect", name="pad"),
        h.make_node("Conv", ["xp", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1], name="down"),
        h.make_node("DepthToSpace", ["c"], ["d"], blocksize=2, name="d2s"),
        h.make_node("Add", ["xp", "d"], ["sum"], name="add"),
        h.make_node("Slice", ["sum", "z2", "hw", "i23"], ["y"], name="crop"),
    ], {"i23": np.array([2, 3], np.int64), "four": np.array(4, np.int64), "zeros": np.zeros(6, np.int64),
        "z2": np.zeros(2, np.int64), "w": rand(rng, 12, 3, 3, 3, lo=-0.3, hi=0.3), "b": rand(rng, 12)},
        [1, 3, "H", "W"])


def test_a_crop_that_keeps_the_whole_fixed_tile_is_no_op_and_a_real_one_is_refused(tmp_path):
    from conversion.errors import UnsupportedOpError

    m = _pad_to_4_and_crop_back()
    g = from_onnx(m, input_hw=(8, 12))  # a multiple of 4 already: pads of 0, a crop to the whole
    assert [n.op for n in g.nodes] == ["Conv", "DepthToSpace", "Add"]
    x = rand(np.random.default_rng(4), 1, 3, 8, 12, lo=0.0)
    np.testing.assert_allclose(executor.run(g, {g.inputs[0]: x.transpose(0, 2, 3, 1)})[g.outputs[0]], run_ort(m, x),
                               atol=1e-5, rtol=0)
    with pytest.raises(UnsupportedOpError, match=r"crop \(Slice: only step-1 slices of the channel axis.*spatial"):
        from_onnx(m, input_hw=(6, 10))  # padded to 8 x 12, cropped back: a real crop
    from conversion.cli import convert

    (tmp_path / "m.onnx").write_bytes(m.SerializeToString())
    res = convert(tmp_path / "m.onnx", "tflite", tile=(8, 12), verify=False)  # as `convert --tile 8x12` imports it
    np.testing.assert_allclose(run_tflite(res.output, x.transpose(0, 2, 3, 1)), run_ort(m, x), atol=1e-5, rtol=0)


def test_a_slice_of_channels_and_of_the_whole_width_is_a_channel_slice(tmp_path):
    rng = np.random.default_rng(5)
    m = make_model([h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Slice", ["c", "s", "e", "ax", "st"], ["y"], name="take")],
                   {"w": rand(rng, 6, 3, 3, 3), "b": rand(rng, 6), "s": np.array([0, 0], np.int64),
                    "e": np.array([3, 9], np.int64), "ax": np.array([1, 3], np.int64), "st": np.array([1, 1], np.int64)},
                   [1, 3, 7, 9])
    convert_and_compare(tmp_path, m, rand(rng, 1, 3, 7, 9), expect=["CONV_2D"])


def test_a_float16_network_with_float_io_converts_as_its_float_network(tmp_path, capsys):
    """onnxconverter-common's keep_io_types layout (float16 weights and math, float I/O) was refused as two bare
    "Cast_0 (Cast)" nodes; now converted, verified with fp16's tolerance against the float16 source."""
    from tests.conversion_testkit import convert_main

    from conversion.verify import default_dataset

    rng = rng_for("fp16-keep-io")
    m = make_model([h.make_node("Cast", ["x"], ["x16"], to=10, name="Cast_0"),
                    h.make_node("Conv", ["x16", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
                    h.make_node("Relu", ["c"], ["r"], name="relu"),
                    h.make_node("Conv", ["r", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
                    h.make_node("Add", ["c2", "x16"], ["y16"], name="add"),
                    h.make_node("Cast", ["y16"], ["y"], to=1, name="Cast_5")],
                   {"w": rand(rng, 4, 3, 3, 3).astype(np.float16), "b": rand(rng, 4).astype(np.float16),
                    "w2": rand(rng, 3, 4, 3, 3).astype(np.float16)}, [1, 3, "H", "W"])
    g = from_onnx(m)
    assert [n.op for n in g.nodes] == ["Conv", "Conv", "Add"]
    x = rand(rng, 1, 3, 9, 11, lo=0, hi=1)
    path = to_tflite(g, tmp_path / "m.tflite")
    np.testing.assert_allclose(run_tflite(path, x.transpose(0, 2, 3, 1)), run_ort(m, x), atol=2e-3, rtol=0)
    if default_dataset().is_dir():
        src = tmp_path / "m16.onnx"
        src.write_bytes(m.SerializeToString())
        assert convert_main([src, "--to", "tflite", "--card-task", "denoise", "--verify-images", "1",
                             "-o", tmp_path / "m16.tflite"]) == 0, capsys.readouterr().err
