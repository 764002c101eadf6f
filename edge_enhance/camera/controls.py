"""User controls shared by the window keys, the web page and the loop (thread-safe)."""
from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass

from .errors import ConfigError

STRENGTH_MIN, STRENGTH_MAX, STRENGTH_STEP = 0.0, 1.5, 0.1
ACTIONS = ("toggle", "split", "overlay", "strength_up", "strength_down", "snapshot", "quit")


@dataclass(frozen=True)
class ControlState:
    enhance: bool
    split: bool
    overlay: bool
    strength: float


class Controls:
    """Requested state; the inference loop reads it once per frame and applies it on its own thread
    (the enhancer is only ever touched by that thread)."""

    def __init__(self, *, strength: float = 1.0, enhance: bool = True, split: bool = False, overlay: bool = True):
        self._lock = threading.Lock()
        self._state = ControlState(enhance, split, overlay, self._clamp(strength))
        self._snapshots: list[Future] = []
        self.quit_requested = threading.Event()

    @staticmethod
    def _clamp(s: float) -> float:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or s != s:  # JSON true is not 1.0
            raise ConfigError(f"strength {s!r} must be a number in {STRENGTH_MIN}..{STRENGTH_MAX}")
        return round(min(max(float(s), STRENGTH_MIN), STRENGTH_MAX), 3)

    @property
    def state(self) -> ControlState:
        with self._lock:
            return self._state

    def _update(self, **kw):
        with self._lock:
            self._state = ControlState(**{**self._state.__dict__, **kw})
            return self._state

    def set_strength(self, value: float) -> ControlState:
        return self._update(strength=self._clamp(value))

    def apply(self, action: str) -> ControlState | Future:
        """One named action (a key press or a web button). 'snapshot' returns a Future of the path."""
        s = self.state
        if action == "toggle":
            return self._update(enhance=not s.enhance)
        if action == "split":
            return self._update(split=not s.split)
        if action == "overlay":
            return self._update(overlay=not s.overlay)
        if action == "strength_up":
            return self.set_strength(s.strength + STRENGTH_STEP)
        if action == "strength_down":
            return self.set_strength(s.strength - STRENGTH_STEP)
        if action == "snapshot":
            return self.request_snapshot()
        if action == "quit":
            self.quit_requested.set()
            return s
        raise ConfigError(f"unknown control {action!r}; one of {', '.join(ACTIONS)}")

    def request_snapshot(self) -> Future:
        f: Future = Future()
        with self._lock:
            self._snapshots.append(f)
        return f

    def take_snapshot_requests(self) -> list[Future]:
        with self._lock:
            out, self._snapshots = self._snapshots, []
        return out
