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
import json
import os
import secrets
import shutil
import threading
import zlib
from collections.abc import Iterable
from typing import Any

import torch

from ..records import EditRecord
from . import fsio, ondisk, tensorfile
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


def _layout(records: list[EditRecord], d_out: int, k: int):
    """(safetensors entries, the inputs' per-edit shape or None) of the edits file."""
    n = len(records)
    shapes = {tuple(r.stored("inputs").shape) for r in records if r.has_inputs}
    entries = [("idx", torch.int64, (n, k)), ("delta", torch.int32, (n, d_out, k))]
    if len(shapes) > 1:
        raise ValueError(f"edits' inputs have different shapes: {sorted(shapes)}")
    shape = None
    if shapes:
        (shape,) = shapes
        entries.append(("inputs", torch.float16, (n, *shape)))
    return entries, shape


def _edit_parts(records: list[EditRecord], d_out: int, k: int):
    n = len(records)
    entries, shape = _layout(records, d_out, k)
    shapes = shape is not None
    yield tensorfile.header(entries)
    if n:
        yield tensorfile.raw(torch.stack([r.idx for r in records]))
    for rec in records:
        yield tensorfile.raw(rec.delta)
    if shapes:
        none = torch.zeros(shape, dtype=torch.float16)
        for rec in records:
            yield tensorfile.raw(rec.inputs.to(torch.float16).contiguous() if rec.has_inputs else none)


def repoint(root: str, version: int, records: list[EditRecord], dims: dict[str, int]) -> None:
    """Point the records' deltas and inputs at their copies in the snapshot written at `version`
    (the journal segments they were read from are about to be deleted)."""
    entries, shape = _layout(records, dims["d_out"], dims["k"])
    file = ondisk.OpenFile(os.path.join(root, SNAPSHOTS, snapshot_name(version), EDITS))
    n, base = len(records), len(tensorfile.header(entries))
    delta_at = base + tensorfile.nbytes(torch.int64, (n, dims["k"]))
    inputs_at = delta_at + tensorfile.nbytes(torch.int32, (n, dims["d_out"], dims["k"]))
    step = tensorfile.nbytes(torch.int32, (dims["d_out"], dims["k"]))
    in_step = tensorfile.nbytes(torch.float16, shape) if shape is not None else 0
    for i, rec in enumerate(records):
        places = {"delta": delta_at + i * step, "inputs": inputs_at + i * in_step}
        handles = {}
        for name, offset in places.items():
            held = rec.stored(name)
            if held is None:
                continue
            handles[name] = ondisk.ref_to(file, offset, held) if isinstance(held, torch.Tensor) \
                else held.moved(file, offset)
        rec.spill(**handles)


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
    n, (d_out, width, k) = len(body["edits"]), (dims["d_out"], dims["width"], dims["k"])
    size = len(raw)
    try:
        buf = read_bytes(os.path.join(folder, MEMORY))
    except FileNotFoundError:
        raise corrupt(root, f"{rel}/{MEMORY} is missing") from None
    if sha256(buf) != body["files"].get(MEMORY, {}).get("sha256"):
        raise corrupt(root, f"{rel}/{MEMORY} fails its checksum")
    try:
        acc = tensorfile.decode(buf)[0].get("acc")
    except ValueError as e:
        raise corrupt(root, f"{rel}/{MEMORY} is not a valid safetensors file: {e}") from None
    if acc is None or tuple(acc.shape) != (d_out, width):
        raise corrupt(root, f"{rel}: tensor acc is missing or not of shape {(d_out, width)}")
    size += len(buf)
    try:
        idx, deltas, inputs, edits_size = _read_edits(os.path.join(folder, EDITS), n, d_out, k,
                                                      body["files"].get(EDITS, {}).get("sha256"))
    except FileNotFoundError:
        raise corrupt(root, f"{rel}/{EDITS} is missing") from None
    except ValueError as e:
        raise corrupt(root, f"{rel}/{EDITS}: {e}") from None
    size += edits_size
    try:
        records = [record_from_info(info, idx[i], deltas[i], inputs[i]) for i, info in enumerate(body["edits"])]
    except ValueError as e:
        raise corrupt(root, f"{rel}: {e}") from None
    return body["version"], records, body["bank_order"], acc, size


def _read_edits(path: str, n: int, d_out: int, k: int, want_sha: str | None):
    """(idx [n, k], delta refs, inputs refs or None each, file size) of an edits file, read once
    from start to end: its sha256 checked, each delta's and inputs' crc32 taken on the way, and
    only the masks kept in RAM. ValueError when it is not the file the registry names."""
    file = ondisk.OpenFile(path)
    size = file.size()
    h = hashlib.sha256()

    def take(length: int, offset: int) -> bytes:
        data = file.pread(length, offset)
        h.update(data)
        return data
    head = take(8, 0) if size >= 8 else b""
    if len(head) < 8:
        raise ValueError("too short for a safetensors file")
    hlen = int.from_bytes(head, "little")
    if hlen > min(size - 8, 100 << 20):
        raise ValueError("its header length runs past its end")
    spec = json.loads(take(hlen, 8))
    spec.pop("__metadata__", None)
    want = {"idx": ("I64", [n, k]), "delta": ("I32", [n, d_out, k])}
    r = spec.get("inputs", {}).get("shape", [n, 0, k])[1] if "inputs" in spec else None
    if r is not None:
        want["inputs"] = ("F16", [n, r, k])
    at = 0
    for name, (dtype, shape) in want.items():
        got = spec.get(name) or {}
        if got.get("dtype") != dtype or got.get("shape") != shape or got.get("data_offsets", [None])[0] != at:
            raise ValueError(f"tensor {name} is missing or not of shape {tuple(shape)}")
        at = got["data_offsets"][1]
    if set(spec) != set(want) or 8 + hlen + at != size:
        raise ValueError("it holds other tensors or bytes than idx, delta and inputs")
    pos = 8 + hlen
    idx = torch.frombuffer(bytearray(take(8 * n * k, pos)), dtype=torch.int64).view(n, k) if n * k else \
        torch.zeros(n, k, dtype=torch.int64)
    pos += 8 * n * k
    deltas = []
    for _ in range(n):
        data = take(4 * d_out * k, pos)
        deltas.append(ondisk.FileRef(file, pos, (d_out, k), torch.int32, zlib.crc32(data)))
        pos += len(data)
    inputs: list = [None] * n
    for i in range(n if r is not None else 0):
        data = take(2 * r * k, pos)
        if data.count(0) < len(data):  # an all-zero factor stands for an edit stored before edits kept their inputs
            inputs[i] = ondisk.FileRef(file, pos, (r, k), torch.float16, zlib.crc32(data))
        pos += len(data)
    if h.hexdigest() != want_sha:
        raise ValueError("it fails its checksum")
    return idx, deltas, inputs, size
