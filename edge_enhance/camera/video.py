"""Frame-by-frame video enhancement with optional temporal smoothing of the residual.

The residual (enhanced minus the plain upscale the model adds to) flickers from frame to frame
on static content; ``temporal`` blends it with the previous frame's residual as an exponential
moving average, but only where the input did not change (so moving edges do not ghost):

    r_t = e_t - base_t;   s_t = a * s_{t-1} + (1 - a) * r_t  where |in_t - in_{t-1}| small, else r_t
    out_t = base_t + s_t,  a = temporal in [0, 1]

``temporal=0`` gives exactly the enhancer's frames.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass

import numpy as np

from ..atomic import closed_temp, refuse_overwriting_input
from .detect import import_cv2
from .errors import ConfigError, OutputError, SourceError
from .sinks import FOURCC, open_video_writer
from .sources import frames_missing

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
MOTION_THRESHOLD = 12  # mean |difference| over RGB (0..255) above which a pixel counts as moving


def is_video_path(path: str) -> bool:
    return os.path.splitext(str(path))[1].lower() in VIDEO_EXTENSIONS


@dataclass(frozen=True)
class VideoResult:
    path: str
    frames: int
    fps: float
    seconds: float
    size: tuple[int, int]  # output (width, height)
    audio: str  # "copied", "none in source", "skipped: ..." (why it was not copied)
    warnings: tuple[str, ...] = ()  # what the output lacks that the user should know (also logged)


def _base(frame: np.ndarray, scale: int, kind: str) -> np.ndarray:
    """What the model's residual is added to, as float32 at output size."""
    if scale == 1:
        return frame.astype(np.float32)
    if kind == "bilinear":
        cv2 = import_cv2()
        h, w = frame.shape[:2]
        return cv2.resize(frame, (w * scale, h * scale), interpolation=cv2.INTER_LINEAR).astype(np.float32)
    return frame.repeat(scale, 0).repeat(scale, 1).astype(np.float32)


class TemporalSmoother:
    """The residual EMA above, one instance per video.

    >>> import numpy as np
    >>> sm = TemporalSmoother(0.5, scale=1)
    >>> f = np.zeros((1, 1, 3), np.uint8)
    >>> int(sm(f, np.full_like(f, 100))[0, 0, 0]), int(sm(f, np.full_like(f, 50))[0, 0, 0])
    (100, 75)
    """

    def __init__(self, temporal: float, *, scale: int, base: str = "nearest"):
        if not 0.0 <= temporal <= 1.0:
            raise ConfigError(f"--temporal {temporal!r} must be in 0..1")
        self.a, self.scale, self.base = float(temporal), scale, base
        self._prev_in = self._state = None

    def __call__(self, frame: np.ndarray, enhanced: np.ndarray) -> np.ndarray:
        if self.a == 0.0:
            return enhanced
        base = _base(frame, self.scale, self.base)
        resid = enhanced.astype(np.float32) - base
        if self._state is None or self._prev_in.shape != frame.shape:
            self._state = resid
        else:
            still = np.abs(frame.astype(np.int16) - self._prev_in.astype(np.int16)).mean(axis=2) < MOTION_THRESHOLD
            still = still.repeat(self.scale, 0).repeat(self.scale, 1)[..., None]
            self._state = np.where(still, self.a * self._state + (1 - self.a) * resid, resid)
        self._prev_in = frame.copy()
        return np.clip(base + self._state + 0.5, 0, 255).astype(np.uint8)


