"""Faults while running: the engine raising or running out of memory on a tile, web clients that vanish,
and the viewfinder's security rules that tests/test_camera_web.py does not already pin down.
(Camera unplugged mid-preview and slow web clients are covered in tests/test_camera*.py.)"""
from __future__ import annotations

import json
import logging
import re
import socket
import struct
import time

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from edge_enhance.enhancer import Enhancer  # noqa: E402
from edge_enhance import EngineError  # noqa: E402  (exported: what a service maps to HTTP 500)
from edge_enhance.tiling import TilingConfig  # noqa: E402
from tests.hardening_kit import model  # noqa: E402,F401  (fixture)
from tests.onnx_models import residual_sr  # noqa: E402
from tests.test_camera_web import mjpeg_frames, request, running  # noqa: E402,F401  (fixture)


IMG = np.random.default_rng(5).integers(0, 256, (37, 45, 3), dtype=np.uint8)


class FlakyBackend:
    """Wraps a real backend; raises `error` on the calls listed in `fail_on` (1-based), or on every tile
    larger than `fail_above` pixels; can also hand back one reused buffer, as zero-copy engines do."""

    def __init__(self, inner, *, fail_on=(), fail_above=None, error=RuntimeError("tile exploded"), reuse=False):
        self.inner, self.fail_on, self.fail_above, self.error, self.reuse = inner, set(fail_on), fail_above, error, reuse
        self.calls, self.prepared, self._buf = 0, [], None
        self.fixed_shape, self.card = inner.fixed_shape, inner.card

    def prepare(self, h, w):
        self.prepared.append((h, w))
        self.inner.prepare(h, w)

    def activation_bytes_per_pixel(self):
        return self.inner.activation_bytes_per_pixel()

    def run(self, x):
        self.calls += 1
        if self.calls in self.fail_on or (self.fail_above and x.shape[1] * x.shape[2] > self.fail_above):
            raise self.error
        y = self.inner.run(x)
        if not self.reuse:
            return y
        if self._buf is None or self._buf.shape != y.shape:
            self._buf = np.empty_like(y)
        self._buf[...] = y  # the same array every call: a stale view would be overwritten
        return self._buf


def _enhancer(model, tile=(16, 16), **flaky):
    enh = Enhancer(model, tiling=TilingConfig(tile=tile), threads=1)
    enh.backend = FlakyBackend(enh.backend, **flaky)
    return enh


@pytest.fixture(scope="module")
def reference(model):
    return Enhancer(model, tiling=TilingConfig(tile=(16, 16)), threads=1).enhance(IMG)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_engine_raising_on_tile_k_stops_the_run_and_writes_nothing(tmp_path, model, k):
    from PIL import Image

    src = tmp_path / "in.png"
    Image.fromarray(IMG).save(src)
    enh = _enhancer(model, fail_on={k})
    with pytest.raises(EngineError, match=rf"{re.escape(str(model))}: the engine failed on tile {k} of \d+ "
                                          r"\(RuntimeError: tile exploded\)"):
        enh.enhance_file(src, tmp_path / "out.png")
    assert enh.backend.calls == k  # stopped at once, no later tile ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_no_stale_tile_after_a_failure_or_with_a_reused_engine_buffer(model, reference):
    enh = _enhancer(model, fail_on={4}, reuse=True)
    with pytest.raises(EngineError):
        enh.enhance(IMG)
    again = enh.enhance(IMG)  # the same enhancer, next run: every tile recomputed, none carried over
    assert np.array_equal(again, reference)
    other = np.ascontiguousarray(IMG[::-1])
    assert not np.array_equal(enh.enhance(other), reference)


def test_out_of_memory_on_a_tile_retries_once_smaller_and_stays_exact(model, reference, caplog):
    enh = _enhancer(model, tile=(32, 32), fail_above=24 * 24, error=MemoryError())
    with caplog.at_level(logging.WARNING):
        out = enh.enhance(IMG)
    assert enh.backend.prepared == [(32, 32), (16, 16)]
    warnings = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert warnings == [f"{model}: out of memory on a 32x32 tile; retrying once with 16x16 tiles"]
    assert np.array_equal(out, reference)  # exact tiling: the tile size does not change the result


def test_out_of_memory_twice_gives_up(model, tmp_path, capsys, monkeypatch):
    enh = _enhancer(model, tile=(32, 32), fail_above=1, error=MemoryError())
    with pytest.raises(MemoryError):
        enh.enhance(IMG)
    assert len(enh.backend.prepared) == 2  # one retry, not a loop
    # Through the CLI: one line naming the file, exit 1.
    from PIL import Image

    from edge_enhance.backends.onnxruntime import OnnxRuntimeBackend
    from edge_enhance.cli import main

    def oom(self, x):
        raise MemoryError

    monkeypatch.setattr(OnnxRuntimeBackend, "run", oom)
    Image.fromarray(IMG).save(tmp_path / "a.png")
    rc = main(["enhance", str(tmp_path / "a.png"), "-o", str(tmp_path / "o.png"), "--model", str(model)])
    assert rc == 1 and f"{tmp_path / 'a.png'}: out of memory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]


