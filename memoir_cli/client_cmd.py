"""`memoir client add|preview|list|show|delete|import|export`: the edits of a running server.

Reads MEMOIR_URL and MEMOIR_ADMIN_KEY from the environment (or --url / --key). Exit status: 0
on success, 1 when the server refused (the message is printed) or an import refused rows, 2
when a local file cannot be read or written.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .client import Client, ClientError, importable
from .import_chunks import split


def add_parsers(sub) -> None:
    p = sub.add_parser("client", aliases=["edits"], help="manage the edits of a running server (MEMOIR_URL, "
                       "MEMOIR_ADMIN_KEY)")
    _common(p, default=True)
    # the same options after the subcommand too (`memoir client list --json`); SUPPRESS keeps a
    # subcommand's parser from resetting what was given before it
    common = argparse.ArgumentParser(add_help=False)
    _common(common, default=False)
    cs = p.add_subparsers(dest="client_command", required=True)
    for name, helptext in (("add", "apply one edit"), ("preview", "dry run: answers before/after, blast radius")):
        q = cs.add_parser(name, help=helptext, parents=[common])
        q.add_argument("prompt")
        q.add_argument("target_new")
        q.add_argument("-p", "--paraphrase", action="append", default=[], help="another wording (repeatable)")
        q.add_argument("--subject")
        q.add_argument("--id", help="your id for the edit (idempotent retries)")
        q.add_argument("-m", "--meta", action="append", default=[], metavar="KEY=VALUE", help="metadata (repeatable)")
        q.set_defaults(func=run_edit, dry_run=name == "preview")
    q = cs.add_parser("list", help="the registry, one edit a line", parents=[common])
    q.add_argument("-s", "--search", help="only edits whose prompt, target, subject or id contain this")
    q.add_argument("--author")
    q.set_defaults(func=run_list)
    q = cs.add_parser("show", help="one edit, with the edits sharing its columns", parents=[common])
    q.add_argument("id")
    q.set_defaults(func=run_show)
    q = cs.add_parser("delete", help="roll one edit back", parents=[common])
    q.add_argument("id")
    q.set_defaults(func=run_delete)
    q = cs.add_parser("import", help="import a JSON Lines or CSV file, with a progress bar", parents=[common])
    q.add_argument("file", help="a .jsonl or .csv file, or - for stdin")
    q.add_argument("--format", choices=["jsonl", "csv"], help="default: from the file name, else jsonl")
    q.add_argument("--no-wait", action="store_true", help="print the job id and return")
    q.add_argument("--chunk-bytes", type=int, default=900_000, help="send a bigger file in pieces of at most this "
                   "many bytes, one job after the other (the server's MEMOIR_MAX_BODY_BYTES is 1 MiB by default)")
    q.set_defaults(func=run_import)
    q = cs.add_parser("export", help="the registry as JSON Lines (importable again)", parents=[common])
    q.add_argument("-o", "--output", help="file to write (default: stdout)")
    q.add_argument("--full", action="store_true", help="every field of the registry, not only the importable ones")
    q.set_defaults(func=run_export)


def _common(p, default: bool) -> None:
    keep = {} if default else {"default": argparse.SUPPRESS}
    p.add_argument("--url", help="server URL (default: $MEMOIR_URL or http://127.0.0.1:8000)", **keep)
    p.add_argument("--key", help="admin key (default: $MEMOIR_ADMIN_KEY)", **keep)
    p.add_argument("--json", action="store_true", help="print the server's JSON answers", **keep)


def _client(args) -> Client:
    return Client(args.url, args.key)


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


def _guard(fn):
    def run(args) -> int:
        try:
            return fn(args) or 0
        except ClientError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M")


@_guard
def run_edit(args) -> int:
    meta = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep:
            raise ClientError(f"--meta {item!r} is not KEY=VALUE")
        meta[key] = value
    edit = {"prompt": args.prompt, "target_new": args.target_new, "rephrase_prompts": args.paraphrase,
            "metadata": meta}
    edit.update({k: v for k, v in (("subject", args.subject), ("id", args.id)) if v})
    with _client(args) as c:
        result = c.edit(edit, dry_run=args.dry_run)
    if args.json:
        _print(result)
    elif args.dry_run:
        _print_preview(result)
    else:
        for e in result["edits"]:
            print(f"{e['id']}  version {e['version']}  {e['steps']} steps  loss {e['final_loss']}  "
                  f"best overlap {e['best_overlap']:.3f} ({e['best_overlap_id'] or '-'})"
                  + (f"  supersedes {e['supersedes']}" if e.get("supersedes") else "")
                  + ("  (replayed)" if e["replayed"] else ""))
    return 0


def _print_preview(p) -> None:
    print(f"dry run: {p['steps']} steps, loss {p['final_loss']}, best overlap {p['best_overlap']:.3f} "
          f"({p['best_overlap_id'] or '-'}); memory version {p['version']} unchanged")
    for a in p["answers"]:
        print(f"  [{a['kind']}] {a['prompt']}")
        print(f"     before: {a['before']!r}")
        print(f"     after:  {a['after']!r}" + ("" if a["fired"] else "  (the memory does not fire)"))
    b = p["blast_radius"]
    limit = "no limit" if b["limit"] is None else f"limit {b['limit']}" + (" - OVER" if b["over_limit"] else "")
    print(f"blast radius: {b['count']} of {b['total']} background texts ({limit})")
    for probe in b["probes"]:
        print(f"  {probe['overlap']:.3f} {probe['text']!r}: {probe['before']!r} -> {probe['after']!r}")


@_guard
def run_list(args) -> int:
    with _client(args) as c:
        entries = list(c.edits())
    if args.search:
        q = args.search.lower()
        entries = [e for e in entries if any(q in str(e.get(f) or "").lower()
                                             for f in ("id", "prompt", "target_new", "subject"))]
    if args.author:
        entries = [e for e in entries if e.get("author") == args.author]
    if args.json:
        _print(entries)
        return 0
    for e in entries:
        print(f"{e['id']:<20} v{e['version']:<5} {_when(e['created_at'])}  {e.get('author') or '-':<10} "
              f"{e['prompt'][:50]!r} -> {e['target_new'][:30]!r}"
              + (f"  (supersedes {e['supersedes']})" if e.get("supersedes") else ""))
    print(f"{len(entries)} edits", file=sys.stderr)
    return 0


@_guard
def run_show(args) -> int:
    with _client(args) as c:
        _print(c.get(args.id))
    return 0


@_guard
def run_delete(args) -> int:
    with _client(args) as c:
        result = c.delete(args.id)
    if args.json:
        _print(result)
    else:
        shared = ", ".join(f"{k} ({v})" for k, v in result["shared_columns"].items()) or "none"
        print(f"rolled back {result['id']}; memory version {result['version']}; shared columns with: {shared}")
    return 0


@_guard
def run_import(args) -> int:
    try:
        data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as error:
        print(f"memoir client import: cannot read {args.file}: {error.strerror or error}", file=sys.stderr)
        return 2
    fmt = args.format or ("csv" if args.file.lower().endswith(".csv") else "jsonl")
    chunks = split(data, fmt, args.chunk_bytes)
    if args.no_wait and len(chunks) > 1:
        raise ClientError(f"the file is sent in {len(chunks)} pieces (over --chunk-bytes), one after the other; "
                          "--no-wait needs a single piece")
    with _client(args) as c:
        if args.no_wait:
            print(c.start_import(chunks[0].data, fmt)["id"])
            return 0
        job = _import_all(c, chunks, fmt)
    if args.json:
        _print(job)
    else:
        for e in job["errors"]:
            print(f"line {e['line']}: {e['error']}", file=sys.stderr)
        print(f"import {job['id']} {job['status']}: {job['applied_count']} applied, {job['error_count']} rows "
              f"refused" + (f" ({job['reason']})" if job.get("reason") else ""))
    return 0 if job["status"] == "done" and not job["errors"] else 1


def _import_all(c: Client, chunks: list, fmt: str) -> dict:
    """Each piece as a job, one after the other, under one progress bar; one merged report with
    the whole file's line numbers."""
    from tqdm import tqdm

    merged = {"id": "", "status": "done", "total": 0, "done": 0, "applied_count": 0, "error_count": 0,
              "reason": None, "errors": [], "applied": []}
    ids = []
    with tqdm(total=sum(ch.rows for ch in chunks), unit="row", desc="import", file=sys.stderr) as bar:
        for chunk in chunks:
            base = bar.n
            job = c.start_import(chunk.data, fmt)
            ids.append(job["id"])
            while True:
                bar.update(base + job["done"] - bar.n)
                bar.set_postfix(applied=merged["applied_count"] + job["applied_count"],
                                refused=merged["error_count"] + job["error_count"], refresh=False)
                if job["status"] != "running":
                    break
                time.sleep(0.5)
                job = c.import_job(job["id"])
            for key in ("total", "done", "applied_count", "error_count"):
                merged[key] += job[key]
            merged["errors"] += [{**e, "line": chunk.line(e["line"])} for e in job["errors"]]
            merged["applied"] += [{**a, "line": chunk.line(a["line"])} for a in job["applied"]]
            if job["status"] != "done":
                merged["status"], merged["reason"] = job["status"], job.get("reason")
                break
    merged["id"] = ",".join(ids)
    return merged


@_guard
def run_export(args) -> int:
    try:
        out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    except OSError as error:
        print(f"memoir client export: cannot write {args.output}: {error.strerror or error}", file=sys.stderr)
        return 2
    n = 0
    try:
        with _client(args) as c:
            for entry in c.edits():
                out.write(json.dumps(entry if args.full else importable(entry), ensure_ascii=False) + "\n")
                n += 1
    finally:
        if args.output:
            out.close()
    print(f"{n} edits exported", file=sys.stderr)
    return 0