def _copy_audio(video_only: str, src: str, dst_ext: str) -> tuple[str | None, str]:
    """Mux the source's audio into the new video with ffmpeg; returns (new temp file or None, note)."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:  # without it the source's audio cannot even be looked for: the caller warns
        return None, "skipped: ffmpeg not on PATH"
    # `ffmpeg -i FILE` with no output lists the streams on stderr (and exits 1 by design).
    # Its output is UTF-8 (tags, file names): Windows would decode it with the ANSI code page and fail.
    probe = subprocess.run([ffmpeg, "-nostdin", "-hide_banner", "-i", src], capture_output=True, encoding="utf-8",
                           errors="replace")
    if "Audio:" not in probe.stderr:
        return None, "none in source"
    out = closed_temp(os.path.dirname(video_only), ".tmp-", dst_ext)
    err = "?"
    # A plain copy first; containers that refuse the source's audio codec get AAC.
    for audio_codec in (["-c:a", "copy"], ["-c:a", "aac"]):
        cmd = [ffmpeg, "-nostdin", "-y", "-v", "error", "-i", video_only, "-i", src,
               "-map", "0:v:0", "-map", "1:a", "-c:v", "copy", *audio_codec, "-shortest", out]
        proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace")
        if proc.returncode == 0:
            return out, "copied"
        err = (proc.stderr.strip().splitlines() or ["?"])[-1]
    os.unlink(out)
    log.warning("ffmpeg could not copy the audio (%s); the output has no audio", err)
    return None, f"skipped: ffmpeg failed ({err})"


def enhance_video(src: str, dst: str, enhancer, *, temporal: float = 0.0, progress=None,
                  copy_audio: bool = True, overwrite: bool = False, max_pixels: int | None = None) -> VideoResult:
    """Enhance every frame of ``src`` into ``dst`` (written atomically: ``dst`` may be ``src`` with
    ``overwrite``); ``max_pixels`` bounds a frame's size as it bounds a photo's. Progress callbacks take
    keyword arguments: ``progress(done=int, total=int|None, fps=float, eta_s=float|None)``.
    """
    cv2 = import_cv2()
    src, dst = str(src), str(dst)
    refuse_overwriting_input(src, dst, overwrite)
    ext = os.path.splitext(dst)[1].lower()
    if ext not in FOURCC:
        raise OutputError(f"{dst}: cannot write video container {ext or '(none)'!r}; "
                          f"use one of {', '.join(sorted(FOURCC))}")
    if not os.path.isfile(src):
        raise SourceError(f"{src}: no such video file")
    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        cap.release()
        raise SourceError(f"{src}: cannot decode video (unknown container or codec)")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    scale = int(enhancer.scale)
    card = getattr(enhancer, "card", None)
    smoother = TemporalSmoother(temporal, scale=scale, base=getattr(card, "base", "nearest"))
    writer = tmp = None
    done, t0 = 0, time.perf_counter()
    sequence = getattr(enhancer, "new_sequence", None)  # auto mode: one chain for every frame
    if sequence:
        sequence()
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            frame = np.ascontiguousarray(bgr[..., ::-1])
            h, w = frame.shape[:2]
            if max_pixels is not None and h * w > max_pixels:
                from ..imageio import _pixels

                raise SourceError(f"{src}: {w}x{h} frames = {_pixels(w * h)} exceed the limit of {_pixels(max_pixels)} "
                                  "(raise it with --max-pixels; max_pixels= in Python)")
            out = enhancer.enhance(frame)
            if out.shape != (h * scale, w * scale, 3) or out.dtype != np.uint8:
                raise OutputError(f"{src}: enhancer returned {out.shape} {out.dtype} for frame {done}; "
                                  f"expected ({h * scale}, {w * scale}, 3) uint8")
            out = smoother(frame, out)
            if writer is None:
                writer, tmp = open_video_writer(dst, fps, w * scale, h * scale)
                size = (w * scale, h * scale)
            writer.write(cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
            done += 1
            if progress is not None:
                el = time.perf_counter() - t0
                rate = done / el if el > 0 else 0.0
                eta = (total - done) / rate if total and rate > 0 else None
                progress(done=done, total=total, fps=rate, eta_s=eta)
        if writer is None:
            raise SourceError(f"{src}: no frames could be decoded")
        writer.release()
        writer = None
        if os.path.getsize(tmp) == 0:
            raise OutputError(f"{dst}: the {ext} writer produced an empty file")
        warnings = _check_output(src, dst, tmp, done, total, size)
        audio = "not requested"
        if copy_audio:
            muxed, audio = _copy_audio(tmp, src, ext)
            if muxed is not None:
                os.replace(muxed, tmp)
            elif "PATH" in audio:
                warnings.append("any audio the source has is not copied: ffmpeg is not on PATH (install it to copy audio)")
            elif audio.startswith("skipped"):
                warnings.append(f"no audio in the output ({audio})")
        for w in warnings:
            log.warning("%s: %s", src, w)
        cap.release()  # Windows cannot replace a file that is open (dst is src with overwrite)
        os.replace(tmp, dst)
        tmp = None
    except OSError as e:
        raise OutputError(f"{dst}: cannot write video ({e})") from None
    finally:
        if sequence:
            enhancer.end_sequence()
        cap.release()
        if writer is not None:
            writer.release()
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    secs = time.perf_counter() - t0
    return VideoResult(path=dst, frames=done, fps=fps, seconds=round(secs, 3), size=size, audio=audio,
                       warnings=tuple(warnings))


def _check_output(src: str, dst: str, tmp: str, done: int, total: int | None, size: tuple[int, int]) -> list[str]:
    """What the written file lacks: frames the source's header promised (a truncated file decodes only
    its first part), pixels the codec dropped (some store only even sizes)."""
    cv2 = import_cv2()
    notes = []
    if frames_missing(done, total):
        notes.append(f"only {done} of the {total} frames its header announces could be decoded "
                     "(a truncated or damaged file?); the output has those")
    cap = cv2.VideoCapture(tmp)
    got = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    cap.release()
    if all(got) and got != size:
        notes.append(f"the {os.path.splitext(dst)[1]} codec stored {got[0]}x{got[1]} of the {size[0]}x{size[1]} "
                     "frames (it keeps even sizes only)")
    return notes
