"""IR -> Core ML mlprogram (.mlpackage) with coremltools' MIL builder, plus a numpy evaluator.

Core ML's Neural Engine wants fixed shapes, so the program is built for one tile (H, W), or with
EnumeratedShapes for a few more (the tile is the default). Tensors are NCHW as MIL expects; weights
are laid back out from the IR's OHWI. I/O is a float tensor on the card's input range, [0, 1] by
default (``io="tensor"``), or an image (``io="image"``: RGB / grayscale pixels in, mapped onto that
range on the way in, and an image out of the network's output mapped back, clipped to [0, 255]). The card goes to ``user_defined_metadata``.
Weights may be compressed after conversion (int8, k-means palettes, magnitude-pruned sparse), or
the program may carry a calibrated int8 graph's activation quantisation (W8A8: MIL quantize /
dequantize, iOS17+); either combines with enumerated shapes and image I/O.
Linux cannot run Core ML, so :func:`evaluate_mil` walks the *converted* program's ops (fp16 casts,
image scaling, quantize / dequantize and decompressed weights included) with numpy and
:func:`verify_coreml` compares that with the IR executor on real images, at every enumerated shape.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from edge_enhance.card import CARD_KEY
from edge_enhance.tiling import check_aligned

from . import executor
from .errors import ConfigError, UnsupportedOpError, VerificationError
from .ir import Graph
from .onnx_writer import _check_quantised, _nchw_const

log = logging.getLogger(__name__)

TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
WEIGHTS = ("fp", "int8", "palette4", "palette6", "palette8", "sparse50", "sparse75", "sparse90")
SPARSITY = {"sparse50": 0.5, "sparse75": 0.75, "sparse90": 0.9}  # share of each conv's weights zeroed
IO = ("tensor", "image")
# Image outputs (ct.ImageType in ``outputs``) need the iOS16 / macOS13 spec.
IMAGE_OUTPUT_TARGETS = ("iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15")
# What the card's "weights" field says for each compression (conv / conv_transpose weights only).
WEIGHT_FORMATS = {"int8": "int8 linear symmetric per-output-channel", "palette4": "4-bit k-means palette",
                  "palette6": "6-bit k-means palette", "palette8": "8-bit k-means palette",
                  **{k: f"{v:.0%} magnitude-pruned, bitmask + non-zero values" for k, v in SPARSITY.items()}}
W8A8_ACTIVATIONS = "int8 per-tensor quantize/dequantize, calibrated (quantization.quantize)"
W8A8_TOO_OLD = ("iOS15", "iOS16", "macOS12", "macOS13")  # no MIL quantize / dequantize ops


def _ct():
    from edge_enhance.errors import BackendUnavailableError

    try:
        from edge_enhance.backends.coreml import import_coremltools

        ct = import_coremltools()
        from coremltools.converters.mil import Builder as mb
    except ImportError:  # pragma: no cover - depends on the environment
        raise BackendUnavailableError("Core ML export needs coremltools: pip install 'edge-enhance[coreml]'") from None
    try:  # the .mlpackage writers; Windows gets coremltools' source package, built without them
        importlib.import_module("coremltools.libmilstoragepython")
        importlib.import_module("coremltools.libmodelpackage")
    except ImportError:
        raise BackendUnavailableError("Core ML export needs coremltools' native parts, which its Windows package "
                                      "lacks: run it on macOS or Linux (WSL)") from None
    return ct, mb


@contextlib.contextmanager
def _progress_bars_as_drawn():
    """coremltools' pass pipelines draw tqdm bars on stderr, redrawn with CR. The edge-enhance CLI's
    stderr escapes control characters (a file name must not rewrite the terminal), which printed each CR
    as a literal \\r: the bars go to the stream beneath it while coremltools runs; where that is not a
    terminal (a CI log, a file), nowhere: redrawn lines there read as a wall of noise, or as failures."""
    from edge_enhance.cli import _unescaped

    err = sys.stderr
    raw = _unescaped(err)
    sys.stderr = raw if _isatty(raw) else io.StringIO()
    try:
        yield
    finally:
        sys.stderr = err


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _tile_of(g: Graph, tile):
    if tile is not None:
        return tuple(int(v) for v in tile)
    _, h, w, _ = g.tensors[g.inputs[0]].shape
    if h is None or w is None:
        card = g.metadata.get(CARD_KEY)
        t = json.loads(card).get("tile") if card else None
        if t:
            return tuple(t)
        raise ConfigError("Core ML export needs a fixed tile (--tile HxW): the Neural Engine runs fixed shapes")
    return h, w


def input_range(graph: Graph) -> tuple[float, float]:
    """The network's input range from its card ((0, 1) without one): image I/O maps pixels 0..255 onto it."""
    from edge_enhance.card import ModelCard

    card = graph.metadata.get(CARD_KEY)
    return tuple(ModelCard.from_json(card).input_range) if card else (0.0, 1.0)


