"""Web viewfinder: a standard-library HTTP server streaming before/after MJPEG to a static page.

Security model: loopback bind by default (and then only Host: localhost / 127.0.0.1 / ::1 is
accepted, against DNS rebinding). Any other bind needs a token (generated when none is given);
every request must carry it (``?token=``, ``X-Token`` / ``Authorization: Bearer`` header, or the
HttpOnly cookie set when the page is opened with ``?token=``), compared with hmac.compare_digest.
Only the files found in ``static/`` at start-up and snapshots this server created can be fetched,
so no request path can reach any other file. Request line, headers and bodies are size-limited.

Each streaming client has its own one-frame buffer: a slow client loses frames, nobody else does.
"""
from __future__ import annotations

import concurrent.futures
import hmac
import http.cookies
import ipaddress
import json
import logging
import math
import mimetypes
import os
import re
import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from .controls import ACTIONS
from .errors import ConfigError, EdgeEnhanceError, SinkError
from .frames import encode_jpeg
from .sinks import Result, Sink

log = logging.getLogger(__name__)

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_REQUEST_LINE = 2048
MAX_HEADERS = 32
MAX_HEADER_BYTES = 8192
MAX_BODY = 1024
MAX_QUERY_FIELDS = 8
STREAMS = ("before", "after")
# Each snapshot runs the full model on the loop's thread and writes a PNG: unlimited, a page (or anyone with
# the link) could halve the preview's rate and fill the disk. The newest are kept, older ones this server
# wrote are deleted.
SNAPSHOT_INTERVAL = 1.0  # seconds between snapshots taken from the web page
MAX_SNAPSHOTS = 50  # snapshot files the web page's snapshots keep
COOKIE = "ee_token"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def parse_hostport(text: str, default_port: int = 8080) -> tuple[str, int]:
    """'127.0.0.1:8080' -> ('127.0.0.1', 8080); '[::1]:9000', ':8080' and '8080' (loopback), '0.0.0.0' too."""
    host, port = text, default_port
    if text.isdigit():  # a bare port, as `--web 8081` is meant
        host, port = "", text
    elif text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        port = int(port)
    except ValueError:
        raise ConfigError(f"web address {text!r}: port must be a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"web address {text!r}: port {port} out of range")
    return host or "127.0.0.1", port


class ClientSlot:
    """One streaming client's latest unsent JPEG."""

    def __init__(self):
        self._cond = threading.Condition()
        self._data: bytes | None = None
        self.closed = False
        self.sent = self.dropped = 0

    def put(self, data: bytes):
        with self._cond:
            if self._data is not None:
                self.dropped += 1
            self._data = data
            self._cond.notify()

    def get(self, timeout: float) -> bytes | None:
        with self._cond:
            if self._data is None and not self.closed:
                self._cond.wait(timeout)
            data, self._data = self._data, None
        return data

    def close(self):
        with self._cond:
            self.closed = True
            self._cond.notify_all()


class MjpegHub:
    def __init__(self, max_clients: int):
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._slots: dict[str, set[ClientSlot]] = {s: set() for s in STREAMS}
        self._last: dict[str, bytes] = {}
        self.sent = self.dropped = 0  # totals of clients that have left

    def subscribe(self, stream: str) -> ClientSlot | None:
        with self._lock:
            if sum(map(len, self._slots.values())) >= self.max_clients:
                return None
            slot = ClientSlot()
            self._slots[stream].add(slot)
            if stream in self._last:  # show something at once, even from a slow source
                slot.put(self._last[stream])
            return slot

    def unsubscribe(self, stream: str, slot: ClientSlot):
        with self._lock:
            self._slots[stream].discard(slot)
            self.sent += slot.sent
            self.dropped += slot.dropped

    def wants(self, stream: str) -> bool:
        return bool(self._slots[stream])

    def publish(self, stream: str, data: bytes):
        with self._lock:
            self._last[stream] = data
            slots = list(self._slots[stream])
        for s in slots:
            s.put(data)

    def close(self):
        with self._lock:
            slots = [s for group in self._slots.values() for s in group]
        for s in slots:
            s.close()

    def describe(self) -> dict:
        with self._lock:
            live = [s for group in self._slots.values() for s in group]
            return {"clients": len(live), "sent": self.sent + sum(s.sent for s in live),
                    "dropped": self.dropped + sum(s.dropped for s in live)}


def _load_static(folder: str) -> dict[str, tuple[bytes, str]]:
    files = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not name.startswith("."):
            with open(path, "rb") as f:
                ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
                if ctype.startswith("text/") or ctype in ("application/javascript",):
                    ctype += "; charset=utf-8"
                files[name] = (f.read(), ctype)
    if "index.html" not in files:
        raise SinkError(f"{folder}: web viewfinder page index.html is missing (broken install?)")
    return files


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    @property
    def allow_reuse_address(self) -> bool:
        """SO_REUSEADDR: on Linux and macOS it only lets a restart take its port back at once; on Windows it
        lets a second server bind a port another is listening on, silently, where 'in use' should be said."""
        return os.name != "nt"

    def handle_error(self, request, client_address):
        """socketserver printed a 30-line traceback for each error, a client that hung up too (anyone on the
        network can, at will): those are not errors; a real one is said on one line (its traceback at -vv)."""
        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):  # broken pipe, reset, aborted; a client too slow
            log.debug("web viewfinder: client %s left (%s)", client_address[0], e)
        else:
            log.error("web viewfinder: a request from %s failed (%s: %s)", client_address[0], type(e).__name__, e)
            log.debug("the request's traceback", exc_info=True)