def test_fixed_shape_model_is_not_retried_smaller(tmp_path):
    p = tmp_path / "fixed.onnx"
    residual_sr(p, fixed=(20, 20))
    enh = Enhancer(p, threads=1)
    enh.backend = FlakyBackend(enh.backend, fail_on={1}, error=MemoryError())
    with pytest.raises(MemoryError):
        enh.enhance(IMG)
    assert enh.backend.prepared == [(20, 20)]


# -- web clients that vanish -----------------------------------------------------------------------------
@pytest.mark.parametrize("running", [{"max_clients": 1}], indirect=True)
def test_client_disconnecting_mid_stream_frees_its_slot(running):
    web, preview, _ = running
    s = socket.create_connection(("127.0.0.1", web.port), timeout=20)
    s.sendall(b"GET /stream/after.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    got = b""
    while got.count(b"--frame") < 2:  # a frame or more has started arriving
        got += s.recv(65536)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()  # RST mid-frame: the worst way to leave
    deadline = time.monotonic() + 20
    while web.hub.describe()["clients"]:
        assert time.monotonic() < deadline, "the vanished client still holds its slot"
        time.sleep(0.02)
    before = preview.stats.processed
    frames = mjpeg_frames(web, "/stream/after.mjpg", 2)  # the only slot is free again
    assert len(frames) == 2 and frames[0].shape[:2] == (128, 192)
    assert preview._thread.is_alive() and preview.stats.processed > before  # the loop went on


# -- web security gaps ------------------------------------------------------------------------------------
@pytest.mark.parametrize("running", [{"token": "correct-horse-battery"}], indirect=True)
def test_token_is_compared_in_constant_time_for_every_carrier(running, monkeypatch):
    import hmac

    web, _, _ = running
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    tries = [("/api/stats?token=wrong-guess-000", {}), ("/api/stats", {"X-Token": "wrong-guess-001"}),
             ("/api/stats", {"Authorization": "Bearer wrong-guess-002"}),
             ("/api/stats", {"Cookie": "ee_token=wrong-guess-003"}),
             ("/api/stats?token=correct-horse-battery", {})]
    codes = [request(web, "GET", path, headers=h)[0] for path, h in tries]
    assert codes == [401, 401, 401, 401, 200]
    assert [a for a, _ in seen] == [b"wrong-guess-000", b"wrong-guess-001", b"wrong-guess-002",
                                    b"wrong-guess-003", b"correct-horse-battery"]
    assert all(b == b"correct-horse-battery" for _, b in seen)


def test_snapshot_name_never_comes_from_the_request(running, tmp_path):
    web, _, _ = running
    body = json.dumps({"name": "../../evil.png", "path": str(tmp_path / "evil.png"), "filename": "x/../../y"})
    status, _, data = request(web, "POST", "/api/snapshot?name=../../evil.png&path=/tmp/evil.png", body,
                              {"Content-Type": "application/json"})
    assert status == 200, data
    info = json.loads(data)
    assert re.fullmatch(r"snapshot-[\w-]+\.png", info["name"]) and "evil" not in info["name"]
    assert (tmp_path / "snaps" / info["name"]).is_file()
    assert not list(tmp_path.rglob("*evil*")) and not list(tmp_path.rglob("y"))


def test_files_the_server_did_not_create_are_not_served(running, tmp_path):
    web, _, _ = running
    snaps = tmp_path / "snaps"
    snaps.mkdir(exist_ok=True)
    (snaps / "planted.png").write_bytes(b"not yours")
    status, _, body = request(web, "GET", "/snapshots/planted.png")
    assert status == 404 and b"not yours" not in body
    for path in ("/snapshots/", "/snapshots/%2e%2e%2fcli.py", "/static/index.html%00.png", "/stream/../cli.py",
                 "/stream/after.mjpg/../../web.py"):
        status, _, body = request(web, "GET", path)
        assert status == 404 and b"import" not in body, path


def test_header_dribble_cannot_exceed_limits(running):
    """Many small headers in separate packets are counted together (no per-packet reset)."""
    web, _, _ = running
    with socket.create_connection(("127.0.0.1", web.port), timeout=20) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for i in range(40):
            s.sendall(b"X-D%d: v\r\n" % i)
        s.sendall(b"\r\n")
        resp = s.recv(4096)
    assert resp.startswith(b"HTTP/1.1 431") or resp.startswith(b"HTTP/1.0 431"), resp[:80]


def test_loopback_is_the_default_bind():
    import inspect

    from edge_enhance.camera.web import WebViewfinder

    assert inspect.signature(WebViewfinder).parameters["host"].default == "127.0.0.1"
    web = WebViewfinder()
    assert web.loopback and web.token is None and not web.token_generated
    assert WebViewfinder("0.0.0.0").token_generated  # any other bind gets a token

