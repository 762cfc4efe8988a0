"""The tables of a memory kept in PostgreSQL, created once (under the init lock) by the first replica.

    memoir_manifest  one row: what the memory was made for (Manifest fields, basis sha256) and the
                     basis (permutation, background mean, training prefixes) as safetensors bytes
    memoir_log       one row per memory version, in order: an edit (its registry fields and audit
                     data in `info`, its mask indices) or a rollback. Rows are never deleted: the
                     log is the audit trail (compaction clears the mask of an edit no longer
                     live). `seq` IS the memory version: assigned as head + 1 by the one writer
                     that holds the write lock, so the log has no gaps (a bigserial would skip
                     numbers on every aborted transaction)
    memoir_delta     an edit's quantised W_m delta, one row per edit, apart from the log so that
                     scans of the log (catch-up headers, snapshots, audits) never read megabytes:
                     `bytea`, or a large object above MEMOIR_PG_LARGE_DELTA_BYTES (blobs.py)
    memoir_snapshot  catch-up points: at `version`, the seqs of the live edits in apply order and
                     the mask bank's slot order; the deltas of edits no longer live at an older
                     snapshot are compacted away
    memoir_replica   each replica's name, URL and applied version (status and lag, not state)
"""

from __future__ import annotations

CHANNEL = "memoir_log"  # NOTIFY payload: the new head version
# advisory lock keys (pg_advisory_*): constants unlikely to be used by another application in the database
WRITE_LOCK = 0x6D656D6F  # "memo": one writer appends at a time
INIT_LOCK = 0x6D656D69  # creating the tables and the manifest

# in the order they can be dropped; the first is created last (its presence means all exist)
TABLES = ("memoir_replica", "memoir_snapshot", "memoir_delta", "memoir_log", "memoir_manifest")

DDL = """
CREATE TABLE IF NOT EXISTS memoir_manifest (
    id          smallint PRIMARY KEY CHECK (id = 1),
    body        jsonb NOT NULL,
    basis       bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS memoir_log (
    seq         bigint PRIMARY KEY CHECK (seq > 0),
    kind        text NOT NULL CHECK (kind IN ('edit', 'rollback')),
    edit_id     text NOT NULL,
    supersedes  text,
    info        jsonb,
    idx         bytea,
    author      text,
    replica     text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'edit') = (info IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS memoir_log_edit_id ON memoir_log (edit_id);
CREATE TABLE IF NOT EXISTS memoir_delta (
    seq         bigint PRIMARY KEY REFERENCES memoir_log (seq) ON DELETE CASCADE,
    sha256      text NOT NULL,
    bytes       bigint NOT NULL,
    delta       bytea,
    lo          oid,
    CHECK ((delta IS NULL) <> (lo IS NULL))
);
ALTER TABLE memoir_delta ALTER COLUMN delta SET STORAGE EXTERNAL;
CREATE TABLE IF NOT EXISTS memoir_snapshot (
    version     bigint PRIMARY KEY,
    live        bigint[] NOT NULL,
    bank_order  text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS memoir_replica (
    name        text PRIMARY KEY,
    url         text,
    version     bigint NOT NULL DEFAULT 0,
    seen_at     timestamptz NOT NULL DEFAULT now()
);
"""
