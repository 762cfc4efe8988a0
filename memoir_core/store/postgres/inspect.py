"""What a memory in PostgreSQL holds (`memoir state inspect postgresql://...`) and whether it is
sound (`memoir state verify postgresql://...`). Read only: safe beside running replicas."""

from __future__ import annotations

from ...state import Loaded
from .store import PostgresStore


def summary(url: str, last: int = 5) -> dict:
    store = PostgresStore(url, replica="memoir-state-cli")
    try:
        loaded = store.load_latest()
        conn = store.connect()
        try:
            kinds = dict(conn.execute("SELECT kind, count(*) FROM memoir_log GROUP BY kind").fetchall())
            deltas, inline, large = conn.execute(
                "SELECT count(*), coalesce(sum(bytes) FILTER (WHERE delta IS NOT NULL), 0), "
                "coalesce(sum(bytes) FILTER (WHERE lo IS NOT NULL), 0) FROM memoir_delta").fetchone()
            snaps = [int(r[0]) for r in conn.execute("SELECT version FROM memoir_snapshot ORDER BY version")]
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
        finally:
            conn.close()
        replicas = store.replicas()
    finally:
        store.close()
    m = loaded.manifest
    newest = sorted(loaded.edits, key=lambda r: r.version)[-last:] if last else []
    return {
        "url": store.where, "model": m.model, "fingerprint": m.fingerprint, "layer": m.layer, "k": m.k,
        "width": m.width, "d_out": m.d_out, "tau": m.config.get("tau"), "format_version": m.format_version,
        "version": loaded.version, "live_edits": len(loaded.edits),
        "log": {"edits": int(kinds.get("edit", 0)), "rollbacks": int(kinds.get("rollback", 0))},
        "deltas": {"kept": int(deltas), "bytea_bytes": int(inline), "large_object_bytes": int(large)},
        "snapshots": snaps, "database_bytes": int(size), "replicas": replicas,
        "last_edits": [{"id": r.id, "version": r.version, "created_at": r.created_at, "author": r.author,
                        "prompt": r.prompt, "target_new": r.target_new, "supersedes": r.supersedes} for r in newest],
    }


def verify(url: str) -> Loaded:
    """Read the newest memory as a starting replica does: every checksum (the basis, each live
    delta), the registry's checks on every record, the log replayed without a gap."""
    store = PostgresStore(url, replica="memoir-state-cli")
    try:
        return store.load_latest()
    finally:
        store.close()
