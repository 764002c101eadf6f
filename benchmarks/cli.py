"""``edge-enhance bench`` / ``python -m benchmarks``: quality, speed, memory and tiling side by side
with the peers, in one run, to report.md + results.json + pareto.png.

>>> import argparse; p = argparse.ArgumentParser(); add_arguments(p)
>>> p.parse_args(["--quick", "--only", "quality,speed"]).only
['quality', 'speed']
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import shlex
import shutil
import sys
from pathlib import Path

from edge_enhance.evaluation import shared_data, shared_folder

from .errors import BenchmarkError, ConfigError

log = logging.getLogger(__name__)

SECTIONS = ("quality", "speed", "memory", "tiling")


def _sections(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in parts if p not in SECTIONS]
    if bad or not parts:
        raise argparse.ArgumentTypeError(f"--only takes a comma list of {', '.join(SECTIONS)}; got {text!r}")
    return parts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="small sets, one frame size, fewer threads (a few minutes)")
    p.add_argument("--models", nargs="+", metavar="MODEL",
                   help="bundled model names, model files or folders of them (default: every bundled model)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder (default: bench-out)")
    p.add_argument("--only", type=_sections, default=list(SECTIONS), metavar="LIST",
                   help=f"comma list of {','.join(SECTIONS)} (default: all)")
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding eval/Set5 ... (default: $EDGE_ENHANCE_DATA, else the nearest shared/data above "
                        "the code or the working folder)")
    p.add_argument("--peers", type=Path, default=None,
                   help="OpenCV dnn_superres .pb folder (default: ../shared/peer_models/opencv_dnn_superres)")
    p.add_argument("--runs", type=int, default=None, help="timed runs per contender (>= 5; default 5 quick, 7 full)")
    p.add_argument("--sizes", default=None, metavar="WxH,...",
                   help="speed input frames (default 640x360,1280x720,1920x1080; --quick 640x360)")
    p.add_argument("--slow", action="store_true", help="also the 48 MP memory runs and the CBM3D peer on Kodak24 "
                                                                "(bm3d package; about a minute per image)")
    p.add_argument("--no-peers", action="store_true", help="only our models")
    p.add_argument("--load-note", default=None, help="what else loaded the machine, for the report")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable), "
                   "e.g. where the model files came from")


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.node()} {platform.system()} {platform.machine()}, {cpu or 'unknown CPU'}, {os.cpu_count()} cores"


# What int8 and fp32 kernels can use: the same "AMD EPYC" runs int8 convolutions several times faster
# with VNNI than without (x86), as an Arm core does with the dot product (asimddp) or i8mm.
SIMD_FLAGS = ("sse4_2", "fma", "avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp",
              "i8mm", "sve")
PACKAGES = ("numpy", "Pillow", "onnxruntime", "ai-edge-litert", "tflite-runtime", "opencv-contrib-python-headless",
            "opencv-contrib-python", "bm3d")


def cpu_features(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The SIMD extensions the CPU reports (Linux; [] where it cannot be read)."""
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    have = {flag for line in lines if line.startswith(("flags", "Features"))
            for flag in line.split(":", 1)[-1].split()}
    return [f for f in SIMD_FLAGS if f in have]


def versions() -> dict:
    """Python and the installed packages the contenders run on (those present)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def file_sha256(path: str | None) -> str | None:
    """The model file's SHA-256 (which file was measured, whatever its name); None for a non-file."""
    import hashlib

    if not path or not os.path.isfile(path):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_text(note: str | None) -> str:
    try:
        la = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (OSError, AttributeError):  # Windows has no getloadavg
        la = "unknown"
    return f"load average at start {la}" + (f"; {note}" if note else "")


