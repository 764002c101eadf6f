"""`edge-enhance`: the command line. It owns the terminal; the library only logs.

Heavy parts (conversion, quantisation, camera, benchmarks) are imported only by their sub-commands,
so `edge-enhance photo.jpg` starts fast on a Pi.
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import glob
import itertools
import json
import logging
import os
import re
import shutil
import signal
import sys
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .argtypes import number
from .card import add_card_arguments as card_arguments
from .card import strict_json
from .errors import ConfigError, EdgeEnhanceError, ImageInputError, ModelFormatError, NothingToDo, OutputError

log = logging.getLogger("edge_enhance")

COMMANDS = ("enhance", "info", "models", "eval", "convert", "quantize", "prune", "preview", "bench")
TOP_LEVEL_OPTION = re.compile(r"-h|--help|--version|--verbose|-v+")

EXIT_CODES = ("Exit codes: 0 done; 1 a file, model or engine failed (a batch goes on with the next file and "
              "ends 1); 2 bad options or settings, nothing run; 130 interrupted (Ctrl-C, SIGTERM, SIGHUP); 129 the "
              "terminal hung up; 141 the reader of stdout left (a pipe closed).")

NAMING_RULE = """\
Output names: with one input file, -o names the output file (or an existing folder to write into).
Otherwise -o is a folder (created if needed) and inputs keep their names there, folders mirrored
(a/b/x.jpg -> OUT/b/x.jpg for input folder a). Without -o, the output goes beside the input as
STEM.MODEL.EXT (photo.jpg -> photo.sr-x2.jpg; for a mode or a chain STEM.MODE-xN.EXT, photo.auto-x2.jpg).
--format changes only the extension (photo.png), never appends one (no photo.jpg.png); a JPEG named
.heic comes out as .jpg. An input is never overwritten unless --overwrite is given."""


def _one_line(text: str) -> str:
    """A name's newline shown as \\n: one printed line per file, whatever its name holds (a name with
    newlines printed lines of its own: a forged summary)."""
    return text.replace("\n", "\\n")


def _unescaped(stream):
    """Where the CLI's own cursor control goes: the stream beneath :class:`_Shown`, which escapes it."""
    return getattr(stream, "unescaped", stream)


def _cells(text: str) -> int:
    """Terminal columns ``text`` takes: East Asian wide characters two, combining marks none."""
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def ljust_cells(text: str, width: int) -> str:
    """``text`` padded to ``width`` terminal columns (str.ljust counts a wide character as one)."""
    return text + " " * max(0, width - _cells(text))


class Progress:
    """One status line on stderr: [N/M] name  tiles 37%  ETA 0:12. A terminal without cursor control
    (TERM=dumb: an editor's shell, a CI log viewer; Windows' console, which shows ESC [K as ←[K, unless it
    is Windows Terminal) gets no escape codes: the line is padded over. A stderr that is not a terminal (a
    log file, `ssh pi edge-enhance ... 2>log`, a systemd journal) gets the same line as a line of its own
    every ``LOG_EVERY`` seconds: a 12 MP x4 on a Pi, or an eval of BSD100, is minutes with no other word."""

    LOG_EVERY = 30.0

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.plain = os.environ.get("TERM") == "dumb" or (os.name == "nt" and "WT_SESSION" not in os.environ)
        self.start, self.first = time.monotonic(), None
        self.done_files = 0
        self.name = ""
        self._width = 0  # of the line drawn last
        self._logged = self.start  # when the last log line was (or the run began)

    def file(self, index: int, name: str):
        if self.first is None:  # the rate is this run's: files skipped before it (a resume) took no time
            self.start, self.first = time.monotonic(), index
        self.done_files, self.name = index, _one_line(name)
        self._draw(0.0)

    def tiles(self, done: int, total: int):
        self._draw(done / total)

    def _draw(self, frac: float):
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and (frac >= 1 or now - self._logged < self.LOG_EVERY):
            return
        done = self.done_files - (self.first or 0) + frac  # files' worth of work this run
        left = self.total - self.done_files - frac
        eta = (now - self.start) / done * left if done > 0 else None
        head = f"[{self.done_files + 1}/{self.total}] "
        tail = f"  {frac:4.0%}  ETA {'-:--' if eta is None else f'{int(eta) // 60}:{int(eta) % 60:02d}'}"
        if frac >= 1:  # the last tile is done: encoding a large file can take longer than enhancing it
            tail = "  saving"
        name = shown(self.name)
        if not self.tty:
            self._logged = now
            _unescaped(sys.stderr).write(f"{head}{name}{tail}\n")
            sys.stderr.flush()
            return
        # One terminal row: a line that wraps leaves a row behind at every redraw (CR goes back one row).
        room = shutil.get_terminal_size().columns - 1 - _cells(head + tail)
        if _cells(name) > room:
            while name and _cells(name) > room - 1:
                name = name[1:]
            name = "…" + name
        self._write(head + name + tail)
        sys.stderr.flush()

    def _write(self, line: str):
        """``line`` (its name already :func:`shown`) over the one before, with our own CR and erase."""
        width = _cells(line)
        _unescaped(sys.stderr).write(f"\r{line}{' ' * (self._width - width)}" if self.plain else f"\r\033[K{line}")
        self._width = width

    def clear(self):
        if self.enabled and self.tty:
            self._write("")
            if self.plain:
                _unescaped(sys.stderr).write("\r")


@dataclass
class Job:
    src: Path
    dst: Path
    status: str = "pending"
    error: str | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


_positive_int = number(int, lo=1)
_strength = number(float, 0, 1.5)


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    k, v = text.split("=", 1)
    return k, v


