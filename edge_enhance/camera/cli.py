"""``edge-enhance preview`` (and the video half of ``edge-enhance enhance``), wired in by edge_enhance.cli.

The enhancer is imported inside ``main`` so ``edge-enhance --help`` never loads an engine.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import threading

from .controls import Controls
from .detect import has_gui, import_cv2, platform_info
from .errors import ConfigError, EdgeEnhanceError, SourceError
from .preview import Preview, PreviewConfig
from .sinks import NullSink, VideoFileSink, WindowSink
from .sources import OpenCVSource, open_source
from .stats import StatsJsonWriter

log = logging.getLogger(__name__)

DEFAULT_PREVIEW_MODEL = "sr-x2-rt"  # the real-time x2 model; --model overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser.add_argument
    p("--source", default="auto", metavar="SPEC",
      help="picamera2[:lores[:WxH]] | cv:N (or N, /dev/videoN) | file:clip.mp4 | folder:DIR | synthetic:640x360, "
           "optionally @FPS (default: auto = picamera2 on a Pi, else cv:0)")
    p("--sink", action="append", metavar="SPEC",
      help="window | web[:HOST:PORT] | file:out.mp4 | null; repeatable (default: window when a display and an "
           "OpenCV with GUI support are present, else web:127.0.0.1:8080)")
    p("--web", metavar="HOST:PORT", help="shorthand for --sink web:HOST:PORT")
    p("--token", help="access token for the web viewfinder (required off loopback; default: the EDGE_ENHANCE_TOKEN "
                      "environment variable, which other users cannot read in `ps` as they can an argument; else "
                      "generated)")
    p("--model", metavar="NAME|PATH", help=f"model (default {DEFAULT_PREVIEW_MODEL})")
    p("--light-model", metavar="NAME|PATH", help="lighter model adaptive mode may switch to (same scale; only with "
                                                  "--target-fps)")
    from edge_enhance.cli import _positive_int, _strength

    p("--threads", type=_positive_int, metavar="N",
      help="engine threads (default: every core, os.cpu_count(), as demo_raspberry/check_pi.py measures)")

    p("--strength", type=_strength, metavar="S", help="initial enhancement strength 0..1.5")
    p("--frames", type=int, metavar="N", help="stop after N processed frames")
    p("--seconds", type=float, metavar="S", help="stop after S seconds")
    p("--target-fps", type=float, metavar="F", help="adaptive: lower the processed size / model to hold F fps")
    p("--min-scale", type=float, default=0.5, metavar="R", help="adaptive: smallest input scale (default 0.5)")
    p("--stats-json", metavar="FILE", help="write stats as one JSON line per second, then a summary")
    p("--snapshot-dir", default="snapshots", metavar="DIR", help="where snapshots go (default ./snapshots)")
    p("--reconnects", type=int, default=3, metavar="N", help="reconnect attempts for a lost or hung camera (default 3)")
    p("--split", action="store_true", help="start in split-screen before/after")
    p("--no-overlay", action="store_true", help="no stats overlay in window / file sinks")
    from edge_enhance.cli import add_card_arguments

    add_card_arguments(parser)  # for --model (a --light-model needs its own card)


def _make_enhancer(model: str, threads: int | None, card=None):
    from edge_enhance.enhancer import Enhancer  # lazy: loads an engine

    return Enhancer(model, threads=threads, card=card)


def default_threads() -> int:
    """Every core: the engine left to itself (no threads) ran on one, a quarter of a Pi's."""
    return os.cpu_count() or 1


def build_sinks(specs: list[str], *, token: str | None, fps: float | None, overlay: bool, on_web_ready=None,
                timed=True, token_name: str = "--token"):
    from .web import WebViewfinder, parse_hostport  # http.server only when asked for

    sinks = []
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if spec == "auto":  # a window where there is a display and an OpenCV with GUI support, else the browser
            kind, arg = ("window", "") if platform_info().has_display and has_gui() else ("web", "127.0.0.1:8080")
        if kind == "window" and not arg:
            sinks.append(WindowSink())
        elif kind == "null" and not arg:
            sinks.append(NullSink())
        elif kind == "web":
            host, port = parse_hostport(arg or "127.0.0.1:8080")
            sinks.append(WebViewfinder(host, port, token=token, on_ready=on_web_ready, token_name=token_name))
        elif kind == "file" and arg:
            sinks.append(VideoFileSink(arg, fps=fps, overlay=overlay, timed=timed))
        else:
            raise ConfigError(f"unknown sink {spec!r}: use window, web:HOST:PORT, file:out.mp4 or null")
    return sinks


def _refuse_overwriting(source, sinks) -> None:
    """A file sink must not write over the video it is playing (``enhance`` refuses the same)."""
    src = getattr(source, "device", None) if getattr(source, "live", True) is False else None
    for sink in sinks:
        path = getattr(sink, "path", None)
        if src and path and os.path.exists(path) and os.path.samefile(src, path):
            raise ConfigError(f"{path}: the file sink would overwrite the source video; choose another name")


ENV_TOKEN = "EDGE_ENHANCE_TOKEN"


def _print_web(*, url: str, token_generated: bool, hide_token: bool = False):
    """``hide_token``: the token came from the environment (the service), and this line goes to its journal."""
    if hide_token:
        url = url.partition("?token=")[0] + f"?token=<{ENV_TOKEN}>"
    note = "  (generated token: keep this URL private)" if token_generated else ""
    print(f"web viewfinder: {url}{note}", file=sys.stderr, flush=True)


