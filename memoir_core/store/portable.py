"""Operator tools on a state directory: read it safely while a server may own it, check it
fully, and move it to another machine as one archive.

An export is a fresh, compacted state (manifest, basis, one snapshot of the live memory,
an empty journal) built from a view that was fully verified, so it is consistent even when
taken from a running server, and no bigger than the live memory.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
import time

import torch

from ..errors import StateCorruptError, StateError
from . import fsio, reader, snapshot
from .audit_file import NAME as AUDIT
from .layout import BASIS, JOURNAL, MANIFEST, SNAPSHOTS, checked_json, corrupt
from .lock import locked_by

_MEMBER = re.compile(r"^(manifest\.json|basis\.safetensors|CURRENT|journal|snapshots|journal/\d{20}\.wal|audit\.jsonl|"
                     r"snapshots/\d{20}|snapshots/\d{20}/(registry\.json|edits\.safetensors|memory\.safetensors))$")


def read_view(root: str, attempts: int = 5) -> reader.View | None:
    """A fully verified view (every snapshot byte), retried while a running server compacts files
    away underneath."""
    for attempt in range(attempts):
        try:
            return reader.read(root, keep_recent=10, full=True)
        except (FileNotFoundError, StateCorruptError):
            if attempt == attempts - 1 or locked_by(reader.lock_path(root)) is None:
                raise
            time.sleep(0.2 * (attempt + 1))
    return None  # pragma: no cover


def verify(root: str) -> tuple[reader.View, list[str]]:
    """Every checksum, a full replay, and W_m's accumulator against the sum of the live deltas.

    Returns the view and warnings (recoverable findings); raises StateError for damage.
    """
    root = os.path.abspath(root)
    if not os.path.isdir(root):
        raise StateError(f"{root} is not a directory")
    view = read_view(root)
    if view is None:
        raise StateError(f"{root} holds no memory state (no {MANIFEST})")
    reg = view.registry
    summed = snapshot.accumulate(reg.live.values(), view.manifest.d_out, view.manifest.width)
    stored = reg.acc.tensor()
    if not torch.equal(summed, stored):
        bad = int((summed != stored).any(dim=0).sum())
        raise corrupt(root, f"the snapshot's W_m accumulator differs from the sum of the live deltas in {bad} columns")
    warnings = []
    if view.torn is not None:
        warnings.append(f"{os.path.relpath(view.torn.path, root)} ends with {view.torn.size} bytes of a record that "
                        f"was never completed ({view.torn.why}); start-up cuts it (or a write was in progress)")
    warnings += [f"{rel} is left over and is removed at start-up" for rel in view.leftovers]
    return view, warnings


def export(root: str, out: str) -> reader.View:
    """Write a verified, compacted copy of the state to the archive `out` (.tar, or .tar.gz/.tgz)."""
    view, _ = verify(root)
    out = os.path.abspath(out)
    work = tempfile.mkdtemp(prefix=".memoir-export-", dir=os.path.dirname(out))
    try:
        state = os.path.join(work, "state")
        for d in (state, os.path.join(state, JOURNAL), os.path.join(state, SNAPSHOTS)):
            os.mkdir(d)
        with open(os.path.join(state, MANIFEST), "wb") as f:
            f.write(checked_json(view.manifest_body, "memoir-manifest"))
        with open(os.path.join(state, BASIS), "wb") as f:
            f.write(view.basis_raw)
        if os.path.exists(os.path.join(root, AUDIT)):  # the audit trail goes with the memory, as it is
            shutil.copyfile(os.path.join(root, AUDIT), os.path.join(state, AUDIT))
        reg = view.registry
        if reg.version:
            snapshot.write(state, reg.version, list(reg.live.values()), list(reg.order), view.dims)
        mode = "w:gz" if out.endswith((".gz", ".tgz")) else "w"
        tmp = os.path.join(work, "archive")
        with tarfile.open(tmp, mode) as tar:
            for name in sorted(_members(state)):
                tar.add(os.path.join(state, name), arcname=name, recursive=False)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, out)
        fsio.fsync_dir(os.path.dirname(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return view


def _members(state: str) -> list[str]:
    names = []
    for dirpath, dirs, files in os.walk(state):
        rel = os.path.relpath(dirpath, state)
        for n in dirs + files:
            names.append(n if rel == "." else f"{rel}/{n}")
    return names


def import_(archive: str, target: str) -> reader.View:
    """Unpack an export into a new or empty directory, verify it, and only then put it in place."""
    target = os.path.abspath(target)
    if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
        raise StateError(f"{target} exists and is not an empty directory; import only into a new one")
    parent = os.path.dirname(target)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".memoir-import-", dir=parent)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for m in members:
                if not _MEMBER.match(m.name) or not (m.isfile() or m.isdir()):
                    raise StateError(f"{archive} is not a memoir state export: unexpected member {m.name!r}")
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # names were checked above
            tar.extractall(work, members=members, **safe)
        for dirpath, _, files in os.walk(work):
            for n in files:
                fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            fsio.fsync_dir(dirpath)
        view, _ = verify(work)
        if os.path.isdir(target):
            os.rmdir(target)
        os.replace(work, target)
        fsio.fsync_dir(parent)
        view.root = target
        return view
    finally:
        shutil.rmtree(work, ignore_errors=True)


def disk_usage(root: str) -> dict[str, int]:
    sizes = {"journal": 0, "snapshots": 0, "other": 0}
    for dirpath, _, files in os.walk(root):
        top = os.path.relpath(dirpath, root).split(os.sep)[0]
        key = top if top in sizes else "other"
        for n in files:
            try:
                sizes[key] += os.path.getsize(os.path.join(dirpath, n))
            except OSError:
                pass
    return sizes