def add_model_arguments(p: argparse.ArgumentParser, default: str | None = "sr-x2", *, option: bool = True) -> None:
    """``option``: a --model option (eval names its MODEL positionally instead)."""
    g = p.add_argument_group("model and engine")
    if option:
        g.add_argument("--model", "-m", default=default, help="bundled model name or a .tflite / .onnx / .mlpackage "
                                                             "path (default: %s)" % (default or "by --mode"))
    g.add_argument("--engine", choices=("litert", "onnxruntime", "coreml"), help="force an engine (default: from the file)")
    g.add_argument("--threads", type=_positive_int, help="CPU threads for the engine")
    g.add_argument("--delegate", help="TFLite external delegate library (Edge TPU, VX NPU, Arm NN)")
    g.add_argument("--delegate-option", action="append", type=_key_value, default=[], metavar="K=V")
    g.add_argument("--fallback", choices=("none", "cpu"), default="none", help="what to do if the delegate cannot load")
    g.add_argument("--providers", help="ONNX Runtime execution providers, comma-separated, in order")
    add_card_arguments(p)


def add_card_arguments(p) -> None:
    card_arguments(p, "for models without an embedded card (an .onnx model's scale, receptive field and align "
                      "are read off its graph when the convert extra is installed)")


CARD_FIELDS = ("scale", "receptive_field", "align")


def _graph_footprint(path: Path) -> tuple[dict | None, str | None]:
    """Scale, receptive field, align and colour of a card-less NCHW .onnx model read off its graph, or
    (None, why not): the convert extra is missing, the file is not ONNX or the converter cannot read the graph."""
    from .backends import sniff_format

    try:
        from conversion.footprint import footprint
        from conversion.onnx_import import from_onnx
    except ImportError:
        return None, "the convert extra is not installed: pip install 'edge-enhance[convert]'"
    if sniff_format(path) != "onnxruntime":
        return None, "only an .onnx model's graph is read"
    try:
        fp = footprint(from_onnx(path))
    except EdgeEnhanceError as e:
        return None, str(e).removeprefix(f"{path}: ")
    except ModuleNotFoundError as e:  # conversion/ ships with the runtime; onnx (imported lazily) may not
        return None, _missing_extra(e) or f"{e.name} is not installed"
    return {k: getattr(fp, k) for k in (*CARD_FIELDS, "colour")}, None


# Optional packages imported lazily by a command -> the extra that installs them (pyproject.toml).
EXTRA_OF = {"onnx": "convert", "flatbuffers": "convert", "tflite": "convert", "coremltools": "coreml",
            "onnxruntime": "onnx", "ai_edge_litert": "litert", "cv2": "camera", "matplotlib": "bench",
            "bm3d": "bench", "png": "io16", "tifffile": "io16", "torch": "train"}


def _missing_extra(e: ModuleNotFoundError) -> str | None:
    """'onnx is not installed: pip install 'edge-enhance[convert]'' for a package an extra provides."""
    extra = EXTRA_OF.get((e.name or "").split(".")[0])
    return f"{e.name} is not installed: pip install 'edge-enhance[{extra}]'" if extra else None


def cli_card(args, model: str | None):
    """The card given with --card-*, the rest read off an ONNX graph; None when no --card-* was given."""
    from .backends import read_card
    from .card import ModelCard
    from .models import resolve

    given = {k: getattr(args, "card_" + k) for k in ("task", "scale", "receptive_field", "align")}
    if all(v is None for v in given.values()) and not (args.card_layout or args.card_input_range):
        return None
    if given["task"] is None:
        raise ConfigError("a model without a card needs --card-task sr|denoise|dejpeg|enhance")
    path = resolve(model or args.model)
    why = "--card-layout nhwc: only NCHW graphs are read"
    if None in given.values():  # the rest from the model's own card, else from its graph
        own = read_card(path)
        known, why = ({k: getattr(own, k) for k in CARD_FIELDS}, None) if own else \
            (_graph_footprint(path) if args.card_layout != "nhwc" else (None, why))
        if known is not None:
            given = {k: given[k] or known.get(k) for k in given}
    if given["scale"] is None or given["receptive_field"] is None:
        raise ConfigError(f"{path}: a model without a card needs --card-scale and --card-receptive-field too; they "
                          f"could not be read off its graph ({why})")
    return ModelCard(name=path.stem, task=given["task"], scale=given["scale"], receptive_field=given["receptive_field"],
                     layout=args.card_layout or "nchw", base="nearest" if given["scale"] > 1 else "identity",
                     align=given["align"] or 1, input_range=args.card_input_range or (0.0, 1.0))


def build_enhancer(args, *, tiling=None, strength: float = 1.0, model: str | None = None):
    from .backends import EngineOptions
    from .enhancer import Enhancer
    from .tiling import TilingConfig

    options = EngineOptions(
        threads=args.threads, delegate=args.delegate, delegate_options=tuple(args.delegate_option),
        fallback_cpu=args.fallback == "cpu",
        providers=tuple(p for p in (args.providers or "").split(",") if p),
    )
    return Enhancer(model or args.model, engine=args.engine, options=options, tiling=tiling or TilingConfig(),
                    strength=strength, card=cli_card(args, model), tta=getattr(args, "tta", False))


# -- enhance --------------------------------------------------------------------------------------
# The name tags of bundled models' and modes' outputs (STEM.sr-x2.jpg, STEM.auto-x2.png, STEM.denoise.png).
OUTPUT_TAG = re.compile(r"(sr|enhance|auto|photo|upscale|denoise|dejpeg)(-x\d+)?(-rt)?")


