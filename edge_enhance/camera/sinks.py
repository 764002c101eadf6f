"""Sinks, picamera2 style: ``start()``, ``show(result)`` for each processed frame, ``stop()``.

The loop never calls ``show`` itself: each sink runs on its own thread fed through a
latest-frame-wins slot (:class:`SinkRunner`), so a slow display or encoder drops frames for
itself and never holds up inference.
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
from dataclasses import dataclass, field

import numpy as np

from ..atomic import closed_temp
from .detect import import_cv2, platform_info
from .errors import ConfigError, OutputError, SinkError
from .frames import compose, draw_overlay
from .sources import frames_missing
from .stats import overlay_lines

log = logging.getLogger(__name__)


@dataclass
class Result:
    """One processed frame as sinks see it. ``before`` is the captured frame (input size),
    ``after`` the enhanced frame (output size, or a plain upscale when enhancement is off)."""

    seq: int
    before: np.ndarray
    after: np.ndarray
    t_capture: float
    t_done: float
    enhanced: bool = True
    split: bool = False
    overlay: bool = True
    stats: dict = field(default_factory=dict)

    def picture(self, *, overlay: bool | None = None) -> np.ndarray:
        """The frame to display: split-screen and stats overlay applied, on a fresh array."""
        out = compose(self.before, self.after, split=self.split)
        if self.overlay if overlay is None else overlay:
            draw_overlay(out, overlay_lines(self.stats))
        return out


class Sink:
    name = "sink"

    def start(self):
        pass

    def show(self, result: Result):
        raise NotImplementedError

    def stop(self):
        pass

    def bind(self, *, controls, stats) -> None:
        """Called once before start() with the loop's Controls and a zero-argument stats getter."""


class NullSink(Sink):
    """Headless: counts frames, keeps nothing (benchmarks, tests)."""

    name = "null"

    def __init__(self):
        self.frames = 0
        self.last_seq = None

    def show(self, result: Result):
        self.frames += 1
        self.last_seq = result.seq


class WindowSink(Sink):
    """An OpenCV window. Keys: e toggle enhancement, s split, +/- strength, p or space snapshot,
    o overlay, q or Esc quit."""

    name = "window"
    KEYS = {ord("e"): "toggle", ord("s"): "split", ord("+"): "strength_up", ord("="): "strength_up",
            ord("-"): "strength_down", ord("p"): "snapshot", ord(" "): "snapshot", ord("o"): "overlay",
            ord("q"): "quit", 27: "quit"}

    def __init__(self, title: str = "edge-enhance preview"):
        self.title = title
        self._controls = None
        self._cv2 = None

    def bind(self, *, controls, stats):
        self._controls = controls

    def start(self):
        info = platform_info()
        if not info.has_display:
            raise SinkError("window sink: no display (DISPLAY / WAYLAND_DISPLAY unset); "
                            "use --sink web:127.0.0.1:8080 or --sink null")
        cv2 = import_cv2()
        try:
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error as e:
            # The camera extra installs the headless wheel; the GUI one clashes with it, so one replaces the other.
            raise SinkError(f"window sink: this OpenCV has no GUI support ({e.msg.strip() if hasattr(e, 'msg') else e}); "
                            "pip uninstall opencv-contrib-python-headless, then pip install opencv-contrib-python "
                            "(the two clash), or use --sink web:127.0.0.1:8080") from None
        self._cv2 = cv2

    def show(self, result: Result):
        cv2 = self._cv2
        cv2.imshow(self.title, cv2.cvtColor(result.picture(), cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        if key != 0xFF and key in self.KEYS and self._controls is not None:
            self._controls.apply(self.KEYS[key])

    def stop(self):
        if self._cv2 is not None:
            self._cv2.destroyWindow(self.title)
            self._cv2.waitKey(1)
            self._cv2 = None


FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "XVID"}


def open_video_writer(path: str, fps: float, width: int, height: int):
    """An opened cv2.VideoWriter writing to a temp file beside ``path``; returns (writer, temp path).

    Raises OutputError naming the file when the folder or the container cannot be written.
    """
    cv2 = import_cv2()
    ext = os.path.splitext(path)[1].lower()
    if ext not in FOURCC:
        raise OutputError(f"{path}: cannot write video container {ext or '(none)'!r}; "
                          f"use one of {', '.join(sorted(FOURCC))}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} does not exist")
    try:
        tmp = closed_temp(folder, ".tmp-", ext)  # the writer reopens the file, which keeps its mode
    except OSError as e:
        raise OutputError(f"{path}: cannot write to {folder} ({e})") from None
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*FOURCC[ext]), float(fps or 30.0), (width, height))
    if not writer.isOpened():
        writer.release()
        os.unlink(tmp)
        raise OutputError(f"{path}: this OpenCV build cannot write {ext} ({FOURCC[ext]}) video")
    return writer, tmp


