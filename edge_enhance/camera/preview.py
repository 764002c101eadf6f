"""The preview loop: Source -> Enhancer -> Sinks with latest-frame-wins.

Threads: one captures (``source.read()`` as fast as the source delivers), the caller's thread runs
inference on the newest captured frame (older unprocessed frames are dropped and counted), and each
sink shows results on its own thread. Nothing downstream of capture can slow capture, and nothing
downstream of inference can slow inference.

>>> from edge_enhance.camera.sources import SyntheticSource
>>> class Nearest:  # a test double, not a model: nearest-neighbour x2
...     scale, strength = 2, 1.0
...     def enhance(self, f): return f.repeat(2, 0).repeat(2, 1)
>>> summary = Preview(SyntheticSource(64, 32, fps=0), Nearest(), config=PreviewConfig(frames=5)).run()
>>> summary["processed"], summary["stop_reason"]
(5, 'frames')
"""
from __future__ import annotations

import datetime
import logging
import math
import os
import threading
import time
from concurrent.futures import InvalidStateError
from dataclasses import dataclass

import numpy as np

from .controls import Controls
from .errors import ConfigError, EdgeEnhanceError, OutputError, SinkError, SourceError, SourceLostError
from .frames import resize, save_png_atomic, upscale
from .sinks import Result, Sink, SinkRunner
from .sources import Source
from .stats import Stats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviewConfig:
    frames: int | None = None  # stop after this many processed frames
    seconds: float | None = None  # stop after this much wall time
    target_fps: float | None = None  # adaptive mode: hold this processed rate
    min_scale: float = 0.5  # adaptive mode never processes below this fraction of the input side
    reconnects: int = 3  # consecutive failed reconnect attempts before giving up on a live source
    reconnect_delay: float = 0.5  # seconds, times the attempt number
    stall_timeout: float = 5.0  # a live source that neither delivers nor fails for this long is reconnected
    stats_interval: float = 1.0
    snapshot_dir: str = "snapshots"

    def __post_init__(self):
        for name in ("frames", "seconds", "target_fps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"--{name.replace('_', '-')} {v!r} must be > 0")
        # The command line's option names where there is one (what a user of `preview` can change).
        if not 0.1 <= self.min_scale <= 1.0:
            raise ConfigError(f"--min-scale {self.min_scale!r} must be in 0.1..1")
        if self.reconnects < 0:
            raise ConfigError(f"--reconnects {self.reconnects!r} must be >= 0")
        if not self.reconnect_delay >= 0:  # the API's fields only, from here on
            raise ConfigError(f"reconnect_delay {self.reconnect_delay!r} must be >= 0")
        for name in ("stall_timeout", "stats_interval"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} {getattr(self, name)!r} must be > 0")


@dataclass
class Captured:
    seq: int  # 1-based count of frames captured this run
    t: float  # perf_counter when read() returned
    frame: np.ndarray


class LatestSlot:
    """A one-frame mailbox: ``put`` replaces an unconsumed frame (reported as dropped)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None

    def put(self, item, until_taken: threading.Event | None = None) -> bool:
        """``until_taken``: first wait for the last frame to be taken (or this event to be set) instead of
        replacing it: an unpaced file is processed frame by frame, not read as fast as the disk allows."""
        with self._cond:
            while until_taken is not None and self._item is not None and not until_taken.is_set():
                self._cond.wait(0.05)
            dropped = self._item is not None
            self._item = item
            self._cond.notify_all()
        return dropped

    def get(self, timeout: float):
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            self._cond.notify_all()  # a producer waiting for the slot to empty
        return item

    def empty(self) -> bool:
        with self._cond:
            return self._item is None

    def wake(self):
        with self._cond:
            self._cond.notify_all()


def model_name(enhancer) -> str:
    card = getattr(enhancer, "card", None)
    return getattr(enhancer, "name", None) or getattr(card, "name", None) or type(enhancer).__name__


class AdaptiveController:
    """Picks (enhancer, input scale) to hold ``target_fps``, from the measured per-frame busy time.

    Levels, best first: primary model at full size, the lighter model at full size (if given), then
    the lightest model at shrinking input sizes down to ``min_scale``. One step down when a frame
    costs more than 95 % of the frame budget; one step up after three windows in which the step up
    is predicted (busy time x area ratio) to fit in 80 % of the budget.

    >>> a = AdaptiveController(30, primary="big", min_scale=0.5)
    >>> a.update(50.0); a.current
    True
    ('big', 0.875)
    """

    SCALES = (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125)

    def __init__(self, target_fps: float, *, primary, light=None, min_scale: float = 0.5):
        self.target_fps = target_fps
        self.budget_ms = 1000.0 / target_fps
        self.levels = [(primary, 1.0)]
        if light is not None:
            self.levels.append((light, 1.0))
        last = self.levels[-1][0]
        self.levels += [(last, s) for s in self.SCALES[1:] if s >= min_scale - 1e-9]
        self.level = 0
        self._good = 0
        self.changes = 0

    @property
    def current(self):
        return self.levels[self.level]

    def update(self, busy_ms: float | None) -> bool:
        if busy_ms is None:
            return False
        if busy_ms > 0.95 * self.budget_ms and self.level < len(self.levels) - 1:
            self.level += 1
            self._good = 0
            self.changes += 1
            return True
        if self.level > 0:
            (e0, s0), (e1, s1) = self.levels[self.level - 1], self.levels[self.level]
            # Switching model back has no cost model: assume 2x, so we only return with real headroom.
            predicted = busy_ms * ((s0 / s1) ** 2 if e0 is e1 else 2.0)
            self._good = self._good + 1 if predicted < 0.8 * self.budget_ms else 0
            if self._good >= 3:
                self.level -= 1
                self._good = 0
                self.changes += 1
                return True
        return False

    def describe(self) -> dict:
        enh, scale = self.current
        return {"target_fps": self.target_fps, "scale": scale, "model": model_name(enh), "level": self.level,
                "changes": self.changes, "lowered": self.level > 0}


def _settle(futures, *, result=None, error=None):
    """Resolve snapshot futures; ones their requester gave up on (cancelled) are skipped."""
    for f in futures:
        try:
            f.set_exception(error) if error is not None else f.set_result(result)
        except InvalidStateError:
            pass


def _processed_size(w: int, h: int, scale: float, align: int = 1) -> tuple[int, int]:
    # Multiples of 4 keep the engine's input shapes few and pixel-shuffle friendly; of the model's
    # align too, so the enhancer need not pad the frame (it would, exactly, for any size).
    m = math.lcm(4, align)
    least = -(-16 // m) * m
    return max(least, int(w * scale) // m * m), max(least, int(h * scale) // m * m)


class Preview:
    """Runs Source -> Enhancer -> Sinks until a bound, the end of the source, ``stop()`` or an error.

    ``run()`` blocks and returns the summary dict (also passed to ``on_stats``); ``start()`` runs it
    on a background thread and ``wait()`` collects the result. Stats callbacks take keyword
    arguments: ``on_stats(stats=dict)``, called about once a second and once at the end.
    """

    def __init__(self, source: Source, enhancer, sinks: list[Sink] | tuple = (), *,
                 config: PreviewConfig = PreviewConfig(), controls: Controls | None = None,
                 on_stats=None, light_enhancer=None):
        for attr in ("enhance", "scale"):
            if not hasattr(enhancer, attr):
                raise ConfigError(f"enhancer {type(enhancer).__name__} has no {attr!r}")
        if light_enhancer is not None and light_enhancer.scale != enhancer.scale:
            raise ConfigError(f"light model {model_name(light_enhancer)} is x{light_enhancer.scale} but "
                              f"{model_name(enhancer)} is x{enhancer.scale}; adaptive mode needs the same scale")
        self.source, self.enhancer, self.sinks, self.config = source, enhancer, list(sinks), config
        self.controls = controls or Controls(strength=float(getattr(enhancer, "strength", 1.0)))
        self.on_stats = on_stats if isinstance(on_stats, (list, tuple)) else ([on_stats] if on_stats else [])
        self.adaptive = (AdaptiveController(config.target_fps, primary=enhancer, light=light_enhancer,
                                            min_scale=config.min_scale) if config.target_fps else None)
        self.stats = Stats()
        self.last_stats: dict = {}
        self.summary: dict | None = None
        self._slot = LatestSlot()
        self._stop = threading.Event()
        self._capture_done = threading.Event()
        self._capture_error: BaseException | None = None
        self._failures = 0
        self._stopped_hung = False
        self._alive_t = 0.0
        self._latest: Captured | None = None
        self._sizes = (None, None, None, None)
        self._runners: list[SinkRunner] = []
        self._pending_snaps: list = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._ran = False
        self._loop_end: float | None = None

    # --- public control -------------------------------------------------------------------------
    def start(self) -> "Preview":
        """Run in a background thread (the web server and tests use this)."""
        self._thread = threading.Thread(target=self._run_bg, name="preview", daemon=True)
        self._thread.start()
        return self

    def _run_bg(self):
        try:
            self.run()
        except BaseException as e:  # surfaced by wait()
            self._error = e

    def wait(self, timeout: float | None = None) -> dict | None:
        if self._thread is not None:
            self._thread.join(timeout)
        if self._error is not None:
            raise self._error
        return self.summary

    def stop(self):
        """Ask the loop to finish; safe from signal handlers and other threads."""
        self._stop.set()
        self._slot.wake()

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict:
        if self._ran:
            raise ConfigError("a Preview runs once; make a new one")
        self._ran = True
        reason = "error"
        capture = threading.Thread(target=self._capture, name="capture", daemon=True)
        try:
            for sink in self.sinks:
                sink.bind(controls=self.controls, stats=lambda: self.last_stats)
            for sink in self.sinks:  # before the camera: a sink that cannot open must not hold it
                sink.start()
                runner = SinkRunner(sink)
                runner.start()
                self._runners.append(runner)
            self.source.start()
            self.stats = Stats()
            self._alive_t = time.perf_counter()
            capture.start()
            reason = self._loop()
            self._loop_end = time.perf_counter()
        except KeyboardInterrupt:
            reason = "interrupted"
            raise
        except BaseException as e:
            reason = f"error: {e}"
            raise
        finally:
            # A sink that failed on the last frames (shown after the loop's last check) or while stopping
            # (a recording that could not be finished) fails the run too.
            stop_errors = self._teardown(capture)  # first: it lets the sinks show what is pending
            late = [(r.sink.name, r.error) for r in self._runners if r.error is not None] + stop_errors
            raised = bool(late) and not reason.startswith("error") and reason != "interrupted"
            if raised:
                reason = "error: sink {} failed: {}".format(*late[0])
            for name, e in late[1 if raised else 0:]:  # the others (another error may be on its way out)
                log.error("sink %s failed: %s", name, e)
            self.summary = self.stats.summary(stop_reason=reason, until=self._loop_end, **self._extra())
            self._emit(self.summary)
        if raised:
            raise SinkError("sink {} failed: {}".format(*late[0])) from late[0][1]
        return self.summary

    def _loop(self) -> str:
        cfg, stats = self.config, self.stats
        next_tick = stats.t0 + cfg.stats_interval
        while True:
            if self._stop.is_set():
                return "stopped"
            if self.controls.quit_requested.is_set():
                return "quit"
            now = time.perf_counter()
            if cfg.seconds is not None and now - stats.t0 >= cfg.seconds:
                return "seconds"
            item = self._slot.get(timeout=0.05)
            if item is not None:
                self._process(item)
            self._serve_snapshots()
            for r in self._runners:
                if r.error is not None:
                    raise SinkError(f"sink {r.sink.name} failed: {r.error}") from r.error
            if item is not None and cfg.frames is not None and stats.processed >= cfg.frames:
                return "frames"
            if item is None:
                if self._capture_done.is_set():
                    if self._capture_error is not None:
                        raise self._capture_error
                    if self._slot.empty():  # else the last frame came after the wait: the next turn takes it
                        return "end of source"
                elif time.perf_counter() - self._alive_t > cfg.stall_timeout:
                    self._restart_hung()
            now = time.perf_counter()
            if now >= next_tick:
                self._tick()
                next_tick = max(next_tick + cfg.stats_interval, now)

    def _process(self, item: Captured):
        t_start = time.perf_counter()
        st = self.controls.state
        frame = item.frame
        h, w = frame.shape[:2]
        s = int(self.enhancer.scale)
        engine_ms = None
        if st.enhance:
            enh, scale = self.adaptive.current if self.adaptive else (self.enhancer, 1.0)
            if getattr(enh, "strength", None) != st.strength:
                enh.strength = st.strength
            align = getattr(getattr(enh, "card", None), "align", 1)
            pw, ph = _processed_size(w, h, scale, align) if scale < 1.0 else (w, h)
            src = resize(frame, pw, ph) if (pw, ph) != (w, h) else np.ascontiguousarray(frame)
            t0 = time.perf_counter()
            out = enh.enhance(src)
            t1 = time.perf_counter()
            if not (isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == (ph * s, pw * s, 3)):
                got = f"{getattr(out, 'shape', None)} {getattr(out, 'dtype', type(out).__name__)}"
                raise EdgeEnhanceError(f"enhancer {model_name(enh)} returned {got} for a {ph}x{pw} frame; "
                                       f"expected ({ph * s}, {pw * s}, 3) uint8")
            e = getattr(enh, "engine_ms", None)
            engine_ms = float(e) if isinstance(e, (int, float)) else (t1 - t0) * 1000
            if (pw, ph) != (w, h):
                out = resize(out, w * s, h * s)
            self._sizes = ((w, h), (pw, ph), (w * s, h * s), scale)
        else:
            out = upscale(frame, s)
            self._sizes = ((w, h), None, (w * s, h * s), None)
        t_done = time.perf_counter()
        self.stats.on_processed(latency_s=t_done - item.t, engine_ms=engine_ms,
                                busy_ms=(t_done - t_start) * 1000 if st.enhance else None)
        self._latest = item
        result = Result(seq=item.seq, before=frame, after=out, t_capture=item.t, t_done=t_done,
                        enhanced=st.enhance, split=st.split, overlay=st.overlay, stats=self.last_stats)
        for r in self._runners:
            r.put(result)

    def _extra(self) -> dict:
        st = self.controls.state
        size_in, size_proc, size_out, proc_scale = self._sizes
        return {
            "source": self.source.name,
            "model": model_name(self.enhancer),
            "active_model": model_name(self.adaptive.current[0]) if self.adaptive else model_name(self.enhancer),
            "scale": int(self.enhancer.scale),
            "enhance": st.enhance, "split": st.split, "strength": st.strength,
            "input_size": list(size_in) if size_in else None,
            "processed_size": list(size_proc) if size_proc else None,
            # the input fraction that frame was processed at (adaptive's "scale" is the next frame's)
            "processed_scale": proc_scale,
            "output_size": list(size_out) if size_out else None,
            "adaptive": self.adaptive.describe() if self.adaptive else None,
            "sink_dropped": {r.sink.name: r.dropped for r in self._runners},
        }

    def _tick(self):
        d = self.stats.window(**self._extra())
        if self.adaptive and self.adaptive.update(d.get("busy_ms")):
            enh, scale = self.adaptive.current
            log.info("adaptive: %s at %.0f%% input size to hold %g fps (busy %.1f ms/frame)",
                     model_name(enh), scale * 100, self.adaptive.target_fps, d["busy_ms"])
            d["adaptive"] = self.adaptive.describe()
        self.last_stats = d
        self._emit(d)

    def _emit(self, d: dict):
        for cb in self.on_stats:
            try:
                cb(stats=d)
            except Exception as e:  # a broken stats consumer must not kill the preview
                log.error("stats callback failed: %s", e)

    # --- capture thread ---------------------------------------------------------------------------
    def _capture(self):
        src, seq = self.source, 0
        # A file, folder or synthetic source read unpaced (@0) hands over every frame, waiting for the
        # loop to take each (dropping them, it spun as fast as the disk allowed and took the CPU inference needed).
        hold = None if src.paced else self._stop
        try:
            while not self._stop.is_set():
                try:
                    frame = src.read()
                    failure = "delivered no frame"
                except Exception as e:
                    if not src.live:
                        raise SourceError(f"{src.name}: read failed after {seq} frames ({type(e).__name__}: {e})") from e
                    frame, failure = None, f"{type(e).__name__}: {e}"
                self._stopped_hung = False  # a read that hung has ended
                if frame is None:
                    if not src.live:
                        return  # end of a file / folder / bounded synthetic run
                    self._reconnect(failure, seq)
                    continue
                self._failures = 0
                seq += 1
                self._alive_t = t = time.perf_counter()
                self.stats.on_capture(dropped=self._slot.put(Captured(seq, t, frame), hold))
        except BaseException as e:
            self._capture_error = e
        finally:
            self._capture_done.set()
            self._slot.wake()

    def _restart_hung(self):
        """A live source that neither delivers nor fails is stopped, so that its read() ends and the capture
        thread reconnects it as it does a lost one; one whose read() not even that ends is lost."""
        src, cfg = self.source, self.config
        hung = f"{src.name}: no frame for {cfg.stall_timeout:g} s after {self.stats.captured} frames; the source hung"
        if not src.live:
            raise SourceLostError(hung)
        if self._failures >= cfg.reconnects:
            raise SourceLostError(hung + (f" after {self._failures} reconnect(s)" if cfg.reconnects
                                          else "; reconnecting disabled"))
        if self._stopped_hung:
            raise SourceLostError(hung + "; stopping it to reconnect did not end its read")
        log.warning("%s; stopping it to reconnect", hung)
        self._stopped_hung = True
        self._alive_t = time.perf_counter()
        try:
            src.stop()
        except Exception as e:  # its read() failing or ending is what matters
            log.debug("%s: stop: %s", src.name, e)

    def _reconnect(self, failure: str, seq: int):
        src, cfg = self.source, self.config
        log.warning("%s %s after %d frames; reconnecting", src.name, failure, seq)
        errors = []
        while self._failures < cfg.reconnects:
            self._failures += 1
            if self._stop.wait(cfg.reconnect_delay * self._failures):
                return
            self._alive_t = time.perf_counter()
            try:
                src.stop()
            except Exception:  # already gone; start() below is what matters
                pass
            try:
                src.start()
            except Exception as e:
                errors.append(f"attempt {self._failures}: {e}")
                continue
            self.stats.on_reconnect()
            log.info("%s reconnected (attempt %d)", src.name, self._failures)
            return
        tried = f"; {len(errors)} reconnect attempt(s) failed: " + "; ".join(errors) if errors else ""
        raise SourceLostError(f"{src.name}: source lost after {seq} frames ({failure}){tried}"
                              + ("" if cfg.reconnects else "; reconnecting disabled"))

    # --- snapshots --------------------------------------------------------------------------------
    def _serve_snapshots(self):
        self._pending_snaps += self.controls.take_snapshot_requests()
        if not self._pending_snaps or self._latest is None:
            return
        pending, self._pending_snaps = self._pending_snaps, []
        try:
            path = self.snapshot(self._latest)
        except EdgeEnhanceError as e:
            log.error("snapshot failed: %s", e)
            _settle(pending, error=e)
            return
        _settle(pending, result=path)

    def snapshot(self, item: Captured) -> str:
        """The full-quality still: primary model, full input size, current strength, atomic PNG."""
        folder = self.config.snapshot_dir
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise OutputError(f"{folder}: cannot create snapshot folder ({e})") from None
        enh = self.enhancer
        strength = self.controls.state.strength
        if getattr(enh, "strength", None) != strength:
            enh.strength = strength
        out = enh.enhance(np.ascontiguousarray(item.frame))
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = f"snapshot-{stamp}-{item.seq:06d}"
        path, n = os.path.join(folder, base + ".png"), 1
        while os.path.exists(path):
            path, n = os.path.join(folder, f"{base}-{n}.png"), n + 1
        save_png_atomic(out, path)
        log.info("snapshot %s (%dx%d)", path, out.shape[1], out.shape[0])
        return path

    def _teardown(self, capture: threading.Thread) -> list:
        """Stop everything; returns (sink name, error) for each sink that failed to stop."""
        self._stop.set()
        self._slot.wake()
        if capture.is_alive():
            capture.join(2.0)  # a read() hung in a driver must not hang us: the thread is a daemon
        try:
            (getattr(self.source, "close", None) or self.source.stop)()
        except Exception as e:
            log.warning("%s: error while releasing: %s", self.source.name, e)
        for r in self._runners:
            r.close()
        failed = []
        for sink in self.sinks:
            try:
                sink.stop()
            except Exception as e:
                failed.append((sink.name, e))
        _settle(self._pending_snaps + self.controls.take_snapshot_requests(),
                error=SourceError("preview stopped before a frame was available for the snapshot"))
        return failed