def _folder_files(root: Path, recursive: bool, skip: Path | None) -> list[Path]:
    """A folder's files, with -r its subfolders' too (symlinked ones followed, each real folder once),
    hidden names and the output folder ``skip`` (when it lies inside) left out."""
    files, seen = [], set()
    for d, dirs, names in os.walk(root, followlinks=True):
        real = Path(os.path.realpath(d))
        if real in seen or (skip is not None and real == skip and d != str(root)):
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [x for x in dirs if not x.startswith(".")] if recursive else []
        files += [Path(d) / n for n in names if not n.startswith(".") and _file_or_dangling(Path(d) / n)]
    return sorted(files)


def _file_or_dangling(p: Path) -> bool:
    """A file, or a link to one that is gone: a hole in a linked sequence is reported, not passed over."""
    return p.is_file() or (p.is_symlink() and not p.exists())


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _glob_base(pattern: str) -> Path:
    """The folder a pattern starts from: its leading parts without a wildcard ("a/b/**/*.png" -> a/b)."""
    parts = itertools.takewhile(lambda part: not glob.has_magic(part), Path(pattern).parent.parts)
    return Path(*parts)


def _expand_inputs(inputs: list[str], recursive: bool, out: Path | None = None
                   ) -> tuple[list[tuple[Path, Path | None]], list[Path], list[str]]:
    """[(file, root folder it was found under or None)] in a stable order, the videos found in folders (a
    folder gives its photos: videos take minutes each; named one by one, they run) and the patterns that
    matched nothing. ``out``: the output folder, whose files are never inputs (a resumed run into a
    folder inside the input tree would enhance its own outputs again)."""
    from .imageio import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    found: list[tuple[Path, Path | None]] = []
    videos: list[Path] = []
    unmatched: list[str] = []
    skip = Path(os.path.realpath(out)) if out is not None else None
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = _folder_files(p, recursive, skip)
            found += [(f, p) for f in files if f.suffix.lower() in IMAGE_SUFFIXES]
            videos += [f for f in files if f.suffix.lower() in VIDEO_SUFFIXES]
        elif p.exists() or not glob.has_magic(item):
            found.append((p, None))  # a missing file is reported as that file's failure
        else:
            matches = sorted(glob.glob(item, recursive=recursive))
            if not matches:
                unmatched.append(item)  # as a missing file: that item's failure, the batch goes on
            # The output folder's files are left out here too, unless the pattern itself starts in there.
            every = skip is None or _inside(Path(os.path.realpath(_glob_base(item))), skip)
            found += [(Path(m), None) for m in matches if _file_or_dangling(Path(m)) and
                      (every or not _inside(Path(os.path.realpath(Path(m).parent)), skip))]
    unique: dict[Path, tuple[Path, Path | None]] = {}
    for f, root in found:  # the same file given twice (a file and its folder, overlapping globs) runs once
        unique.setdefault(f.resolve(), (f, root))
    return list(unique.values()), videos, unmatched


def names_folder(out: str) -> bool:
    """Whether ``-o out`` names a folder: an existing one, or a name ending in a separator (results/, and
    on Windows results\\ too)."""
    return Path(out).is_dir() or out.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep))


def plan_outputs(inputs: list[tuple[Path, Path | None]], out: str | None, fmt: str | None,
                 model_name: str, single: bool) -> list[Job]:
    """``single``: one input file was named, so -o names the output file."""
    from .imageio import IMAGE_SUFFIXES, VIDEO_SUFFIXES, content_suffix

    def ext_for(p: Path) -> str:
        if p.suffix.lower() in VIDEO_SUFFIXES:  # a container OpenCV cannot write (.webm) becomes .mkv
            from .camera.sinks import FOURCC

            return p.suffix if p.suffix.lower() in FOURCC else ".mkv"
        if fmt:
            return "." + fmt.lower().replace("jpeg", "jpg")
        if p.suffix.lower() in (".heic", ".heif") or p.suffix.lower() not in IMAGE_SUFFIXES:
            # .heic: often a JPEG under that name (Pillow writes no HEIC); no or another extension
            # (a camera's IMG_0001): the suffix of what it holds
            return content_suffix(p) or p.suffix
        return p.suffix

    jobs: list[Job] = []
    if out is None:  # outputs go beside the inputs: a run over a folder must not take in its own earlier outputs
        stems = {(src.parent, src.stem) for src, _ in inputs}
        own = set()  # a set: 8000 frames were 22 s of list look-ups before the first one ran
        for src, root in inputs:  # STEM.TAG.EXT beside STEM.EXT: this model's, or in a folder any bundled one's
            stem, _, tag = src.stem.rpartition(".")
            beside = (src.parent, stem) in stems or (src.parent / stem).is_file()  # IMG_0001's, no extension
            if stem and beside and (tag == model_name or root is not None and OUTPUT_TAG.fullmatch(tag)):
                own.add(src)
                log.info("%s: left out, an output of an earlier run (%s)", src, tag)
        inputs = [(src, root) for src, root in inputs if src not in own]
    for src, root in inputs:
        if out is None:
            dst = src.with_name(f"{src.stem}.{model_name}{ext_for(src)}")
        elif single and not names_folder(out):
            dst = Path(out)
        else:
            rel = src.relative_to(root).parent if root else Path()
            dst = Path(out) / rel / (src.stem + ext_for(src))
        jobs.append(Job(src, dst))

    def key(p: Path) -> tuple:  # Photo.png and photo.png are one file on macOS's and Windows' disks
        p = p.resolve()
        return p.parent, p.name.casefold()

    seen: dict[tuple, Path] = {}
    sources = {key(src): src for src, _ in inputs}
    for job in jobs:
        k = key(job.dst)
        other = sources.get(k)
        if other is not None and k != key(job.src):  # checked before anything is written
            job.status, job.error = "failed", (f"{job.src}: its output {job.dst} would overwrite {other}, another "
                                               "input of this run (give another -o folder)")
        elif k in seen:
            job.status, job.error = "failed", f"output {job.dst} would collide with the output of {seen[k]}"
        else:
            seen[k] = job.src
    return jobs


