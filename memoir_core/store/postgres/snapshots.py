"""Snapshots (catch-up points) and compaction of the edit log.

A snapshot at version v names the live edits at v (their log seqs, in apply order) and the
mask bank's slot order; the edits' rows stay in memoir_log/memoir_delta while they are live.
Building one reads only log headers (no deltas): the previous snapshot's live set plus the
entries after it, replayed with the bank's swap-remove rule.

Compaction drops what a snapshot made unnecessary: the W_m deltas (and masks) of edits at or
below the compaction horizon that are not live there (rolled back or superseded). The log rows
themselves stay: they are the audit trail (who changed what, when), a few hundred bytes each.
The horizon is the second-newest snapshot, so a replica less than one snapshot interval behind
still finds every entry it needs; one further behind finds a delta gone and rebuilds from the newest
snapshot. Both steps are idempotent: two replicas doing them at once do the same thing.
"""

from __future__ import annotations

from ...errors import StateCorruptError
from . import blobs


def newest(conn) -> tuple[int, list[int], list[str]] | None:
    row = conn.execute("SELECT version, live, bank_order FROM memoir_snapshot ORDER BY version DESC LIMIT 1"
                       ).fetchone()
    return (int(row[0]), list(row[1]), list(row[2])) if row else None


def write(conn, every: int) -> int | None:
    """Write a snapshot at the log head if `every` entries came since the newest; then compact.
    Returns the new snapshot's version, or None when none was due."""
    with conn.transaction():
        start = newest(conn)
        base = start[0] if start else 0
        head = int(conn.execute("SELECT coalesce(max(seq), 0) FROM memoir_log").fetchone()[0])
        if head - base < every:
            return None
        if start is not None:  # the ids of the live seqs, in apply order
            ids = dict(conn.execute("SELECT seq, edit_id FROM memoir_log WHERE seq = ANY(%s)", (start[1],)).fetchall())
            start = (start[0], start[1], start[2], [ids[s] for s in start[1]])
        headers = conn.execute("SELECT seq, kind, edit_id, supersedes FROM memoir_log WHERE seq > %s AND seq <= %s "
                               "ORDER BY seq", (base, head)).fetchall()
        version, live, order = _replay(start, headers)
        conn.execute("INSERT INTO memoir_snapshot (version, live, bank_order) VALUES (%s, %s, %s) "
                     "ON CONFLICT (version) DO NOTHING", (version, live, order))
        compact(conn)
    return version


def _replay(start, headers):
    version, live, order, apply_ids = (start if start else (0, [], [], []))
    by_id = dict(zip(apply_ids, live))
    live, order = list(live), list(order)

    def drop(edit_id: str) -> None:
        live.remove(by_id.pop(edit_id))
        slot, last = order.index(edit_id), len(order) - 1
        if slot != last:  # MaskBank.remove: the last mask takes the freed slot
            order[slot] = order[last]
        order.pop()

    for seq, kind, edit_id, supersedes in headers:
        if seq != version + 1:
            raise StateCorruptError(f"the memory in PostgreSQL is damaged: snapshot replay expected version "
                                    f"{version + 1}, found {seq}")
        if kind == "edit":
            if supersedes is not None and supersedes in by_id:
                drop(supersedes)
            by_id[edit_id] = seq
            live.append(seq)
            order.append(edit_id)
        elif edit_id in by_id:
            drop(edit_id)
        version = seq
    return version, live, order


def compact(conn) -> int:
    """Drop the deltas and masks of edits the second-newest snapshot covers and does not keep
    live (rolled back or superseded); the log rows stay, as the audit trail. Returns how many."""
    snaps = conn.execute("SELECT version, live FROM memoir_snapshot ORDER BY version DESC LIMIT 2").fetchall()
    if len(snaps) < 2:
        return 0
    horizon = int(snaps[1][0])
    # rows live at the horizon stay whole; so do rows live in the newest snapshot (a subset of those, or newer)
    keep = sorted(set(snaps[1][1]) | set(snaps[0][1]))
    dropped = conn.execute("DELETE FROM memoir_delta WHERE seq <= %s AND NOT (seq = ANY(%s)) RETURNING lo",
                           (horizon, keep)).fetchall()
    blobs.unlink(conn, [r[0] for r in dropped])
    conn.execute("UPDATE memoir_log SET idx = NULL WHERE seq <= %s AND kind = 'edit' AND idx IS NOT NULL "
                 "AND NOT (seq = ANY(%s))", (horizon, keep))
    conn.execute("DELETE FROM memoir_snapshot WHERE version < %s", (horizon,))
    return len(dropped)
