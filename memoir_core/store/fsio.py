"""Every call by which the state store changes the disk, in one place.

The store never calls os.write / os.fsync / os.replace directly: crash tests swap these
functions for ones that count operations, stop at a chosen one, and remember only what was
fsynced, to check that nothing acknowledged depends on data the page cache still held.
"""

from __future__ import annotations

import os
import shutil

_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)


def create(path: str) -> int:
    """A new file for writing (fails if it exists); the caller fsyncs its directory."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644)


def open_append(path: str) -> int:
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)


def open_rw(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CLOEXEC)


def pwrite(fd: int, data: bytes, offset: int) -> None:
    """Overwrite bytes in place (the commit marker's slots)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        if n <= 0:  # pragma: no cover - os.write raises rather than returning 0 for files
            raise OSError("short write")
        view = view[n:]


def fsync(fd: int) -> None:
    os.fsync(fd)


def fsync_dir(path: str) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def replace(src: str, dst: str) -> None:
    os.replace(src, dst)


def mkdir(path: str) -> None:
    os.mkdir(path)


def unlink(path: str) -> None:
    os.unlink(path)


def rmtree(path: str) -> None:
    shutil.rmtree(path)


def close(fd: int) -> None:
    os.close(fd)


def write_file(path: str, data: bytes) -> None:
    """Write a new file and fsync it (not its directory)."""
    fd = create(path)
    try:
        write_all(fd, data)
        fsync(fd)
    finally:
        close(fd)


def replace_file(path: str, data: bytes) -> None:
    """Atomically give `path` the content `data`: temp file, fsync, rename, fsync directory."""
    tmp = f"{path}.tmp-{os.getpid()}"
    if os.path.exists(tmp):
        unlink(tmp)
    write_file(tmp, data)
    replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")