class WebViewfinder(Sink):
    """``--sink web:HOST:PORT``. ``port=0`` picks a free port (see ``.port`` / ``.url`` after start)."""

    name = "web"

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, *, token: str | None = None,
                 quality: int = 80, max_clients: int = 8, snapshot_timeout: float = 15.0, on_ready=None,
                 token_name: str = "--token", snapshot_interval: float = SNAPSHOT_INTERVAL,
                 max_snapshots: int = MAX_SNAPSHOTS):
        """``token_name``: where the token came from, for the errors (the option or an environment variable).
        ``snapshot_interval``, ``max_snapshots``: see SNAPSHOT_INTERVAL and MAX_SNAPSHOTS."""
        if token is not None and len(token) < 8:
            raise ConfigError(f"{token_name} must be at least 8 characters")
        if token is not None and not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
            # it travels in a URL and a cookie: other characters would need escaping and get cut by browsers
            raise ConfigError(f"{token_name} may use only letters, digits and . _ ~ - (as secrets.token_urlsafe gives)")
        if not 10 <= quality <= 100:
            raise ConfigError(f"JPEG quality {quality} must be in 10..100")
        if max_snapshots < 1:
            raise ConfigError(f"max_snapshots {max_snapshots} must be >= 1")
        self.host, self.port, self.quality = host, port, quality
        self.loopback = is_loopback(host)
        self.token_generated = token is None and not self.loopback
        self.token = secrets.token_urlsafe(16) if self.token_generated else token
        self.snapshot_timeout = snapshot_timeout
        self.on_ready = on_ready  # on_ready(url=str, token_generated=bool) once listening
        self.hub = MjpegHub(max_clients)
        self.static = _load_static(STATIC_DIR)
        self.snapshots: dict[str, str] = {}  # name -> path, only files this server produced, oldest first
        self.snapshot_interval, self.max_snapshots = snapshot_interval, max_snapshots
        self.clock = time.monotonic
        self._snapshot_lock = threading.Lock()
        self._last_snapshot: float | None = None
        self.controls = None
        self.get_stats = dict
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.closed = False

    def bind(self, *, controls, stats):
        self.controls, self.get_stats = controls, stats

    @property
    def url(self) -> str:
        host = self.host if self.host not in ("0.0.0.0", "::", "") else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("Server", (_Server,), {"address_family": family})
        try:
            self._server = server_cls((self.host, self.port), _Handler)
        except OSError as e:
            raise SinkError(f"web viewfinder: cannot listen on {self.host}:{self.port} ({e.strerror or e})") from None
        self._server.app = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="web", daemon=True)
        self._thread.start()
        log.info("web viewfinder listening on %s:%d", self.host, self.port)  # the URL may hold the token
        if self.on_ready is not None:
            self.on_ready(url=self.url, token_generated=self.token_generated)

    def show(self, result: Result):
        if self.hub.wants("before"):
            self.hub.publish("before", encode_jpeg(result.before, self.quality))
        if self.hub.wants("after"):
            self.hub.publish("after", encode_jpeg(result.after, self.quality))

    def stop(self):
        self.closed = True
        self.hub.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stats(self) -> dict:
        return {**(self.get_stats() or {}), "web": self.hub.describe()}

    def snapshot_wait(self) -> float:
        """0 and the snapshot counted, or the seconds until one is allowed."""
        with self._snapshot_lock:
            now = self.clock()
            wait = 0.0 if self._last_snapshot is None else self._last_snapshot + self.snapshot_interval - now
            if wait <= 0:
                self._last_snapshot = now
            return max(wait, 0.0)

    def keep_snapshot(self, path: str) -> str:
        """Lists the new snapshot and deletes the oldest ones past ``max_snapshots``; returns its name."""
        name = os.path.basename(path)
        with self._snapshot_lock:
            self.snapshots[name] = path
            while len(self.snapshots) > self.max_snapshots:
                old = self.snapshots.pop(next(iter(self.snapshots)))
                try:
                    os.unlink(old)
                except FileNotFoundError:
                    pass
                except OSError as e:
                    log.warning("%s: cannot delete an old snapshot (%s)", old, e.strerror or e)
        return name


