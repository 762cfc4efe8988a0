"""Names in a state directory, self-checking JSON files, and the corruption message.

    DIR/LOCK                      flock'ed by the one process that owns the state
    DIR/manifest.json             what the state was made for (written once, last, by create)
    DIR/basis.safetensors         permutation and background mean (+ prefixes in its metadata)
    DIR/COMMIT                    the last acknowledged version, in two checksummed slots (commit.py)
    DIR/CURRENT                   names the newest complete snapshot (replaced atomically)
    DIR/snapshots/<version>/      registry.json, edits.safetensors, memory.safetensors
    DIR/journal/<version>.wal     append-only records; the name is the version of the first one
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from ..errors import StateCorruptError

MANIFEST = "manifest.json"
BASIS = "basis.safetensors"
CURRENT = "CURRENT"
COMMIT = "COMMIT"
LOCK = "LOCK"
SNAPSHOTS = "snapshots"
JOURNAL = "journal"
SEGMENT_SUFFIX = ".wal"
TMP_MARK = ".tmp-"

RECOVERY = ("Nothing was changed on disk. Restore the directory from a backup (`memoir state export` on a "
            "healthy copy, then `memoir state import`), or move it aside and start with an empty state directory; "
            "`memoir state verify DIR` lists every problem it finds.")


def corrupt(root: str, what: str, todo: str = RECOVERY) -> StateCorruptError:
    return StateCorruptError(f"state directory {root} is damaged: {what}. {todo}")


def sha256(data) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def checked_json(body: dict[str, Any], kind: str) -> bytes:
    """JSON that carries the sha256 of its own body, so a damaged file is told from a valid one."""
    return json.dumps({"kind": kind, "body": body, "sha256": sha256(canonical(body))}, indent=1).encode() + b"\n"


def parse_checked(data: bytes, kind: str, root: str, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
        body = doc["body"]
        ok = doc.get("kind") == kind and doc.get("sha256") == sha256(canonical(body))
    except (ValueError, TypeError, KeyError):
        ok = False
    if not ok:
        raise corrupt(root, f"{name} is not a valid {kind} file (unreadable JSON or wrong checksum)")
    return body


def read_bytes(path: str) -> bytearray:
    """A whole file in one buffer (tensors decoded from it are views, not copies)."""
    with open(path, "rb", buffering=0) as f:
        size = os.fstat(f.fileno()).st_size
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = f.readinto(view[got:])
            if not n:
                raise OSError(f"{path} shrank while it was read")
            got += n
    return buf


def segment_name(version: int) -> str:
    return f"{version:020d}{SEGMENT_SUFFIX}"


def snapshot_name(version: int) -> str:
    return f"{version:020d}"


def parse_version(name: str, suffix: str = "") -> int | None:
    stem = name[: len(name) - len(suffix)] if suffix and name.endswith(suffix) else (None if suffix else name)
    return int(stem) if stem and stem.isdigit() and len(stem) == 20 else None