def build_program(graph: Graph, tile, *, min_target: str = "iOS16", flexible: bool = False, io: str = "tensor",
                  w8a8: bool = False):
    """The MIL program (NCHW, float32) computing ``graph`` for input size ``tile``.

    ``flexible`` leaves H and W symbolic (for EnumeratedShapes): no op may then bake in the tile's
    output size. ``io="image"`` appends ``clip((y - lo) * 255 / (hi - lo), 0, 255)`` (the card's input
    range lo..hi) so the output is image pixels.
    ``w8a8``: ``graph`` is quantised (quantization.quantize); every activation it quantises (the
    input, every node output) goes through MIL ``quantize`` -> ``dequantize`` with its scale and
    zero point, and conv weights are its int8 per-output-channel values behind a
    ``constexpr_affine_dequantize``: what ``executor.run(graph, simulate_quant=True)`` computes.
    Both combine with either: quantize / dequantize are elementwise (any H, W), and with image I/O
    the network's dequantised output is what is scaled to pixels.
    """
    ct, mb = _ct()
    from coremltools.converters.mil.mil import get_new_symbol

    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ConfigError("Core ML export supports one image input and one output")
    if w8a8:
        _check_quantised(graph, "Core ML W8A8")
    g = copy.deepcopy(graph)
    n_, _, _, c = g.tensors[g.inputs[0]].shape
    g.retype({g.inputs[0]: (1, tile[0], tile[1], c)})
    in_name, final = g.inputs[0], g.outputs[0]
    hw = (get_new_symbol(), get_new_symbol()) if flexible else tuple(tile)

    def scales(n):  # per-axis factors of a Resize that must hold at every input size
        if n.attrs["scales"] is None:
            raise UnsupportedOpError(f"{n.name}: Resize to fixed sizes cannot take enumerated shapes (export "
                                     "it with scales)")
        return [float(v) for v in n.attrs["scales"]]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, c) + hw)], opset_version=getattr(ct.target, min_target))
    def prog(x):
        env = {}

        def qdq(v, tensor, name):
            q = g.tensors[tensor].quant
            if not w8a8:
                return v
            s, z = np.float32(q.scale[0]), np.dtype(q.dtype).type(q.zero_point[0])
            return mb.dequantize(input=mb.quantize(input=v, scale=s, zero_point=z, output_dtype=q.dtype,
                                                   name=name + "_int"), scale=s, zero_point=z, name=name)

        def weight(name, order, axis):
            t = g.tensors[name]
            if not w8a8:
                return np.ascontiguousarray(t.data.transpose(order))
            q = t.quant.quantize(np.asarray(t.data, np.float64)).transpose(order).astype(np.int8)
            s = t.quant.scale.astype(np.float32)
            return mb.constexpr_affine_dequantize(quantized_data=np.ascontiguousarray(q), zero_point=np.int8(0),
                                                  scale=s if s.size > 1 else s[0], axis=axis, name=name + "_dq")

        def val(name):
            t = g.tensors[name]
            if t.is_const:  # e.g. an Add constant: the value the int8 model sees
                return _nchw_const(t.quant.fake_quantize(t.data) if w8a8 and t.quant is not None else t.data)
            return env[name]

        env[in_name] = qdq(x, in_name, in_name + "_dq")

        def act(v, kind, name):
            if kind == "relu":
                return mb.relu(x=v, name=name)
            if kind == "relu6":
                return mb.clip(x=v, alpha=0.0, beta=6.0, name=name)
            if kind == "relu_n1_to_1":
                return mb.clip(x=v, alpha=-1.0, beta=1.0, name=name)
            return v

        for n in g.nodes:
            a, out = n.attrs, n.outputs[0]
            fused = a.get("activation", "none") != "none"
            last = out + "_unit" if io == "image" and out == final else out  # the image is named `final`
            base = last + "_float" if w8a8 else last  # the dequantised value takes the tensor's name
            nm = base + "_pre" if fused else base
            if n.op == "Conv":
                pt, pl, pb, pr = a["pads"]
                y = mb.conv(x=env[n.inputs[0]], weight=weight(n.inputs[1], (0, 3, 1, 2), 0),
                            bias=g.tensors[n.inputs[2]].data, strides=list(a["strides"]),
                            dilations=list(a["dilations"]), pad_type="custom", pad=[pt, pb, pl, pr],
                            groups=a["group"], name=nm)
            elif n.op == "ConvTranspose":
                pt, pl, pb, pr = a["pads"]
                oh, ow = g.tensors[out].shape[1:3]
                co = g.tensors[n.inputs[1]].data.shape[0]
                kw = {} if flexible else {"output_shape": [1, co, oh, ow]}
                if flexible and any(a["output_padding"]):
                    raise UnsupportedOpError(f"{n.name}: ConvTranspose with output_padding cannot take enumerated "
                                             "shapes")
                y = mb.conv_transpose(x=env[n.inputs[0]], weight=weight(n.inputs[1], (3, 0, 1, 2), 1),  # [C_in, C_out, kh, kw]
                                      bias=g.tensors[n.inputs[2]].data, strides=list(a["strides"]),
                                      pad_type="custom", pad=[pt, pb, pl, pr], name=nm, **kw)
            elif n.op in ("Add", "Mul", "Minimum", "Maximum"):
                f = {"Add": mb.add, "Mul": mb.mul, "Minimum": mb.minimum, "Maximum": mb.maximum}[n.op]
                y = f(x=val(n.inputs[0]), y=val(n.inputs[1]), name=nm)
            elif n.op == "Concat":
                y = mb.concat(values=[env[i] for i in n.inputs], axis=[0, 2, 3, 1][a["axis"]], name=nm)
            elif n.op == "Relu":
                y = mb.relu(x=env[n.inputs[0]], name=nm)
            elif n.op == "Sigmoid":
                y = mb.sigmoid(x=env[n.inputs[0]], name=nm)
            elif n.op == "Tanh":
                y = mb.tanh(x=env[n.inputs[0]], name=nm)
            elif n.op == "LeakyRelu":
                y = mb.leaky_relu(x=env[n.inputs[0]], alpha=float(a["alpha"]), name=nm)
            elif n.op == "PRelu":
                s = np.asarray(g.tensors[n.inputs[1]].data, np.float32).ravel()
                s = np.full(c_of(g, n.inputs[0]), s[0], np.float32) if s.size == 1 else s
                y = mb.prelu(x=env[n.inputs[0]], alpha=s, name=nm)
            elif n.op == "Clip":
                lo, hi = a["min"], a["max"]
                if lo is not None and hi is not None:
                    y = mb.clip(x=env[n.inputs[0]], alpha=float(lo), beta=float(hi), name=nm)
                elif lo is not None:
                    y = mb.maximum(x=env[n.inputs[0]], y=np.float32(lo), name=nm)
                else:
                    y = mb.minimum(x=env[n.inputs[0]], y=np.float32(hi), name=nm)
            elif n.op == "DepthToSpace":
                y = mb.depth_to_space(x=env[n.inputs[0]], block_size=a["block_size"], name=nm)
            elif n.op == "Pad":
                pt, pl, pb, pr = a["pads"]
                mode = {"edge": "replicate"}.get(a["mode"], a["mode"])
                y = mb.pad(x=env[n.inputs[0]], pad=np.array([pt, pb, pl, pr], np.int32), mode=mode, name=nm)
            elif n.op == "Resize":
                ih, iw = g.tensors[n.inputs[0]].shape[1:3]
                oh, ow = g.tensors[out].shape[1:3]
                sh, sw = scales(n) if flexible else (oh / ih, ow / iw)
                if a["mode"] == "nearest":
                    if not (sh.is_integer() and sw.is_integer()) or a["align_corners"]:
                        raise UnsupportedOpError(f"{n.name}: Core ML nearest resize needs an integer scale")
                    y = mb.upsample_nearest_neighbor(x=env[n.inputs[0]], scale_factor_height=int(sh),
                                                     scale_factor_width=int(sw), name=nm)
                elif flexible:  # sized by factors, so it follows the input shape
                    ac, hp = bool(a["align_corners"]), bool(a["half_pixel_centers"])
                    if ac == hp and min_target in ("iOS15", "macOS12"):  # half_pixel_centers came in iOS16
                        raise UnsupportedOpError(f"{n.name}: asymmetric bilinear resize with enumerated shapes "
                                                 "needs a minimum deployment target of iOS16 or later")
                    hp_kw = {"half_pixel_centers": hp} if ac == hp else {}  # else the default, on any opset
                    y = mb.upsample_bilinear(x=env[n.inputs[0]], scale_factor_height=sh, scale_factor_width=sw,
                                             align_corners=ac, name=nm, **hp_kw)
                else:
                    mode = ("STRICT_ALIGN_CORNERS" if a["align_corners"] else
                            "UNALIGN_CORNERS" if a["half_pixel_centers"] else "DEFAULT")
                    y = mb.resize_bilinear(x=env[n.inputs[0]], target_size_height=oh, target_size_width=ow,
                                           sampling_mode=mode, name=nm)
            else:
                raise UnsupportedOpError(f"Core ML writer: no lowering for IR op {n.op} ({n.name})")
            env[out] = qdq(act(y, a.get("activation", "none"), base) if fused else y, out, last)
        if io == "image":  # the network's output range (its card's input range) back to pixels 0..255
            lo, hi = input_range(graph)
            y = mb.sub(x=env[final], y=np.float32(lo)) if lo else env[final]
            return mb.clip(x=mb.mul(x=y, y=np.float32(255.0 / (hi - lo))), alpha=0.0, beta=255.0, name=final)
        return env[final]

    return prog


