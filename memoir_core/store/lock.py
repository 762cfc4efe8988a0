"""One process per state directory: an flock held for the store's lifetime.

flock (not a pid file) because the kernel drops it when the holder dies, even by kill -9,
so a crashed server never blocks its own restart. The pid in the file is only for the message.
"""

from __future__ import annotations

import errno
import fcntl
import os

from ..errors import StateLockedError


class DirLock:
    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise StateLockedError(
                f"state directory {os.path.dirname(self.path)} is in use by process {holder(self.path) or '?'} "
                f"(lock file {self.path}); stop that server first, or give this one another state directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def holder(path: str) -> int | None:
    """The pid written by the process that holds (or last held) the lock."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def locked_by(path: str) -> int | None:
    """The holder's pid if the lock is held now, else None (probes without keeping it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except OSError:
        return holder(path) or -1
    finally:
        os.close(fd)
