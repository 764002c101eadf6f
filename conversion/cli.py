"""`edge-enhance convert`: ONNX -> TFLite / Core ML / ONNX, verified before anything is written.

Exit codes: 0 converted and verified; 1 the model cannot be converted or fails verification;
2 bad options. Nothing is written unless conversion and verification succeed.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_enhance.argtypes import number
from edge_enhance.atomic import same_file, unwritable
from edge_enhance.card import CARD_KEY, strict_json
from edge_enhance.models import default_output, source_onnx
from edge_enhance.tiling import check_aligned

from .errors import ConfigError, EdgeEnhanceError, UnsupportedOpError, VerificationError
from .footprint import add_card_arguments, attach_card, card_options, check_card

log = logging.getLogger(__name__)
TARGETS = ("tflite", "coreml", "onnx")
PRECISIONS = ("fp32", "fp16", "int8", "int16x8", "w8a8", "palette4", "palette6", "palette8", "sparse50", "sparse75",
              "sparse90")
# Core ML int8 / paletteN / sparseNN = fp16 activations with compressed conv weights
# (coreml_writer.WEIGHTS); w8a8 = calibrated int8 activations too (quantize / dequantize).
COREML_WEIGHTS = ("int8", "palette4", "palette6", "palette8", "sparse50", "sparse75", "sparse90")
COREML_ONLY = ("w8a8",) + COREML_WEIGHTS[1:]
# numpy MIL evaluation of a W8A8 program vs the quantiser's own int8 simulation (float64): fp16
# arithmetic moves intermediate rounding ties, up to 3 output steps on sr-x2 / Set5 (a quarter of
# the pixels by one step; fp32 compute: 0.05%); a wrong scale or zero point moves far more.
W8A8_AGREEMENT_TOL = 6 / 255
SUFFIX = {"tflite": ".tflite", "coreml": ".mlpackage", "onnx": ".onnx"}
QUANTIZED = ("int8", "int16x8")  # TFLite precisions made by the calibrated quantiser (quantization.cli)


def check_output(out: Path, src: Path) -> None:
    """Before any work: the output must not be the input, nor a folder (other than an earlier .mlpackage,
    which is replaced whole), and its folder must exist."""
    if same_file(out, src):  # by any name: m.ONNX and m.onnx are one file on macOS and Windows
        raise ConfigError(f"{out}: output would overwrite the input model")
    if out.is_dir() and not (out.suffix == ".mlpackage" and (out / "Manifest.json").is_file()):
        raise ConfigError(f"{out}: is a folder; give the output a file name")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: output folder {out.parent} does not exist")
    why = unwritable(out.parent)
    if why:  # said now, not after minutes of calibration
        raise ConfigError(f"{out}: output folder {out.parent} is not writable ({why})")


def parse_tile(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--tile {text!r} must look like 256x256") from None
    if h < 1 or w < 1:
        raise ConfigError(f"--tile {text!r} must be positive")
    return h, w


def parse_shapes(text: str) -> tuple:
    """``"256x256,512x384"`` -> ((256, 256), (512, 384)), duplicates dropped, order kept."""
    shapes = []
    for part in text.split(","):
        try:
            hw = parse_tile(part.strip())
        except ConfigError:
            raise ConfigError(f"--enumerated-shapes {text!r}: {part.strip()!r} is not a positive HxW "
                              "size such as 256x256 (sizes are comma-separated)") from None
        if hw not in shapes:
            shapes.append(hw)
    return tuple(shapes)


@dataclass
class ConvertResult:
    output: Path
    target: str
    precision: str
    seconds: float
    size_bytes: int
    ops: dict = field(default_factory=dict)  # op type -> count
    report: object = None  # verify.VerifyReport or None
    notes: list = field(default_factory=list)  # lines for the summary (I/O, shapes)
    agreement: object = None  # w8a8: VerifyReport of the program vs the IR's int8 simulation
    weight_bytes: tuple | None = None  # Core ML compressed weights: (dense float, stored) bytes


def _tree_size(p: Path) -> int:
    return p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def check_options(to: str, precision: str, io: str, enumerated_shapes=(), d2s_as_transpose_conv: bool = False,
                  min_target: str | None = None):
    """Raise ConfigError for a combination of options no target supports (before any work)."""
    if to not in TARGETS:
        raise ConfigError(f"--to {to!r} is not one of {', '.join(TARGETS)}")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision in COREML_ONLY and to != "coreml":
        raise ConfigError(f"--precision {precision} applies to --to coreml only (int8 TFLite / ONNX: --precision int8)")
    if precision == "int16x8" and to != "tflite":
        alt = "fp16 activations with int8 weights" if to == "coreml" else "int8 QDQ"
        raise ConfigError(f"--precision int16x8 (16-bit activations, 8-bit weights) applies to --to tflite only; "
                          f"{to} has {alt} (--precision int8)")
    if io == "image" and to != "coreml":
        raise ConfigError(f"--io image applies to --to coreml only ({to} models take tensors; int8 TFLite takes "
                          "uint8 pixels with --io uint8)")
    if io in ("int8", "uint8") and not (to == "tflite" and precision == "int8"):
        raise ConfigError(f"--io {io} applies to --to tflite --precision int8 only; {to} {precision} models have "
                          f"float I/O{' (or --io image)' if to == 'coreml' else ''}")
    if enumerated_shapes and to != "coreml":
        raise ConfigError("--enumerated-shapes applies to --to coreml only")
    if d2s_as_transpose_conv and to != "tflite":
        raise ConfigError("--d2s-as-transpose-conv applies to --to tflite only")
    if min_target and to != "coreml":
        raise ConfigError("--min-target applies to --to coreml only")


def convert(model, to: str, *, output=None, precision: str = "fp32", io: str = "float", tile: tuple | None = None,
            d2s_as_transpose_conv: bool = False, calib=None, dataset=None, max_images: int | None = 5,
            crop: tuple | None = None, verify: bool = True, min_target: str | None = None,
            enumerated_shapes: tuple = (), card: dict | None = None, calib_crop: int = 96) -> ConvertResult:
    """Import, convert into a temporary file beside ``output``, verify, then move it into place.

    ``card``: for a model without one, ``footprint.attach_card`` keywords (task, scale, ...)."""

    check_options(to, precision, io, enumerated_shapes, d2s_as_transpose_conv, min_target)
    if to == "onnx" and tile is not None:
        raise ConfigError("--tile fixes the input of TFLite and Core ML output; --to onnx keeps the source's input shape")
    if to == "tflite" and precision in QUANTIZED:
        raise ConfigError(f"--precision {precision} TFLite is calibrated quantisation: use `edge-enhance convert "
                          f"--to tflite --precision {precision} --calib DIR` or quantization.quantize_model")
    if enumerated_shapes and tile is None:
        tile = enumerated_shapes[0]  # the first size is the default one
    src = source_onnx(model)
    if src.suffix.lower() in (".tflite", ".mlpackage", ".mlmodel", ".pb", ".pt", ".pth"):
        raise ConfigError(f"{src}: convert takes an ONNX model (got {src.suffix}); export it to ONNX first")
    out = Path(output) if output else default_output(
        src, src.stem + (f"_{precision}" if to == "onnx" else "") + SUFFIX[to])
    if to == "coreml" and out.suffix != ".mlpackage":
        raise ConfigError(f"{out}: a Core ML mlprogram must be saved as .mlpackage")
    from edge_enhance.imageio import IMAGE_SUFFIXES

    other = {".onnx": "onnx", ".tflite": "tflite", ".mlmodel": "coreml",
             **{e: "an image" for e in IMAGE_SUFFIXES}}.get(out.suffix.lower(), to)
    if other != to:  # a .tflite file called x.onnx (or x.png) would mislead every tool that goes by the name
        raise ConfigError(f"{out}: a {out.suffix} name for --to {to} output (use {SUFFIX[to]})")
    check_output(out, src)
    t0 = time.perf_counter()
    import onnx

    graph = import_onnx(src, tile if to != "onnx" and len(enumerated_shapes) <= 1 else None)
    fixed = fixed_input(graph, src, tile, enumerated_shapes)
    check_d2s_tile(graph, d2s_as_transpose_conv, tile or fixed, src)
    source_model = onnx.load(str(src))
    if card:
        attach_card(graph, src, **card)
        source_model.metadata_props.add(key=CARD_KEY, value=graph.metadata[CARD_KEY])  # for the task PSNR
    else:
        check_card(graph, src)
        if CARD_KEY not in graph.metadata:
            log.warning("%s has no edge-enhance card, so neither will %s: edge-enhance runs it only with --card-task "
                        "(and the rest read off the graph) each time; give it one now with --card-task TASK",
                        src.name, out.name)
    if fixed and CARD_KEY in graph.metadata:  # the runtime reads a fixed input off the card too (Core ML's only there)
        graph.metadata[CARD_KEY] = json.dumps({**json.loads(graph.metadata[CARD_KEY]), "tile": list(fixed)},
                                              sort_keys=True)
    check_aligned(enumerated_shapes, graph.align, f"{src}: --enumerated-shapes")
    check_aligned([tile] if tile else [], graph.align, f"{src}: --tile")
    if CARD_KEY in graph.metadata:  # a fixed input the runtime cannot tile with (it has no room for a core)
        from edge_enhance.card import ModelCard
        from edge_enhance.tiling import min_tile_side

        m = ModelCard.from_json(graph.metadata[CARD_KEY]).margin
        small = [f"{h}x{w}" for h, w in ([tile] if tile else []) + list(enumerated_shapes) if min(h, w) <= 2 * m]
        if small:
            raise ConfigError(f"{src}: input {', '.join(small)} leaves no room inside the model's receptive-field "
                              f"margins of {m} pixels: at least {min_tile_side(m, graph.align)} a side")
    weights = precision if precision in COREML_WEIGHTS else "fp"
    coreml_io = "image" if io == "image" else "tensor"
    if to == "coreml":  # reported before any calibration is spent
        from .coreml_writer import _ct, _tile_of, check_coreml

        _ct()
        min_target = min_target or ("iOS17" if precision == "w8a8" else "iOS16")
        check_coreml(graph, weights=weights, min_target=min_target, io=coreml_io, w8a8=precision == "w8a8")
        tile = _tile_of(graph, tile)
    if precision != "fp32" and CARD_KEY in graph.metadata:
        # The card's PSNR figures were measured on the float network: they move to psnr_fp32, as in a
        # quantize output's card, and the file says how it was made (convert's own check is its report).
        from quantization.report import stamp_card

        stamp_card(graph, None, {"precision": precision, "format": to, "by": "edge-enhance convert"})
    if to == "onnx" and precision == "int8":
        graph = _quantized(graph, src, calib, calib_crop)
    qgraph = _quantized(graph, src, calib, calib_crop) if precision == "w8a8" else None
    tmpdir = Path(tempfile.mkdtemp(prefix=".convert-", dir=out.parent))
    try:
        tmp = tmpdir / out.name
        report = agreement = wbytes = None
        notes = []
        if to == "tflite":
            from .tflite_writer import tflite_ops, to_tflite

            try:
                to_tflite(graph, tmp, precision=precision, io=io, tile=tile, d2s_as_transpose_conv=d2s_as_transpose_conv)
            except UnsupportedOpError as e:  # a property of the model, not of the options: named with its file
                raise UnsupportedOpError(f"{src}: {e}") from None
            names = tflite_ops(tmp)
            notes = tflite_notes(tmp, out)
            if verify:
                from .verify import verify_tflite

                report = verify_tflite(source_model, tmp, precision=precision, dataset=dataset,
                                       max_images=max_images, crop=crop)
        elif to == "onnx":
            from .onnx_writer import to_onnx
            from .verify import source_io

            to_onnx(graph, tmp, precision=precision, layout="nhwc" if source_io(source_model)[0] else "nchw")
            names = [n.op_type for n in onnx.load(str(tmp)).graph.node]
            if verify:
                from .verify import verify_onnx

                report = verify_onnx(source_model, tmp, precision=precision, dataset=dataset,
                                     max_images=max_images, crop=crop)
        else:
            from .coreml_writer import input_range, spec_io, spec_names, to_coreml

            names = to_coreml(qgraph or graph, tmp, precision=precision if precision in ("fp32", "fp16") else "fp16",
                              tile=tile, min_target=min_target, enumerated_shapes=enumerated_shapes,
                              weights=weights, io=coreml_io, w8a8=qgraph is not None)
            notes = coreml_notes(*spec_io(tmp), graph.tensors[graph.inputs[0]].shape[3], spec_names(tmp),
                                 input_range(graph))
            if qgraph is not None or weights != "fp":
                from .coreml_writer import _LAST_PROGRAM, weight_bytes

                wbytes = weight_bytes(_LAST_PROGRAM[str(tmp)])
            if verify:  # compressed weights: no fixed tolerance, the report shows the PSNR cost
                from .coreml_writer import verify_coreml

                kw = dict(dataset=dataset, max_images=max_images, crop=tile or crop)
                report = verify_coreml(graph, tmp, precision=precision, **kw)
                if qgraph is not None:
                    agreement = verify_coreml(qgraph, tmp, precision=precision, simulate_quant=True,
                                              tol=W8A8_AGREEMENT_TOL, **kw)
        seconds = time.perf_counter() - t0
        if out.is_dir():  # an earlier .mlpackage (check_output refused any other folder)
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    counts: dict = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ConvertResult(out, to, precision, seconds, _tree_size(out), counts, report, notes=notes, agreement=agreement,
                         weight_bytes=wbytes)


def import_onnx(src: Path, tile=None):
    """``from_onnx``; where the graph computes sizes from its input's shape and a --tile fixes that input, the
    sizes are folded for the tile (F.interpolate(size=...), pad to a multiple and crop back)."""
    from .onnx_import import from_onnx

    try:
        return from_onnx(src)
    except UnsupportedOpError as e:
        if not (getattr(e, "shape_computed", False) and tile):
            raise
    graph = from_onnx(src, input_hw=tile)
    graph.folded_for = tuple(tile)
    log.info("%s: sizes the graph computes from its input's shape are fixed for the %dx%d input", src, *tile)
    return graph


def check_d2s_tile(graph, d2s_as_transpose_conv: bool, tile, src: Path) -> None:
    """--d2s-as-transpose-conv writes a DepthToSpace as TRANSPOSE_CONV, whose output shape is fixed in the file:
    without a fixed input, said before any calibration is spent."""
    if d2s_as_transpose_conv and not tile and any(n.op == "DepthToSpace" for n in graph.nodes):
        raise ConfigError(f"{src}: --d2s-as-transpose-conv needs a fixed input size (TRANSPOSE_CONV's output shape is "
                          "stored in the file): give --tile HxW, e.g. --tile 256x256")


def calib_crop_for(graph, scale: int, crop: int) -> int:
    """The calibration crop for ``graph``: ``crop``, or the fixed input's side (x scale) where the graph's sizes
    were folded for a tile, so the crops are inputs it can run."""
    if graph.folded_for is None:
        return crop
    h, w = graph.folded_for
    if h != w:
        raise ConfigError(f"sizes fixed for a {h}x{w} tile: calibration takes square crops, so give a square --tile")
    if crop != h * scale:
        log.info("calibration crops of %d px: the model's sizes are fixed for its %dx%d input", h * scale, h, w)
    return h * scale


def fixed_input(graph, src: Path, tile, enumerated_shapes) -> tuple | None:
    """The (h, w) the model's own graph fixes its input at, or None. Another --tile / --enumerated-shapes size is
    refused: the source cannot run at it, so nothing could be verified, and sizes the export baked in may not hold."""
    _, h, w, _ = graph.tensors[graph.inputs[0]].shape
    if h is None or w is None:
        return None
    if any(tuple(s) != (h, w) for s in ([tile] if tile else []) + list(enumerated_shapes)):
        opt = "--enumerated-shapes" if enumerated_shapes else "--tile"
        raise ConfigError(f"{src}: input fixed at {h}x{w} by the model; {opt} must be {h}x{w} or left out")
    return h, w


def tflite_notes(path: Path, shown: Path | None = None) -> list:
    """Summary lines for a written .tflite: its input and output as an app fills and reads them
    (LiteRTBackend.describe_io); an integer output that is not the pixel value itself is warned of too."""
    from edge_enhance.backends.litert import io_lines

    lines = [f"TFLite {line}" for line in io_lines(path) or ()]
    if not lines:  # no engine here: the file is still written
        return []
    if "not the pixel value" in lines[1]:
        log.warning("%s: the integer output is not on the pixel grid (%s); an app must convert it, or give the "
                    "model a final Clip to its input range", (shown or path).name, lines[1].split(": ", 1)[1])
    return lines


def coreml_notes(io: str, sizes: list, channels: int, names: tuple = ("", ""), span: tuple = (0.0, 1.0)) -> list:
    """Summary lines for a written Core ML model, from its spec: I/O names and types, input sizes.
    ``span``: the network's input range (its card's), what tensors carry and image pixels are mapped to."""
    colour = "RGB" if channels == 3 else "grayscale"
    lo, hi = (f"{v:g}" for v in span)
    named = f" '{names[0]}' in, '{names[1]}' out" if all(names) else ""
    lines = [f"Core ML I/O{named}: image in ({colour} pixels 0..255, mapped to {lo}..{hi} inside), image out "
             f"({colour} 0..255)" if io == "image" else f"Core ML I/O{named}: float32 tensors (NCHW, values {lo}..{hi})"]
    shapes = ", ".join(f"{h}x{w}" + (" (default)" if k == 0 and len(sizes) > 1 else "")
                       for k, (h, w) in enumerate(sizes))
    lines.append(f"input sizes: {shapes}" + (" (enumerated)" if len(sizes) > 1 else " (fixed)"))
    return lines


def _quantized(graph, src: Path, calib, crop: int = 96):
    """Calibrate on ``calib`` (default: the shared training images) and quantise (int8 QDQ, W8A8)."""
    from edge_enhance.card import ModelCard

    from quantization.calibration import CalibConfig, calibration_for
    from quantization.quantize import quantize_model

    if CARD_KEY not in graph.metadata:
        raise ConfigError(f"{src}: int8 needs the model card (task, scale) to calibrate; the model has none "
                          "(pass --card-task sr|denoise|dejpeg|enhance)")
    card = ModelCard.from_json(graph.metadata[CARD_KEY])
    cs = calibration_for(card, calib, CalibConfig(crop=calib_crop_for(graph, card.scale, crop)))
    res = quantize_model(graph, cs, sensitivity=False)
    log.info("int8 calibration on %s: PSNR %.2f dB float, %.2f dB int8", cs.source, res.report.float_psnr,
             res.report.quant_psnr)
    return res.graph


def op_summary(result: ConvertResult) -> str:
    from .tflite_writer import DELEGATE_FRIENDLY

    lines = [f"ops in {result.output.name}:"]
    for op, k in sorted(result.ops.items(), key=lambda kv: (-kv[1], kv[0])):
        if result.target == "tflite":
            tag = "delegate-friendly" if op in DELEGATE_FRIENDLY else "CPU only on most delegates"
        else:
            tag = ""
        lines.append(f"  {op:<28}{k:>4}  {tag}".rstrip())
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="source .onnx model, or a bundled model's name (sr-x2: its fp32 .onnx)")
    parser.add_argument("--to", required=True, choices=TARGETS, help="target format")
    parser.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="fp32 (default) / fp16; int8 = calibrated full-integer TFLite, int8 QDQ ONNX, or int8 "
                             "weights in Core ML; int16x8 = TFLite with int16 activations and int8 weights in Conv, "
                             "ConvTranspose, Add and Mul (the rest, activations such as PReLU / Tanh / Sigmoid and "
                             "Concat included, stays int8: a net whose error comes from those gains nothing); w8a8 = Core ML int8 weights + activations "
                             "calibrated with --calib (iOS17 quantize/dequantize); palette4/6/8 = Core ML n-bit "
                             "k-means weights; sparse50/75/90 = Core ML weights NN%% magnitude-pruned, stored as "
                             "bitmask + non-zero values. Every Core ML precision combines with --enumerated-shapes "
                             "and --io image")
    parser.add_argument("--calib", type=Path, help="calibration image folder for int8 / int16x8 / w8a8 (default: "
                                                   "the seeded crops of shared/data/train `edge-enhance quantize` uses)")
    parser.add_argument("--tile", metavar="HxW", help="fixed input size HxW, e.g. 256x256 (default: dynamic where possible; "
                                         "Core ML: the card's tile, or the first --enumerated-shapes size)")
    parser.add_argument("--enumerated-shapes", metavar="HxW,HxW", help="Core ML: input sizes the model accepts, "
                        "e.g. 256x256,512x512 (--tile, else the first, is the default); any Core ML --precision, "
                        "verified at every size")
    parser.add_argument("--io", default="float", choices=("float", "uint8", "int8", "image"),
                        help="model I/O: float tensors (default); uint8 / int8 for int8 TFLite; image for Core ML "
                             "(RGB / grayscale pixels in and out, iOS16+; iOS17+ with w8a8), any Core ML --precision")
    from .coreml_writer import TARGETS as COREML_TARGETS

    parser.add_argument("--min-target", choices=COREML_TARGETS, metavar="TARGET",
                        help="Core ML: the oldest OS the model runs on, one of " + ", ".join(COREML_TARGETS) +
                             " (default iOS16; iOS17 with w8a8); iOS15 / macOS12 take fp32 / fp16 weights and tensor I/O")
    parser.add_argument("--d2s-as-transpose-conv", action="store_true",
                        help="express DEPTH_TO_SPACE as an exact TRANSPOSE_CONV (for delegates lacking it)")
    parser.add_argument("--calib-crop", type=number(int, 8), default=96,
                        help="side of a calibration crop (default 96; smaller for a folder of small images)")
    parser.add_argument("--dataset", type=Path,
                        help="verification images (default: eval/Set5 of the shared data, $EDGE_ENHANCE_DATA or the "
                             "nearest shared/data above the code or the working folder; without one, the bundled "
                             "sample photo)")
    parser.add_argument("--verify-images", type=number(int, 1), help="how many images to verify on (default 5; int8 / "
                        "int16x8 TFLite, made by `quantize`, is evaluated on the whole --dataset)")
    parser.add_argument("--no-verify", action="store_true",
                        help="write the file without running it against the source on images: for a machine with no "
                             "engine of the target (no LiteRT on Windows on ARM), or a quick try; check it later with "
                             "`edge-enhance eval` (int8 / int16x8 TFLite: the before / after evaluation is skipped)")
    parser.add_argument("-o", "--output", type=Path, help="output path")
    parser.add_argument("--json", action="store_true", help="print the result (or the error) as JSON on stdout")
    add_card_arguments(parser)


def _quantize_instead(args: argparse.Namespace) -> int:
    """--to tflite --precision int8 / int16x8 is calibrated quantisation: the quantize command does
    it (and verifies the file against the float model on real images)."""
    from quantization import cli as qcli

    p = argparse.ArgumentParser(prog="edge-enhance convert")
    qcli.add_arguments(p)
    argv = [str(args.model), "--io", args.io, "--precision", args.precision]
    if args.calib:
        argv += ["--calib", str(args.calib)]
    argv += ["--calib-crop", str(args.calib_crop)]
    if args.output:
        argv += ["-o", str(args.output)]
    if args.dataset:
        argv += ["--eval", str(args.dataset)]
    if args.no_verify:
        argv += ["--no-eval"]
    if args.verify_images is not None:
        log.warning("--verify-images does not apply to --precision %s TFLite: `quantize` makes it and evaluates it on "
                    "the whole %s", args.precision, args.dataset or "quick set (Set5, CBSD68 for denoise / dejpeg)")
    if args.tile:
        argv += ["--tile", args.tile]
    if args.d2s_as_transpose_conv:
        argv += ["--d2s-as-transpose-conv"]
    if args.json:
        argv += ["--json"]
    for k, v in (card_options(args) or {}).items():
        argv += ["--card-" + k.replace("_", "-"), ",".join(map(str, v)) if isinstance(v, tuple) else str(v)]
    return qcli.main(p.parse_args(argv))


def report_dict(rep) -> dict:
    """A VerifyReport as JSON: per image and overall (max |error|, PSNR between the two, task PSNR)."""
    keys = ("max_abs_err", "psnr_between", "task_psnr_source", "task_psnr_target")
    return {"target": rep.target, "precision": rep.precision, "against": rep.source,
            "images": [{"image": r.image, **{k: getattr(r, k) for k in keys}} for r in rep.images],
            **{k: getattr(rep, k) for k in keys}}


def result_dict(res: ConvertResult, src: Path) -> dict:
    d = {"model": str(src), "output": str(res.output), "target": res.target, "precision": res.precision,
         "size_bytes": res.size_bytes, "seconds": round(res.seconds, 3), "ops": res.ops,
         "verification": report_dict(res.report) if res.report is not None else None,
         "notes": res.notes}
    if res.agreement is not None:
        d["agreement"] = report_dict(res.agreement)
    if res.weight_bytes:
        d["weight_bytes"] = {"dense": res.weight_bytes[0], "stored": res.weight_bytes[1]}
    return d


def main(args: argparse.Namespace) -> int:
    def fail(msg: str, rc: int, lead: str = "") -> int:
        print(f"edge-enhance convert: {lead}{msg}", file=sys.stderr)
        if args.json:  # a script reading stdout gets an answer, not an empty stream
            print(strict_json({"error": msg, "exit": rc}, indent=1))
        return rc

    try:
        tile = parse_tile(args.tile) if args.tile else None
        shapes = parse_shapes(args.enumerated_shapes) if args.enumerated_shapes else ()
        check_options(args.to, args.precision, args.io, shapes, args.d2s_as_transpose_conv, args.min_target)
        if args.no_verify and (args.verify_images is not None or args.dataset):
            raise ConfigError("--no-verify runs no images: leave out --verify-images / --dataset, or --no-verify")
        if args.to == "tflite" and args.precision in QUANTIZED:
            return _quantize_instead(args)
        res = convert(args.model, args.to, output=args.output, precision=args.precision, io=args.io, tile=tile,
                      d2s_as_transpose_conv=args.d2s_as_transpose_conv, calib=args.calib, calib_crop=args.calib_crop,
                      dataset=args.dataset,
                      max_images=args.verify_images or 5, enumerated_shapes=shapes, card=card_options(args),
                      min_target=args.min_target, verify=not args.no_verify)
    except ConfigError as e:
        return fail(str(e), 2, "error: ")
    except VerificationError as e:
        return fail(f"verification failed, nothing written: {e}", 1)
    except EdgeEnhanceError as e:
        return fail(str(e), 1)
    if args.json:
        print(strict_json(result_dict(res, Path(args.model)), indent=1))
        return 0
    for rep in (res.report, res.agreement):
        if rep is not None:
            print(rep.table())
    if res.report is None:
        print("not verified (--no-verify): `edge-enhance eval FILE --dataset DIR` measures it")
    print(op_summary(res))
    for line in res.notes:
        print(line)
    if res.weight_bytes:
        dense, stored = res.weight_bytes
        print(f"conv weights: {dense / 1024:.1f} KiB dense -> {stored / 1024:.1f} KiB stored "
              f"({100 * (1 - stored / dense):.0f}% saved)")
    print(f"wrote {res.output} ({res.size_bytes / 1024:.1f} KiB) in {res.seconds:.2f} s")
    return 0


if __name__ == "__main__":  # python -m conversion.cli (the lead wires `edge-enhance convert`)
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    p = argparse.ArgumentParser(prog="edge-enhance convert")
    add_arguments(p)
    sys.exit(main(p.parse_args()))