def c_of(g, name):
    return g.tensors[name].shape[3]


def kmeans_lut(weight: np.ndarray, nbits: int, iters: int = 30):
    """1-D k-means palette -> (lut, indices): coremltools' own k-means mode needs scikit-learn,
    which we do not depend on. Lloyd from a uniform grid over [min, max]: each step only lowers the
    squared error, so the palette is never worse than uniform and the extremes keep a level.

    >>> lut, idx = kmeans_lut(np.array([0.0, 0.1, 1.0, 1.1]), 1)
    >>> np.round(lut, 2).tolist(), idx.tolist()
    ([0.05, 1.05], [0, 0, 1, 1])
    """
    w = np.asarray(weight, np.float64).ravel()
    k = 1 << nbits
    lut = np.linspace(w.min(), w.max(), k)
    for _ in range(iters):
        idx = _nearest(w, lut)
        sums, counts = np.bincount(idx, w, k), np.bincount(idx, minlength=k)
        new = np.where(counts > 0, sums / np.maximum(counts, 1), lut)
        empty = np.flatnonzero(counts == 0)
        if empty.size:  # an unused level moves onto the worst-fitted weights (error only falls)
            new[empty] = w[np.argsort(np.abs(w - new[idx]))[-empty.size:]]
        if np.allclose(new, lut):
            break
        lut = new
    idx = _nearest(w, lut)
    return lut.astype(np.asarray(weight).dtype), idx.astype(np.int64)  # the LUT keeps the weight dtype