def check_written(path: str, tmp: str, frames: int) -> None:
    """Raise OutputError naming ``path`` unless the finished temp file ``tmp`` reads back ``frames`` frames.

    cv2.VideoWriter.write reports nothing: a full disk or a removed folder shows only here, as an MP4
    without its index (unplayable) or an AVI cut short (``frames_missing``: a frame or two short is not).
    """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"{path}: folder {folder} was removed while writing; the video is lost")
    cv2 = import_cv2()
    cap = cv2.VideoCapture(tmp)
    got = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))) if cap.isOpened() else 0
    cap.release()
    if frames_missing(got, frames):
        free = shutil.disk_usage(folder).free
        why = f"the disk is full, {free // 1024} KiB free" if free < 1 << 20 else "the write failed"
        raise OutputError(f"{path}: only {got} of the {frames} frames written can be read back ({why}); "
                          "the video is not written")


class VideoFileSink(Sink):
    """Writes displayed frames to a video file; the file appears (atomically) when the run ends."""

    name = "file"

    def __init__(self, path: str, *, fps=30.0, overlay: bool = False, timed=True):
        """``fps``: a number, or a callable read when the first frame arrives (a file source knows its
        rate only once started). ``timed`` (or a callable, read then): frames go into the file at their
        capture time, a frame repeated where the loop dropped some, so the video plays in real time; untimed
        (an unpaced file, every frame processed), each frame once."""
        if os.path.splitext(path)[1].lower() not in FOURCC:
            raise ConfigError(f"{path}: video sink needs one of {', '.join(sorted(FOURCC))}")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):  # said before the camera and the model start, not at the first frame
            raise ConfigError(f"{path}: folder {folder} does not exist")
        self.path, self.fps, self.overlay, self.timed = path, fps, overlay, timed
        self._writer = self._tmp = self._size = self._t0 = None
        self.frames = 0  # frames written, repeats included

    @property
    def every_frame(self) -> bool:
        """Untimed, every processed frame is written once: the loop waits for this sink, it drops none."""
        return not (self.timed() if callable(self.timed) else self.timed)

    def start(self):
        import_cv2()  # before the camera and the model: no OpenCV is said now, not at the first frame

    def show(self, result: Result):
        frame = result.picture(overlay=self.overlay)
        h, w = frame.shape[:2]
        if self._writer is None:
            self.fps = (self.fps() if callable(self.fps) else self.fps) or 30.0
            self.timed = self.timed() if callable(self.timed) else self.timed
            self._writer, self._tmp = open_video_writer(self.path, self.fps, w, h)
            self._size, self._t0 = (w, h), result.t_capture
        # Timed: this frame fills the slots up to its capture time (none if that slot is already written).
        n = round((result.t_capture - self._t0) * self.fps) + 1 - self.frames if self.timed else 1
        if n < 1:
            return
        cv2 = import_cv2()
        if (w, h) != self._size:  # folder sources may change size; a video stream cannot
            frame = cv2.resize(frame, self._size, interpolation=cv2.INTER_AREA)
        bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
        for _ in range(n):
            self._writer.write(bgr)
        self.frames += n

    def stop(self):
        if self._writer is None:
            return
        self._writer.release()
        self._writer = None
        try:  # a failed recording leaves the path alone: an earlier good file there is kept
            check_written(self.path, self._tmp, self.frames)
            os.replace(self._tmp, self.path)
        except OSError as e:
            raise OutputError(f"{self.path}: cannot finish the video ({e.strerror or e})") from None
        finally:
            if os.path.exists(self._tmp):
                os.unlink(self._tmp)
        log.info("wrote %d frames to %s", self.frames, self.path)


class SinkRunner:
    """Feeds one sink from its own thread; ``put`` never blocks (an unshown frame is replaced)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.dropped = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._item: Result | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"sink-{sink.name}", daemon=True)

    def start(self):
        self._thread.start()

    def put(self, result: Result):
        with self._cond:
            # A sink that keeps every frame (an untimed recording) is waited for, not replaced.
            while self._item is not None and getattr(self.sink, "every_frame", False) \
                    and self.error is None and self._thread.is_alive():
                self._cond.wait(0.05)
            if self._item is not None:
                self.dropped += 1
            self._item = result
            self._cond.notify_all()

    def _run(self):
        while True:
            with self._cond:
                while self._item is None and not self._closed:
                    self._cond.wait()
                if self._item is None:  # closed and drained
                    return
                item, self._item = self._item, None
                self._cond.notify_all()  # a put waiting for the slot
            try:
                self.sink.show(item)
            except BaseException as e:  # reported by the loop, which then stops
                log.error("sink %s failed: %s", self.sink.name, e)
                self.error = e
                return

    def close(self, timeout: float = 5.0):
        """Show what is pending, then end the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)
