"""Atomic writes: readers (and a crash) never see half a file, and a failure leaves nothing behind."""
from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import os
import re
import socket
import tempfile
import time
from pathlib import Path

from .errors import OutputError


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; done once, then restored
    os.umask(mask)
    return mask


def default_mode(fd: int) -> None:
    """Give a mkstemp file (0600) the mode a new file gets under the umask, so a photo or video written
    through a temporary is as readable by other users as one written directly. Windows before Python 3.13
    has no fchmod (nor mode bits that hide a file from other users): there it does nothing."""
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o666 & ~_umask())


def closed_temp(folder, prefix: str, suffix: str) -> str:
    """An empty mkstemp file in ``folder`` with :func:`default_mode`, closed, for a writer that opens it by
    name (OpenCV, ffmpeg); removed again if that fails (Windows cannot remove a file left open)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            default_mode(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def unwritable(folder) -> str | None:
    """Why no file can be created in ``folder`` (tried: permission bits say nothing to root, nor of an
    immutable or read-only-mounted folder), or None."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".edge-enhance-probe-"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def _alive(pid: int) -> bool | None:
    """Whether process ``pid`` runs; None where that cannot be asked."""
    if os.name == "nt":  # os.kill(pid, 0) there sends CTRL_C_EVENT to pid's console: no probe at all
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # someone else's process (or not a pid): leave it alone
        return True
    return True


@functools.lru_cache(maxsize=1)
def process_space() -> str:
    """8 hex digits naming where our PIDs mean something: this host, boot and PID namespace. Another
    container, or another host sharing the folder over NFS, has its own, and its PIDs are not ours."""
    parts = [socket.gethostname()]
    for read in (lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip(),
                 lambda: os.readlink("/proc/self/ns/pid")):
        with contextlib.suppress(OSError):
            parts.append(read())
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:8]


STALE_ELSEWHERE_S = 24 * 3600  # a temporary from another PID space (or an older name) older than this is left over


def _temp_stem(name: str) -> str:
    """``name`` as it starts its temporaries' names: cut, with a hash of the whole, where the temporary's
    name (about 30 bytes longer) would pass the 255 bytes a file name may have."""
    raw = os.fsencode(name)
    if len(raw) <= 200:
        return name
    return raw[:190].decode("utf-8", "ignore") + "~" + hashlib.sha1(raw).hexdigest()[:8]


def sweep_stale(path) -> int:
    """Remove the temporaries that a killed writer (SIGKILL, power cut) left beside ``path``: names
    ``.NAME.SPACE.PID-XXXX.part`` of our :func:`process_space` whose PID no longer runs. One from another
    space (a container or host writing the same folder) is alive as far as we can tell, and goes only
    once a day old, as does an older ``.NAME.PID-XXXX.part`` and, on Windows (where no PID is probed),
    any temporary. Returns how many were removed."""
    path = Path(path)
    stem, n = _temp_stem(path.name), 0
    for tmp in path.parent.glob(f".{glob.escape(stem)}.*-*.part"):
        m = re.fullmatch(r"(?:([0-9a-f]{8})\.)?(\d+)-\w+\.part", tmp.name[len(stem) + 2:])
        if not m:
            continue
        space, pid, stale = m.group(1), int(m.group(2)), False
        ours = space == process_space()
        if ours and pid == os.getpid():
            continue  # being written now
        alive = _alive(pid) if ours else None
        if alive is None:
            with contextlib.suppress(OSError):
                stale = time.time() - tmp.stat().st_mtime > STALE_ELSEWHERE_S
        else:
            stale = not alive
        if stale:
            with contextlib.suppress(OSError):
                tmp.unlink()
                n += 1
    return n


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """A temporary file beside `path`, renamed onto it on a clean exit (after fsync, with the mode
    any new file gets: mkstemp's 0600 would hide a photo from other users); removed on any error.
    The temporary's name carries the PID (and its PID space), so a later write of the same path removes what a killed
    process left (:func:`sweep_stale`).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> with atomic_file(p) as f:
    ...     _ = f.write(b"ok")
    >>> p.read_bytes()
    b'ok'
    """
    path = Path(path)
    sweep_stale(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{_temp_stem(path.name)}.{process_space()}.{os.getpid()}-",
                               suffix=".part")
    try:
        with os.fdopen(fd, mode) as f:  # opened first: any failure after closes it, so it can be removed
            default_mode(f.fileno())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    with atomic_file(path) as f:
        f.write(data)
    return Path(path)


def same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` name one file: by device and inode where both exist (IMG_0001.JPG and
    IMG_0001.jpg are one file on macOS's and Windows' case-insensitive disks, as are two hard links),
    else by their resolved paths."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # one is not there (yet)
        return Path(a).resolve() == Path(b).resolve()


def refuse_overwriting_input(src, dst, overwrite: bool = False) -> None:
    """An output that is its input (by any name: a link, ./, .., another case) is written only with ``overwrite``."""
    try:
        there = Path(dst).exists()
    except OSError as e:  # a name longer than the file system takes (ENAMETOOLONG), ...
        raise OutputError(f"{dst}: cannot write ({e.strerror})") from None
    if not overwrite and there and same_file(dst, src):
        raise OutputError(f"{dst}: would overwrite the input; pass --overwrite (overwrite=True in Python) or choose "
                          "another output")