def _summary_line(s: dict) -> str:
    lat = s.get("latency_ms") or {}
    fig = lambda v: "-" if v is None else v  # noqa: E731  (no frame, no figure)
    return (f"{s['processed']} frames in {s['seconds']:.1f} s: {s['output_fps']:.1f} fps out, "
            f"{s['input_fps']:.1f} fps in, {s['dropped']} dropped, latency p50 {fig(lat.get('p50'))} ms "
            f"p95 {fig(lat.get('p95'))} ms, engine {fig(s.get('engine_ms_mean'))} ms ({s['stop_reason']})")


def _load_light_model(args, enhancer):
    """--light-model, loaded only where adaptive mode (--target-fps) can use it."""
    if not args.light_model:
        return None
    if args.target_fps is None:
        log.warning("--light-model %s is used only with --target-fps; ignored", args.light_model)
        return None
    light = _make_enhancer(args.light_model, args.threads or default_threads())
    macs = [getattr(getattr(e, "card", None), "macs_per_pixel", None) for e in (light, enhancer)]
    if None not in macs and macs[0] > macs[1]:
        log.warning("--light-model %s (%d MACs per pixel) is not lighter than the model (%d)",
                    args.light_model, *macs)
    return light


def main(args: argparse.Namespace) -> int:
    """Run the preview; as ``edge-enhance --help`` says: 0 done (a bound reached, the end of a file source), 1 a
    source, sink, model or engine failed (a source that gave no frame at all, a recording that could not be
    finished), 2 bad options or settings (nothing run), 130 stopped by Ctrl-C / SIGTERM / SIGHUP (cleanly: the
    recording finished, the camera released; the service unit counts 130 as a normal stop)."""
    writer = None
    old_handlers = {}
    try:
        config = PreviewConfig(frames=args.frames, seconds=args.seconds, target_fps=args.target_fps,
                               min_scale=args.min_scale, reconnects=args.reconnects,
                               snapshot_dir=args.snapshot_dir)
        source = open_source(args.source)
        if isinstance(source, OpenCVSource):  # no OpenCV is said first, not after the web viewfinder's address
            import_cv2()
        specs = list(args.sink or [])
        if args.web:
            specs.append(f"web:{args.web}")
        env_token = None if args.token else os.environ.get(ENV_TOKEN) or None
        # A file sink records at the source's rate, known once it has started (an unpaced video file, @0:
        # at the clip's own rate, every frame once); a camera's or paced source's frames at their capture time.
        sinks = build_sinks(specs or ["auto"], token=args.token or env_token,
                            fps=lambda: getattr(source, "fps", None) or getattr(source, "native_fps", None),
                            overlay=not args.no_overlay, timed=lambda: source.paced,
                            on_web_ready=functools.partial(_print_web, hide_token=env_token is not None),
                            token_name=f"the {ENV_TOKEN} environment variable (/etc/default/edge-enhance for the "
                                       "service)" if env_token else "--token")
        _refuse_overwriting(source, sinks)
        from edge_enhance.cli import cli_card

        model = args.model or DEFAULT_PREVIEW_MODEL
        enhancer = _make_enhancer(model, args.threads or default_threads(), cli_card(args, model))
        light = _load_light_model(args, enhancer)
        strength = args.strength if args.strength is not None else float(getattr(enhancer, "strength", 1.0))
        controls = Controls(strength=strength, split=args.split, overlay=not args.no_overlay)
        callbacks = []
        if args.stats_json:
            writer = StatsJsonWriter(args.stats_json)
            callbacks.append(writer)
        preview = Preview(source, enhancer, sinks, config=config, controls=controls, on_stats=callbacks,
                          light_enhancer=light)

        signals = []

        def _stop(signum, frame):
            # The first signal stops cleanly (camera released, recording finished, summary written); an
            # impatient second one is told to wait, as it would lose the recording; a third one kills.
            signals.append(signum)
            if len(signals) == 2:
                print("edge-enhance preview: stopping (finishing the recording); again to abort", file=sys.stderr)
            elif len(signals) > 2:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
            preview.stop()

        if threading.current_thread() is threading.main_thread():
            from edge_enhance.cli import stop_signals

            for sig in stop_signals():  # SIGHUP too: a closed SSH session finishes the recording, not cuts it
                old_handlers[sig] = signal.signal(sig, _stop)
        summary = preview.run()
        if summary["processed"] == 0 and summary["stop_reason"] == "end of source":
            raise SourceError(f"{summary['source']}: no frames could be read")
        print(_summary_line(summary), file=sys.stderr)
        return 130 if signals else 0
    except EdgeEnhanceError as e:
        print(f"edge-enhance preview: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    finally:
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
        if writer is not None:
            writer.close()


def add_video_arguments(parser: argparse.ArgumentParser) -> None:
    """For ``edge-enhance enhance`` when the input is a video."""
    parser.add_argument("--temporal", type=float, default=0.0, metavar="A",
                        help="video: temporal smoothing of the residual, 0 (off) .. 1")


def video_main(src: str, dst: str, enhancer, *, temporal: float = 0.0, stream=None) -> int:
    """Enhance one video with a progress line and ETA on ``stream`` (stderr); returns an exit code."""
    from ..cli import _unescaped
    from .video import enhance_video

    stream = stream or sys.stderr

    def progress(*, done, total, fps, eta_s):
        of = f"/{total}" if total else ""
        eta = f", ETA {int(eta_s) // 60}:{int(eta_s) % 60:02d}" if eta_s is not None else ""
        print(f"\rframe {done}{of}  {fps:.1f} fps{eta}   ", end="", file=_unescaped(stream), flush=True)

    try:
        r = enhance_video(src, dst, enhancer, temporal=temporal, progress=progress)
    except EdgeEnhanceError as e:
        print(f"\nedge-enhance enhance: error: {e}", file=stream)
        return 1
    print(f"\n{r.path}: {r.frames} frames {r.size[0]}x{r.size[1]} in {r.seconds:.1f} s; audio {r.audio}",
          file=stream)
    return 0
