"""Writing files so that a crash never leaves a half-written one."""

from __future__ import annotations

import contextlib
import os

__all__ = ["atomic_write"]


def atomic_write(path, write) -> None:
    """Create ``path`` with ``write(f)`` (``f`` a binary file) so that it is always the old or the new file.

    ``write`` fills a temporary file in the same folder, which is flushed to disk and moved over
    ``path`` with ``os.replace`` (atomic on POSIX and Windows); the folder entry is then synced
    too. A process killed at any instant leaves the previous complete file (and at most a stray
    ``*.tmp-<pid>`` file, removed by the next write); an exception removes the temporary file.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.bin")
    >>> atomic_write(path, lambda f: f.write(b"new"))
    >>> open(path, "rb").read()
    b'new'
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
