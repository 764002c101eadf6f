"""Preview loop, sources, stats, controls, video, CLI. Deterministic: no assertion depends on timing."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from edge_enhance.camera import (
    AdaptiveController, Controls, FolderSource, NullSink, OpenCVSource, Preview, PreviewConfig,
    SourceError, SourceLostError, Stats, StatsJsonWriter, SyntheticSource, VideoFileSink, open_source,
)
from edge_enhance.camera.stats import LatencyHistogram, percentile
from edge_enhance.errors import BackendUnavailableError, ConfigError, EdgeEnhanceError, OutputError
from tests.test_camera_doubles import (
    FlakySource, GatedEnhancer, HangingSource, RecordingSink, RepeatEnhancer, StallingSource,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def nearest(frame, s=2):
    return frame.repeat(s, 0).repeat(s, 1)


# --- sources ---------------------------------------------------------------------------------------

def test_synthetic_is_deterministic_and_moves():
    a, b = SyntheticSource(64, 32, fps=0), SyntheticSource(64, 32, fps=0)
    frames = [a.read() for _ in range(3)]
    assert all(f.shape == (32, 64, 3) and f.dtype == np.uint8 for f in frames)
    assert np.array_equal(frames[2], b.frame_at(2))
    assert not np.array_equal(frames[0], frames[1])
    assert frames[0].base is not None  # a view into the pre-rendered strip: zero-copy


@pytest.mark.parametrize("spec,cls,attrs", [
    ("synthetic:64x32", SyntheticSource, {"width": 64, "height": 32, "fps": 30.0}),
    ("synthetic:64x32@0", SyntheticSource, {"fps": 0.0}),
    ("synthetic:80x40@15", SyntheticSource, {"fps": 15.0, "width": 80}),
    ("cv:0", OpenCVSource, {"device": 0, "live": True}),
    ("cv:/dev/video2", OpenCVSource, {"device": "/dev/video2"}),
    ("/dev/video2@15", OpenCVSource, {"device": "/dev/video2", "fps": 15.0, "name": "cv:/dev/video2"}),
    ("1", OpenCVSource, {"device": 1}),
])
def test_open_source_specs(spec, cls, attrs):
    src = open_source(spec)
    assert type(src) is cls
    for k, v in attrs.items():
        assert getattr(src, k) == v


@pytest.mark.parametrize("spec,err,words", [
    ("synthetic:64", ConfigError, "WIDTHxHEIGHT"),
    ("synthetic:4x4", ConfigError, "too small"),
    ("synthetic:64x32@fast", ConfigError, "frame rate"),
    ("webcam", ConfigError, "unknown source"),
    ("file:/nonexistent/clip.mp4", SourceError, "/nonexistent/clip.mp4"),
    ("folder:/nonexistent/dir", SourceError, "/nonexistent/dir"),
    ("picamera2:side", ConfigError, "main' or 'lores"),
])
def test_open_source_errors(spec, err, words):
    with pytest.raises(err, match=words):
        open_source(spec)


def test_folder_source_reads_images_in_order(tmp_path):
    for i, (w, h) in enumerate([(20, 10), (16, 16), (8, 12)]):
        Image.new("RGB", (w, h), (i * 50, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    src = FolderSource(str(tmp_path), fps=0)
    src.start()
    got = [src.read() for _ in range(4)]
    assert got[3] is None
    assert [f.shape for f in got[:3]] == [(10, 20, 3), (16, 16, 3), (12, 8, 3)]
    assert [int(f[0, 0, 0]) for f in got[:3]] == [0, 50, 100]


def test_folder_source_bad_image_names_file(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    src = FolderSource(str(tmp_path), fps=0)
    with pytest.raises(SourceError, match="broken.png"):
        src.read()


def test_missing_cv2_names_the_extra(monkeypatch):
    from edge_enhance.camera import detect
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes `import cv2` raise ImportError
    with pytest.raises(BackendUnavailableError, match=r"pip install 'edge-enhance\[camera\]'"):
        detect.import_cv2()


def test_missing_picamera2_explains_the_fix(monkeypatch):
    from edge_enhance.camera import detect
    monkeypatch.setitem(sys.modules, "picamera2", None)
    with pytest.raises(BackendUnavailableError, match="python3-picamera2.*system-site-packages"):
        detect.import_picamera2()


def test_import_is_lazy():
    code = ("import sys, edge_enhance.camera, edge_enhance.camera.cli; "
            "bad = [m for m in ('cv2', 'picamera2', 'edge_enhance.enhancer', 'http.server') if m in sys.modules]; "
            "assert not bad, bad; "
            "from edge_enhance.camera.detect import platform_info; assert platform_info.cache_info().currsize == 0")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})


# --- the loop ------------------------------------------------------------------------------------------

def test_bounded_run_with_null_sink_enhances_each_frame():
    src, enh, rec, null = SyntheticSource(64, 48, fps=0), RepeatEnhancer(), RecordingSink(), NullSink()
    summary = Preview(src, enh, [null, rec], config=PreviewConfig(frames=10)).run()
    assert summary["processed"] == 10 and summary["stop_reason"] == "frames"
    assert enh.calls == 10
    assert rec.started and rec.stopped and 1 <= len(rec.results) <= 10 and 1 <= null.frames <= 10
    seqs = [r.seq for r in rec.results]
    assert seqs == sorted(set(seqs))
    for r in rec.results:  # each result is the enhancement of exactly the frame captured as seq
        assert np.array_equal(r.before, src.frame_at(r.seq - 1))
        assert np.array_equal(r.after, nearest(src.frame_at(r.seq - 1)))
    assert summary["output_size"] == [128, 96] and summary["input_size"] == [64, 48]
    assert summary["captured"] - summary["processed"] - summary["dropped"] in (0, 1)


@pytest.mark.parametrize("k", [3, 5])
def test_latest_frame_wins_drops_stale_frames(k):
    src = SyntheticSource(64, 48, fps=2000)  # a camera far faster than inference (an unpaced one is held)
    enh = GatedEnhancer(src, k)
    rec = RecordingSink()
    s = Preview(src, enh, [rec], config=PreviewConfig(frames=8)).run()
    assert s["processed"] == 8
    # Every captured frame is processed, dropped as stale, or (at most one) left in the slot at the end.
    assert s["captured"] - s["processed"] - s["dropped"] in (0, 1)
    # While one frame is inferred >= k newer arrive; only the newest is taken, so steps are >= k-1.
    seqs = [r.seq for r in rec.results]
    assert all(b - a >= k - 1 for a, b in zip(seqs, seqs[1:]))
    assert s["dropped"] >= (k - 2) * (s["processed"] - 1)


def test_end_of_finite_source_stops_cleanly():
    src = SyntheticSource(32, 32, fps=0, frames=7)
    s = Preview(src, RepeatEnhancer(), [NullSink()]).run()
    assert s["stop_reason"] == "end of source"
    assert s["captured"] == 7 and 1 <= s["processed"] <= 7
    assert s["captured"] - s["processed"] - s["dropped"] == 0


def test_a_last_frame_that_comes_just_after_the_wait_is_still_processed():
    """The loop's wait for a frame times out, the source puts its last frame and ends: that frame
    was taken by the end-of-source check and thrown away."""
    from edge_enhance.camera.preview import LatestSlot

    class LateSlot(LatestSlot):  # the last frame lands just after the loop's wait gave up
        def get(self, timeout):
            item = super().get(timeout)
            if timeout and item is not None and item.seq == 3 and not self.held:
                self.held = True
                self.put(item)
                preview._capture_done.wait(5)  # the source has ended by the time the loop looks
                return None
            return item

    preview = Preview(SyntheticSource(32, 32, fps=0, frames=3), RepeatEnhancer(), [NullSink()])
    preview._slot = LateSlot()
    preview._slot.held = False
    s = preview.run()
    assert preview._slot.held and s["stop_reason"] == "end of source"
    assert s["captured"] - s["dropped"] == s["processed"] and s["processed"] >= 1


def test_source_failure_mid_run_is_a_clear_error():
    src = FlakySource(5, recover=False)
    cfg = PreviewConfig(reconnects=2, reconnect_delay=0)
    with pytest.raises(SourceLostError) as e:
        Preview(src, RepeatEnhancer(), [NullSink()], config=cfg).run()
    msg = str(e.value)
    assert "flaky-test-camera" in msg and "after 5 frames" in msg and "device unplugged" in msg
    assert "2 reconnect attempt(s) failed" in msg and "/dev/video9" in msg
    assert src.starts == 3 and not src.started  # initial + 2 attempts; released at the end


def test_source_failure_with_reconnects_disabled():
    with pytest.raises(SourceLostError, match="reconnecting disabled"):
        Preview(FlakySource(3, recover=False), RepeatEnhancer(), config=PreviewConfig(reconnects=0)).run()


def test_source_that_comes_back_is_reconnected():
    src = FlakySource(5, recover=True)
    s = Preview(src, RepeatEnhancer(), [NullSink()],
                config=PreviewConfig(frames=12, reconnect_delay=0)).run()
    assert s["processed"] == 12 and s["reconnects"] == 1 and s["stop_reason"] == "frames"


def test_hung_source_is_lost_not_waited_for():
    src = HangingSource(3)  # stopping it does not end its read()
    try:
        with pytest.raises(SourceLostError, match="no frame for 0.3 s after 3 frames; the source hung; stopping it "
                                                  "to reconnect did not end its read"):
            Preview(src, RepeatEnhancer(), config=PreviewConfig(stall_timeout=0.3)).run()
    finally:
        src.release.set()


def test_a_hung_source_is_reconnected_as_a_lost_one_is():
    # A hung camera was given up at the stall timeout without the 3 reconnects the README promises.
    src = StallingSource(4)
    s = Preview(src, RepeatEnhancer(), [NullSink()],
                config=PreviewConfig(frames=10, stall_timeout=0.2, reconnect_delay=0)).run()
    assert s["processed"] == 10 and s["reconnects"] == 1 and s["stop_reason"] == "frames" and src.starts == 2
    src = StallingSource(4, recover=False)  # hangs again after each restart: lost after --reconnects of them
    with pytest.raises(SourceLostError, match=r"no frame for 0.2 s after 4 frames; the source hung after 2 reconnect"):
        Preview(src, RepeatEnhancer(), [NullSink()],
                config=PreviewConfig(reconnects=2, stall_timeout=0.2, reconnect_delay=0)).run()
    assert src.starts == 3 and not src.started


def test_sink_failure_stops_the_loop_with_its_name():
    class Broken(NullSink):
        name = "broken"

        def show(self, result):
            raise OSError("disk full")
    with pytest.raises(EdgeEnhanceError, match="sink broken failed: disk full"):
        Preview(SyntheticSource(32, 32, fps=200), RepeatEnhancer(), [Broken()], config=PreviewConfig(frames=500)).run()


def test_a_sink_failing_on_the_last_frame_fails_the_run_too():
    import time

    class SlowBroken(NullSink):
        name = "slow"

        def show(self, result):
            time.sleep(0.2)  # still showing when the loop has counted its one frame and returned
            raise OSError("disk full")
    with pytest.raises(EdgeEnhanceError, match="sink slow failed: disk full"):
        Preview(SyntheticSource(32, 32, fps=0), RepeatEnhancer(), [SlowBroken()], config=PreviewConfig(frames=1)).run()


def test_wrong_enhancer_output_is_reported():
    class Bad(RepeatEnhancer):
        def enhance(self, frame):
            return frame  # forgot to upscale
    with pytest.raises(EdgeEnhanceError, match=r"returned \(32, 40, 3\) uint8 for a 32x40 frame; expected \(64, 80, 3\)"):
        Preview(SyntheticSource(40, 32, fps=0), Bad(), config=PreviewConfig(frames=3)).run()


def test_stop_from_another_thread_releases_source():
    src = FlakySource(10**9, recover=True)
    p = Preview(src, RepeatEnhancer(), [NullSink()]).start()
    while p.stats.processed < 3 and p._thread.is_alive():
        p._slot.wake()
        p._thread.join(0.01)
    p.stop()
    s = p.wait(10)
    assert s["stop_reason"] == "stopped" and s["processed"] >= 3
    assert src.stops >= 1 and not src.started


@pytest.mark.parametrize("cfg", [dict(frames=0), dict(seconds=-1), dict(target_fps=0), dict(min_scale=2.0),
                                 dict(reconnects=-1)])
def test_config_validation(cfg):
    with pytest.raises(ConfigError):
        PreviewConfig(**cfg)


# --- controls, snapshot -------------------------------------------------------------------------

def test_controls_actions_and_clamping():
    c = Controls(strength=1.4)
    assert c.apply("strength_up").strength == 1.5
    assert c.apply("strength_up").strength == 1.5  # clamped at 1.5
    assert c.apply("toggle").enhance is False and c.apply("split").split is True
    assert c.set_strength(-3).strength == 0.0
    with pytest.raises(ConfigError, match="unknown control"):
        c.apply("explode")
    with pytest.raises(ConfigError):
        c.set_strength(float("nan"))
    with pytest.raises(ConfigError):
        c.set_strength(True)  # {"value": true} from the web API is not a strength


def test_enhancement_off_shows_plain_upscale_and_skips_engine():
    src, enh, rec = SyntheticSource(32, 24, fps=0), RepeatEnhancer(), RecordingSink()
    c = Controls(enhance=False)
    s = Preview(src, enh, [rec], controls=c, config=PreviewConfig(frames=4)).run()
    assert enh.calls == 0 and s["enhance"] is False and s["engine_ms_mean"] is None
    assert all(r.after.shape == (48, 64, 3) and not r.enhanced for r in rec.results)


def test_strength_reaches_enhancer_on_loop_thread():
    enh = RepeatEnhancer()
    c = Controls(strength=0.3)
    Preview(SyntheticSource(32, 24, fps=0), enh, controls=c, config=PreviewConfig(frames=2)).run()
    assert enh.strengths_seen == [0.3]


def test_split_and_overlay_picture():
    rec = RecordingSink()
    Preview(SyntheticSource(64, 48, fps=0), RepeatEnhancer(), [rec], controls=Controls(split=True),
            config=PreviewConfig(frames=2)).run()
    r = rec.results[-1]
    pic = r.picture()
    assert pic.shape == r.after.shape and not np.shares_memory(pic, r.after)
    assert (pic[-10:, 63] == 255).all()  # divider at the middle (below the overlay text)
    assert not np.array_equal(pic[:20], r.after[:20])  # overlay text drawn


def test_snapshot_is_full_quality_and_atomic(tmp_path):
    snaps = tmp_path / "snaps"
    src = SyntheticSource(40, 24, fps=100)
    p = Preview(src, RepeatEnhancer(), [NullSink()], config=PreviewConfig(snapshot_dir=str(snaps)))
    p.adaptive = AdaptiveController(30, primary=p.enhancer)
    p.adaptive.level = 3  # preview runs at reduced size; the snapshot must not
    p.start()
    try:
        path = p.controls.apply("snapshot").result(timeout=20)
        path2 = p.controls.request_snapshot().result(timeout=20)
    finally:
        p.stop()
        p.wait(10)
    assert os.path.dirname(path) == str(snaps) and os.path.basename(path).startswith("snapshot-")
    assert path != path2
    img = np.asarray(Image.open(path))
    assert img.shape == (48, 80, 3)
    seq = int(os.path.basename(path).split("-")[3].split(".")[0])
    assert np.array_equal(img, nearest(src.frame_at(seq - 1)))
    assert sorted(os.listdir(snaps)) == sorted(os.path.basename(x) for x in (path, path2))  # no temp files


def test_snapshot_request_fails_cleanly_when_no_frame_ever_came():
    src = HangingSource(0)
    p = Preview(src, RepeatEnhancer(), config=PreviewConfig(stall_timeout=0.3))
    f = p.controls.request_snapshot()
    try:
        with pytest.raises(SourceLostError):
            p.run()
    finally:
        src.release.set()
    with pytest.raises(SourceError, match="before a frame"):
        f.result(timeout=1)


# --- adaptive ------------------------------------------------------------------------------------

def test_adaptive_controller_steps_down_and_back_up():
    a = AdaptiveController(30, primary="main", min_scale=0.5)
    assert [lvl[1] for lvl in a.levels] == [1.0, 0.875, 0.75, 0.625, 0.5]
    assert a.update(40.0) and a.current == ("main", 0.875)
    assert a.update(40.0) and a.current == ("main", 0.75)
    assert not a.update(30.0)  # in budget: hold
    for _ in range(2):
        assert not a.update(10.0)  # predicted 10 * (1/0.875)^2... fits, but needs 3 windows
    assert a.update(10.0) and a.current == ("main", 0.875)
    for _ in range(10):
        a.update(100.0)
    assert a.current == ("main", 0.5) and a.describe()["lowered"] is True


def test_adaptive_switches_to_light_model_first():
    a = AdaptiveController(30, primary="big", light="small", min_scale=0.75)
    assert a.levels == [("big", 1.0), ("small", 1.0), ("small", 0.875), ("small", 0.75)]
    a.update(50.0)
    assert a.current == ("small", 1.0)


def test_light_model_must_match_scale():
    with pytest.raises(ConfigError, match="same scale"):
        Preview(SyntheticSource(32, 32), RepeatEnhancer(2), light_enhancer=RepeatEnhancer(4),
                config=PreviewConfig(target_fps=30))


def test_reduced_processing_keeps_output_size():
    rec, enh = RecordingSink(), RepeatEnhancer()
    p = Preview(SyntheticSource(64, 48, fps=0), enh, [rec], config=PreviewConfig(frames=3, target_fps=1000))
    p.adaptive.level = 4  # 0.5 of the input side
    s = p.run()
    assert s["processed_size"] == [32, 24] and s["output_size"] == [128, 96]
    assert all(r.after.shape == (96, 128, 3) for r in rec.results)
    assert s["adaptive"]["scale"] == 0.5 and s["adaptive"]["target_fps"] == 1000


def test_reduced_processing_size_is_a_multiple_of_the_model_align():
    from types import SimpleNamespace

    rec, enh = RecordingSink(), RepeatEnhancer()
    enh.card = SimpleNamespace(align=16)  # e.g. four stride-2 stages
    p = Preview(SyntheticSource(100, 72, fps=0), enh, [rec], config=PreviewConfig(frames=2, target_fps=1000))
    p.adaptive.level = 4  # 0.5 of the input side: 50x36 -> 48x32
    s = p.run()
    assert s["processed_size"] == [48, 32] and s["output_size"] == [200, 144]


# --- stats ------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_stats_window_and_summary_with_fake_clock():
    clock = FakeClock()
    st = Stats(clock=clock)
    for i in range(30):
        st.on_capture(dropped=i % 3 == 0)
    for ms in range(1, 21):  # latencies 1..20 ms
        st.on_processed(latency_s=ms / 1000, engine_ms=5.0, busy_ms=7.0)
    clock.t += 1.0
    w = st.window(model="m")
    assert w["input_fps"] == 30.0 and w["output_fps"] == 20.0 and w["dropped"] == 10
    assert w["latency_ms"] == {"p50": 10.0, "p95": 19.0} and w["engine_ms"] == 5.0 and w["model"] == "m"
    clock.t += 1.0
    w2 = st.window()
    assert w2["input_fps"] == 0.0 and w2["latency_ms"]["p50"] is None and w2["dropped_window"] == 0
    s = st.summary(stop_reason="frames")
    assert s["final"] and s["input_fps"] == 15.0 and s["latency_ms"] == {"p50": 10.0, "p95": 19.0}


@pytest.mark.parametrize("values,q,want", [([5, 1, 3], 50, 3), ([1, 2, 3, 4], 95, 4), ([7], 50, 7), ([], 50, None)])
def test_percentile_nearest_rank(values, q, want):
    assert percentile(values, q) == want


def test_latency_histogram_is_constant_memory():
    h = LatencyHistogram()
    size = h.counts.nbytes
    for i in range(10000):
        h.add((i % 100) / 1000)
    h.add(60.0)  # beyond the last bin: clamped, not grown
    assert h.counts.nbytes == size and h.percentile(50) == 50.0 and h.percentile(10) == 10.0 and h.percentile(95) == 95.0


def test_stats_json_lines(tmp_path):
    path = tmp_path / "stats.jsonl"
    w = StatsJsonWriter(str(path))
    cfg = PreviewConfig(frames=30, stats_interval=0.01)
    Preview(SyntheticSource(32, 32, fps=200), RepeatEnhancer(), [NullSink()], config=cfg, on_stats=w).run()
    w.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    *windows, final = lines
    assert final["final"] is True and final["processed"] == 30 and final["stop_reason"] == "frames"
    assert windows and all("final" not in x for x in windows)
    for x in windows:
        assert {"t", "input_fps", "output_fps", "dropped", "latency_ms", "engine_ms", "model", "adaptive"} <= set(x)
    assert [x["processed"] for x in windows] == sorted(x["processed"] for x in windows)


def test_stats_json_unwritable_folder(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        StatsJsonWriter(str(tmp_path / "missing" / "s.jsonl"))


# --- video ------------------------------------------------------------------------------------------

cv2 = pytest.importorskip("cv2", reason="OpenCV (edge-enhance[camera]) not installed")


def write_clip(path, n=8, w=32, h=24, fps=10):
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    src = SyntheticSource(w, h, fps=0)
    for i in range(n):
        vw.write(np.ascontiguousarray(src.frame_at(i)[..., ::-1]))
    vw.release()


def count_frames(path):
    cap = cv2.VideoCapture(str(path))
    n, shape = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape
    cap.release()
    return n, shape


@pytest.mark.parametrize("temporal", [0.0, 0.6])
def test_enhance_video(tmp_path, temporal, monkeypatch):
    from edge_enhance.camera import video
    monkeypatch.setattr(video.shutil, "which", lambda name: None)
    clip, out = tmp_path / "clip.avi", tmp_path / "out.mp4"
    write_clip(clip)
    calls = []
    r = video.enhance_video(clip, out, RepeatEnhancer(), temporal=temporal,
                            progress=lambda **kw: calls.append(kw))
    assert r.frames == 8 and r.size == (64, 48) and r.audio == "skipped: ffmpeg not on PATH"
    assert count_frames(out) == (8, (48, 64, 3))
    assert [c["done"] for c in calls] == list(range(1, 9)) and calls[-1]["total"] == 8
    assert calls[-1]["eta_s"] == 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert out.stat().st_mode & 0o777 == _new_file_mode()  # not mkstemp's 0600


def _new_file_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@pytest.mark.parametrize("dst,words", [("out.xyz", "cannot write video container '.xyz'"),
                                       ("missing/out.mp4", "does not exist"),
                                       ("clip.avi", "overwrite the input")])
def test_enhance_video_unwritable(tmp_path, dst, words):
    from edge_enhance.camera.video import enhance_video
    write_clip(tmp_path / "clip.avi", n=2)
    with pytest.raises(OutputError, match=words):
        enhance_video(tmp_path / "clip.avi", tmp_path / dst, RepeatEnhancer())


def test_a_video_is_one_sequence_for_an_auto_pipeline(tmp_path):
    from edge_enhance.camera.video import enhance_video

    class Sequenced(RepeatEnhancer):
        events: list = []

        def new_sequence(self):
            self.events.append(("start", self.calls))

        def end_sequence(self):
            self.events.append(("end", self.calls))

    write_clip(tmp_path / "clip.avi", n=3)
    enh = Sequenced()
    enhance_video(tmp_path / "clip.avi", tmp_path / "o.avi", enh, copy_audio=False)
    assert enh.events == [("start", 0), ("end", 3)]


def test_max_pixels_bounds_a_videos_frames_as_a_photos(tmp_path, capsys):
    from edge_enhance.cli import main

    write_clip(tmp_path / "clip.avi", n=2)  # 32x24 frames
    rc = main(["enhance", str(tmp_path / "clip.avi"), "-o", str(tmp_path / "o.avi"), "--max-pixels", "700"])
    assert rc == 1 and "clip.avi: 32x24 frames = 768 pixels exceed the limit of 700 pixels" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.avi"]


def test_enhance_video_undecodable_input(tmp_path):
    from edge_enhance.camera.video import enhance_video
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100)
    with pytest.raises(SourceError, match="bad.mp4"):
        enhance_video(bad, tmp_path / "o.mp4", RepeatEnhancer())
    # FFmpeg reads its log level once a process: the CLI in a fresh one says our one error, without
    # FFmpeg's "[mov,mp4,... @ 0x55d...] moov atom not found" before it.
    env = {k: v for k, v in os.environ.items() if k != "OPENCV_FFMPEG_LOGLEVEL"}
    r = subprocess.run([sys.executable, "-m", "edge_enhance", str(bad), "-o", str(tmp_path / "o.mp4")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "cannot decode video" in r.stderr and "moov" not in r.stderr, r.stderr


def test_temporal_smoothing_still_vs_moving():
    from edge_enhance.camera.video import TemporalSmoother
    sm = TemporalSmoother(0.5, scale=2)
    f0 = np.zeros((2, 2, 3), np.uint8)
    e0 = nearest(f0) + 40  # residual +40 everywhere
    assert np.array_equal(sm(f0, e0), e0)  # first frame: unchanged
    f1 = f0.copy()
    f1[0, 0] = 200  # one input pixel moves; the rest is still
    e1 = nearest(f1)  # residual 0 everywhere
    out = sm(f1, e1).astype(int)
    assert (out[2:, :] == 20).all()  # still: 0.5 * 40 + 0.5 * 0
    assert (out[:2, :2] == 200).all()  # moving: residual not smoothed, no ghost of the old +40
    with pytest.raises(ConfigError):
        TemporalSmoother(1.5, scale=2)


def test_video_source_and_file_sink(tmp_path):
    clip, out = tmp_path / "clip.avi", tmp_path / "rec.avi"
    write_clip(clip, n=6)
    src = open_source(f"file:{clip}@0")
    sink = VideoFileSink(str(out), fps=10, timed=False)
    s = Preview(src, RepeatEnhancer(), [sink]).run()
    # Unpaced, every frame is processed and recorded once (it read the file as fast as it could, dropping).
    assert s["stop_reason"] == "end of source" and (s["captured"], s["processed"], s["dropped"]) == (6, 6, 0)
    n, shape = count_frames(out)
    assert n == 6 and shape == (48, 64, 3) and sink.every_frame
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []
    assert out.stat().st_mode & 0o777 == _new_file_mode()


def test_a_timed_recording_repeats_frames_where_the_loop_dropped_some(tmp_path):
    """A camera at 10 fps whose frames 2..4 were dropped: the file still holds 0.5 s of video."""
    from edge_enhance.camera.sinks import Result

    out = tmp_path / "rec.avi"
    sink = VideoFileSink(str(out), fps=10)
    f = np.zeros((16, 24, 3), np.uint8)
    for i, t in enumerate((100.0, 100.1, 100.41, 100.42)):  # the last one is early: its slot is taken
        sink.show(Result(seq=i, before=f, after=f + 10 * i, t_capture=t, t_done=t, overlay=False))
    sink.stop()
    assert sink.frames == 5 and count_frames(out)[0] == 5 and not sink.every_frame


def test_an_unpaced_source_is_processed_frame_by_frame():
    class Sleepy(RepeatEnhancer):  # slower than an unpaced source reads: it spun and dropped all but a few
        def enhance(self, frame):
            import time

            time.sleep(0.005)
            return super().enhance(frame)

    src = SyntheticSource(32, 24, fps=0, frames=12)
    s = Preview(src, Sleepy(), [NullSink()]).run()
    assert (s["captured"], s["processed"], s["dropped"]) == (12, 12, 0)


def test_the_summary_rates_leave_out_the_teardown():
    t = [10.0]
    st = Stats(clock=lambda: t[0])
    for _ in range(4):
        st.on_capture(dropped=False)
        st.on_processed(latency_s=0.01, engine_ms=5.0, busy_ms=5.0)
    t[0] = 12.0  # the loop ends ...
    end = t[0]
    t[0] = 13.0  # ... and a web server takes a second to stop
    s = st.summary(until=end)
    assert s["seconds"] == 2.0 and s["output_fps"] == 2.0


def test_a_video_name_with_an_at_sign_is_a_path(tmp_path):
    clip = tmp_path / "take@2x.avi"
    write_clip(clip, n=2)
    assert open_source(f"file:{clip}").device == str(clip)
    assert open_source(f"file:{clip}@5")._want_fps == 5.0
    with pytest.raises(ConfigError, match="frame rate"):
        open_source("synthetic:64x32@2x")


def test_the_folder_source_reads_photos_as_enhance_does(tmp_path):
    e = Image.Exif()
    e[0x0112] = 6
    Image.new("RGB", (20, 10), (200, 0, 0)).save(tmp_path / "a.jpg", exif=e)
    Image.fromarray((np.arange(12 * 8, dtype=np.uint16).reshape(8, 12) * 600)).save(tmp_path / "b.png")
    src = FolderSource(str(tmp_path), fps=0)
    src.start()
    a, b = src.read(), src.read()
    assert a.shape == (20, 10, 3)  # turned upright
    assert b.dtype == np.uint8 and b[..., 0].max() == (95 * 600) >> 8 and b[0, 1, 0] == 600 >> 8  # scaled, not clipped


def test_the_default_sink_is_the_browser_where_opencv_cannot_open_a_window(monkeypatch):
    from edge_enhance.camera import cli as ccli
    from edge_enhance.camera.detect import PlatformInfo
    from edge_enhance.camera.web import WebViewfinder

    monkeypatch.setattr(ccli, "platform_info", lambda: PlatformInfo("Linux", "x86_64", None, True))
    monkeypatch.setattr(ccli, "has_gui", lambda: False)
    (sink,) = ccli.build_sinks(["auto"], token=None, fps=None, overlay=False)
    assert isinstance(sink, WebViewfinder)


def test_file_sink_rejects_unknown_container(tmp_path):
    with pytest.raises(ConfigError, match="needs one of"):
        VideoFileSink(str(tmp_path / "x.gif"))


# --- CLI ------------------------------------------------------------------------------------------

def parse(argv):
    from edge_enhance.camera.cli import add_arguments
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(argv)


def test_cli_preview_bounded_run(tmp_path, monkeypatch, capsys):
    from edge_enhance.camera import cli
    made = []
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: made.append((model, threads)) or RepeatEnhancer())
    stats = tmp_path / "s.jsonl"
    rc = cli.main(parse(["--source", "synthetic:48x32@0", "--sink", "null", "--frames", "5",
                         "--stats-json", str(stats), "--threads", "2"]))
    assert rc == 0 and made == [("sr-x2-rt", 2)]
    final = json.loads(stats.read_text().splitlines()[-1])
    assert final["final"] and final["processed"] == 5
    assert "5 frames" in capsys.readouterr().err


def test_cli_preview_of_a_card_less_onnx_model_with_card_task(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from edge_enhance.camera import cli
    from tests.onnx_models import residual_sr

    residual_sr(tmp_path / "bare.onnx", scale=2, card={})
    rc = cli.main(parse(["--source", "synthetic:48x32@0", "--sink", "null", "--frames", "2", "--model",
                         str(tmp_path / "bare.onnx"), "--card-task", "sr"]))
    assert rc == 0 and "2 frames" in capsys.readouterr().err


@pytest.mark.parametrize("argv,words", [
    (["--source", "nope", "--sink", "null"], "unknown source"),
    (["--source", "synthetic:48x32", "--sink", "tv"], "unknown sink"),
    (["--source", "synthetic:48x32", "--sink", "null", "--frames", "0"], "--frames 0 must be > 0"),
])
def test_cli_errors_are_one_line(argv, words, monkeypatch, capsys):
    # Bad settings, nothing run: exit 2 as `edge-enhance --help` says (it was 1, a failed file's code).
    from edge_enhance.camera import cli
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    assert cli.main(parse(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("edge-enhance preview: error:") and words in err


def test_cli_preview_without_opencv_says_so_before_the_web_viewfinder_starts(monkeypatch, capsys):
    from edge_enhance.camera import cli
    monkeypatch.setitem(sys.modules, "cv2", None)  # as on an install without the camera extra
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    assert cli.main(parse(["--source", "cv:0", "--web", "127.0.0.1:0", "--frames", "1"])) == 1
    err = capsys.readouterr().err
    assert "web viewfinder" not in err and err.count("\n") == 1 and "pip install 'edge-enhance[camera]'" in err


def test_cli_source_lost_exits_nonzero(monkeypatch, capsys):
    from edge_enhance.camera import cli
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    monkeypatch.setattr(cli, "open_source", lambda spec: FlakySource(4, recover=False))
    assert cli.main(parse(["--source", "x", "--sink", "null", "--reconnects", "0"])) == 1
    assert "source lost after 4 frames" in capsys.readouterr().err


def _recording_preview(tmp_path, setup: str = ""):
    """A real `preview` process recording the synthetic source to rec.avi (``setup``: Python run before it),
    once its first stats line shows the loop running: (process, stats file, recording)."""
    import time

    stats, out = tmp_path / "s.jsonl", tmp_path / "rec.avi"
    code = (
        "import sys, time, argparse, signal; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[1] + '/tests')\n"
        "signal.signal(signal.SIGHUP, signal.SIG_DFL)\n"  # as a terminal starts it, even if these tests run under nohup
        "from test_camera_doubles import RepeatEnhancer\n"
        "from edge_enhance.camera import cli, sinks\n"
        "cli._make_enhancer = lambda m, t, card=None: RepeatEnhancer()\n"
        + setup +
        "p = argparse.ArgumentParser(); cli.add_arguments(p)\n"
        "sys.exit(cli.main(p.parse_args(['--source', 'synthetic:32x32@50', '--sink', 'file:' + sys.argv[3], "
        "'--stats-json', sys.argv[2]])))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, ROOT, str(stats), str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (stats.exists() and stats.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)  # wait for the first stats line: the loop is running
    return proc, stats, out


@pytest.mark.parametrize("sig", [15, 1, 2], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_cli_a_stop_signal_finishes_the_recording(tmp_path, sig):
    # A real process: SIGTERM, Ctrl-C, or the SSH session closing (SIGHUP: it killed the process, leaving no
    # recording and a hidden broken temp file), ends an unbounded run with the recording and a final stats line,
    # and exit 130 as `edge-enhance --help` says (it was 0; the service unit counts 130 as a normal stop).
    proc, stats, out = _recording_preview(tmp_path)
    try:
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    final = json.loads(stats.read_text().splitlines()[-1])
    assert final["final"] and final["stop_reason"] == "stopped"
    assert count_frames(out)[0] > 0 and [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_cli_a_second_ctrl_c_while_stopping_keeps_the_recording(tmp_path):
    # The first SIGINT set the default disposition: a second one during teardown killed the process,
    # leaving a hidden unplayable temp file and no recording.
    import time

    proc, _, out = _recording_preview(tmp_path, "stop = sinks.VideoFileSink.stop\n"  # a long teardown
                                                "sinks.VideoFileSink.stop = lambda self: (time.sleep(1.0), stop(self))\n")
    try:
        proc.send_signal(2)
        time.sleep(0.3)
        proc.send_signal(2)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "finishing the recording" in err and count_frames(out)[0] > 0
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp")] == []


def test_opencv_own_warnings_are_off_unless_debug_or_asked_for(monkeypatch):
    """Our one error says what OpenCV's '[ WARN:0] ... can't open camera by index' lines say."""
    import logging

    from edge_enhance.camera.detect import import_cv2

    lg = cv2.utils.logging
    before = lg.getLogLevel()
    try:
        monkeypatch.delenv("OPENCV_LOG_LEVEL", raising=False)
        lg.setLogLevel(lg.LOG_LEVEL_WARNING)
        import_cv2()
        assert lg.getLogLevel() == lg.LOG_LEVEL_ERROR
        lg.setLogLevel(lg.LOG_LEVEL_WARNING)
        ours = logging.getLogger("edge_enhance")
        level = ours.level
        ours.setLevel(logging.DEBUG)  # -vv
        try:
            import_cv2()
        finally:
            ours.setLevel(level)
        assert lg.getLogLevel() == lg.LOG_LEVEL_WARNING
        monkeypatch.setenv("OPENCV_LOG_LEVEL", "WARNING")  # the user's own choice stands
        import_cv2()
        assert lg.getLogLevel() == lg.LOG_LEVEL_WARNING
    finally:
        lg.setLogLevel(before)


def test_cli_file_sink_records_at_the_source_rate_and_never_over_the_source(tmp_path, monkeypatch, capsys):
    from edge_enhance.camera import cli
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    clip, rec = tmp_path / "clip.avi", tmp_path / "rec.avi"
    write_clip(clip, n=4, fps=10)
    before = clip.read_bytes()
    assert cli.main(parse(["--source", f"file:{clip}", "--sink", f"file:{clip}"])) == 2
    assert "would overwrite the source" in capsys.readouterr().err and clip.read_bytes() == before
    assert cli.main(parse(["--source", f"file:{clip}@0", "--sink", f"file:{rec}"])) == 0
    capsys.readouterr()
    cap = cv2.VideoCapture(str(rec))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    assert fps == pytest.approx(10.0)  # the clip's own rate (not the 30 fps fallback); @0 only unpaces reading
    # A sink folder that does not exist is said before anything starts, once.
    assert cli.main(parse(["--source", f"file:{clip}", "--sink", f"file:{tmp_path}/no/r.avi"])) == 2
    err = capsys.readouterr().err
    assert err.count("does not exist") == 1 and err.startswith("edge-enhance preview: error:")


@pytest.mark.parametrize("argv,words", [
    (["--source", "synthetic:48x32@-5", "--sink", "null"], "frame rate"),
    (["--source", "synthetic:48x32@nan", "--sink", "null"], "frame rate"),
])
def test_cli_negative_frame_rate_is_refused(argv, words, capsys):
    from edge_enhance.camera import cli
    assert cli.main(parse(argv)) == 2 and words in capsys.readouterr().err


def test_cli_strength_outside_its_range_is_refused(capsys):
    with pytest.raises(SystemExit):
        parse(["--strength", "5"])
    assert "1.5" in capsys.readouterr().err


def test_enhance_video_says_what_the_output_lacks(tmp_path, monkeypatch, caplog):
    """A truncated file decodes only its first part; without ffmpeg no audio is copied; a codec that keeps
    even sizes only drops a row / column: each is said (logged and in the result), none is silent."""
    from edge_enhance.camera import video
    monkeypatch.setattr(video.shutil, "which", lambda name: None)
    write_clip(tmp_path / "clip.avi", n=12)
    data = (tmp_path / "clip.avi").read_bytes()
    (tmp_path / "cut.avi").write_bytes(data[: len(data) * 7 // 10])
    r = video.enhance_video(tmp_path / "cut.avi", tmp_path / "o.avi", RepeatEnhancer())
    assert 0 < r.frames < 12 and f"only {r.frames} of the 12 frames" in r.warnings[0]
    assert "ffmpeg is not on PATH" in r.warnings[1] and "only" in caplog.text
    whole = video.enhance_video(tmp_path / "clip.avi", tmp_path / "w.avi", RepeatEnhancer())
    assert whole.frames == 12 and len(whole.warnings) == 1  # the audio note only
    assert "keeps even sizes" in video._check_output("x", "o.avi", str(tmp_path / "w.avi"), 12, 12, (65, 49))[0]


def test_enhance_video_over_its_input_with_overwrite(tmp_path):
    from edge_enhance.camera.video import enhance_video
    clip = tmp_path / "clip.avi"
    write_clip(clip, n=3)
    r = enhance_video(clip, clip, RepeatEnhancer(), overwrite=True, copy_audio=False)
    assert r.frames == 3 and count_frames(clip) == (3, (48, 64, 3))
    assert [p.name for p in tmp_path.iterdir()] == ["clip.avi"]


def test_a_video_over_its_input_is_replaced_after_its_reader_is_closed(tmp_path, monkeypatch):
    """Windows cannot replace a file that is open: `--overwrite` onto the source video failed at the very end."""
    from edge_enhance.camera import video

    real_cv2, real_replace, reading = video.import_cv2(), os.replace, []

    class Capture:  # cv2.VideoCapture that says which files it holds open
        def __init__(self, path):
            self.cap, self.path = real_cv2.VideoCapture(path), os.path.abspath(path)
            reading.append(self.path)

        def release(self):
            if self.path in reading:
                reading.remove(self.path)
            self.cap.release()

        def __getattr__(self, name):
            return getattr(self.cap, name)

    class Cv2:
        VideoCapture = Capture

        def __getattr__(self, name):
            return getattr(real_cv2, name)

    def windows_replace(src, dst):
        if os.path.abspath(dst) in reading:
            raise PermissionError(13, "The process cannot access the file because it is being used by another "
                                      "process", str(dst))
        real_replace(src, dst)

    clip = tmp_path / "clip.avi"
    write_clip(clip, n=3)
    monkeypatch.setattr(video, "import_cv2", Cv2)
    monkeypatch.setattr(os, "replace", windows_replace)
    r = video.enhance_video(clip, clip, RepeatEnhancer(), overwrite=True, copy_audio=False)
    assert r.frames == 3 and count_frames(clip) == (3, (48, 64, 3)) and reading == []


def test_ffmpegs_utf8_output_is_read_as_utf8_whatever_the_code_page(tmp_path, monkeypatch):
    """Windows decodes a subprocess's text with the ANSI code page: ffmpeg's UTF-8 listing (a tag
    'отпуск') raised UnicodeDecodeError after the whole video was enhanced."""
    import subprocess

    from edge_enhance.camera import video

    if not hasattr(subprocess, "_text_encoding"):
        pytest.skip("this Python picks a subprocess's text encoding elsewhere")
    fake = tmp_path / "bin" / "ffmpeg"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf 'Input #0, from x:\\n  title : \\320\\276\\321\\202\\320\\277\\321\\203"
                    "\\321\\201\\320\\272\\n  Stream #0:1: Audio: aac\\n' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    monkeypatch.setattr(subprocess, "_text_encoding", lambda: "cp1252")
    (tmp_path / "v.mp4").write_bytes(b"")
    out, note = video._copy_audio(str(tmp_path / "v.mp4"), str(tmp_path / "src.mp4"), ".mp4")
    assert out is None and note.startswith("skipped: ffmpeg failed (") and "Audio: aac" in note
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "v.mp4"]


def test_enhance_cli_videos_in_folders_webm_and_json(tmp_path, monkeypatch, capsys, caplog):
    pytest.importorskip("onnxruntime")
    from edge_enhance.cli import main
    from tests.onnx_models import residual_sr

    residual_sr(tmp_path / "m.onnx", scale=2)
    d = tmp_path / "mix"
    d.mkdir()
    write_clip(d / "c.avi", n=3)
    Image.new("RGB", (10, 8)).save(d / "p.png")
    assert main(["enhance", str(d), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "m.onnx"), "-q"]) == 0
    assert "1 video(s) in the folder(s) left out" in caplog.text
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["p.png"]
    vids = tmp_path / "vids"
    vids.mkdir()
    write_clip(vids / "c.avi", n=2)
    assert main(["enhance", str(vids), "--model", str(tmp_path / "m.onnx")]) == 2
    assert "only videos: name them" in capsys.readouterr().err
    (tmp_path / "w.webm").write_bytes((vids / "c.avi").read_bytes())  # the name is what matters here
    assert main(["enhance", str(tmp_path / "w.webm"), "--model", str(tmp_path / "m.onnx"), "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["files"][0]
    assert f["output"].endswith("w.m.mkv") and f["frames"] == 2 and f["size"] == [64, 48] and "audio" in f
    with pytest.raises(SystemExit):
        main(["enhance", str(vids / "c.avi"), "--temporal", "1.5", "--model", str(tmp_path / "m.onnx")])


def test_check_pi_gives_no_gmac_figure_for_a_run_whose_frame_size_changed():
    sys.path.insert(0, os.path.join(ROOT, "demo_raspberry"))
    try:
        from check_pi import gmac_note
    finally:
        sys.path.pop(0)
    steady = {"engine_ms_mean": 10.0, "adaptive": None}
    assert gmac_note(steady, 1000, 640 * 360) == ", effective 23.0 GMAC/s" and steady["effective_gmac_per_s"] == 23.04
    moved = {"engine_ms_mean": 10.0, "adaptive": {"changes": 2, "scale": 0.75}}
    assert "not measured" in gmac_note(moved, 1000, 640 * 360) and "effective_gmac_per_s" not in moved


# --- fixes from a user probe ----------------------------------------------------------------------

def test_cli_a_source_with_no_frames_is_an_error_naming_it(tmp_path, monkeypatch, capsys):
    from edge_enhance.camera import cli
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    write_clip(tmp_path / "zero.avi", n=0)
    rc = cli.main(parse(["--source", f"file:{tmp_path / 'zero.avi'}", "--sink", f"file:{tmp_path / 'z2.avi'}"]))
    err = capsys.readouterr().err
    assert rc == 1 and err == f"edge-enhance preview: error: file:{tmp_path / 'zero.avi'}: no frames could be read\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["zero.avi"]


def test_cli_summary_shows_missing_figures_as_a_dash():
    # A stop before the first frame (a user stop: exit 130) has no latency or engine time to show.
    from edge_enhance.camera.cli import _summary_line
    s = Stats().summary(stop_reason="stopped")
    line = _summary_line(s)
    assert "None" not in line and "latency p50 - ms p95 - ms, engine - ms (stopped)" in line


def test_cli_light_model_without_target_fps_or_not_lighter_is_said(monkeypatch, caplog):
    import types

    from edge_enhance.camera import cli
    made = []

    def make(model, threads, card=None):
        e = RepeatEnhancer(name=model)
        e.card = types.SimpleNamespace(macs_per_pixel={"big": 1000, "bigger": 2000}[model])
        made.append(model)
        return e

    monkeypatch.setattr(cli, "_make_enhancer", make)
    base = ["--source", "synthetic:48x32@0", "--sink", "null", "--frames", "2", "--model", "big"]
    assert cli.main(parse(base + ["--light-model", "bigger"])) == 0
    assert made == ["big"] and "used only with --target-fps" in caplog.text  # not loaded for nothing
    caplog.clear()
    assert cli.main(parse(base + ["--light-model", "bigger", "--target-fps", "30"])) == 0
    assert made[1:] == ["big", "bigger"] and "bigger (2000 MACs per pixel) is not lighter" in caplog.text


@pytest.mark.parametrize("argv,words", [
    (["--min-scale", "2"], "--min-scale 2.0 must be in 0.1..1"),
    (["--reconnects", "-1"], "--reconnects -1 must be >= 0"),
])
def test_cli_config_errors_name_the_options(argv, words, capsys):
    from edge_enhance.camera import cli
    assert cli.main(parse(["--source", "synthetic:48x32", "--sink", "null"] + argv)) == 2
    assert words in capsys.readouterr().err
    with pytest.raises(ConfigError, match="reconnect_delay -1 must be >= 0"):
        PreviewConfig(reconnect_delay=-1)


def test_window_sink_without_gui_names_the_wheel_the_camera_extra_clashes_with(monkeypatch):
    from edge_enhance.camera import sinks
    from edge_enhance.camera.detect import PlatformInfo
    from edge_enhance.camera.errors import SinkError

    class Cv2Error(Exception):
        msg = "The function is not implemented"

    def no_window(*a):
        raise Cv2Error()

    import types
    fake = types.SimpleNamespace(error=Cv2Error, WINDOW_NORMAL=0, namedWindow=no_window)
    monkeypatch.setattr(sinks, "platform_info", lambda: PlatformInfo("Linux", "x86_64", None, True))
    monkeypatch.setattr(sinks, "import_cv2", lambda: fake)
    with pytest.raises(SinkError) as e:
        sinks.WindowSink().start()
    msg = str(e.value)
    assert "pip install opencv-contrib-python " in msg and "uninstall opencv-contrib-python-headless" in msg
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        assert '"opencv-contrib-python-headless' in f.read()  # what the camera extra installs


def test_folder_source_skips_an_unreadable_image_and_goes_on(tmp_path, caplog):
    for i in range(3):
        Image.new("RGB", (16, 8), (i * 50, 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img1.png").write_bytes(b"not a png")
    s = Preview(FolderSource(str(tmp_path), fps=0), RepeatEnhancer(), [NullSink()]).run()
    assert s["stop_reason"] == "end of source" and s["processed"] == 2
    assert "img1.png" in caplog.text and "skipped" in caplog.text
    for i in (0, 2):
        (tmp_path / f"img{i}.png").write_bytes(b"")
    with pytest.raises(SourceError, match="none of its 3 images could be read"):
        Preview(FolderSource(str(tmp_path), fps=0), RepeatEnhancer(), [NullSink()]).run()


def test_check_pi_exits_1_when_a_run_failed(tmp_path, monkeypatch, capsys):
    from edge_enhance import enhancer
    sys.path.insert(0, os.path.join(ROOT, "demo_raspberry"))
    try:
        import check_pi
    finally:
        sys.path.pop(0)
    monkeypatch.setattr(enhancer, "Enhancer", lambda model, threads=None: RepeatEnhancer())
    out = tmp_path / "pi.json"
    assert check_pi.main(["--seconds", "-1", "--no-camera", "--json", str(out)]) == 1
    assert "synthetic: failed" in capsys.readouterr().err
    assert "must be > 0" in json.loads(out.read_text())["runs"]["synthetic"]["error"]


def test_setup_sh_refuses_an_unknown_argument(tmp_path):
    # PATH holds nothing: were the argument not refused first, the script could reach no sudo or apt.
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "demo_raspberry", "setup.sh"), "--servce"],
                       capture_output=True, text=True, env={"PATH": str(tmp_path), "HOME": str(tmp_path)}, timeout=30)
    assert r.returncode == 2 and "usage:" in r.stderr and "--servce" in r.stderr


def test_setup_sh_creates_the_token_file_private_before_writing_it():
    with open(os.path.join(ROOT, "demo_raspberry", "setup.sh")) as f:
        lines = [x.strip() for x in f if "/etc/default/edge-enhance" in x and not x.strip().startswith("#")]
    made = next(i for i, x in enumerate(lines) if x.startswith("sudo install -m 600 /dev/null"))
    written = next(i for i, x in enumerate(lines) if "tee /etc/default/edge-enhance" in x)
    assert made < written and not any("chmod" in x for x in lines)


def test_the_service_restarts_after_any_exit():
    # A clean exit (0) of a viewfinder meant to run until `systemctl stop` must not leave the camera off.
    with open(os.path.join(ROOT, "demo_raspberry", "edge-enhance-viewfinder.service")) as f:
        assert "Restart=always" in f.read().splitlines()


# --- fixes from a soak test of the live preview -----------------------------------------------------

def _cut_short_on_release(monkeypatch, keep: int = 4096):
    """The writer's file ends cut at ``keep`` bytes, as on a full disk (cv2.VideoWriter.write says nothing)."""
    from edge_enhance.camera import sinks
    opened = sinks.open_video_writer

    class Writer:
        def __init__(self, writer, tmp):
            self.writer, self.tmp = writer, tmp

        def write(self, frame):
            self.writer.write(frame)

        def release(self):
            self.writer.release()
            os.truncate(self.tmp, keep)

    def open_cut(path, fps, w, h):
        writer, tmp = opened(path, fps, w, h)
        return Writer(writer, tmp), tmp

    monkeypatch.setattr(sinks, "open_video_writer", open_cut)
    monkeypatch.setattr(sinks.shutil, "disk_usage", lambda folder: argparse.Namespace(free=0))


