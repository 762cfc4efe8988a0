"""The write-ahead journal: framed, checksummed records appended to segment files.

Record layout (every record starts and ends 8-aligned, so tensors read from it are aligned):

    magic "MJ01" | header length u32 | payload length u64 | crc32 of those 16 bytes | 0 u32
    sha256 of everything after it (header, payload, padding)
    header: JSON {"kind": "edit"|"removal", "version", "id", "info"?, "time"} padded with spaces
    payload: safetensors {"idx": [k] int64, "delta": [d_out, k] int32, "inputs"?: [r, k] fp16}
             (edits only; inputs: guard.py, absent in records written before it), zero padding

The frame has its own crc so a damaged length is never mistaken for a record that runs past
the end of the file. A record that cannot be read is a torn write only if it is short (the
file ends inside it), in the last segment, and no valid record follows it; anything else is
corruption, a whole record with a bad checksum included.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from ..records import TENSORS, EditRecord
from . import fsio, tensorfile
from .layout import segment_name, sha256

MAGIC = b"MJ01"
_FRAME = struct.Struct("<4sIQ")  # magic, header length, payload length
PREFIX = _FRAME.size + 8 + 32  # frame, crc + pad, sha256
_MAX_HEADER = 16 << 20
_MAX_PAYLOAD = 1 << 40


def _pad(n: int) -> int:
    return -n % 8


def encode(header: dict[str, Any], payload: bytes = b"") -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * _pad(len(text))
    body = text + payload + b"\0" * _pad(len(payload))
    frame = _FRAME.pack(MAGIC, len(text), len(payload))
    return frame + struct.pack("<II", zlib.crc32(frame), 0) + bytes.fromhex(sha256(body)) + body


def encode_edit(rec: EditRecord) -> bytes:
    payload = tensorfile.encode(record_tensors(rec))
    info = rec.info()
    json.dumps(info)  # fail here, before any write, if the metadata is not JSON
    return encode({"kind": "edit", "version": rec.version, "id": rec.id, "time": time.time(), "info": info}, payload)


def encode_removal(edit_id: str, version: int) -> bytes:
    return encode({"kind": "removal", "version": version, "id": edit_id, "time": time.time()})


@dataclass
class Entry:
    offset: int
    end: int
    header: dict[str, Any]
    payload: tuple[int, int]  # span in the segment's buffer

    @property
    def version(self) -> int:
        return self.header["version"]


def _frame_at(buf, pos: int) -> tuple[int, int] | None:
    """(header length, payload length) if a valid frame starts at pos."""
    if len(buf) - pos < PREFIX:
        return None
    magic, hlen, plen = _FRAME.unpack_from(buf, pos)
    (crc, _) = struct.unpack_from("<II", buf, pos + _FRAME.size)
    if magic != MAGIC or crc != zlib.crc32(bytes(buf[pos : pos + _FRAME.size])):
        return None
    if hlen > _MAX_HEADER or plen > _MAX_PAYLOAD or hlen % 8:
        return None
    return hlen, plen


def parse_at(buf, pos: int) -> tuple[Entry | None, str]:
    """The record at pos, or None and why not."""
    frame = _frame_at(buf, pos)
    if frame is None:
        return None, "no valid record frame"
    hlen, plen = frame
    start = pos + PREFIX
    end = start + hlen + plen + _pad(plen)
    if end > len(buf):
        return None, f"the record needs {end - pos} bytes, {len(buf) - pos} remain"
    if bytes(buf[pos + _FRAME.size + 8 : start]) != bytes.fromhex(sha256(memoryview(buf)[start:end])):
        return None, "the record's checksum does not match"
    try:
        header = json.loads(bytes(buf[start : start + hlen]))
        ok = isinstance(header, dict) and header.get("kind") in ("edit", "removal") \
            and isinstance(header.get("version"), int) and isinstance(header.get("id"), str)
    except ValueError:
        ok = False
    if not ok:
        return None, "the record's header is malformed"
    return Entry(pos, end, header, (start + hlen, start + hlen + plen)), ""


def is_whole(buf, pos: int) -> bool:
    """Whether the damaged record at pos is whole, so damaged after it was written rather than
    torn while it was: its frame reads and the file holds all of its bytes, or (a damaged frame)
    the sha256 it carries matches everything after its prefix."""
    frame = _frame_at(buf, pos)
    if frame is not None:
        hlen, plen = frame
        return pos + PREFIX + hlen + plen + _pad(plen) <= len(buf)
    if len(buf) - pos <= PREFIX:
        return False
    return bytes(buf[pos + _FRAME.size + 8 : pos + PREFIX]) == hashlib.sha256(memoryview(buf)[pos + PREFIX :]).digest()


_GUESS = re.compile(rb'"version":(\d+),"id":"((?:[^"\\]|\\.){0,200})"')


def guess(buf, pos: int) -> tuple[int, str] | None:
    """(version, id) read from a damaged record's header, unchecked: only to name what is lost."""
    m = _GUESS.search(bytes(buf[pos + PREFIX : pos + PREFIX + 4096]))
    if m is None:
        return None
    try:
        return int(m.group(1)), json.loads(b'"' + m.group(2) + b'"')
    except ValueError:
        return None


