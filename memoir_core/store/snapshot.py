"""Snapshots: the whole live memory at one version, written beside the old one and switched atomically.

    snapshots/<version>/registry.json      checked JSON: version, every live edit's info in apply
                                           order, the bank order, sha256 and size of the two files
    snapshots/<version>/edits.safetensors  idx [n, k] int64, delta [n, d_out, k] int32 (apply order),
                                           inputs [n, r, k] fp16 where the edits have them (guard.py;
                                           zeros for an edit stored before them)
    snapshots/<version>/memory.safetensors acc [d_out, D] int64, W_m's exact accumulator

The deltas of every live edit are kept, so a rollback of an edit older than the snapshot is
still exact. Written in a temp directory, fsynced, renamed, then CURRENT (which names it and
holds the registry's sha256) is replaced: until that rename the previous snapshot and the
journal stay the state, so a crash at any point loses nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import threading
from collections.abc import Iterable
from typing import Any

import torch

from ..records import EditRecord
from . import fsio, tensorfile
from .journal import record_from_info
from .layout import CURRENT, SNAPSHOTS, TMP_MARK, checked_json, corrupt, parse_checked, read_bytes, sha256, snapshot_name
from .registry import Accumulator

REGISTRY, EDITS, MEMORY = "registry.json", "edits.safetensors", "memory.safetensors"
_CHUNK = 4 << 20
_FLUSH = 8 << 20


class Cancelled(Exception):
    pass


def accumulate(records: Iterable[EditRecord], d_out: int, width: int, cancel: threading.Event | None = None):
    """W_m's int64 accumulator as the exact sum of the live deltas."""
    acc = Accumulator(d_out, width)
    for rec in records:
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        acc.add(rec.idx, rec.delta)
    return acc.tensor()


def _stream(path: str, parts: Iterable, cancel: threading.Event | None) -> dict[str, Any]:
    """Write parts to a new file in ~4 MB writes, hashing on the way; fsync it."""
    h, size, pending, held, flushed = hashlib.sha256(), 0, [], 0, 0
    fd = fsio.create(path)
    try:
        for part in parts:
            if cancel is not None and cancel.is_set():
                raise Cancelled()
            h.update(part)
            size += len(part)
            pending.append(part)
            held += len(part)
            if held >= _CHUNK:
                fsio.write_all(fd, b"".join(pending))
                pending, held = [], 0
                if size - flushed >= _FLUSH:  # bounded dirty data: the journal's fsyncs do not queue behind it
                    fsio.fsync(fd)
                    flushed = size
        if pending:
            fsio.write_all(fd, b"".join(pending))
        fsio.fsync(fd)
    finally:
        fsio.close(fd)
    return {"sha256": h.hexdigest(), "bytes": size}


def _edit_parts(records: list[EditRecord], d_out: int, k: int):
    n = len(records)
    shapes = {tuple(r.inputs.shape) for r in records if r.inputs is not None}
    entries = [("idx", torch.int64, (n, k)), ("delta", torch.int32, (n, d_out, k))]
    if len(shapes) > 1:
        raise ValueError(f"edits' inputs have different shapes: {sorted(shapes)}")
    if shapes:
        (shape,) = shapes
        entries.append(("inputs", torch.float16, (n, *shape)))
    yield tensorfile.header(entries)
    if n:
        yield tensorfile.raw(torch.stack([r.idx for r in records]))
    for rec in records:
        yield tensorfile.raw(rec.delta)
    if shapes:
        none = torch.zeros(shape, dtype=torch.float16)
        for rec in records:
            yield tensorfile.raw(rec.inputs.to(torch.float16).contiguous() if rec.inputs is not None else none)


