"""Frame sources, picamera2 style: construct, ``start()``, ``read()`` until None, ``stop()``.

``read()`` returns an HxWx3 uint8 RGB array (possibly a non-contiguous view: zero-copy where the
source allows) or None at the end of a finite source. A live source (camera) raises or returns None
when it fails; the preview loop then reconnects by ``stop()`` + ``start()``.

>>> s = open_source("synthetic:64x32@0"); s.start(); s.read().shape
(32, 64, 3)
"""
from __future__ import annotations

import logging
import os
import re
import time

import numpy as np

from ..errors import EdgeEnhanceError
from ..imageio import load_image
from .errors import ConfigError, SourceError
from .detect import has_picamera2, import_cv2, import_picamera2, platform_info

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def frames_missing(done: int, total: int | None) -> bool:
    """Whether a video that decoded ``done`` frames lacks some of the ``total`` its header announces.
    Container frame counts are estimates for some formats: a frame or two short is not a damaged file."""
    return bool(total) and total - done > max(1, total // 50)


class _Pacer:
    """Sleeps so a file-like source delivers frames at a camera's rate (fps <= 0: as fast as read)."""

    def __init__(self, fps: float):
        self.period = 1.0 / fps if fps and fps > 0 else 0.0
        self._next = None

    def wait(self):
        if not self.period:
            return
        now = time.monotonic()
        if self._next is None or now - self._next > 1.0:  # first frame, or fell far behind: re-anchor
            self._next = now
        elif self._next > now:
            time.sleep(self._next - now)
        self._next += self.period


class Source:
    """Base class. ``live`` sources are reconnected on failure; finite ones end with None."""

    name = "source"
    live = False
    fps: float | None = None

    @property
    def paced(self) -> bool:
        """Frames come at a rate (a camera's, or @FPS): else (a file, folder or synthetic source at @0) as
        fast as read, which the loop takes one by one and a recording writes once each."""
        return self.live or (self.fps or 0) > 0

    def start(self):
        pass

    def stop(self):
        pass

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class SyntheticSource(Source):
    """Deterministic moving pattern: frame ``i`` is always the same pixels (tests, benchmarks).

    Frames are views into a pre-rendered strip twice the frame width (zero-copy), so producing
    one costs nothing and the measured rate is the loop's, not the generator's.
    """

    def __init__(self, width: int = 640, height: int = 360, *, fps: float = 30.0, frames: int | None = None):
        if width < 8 or height < 8:
            raise ConfigError(f"synthetic source size {width}x{height} is too small (min 8x8)")
        self.width, self.height, self.fps, self.limit = width, height, fps, frames
        self.name = f"synthetic:{width}x{height}"
        self._strip = self._render(width, height)
        self._pacer = _Pacer(fps)
        self.index = 0

    @staticmethod
    def _render(w: int, h: int) -> np.ndarray:
        # Strip of width 2w whose right half repeats the left, so every window is seamless.
        x = np.arange(2 * w)[None, :] % w
        y = np.arange(h)[:, None]
        r = (x * 255 // max(w - 1, 1)).astype(np.uint8) + np.zeros((h, 1), np.uint8)
        g = (y * 255 // max(h - 1, 1)).astype(np.uint8) + np.zeros((1, 2 * w), np.uint8)
        checks = (((x // 16) + (y // 16)) % 2 * 160 + 40).astype(np.uint8)
        fine = ((x + y) % 6 < 2) & (y > h // 2)  # thin diagonal lines: detail an SR model can act on
        b = np.where(fine, 255, checks).astype(np.uint8)
        return np.ascontiguousarray(np.stack([r, g, b], axis=-1))

    def frame_at(self, i: int) -> np.ndarray:
        off = (i * 4) % self.width
        return self._strip[:, off:off + self.width]

    def read(self):
        if self.limit is not None and self.index >= self.limit:
            return None
        self._pacer.wait()
        frame = self.frame_at(self.index)
        self.index += 1
        return frame


class OpenCVSource(Source):
    """USB webcam (``cv:0``) through cv2.VideoCapture with a one-frame driver buffer (low latency)."""

    live = True

    def __init__(self, device: int | str = 0, *, width: int | None = None, height: int | None = None,
                 fps: float | None = None):
        self.device, self.width, self.height, self.fps = device, width, height, fps
        self.name = f"cv:{device}"
        self._cap = None

    def start(self):
        cv2 = import_cv2()
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open camera {self.device!r} (unplugged, busy, or no permission)")
        # One buffered frame: the driver must not queue stale frames behind our latest-frame-wins slot.
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        if self.width and self.height:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.fps:
            cap.set(cv2.CAP_PROP_FPS, self.fps)
        self.fps = self.fps or (cap.get(cv2.CAP_PROP_FPS) or None)
        self._cap = cap

    def read(self):
        if self._cap is None:
            raise SourceError(f"{self.name}: read() before start()")
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            return None
        return bgr[..., ::-1]  # RGB view, no copy

    def stop(self):
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(OpenCVSource):
    """A video file played at its own frame rate (like a camera) or, with fps=0, as fast as read."""

    live = False

    def __init__(self, path: str, *, fps: float | None = None):
        if not os.path.isfile(path):
            raise SourceError(f"{path}: no such video file")
        super().__init__(path)
        self.name = f"file:{path}"
        self._want_fps = fps

    def start(self):
        cv2 = import_cv2()
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.device}: cannot decode video (unknown container or codec)")
        native = cap.get(cv2.CAP_PROP_FPS) or 30.0
        self.fps = native if self._want_fps is None else self._want_fps
        self.native_fps = native
        self.declared = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT)))  # what the header says; 0 unknown
        self.frames = 0
        self._pacer = _Pacer(self.fps)
        self._cap = cap

    def read(self):
        frame = super().read()
        if frame is not None:
            self.frames += 1
            self._pacer.wait()
        elif frames_missing(self.frames, self.declared):  # it ended quietly, as a whole clip does
            log.warning("%s: the video ended after %d of the %d frames its header announces (a truncated or "
                        "damaged file?)", self.device, self.frames, self.declared)
        return frame


class FolderSource(Source):
    """The images of a folder in name order, once, at ``fps`` (default 2). An image that cannot be read is
    skipped with a warning naming it, as a slideshow would; only a folder of which none can be read fails."""

    def __init__(self, folder: str, *, fps: float = 2.0):
        if not os.path.isdir(folder):
            raise SourceError(f"{folder}: no such folder")
        self.files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        self.name, self.fps = f"folder:{folder}", fps
        self._pacer = _Pacer(fps)
        self._i = self._read = 0

    def start(self):
        self._i = self._read = 0

    def read(self):
        while self._i < len(self.files):
            path = self.files[self._i]
            self._i += 1
            try:  # as `enhance` reads photos: EXIF orientation applied, 16 bits scaled (not clipped) to 8
                rgb = load_image(path).rgb
            except EdgeEnhanceError as e:
                if self._i == len(self.files) and not self._read:
                    raise SourceError(f"{self.name}: none of its {len(self.files)} images could be read "
                                      f"(the last: {e})") from None
                log.warning("%s: skipped an image that cannot be read: %s", self.name, e)
                continue
            self._read += 1
            self._pacer.wait()
            return (rgb >> 8).astype(np.uint8) if rgb.dtype == np.uint16 else rgb
        return None


class PiCamera2Source(Source):
    """Raspberry Pi camera through picamera2: one Picamera2 object for the source's whole life.

    ``stream="lores"`` takes the ISP's second, smaller output (YUV420, converted here), leaving
    ``main`` at full size for snapshots on the camera side.
    """

    live = True

    def __init__(self, *, stream: str = "main", size: tuple[int, int] = (640, 360),
                 main_size: tuple[int, int] | None = None, buffer_count: int = 4, camera_num: int = 0,
                 fps: float | None = 30.0):
        if stream not in ("main", "lores"):
            raise ConfigError(f"picamera2 stream {stream!r} must be 'main' or 'lores'")
        if buffer_count < 2:
            raise ConfigError(f"picamera2 buffer_count {buffer_count} must be >= 2 (capture overlaps inference)")
        self.stream, self.size, self.main_size = stream, tuple(size), main_size
        self.buffer_count, self.camera_num, self.fps = buffer_count, camera_num, fps
        self.name = f"picamera2:{stream}"
        self._cam = None
        self._running = False

    def start(self):
        if self._cam is None:  # created once; reconnects only restart it
            Picamera2 = import_picamera2()
            try:
                cam = Picamera2(self.camera_num)
            except Exception as e:  # picamera2 raises bare IndexError/RuntimeError when no camera
                raise SourceError(f"{self.name}: no camera {self.camera_num} ({type(e).__name__}: {e})") from None
            # "BGR888" in libcamera naming is R,G,B byte order in memory: what we want, no swap.
            if self.stream == "main":
                cfg = cam.create_video_configuration(main={"size": self.size, "format": "BGR888"},
                                                     buffer_count=self.buffer_count)
            else:
                main = self.main_size or (self.size[0] * 2, self.size[1] * 2)
                cfg = cam.create_video_configuration(main={"size": main, "format": "BGR888"},
                                                     lores={"size": self.size, "format": "YUV420"},
                                                     buffer_count=self.buffer_count)
            if self.fps:
                cfg["controls"] = {**cfg.get("controls", {}), "FrameRate": float(self.fps)}
            cam.configure(cfg)
            self._cam = cam
        if not self._running:
            self._cam.start()
            self._running = True

    def read(self):
        arr = self._cam.capture_array(self.stream)
        if self.stream == "lores":
            cv2 = import_cv2()
            return cv2.cvtColor(arr, cv2.COLOR_YUV2RGB_I420)
        return arr[..., :3]

    def stop(self):
        if self._cam is not None and self._running:
            self._cam.stop()
            self._running = False

    def close(self):
        """Release the camera for other processes (the loop calls this once, at the very end)."""
        self.stop()
        if self._cam is not None:
            self._cam.close()
            self._cam = None


_SIZE = re.compile(r"^(\d+)x(\d+)$")


def _split_fps(spec: str) -> tuple[str, float | None]:
    """'synthetic:640x360@15' -> ('synthetic:640x360', 15.0)."""
    if "@" in spec:
        body, _, f = spec.rpartition("@")
        try:
            fps = float(f)
        except ValueError:
            if spec.startswith(("file:", "folder:")):  # an @ of the name itself: file:take@2x.mp4
                return spec, None
            fps = -1.0
        if not fps >= 0 or fps == float("inf"):
            raise ConfigError(f"source {spec!r}: frame rate after '@' must be a number >= 0 (0: unpaced)")
        return body, fps
    return spec, None


def default_source_spec() -> str:
    info = platform_info()
    return "picamera2" if info.is_raspberry_pi and has_picamera2() else "cv:0"


def open_source(spec: str) -> Source:
    """Build a source from its command-line spec (nothing is opened until ``start()``).

    picamera2 | picamera2:lores | picamera2:lores:320x240 | cv:0 (or 0, /dev/video0) | file:clip.mp4 |
    folder:DIR | synthetic:640x360, each optionally followed by @FPS (synthetic@0: unpaced).
    """
    if spec == "auto":
        spec = default_source_spec()
    body, fps = _split_fps(spec)
    kind, _, arg = body.partition(":")
    if kind == "synthetic":
        m = _SIZE.match(arg or "640x360")
        if not m:
            raise ConfigError(f"source {spec!r}: expected synthetic:WIDTHxHEIGHT")
        return SyntheticSource(int(m[1]), int(m[2]), fps=30.0 if fps is None else fps)
    if kind == "picamera2":
        stream, _, size = arg.partition(":")
        kw = {}
        if size:
            m = _SIZE.match(size)
            if not m:
                raise ConfigError(f"source {spec!r}: expected picamera2:main|lores[:WIDTHxHEIGHT]")
            kw["size"] = (int(m[1]), int(m[2]))
        return PiCamera2Source(stream=stream or "main", fps=30.0 if fps is None else fps, **kw)
    if body.isdigit() or body.startswith("/dev/video"):  # `--source 1`, `--source /dev/video2`: a webcam
        kind, arg = "cv", body
    if kind == "cv":
        dev = arg or "0"
        return OpenCVSource(int(dev) if dev.isdigit() else dev, fps=fps)
    if kind == "file":
        if not arg:
            raise ConfigError(f"source {spec!r}: expected file:PATH")
        return VideoFileSource(arg, fps=fps)
    if kind == "folder":
        if not arg:
            raise ConfigError(f"source {spec!r}: expected folder:DIR")
        return FolderSource(arg, fps=2.0 if fps is None else fps)
    raise ConfigError(f"unknown source {spec!r}: use picamera2, cv:N, file:PATH, folder:DIR or synthetic:WxH")