def _nearest(w, lut):
    order = np.argsort(lut)
    s = lut[order]
    mid = (s[1:] + s[:-1]) / 2
    return order[np.searchsorted(mid, w)]


def compress_weights(model, weights: str):
    """Apply coremltools.optimize.coreml weight compression to conv / conv_transpose weights."""
    import coremltools.optimize.coreml as cto

    if weights == "int8":
        cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                          weight_threshold=0)
        fn = cto.linear_quantize_weights
    elif weights in SPARSITY:  # unstructured: the smallest |w| of each conv, as quantization.prune.sparsify
        cfg = cto.OpMagnitudePrunerConfig(target_sparsity=SPARSITY[weights], weight_threshold=0)
        fn = cto.prune_weights
    else:
        nbits = int(weights[len("palette"):])
        cfg = cto.OpPalettizerConfig(mode="custom", lut_function=lambda w: kmeans_lut(w, nbits), weight_threshold=0)
        fn = cto.palettize_weights
    return fn(model, cto.OptimizationConfig(op_type_configs={"conv": cfg, "conv_transpose": cfg}))


def check_coreml(graph: Graph, *, weights: str = "fp", min_target: str = "iOS16", io: str = "tensor",
                 w8a8: bool = False) -> None:
    """Raise ConfigError for options :func:`to_coreml` cannot honour (callers check before calibrating)."""
    if weights not in WEIGHTS:
        raise ConfigError(f"Core ML weights {weights!r} is not one of {', '.join(WEIGHTS)}")
    if min_target not in TARGETS:
        raise ConfigError(f"minimum deployment target {min_target!r} is not one of {', '.join(TARGETS)}")
    if io not in IO:
        raise ConfigError(f"Core ML io {io!r} is not one of {', '.join(IO)}")
    if w8a8 and weights != "fp":  # (the CLI's --precision w8a8 gives "fp": only the Python API can get here)
        raise ConfigError(f"Core ML W8A8 quantises the weights itself: weights={weights!r} does not combine with it")
    if w8a8 and min_target in W8A8_TOO_OLD:
        raise ConfigError(f"Core ML W8A8 needs --min-target iOS17 / macOS14 or later (got {min_target})")
    if weights != "fp" and min_target in ("iOS15", "macOS12"):  # coremltools would raise the target silently
        raise ConfigError(f"Core ML {weights} weights are stored with iOS16 / macOS13 ops (constexpr); the minimum "
                          f"deployment target {min_target} takes fp32 / fp16 weights only")
    if io == "image":
        c = graph.tensors[graph.inputs[0]].shape[3]
        out_c = graph.tensors[graph.outputs[0]].shape[3] if len(graph.outputs) == 1 else None
        if min_target not in IMAGE_OUTPUT_TARGETS:
            raise ConfigError(f"Core ML image output needs iOS16 / macOS13 or later (got {min_target})")
        if c not in (1, 3) or out_c != c:
            raise ConfigError(f"Core ML image I/O needs 1 (grayscale) or 3 (RGB) channels in and out; the model "
                              f"has {c} in, {out_c} out")


def to_coreml(graph: Graph, path, *, precision: str = "fp16", tile=None, min_target: str = "iOS16",
              enumerated_shapes: tuple = (), weights: str = "fp", io: str = "tensor", w8a8: bool = False) -> list:
    """Write an .mlpackage atomically; returns the converted program's op types (no consts).

    ``weights`` other than ``fp`` compresses conv weights (int8 per-channel, an n-bit palette or
    a magnitude-pruned bitmask), which Core ML expands at load time; activations stay ``precision``.
    ``enumerated_shapes`` are extra (h, w) input sizes besides ``tile`` (the default).
    ``io="image"``: an RGB (3 channels) or grayscale (1) image in, pixels 0..255 mapped onto the card's
    input range so the network sees what it does with tensors, and an image of the same layout out. ``w8a8`` takes a
    quantised graph (quantization.quantize) and writes its int8 weights and activation quantisation
    (see :func:`build_program`); MIL ``quantize`` / ``dequantize`` need iOS17 / macOS14. Shapes,
    I/O and precision are independent: every combination is allowed (w8a8 excludes ``weights``).
    """
    ct, _ = _ct()
    if precision not in ("fp32", "fp16"):
        raise ConfigError(f"Core ML precision {precision!r} is not one of fp32, fp16")
    check_coreml(graph, weights=weights, min_target=min_target, io=io, w8a8=w8a8)
    c = graph.tensors[graph.inputs[0]].shape[3]
    tile = _tile_of(graph, tile)
    sizes = [tuple(tile)] + [(int(h), int(w)) for h, w in enumerated_shapes if (int(h), int(w)) != tuple(tile)]
    check_aligned(sizes, graph.align, "Core ML input size")
    prog = build_program(graph, tile, min_target=min_target, flexible=len(sizes) > 1, io=io, w8a8=w8a8)
    name = list(prog.functions["main"].inputs)[0]
    shape = [(1, c) + s for s in sizes]
    shape = ct.EnumeratedShapes(shapes=shape, default=shape[0]) if len(sizes) > 1 else shape[0]
    if io == "image":
        layout = ct.colorlayout.RGB if c == 3 else ct.colorlayout.GRAYSCALE
        lo, hi = input_range(graph)  # pixels 0..255 onto the network's input range
        inp = ct.ImageType(name=name, shape=shape, scale=(hi - lo) / 255.0, bias=[lo] * c if c == 3 else lo,
                           color_layout=layout)
        # convert(outputs=...) is ignored for a MIL program: the output type goes on the function.
        prog.functions["main"].set_output_types([ct.ImageType(color_layout=layout)])
    else:
        inp = ct.TensorType(name=name, shape=shape)
    with _progress_bars_as_drawn():
        model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=getattr(ct.target, min_target),
                           compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
                           inputs=[inp])
        if weights != "fp":
            model = compress_weights(model, weights)
    program = model._mil_program
    model = _name_input(ct, model, graph.inputs[0])
    _describe(model, graph, io, sizes)
    card = graph.metadata.get(CARD_KEY)
    if card:
        d = json.loads(card)
        d["layout"], d["tile"] = "nchw", [tile[0], tile[1]]
        if weights != "fp" or w8a8:
            d["weights"] = WEIGHT_FORMATS["int8" if w8a8 else weights]
        if w8a8:
            d["activations"] = W8A8_ACTIVATIONS
        if len(sizes) > 1:
            d["enumerated_shapes"] = [list(s) for s in sizes]
        if io == "image":  # the runtime feeds / reads 8-bit pixels
            d["input_range"], d["io"] = [0.0, 255.0], "image"
        model.user_defined_metadata[CARD_KEY] = json.dumps(d, sort_keys=True)
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: output folder {path.parent} does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=".mlpackage-", dir=path.parent))
    try:
        model.save(str(tmp / path.name))
        if path.is_dir() and not (path / "Manifest.json").is_file():
            raise ConfigError(f"{path}: is a folder, not a Core ML package; give the output another name")
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _LAST_PROGRAM.clear()  # keep only the latest: programs can be large
    _LAST_PROGRAM[str(path)] = program
    return [op.op_type for op in program.functions["main"].operations if op.op_type != "const"]


