"""Reading the edit log: its head, the entries after a version (in pages), and the newest state
(snapshot + tail) that start-up and a replica that fell behind a compaction rebuild from."""

from __future__ import annotations

from ...replica import LogEntry, LogGapError
from . import blobs
from .codec import entry

_SELECT = """
SELECT l.seq, l.kind, l.edit_id, l.info, l.idx, d.delta, d.lo, d.bytes, d.sha256
FROM memoir_log l LEFT JOIN memoir_delta d ON d.seq = l.seq
"""


def _entry(conn, row) -> LogEntry:
    seq, kind, edit_id, info, idx, inline, oid, size, digest = row
    return entry(seq, kind, edit_id, info, idx, blobs.read(conn, inline, oid, size), digest)
PAGE = 64  # entries per query: bounded memory for a long tail (each holds a W_m delta)


def head(conn) -> int:
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM memoir_log").fetchone()[0])


def after(conn, version: int, limit: int | None = PAGE) -> list[LogEntry]:
    """Up to `limit` entries after `version`, in order; LogGapError if they do not follow it."""
    sql = _SELECT + " WHERE l.seq > %s ORDER BY l.seq" + (" LIMIT %s" if limit else "")
    rows = conn.execute(sql, (version, limit) if limit else (version,)).fetchall()
    out = [_entry(conn, row) for row in rows]
    expected = version + 1
    for e in out:
        if e.version != expected:
            raise LogGapError(f"the log has no entry for version {expected} (the next one is {e.version}): "
                              "it was compacted into a snapshot")
        expected += 1
    return out


def all_after(conn, version: int) -> list[LogEntry]:
    out: list[LogEntry] = []
    while True:
        page = after(conn, version)
        out += page
        if len(page) < PAGE:
            return out
        version = page[-1].version


def rows(conn, seqs: list[int]) -> list[LogEntry]:
    """The entries with these seqs, in the order given (a snapshot's live edits)."""
    found = {}
    for start in range(0, len(seqs), PAGE):
        chunk = seqs[start : start + PAGE]
        for row in conn.execute(_SELECT + " WHERE l.seq = ANY(%s)", (chunk,)).fetchall():
            e = _entry(conn, row)
            found[e.version] = e
    return [found[s] for s in seqs if s in found]