def _build_processor(args, tiling):
    """A single Enhancer for --model, else the Pipeline for --mode / --scale. Returns it and its name."""
    if args.model:
        if args.mode not in (None, "upscale") or args.scale not in (None,):
            raise ConfigError("--mode / --scale choose bundled models; leave them out when giving --model")
        enh = build_enhancer(args, tiling=tiling, strength=args.strength)
        return enh, Path(args.model).name.split(".")[0]
    from .pipeline import Pipeline

    mode = args.mode or "upscale"
    scale = args.scale or (1 if mode in ("denoise", "dejpeg") else 2)
    pipe = Pipeline(mode, scale, strength=args.strength, check=not args.no_check,
                    make_enhancer=lambda name: build_enhancer(args, tiling=tiling, model=name))  # strength: per call
    name = {"upscale": f"sr-x{scale}", "auto": f"auto-x{scale}"}.get(mode, mode if scale == 1 else f"{mode}-x{scale}")
    return pipe, name


def cmd_enhance(args) -> int:
    from PIL import Image

    from . import imageio
    from .tiling import TilingConfig, parse_tile

    tiling = TilingConfig(tile=parse_tile(args.tile), memory_mb=args.memory)
    inputs, videos, unmatched = _expand_inputs(args.inputs, args.recursive,
                                               Path(args.output) if args.output else None)
    if videos:
        names = ", ".join(str(v) for v in videos[:3]) + (f" and {len(videos) - 3} more" if len(videos) > 3 else "")
        log.warning("%d video(s) in the folder(s) left out (name a video to enhance it): %s", len(videos), names)
    if not inputs:
        raise ConfigError(f"{unmatched[0]}: no files match" if unmatched and len(unmatched) == len(args.inputs) else
                          "no input images found" + (" (only videos: name them to enhance them)" if videos else ""))
    single = len(args.inputs) == 1 and len(inputs) == 1 and inputs[0][1] is None  # -o names a file
    if args.format:
        wanted = imageio.format_for(Path("out"), args.format)  # an unknown --format fails once, before the model loads
        named = Path(args.output) if args.output and single else None
        if named and named.suffix.lower() in Image.registered_extensions() and not named.is_dir() \
                and imageio.format_for(named) != wanted:
            raise ConfigError(f"-o {named}: the name says {imageio.format_for(named)}, --format says {wanted}; "
                              "give one or make them agree")
    elif single and args.output and inputs[0][0].suffix.lower() not in imageio.VIDEO_SUFFIXES \
            and not names_folder(args.output):
        try:  # an -o name of no photo format fails once, before the model loads
            imageio.format_for(Path(args.output))
        except ConfigError as e:
            try:  # what the input holds (a JPEG named .heic), read off its header
                with Image.open(inputs[0][0]) as im:
                    held = im.format
            except Exception:
                held = None
            ext = {"JPEG": "jpg", "TIFF": "tif"}.get(held, str(held).lower()) if held in imageio.WRITE_FORMATS else "png"
            known = Path(args.output).suffix.lower() in Image.registered_extensions()  # a PDF: --format cannot help
            raise ConfigError(f"{e}" + (f" (the input is a {held} file)" if ext != "png" or held == "PNG" else "")
                              + f": name it .{ext}" + ("" if known else f" or add --format {ext}")) from None
    out = Path(args.output) if args.output and not single else None
    if out and not out.is_dir() and (out.exists() or out.suffix.lower() in imageio.IMAGE_SUFFIXES):
        what = "an existing file" if out.exists() else "an image file name"
        raise ConfigError(f"-o {out}: a folder or several inputs need an output folder, and this is {what}")
    enhancer, name = _build_processor(args, tiling)
    jobs = [Job(Path(u), Path(u), "failed", f"{u}: no files match") for u in unmatched]
    jobs += plan_outputs(inputs, args.output, args.format, name, single)
    if args.temporal and not any(j.src.suffix.lower() in imageio.VIDEO_SUFFIXES for j in jobs):
        log.warning("--temporal smooths video frames over time; the inputs are stills, so it does nothing")
    if out:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{out}: cannot create the output folder ({e.strerror or e})") from None
    progress = Progress(len(jobs), enabled=not args.quiet)  # on stderr: --json's stdout stays the summary alone
    stop = StopRequest()

    def on_tile(done: int, total: int) -> None:
        progress.tiles(done, total)
        stop.check()  # between tiles only: never in the middle of writing a file

    t_start = time.monotonic()
    interrupted = False
    for i, job in enumerate(jobs):
        if stop.requested:
            interrupted = True
            break
        if job.status == "failed":
            continue
        if args.skip_existing and job.dst.exists():
            job.status = "skipped"
            continue
        progress.file(i, job.src.name)
        t0 = time.monotonic()
        try:
            try:
                job.dst.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise OutputError(f"{job.src}: cannot create the output folder {job.dst.parent} "
                                  f"({e.strerror or e})") from None
            if job.src.suffix.lower() in imageio.VIDEO_SUFFIXES:
                from .camera.video import enhance_video

                r = enhance_video(job.src, job.dst, enhancer, temporal=args.temporal, overwrite=args.overwrite,
                                  max_pixels=args.max_pixels,
                                  progress=lambda *, done, total, fps, eta_s: on_tile(done, total or done + 1))
                job.extra = {"frames": r.frames, "fps": round(r.fps, 3), "size": list(r.size), "audio": r.audio,
                             "warnings": list(r.warnings)}
            else:
                enhancer.enhance_file(job.src, job.dst, fmt=args.format, quality=args.quality,
                                      strip_metadata=args.strip_metadata, dpi_mode=args.dpi,
                                      max_pixels=args.max_pixels, overwrite=args.overwrite,
                                      progress=on_tile)
            job.status = "ok"
            if enhancer.last_run and "frames" not in job.extra:
                job.extra = {"tile": list(enhancer.last_run.tile), "tiles": enhancer.last_run.tiles,
                             "passes": enhancer.last_run.passes}
            job.extra.update(stages=list(getattr(enhancer, "last_stages", None) or [name]), strength=args.strength,
                             tta=args.tta)
            job.extra.update(_auto_fields(enhancer))
        except NothingToDo:
            job.status, job.extra = "skipped", {"reason": "nothing to do", **_auto_fields(enhancer)}
        except EdgeEnhanceError as e:
            job.status, job.error = "failed", str(e)
        except KeyboardInterrupt:
            job.status, job.error = "interrupted", "stopped by the user; no output written"
            interrupted = True
        except MemoryError:
            job.status, job.error = "failed", f"{job.src}: out of memory (try a smaller --memory or --tile)"
        job.seconds = time.monotonic() - t0
        progress.clear()
        if not args.json and not args.quiet:
            if job.status == "ok":  # one line per file, whatever its name holds
                line = _one_line(f"{job.src} -> {job.dst}{_auto_note(job.extra)}")
            elif job.status == "skipped":  # auto found nothing to do
                line = _one_line(f"{job.src}: left as it is, nothing written{_auto_note(job.extra)}")
            else:
                line = f"{'INTERRUPTED' if job.status == 'interrupted' else 'FAILED'} {_named(job)}"
            print(line, file=sys.stdout if job.status in ("ok", "skipped") else sys.stderr)
        if interrupted:
            break
    stop.restore()
    return _summarise(jobs, time.monotonic() - t_start, args, interrupted or stop.requested)