def _describe(model, graph: Graph, io: str, sizes) -> None:
    """What Xcode shows an app developer for the model and its features (they were empty)."""
    from edge_enhance.card import ModelCard

    card = ModelCard.from_json(graph.metadata[CARD_KEY]) if CARD_KEY in graph.metadata else None
    lo, hi = input_range(graph)
    c = graph.tensors[graph.inputs[0]].shape[3]
    shapes = " or ".join(f"{h}x{w}" for h, w in sizes)
    what = ("grayscale" if c == 1 else "RGB") + f" image, {shapes}"
    pixels = "pixels 0..255" if io == "image" else f"1x{c}xHxW float, pixels 0..255 as {lo:g}..{hi:g}"
    inp, out = model.get_spec().description.input[0].name, model.get_spec().description.output[0].name
    if card:
        s = card.scale
    else:  # read off the graph, as `info` does: a card-less x2 net's output is not "the input's size"
        from .footprint import footprint

        try:
            s = footprint(graph).scale
        except ConfigError:
            s = None
    model.input_description[inp] = f"{what} ({pixels})"
    model.output_description[out] = f"the result ({pixels})" if s is None else \
        f"the result, {s}x the input's size ({pixels})" if s > 1 else f"the result, the input's size ({pixels})"
    if card:
        model.short_description = (f"edge-enhance {card.name}: {card.task}" + (f" x{card.scale}" if card.scale > 1 else "")
                                   + " (the model card is in the metadata, key " + CARD_KEY + ")")


