"""Web viewfinder through a real HTTP client on 127.0.0.1 (port 0)."""
from __future__ import annotations

import http.client
import io
import json
import socket
import time

import numpy as np
import pytest
from PIL import Image

from edge_enhance.camera import Preview, PreviewConfig, SyntheticSource
from edge_enhance.camera.web import WebViewfinder, is_loopback, parse_hostport
from edge_enhance.errors import ConfigError
from tests.test_camera_doubles import RepeatEnhancer

W, H = 96, 64


def wait_listening(web, preview, timeout=20):
    deadline = time.monotonic() + timeout
    while web._server is None:
        if preview._thread is not None and not preview._thread.is_alive():
            preview.wait()  # raises what went wrong
        assert time.monotonic() < deadline, "web viewfinder did not start"
        time.sleep(0.01)


@pytest.fixture
def running(tmp_path, request):
    """A running preview with a web sink; the param gives WebViewfinder keyword arguments."""
    kw = getattr(request, "param", {})
    host = kw.pop("host", "127.0.0.1")
    web = WebViewfinder(host, 0, **kw)
    src = SyntheticSource(W, H, fps=kw.pop("fps", 60))
    p = Preview(src, RepeatEnhancer(), [web], config=PreviewConfig(snapshot_dir=str(tmp_path / "snaps"))).start()
    wait_listening(web, p)
    yield web, p, src
    p.stop()
    p.wait(10)


def request(web, method, path, body=None, headers=None, host="127.0.0.1"):
    c = http.client.HTTPConnection(host, web.port, timeout=20)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        c.close()


def raw(web, data: bytes) -> bytes:
    """Send raw bytes, return the whole response (for requests http.client refuses to build)."""
    with socket.create_connection(("127.0.0.1", web.port), timeout=20) as s:
        s.sendall(data)
        chunks = []
        while True:
            try:
                b = s.recv(65536)
            except ConnectionResetError:
                break
            if not b:
                break
            chunks.append(b)
    return b"".join(chunks)


def mjpeg_frames(web, path, n, headers=None):
    c = http.client.HTTPConnection("127.0.0.1", web.port, timeout=20)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    assert r.status == 200
    assert r.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=frame"
    frames = []
    try:
        while len(frames) < n:
            assert r.readline() == b"--frame\r\n"
            part = {}
            while (line := r.readline()) != b"\r\n":
                k, _, v = line.decode().partition(":")
                part[k.strip().lower()] = v.strip()
            assert part["content-type"] == "image/jpeg"
            data = r.read(int(part["content-length"]))
            assert r.read(2) == b"\r\n"
            frames.append(np.asarray(Image.open(io.BytesIO(data))))
    finally:
        c.close()
    return frames


