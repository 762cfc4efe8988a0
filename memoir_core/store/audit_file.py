"""The audit trail in a state directory: DIR/audit.jsonl, one self-checking JSON line per event,
appended and fsynced before append() returns.

A line whose checksum does not match is reported (problems), never dropped silently or
rewritten; a last line cut short by a crash was never acknowledged and is reported as torn.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import zlib

from ..audit import AuditEvent, AuditLog
from . import fsio

log = logging.getLogger(__name__)
NAME = "audit.jsonl"


def _crc(body: dict) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class FileAudit(AuditLog):
    def __init__(self, root: str):
        self.path = os.path.join(root, NAME)
        self.where = self.path
        self._mu = threading.Lock()
        self.problems: list[str] = []
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            fd = fsio.open_append(self.path) if os.path.exists(self.path) else fsio.create(self.path)
            if os.fstat(fd).st_size and not self._ends_with_newline():
                fsio.write_all(fd, b"\n")  # a torn last line stays on its own line, as evidence
            self._fd = fd
        return self._fd

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def append(self, event: AuditEvent) -> None:
        body = event.to_dict()
        line = json.dumps({"crc": _crc(body), "event": body}, ensure_ascii=True).encode() + b"\n"
        with self._mu:
            fd = self._open()
            fsio.write_all(fd, line)
            fsio.fsync(fd)

    def _newest_first(self):
        events, problems = [], []
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        lines = data.split(b"\n")
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            last = number == len(lines)  # no newline after it: cut short while it was written
            try:
                doc = json.loads(raw)
                body = doc["event"]
                if _crc(body) != doc["crc"]:
                    raise ValueError("checksum mismatch")
                events.append(AuditEvent.from_dict(body))
            except (ValueError, KeyError, TypeError) as error:
                what = "torn (cut short by a crash; never acknowledged)" if last else f"damaged ({error})"
                problems.append(f"{self.path} line {number}: {what}")
        if problems != self.problems:
            for p in problems:
                log.error("audit trail: %s", p)
        self.problems = problems
        return list(reversed(events))

    def close(self) -> None:
        with self._mu:
            if self._fd is not None:
                fsio.close(self._fd)
                self._fd = None
