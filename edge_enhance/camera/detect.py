"""What this machine can do, detected once on first use (never at import) and cached."""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import platform as _platform
import sys
from dataclasses import dataclass

from .errors import BackendUnavailableError

CAMERA_EXTRA = "pip install 'edge-enhance[camera]'"


@dataclass(frozen=True)
class PlatformInfo:
    system: str
    machine: str
    board: str | None  # e.g. "Raspberry Pi 5 Model B Rev 1.0", from the device tree
    has_display: bool

    @property
    def is_raspberry_pi(self) -> bool:
        return bool(self.board) and "raspberry pi" in self.board.lower()


def _read_board() -> str | None:
    try:
        with open("/proc/device-tree/model", "rb") as f:
            return f.read().rstrip(b"\x00\n").decode("utf-8", "replace") or None
    except OSError:
        return None


@functools.lru_cache(maxsize=None)
def platform_info() -> PlatformInfo:
    system = _platform.system()
    if system == "Linux":
        display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    else:
        display = system in ("Darwin", "Windows")
    return PlatformInfo(system=system, machine=_platform.machine(), board=_read_board(), has_display=display)


@functools.lru_cache(maxsize=None)
def has_picamera2() -> bool:
    return importlib.util.find_spec("picamera2") is not None


def _quiet(cv2):
    """OpenCV's own C++ warnings ("[ WARN:0@0.076] ... can't open camera by index") and its FFmpeg's
    ("[mov,mp4,... @ 0x55d...] moov atom not found") repeat what our one error says; keep them for -vv,
    or when the user set OPENCV_LOG_LEVEL / OPENCV_FFMPEG_LOGLEVEL."""
    if logging.getLogger("edge_enhance").isEnabledFor(logging.DEBUG):
        return cv2
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET; read when a capture opens
    lg = getattr(cv2.utils, "logging", None) if hasattr(cv2, "utils") else None
    if lg is not None and "OPENCV_LOG_LEVEL" not in os.environ:
        lg.setLogLevel(lg.LOG_LEVEL_ERROR)
    return cv2


def import_cv2():
    """OpenCV, or one error naming the extra that provides it."""
    try:
        import cv2
    except ImportError as e:
        raise BackendUnavailableError(f"OpenCV is not installed ({e}); {CAMERA_EXTRA}") from None
    return _quiet(cv2)


def import_picamera2():
    try:
        from picamera2 import Picamera2
    except ImportError as e:
        hint = ("on Raspberry Pi OS run `sudo apt install python3-picamera2` and create the venv with "
                "--system-site-packages (see demo_raspberry/setup.sh)")
        raise BackendUnavailableError(f"picamera2 is not available ({e}): {hint}; "
                                      f"OpenCV sources need {CAMERA_EXTRA}") from None
    return Picamera2


def has_gui() -> bool:
    """Whether the installed OpenCV can open a window (the camera extra's headless build cannot)."""
    cv2 = optional_cv2()
    if cv2 is None:
        return False
    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines()
                if line.strip().startswith("GUI:")), "")
    return gui.upper() not in ("", "NONE")


def optional_cv2():
    """OpenCV if present, else None: used where Pillow is an adequate (slower) fallback."""
    if "cv2" in sys.modules:
        return sys.modules["cv2"]
    try:
        import cv2
    except ImportError:
        return None
    return _quiet(cv2)