def stop_signals() -> list:
    """The signals that stop a command as Ctrl-C does: SIGINT, SIGTERM and, where it exists, SIGHUP (the SSH
    session or terminal closing), unless it is ignored, as `nohup` asks."""
    hup = getattr(signal, "SIGHUP", None)  # not on Windows
    ignored = hup is None or signal.getsignal(hup) is signal.SIG_IGN
    return [signal.SIGINT, signal.SIGTERM] + ([] if ignored else [hup])


class StopRequest:
    """Ctrl-C / SIGTERM / SIGHUP during a batch: the first one is honoured at the next safe point (between
    tiles, between files), so a file being encoded or renamed is never cut; a second one stops at once.
    ``check`` raises ``at_safe_point`` there (training tells it from the second signal's KeyboardInterrupt).
    Handlers are installed only where signals arrive, the main thread."""

    at_safe_point: type = KeyboardInterrupt

    def __init__(self):
        self.requested, self._old = False, {}
        if threading.current_thread() is threading.main_thread():
            self._old = {sig: signal.signal(sig, self._handle) for sig in stop_signals()}

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.on_first()

    def on_first(self) -> None:
        """Called on the first signal: says what happens next."""
        log.warning("stopping: a file being saved is finished first, one being enhanced is left unwritten (again to "
                    "stop at once)")

    def check(self) -> None:
        if self.requested:
            raise self.at_safe_point

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _auto_note(extra: dict) -> str:
    """What --mode auto found and did, for the file's line: ' (auto: noise sigma 24.6, blockiness
    0.97, luma noise 1.2 after denoise; denoise + sr-x2; back-projection 57.9 dB)'; for another mode its chain
    when it has more than one model (' (sr-x4 + sr-x2)'), else ''."""
    if "noise_sigma" not in extra:  # not auto: name the chain where it is more than the output's name says
        stages = extra.get("stages") or []
        return f" ({' + '.join(stages)})" if len(stages) > 1 else ""
    q, layout = extra["jpeg_quality"], extra.get("jpeg_subsampling")  # the layout: what dejpeg's limit depends on
    if q is not None and extra.get("jpeg_from_pixels"):  # not a JPEG file: a copy of one
        q = f"{q} from its pixels" + (f", chroma {layout}" if layout else "")
    elif q is not None and layout:
        q = f"{q} {layout}"
    if extra["noise_sigma"] is None:  # under 32 pixels a side
        found = "too small to estimate noise or blocks" + (f", JPEG quality {q}" if q is not None else "")
    else:
        found = f"noise sigma {extra['noise_sigma']:.1f}, " + (f"JPEG quality {q}" if q is not None else
                                                              f"blockiness {extra['blockiness']:.2f}")
    if extra.get("luma_noise_sigma") is not None:  # read after denoise: what decides its luma pass
        found += f", luma noise {extra['luma_noise_sigma']:.1f} after denoise"
    did = " + ".join(extra["stages"]) or "nothing to do"
    bp = extra["backprojection_db"]
    check = "" if bp is None else f"; back-projection {bp:.1f} dB" + (
        f" at strength {extra['strength']:g}" if extra["strength"] != 1 else "")
    return f" (auto: {found}; {did}{check})"


def _auto_fields(processor) -> dict:
    """What auto mode found in the last file (noise, JPEG quality, stages, check), or nothing."""
    analysis = getattr(processor, "last_analysis", None)
    return dataclasses.asdict(analysis) if analysis else {}


