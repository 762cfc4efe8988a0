"""Live edits' deltas fetched from memoir_delta on demand, the last few kept (bounded).

A PostgreSQL replica holds each stored edit's delta as a DbRef (records.Stored): rollback,
supersede and a follower's replay of a supersede read it back; serving never does. Each fetch
opens its own short connection, so any thread may read (the engine's rollback, the follower)
without sharing the store's read or write connection; its sha256 is checked as at start-up.
Live edits keep their memoir_delta row (compaction drops only what no live edit needs).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from ..layout import sha256
from . import blobs
from .codec import _tensors, corrupt

CACHE = 8  # decoded blobs kept: a rollback reads delta and inputs of one edit back to back


class DbRef:
    __slots__ = ("fetcher", "seq", "name", "shape", "dtype")

    def __init__(self, fetcher: Fetcher, seq: int, name: str, tensor: torch.Tensor):
        self.fetcher, self.seq, self.name = fetcher, seq, name
        self.shape, self.dtype = tuple(tensor.shape), tensor.dtype

    def read(self) -> torch.Tensor:
        return self.fetcher.blob(self.seq)[self.name].clone()


class Fetcher:
    def __init__(self, store):
        self.store = store
        self._cache: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._mu = threading.Lock()
        self.fetched = 0  # blobs read from the database (tests count them)

    def spill(self, rec, cached: bool = False) -> None:
        """rec's delta leaves RAM (its guard inputs stay: 28 KB, read by every restart's guard).
        cached: keep it among the last few read (a new edit is applied right after it is logged)."""
        held = rec.stored("delta")
        if isinstance(held, torch.Tensor):
            rec.spill(delta=DbRef(self, rec.version, "delta", held))
            if cached:
                self._keep(rec.version, {"delta": held})

    def _keep(self, seq: int, tensors: dict[str, torch.Tensor]) -> None:
        with self._mu:
            self._cache[seq] = tensors
            while len(self._cache) > CACHE:
                self._cache.popitem(last=False)

    def blob(self, seq: int) -> dict[str, torch.Tensor]:
        with self._mu:
            if seq in self._cache:
                self._cache.move_to_end(seq)
                return self._cache[seq]
        with self.store.connect() as conn:
            row = conn.execute("SELECT delta, lo, bytes, sha256 FROM memoir_delta WHERE seq = %s", (seq,)).fetchone()
            data = blobs.read(conn, *row[:3]) if row is not None else None
        if data is None:
            raise corrupt(f"the delta of live edit {seq} is gone from memoir_delta")
        if sha256(data) != row[3]:
            raise corrupt(f"log entry {seq}: the delta fails its checksum")
        tensors = _tensors(data, "delta", seq)
        self.fetched += 1
        self._keep(seq, tensors)
        return tensors
