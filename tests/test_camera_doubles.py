"""Test doubles for the camera tests (imported by test_camera*.py). NOT models: the enhancer here
is a nearest-neighbour repeat so outputs are exactly predictable; nothing here ships in the package."""
from __future__ import annotations

import threading
import time

import numpy as np

from edge_enhance.camera.sinks import Sink
from edge_enhance.camera.sources import Source


class RepeatEnhancer:
    """Test double for the Enhancer contract: out = nearest-neighbour repeat by ``scale``."""

    def __init__(self, scale: int = 2, name: str = "nearest-repeat-test-double"):
        self.scale, self.strength, self.name = scale, 1.0, name
        self.calls = 0
        self.strengths_seen: list[float] = []
        self.engine_ms = 0.0

    def enhance(self, frame: np.ndarray) -> np.ndarray:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise TypeError(f"expected HxWx3 uint8, got {frame.shape} {frame.dtype}")
        self.calls += 1
        if not self.strengths_seen or self.strengths_seen[-1] != self.strength:
            self.strengths_seen.append(self.strength)
        return frame.repeat(self.scale, 0).repeat(self.scale, 1)


class GatedEnhancer(RepeatEnhancer):
    """A slow enhancer whose slowness is counted in frames, not seconds: each call returns only
    after the source has produced ``k`` more frames, so latest-frame-wins must drop >= k-2 per step."""

    def __init__(self, source, k: int, **kw):
        super().__init__(**kw)
        self.source, self.k = source, k

    def enhance(self, frame):
        start = self.source.index
        deadline = time.monotonic() + 10  # guard: a broken loop fails the test instead of hanging it
        while self.source.index < start + self.k:
            if time.monotonic() > deadline:
                raise RuntimeError("source stopped advancing")
            time.sleep(0.0005)
        return super().enhance(frame)


class FlakySource(Source):
    """A live camera double that fails after ``ok_frames`` reads; ``recover`` says whether a
    restart brings it back."""

    live = True

    def __init__(self, ok_frames: int, *, recover: bool, size=(48, 32)):
        self.name = "flaky-test-camera"
        self.ok_frames, self.recover = ok_frames, recover
        self.frame = np.zeros((size[1], size[0], 3), np.uint8)
        self.reads = self.starts = self.stops = 0
        self.failed = False
        self.started = False

    def start(self):
        self.starts += 1
        if self.failed and not self.recover:
            raise OSError("no such device /dev/video9")
        self.failed = False
        self.reads = 0
        self.started = True

    def read(self):
        if not self.started:
            raise OSError("not started")
        if self.reads >= self.ok_frames and (self.starts == 1 or not self.recover):
            self.failed = True
            raise OSError("device unplugged")
        self.reads += 1
        time.sleep(0.001)
        return self.frame

    def stop(self):
        self.stops += 1
        self.started = False


class HangingSource(FlakySource):
    """Delivers ``ok_frames`` and then blocks in read() until released (a wedged driver)."""

    def __init__(self, ok_frames: int):
        super().__init__(ok_frames, recover=False)
        self.release = threading.Event()

    def read(self):
        if self.reads >= self.ok_frames:
            self.release.wait(30)
            return None
        return super().read()


class RecordingSink(Sink):
    name = "recording"

    def __init__(self):
        self.results = []
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def show(self, result):
        self.results.append(result)

    def stop(self):
        self.stopped = True


class StallingSource(FlakySource):
    """Delivers ``ok_frames`` and then blocks in read() until stop() ends it (a wedged camera driver that a
    restart frees); ``recover``: after a restart it works, else it hangs at once again."""

    def __init__(self, ok_frames: int, *, recover: bool = True):
        super().__init__(ok_frames, recover=recover)
        self.freed = threading.Event()

    def start(self):
        self.starts += 1
        self.reads = 0
        self.started = True
        self.freed.clear()

    def read(self):
        if self.reads >= (self.ok_frames if self.starts == 1 else 0) and (self.starts == 1 or not self.recover):
            self.freed.wait(30)
            return None
        return super().read()

    def stop(self):
        super().stop()
        self.freed.set()
