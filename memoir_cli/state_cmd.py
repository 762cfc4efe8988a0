"""`memoir state inspect|export|import|verify`: what is in a state directory, move it, check it.

All four only read the source directory and take no lock, so they work beside a running
server (a view that changes underneath is read again).
"""

from __future__ import annotations

import json
import os
import sys
import time


def add_parsers(sub) -> None:
    p = sub.add_parser("state", help="inspect, export, import or verify a memory state directory")
    ss = p.add_subparsers(dest="state_command", required=True)
    q = ss.add_parser("inspect", help="manifest, version, live edits, sizes, last edits")
    q.add_argument("dir", help="a state directory, or a postgresql:// URL (docs/replicas.md)")
    q.add_argument("--last", type=int, default=5, help="how many of the newest edits to list")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(func=run_inspect)
    q = ss.add_parser("verify", help="check every checksum and replay the log; exit 0 if sound, 1 if not")
    q.add_argument("dir", help="a state directory, or a postgresql:// URL (docs/replicas.md)")
    q.set_defaults(func=run_verify)
    q = ss.add_parser("export", help="write a verified, compacted copy of the state to one archive file")
    q.add_argument("dir")
    q.add_argument("archive", help="output file: .tar, or .tar.gz / .tgz to compress")
    q.set_defaults(func=run_export)
    q = ss.add_parser("import", help="unpack an export into a new directory and verify it")
    q.add_argument("archive")
    q.add_argument("dir", help="a directory that does not exist yet, or an empty one")
    q.set_defaults(func=run_import)


def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 1


def _mb(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def summary(view, last: int = 5) -> dict:
    from memoir_core.store.lock import locked_by
    from memoir_core.store.portable import disk_usage
    from memoir_core.store.reader import lock_path

    m, reg = view.manifest, view.registry
    newest = sorted(reg.live.values(), key=lambda r: r.version)[-last:] if last else []
    return {
        "dir": view.root, "model": m.model, "fingerprint": m.fingerprint, "layer": m.layer, "k": m.k,
        "width": m.width, "d_out": m.d_out, "tau": m.config.get("tau"), "format_version": m.format_version,
        "created_at": view.manifest_body.get("created_at"), "version": reg.version, "live_edits": len(reg.live),
        "snapshot": {"name": view.snapshot, "version": view.snapshot_version, "bytes": view.snapshot_bytes},
        "journal": {"segments": len(view.segments), "records_after_snapshot": view.replayed,
                    "bytes_after_snapshot": view.journal_bytes},
        "disk_bytes": disk_usage(view.root), "locked_by": locked_by(lock_path(view.root)),
        "torn_tail": None if view.torn is None else {"file": os.path.relpath(view.torn.path, view.root),
                                                      "bytes": view.torn.size, "why": view.torn.why},
        "leftovers": view.leftovers,
        "last_edits": [{"id": r.id, "version": r.version, "created_at": r.created_at, "author": r.author,
                        "prompt": r.prompt, "target_new": r.target_new, "supersedes": r.supersedes} for r in newest],
        "recent_log": view.recent,
    }


def _is_url(where: str) -> bool:
    return where.startswith(("postgresql://", "postgres://"))


def inspect_postgres(args) -> int:
    from memoir_core.errors import MemoirError
    from memoir_core.store.postgres.inspect import summary as pg_summary

    try:
        s = pg_summary(args.dir, args.last)
    except MemoirError as e:
        return _fail(e)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    d = s["deltas"]
    lines = [
        f"database         {s['url']}",
        f"model            {s['model']} (fingerprint {s['fingerprint']})",
        f"layout           layer {s['layer']}, k {s['k']}, width {s['width']}, d_out {s['d_out']}, "
        f"tau {s['tau']}, format {s['format_version']}",
        f"version          {s['version']}",
        f"live edits       {s['live_edits']}",
        f"log              {s['log']['edits']} edit(s), {s['log']['rollbacks']} rollback(s) (every row kept)",
        f"deltas           {d['kept']} kept: {_mb(d['bytea_bytes'])} bytea, {_mb(d['large_object_bytes'])} "
        "large objects",
        "snapshots        " + (", ".join(f"v{v}" for v in s["snapshots"]) or "none yet"),
        f"database         {_mb(s['database_bytes'])}",
    ]
    for r in s["replicas"]:
        lines.append(f"replica          {r['name']} at version {r['version']}, seen {r['seen_seconds_ago']:.0f} s ago"
                     + (f" ({r['url']})" if r["url"] else ""))
    lines += newest_edits(s["last_edits"])
    print("\n".join(lines))
    return 0


def run_inspect(args) -> int:
    from memoir_core.errors import StateError
    from memoir_core.store.portable import read_view

    if _is_url(args.dir):
        return inspect_postgres(args)
    try:
        view = read_view(args.dir)
    except (StateError, OSError) as e:
        return _fail(e)
    if view is None:
        return _fail(f"{os.path.abspath(args.dir)} holds no memory state")
    s = summary(view, args.last)
    if args.json:
        print(json.dumps(s, indent=2, default=str))
        return 0
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["created_at"])) if s["created_at"] else "?"
    disk = s["disk_bytes"]
    lines = [
        f"state directory  {s['dir']}",
        f"model            {s['model']} (fingerprint {s['fingerprint']})",
        f"layout           layer {s['layer']}, k {s['k']}, width {s['width']}, d_out {s['d_out']}, "
        f"tau {s['tau']}, format {s['format_version']}",
        f"created          {when}",
        f"version          {s['version']}",
        f"live edits       {s['live_edits']}",
        "snapshot         " + (f"version {view.snapshot_version}, {_mb(view.snapshot_bytes)}" if view.snapshot
                                else "none yet"),
        f"journal          {len(view.segments)} segment(s), {view.replayed} record(s) after the snapshot, "
        f"{_mb(view.journal_bytes)}",
        f"disk             journal {_mb(disk['journal'])}, snapshots {_mb(disk['snapshots'])}, "
        f"other {_mb(disk['other'])}",
        "in use           " + (f"by process {s['locked_by']}" if s["locked_by"] else "no"),
    ]
    if s["torn_tail"]:
        lines.append(f"torn tail        {s['torn_tail']['file']}: {s['torn_tail']['bytes']} bytes (cut at start-up)")
    if s["leftovers"]:
        lines.append(f"leftovers        {', '.join(s['leftovers'])} (removed at start-up)")
    lines += newest_edits(s["last_edits"])
    print("\n".join(lines))
    return 0


