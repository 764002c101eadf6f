#!/usr/bin/env python3
"""Measure real edge-enhance preview figures on this device (Raspberry Pi or anything else).

Runs the preview loop headless (null sink) on the synthetic 640x360 source, then, if a Pi camera
is present, on the camera; prints processed fps, latency p50/p95, engine time, dropped frames,
memory growth, and the effective GMAC/s that the README's estimates are scaled by. The synthetic
source is unpaced (@0: the next frame as soon as the loop takes one), so its fps is what the device
can process; the camera's is capped by its 30 fps.

    python check_pi.py                       # sr-x2-rt, 20 s per run
    python check_pi.py --model sr-x2 --seconds 60 --threads 4 --json pi5.json

Exits 1 when a run failed (the JSON is still written, with that run's error).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys


def rss_mb() -> float | None:
    from edge_enhance.procmem import status_mb

    return status_mb("VmRSS")


def describe_device() -> dict:
    from edge_enhance.camera.detect import has_picamera2, platform_info

    info = platform_info()
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"board": info.board, "machine": info.machine, "system": f"{info.system} {platform.release()}",
            "cpus": os.cpu_count(), "ram_gb": mem, "python": platform.python_version(),
            "picamera2": has_picamera2()}


def run(source_spec: str, enhancer, seconds: float, target_fps: float | None) -> dict:
    from edge_enhance.camera import NullSink, Preview, PreviewConfig, open_source

    before = rss_mb()
    # Warm-up: the first frames pay for interpreter allocation and caches.
    Preview(open_source(source_spec), enhancer, [NullSink()], config=PreviewConfig(frames=5)).run()
    mid = rss_mb()
    s = Preview(open_source(source_spec), enhancer, [NullSink()],
                config=PreviewConfig(seconds=seconds, target_fps=target_fps)).run()
    after = rss_mb()
    s["rss_mb"] = {"start": before, "after_warmup": mid, "end": after,
                   "growth_after_warmup": None if mid is None or after is None else round(after - mid, 1)}
    return s


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT (e.g. 640x360)") from None
    if min(w, h) < 8:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be at least 8 pixels")
    return w, h


def gmac_note(s: dict, macs, pixels: int) -> str:
    """', effective N GMAC/s' from the mean engine time, set in ``s``; not where adaptive mode changed the
    frame size mid-run (the mean then mixes sizes: it read up to 1.8x high)."""
    if not (macs and s["engine_ms_mean"]):
        return ""
    if (s.get("adaptive") or {}).get("changes"):
        return ", GMAC/s not measured (adaptive mode changed the frame size; run without --target-fps)"
    gmacs = macs * pixels / (s["engine_ms_mean"] / 1000) / 1e9
    s["effective_gmac_per_s"] = round(gmacs, 2)
    return f", effective {gmacs:.1f} GMAC/s"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="sr-x2-rt", help="bundled model name or model file (default sr-x2-rt)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help=f"engine threads (default: all cores, {os.cpu_count()} here)")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    ap.add_argument("--size", type=_size, default="640x360", help="synthetic / camera frame size WxH")
    ap.add_argument("--target-fps", type=float, help="also exercise adaptive mode")
    ap.add_argument("--no-camera", action="store_true", help="skip the camera run")
    ap.add_argument("--json", metavar="FILE", help="write all figures as JSON")
    args = ap.parse_args(argv)

    from edge_enhance.camera.errors import EdgeEnhanceError
    from edge_enhance.enhancer import Enhancer

    device = describe_device()
    print("device:", json.dumps(device))
    try:
        enhancer = Enhancer(args.model, threads=args.threads)
    except EdgeEnhanceError as e:
        print(f"check_pi: cannot load model {args.model}: {e}", file=sys.stderr)
        return 1
    w, h = args.size
    card = getattr(enhancer, "card", None)
    macs = getattr(card, "macs_per_pixel", None)
    report = {"device": device, "model": args.model, "threads": args.threads, "macs_per_pixel": macs, "runs": {}}

    specs = [("synthetic", f"synthetic:{w}x{h}@0")]  # unpaced (@0): 'fps processed' is what the device can do
    if device["picamera2"] and not args.no_camera:
        specs.append(("camera", f"picamera2:main:{w}x{h}@30"))
    failed = []
    for label, spec in specs:
        try:
            s = run(spec, enhancer, args.seconds, args.target_fps)
        except EdgeEnhanceError as e:
            print(f"{label}: failed: {e}", file=sys.stderr)
            report["runs"][label] = {"error": str(e)}
            failed.append(label)
            continue
        lat = s["latency_ms"]
        line = (f"{label:9s} {w}x{h} -> x{s['scale']}: {s['output_fps']:.1f} fps processed "
                f"({s['input_fps']:.1f} in, {s['dropped']} dropped), latency p50 {lat['p50']} ms "
                f"p95 {lat['p95']} ms, engine {s['engine_ms_mean']} ms, "
                f"RSS growth {s['rss_mb']['growth_after_warmup']} MB")
        line += gmac_note(s, macs, w * h)
        if s.get("adaptive"):
            line += f", adaptive scale {s['adaptive']['scale']}"
        print(line)
        report["runs"][label] = s
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.json)
        print("wrote", args.json)
    return 1 if failed else 0  # the JSON keeps what did run


if __name__ == "__main__":
    sys.exit(main())
