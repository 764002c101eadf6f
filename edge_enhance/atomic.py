"""Atomic writes: readers (and a crash) never see half a file, and a failure leaves nothing behind."""
from __future__ import annotations

import contextlib
import functools
import os
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; done once, then restored
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path, mode: str = "wb"):
    """A temporary file beside `path`, renamed onto it on a clean exit (after fsync, with the mode
    any new file gets: mkstemp's 0600 would hide a photo from other users); removed on any error.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.bin"
    >>> with atomic_file(p) as f:
    ...     _ = f.write(b"ok")
    >>> p.read_bytes()
    b'ok'
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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
