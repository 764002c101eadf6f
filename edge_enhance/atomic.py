"""Atomic writes: readers (and a crash) never see half a file, and a failure leaves nothing behind."""
from __future__ import annotations

import contextlib
import functools
import glob
import os
import tempfile
from pathlib import Path

from .errors import OutputError


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; done once, then restored
    os.umask(mask)
    return mask


def default_mode(fd: int) -> None:
    """Give a mkstemp file (0600) the mode a new file gets under the umask, so a photo or video written
    through a temporary is as readable by other users as one written directly."""
    os.fchmod(fd, 0o666 & ~_umask())


def unwritable(folder) -> str | None:
    """Why no file can be created in ``folder`` (tried: permission bits say nothing to root, nor of an
    immutable or read-only-mounted folder), or None."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".edge-enhance-probe-"):
            return None
    except OSError as e:
        return e.strerror or str(e)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process (or not a pid): leave it alone
        return True
    return True


def sweep_stale(path) -> int:
    """Remove the temporaries that a killed writer (SIGKILL, power cut) left beside ``path``: names
    ``.NAME.PID-XXXX.part`` whose PID no longer runs on this machine. Returns how many were removed."""
    path = Path(path)
    n = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*-*.part"):
        pid = tmp.name[len(path.name) + 2:].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            with contextlib.suppress(OSError):
                tmp.unlink()
                n += 1
    return n


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """A temporary file beside `path`, renamed onto it on a clean exit (after fsync, with the mode
    any new file gets: mkstemp's 0600 would hide a photo from other users); removed on any error.
    The temporary's name carries the PID, so a later write of the same path removes what a killed
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
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".part")
    try:
        default_mode(fd)
        with os.fdopen(fd, mode) as f:
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


def refuse_overwriting_input(src, dst, overwrite: bool = False) -> None:
    """An output that is its input (by any name: a link, ./, ..) is written only with ``overwrite``."""
    if not overwrite and Path(dst).exists() and Path(dst).resolve() == Path(src).resolve():
        raise OutputError(f"{dst}: would overwrite the input; pass --overwrite or choose another output")