@pytest.mark.parametrize("ext", [".mp4", ".avi"])
def test_a_recording_cut_short_by_a_full_disk_is_an_error_and_keeps_the_old_file(tmp_path, monkeypatch, ext):
    # It wrote an unplayable file over the earlier good one (moov atom not found), exit 0.
    from edge_enhance.camera.errors import SinkError

    _cut_short_on_release(monkeypatch)
    out = tmp_path / f"rec{ext}"
    out.write_bytes(b"an earlier good recording")
    with pytest.raises(SinkError) as e:
        Preview(SyntheticSource(64, 48, fps=0, frames=30), RepeatEnhancer(),
                [VideoFileSink(str(out), fps=10, timed=False)]).run()
    assert str(out) in str(e.value) and "of the 30 frames written can be read back (the disk is full" in str(e.value)
    assert out.read_bytes() == b"an earlier good recording"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the temp file removed


def test_a_recording_whose_folder_was_removed_fails_the_run(tmp_path, monkeypatch, capsys):
    # sink.stop()'s error was only a WARNING and the run ended 0: the recording was lost silently.
    import shutil

    from edge_enhance.camera import cli
    from edge_enhance.camera.sinks import Result

    folder = tmp_path / "rec"
    folder.mkdir()
    sink = VideoFileSink(str(folder / "x.avi"), fps=10)
    f = np.zeros((16, 24, 3), np.uint8)
    sink.show(Result(seq=1, before=f, after=f, t_capture=0.0, t_done=0.0, overlay=False))
    shutil.rmtree(folder)
    with pytest.raises(OutputError, match=f"folder {folder} was removed while writing; the video is lost"):
        sink.stop()

    class Unfinished(RecordingSink):
        def stop(self):
            raise OSError("No such file or directory")

    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    monkeypatch.setattr(cli, "build_sinks", lambda *a, **kw: [Unfinished()])
    assert cli.main(parse(["--source", "synthetic:48x32@0", "--frames", "3"])) == 1
    err = capsys.readouterr().err
    assert err == "edge-enhance preview: error: sink recording failed: No such file or directory\n"


