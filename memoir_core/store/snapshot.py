"""Snapshots: the whole live memory at one version, written beside the old one and switched atomically.

    snapshots/<version>/registry.json      checked JSON: version, every live edit's info in apply
                                           order, the bank order, sha256 and size of the two files,
                                           and the crc32 of each part of the edits file (header,
                                           masks, each delta, each inputs factor): start-up reads
                                           the masks only, the rest is checked when it is read
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


def _edit_parts(records: list[EditRecord], d_out: int, k: int, crcs: dict[str, Any]):
    """The edits file's bytes; fills `crcs` with the crc32 of its header, the masks, each delta
    and each edit's inputs (None: stored without), for the registry (see _read_edits)."""
    n = len(records)
    entries, shape = _layout(records, d_out, k)
    shapes = shape is not None
    head = tensorfile.header(entries)
    crcs.update(head=zlib.crc32(head), delta=[], inputs=[])
    yield head
    masks = tensorfile.raw(torch.stack([r.idx for r in records])) if n else memoryview(b"")
    crcs["idx"] = zlib.crc32(masks)
    yield masks
    for rec in records:
        part = tensorfile.raw(rec.delta)
        crcs["delta"].append(zlib.crc32(part))
        yield part
    if shapes:
        none = torch.zeros(shape, dtype=torch.float16)
        for rec in records:
            part = tensorfile.raw(rec.inputs.to(torch.float16).contiguous() if rec.has_inputs else none)
            # all zeros reads back as "stored without" (_read_edits), whichever way it is read
            crcs["inputs"].append(zlib.crc32(part) if rec.has_inputs and bytes(part).count(0) < len(part) else None)
            yield part


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
        crcs: dict[str, Any] = {}
        files = {EDITS: _stream(os.path.join(tmp, EDITS), _edit_parts(records, d_out, k, crcs), cancel)}
        files[EDITS]["crc32"] = crcs
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


def read(root: str, current: dict[str, Any], dims: dict[str, int], full: bool = False):
    """(version, records, bank order, acc, size in bytes) of the snapshot CURRENT names.

    full: the edits file is read whole and its sha256 checked (verify, export, inspect). Otherwise,
    where the registry holds the crc32 of each part (snapshots written since it does), only the
    header and the masks are read and checked; each delta and inputs factor is checked by its
    crc when it is read (rollback, supersede, the guard at start-up, snapshots): 10,000 edits are
    10 GB that start-up need not read. A snapshot without crcs is read whole, as before."""
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
        spec = body["files"].get(EDITS, {})
        path = os.path.join(folder, EDITS)
        if full or "crc32" not in spec:
            idx, deltas, inputs, edits_size = _read_edits(path, n, d_out, k, spec.get("sha256"))
        else:
            idx, deltas, inputs, edits_size = _open_edits(path, n, d_out, k, spec)
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
    hlen = _header_length(head, size)
    r = _check_layout(take(hlen, 8), hlen, size, n, d_out, k)
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


def _header_length(head: bytes, size: int) -> int:
    if len(head) < 8:
        raise ValueError("too short for a safetensors file")
    hlen = int.from_bytes(head, "little")
    if hlen > min(size - 8, 100 << 20):
        raise ValueError("its header length runs past its end")
    return hlen


def _check_layout(header: bytes, hlen: int, size: int, n: int, d_out: int, k: int) -> int | None:
    """The inputs' rank r (None: the file has no inputs), once the header lays out exactly
    idx, delta and inputs of n edits in this order, ending at the file's end."""
    try:
        spec = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"its header is not JSON: {e}") from None
    if not isinstance(spec, dict):
        raise ValueError("its header is not a JSON object")
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
    return r


def _open_edits(path: str, n: int, d_out: int, k: int, spec: dict[str, Any]):
    """What _read_edits returns, reading only the header and the masks: each is checked against
    the crc32 the registry holds for it, and each delta and inputs ref gets its crc from there."""
    crcs = spec["crc32"]
    file = ondisk.OpenFile(path)
    size = file.size()
    if size != spec.get("bytes"):
        raise ValueError(f"it is {size} bytes, the registry says {spec.get('bytes')}")
    head = file.pread(8, 0) if size >= 8 else b""
    hlen = _header_length(head, size)
    header = file.pread(hlen, 8)
    if zlib.crc32(head + header) != crcs.get("head"):
        raise ValueError("its header fails its checksum")
    r = _check_layout(header, hlen, size, n, d_out, k)
    delta_crcs, input_crcs = crcs.get("delta"), crcs.get("inputs")
    if not isinstance(delta_crcs, list) or len(delta_crcs) != n or \
            not isinstance(input_crcs, list) or len(input_crcs) != (n if r is not None else 0):
        raise ValueError("the registry's checksums do not list every edit")
    pos = 8 + hlen
    masks = file.pread(8 * n * k, pos)
    if zlib.crc32(masks) != crcs.get("idx"):
        raise ValueError("its masks (idx) fail their checksum")
    idx = torch.frombuffer(bytearray(masks), dtype=torch.int64).view(n, k) if n * k else \
        torch.zeros(n, k, dtype=torch.int64)
    pos += 8 * n * k
    step = 4 * d_out * k
    deltas = [ondisk.FileRef(file, pos + i * step, (d_out, k), torch.int32, c) for i, c in enumerate(delta_crcs)]
    pos += n * step
    inputs: list = [None] * n
    if r is not None:
        in_step = 2 * r * k
        inputs = [None if c is None else ondisk.FileRef(file, pos + i * in_step, (r, k), torch.float16, c)
                  for i, c in enumerate(input_crcs)]
    return idx, deltas, inputs, size
