"""Where a W_m delta's bytes live: inline `bytea` in memoir_delta, or a PostgreSQL large object.

A delta is d_out x k x 4 bytes: about 1 MB for the default model, 64 MB for an 8B Llama. Up to
`large` bytes (MEMOIR_PG_LARGE_DELTA_BYTES, 16 MiB) it is a `bytea` value (TOASTed out of line);
above, a large object written and read in CHUNK-sized pieces (lo_put / lo_get), so no single
value or protocol message has to hold it and the 1 GB limit of `bytea` does not apply. Either
way it is written in the transaction that appends the edit (an aborted append leaves nothing),
and compaction unlinks the large objects of the deltas it drops.
"""

from __future__ import annotations

CHUNK = 8 << 20


def write(conn, data: bytes, large: int) -> tuple[bytes | None, int | None]:
    """(bytea value, None) or (None, large object oid) for the delta `data`."""
    if len(data) <= large:
        return data, None
    oid = int(conn.execute("SELECT lo_create(0)").fetchone()[0])
    view = memoryview(data)
    for offset in range(0, len(data), CHUNK):
        conn.execute("SELECT lo_put(%s, %s, %s)", (oid, offset, bytes(view[offset : offset + CHUNK])))
    return None, oid


def read(conn, inline, oid: int | None, size: int | None) -> bytes | None:
    """The delta's bytes (None if neither is there: compacted)."""
    if inline is not None:
        return bytes(inline)
    if oid is None:
        return None
    out = bytearray()
    total = size if size is not None else 0
    while len(out) < total:
        piece = conn.execute("SELECT lo_get(%s, %s, %s)", (oid, len(out), min(CHUNK, total - len(out)))).fetchone()[0]
        if not piece:
            break
        out += piece
    return bytes(out)


def unlink(conn, oids) -> None:
    for oid in oids:
        if oid is not None:
            conn.execute("SELECT lo_unlink(%s)", (oid,))
