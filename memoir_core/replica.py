"""Following a shared edit log: apply logged entries to a Memory in version order, start over
from a stored memory, and a digest that two replicas compare to prove they hold the same memory.

A log entry is what a store hands a follower: the version it produces, its kind ("edit" or
"rollback"), the edit id and, for an edit, the full EditRecord (mask and quantised delta).
Applying entries is exact: W_m is an int64 sum of quantised deltas, so every replica that
applies the same entries in the same order holds the same bits. Like Memoir itself, none of
this is thread-safe: the thread that owns the Memoir calls it, with `memoir.memory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import StateError
from .records import EditRecord
from .state import Loaded, restore

if TYPE_CHECKING:
    from .memorystate import Memory


@dataclass
class LogEntry:
    version: int
    kind: str  # "edit" | "rollback"
    edit_id: str
    record: EditRecord | None = None  # an edit's record (version set)


class LogGapError(StateError):
    """The entries do not follow the memory's version: the log was compacted past this replica
    (or entries were skipped); it must start over from a snapshot."""


def apply_entries(memory: "Memory", entries: list[LogEntry]) -> int:
    """Apply the entries that follow memory.version, in order; older ones are skipped.

    Returns how many were applied; LogGapError at the first entry that does not follow."""
    applied = 0
    for e in entries:
        if e.version <= memory.version:
            continue
        if e.version != memory.version + 1:
            raise LogGapError(f"the log entry for version {e.version} does not follow the memory's version "
                              f"{memory.version}")
        if e.kind == "edit":
            rec = e.record
            if rec is None or rec.id != e.edit_id:
                raise StateError(f"log entry {e.version} has no usable edit record")
            memory.follow(rec, e.version)
        elif e.kind == "rollback":
            memory.remove(e.edit_id)  # version + 1
        else:
            raise StateError(f"log entry {e.version} has an unknown kind {e.kind!r}")
        applied += 1
    return applied


def reset(memory: "Memory", loaded: Loaded) -> None:
    """Replace the whole memory by a stored one (a replica that fell behind a compaction)."""
    memory.reset()
    restore(memory, loaded)


def digest(memory: "Memory") -> dict:
    """sha256 of W_m's exact accumulator and of the mask banks, with the version and the edit ids
    in apply order: equal digests mean bit-identical memories (Memory.digest)."""
    return memory.digest()
