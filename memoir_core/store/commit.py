"""The commit marker: the last version the store acknowledged, kept apart from the journal.

The journal alone cannot see a loss that leaves it well formed: a file cut at a record
boundary, cut to 0 bytes, or a segment deleted. The marker is evidence kept elsewhere: after
each record is fsynced, its version is written into DIR/COMMIT and fsynced before the edit is
acknowledged, so a journal that ends below the marker has lost acknowledged edits.

Two 32-byte slots, each with its own crc32; version v goes into slot v % 2, so a write torn by
a crash leaves the other slot, one version older, intact. The marker may trail the journal by
the one record written just before a crash (never acknowledged); it never leads it.
"""

from __future__ import annotations

import os
import struct
import time
import zlib

from . import fsio
from .layout import COMMIT, corrupt

_SLOT = struct.Struct("<4sIQd")  # magic, 0, version, time
MAGIC = b"MC01"
SLOT_BYTES = _SLOT.size + 8  # + crc32, 0


def _slot(version: int) -> bytes:
    body = _SLOT.pack(MAGIC, 0, version, time.time())
    return body + struct.pack("<II", zlib.crc32(body), 0)


def _parse(raw: bytes) -> int | None:
    if len(raw) < SLOT_BYTES:
        return None
    body = raw[: _SLOT.size]
    (crc, _) = struct.unpack_from("<II", raw, _SLOT.size)
    magic, _, version, _ = _SLOT.unpack(body)
    return version if magic == MAGIC and crc == zlib.crc32(body) else None


def read(root: str) -> int | None:
    """The acknowledged version the marker records; None where there is no marker (a state made
    before markers existed, or not yet created). A marker with no valid slot is damage."""
    try:
        with open(os.path.join(root, COMMIT), "rb") as f:
            raw = f.read(2 * SLOT_BYTES)
    except FileNotFoundError:
        return None
    found = [v for v in (_parse(raw[:SLOT_BYTES]), _parse(raw[SLOT_BYTES:])) if v is not None]
    if not found:
        raise corrupt(root, f"{COMMIT} has no valid slot (the last acknowledged version cannot be read)")
    return max(found)


class Marker:
    """The open marker of a store that takes writes."""

    def __init__(self, root: str, version: int, reset: bool = False):
        """Open DIR/COMMIT, creating it at `version` if missing; reset: write `version` into both
        slots (start-up after an accepted loss: the lost versions will be used again)."""
        self.path = os.path.join(root, COMMIT)
        if not os.path.exists(self.path):
            fsio.write_file(self.path, _slot(version) * 2)
            fsio.fsync_dir(root)
        self.fd = fsio.open_rw(self.path)
        if reset:
            fsio.pwrite(self.fd, _slot(version) * 2, 0)
            fsio.fsync(self.fd)

    def write(self, version: int) -> None:
        """Record `version` as acknowledged (fsynced). On an error the slot is put back as it was,
        where that still works, so the marker does not claim a record that is then cut."""
        at = (version % 2) * SLOT_BYTES
        before = os.pread(self.fd, SLOT_BYTES, at)
        try:
            fsio.pwrite(self.fd, _slot(version), at)
            fsio.fsync(self.fd)
        except OSError:
            try:
                fsio.pwrite(self.fd, before, at)
                fsio.fsync(self.fd)
            except OSError:
                pass  # the marker may lead the journal by this record: start-up reports it
            raise

    def close(self) -> None:
        fsio.close(self.fd)


def create_file(root: str) -> None:
    """The marker of a new, empty state (before its manifest: a state with a manifest has one)."""
    path = os.path.join(root, COMMIT)
    if os.path.exists(path):
        fsio.unlink(path)
    fsio.write_file(path, _slot(0) * 2)