def run_verify(args) -> int:
    from memoir_core.errors import StateError
    from memoir_core.store.portable import verify

    if _is_url(args.dir):
        from memoir_core.errors import MemoirError
        from memoir_core.store.postgres.inspect import verify as pg_verify

        try:
            loaded = pg_verify(args.dir)
        except MemoirError as e:
            return _fail(e)
        print(f"ok: the memory in PostgreSQL is sound: version {loaded.version}, {len(loaded.edits)} live edits, "
              "every checksum and the log verified")
        return 0
    try:
        view, warnings = verify(args.dir)
    except (StateError, OSError) as e:
        return _fail(e)
    for w in warnings:
        print(f"warning: {w}")
    print(f"ok: {view.root} is sound: version {view.registry.version}, {len(view.registry.live)} live edits, "
          f"every checksum and W_m's accumulator verified")
    return 0


def run_export(args) -> int:
    from memoir_core.errors import StateError
    from memoir_core.store.portable import export

    try:
        view = export(args.dir, args.archive)
    except (StateError, OSError) as e:
        return _fail(e)
    print(f"exported version {view.registry.version} ({len(view.registry.live)} live edits) to {args.archive} "
          f"({_mb(os.path.getsize(args.archive))})")
    return 0


def run_import(args) -> int:
    from memoir_core.errors import StateError
    from memoir_core.store.portable import import_

    try:
        view = import_(args.archive, args.dir)
    except (StateError, OSError, EOFError) as e:
        return _fail(e)
    except Exception as e:  # tarfile raises its own errors for a damaged archive
        return _fail(f"{args.archive} cannot be read: {e}")
    print(f"imported version {view.registry.version} ({len(view.registry.live)} live edits) into {view.root}; verified")
    return 0


def newest_edits(last_edits: list[dict]) -> list[str]:
    if not last_edits:
        return []
    return ["newest edits"] + [f"  v{e['version']:<6} {e['id']:<18} {e['author'] or '-':<10} "
                               f"{e['prompt'][:48]!r} -> {e['target_new'][:32]!r}" for e in reversed(last_edits)]