def _named(job: Job) -> str:
    """The error, led by the input's name unless the message already names it, on one line."""
    return _one_line(job.error if str(job.src) in (job.error or "") else f"{job.src}: {job.error}")


def _summarise(jobs: list[Job], seconds: float, args, interrupted: bool) -> int:
    counts = {k: sum(j.status == k for j in jobs) for k in ("ok", "failed", "skipped", "interrupted", "pending")}
    if args.json:
        print(strict_json({
            "ok": counts["ok"], "failed": counts["failed"], "skipped": counts["skipped"],
            "not_done": counts["pending"] + counts["interrupted"], "seconds": round(seconds, 3),
            "interrupted": interrupted,
            "files": [{"input": str(j.src), "output": str(j.dst), "status": j.status, "error": j.error,
                       "seconds": round(j.seconds, 3), **j.extra} for j in jobs],
        }, indent=1))
    else:
        if not args.quiet:
            parts = [f"{counts['ok']} enhanced", f"{counts['failed']} failed"]
            idle = sum(j.extra.get("reason") == "nothing to do" for j in jobs)
            if counts["skipped"] - idle:
                parts.append(f"{counts['skipped'] - idle} skipped (exist)")
            if idle:
                parts.append(f"{idle} left as they were (auto: nothing to do, nothing written)")
            if interrupted:
                parts.append(f"{counts['pending'] + counts['interrupted']} not done (interrupted)")
            print(f"{', '.join(parts)} in {seconds:.1f} s", file=sys.stderr)
        for j in jobs:  # failures are printed even with --quiet: a silent exit 1 helps nobody
            if j.status == "failed":
                print(f"  failed: {_named(j)}", file=sys.stderr)
    if interrupted:
        return 130
    return 1 if counts["failed"] else 0


# -- info / models --------------------------------------------------------------------------------
def _file_summary(path: Path) -> dict:
    import hashlib

    # A package's own files only (a symlink may point anywhere), read in chunks (a file may be huge).
    files = sorted(f for f in path.rglob("*") if f.is_file() and not f.is_symlink()) if path.is_dir() else [path]
    h, size = hashlib.sha256(), 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    return {"file": str(path), "bytes": size, "sha256": h.hexdigest()}


def cmd_info(args) -> int:
    from .backends import read_card, sniff_format
    from .models import resolve

    path = resolve(args.model)
    fmt = sniff_format(path)
    card = read_card(path)
    if card is None:  # what can be known without one, and how to give it one
        graph, why = _graph_footprint(path)
        hint = f"run it with --card-task TASK{'' if graph else ' --card-scale N --card-receptive-field N'}"
        if fmt == "onnxruntime" and graph:
            hint += f", or write a card in: edge-enhance convert {path.name} --to onnx --card-task TASK"
        info = {"format": fmt, **_file_summary(path), "card": None,
                **({"read off the graph": graph} if graph else {"graph not read": why}), "hint": hint}
    else:
        info = {"format": fmt, **_file_summary(path), **card.to_dict()}
    if fmt == "litert":
        from .backends.litert import io_lines

        info["io"] = io_lines(path)
    if args.json:
        print(strict_json(info, indent=1))
        return 0
    for k, v in info.items():
        if k == "io":
            for line in v or ():
                print(f"{'io':>18}: {line}")
        elif k in ("extra", "read off the graph"):
            if k != "extra":
                print(f"{k:>18}:")
            for ek, ev in v.items():
                print(f"  {ek:>16}: {json.dumps(ev) if isinstance(ev, (dict, list)) else ev}")
        elif v is not None or k == "card":
            print(f"{k:>18}: {'none (the file carries no edge-enhance card)' if v is None else v}")
    return 0