def write(root: str, version: int, records: list[EditRecord], order: list[str], dims: dict[str, int],
          cancel: threading.Event | None = None) -> int:
    """Write the snapshot of `records` at `version` and make it current; returns its size in bytes."""
    d_out, width, k = dims["d_out"], dims["width"], dims["k"]
    snaps = os.path.join(root, SNAPSHOTS)
    tmp = os.path.join(snaps, f"{TMP_MARK}{version}-{os.getpid()}-{secrets.token_hex(4)}")
    fsio.mkdir(tmp)
    try:
        files = {EDITS: _stream(os.path.join(tmp, EDITS), _edit_parts(records, d_out, k), cancel)}
        acc = accumulate(records, d_out, width, cancel)
        files[MEMORY] = _stream(os.path.join(tmp, MEMORY), tensorfile.chunks({"acc": acc}), cancel)
        body = {"version": version, "edits": [r.info() for r in records], "bank_order": list(order),
                "files": files, **dims}
        registry = checked_json(body, "memoir-snapshot")
        fsio.write_file(os.path.join(tmp, REGISTRY), registry)
        fsio.fsync_dir(tmp)
        final = os.path.join(snaps, snapshot_name(version))
        if os.path.exists(final):  # left by a crash before CURRENT named it
            fsio.rmtree(final)
        fsio.replace(tmp, final)
        fsio.fsync_dir(snaps)
    except Exception:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    current = {"snapshot": snapshot_name(version), "version": version, "registry_sha256": sha256(registry)}
    fsio.replace_file(os.path.join(root, CURRENT), checked_json(current, "memoir-current"))
    return len(registry) + sum(f["bytes"] for f in files.values())


def read_current(root: str) -> dict[str, Any] | None:
    path = os.path.join(root, CURRENT)
    if not os.path.exists(path):
        return None
    body = parse_checked(bytes(read_bytes(path)), "memoir-current", root, CURRENT)
    if not isinstance(body.get("snapshot"), str) or not isinstance(body.get("version"), int):
        raise corrupt(root, "CURRENT does not name a snapshot")
    return body


def read(root: str, current: dict[str, Any], dims: dict[str, int]):
    """(version, records, bank order, acc, size in bytes) of the snapshot CURRENT names, every checksum checked."""
    name = current["snapshot"]
    folder = os.path.join(root, SNAPSHOTS, name)
    rel = f"{SNAPSHOTS}/{name}"
    try:
        raw = read_bytes(os.path.join(folder, REGISTRY))
    except FileNotFoundError:
        raise corrupt(root, f"CURRENT names snapshot {rel}, but {rel}/{REGISTRY} is missing") from None
    if sha256(raw) != current.get("registry_sha256"):
        raise corrupt(root, f"{rel}/{REGISTRY} is not the file CURRENT names (checksum differs)")
    body = parse_checked(bytes(raw), "memoir-snapshot", root, f"{rel}/{REGISTRY}")
    if body.get("version") != current["version"]:
        raise corrupt(root, f"{rel} is at version {body.get('version')}, CURRENT says {current['version']}")
    for key, want in dims.items():
        if body.get(key) != want:
            raise corrupt(root, f"{rel} has {key} {body.get(key)}, the manifest {want}")
    tensors, size = {}, len(raw)
    for fname in (EDITS, MEMORY):
        try:
            buf = read_bytes(os.path.join(folder, fname))
        except FileNotFoundError:
            raise corrupt(root, f"{rel}/{fname} is missing") from None
        meta = body["files"].get(fname, {})
        if sha256(buf) != meta.get("sha256"):
            raise corrupt(root, f"{rel}/{fname} fails its checksum")
        try:
            tensors.update(tensorfile.decode(buf)[0])
        except ValueError as e:
            raise corrupt(root, f"{rel}/{fname} is not a valid safetensors file: {e}") from None
        size += len(buf)
    n, (d_out, width, k) = len(body["edits"]), (dims["d_out"], dims["width"], dims["k"])
    shapes = {"idx": (n, k), "delta": (n, d_out, k), "acc": (d_out, width)}
    for key, shape in shapes.items():
        if key not in tensors or tuple(tensors[key].shape) != shape:
            raise corrupt(root, f"{rel}: tensor {key} is missing or not of shape {shape}")
    inputs = tensors.get("inputs")
    if inputs is not None and (inputs.shape[0] != n or inputs.shape[2] != k):
        raise corrupt(root, f"{rel}: tensor inputs is not of shape ({n}, r, {k})")

    def inputs_of(i: int):
        # an all-zero factor stands for an edit stored before edits kept their inputs
        return None if inputs is None or not inputs[i].any() else inputs[i]
    try:
        records = [record_from_info(info, tensors["idx"][i], tensors["delta"][i], inputs_of(i))
                   for i, info in enumerate(body["edits"])]
    except ValueError as e:
        raise corrupt(root, f"{rel}: {e}") from None
    return body["version"], records, body["bank_order"], tensors["acc"], size
