"""Tensors of stored edits read by offset from the state files that hold them.

A durable store keeps an edit's delta (d_out x k int32: 1 MB on the default model, 67 MB on an
8B one) and its guard inputs on disk only. A FileRef points at their bytes in a journal
segment or a snapshot's edits file; rollback, supersede, snapshots and export read them back,
serving never does. Each ref carries the crc32 its bytes had when they were known good (just
written, or just checked against the file's sha256), so a file damaged later is reported,
never summed into W_m.

Refs into one file share one read-only descriptor, closed when the last ref goes: a journal
segment or old snapshot deleted by compaction stays readable until no live edit points into
it, and its disk space comes back then.
"""

from __future__ import annotations

import json
import os
import struct
import zlib

import torch

from ..errors import StateCorruptError
from . import tensorfile


class OpenFile:
    """One read-only descriptor on a state file."""

    def __init__(self, path: str):
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def pread(self, size: int, offset: int) -> bytes:
        out = os.pread(self._fd, size, offset)
        if len(out) != size:
            raise StateCorruptError(f"{self.path}: {size} bytes at byte {offset} are past its end; "
                                    "the file was cut short after it was written")
        return out

    def __del__(self, _close=os.close) -> None:  # os may be gone at interpreter exit
        fd, self._fd = getattr(self, "_fd", -1), -1
        if fd >= 0:
            _close(fd)


class FileRef:
    """One tensor's bytes in an OpenFile (records.Stored)."""

    __slots__ = ("file", "offset", "shape", "dtype", "crc")

    def __init__(self, file: OpenFile, offset: int, shape: tuple[int, ...], dtype: torch.dtype, crc: int):
        self.file, self.offset, self.shape, self.dtype, self.crc = file, offset, tuple(shape), dtype, crc

    @property
    def nbytes(self) -> int:
        return tensorfile.nbytes(self.dtype, self.shape)

    def read(self) -> torch.Tensor:
        data = self.file.pread(self.nbytes, self.offset)
        if zlib.crc32(data) != self.crc:
            raise StateCorruptError(f"{self.file.path}: the tensor at byte {self.offset} has changed since it "
                                    "was written (crc32 differs); restore the state directory from a backup")
        return torch.frombuffer(bytearray(data), dtype=self.dtype).view(self.shape) if data else \
            torch.empty(self.shape, dtype=self.dtype)

    def moved(self, file: OpenFile, offset: int) -> FileRef:
        """The same bytes at another place (a snapshot rewrote them)."""
        return FileRef(file, offset, self.shape, self.dtype, self.crc)


def crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensorfile.raw(tensor))


def ref_to(file: OpenFile, offset: int, tensor: torch.Tensor) -> FileRef:
    """A ref to `tensor`'s bytes, known to lie at `offset` in `file`."""
    return FileRef(file, offset, tuple(tensor.shape), tensor.dtype, crc(tensor))


def tensor_offsets(buf, start: int, end: int) -> dict[str, int]:
    """Where each tensor's data begins, relative to `start`, in the safetensors bytes buf[start:end]."""
    (n,) = struct.unpack_from("<Q", buf, start)
    head = json.loads(bytes(buf[start + 8: start + 8 + n]))
    head.pop("__metadata__", None)
    return {name: 8 + n + int(spec["data_offsets"][0]) for name, spec in head.items()}


def spill_entry(rec, file: OpenFile, buf, payload: tuple[int, int], base: int = 0) -> None:
    """Point rec's delta and inputs at their bytes in a journal record whose payload is
    buf[payload[0]:payload[1]], the record lying at `base` in `file` (buf from the record's start
    when base is its file offset, or the whole segment when base is 0)."""
    offsets = tensor_offsets(buf, *payload)
    handles = {}
    for name in ("delta", "inputs"):
        held = rec.stored(name)
        if isinstance(held, torch.Tensor) and name in offsets:
            handles[name] = ref_to(file, base + payload[0] + offsets[name], held)
    rec.spill(**handles)