def cmd_models(args) -> int:
    from .backends import read_card
    from .models import bundled

    rows = []
    for name, files in bundled().items():
        for f in files:
            try:
                card = read_card(f)
            except EdgeEnhanceError as e:
                rows.append({"name": name, "file": f.name, "error": str(e)})
                continue
            psnr = (card.extra.get("psnr") or {}) if card else {}
            rows.append({
                "name": name, "file": f.name, "task": card.task if card else None,
                "scale": card.scale if card else None,
                "kb": round(f.stat().st_size / 1024, 1), "params": card.params if card else None,
                "psnr": psnr,
            })
    if args.json:
        print(strict_json(rows, indent=1))
        return 0
    if not rows:
        print("no bundled models")
        return 0
    print(f"{'name':<12} {'file':<24} {'task':<8} {'scale':>5} {'KB':>7} {'params':>7}  measured PSNR")
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<12} {r['file']:<24} ERROR {r['error']}")
            continue
        psnr = ", ".join(f"{k} {v:.3f}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in r["psnr"].items())
        print(f"{r['name']:<12} {r['file']:<24} {r['task'] or '?':<8} {r['scale'] or '?':>5} {r['kb']:>7} "
              f"{r['params'] or '':>7}  {psnr}")
    return 0


# -- parser ---------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse, whose option errors also answer a ``--json`` caller on stdout as the later errors do:
    a script reading stdout gets {"error", "exit"}, not an empty stream."""

    json_errors = False  # set for the run by _main when --json is on the command line
    argv: list = []  # the command line, set by _main

    def error(self, message):
        dashed = next((a for a in _Parser.argv if a.startswith("-") and len(a) > 1 and os.path.exists(a)), None)
        if dashed:  # a file named like an option: `edge-enhance -photo.jpg`
            message += f" ({dashed} is a file, read as an option here: give it as ./{dashed}, or after --)"
        if _Parser.json_errors:
            print(strict_json({"error": f"{self.prog}: {message}", "exit": 2}, indent=1))
        super().error(message)


def build_parser(chosen: str | None = None) -> argparse.ArgumentParser:
    p = _Parser(prog="edge-enhance", description="On-device photo enhancement.",
                epilog="`edge-enhance [OPTIONS] photo.jpg` is short for `edge-enhance enhance [OPTIONS] photo.jpg`. "
                       f"{EXIT_CODES}")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("--version", action="version", version=f"edge-enhance {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    # -v also after the command (`edge-enhance bench -v`); SUPPRESS keeps a count given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")

    e = sub.add_parser("enhance", help="enhance photos (files, folders, globs)", epilog=f"{NAMING_RULE} {EXIT_CODES}",
                       parents=[verbose])
    e.add_argument("inputs", nargs="+", help="image files, folders or globs")
    e.add_argument("-o", "--output", help="output file (one input) or folder")
    add_model_arguments(e, default=None)
    e.add_argument("--mode", choices=("upscale", "denoise", "dejpeg", "photo", "auto"),
                   help="which bundled models run (default upscale); denoise: noise, a colour photo's luma noise "
                        "(film grain) too; photo: old / phone photos (blur, noise, "
                        "JPEG and low resolution at once) through enhance-x2; auto estimates noise and JPEG damage "
                        "(of a PNG of a JPEG too), cleans up first, then upscales, and checks the result against the input, per photo (a "
                        "video: on its first frame; for a folder of one clip's frames, give the mode it chose)")
    e.add_argument("--scale", type=int, choices=(1, 2, 3, 4, 8),
                   help="upscale factor (default 2; 1 for denoise/dejpeg); 8 chains x4 then x2, and 8x detail is "
                        "speculative: the model invents what the pixels do not hold")
    e.add_argument("--no-check", action="store_true", help="auto mode: skip the back-projection quality check")
    e.add_argument("--tile", default="auto", help="auto (from --memory), N or HxW input pixels per tile")
    e.add_argument("--memory", type=float, default=256.0, help="MB the engine may use for a tile (default 256)")
    e.add_argument("--strength", type=_strength, default=1.0,
                   help="0 = the input (its bicubic upscale when upscaling), 1 = the model, up to 1.5: past 1 the "
                        "model's change is extrapolated, sharper for upscaling but, for denoise, noise put back "
                        "inverted (a Kodak24 crop at sigma 30: 31.9 dB at 1, 28.7 at 1.25, 24.5 at 1.5)")
    e.add_argument("--tta", action="store_true",
                   help="self-ensemble: average the model over the 8 rotations / mirror images "
                        "(8-9x the time, a little more PSNR)")
    e.add_argument("--format", help="output format (png, jpg, webp, tiff, ...); default: the output name's extension, "
                                    "or the input's when the name is derived")
    e.add_argument("--quality", type=number(int, 1, 100), default=92, help="JPEG / WebP quality 1..100 (default 92)")
    e.add_argument("--dpi", choices=("keep-print-size", "keep-value"), default="keep-print-size",
                   help="the output's DPI: keep-print-size (default: the input's times the scale, so it prints at "
                        "the same size) or keep-value (the input's)")
    e.add_argument("--strip-metadata", action="store_true", help="drop EXIF (GPS, camera, dates), XMP, IPTC, comments and DPI; the ICC profile "
                   "is kept, since without it a wide-gamut (Display P3, Adobe RGB) photo changes colour")
    e.add_argument("--recursive", "-r", action="store_true",
                   help="descend into sub-folders, linked ones too (each real folder once; without -o, outputs "
                        "go beside their inputs, in a linked folder as well)")
    e.add_argument("--skip-existing", action="store_true", help="leave outputs that already exist (resume a batch)")
    e.add_argument("--overwrite", action="store_true", help="allow writing over an input file")
    e.add_argument("--max-pixels", type=_positive_int, default=200_000_000, help="refuse inputs of more pixels than this (default 200000000, 200 MP)")
    e.add_argument("--temporal", type=number(float, 0, 1), default=0.0, help="video only: residual smoothing 0..1")
    e.add_argument("--json", action="store_true", help="print a machine-readable summary on stdout")
    e.add_argument("-q", "--quiet", action="store_true", help="no progress line")
    e.set_defaults(func=cmd_enhance)

    i = sub.add_parser("info", help="print a model's card", parents=[verbose])
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the card and what the graph gives as JSON")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list the bundled models", parents=[verbose])
    m.add_argument("--json", action="store_true", help="print the list as JSON")
    m.set_defaults(func=cmd_models)
    _add_optional_commands(sub, chosen, verbose)
    return p


def _add_optional_commands(sub, chosen: str | None, verbose: argparse.ArgumentParser) -> None:
    """Sub-commands living in other packages; a module is imported only when its command is chosen."""
    import importlib

    table = {
        "eval": ("edge_enhance.eval_cli", "evaluate a model with the standard protocol"),
        "convert": ("conversion.cli", "convert an ONNX model to TFLite / Core ML / ONNX, verified"),
        "quantize": ("quantization.cli", "int8 / 16x8 quantisation with calibration"),
        "prune": ("quantization.prune_cli", "structured channel pruning"),
        "preview": ("edge_enhance.camera.cli", "live camera preview (window, web viewfinder, file)"),
        "bench": ("benchmarks.cli", "quality / speed / memory side by side with peers"),
    }
    for name, (module, help_) in table.items():
        if not _module_file_exists(module):
            continue
        sp = sub.add_parser(name, help=help_, parents=[verbose])
        if name == chosen:
            mod = importlib.import_module(module)
            mod.add_arguments(sp)
            sp.set_defaults(func=mod.main)


def _module_file_exists(module: str) -> bool:
    """Whether ``module`` (a.b.c) is installed, found without importing a.b: find_spec on a submodule
    runs its packages' __init__s (conversion's imports numpy, camera's its preview loop)."""
    import importlib.util

    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    return spec is not None and any(Path(d, *rest).with_suffix(".py").is_file()
                                    for d in spec.submodule_search_locations or ())


def _to_devnull(fd: int) -> None:
    """``fd`` now writes (and reads) nothing: a closed pipe's or hung-up terminal's place, or a closed fd's."""
    null = os.open(os.devnull, os.O_RDWR)
    if null != fd:
        os.dup2(null, fd)
        os.close(null)


def _reopen_closed_std_streams() -> None:
    """A daemon or cron job may start us with stdin / stdout / stderr closed. Each becomes /dev/null:
    left closed, the next file opened (an output photo's temporary) would take its number, and
    anything written to stdout or stderr would land in that file."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            _to_devnull(fd)
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w")
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")


# All but tab and newline, and the bidi embeddings / overrides / isolates that reorder what follows
# them on the line ("photo\u202egpj.png" shows as photo.jpg...).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def shown(text: str) -> str:
    """``text`` with its control characters escaped (\\x1b): what a file name or a model card says
    cannot retitle, clear or rewrite the terminal it is printed on (ESC and CSI sequences, CR)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


class _Shown:
    """stdout / stderr while the CLI runs: everything printed goes through :func:`shown`. The CLI's own
    cursor control (a progress line's CR and erase) is written to ``unescaped``."""

    def __init__(self, stream):
        self.unescaped = stream

    def write(self, text: str) -> int:
        return self.unescaped.write(shown(text))

    def __getattr__(self, name):
        return getattr(self.unescaped, name)


def tolerant_std_streams() -> None:
    """A file name the console's code page cannot show (a Cyrillic name under Windows' cp1252) is printed
    as \\u escapes, not a UnicodeEncodeError after the work is done. Every entry point calls it (python -m too)."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    _reopen_closed_std_streams()
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Shown(sys.stdout), _Shown(sys.stderr)
    try:
        return _main(argv)
    except KeyboardInterrupt:  # also one that lands before the command runs (imports, building the parser)
        print("edge-enhance: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout, sys.stderr = streams


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tolerant_std_streams()
    # The command follows the top-level options (which take no value); anything else there, a file or an
    # enhance option (`edge-enhance --mode auto photo.jpg`), means `enhance`.
    at = next((i for i, a in enumerate(argv) if not TOP_LEVEL_OPTION.fullmatch(a)), None)
    if at is not None and argv[at] not in COMMANDS:
        argv.insert(at, "enhance")
    parser = build_parser(argv[at] if at is not None else None)
    _Parser.json_errors = "--json" in (argv[:argv.index("--")] if "--" in argv else argv)
    _Parser.argv = argv
    args, extra = parser.parse_known_args(argv)
    if extra:  # said with the command's usage, not the top level's (as argparse would)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s: %(message)s")
    logging.getLogger("PIL").setLevel(logging.INFO)  # -vv is our debug log, not Pillow's chunk-by-chunk one

    def _term(signum, frame):
        raise KeyboardInterrupt

    for sig in stop_signals()[1:]:  # SIGTERM, SIGHUP as Ctrl-C, which raises KeyboardInterrupt already
        signal.signal(sig, _term)
    try:
        rc = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return rc
    except EdgeEnhanceError as e:
        print(f"edge-enhance: error: {e}", file=sys.stderr)
        # quantize / prune keep 1 for a missed --max-drop bar: a model or image they cannot use is bad input there.
        bad_input = isinstance(e, (ImageInputError, ModelFormatError)) and getattr(args, "bad_input_exit", None)
        rc = 2 if isinstance(e, ConfigError) else bad_input or 1
        if getattr(args, "json", False):  # a script reading stdout gets an answer, not an empty stream
            print(strict_json({"error": str(e), "exit": rc}, indent=1))
        return rc
    except ModuleNotFoundError as e:  # a command's optional package (convert, coreml, bench...) is missing
        why = _missing_extra(e)
        if why is None:
            raise
        print(f"edge-enhance: error: {why}", file=sys.stderr)
        return 1
    except OSError as e:
        if isinstance(e, BrokenPipeError) or _reader_left(e):
            # `edge-enhance models | head`: the reader left; end quietly, without Python's exit-time flush error.
            _to_devnull(sys.stdout.fileno())
            return 141
        gone = [fd for fd in (1, 2) if e.errno == errno.EIO and _hung_up(fd)]
        if not gone:
            raise
        # The terminal went away (the SSH session closed): no one is left to read; what was written is safe.
        for fd in gone:
            _to_devnull(fd)
        return 129  # as a shell reports a command ended by SIGHUP


def _reader_left(e: OSError) -> bool:
    """Windows says a stdout reader that left with EINVAL, not a broken pipe (cpython#79935); that EINVAL is
    told from another one (a file name Windows refuses) by stdout failing still."""
    if os.name != "nt" or e.errno != errno.EINVAL:
        return False
    try:
        sys.stdout.flush()
    except OSError:
        return True
    return False


def _hung_up(fd: int) -> bool:
    """Whether ``fd`` is a terminal that has hung up: even an empty write to it fails with EIO."""
    try:
        os.write(fd, b"")
    except OSError as e:
        return e.errno == errno.EIO
    return False


if __name__ == "__main__":
    sys.exit(main())
