"""Rows <-> records, with the state directory's encodings (memoir_core.store.tensorfile: plain
safetensors, read without copies) and its record checks (journal.record_from_info)."""

from __future__ import annotations

import json

import torch

from ...basis import Basis
from ...errors import StateCorruptError
from ...records import EditRecord
from ...replica import LogEntry, LogGapError
from .. import tensorfile
from ..journal import record_from_info
from ..layout import sha256


def corrupt(what: str) -> StateCorruptError:
    return StateCorruptError(f"the memory in PostgreSQL is damaged: {what}")


def encode_basis(basis: Basis) -> bytes:
    return tensorfile.encode(basis.tensors(), {"prefixes": json.dumps(list(basis.prefixes))})


def decode_basis(data: bytes, width: int) -> Basis:
    try:
        tensors, meta = tensorfile.decode(bytearray(data))
        perm, mean = tensors["permutation"], tensors["background_mean"]
        route = tensors.get("route_mean")
        prefixes = json.loads(meta["prefixes"])
    except (ValueError, KeyError) as e:
        raise corrupt(f"the basis is unreadable: {e}") from None
    if any(tuple(t.shape) != (width,) for t in (perm, mean, route) if t is not None):
        raise corrupt(f"the basis does not match width {width}")
    return Basis(perm.clone(), mean.clone(), list(prefixes), None if route is None else route.clone())


def edit_row(rec: EditRecord) -> dict:
    """The log row and the delta row of an edit (ValueError if its metadata is not JSON)."""
    info = rec.info()
    try:
        text = json.dumps(info)
    except (TypeError, ValueError) as e:
        raise ValueError(f"edit {rec.id!r} cannot be stored: {e}") from None
    blob = {"delta": rec.delta.cpu()}
    if rec.inputs is not None:  # the edit's memory inputs (guard.py) travel with its delta
        blob["inputs"] = rec.inputs.cpu()
    delta = tensorfile.encode(blob)
    return {"seq": rec.version, "edit_id": rec.id, "supersedes": rec.supersedes, "info": text,
            "idx": tensorfile.encode({"idx": rec.idx.long().cpu()}), "author": rec.author,
            "delta": delta, "sha256": sha256(delta)}


def _tensors(data, name: str, seq: int) -> dict[str, torch.Tensor]:
    """The tensors of one stored blob, which must hold `name`."""
    try:
        tensors, _ = tensorfile.decode(bytearray(data))
    except ValueError as e:
        raise corrupt(f"log entry {seq}: {name} is unreadable: {e}") from None
    if name not in tensors:
        raise corrupt(f"log entry {seq}: {name} is missing")
    return tensors


def entry(seq: int, kind: str, edit_id: str, info, idx, delta, digest) -> LogEntry:
    """A LogEntry from a row of memoir_log joined with memoir_delta (checksum checked)."""
    if kind == "rollback":
        return LogEntry(seq, kind, edit_id)
    if delta is None or idx is None:  # written together in one transaction: only compaction drops them
        raise LogGapError(f"the delta of log entry {seq} (edit {edit_id!r}) was compacted into a snapshot")
    if sha256(delta) != digest:
        raise corrupt(f"log entry {seq} (edit {edit_id!r}): the delta fails its checksum")
    if isinstance(info, str):
        info = json.loads(info)
    if not isinstance(info, dict) or info.get("id") != edit_id or info.get("version") != seq:
        raise corrupt(f"log entry {seq}: its info does not match the row")
    try:
        blob = _tensors(delta, "delta", seq)
        rec = record_from_info(info, _tensors(idx, "idx", seq)["idx"], blob["delta"], blob.get("inputs"))
    except ValueError as e:
        raise corrupt(f"log entry {seq}: {e}") from None
    return LogEntry(seq, kind, edit_id, rec)