@pytest.mark.parametrize("argv,words", [
    (["--min-scale", "5"], "--min-scale 5.0 must be in 0.1..1"),
    (["--target-fps", "-1"], "--target-fps -1.0 must be > 0"),
    (["--source", "bogus:1"], "unknown source"),
    (["--sink", "bogus"], "unknown sink"),
    (["--web", "127.0.0.1:0", "--token", "short"], "--token must be at least 8"),
    (["--web", "127.0.0.1:99999"], "port 99999 out of range"),
])
def test_cli_bad_settings_exit_2_as_the_help_says(argv, words, monkeypatch, capsys):
    from edge_enhance.camera import cli
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: RepeatEnhancer())
    args = ["--source", "synthetic:48x32@0", "--frames", "1"] + argv
    assert cli.main(parse(args if "--sink" in argv or "--web" in argv else args + ["--sink", "null"])) == 2
    assert words in capsys.readouterr().err


def test_the_service_counts_a_stop_as_success_and_does_not_restart_on_bad_settings():
    # preview exits 130 on SIGTERM (as --help says): without SuccessExitStatus every `systemctl stop` left the
    # unit failed; a bad setting (exit 2) would be restarted every 5 s for ever.
    with open(os.path.join(ROOT, "demo_raspberry", "edge-enhance-viewfinder.service")) as f:
        lines = f.read().splitlines()
    assert "SuccessExitStatus=130" in lines and "RestartPreventExitStatus=2" in lines