def _valid_record_after(buf, pos: int) -> int | None:
    at = pos
    while True:
        at = buf.find(MAGIC, at + 1)
        if at < 0:
            return None
        if parse_at(buf, at)[0] is not None:
            return at


@dataclass
class Scan:
    entries: list[Entry] = field(default_factory=list)
    valid_end: int = 0  # bytes of whole records
    damage: str | None = None  # why the bytes after valid_end are not a record
    followed: int | None = None  # offset of a valid record after the damage (corruption, not a tear)
    whole: bool = False  # the damaged record is whole (corruption, not a tear)


def scan(buf: bytearray) -> Scan:
    out = Scan()
    pos = 0
    while pos < len(buf):
        entry, why = parse_at(buf, pos)
        if entry is None:
            out.damage = why
            out.followed = _valid_record_after(buf, pos)
            out.whole = is_whole(buf, pos)
            break
        out.entries.append(entry)
        pos = entry.end
    out.valid_end = pos
    return out


def decode_edit(buf, entry: Entry) -> EditRecord:
    """The EditRecord of an edit entry; ValueError when its payload or info is unusable."""
    tensors, _ = tensorfile.decode(buf, *entry.payload)
    if set(tensors) - {"inputs"} != {"idx", "delta"}:
        raise ValueError("an edit payload must hold idx and delta (and inputs) only")
    info = entry.header.get("info")
    if not isinstance(info, dict) or info.get("id") != entry.header["id"] \
            or info.get("version") != entry.header["version"]:
        raise ValueError("the record's info does not match its header")
    return record_from_info(info, tensors["idx"], tensors["delta"], tensors.get("inputs"))


def record_tensors(rec: EditRecord) -> dict:
    out = {"idx": rec.idx, "delta": rec.delta}
    if rec.inputs is not None:
        out["inputs"] = rec.inputs
    return out


def record_from_info(info: dict[str, Any], idx, delta, inputs=None) -> EditRecord:
    known = set(EditRecord.__dataclass_fields__) - set(TENSORS)
    try:
        return EditRecord.from_info({k: v for k, v in info.items() if k in known}, idx, delta, inputs)
    except TypeError as e:
        raise ValueError(f"edit info is unusable: {e}") from None


class JournalWriter:
    """Appends records to the newest segment; a rotation makes the next record start a new one."""

    def __init__(self, directory: str, segment: str | None = None):
        self.directory = directory
        self._fd = fsio.open_append(segment) if segment else None
        self.segment = segment
        self._dir_synced = True  # False while a new segment's directory entry may not be durable

    def append(self, version: int, data: bytes, then=None) -> int:
        """Write and fsync one record (and the directory, for a new segment), then call `then`
        (the commit marker), before returning the byte offset it starts at in self.segment.

        On an error the file is cut back to where the record began, if that still works, and
        the error propagates.
        """
        if self._fd is None:
            self.segment = os.path.join(self.directory, segment_name(version))
            self._fd = fsio.create(self.segment)
            self._dir_synced = False  # until it is, also after a failed append (a later one retries)
        start = os.fstat(self._fd).st_size
        try:
            fsio.write_all(self._fd, data)
            fsio.fsync(self._fd)
            if not self._dir_synced:
                fsio.fsync_dir(self.directory)
                self._dir_synced = True
            if then is not None:
                then()
        except OSError:
            try:
                fsio.truncate(self._fd, start)
                fsio.fsync(self._fd)
            except OSError:
                pass  # a torn tail is cut at the next start-up
            raise
        return start

    def rotate(self) -> None:
        if self._fd is not None:
            fsio.close(self._fd)
        self._fd, self.segment = None, None

    close = rotate