def _name_input(ct, model, onnx_name: str):
    """The model with its input feature named after the ONNX input (as the output already is), made a
    valid Core ML name the way coremltools makes the output's: other characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", onnx_name)
    name = "var_" + name if not name or name[0].isdigit() else name
    spec = model.get_spec()
    old, out = spec.description.input[0].name, spec.description.output[0].name
    if name in (old, out):  # already so, or it would clash with the output
        return model
    ct.utils.rename_feature(spec, old, name)
    return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)


_LAST_PROGRAM: dict = {}  # path -> converted MIL program (coremltools cannot reload one on Linux)


# --------------------------------------------------------------------------- numpy MIL evaluation
def _nhwc(v):
    return np.asarray(v).transpose(0, 2, 3, 1)


def _nchw(v):
    return np.asarray(v).transpose(0, 3, 1, 2)


def evaluate_mil(prog, x_nchw: np.ndarray) -> np.ndarray:
    """Evaluate a MIL program's main function with numpy (fp16 casts and fp16 consts honoured)."""
    fn = prog.functions["main"]
    env = {}
    (in_name,) = list(fn.inputs)
    env[in_name] = np.asarray(x_nchw, np.float32)

    def v(var):
        if var is None:
            return None
        if var.name in env:
            return env[var.name]
        if var.val is not None:
            return np.asarray(var.val)
        raise ConfigError(f"MIL evaluation: {var.name} has no value")

    def arg(op, k, default=None):
        var = op.inputs.get(k)
        return default if var is None else v(var)

    for op in fn.operations:
        t = op.op_type
        if t == "const":
            env[op.outputs[0].name] = np.asarray(op.outputs[0].val)
            continue
        if t.startswith("constexpr_"):
            env[op.outputs[0].name] = decompress_op(op)
            continue
        x = arg(op, "x") if "x" in op.inputs else arg(op, "input")
        if t in ("quantize", "dequantize"):
            y = _affine(op, x, arg)
        elif t == "cast":
            dt = str(arg(op, "dtype"))
            y = x.astype({"fp16": np.float16, "fp32": np.float32}[dt])
        elif t == "conv":
            w = arg(op, "weight").astype(np.float32)
            pad = [int(p) for p in arg(op, "pad", [0, 0, 0, 0])]
            ptype = str(arg(op, "pad_type", "custom"))
            if ptype != "custom" and any(pad):
                raise ConfigError(f"MIL evaluation: pad_type {ptype}")
            b = arg(op, "bias")
            b = np.zeros(w.shape[0], np.float32) if b is None else b.astype(np.float32)
            y = _nchw(executor.conv2d(_nhwc(x.astype(np.float32)), w.transpose(0, 2, 3, 1), b,
                                      tuple(arg(op, "strides", [1, 1])), tuple(arg(op, "dilations", [1, 1])),
                                      (pad[0], pad[2], pad[1], pad[3]), int(arg(op, "groups", 1))))
        elif t == "conv_transpose":
            w = arg(op, "weight").astype(np.float32)  # [C_in, C_out, kh, kw]
            pad = [int(p) for p in arg(op, "pad", [0, 0, 0, 0])]
            b = arg(op, "bias")
            b = np.zeros(w.shape[1], np.float32) if b is None else b.astype(np.float32)
            os_ = arg(op, "output_shape")
            full = executor.conv_transpose2d(_nhwc(x.astype(np.float32)), w.transpose(1, 2, 3, 0), np.zeros_like(b),
                                             tuple(arg(op, "strides", [1, 1])), (0, 0, 0, 0))
            oh, ow = (int(os_[2]), int(os_[3])) if os_ is not None else (full.shape[1] - pad[0] - pad[1],
                                                                          full.shape[2] - pad[2] - pad[3])
            full = np.pad(full, ((0, 0), (0, max(0, pad[0] + oh - full.shape[1])),
                                 (0, max(0, pad[2] + ow - full.shape[2])), (0, 0)))
            y = _nchw(full[:, pad[0]:pad[0] + oh, pad[2]:pad[2] + ow] + b)
        elif t in ("add", "mul", "minimum", "maximum", "sub", "real_div"):
            f = {"add": np.add, "mul": np.multiply, "minimum": np.minimum, "maximum": np.maximum,
                 "sub": np.subtract, "real_div": np.divide}[t]
            y = f(x.astype(np.float32), arg(op, "y").astype(np.float32))
        elif t == "concat":
            vals = [v(var) for var in op.inputs["values"]]
            y = np.concatenate(vals, axis=int(arg(op, "axis")))
        elif t == "relu":
            y = np.maximum(x, 0)
        elif t == "sigmoid":
            y = 1 / (1 + np.exp(-x.astype(np.float32)))
        elif t == "silu":  # coremltools fuses x * sigmoid(x)
            xf = x.astype(np.float32)
            y = xf / (1 + np.exp(-xf))
        elif t == "batch_norm":  # coremltools turns a per-channel x * a + b that no conv absorbs into one
            c = (1, -1, 1, 1)
            inv = 1 / np.sqrt(arg(op, "variance").astype(np.float32) + float(arg(op, "epsilon", 1e-5)))
            gamma, beta = arg(op, "gamma"), arg(op, "beta")
            y = (x.astype(np.float32) - arg(op, "mean").astype(np.float32).reshape(c)) * inv.reshape(c)
            y = y * (1 if gamma is None else gamma.astype(np.float32).reshape(c)) + (
                0 if beta is None else beta.astype(np.float32).reshape(c))
        elif t == "tanh":
            y = np.tanh(x.astype(np.float32))
        elif t == "leaky_relu":
            y = np.where(x >= 0, x, x * float(arg(op, "alpha")))
        elif t == "prelu":
            al = arg(op, "alpha").astype(np.float32).reshape(1, -1, 1, 1)
            y = np.where(x >= 0, x, x * al)
        elif t == "clip":
            y = np.clip(x, float(arg(op, "alpha")), float(arg(op, "beta")))
        elif t == "relu6":
            y = np.clip(x, 0, 6)
        elif t == "pad":
            pt, pb, pl, pr = (int(v) for v in arg(op, "pad"))
            mode = {"replicate": "edge"}.get(str(arg(op, "mode")), str(arg(op, "mode")))
            y = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), mode=mode)
        elif t == "depth_to_space":
            y = _nchw(executor.depth_to_space(_nhwc(x), int(arg(op, "block_size"))))
        elif t == "upsample_nearest_neighbor":
            sh, sw = int(arg(op, "scale_factor_height")), int(arg(op, "scale_factor_width"))
            y = x.repeat(sh, axis=2).repeat(sw, axis=3)
        elif t == "resize_bilinear":
            mode = str(arg(op, "sampling_mode", "DEFAULT"))
            ac, hp = {"STRICT_ALIGN_CORNERS": (True, False), "UNALIGN_CORNERS": (False, True),
                      "DEFAULT": (False, False)}[mode]
            size = (int(arg(op, "target_size_height")), int(arg(op, "target_size_width")))
            y = _nchw(executor.resize(_nhwc(x.astype(np.float32)), size, "bilinear", ac, hp))
        elif t == "upsample_bilinear":  # half_pixel_centers defaults to not align_corners
            ac = bool(arg(op, "align_corners", True))
            hp = bool(arg(op, "half_pixel_centers", not ac))
            size = (int(x.shape[2] * float(arg(op, "scale_factor_height", 1))),
                    int(x.shape[3] * float(arg(op, "scale_factor_width", 1))))
            y = _nchw(executor.resize(_nhwc(x.astype(np.float32)), size, "bilinear", ac, hp))
        else:
            raise ConfigError(f"MIL evaluation: no numpy kernel for {t} ({op.name})")
        dtype = np.float16 if x is not None and x.dtype == np.float16 and t not in ("cast", "quantize") else None
        y = np.asarray(y)
        if dtype is not None:
            with np.errstate(over="ignore"):  # an overflow to inf is what verification reports, in one line
                y = y.astype(np.float16)
        elif y.dtype == np.float64:
            y = y.astype(np.float32)
        env[op.outputs[0].name] = y
    return np.asarray(env[fn.outputs[0].name], np.float32)