def main(args: argparse.Namespace) -> int:
    from . import bars, memory, quality, report, speed, tiling
    from .subjects import NotRun, our_subjects, peer_subjects

    if args.runs is not None and args.runs < 5:
        raise ConfigError(f"--runs {args.runs}: medians need at least 5 timed runs")
    runs = args.runs or (5 if args.quick else 7)
    sizes = speed.parse_sizes(args.sizes) if args.sizes else None
    out = Path(args.out)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BenchmarkError(f"{out}: cannot create the output folder ({e.strerror})") from None
    data = args.data or shared_data()
    peers_dir = args.peers or shared_folder("peer_models/opencv_dnn_superres")
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:  # called as `edge-enhance bench ...`
        argv = argv[1:]
    started = datetime.datetime.now().astimezone()
    res = {"meta": {"machine": machine(), "cpu_count": os.cpu_count(), "date": started.isoformat(timespec="seconds"),
                    "command": "edge-enhance bench " + " ".join(shlex.quote(a) for a in argv),
                    "load": load_text(args.load_note), "quick": args.quick, "sections": args.only, "runs": runs,
                    "cpu_features": cpu_features(), "versions": versions(), "notes": list(args.note)},
           "subjects": [], "quality": [], "speed": [], "memory": [], "tiling": [], "bars": [], "not_run": []}
    notes: list[NotRun] = []

    ours, n = our_subjects(args.models, out / "models")
    notes += n
    if args.models and not ours:  # a typo: said now, not after minutes of peer runs
        for x in n:
            print(f"bench: not run: {x.what}: {x.reason}", file=sys.stderr)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise BenchmarkError("none of the --models given could be loaded (above); nothing was run")
    if not ours:
        notes.append(NotRun("our models", "none of those given could be loaded (above)" if args.models
                            else "none given or bundled; peers only"))
    tasks = {s.task for s in ours} | {"sr"}
    scales = sorted({s.scale for s in ours if s.task == "sr"} | {2})
    if args.quick:
        scales = [2]
    peers, n = ([], []) if args.no_peers else peer_subjects(peers_dir, tasks, scales, slow=args.slow)
    notes += n
    subjects = ours + peers
    res["subjects"] = [{**s.row(), "sha256": file_sha256(s.path)} for s in subjects]
    print(f"bench: {len(ours)} of ours, {len(peers)} peers -> {out}", file=sys.stderr)

    if "quality" in args.only:
        rows, n = quality.run_quality(subjects, data, args.quick)
        res["quality"], notes = rows, notes + n
        print(f"bench: quality done ({len(rows)} rows)", file=sys.stderr)
        _checkpoint(res, notes, out)
    if "speed" in args.only:
        # Peers at scales we have no model of only add minutes; the speed table compares like with like.
        timed = [s for s in subjects if s.timed and (s.ours or s.scale in scales)]
        n = [NotRun(f"speed {s.label}", "quality only: too slow for interleaved timed runs (its seconds per "
                                        "set are in the quality rows)") for s in subjects if not s.timed]
        notes += n
        rows, n = speed.run_speed(timed, args.quick, runs, sizes)
        res["speed"], notes = rows, notes + n
        print(f"bench: speed done ({len(rows)} rows)", file=sys.stderr)
        _checkpoint(res, notes, out)
    primary = primary_subject(ours)
    if "memory" in args.only:
        same = [s for s in ours if primary and s.model == primary.model and s is not primary]
        rows, n = memory.run_memory([primary, *same] if primary else [], args.quick, args.slow)
        res["memory"], notes = rows, notes + n
        print(f"bench: memory done ({len(rows)} rows)", file=sys.stderr)
        _checkpoint(res, notes, out)
    if "tiling" in args.only:
        rows, n = tiling.run_tiling(primary, args.quick, runs)
        res["tiling"], notes = rows, notes + n
        print(f"bench: tiling done ({len(rows)} rows)", file=sys.stderr)
        _checkpoint(res, notes, out)

    res["bars"] = bars.judge_bars(res["speed"], res["quality"], os.cpu_count())
    res["not_run"] = [x.row() for x in notes]
    res["meta"]["seconds"] = round((datetime.datetime.now().astimezone() - started).total_seconds(), 1)
    paths = report.write_all(res, out)
    (out / "results.partial.json").unlink(missing_ok=True)
    for b in res["bars"]:
        print(f"{b['status']:>7}  {b['bar']}: {b['figure'] or b['reason']}")
    for k, p in paths.items():
        print(f"bench: {k}: {p}", file=sys.stderr)
    for x in notes:
        print(f"bench: not run: {x.what}: {x.reason}", file=sys.stderr)
    if not any(res[k] for k in ("quality", "speed", "memory", "tiling")):
        print("bench: error: nothing was measured (the reasons are above)", file=sys.stderr)
        return 1
    if not ours:
        print("bench: error: no model of ours ran, so nothing was compared (the reasons are above)", file=sys.stderr)
        return 1
    return 0


def _checkpoint(res: dict, notes: list, out: Path) -> None:
    """results.partial.json after each section, so a long run cut short still leaves its figures."""
    import json

    from .report import write_atomic

    write_atomic(out / "results.partial.json",
                 json.dumps({**res, "not_run": [x.row() for x in notes]}, indent=1, default=str).encode())


def primary_subject(ours):
    """The model memory and tiling runs use: sr-x2 if present, the fastest precision we have."""
    if not ours:
        return None
    rank = {("litert", "int8"): 0, ("litert", "fp16"): 1, ("litert", "fp32"): 2, ("onnxruntime", "fp32"): 3}
    return min(ours, key=lambda s: (s.model != "sr-x2", rank.get((s.engine, s.precision), 9), s.model))


def run(argv: list[str] | None = None) -> int:
    from edge_enhance.cli import tolerant_std_streams

    tolerant_std_streams()
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="count", default=0)
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(args.verbose, 2), format="%(levelname)s: %(message)s")
    from edge_enhance.errors import EdgeEnhanceError

    try:
        return main(args)
    except EdgeEnhanceError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    except KeyboardInterrupt:  # as `edge-enhance bench`: the sections done are in results.partial.json
        print("bench: interrupted", file=sys.stderr)
        return 130