def test_cli_preview_runs_the_engine_on_every_core_unless_told(monkeypatch, capsys):
    # Without --threads the engine got threads=None, which LiteRT ran on 1 thread (the service had no
    # --threads): a quarter of a Pi 4 / 5, while check_pi.py and the README's estimates use every core.
    from edge_enhance.camera import cli
    made = []
    monkeypatch.setattr(cli, "_make_enhancer", lambda model, threads, card=None: made.append(threads) or RepeatEnhancer())
    monkeypatch.setattr(cli.os, "cpu_count", lambda: 4)
    base = ["--source", "synthetic:48x32@0", "--sink", "null", "--frames", "1"]
    assert cli.main(parse(base)) == 0 and cli.main(parse(base + ["--threads", "3"])) == 0
    assert made == [4, 3]
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert "default: every core" in " ".join(p.format_help().split())


def test_a_truncated_video_source_says_it_ended_early(tmp_path, caplog):
    # A cut-off file ended quietly, exit 0, after half its frames (`enhance` warns of the same).
    clip, cut = tmp_path / "clip.avi", tmp_path / "cut.avi"
    write_clip(clip, n=12)
    cut.write_bytes(clip.read_bytes()[:clip.stat().st_size // 2])
    read = count_frames(cut)[0]
    assert 0 < read < 12
    s = Preview(open_source(f"file:{cut}@0"), RepeatEnhancer(), [NullSink()]).run()
    assert s["stop_reason"] == "end of source" and s["processed"] == read
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == [f"{cut}: the video ended after {read} of the 12 frames its header announces "
                      "(a truncated or damaged file?)"]
    caplog.clear()
    Preview(open_source(f"file:{clip}@0"), RepeatEnhancer(), [NullSink()]).run()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_check_pi_measures_the_synthetic_run_unpaced(tmp_path, monkeypatch, capsys):
    # Its synthetic source was paced at 60 fps: a device processing faster showed "60 fps processed".
    import edge_enhance.camera
    from edge_enhance import enhancer
    sys.path.insert(0, os.path.join(ROOT, "demo_raspberry"))
    try:
        import check_pi
    finally:
        sys.path.pop(0)
    specs = []
    opened = edge_enhance.camera.open_source
    monkeypatch.setattr(edge_enhance.camera, "open_source", lambda spec: specs.append(spec) or opened(spec))
    monkeypatch.setattr(enhancer, "Enhancer", lambda model, threads=None: RepeatEnhancer())
    assert check_pi.main(["--seconds", "0.2", "--no-camera", "--size", "32x24"]) == 0
    assert specs and all(spec == "synthetic:32x24@0" for spec in specs)
    assert "synthetic 32x24 -> x2:" in capsys.readouterr().out


def test_setup_sh_refuses_32_bit_programs_under_a_64_bit_kernel(tmp_path):
    """32-bit Raspberry Pi OS boots a 64-bit kernel on a Pi 4 / 5: uname -m said aarch64, the check passed,
    and pip then failed, ai-edge-litert having no 32-bit ARM wheel."""
    import shutil

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("grep", "readlink", "dirname"):
        (bin_ / tool).symlink_to(shutil.which(tool))
    fakes = {"uname": "echo aarch64", "python3": "echo 32", "sudo": "echo sudo must not run >&2; exit 99"}
    for name, body in fakes.items():
        (bin_ / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_ / name).chmod(0o755)
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "demo_raspberry", "setup.sh")], capture_output=True,
                       text=True, env={"PATH": str(bin_), "HOME": str(tmp_path)}, timeout=30)
    assert r.returncode == 1, r.stderr
    assert "runs 32-bit programs (kernel aarch64)" in r.stderr and "[tflite-runtime]" in r.stderr
    assert f"{ROOT}[tflite-runtime]" in r.stderr  # the checkout the script is in, not an unpublished PyPI name


def test_setup_sh_keeps_the_systems_numpy_in_the_venv():
    """ai-edge-litert pulled numpy 2 into the --system-site-packages venv (through ml_dtypes), hiding apt's
    numpy 1 that apt's OpenCV and picamera2 are built against: `import cv2` then failed."""
    with open(os.path.join(ROOT, "demo_raspberry", "setup.sh")) as f:
        installs = [x.strip() for x in f if "-m pip install" in x and "[litert]" in x]
    assert installs and all('"numpy==${NUMPY}"' in x for x in installs)