def test_page_and_assets_load(running):
    web, _, _ = running
    status, headers, body = request(web, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="split"' in body and b"/static/app.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        status, headers, body = request(web, "GET", f"/static/{name}")
        assert status == 200 and ctype in headers["Content-Type"] and body


@pytest.mark.parametrize("stream,shape", [("after", (2 * H, 2 * W, 3)), ("before", (H, W, 3))])
def test_mjpeg_frames_arrive(running, stream, shape):
    web, _, _ = running
    frames = mjpeg_frames(web, f"/stream/{stream}.mjpg", 3)
    assert all(f.shape == shape for f in frames)


def test_after_stream_is_the_enhanced_frame(running):
    web, _, src = running
    f = mjpeg_frames(web, "/stream/after.mjpg", 1)[0].astype(int)
    # JPEG is lossy: compare with the candidates and require a clear winner that is close.
    errs = [np.abs(f - src.frame_at(i).repeat(2, 0).repeat(2, 1)).mean() for i in range(W // 4)]
    assert min(errs) < 8


def test_stats_endpoint(running):
    web, p, _ = running
    while p.stats.processed < 1:
        time.sleep(0.01)
    status, headers, body = request(web, "GET", "/api/stats")
    assert status == 200 and headers["Content-Type"] == "application/json"
    s = json.loads(body)
    assert {"web"} <= set(s) and s["web"]["clients"] == 0


def test_controls_over_http(running):
    web, p, _ = running
    post = lambda body: request(web, "POST", "/api/control", json.dumps(body),  # noqa: E731
                                {"Content-Type": "application/json"})
    status, _, body = post({"action": "toggle"})
    assert status == 200 and json.loads(body)["enhance"] is False and p.controls.state.enhance is False
    status, _, body = post({"action": "strength", "value": 0.4})
    assert status == 200 and json.loads(body)["strength"] == 0.4
    assert post({"action": "strength_up"})[0] == 200 and p.controls.state.strength == 0.5
    status, _, body = post({"action": "rm -rf"})
    assert status == 400 and b"unknown action" in body
    assert post({"action": "strength", "value": "lots"})[0] == 400


def test_snapshot_endpoint_writes_and_serves_a_file(running, tmp_path):
    web, _, _ = running
    status, _, body = request(web, "POST", "/api/snapshot", "{}", {"Content-Type": "application/json"})
    assert status == 200, body
    info = json.loads(body)
    path = tmp_path / "snaps" / info["name"]
    assert path.is_file() and info["url"] == f"/snapshots/{info['name']}"
    assert np.asarray(Image.open(path)).shape == (2 * H, 2 * W, 3)
    status, headers, data = request(web, "GET", info["url"])
    assert status == 200 and data == path.read_bytes()
    assert headers["Content-Disposition"] == f'attachment; filename="{info["name"]}"'


@pytest.mark.parametrize("path", [
    "/static/../web.py", "/static/%2e%2e/web.py", "/static/..%2fweb.py", "/../../../../etc/passwd",
    "/static//etc/passwd", "/snapshots/../cli.py", "/static/../../../edge_enhance/camera/web.py",
    "/static/.", "/static/", "/index.html/../web.py",
])
def test_traversal_refused(running, path):
    web, _, _ = running
    status, _, body = request(web, "GET", path)
    assert status == 404
    assert b"import" not in body and b"root:" not in body


def test_oversized_requests_refused(running):
    web, _, _ = running
    assert request(web, "GET", "/?" + "a" * 4000)[0] == 414
    many = {f"X-H{i}": "v" for i in range(40)}
    assert request(web, "GET", "/", headers=many)[0] == 431
    assert request(web, "GET", "/", headers={"X-Big": "v" * 9000})[0] == 431
    resp = raw(web, b"POST /api/control HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 10000000\r\n\r\n{")
    assert resp.startswith(b"HTTP/1.1 413")
    resp = raw(web, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 414") or resp.startswith(b"HTTP/1.0 414")
    assert request(web, "POST", "/api/control", "toggle", {"Content-Type": "text/plain"})[0] == 415
    assert raw(web, b"POST /api/control HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 411")
    assert request(web, "DELETE", "/")[0] == 501


def test_foreign_host_header_refused_on_loopback(running):
    web, _, _ = running
    status, _, _ = request(web, "GET", "/", headers={"Host": f"evil.example:{web.port}"})
    assert status == 403
    assert request(web, "GET", "/", headers={"Host": f"localhost:{web.port}"})[0] == 200


@pytest.mark.parametrize("running", [{"host": "0.0.0.0"}], indirect=True)
def test_token_required_off_loopback(running):
    web, _, _ = running
    assert web.token_generated and len(web.token) >= 16 and f"token={web.token}" in web.url
    assert request(web, "GET", "/")[0] == 401
    assert request(web, "GET", "/?token=wrong-token-here")[0] == 401
    assert request(web, "GET", "/api/stats", headers={"X-Token": "x" * len(web.token)})[0] == 401
    assert request(web, "GET", "/stream/after.mjpg")[0] == 401
    assert request(web, "POST", "/api/snapshot", "{}", {"Content-Type": "application/json"})[0] == 401
    status, headers, _ = request(web, "GET", f"/?token={web.token}")
    assert status == 200 and f"ee_token={web.token}" in headers["Set-Cookie"] and "HttpOnly" in headers["Set-Cookie"]
    assert request(web, "GET", "/api/stats", headers={"Cookie": f"ee_token={web.token}"})[0] == 200
    assert request(web, "GET", "/api/stats", headers={"Authorization": f"Bearer {web.token}"})[0] == 200
    assert len(mjpeg_frames(web, f"/stream/after.mjpg?token={web.token}", 1)) == 1


@pytest.mark.parametrize("running", [{"token": "given-secret-1"}], indirect=True)
def test_given_token_checked_on_loopback_too(running):
    web, _, _ = running
    assert not web.token_generated
    assert request(web, "GET", "/")[0] == 401
    assert request(web, "GET", "/?token=given-secret-1")[0] == 200


@pytest.mark.parametrize("running", [{"max_clients": 1}], indirect=True)
def test_viewer_limit(running):
    web, _, _ = running
    c = http.client.HTTPConnection("127.0.0.1", web.port, timeout=20)
    c.request("GET", "/stream/after.mjpg")
    assert c.getresponse().status == 200
    try:
        assert request(web, "GET", "/stream/before.mjpg")[0] == 503
    finally:
        c.close()


class NoiseSource(SyntheticSource):
    """Incompressible frames (seeded noise), so a non-reading client must fill every socket buffer."""

    def __init__(self):
        super().__init__(320, 240, fps=200)
        rng = np.random.default_rng(0)
        self._noise = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]

    def frame_at(self, i):
        return self._noise[i % 4]


def test_slow_client_never_stalls_the_loop():
    # A client that connects to the stream and never reads: ~400 KB JPEGs x ~100 frames cannot all
    # fit in the socket buffers, so its handler blocks; the loop must still finish its frames, and
    # that client's frames are dropped for it alone.
    web = WebViewfinder("127.0.0.1", 0, quality=95)
    p = Preview(NoiseSource(), RepeatEnhancer(), [web], config=PreviewConfig(frames=150)).start()
    wait_listening(web, p)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", web.port))
    s.sendall(b"GET /stream/after.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        summary = p.wait(120)
        assert summary["processed"] == 150 and summary["stop_reason"] == "frames"
        assert web.hub.describe()["dropped"] > 0
    finally:
        s.close()


def test_client_slot_keeps_only_the_latest():
    from edge_enhance.camera.web import MjpegHub
    hub = MjpegHub(max_clients=2)
    slow, fast = hub.subscribe("after"), hub.subscribe("after")
    for i in range(5):
        hub.publish("after", b"%d" % i)
        assert fast.get(timeout=0) == b"%d" % i
    assert slow.get(timeout=0) == b"4" and slow.dropped == 4 and fast.dropped == 0
    late = hub.subscribe("before")
    assert late is None  # max_clients reached
    hub.unsubscribe("after", slow)
    hub.publish("before", b"x")
    assert hub.subscribe("before").get(timeout=0) == b"x"  # a new viewer gets the last frame at once


@pytest.mark.parametrize("text,want", [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("0.0.0.0", ("0.0.0.0", 8080)),
                                       (":9000", ("127.0.0.1", 9000)), ("[::1]:81", ("::1", 81)),
                                       ("18450", ("127.0.0.1", 18450))])
def test_parse_hostport(text, want):
    assert parse_hostport(text) == want


@pytest.mark.parametrize("host,want", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                       ("0.0.0.0", False), ("192.168.1.5", False), ("camera.local", False)])
def test_is_loopback(host, want):
    assert is_loopback(host) is want


def test_bad_web_options():
    with pytest.raises(ConfigError):
        parse_hostport("127.0.0.1:http")
    with pytest.raises(ConfigError, match="at least 8"):
        WebViewfinder(token="short")


def test_port_in_use_is_a_clear_error():
    from edge_enhance.camera.errors import SinkError
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(SinkError, match=f"cannot listen on 127.0.0.1:{s.getsockname()[1]}"):
            Preview(SyntheticSource(32, 32), RepeatEnhancer(), [WebViewfinder("127.0.0.1", s.getsockname()[1])]).run()


@pytest.mark.parametrize("token", ["pa ss#wd&x=1;y", "tok\u00e9n-123"])
def test_a_token_that_a_url_or_cookie_would_mangle_is_refused(token):
    with pytest.raises(ConfigError, match="only letters, digits"):
        WebViewfinder("0.0.0.0", 0, token=token)


def test_preview_takes_the_token_from_the_environment(monkeypatch):
    """So a service keeps it out of argv, which `ps` shows to every user (demo_raspberry's unit does)."""
    import argparse

    from edge_enhance.camera import cli
    from tests.test_camera_doubles import RepeatEnhancer

    seen = {}

    def fake_sinks(specs, *, token, **kw):
        seen["token"] = token
        raise ConfigError("stop here")

    monkeypatch.setenv("EDGE_ENHANCE_TOKEN", "from-the-env-123")
    monkeypatch.setattr(cli, "build_sinks", fake_sinks)
    monkeypatch.setattr(cli, "_make_enhancer", lambda *a, **k: RepeatEnhancer())
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    assert cli.main(p.parse_args(["--source", "synthetic:32x32@0", "--web", "0.0.0.0:0"])) == 2
    assert seen["token"] == "from-the-env-123"
    cli.main(p.parse_args(["--source", "synthetic:32x32@0", "--web", "0.0.0.0:0", "--token", "given-on-cli-1"]))
    assert seen["token"] == "given-on-cli-1"


@pytest.mark.parametrize("running", [{}, {"token": "given-secret-1"}], indirect=True)
def test_too_many_query_fields_is_a_400_not_a_dropped_connection(running):
    web, _, _ = running
    query = "?" + "&".join(f"{k}=1" for k in "abcdefghi")  # 9 fields, parse_qs allows 8
    for method, body, headers in (("GET", None, {}), ("POST", "{}", {"Content-Type": "application/json"})):
        status, _, data = request(web, method, "/api/control" + query if method == "POST" else "/" + query,
                                  body, headers)
        assert status == 400 and "more than 8 query fields" in json.loads(data)["error"], (method, data)
    assert request(web, "GET", "/api/stats?a=1&b=2")[0] == (401 if web.token else 200)  # fewer still pass


def test_quit_is_refused_over_the_web(running):
    """Anyone with the link could otherwise stop the service for good (a clean exit is not a failure)."""
    web, p, _ = running
    status, _, body = request(web, "POST", "/api/control", json.dumps({"action": "quit"}),
                              {"Content-Type": "application/json"})
    assert status == 403 and "stop the preview on the device" in json.loads(body)["error"]
    assert not p.controls.quit_requested.is_set() and p._thread.is_alive()


def test_a_bad_token_from_the_environment_names_the_variable(monkeypatch, capsys):
    import argparse

    from edge_enhance.camera import cli

    monkeypatch.setattr(cli, "_make_enhancer", lambda *a, **k: RepeatEnhancer())
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    for token, words in (("short", "at least 8"), ("has spaces in it", "only letters")):
        monkeypatch.setenv("EDGE_ENHANCE_TOKEN", token)
        assert cli.main(p.parse_args(["--source", "synthetic:32x32@0", "--web", "0.0.0.0:0"])) == 2
        err = capsys.readouterr().err
        assert "EDGE_ENHANCE_TOKEN environment variable" in err and words in err and "--token" not in err
    assert cli.main(p.parse_args(["--source", "synthetic:32x32@0", "--web", "0.0.0.0:0", "--token", "short"])) == 2
    assert "--token must be at least 8" in capsys.readouterr().err


@pytest.mark.parametrize("given,shown", [("env", "?token=<EDGE_ENHANCE_TOKEN>"), ("cli", "?token=on-the-cli-123")])
def test_a_token_from_the_environment_is_not_printed(given, shown, monkeypatch, capsys):
    """The service's start-up line goes to the journal; a token typed on the command line is the user's to see."""
    import argparse

    from edge_enhance.camera import cli

    monkeypatch.setattr(cli, "_make_enhancer", lambda *a, **k: RepeatEnhancer())
    monkeypatch.setenv("EDGE_ENHANCE_TOKEN", "from-the-env-123")
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    argv = ["--source", "synthetic:32x32@0", "--web", "0.0.0.0:0", "--frames", "2"]
    assert cli.main(p.parse_args(argv + (["--token", "on-the-cli-123"] if given == "cli" else []))) == 0
    line = next(x for x in capsys.readouterr().err.splitlines() if x.startswith("web viewfinder:"))
    assert line.endswith(shown) and "from-the-env-123" not in line


def test_a_client_that_hangs_up_is_not_an_error_and_a_real_error_is_one_line(running, capsys, caplog):
    # Every aborted connection (a partial request, then a reset) wrote socketserver's ~30-line traceback to
    # stderr: anyone on the LAN could flood the journal.
    import logging

    web, _, _ = running
    caplog.set_level(logging.INFO)
    for gone in (ConnectionResetError(104, "Connection reset by peer"), BrokenPipeError(32, "Broken pipe"),
                 TimeoutError("timed out")):
        try:
            raise gone
        except OSError:
            web._server.handle_error(None, ("192.0.2.7", 50000))
    assert capsys.readouterr().err == "" and caplog.records == []
    try:
        raise KeyError("boom")
    except KeyError:
        web._server.handle_error(None, ("192.0.2.7", 50000))
    assert capsys.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records] == ["web viewfinder: a request from 192.0.2.7 failed (KeyError: 'boom')"]


@pytest.mark.parametrize("running", [{"max_snapshots": 2}], indirect=True)
def test_web_snapshots_are_rate_limited_and_only_the_newest_are_kept(running, tmp_path):
    # 80 snapshots (44 MB) in 15 s were taken, halving the preview's rate; every file was kept for ever and
    # the list of them grew without bound.
    web, _, _ = running
    now = [1000.0]
    web.clock = lambda: now[0]

    def snap():
        status, headers, body = request(web, "POST", "/api/snapshot", "{}", {"Content-Type": "application/json"})
        return status, headers, json.loads(body)

    names = []
    for i in range(3):
        status, _, info = snap()
        assert status == 200, info
        names.append(info["name"])
        now[0] += 0.5  # binary fractions: the sums are exact
        status, headers, info = snap()  # 0.5 s after the last: refused, nothing taken
        assert status == 429 and headers["Retry-After"] == "1"
        assert info["error"] == "at most one snapshot every 1 s; try again in 0.5 s"
        now[0] += 0.5
    assert list(web.snapshots) == names[1:] and len(set(names)) == 3
    assert sorted(p.name for p in (tmp_path / "snaps").iterdir()) == sorted(names[1:])  # the oldest deleted
    assert request(web, "GET", f"/snapshots/{names[0]}")[0] == 404
    assert request(web, "GET", f"/snapshots/{names[2]}")[0] == 200


def test_the_server_reuses_an_address_except_on_windows(monkeypatch):
    """Windows: SO_REUSEADDR let a second viewfinder bind a port already in use, silently."""
    import os

    from edge_enhance.camera import web

    for name, reuse in (("posix", 1), ("nt", 0)):
        with monkeypatch.context() as m:
            m.setattr(os, "name", name)
            srv = web._Server(("127.0.0.1", 0), web._Handler)
        try:
            assert bool(srv.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)) == bool(reuse)
        finally:
            srv.server_close()
