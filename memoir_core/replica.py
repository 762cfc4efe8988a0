"""Following a shared edit log: apply logged entries to a Memoir in version order, start over
from a stored memory, and a digest that two replicas compare to prove they hold the same memory.

A log entry is what a store hands a follower: the version it produces, its kind ("edit" or
"rollback"), the edit id and, for an edit, the full EditRecord (mask and quantised delta).
Applying entries is exact: W_m is an int64 sum of quantised deltas, so every replica that
applies the same entries in the same order holds the same bits. Like Memoir itself, none of
this is thread-safe: the thread that owns the Memoir calls it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import StateError
from .records import EditRecord
from .state import Loaded, restore

if TYPE_CHECKING:
    from .memoir import Memoir


@dataclass
class LogEntry:
    version: int
    kind: str  # "edit" | "rollback"
    edit_id: str
    record: EditRecord | None = None  # an edit's record (version set)


class LogGapError(StateError):
    """The entries do not follow the memory's version: the log was compacted past this replica
    (or entries were skipped); it must start over from a snapshot."""


def apply_entries(memoir: "Memoir", entries: list[LogEntry]) -> int:
    """Apply the entries that follow memoir.version, in order; older ones are skipped.

    Returns how many were applied; LogGapError at the first entry that does not follow."""
    applied = 0
    for e in entries:
        if e.version <= memoir.version:
            continue
        if e.version != memoir.version + 1:
            raise LogGapError(f"the log entry for version {e.version} does not follow the memory's version "
                              f"{memoir.version}")
        if e.kind == "edit":
            rec = e.record
            if rec is None or rec.id != e.edit_id:
                raise StateError(f"log entry {e.version} has no usable edit record")
            if rec.supersedes is not None and rec.supersedes in memoir.edits:
                memoir._unapply(memoir.edits.pop(rec.supersedes))
            if rec.id in memoir.edits:
                raise StateError(f"log entry {e.version} adds edit {rec.id!r}, which is already live")
            memoir.apply(rec)
            memoir.version = e.version
        elif e.kind == "rollback":
            memoir.remove(e.edit_id)  # version + 1
        else:
            raise StateError(f"log entry {e.version} has an unknown kind {e.kind!r}")
        applied += 1
    return applied


def reset(memoir: "Memoir", loaded: Loaded) -> None:
    """Replace the whole memory by a stored one (a replica that fell behind a compaction)."""
    memoir.weights.acc.zero_()
    memoir.weights.weight.zero_()
    memoir.edits = {}
    memoir.rebuild_guard()
    memoir.version = 0
    memoir.bank = type(memoir.bank)(memoir.width, memoir.config.k)
    memoir.keybank = type(memoir.keybank)(memoir.width, memoir.config.k)
    memoir._routes.clear()
    restore(memoir, loaded)


def digest(memoir: "Memoir") -> dict:
    """sha256 of W_m's exact accumulator and of the mask banks (slot order and bits), with the
    version and the edit ids in apply order: equal digests mean bit-identical memories."""
    acc = memoir.weights.acc.detach().cpu().contiguous().numpy()
    ids, bits = memoir.bank.export()
    kids, kbits = memoir.keybank.export()
    bank = hashlib.sha256()
    for part in (repr(ids).encode(), np.ascontiguousarray(bits).tobytes(), repr(kids).encode(),
                 np.ascontiguousarray(kbits).tobytes()):
        bank.update(part)
    return {"version": memoir.version, "edits": list(memoir.edits),
            "w_m_sha256": hashlib.sha256(acc.tobytes()).hexdigest(), "bank_sha256": bank.hexdigest(), "bank_order": ids}