def _affine(op, x, arg):
    """MIL iOS17 ``quantize`` (clip(round(x / scale) + zero_point), round half to even, in the
    input's float type as Core ML computes it) and ``dequantize`` ((q - zero_point) * scale)."""
    s, z = arg(op, "scale"), arg(op, "zero_point")
    if s.size > 1:
        shape = [1] * x.ndim
        shape[int(arg(op, "axis"))] = -1
        s, z = s.reshape(shape), (None if z is None else z.reshape(shape))
    if op.op_type == "dequantize":
        return (x.astype(s.dtype) - (0 if z is None else z.astype(s.dtype))) * s
    dt = np.dtype(str(arg(op, "output_dtype")))
    info = np.iinfo(dt)
    q = np.round(x / s.astype(x.dtype)) + (0 if z is None else z.astype(x.dtype))
    return np.clip(q, info.min, info.max).astype(dt)


def _unpack_bits(packed: np.ndarray, nbits: int, n: int) -> np.ndarray:
    """iOS16 packed n-bit indices: element bits LSB first, elements back to back."""
    bits = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: n * nbits].reshape(n, nbits)
    return (bits.astype(np.int64) << np.arange(nbits)).sum(1)


def _block_repeat(a: np.ndarray, shape) -> np.ndarray:
    """Broadcast a block-wise parameter (one value per block along each axis) up to ``shape``."""
    for ax, (m, n) in enumerate(zip(a.shape, shape)):
        if m != n:
            a = np.repeat(a, n // m, axis=ax)
    return a


def decompress_op(op) -> np.ndarray:
    """Dequantise a compressed-weight constexpr op with numpy (what Core ML does at load time)."""
    t = op.op_type

    def arg(op, k):
        var = op.inputs.get(k)
        return None if var is None else np.asarray(var.val)
    if t == "constexpr_affine_dequantize":  # iOS16: (q - zp) * scale along ``axis``
        q = arg(op, "quantized_data").astype(np.float32)
        ax = int(arg(op, "axis"))
        shp = [1] * q.ndim
        shp[ax] = -1
        zp = arg(op, "zero_point").astype(np.float32)
        sc = arg(op, "scale").astype(np.float32)
        y = (q - (zp.reshape(shp) if zp.size > 1 else zp)) * (sc.reshape(shp) if sc.size > 1 else sc)
        return y.astype(arg(op, "scale").dtype)
    if t == "constexpr_lut_to_dense" and "shape" in op.inputs:  # iOS16: per-tensor LUT, packed indices
        lut, shape = arg(op, "lut"), [int(d) for d in arg(op, "shape")]
        nbits = int(np.log2(lut.size))
        return lut[_unpack_bits(arg(op, "indices"), nbits, int(np.prod(shape)))].reshape(shape)
    if t == "constexpr_lut_to_dense":  # iOS18: lut [blocks..., 2^n, vector]; indices have the output shape
        idx, lut = arg(op, "indices").astype(np.int64), arg(op, "lut")
        if lut.shape[-1] != 1:
            raise ConfigError(f"MIL evaluation: vector palettisation ({op.name}) is not supported")
        lut = _block_repeat(lut[..., 0], idx.shape + (lut.shape[-2],))
        return np.take_along_axis(lut, idx[..., None], axis=-1)[..., 0]
    if t == "constexpr_blockwise_shift_scale":  # iOS18: scale * (data - offset), block-wise
        d, sc, off = arg(op, "data").astype(np.float32), arg(op, "scale"), arg(op, "offset")
        if off is not None:
            d = d - _block_repeat(off.astype(np.float32), d.shape)
        return (d * _block_repeat(sc.astype(np.float32), d.shape)).astype(sc.dtype)
    if t == "constexpr_sparse_to_dense":  # bitmask (iOS16: packed bytes + shape; iOS18: uint1, shaped)
        data, mask = arg(op, "nonzero_data"), arg(op, "mask")
        if "shape" in op.inputs:
            shape = [int(d) for d in arg(op, "shape")]
            mask = _unpack_bits(mask, 1, int(np.prod(shape))).reshape(shape)
        out = np.zeros(mask.shape, data.dtype)
        out[mask != 0] = data
        return out
    raise ConfigError(f"MIL evaluation: no numpy kernel for {t} ({op.name})")


def spec_io(path) -> tuple:
    """(io, [(h, w), ...]) of a saved model's input, read from its spec; the first size is the default."""
    ct, _ = _ct()
    t = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description.input[0].type
    if t.HasField("imageType"):
        im = t.imageType
        return "image", [(im.height, im.width)] + [(s.height, s.width) for s in im.enumeratedSizes.sizes
                                                   if (s.height, s.width) != (im.height, im.width)]
    a = t.multiArrayType
    default = tuple(int(d) for d in a.shape[2:])
    return "tensor", [default] + [tuple(int(d) for d in s.shape[2:]) for s in a.enumeratedShapes.shapes
                                  if tuple(int(d) for d in s.shape[2:]) != default]


def spec_names(path) -> tuple[str, str]:
    """(input, output) feature names of a saved model: what an app's code reads and writes."""
    ct, _ = _ct()
    d = ct.models.MLModel(str(path), skip_model_load=True).get_spec().description
    return d.input[0].name, d.output[0].name


def _fit(x: np.ndarray, size) -> np.ndarray:
    """HWC image cropped / mirror-padded to ``size`` (to exercise an enumerated shape no image has)."""
    x = x[: size[0], : size[1]]
    return np.pad(x, ((0, size[0] - x.shape[0]), (0, size[1] - x.shape[1]), (0, 0)), mode="symmetric")


def weight_bytes(prog) -> tuple[int, int]:
    """(dense, stored) bytes of the program's compressed weights: each constexpr op's output at
    its float type against the constants it is stored as (quantised values, LUT, mask, ...)."""
    dense = stored = 0
    for op in prog.functions["main"].operations:
        if op.op_type.startswith("constexpr_"):
            dense += decompress_op(op).nbytes
            stored += sum(-(-np.asarray(v.val).size * _bits(v) // 8) for v in op.inputs.values() if v.val is not None)
    return dense, stored


def _bits(var) -> int:
    """Bits per element as stored (iOS18 uint1 / uint4 / uint6 are held in uint8 arrays)."""
    dt = getattr(var, "dtype", None)
    return dt.get_bitwidth() if hasattr(dt, "get_bitwidth") else np.asarray(var.val).itemsize * 8


def verify_coreml(graph: Graph, path, *, precision: str = "fp16", dataset=None, max_images=None, crop=None,
                  tol=None, simulate_quant: bool = False):
    """IR executor vs numpy evaluation of the converted MIL program, on real images cropped to the
    default tile (where none is that large, padded up to it as the runtime pads them, and compared on
    their own pixels); each further enumerated shape is checked on the first image, fitted to it.

    Image I/O programs are fed pixels 0..255 and their output is mapped back to the network's range
    before comparing with the reference clipped to that range (the picture clips it).
    ``simulate_quant``: ``graph`` is quantised and the source is its simulated int8 inference
    (for W8A8: does the program compute what the quantiser planned?), at every shape too.
    """
    from edge_enhance.card import ModelCard

    from .verify import TOLERANCE, ImageResult, _fits, compare, default_dataset, list_images, make_pairs, psnr

    prog = _LAST_PROGRAM.get(str(path))
    if prog is None:
        raise ConfigError(f"{path}: no converted program in this session to evaluate (convert it here first)")
    io, sizes = spec_io(path)
    card = ModelCard.from_json(graph.metadata[CARD_KEY]) if CARD_KEY in graph.metadata else None
    lo, hi = input_range(graph)
    src = lambda x: executor.run(graph, {graph.inputs[0]: x[None]}, simulate_quant=simulate_quant)[graph.outputs[0]][0]
    tgt = lambda x: _nhwc(evaluate_mil(prog, _nchw(x[None])))[0]
    if io == "image":  # pixels in, pixels out: the reference is clipped to what a picture can show
        k = np.float32(255.0 / (hi - lo))
        run_src = src
        src = lambda x: np.clip(run_src(x), lo, hi)
        tgt = lambda x: _nhwc(evaluate_mil(prog, _nchw(np.rint((x[None] - lo) * k))))[0] / k + np.float32(lo)
    files = list_images(dataset or default_dataset())
    if tol is None:
        tol = TOLERANCE.get(precision)
    fitting = [f for f in files if _fits(f, sizes[0], card)]
    if not fitting and not simulate_quant:  # (said once: a W8A8 agreement check follows the first)
        log.warning("no image is large enough for the model's %dx%d input under its task's protocol; verifying on "
                    "the images reflect-padded at their bottom / right up to it, as the runtime runs them, compared "
                    "on their own pixels", *sizes[0])
    channels = graph.tensors[graph.inputs[0]].shape[3]
    rep = compare("coreml", precision, src, tgt, card, fitting or files, crop=sizes[0], max_images=max_images, tol=tol,
                  source=f"IR executor{' int8 simulation' if simulate_quant else ''} (numpy MIL evaluation as target)",
                  channels=channels, pad=not fitting)
    if io == "image":
        rep.precision += ", image I/O"
    for size in sizes[1:]:
        name, x, _ = next(make_pairs(card, files, max_images=1, channels=channels))
        x = _fit(x, size)
        a, b = src(x), tgt(x)
        err = float(np.abs(a.astype(np.float64) - b).max())
        rep.images.append(ImageResult(f"{name} @{size[0]}x{size[1]}", err, psnr(a, b), None, None))
        if tol is not None and err > tol:
            raise VerificationError(f"coreml {precision}: max abs error {err:.3g} exceeds {tol:g} at enumerated "
                                    f"shape {size[0]}x{size[1]}")
    return rep