def _host_only(host_header: str) -> str:
    """'127.0.0.1:8080' -> '127.0.0.1'; '[::1]:8080' -> '[::1]'."""
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0]


class _Handler(BaseHTTPRequestHandler):
    server_version = "edge-enhance"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30  # a client that stops reading is dropped after this, instead of holding a thread

    @property
    def app(self) -> WebViewfinder:
        return self.server.app

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def parse_request(self):
        if not super().parse_request():
            return False
        if len(self.requestline) > MAX_REQUEST_LINE:
            self.send_error(414, f"request line longer than {MAX_REQUEST_LINE} bytes")
            return False
        if len(self.headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in self.headers.items()) > MAX_HEADER_BYTES:
            self.send_error(431, f"more than {MAX_HEADERS} headers or {MAX_HEADER_BYTES} header bytes")
            return False
        try:
            self.query = parse_qs(self.path.partition("?")[2], max_num_fields=MAX_QUERY_FIELDS)
        except ValueError:  # parse_qs refuses more fields than that
            self.close_connection = True
            self._json(400, {"error": f"more than {MAX_QUERY_FIELDS} query fields"})
            return False
        return True

    # --- helpers ----------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, ctype: str, extra: dict | None = None):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, obj, extra: dict | None = None):
        self._send(code, json.dumps(obj).encode(), "application/json", extra)

    def _authorised(self) -> bool:
        app = self.app
        if app.token:
            supplied = (self.query.get("token", [None])[0] or self.headers.get("X-Token"))
            auth = self.headers.get("Authorization", "")
            if not supplied and auth.startswith("Bearer "):
                supplied = auth[7:]
            if not supplied:
                try:
                    morsel = http.cookies.SimpleCookie(self.headers.get("Cookie", "")).get(COOKIE)
                    supplied = morsel.value if morsel else None
                except http.cookies.CookieError:
                    supplied = None
            if not supplied or not hmac.compare_digest(supplied.encode(), app.token.encode()):
                self._json(401, {"error": "token required: open the URL printed at start-up (…/?token=…)"})
                return False
            return True
        host = _host_only(self.headers.get("Host") or "")
        if host not in ("localhost", "127.0.0.1", "[::1]", app.host):
            self._json(403, {"error": f"host {host!r} not allowed; use http://127.0.0.1:{app.port}/"})
            return False
        return True

    # --- GET ----------------------------------------------------------------------------------------
    def do_GET(self):
        if not self._authorised():
            return
        app, path = self.app, self.path.partition("?")[0]
        if path in ("/", "/index.html"):
            body, ctype = app.static["index.html"]
            extra = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                                "object-src 'none'; frame-ancestors 'none'"}
            token = self.query.get("token", [None])[0]
            if app.token and token:
                extra["Set-Cookie"] = f"{COOKIE}={app.token}; HttpOnly; SameSite=Strict; Path=/"
            self._send(200, body, ctype, extra)
        elif path.startswith("/static/") and path[len("/static/"):] in app.static:
            body, ctype = app.static[path[len("/static/"):]]
            self._send(200, body, ctype)
        elif path == "/api/stats":
            self._json(200, app.stats())
        elif path.startswith("/stream/") and path[len("/stream/"):].removesuffix(".mjpg") in STREAMS:
            self._stream(path[len("/stream/"):].removesuffix(".mjpg"))
        elif path.startswith("/snapshots/") and path[len("/snapshots/"):] in app.snapshots:
            name = path[len("/snapshots/"):]
            try:
                with open(app.snapshots[name], "rb") as f:
                    body = f.read()
            except OSError:
                self._json(404, {"error": f"snapshot {name} no longer exists"})
                return
            self._send(200, body, "image/png", {"Content-Disposition": f'attachment; filename="{name}"'})
        else:
            self._json(404, {"error": "not found"})

    def _stream(self, stream: str):
        app = self.app
        slot = app.hub.subscribe(stream)
        if slot is None:
            self._json(503, {"error": f"too many viewers (max {app.hub.max_clients})"})
            return
        try:
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            while not app.closed and not slot.closed:
                jpeg = slot.get(timeout=1.0)
                if jpeg is None:
                    continue
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n%s\r\n"
                                 % (len(jpeg), jpeg))
                slot.sent += 1
        except OSError:  # client went away or stopped reading past the socket timeout
            pass
        finally:
            app.hub.unsubscribe(stream, slot)

    # --- POST ---------------------------------------------------------------------------------------
    def do_POST(self):
        if not self._authorised():
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self._json(411, {"error": "Content-Length required"})
            return
        if int(length) > MAX_BODY:
            self.close_connection = True  # do not read (or wait for) the oversized body
            self._json(413, {"error": f"body larger than {MAX_BODY} bytes"})
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
            self.close_connection = True
            self._json(415, {"error": "Content-Type must be application/json"})
            return
        try:
            body = json.loads(self.rfile.read(int(length)) or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError as e:
            self._json(400, {"error": f"body is not a JSON object ({e})"})
            return
        path, app = self.path.partition("?")[0], self.app
        if app.controls is None:
            self._json(503, {"error": "preview not running"})
        elif path == "/api/control":
            self._control(body)
        elif path == "/api/snapshot":
            self._snapshot()
        else:
            self._json(404, {"error": "not found"})

    def _control(self, body: dict):
        action = body.get("action")
        controls = self.app.controls
        if action == "quit":  # anyone with the link could switch the camera off for good
            self._json(403, {"error": "quit is not allowed from the web page; stop the preview on the device "
                                     "(Ctrl-C, or systemctl stop edge-enhance-viewfinder for the service)"})
            return
        try:
            if action == "strength" and "value" in body:
                controls.set_strength(body["value"])
            elif action in ACTIONS and action != "snapshot":
                controls.apply(action)
            else:
                raise ConfigError(f"unknown action {action!r}")
        except ConfigError as e:
            self._json(400, {"error": str(e)})
            return
        self._json(200, {"ok": True, **controls.state.__dict__})

    def _snapshot(self):
        app = self.app
        wait = app.snapshot_wait()
        if wait:
            self._json(429, {"error": f"at most one snapshot every {app.snapshot_interval:g} s; try again in "
                                      f"{wait:.1f} s"}, {"Retry-After": str(math.ceil(wait))})
            return
        future = app.controls.request_snapshot()
        try:
            path = future.result(timeout=app.snapshot_timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            self._json(503, {"error": "no frame arrived in time for a snapshot"})
            return
        except EdgeEnhanceError as e:
            self._json(500, {"error": str(e)})
            return
        name = app.keep_snapshot(path)
        self._json(200, {"name": name, "url": f"/snapshots/{name}"})
