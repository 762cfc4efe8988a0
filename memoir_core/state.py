"""Persistence of the memory: the interface the service writes through, and an in-memory store.

The durable implementation (a state directory with a write-ahead journal and snapshots) lives
beside this interface; everything that changes the memory goes through a `MemoryStore`, and a
change is acknowledged to a client only after the store's method has returned.

What is stored, and in what order:
  manifest  the base model and its fingerprint, block, k, tau, seed and format version
  basis     the permutation, the background mean and the training prefixes (masks depend on them)
  log       every applied edit (its record with mask and quantised delta) and every removal,
            each with the memory version it produced; replaying it rebuilds W_m bit for bit
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Protocol

from .memoir import Basis, Memoir
from .records import EditRecord

FORMAT_VERSION = 1


@dataclass
class Manifest:
    model: str
    fingerprint: str
    layer: int
    k: int
    width: int
    d_out: int
    config: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @classmethod
    def of(cls, memoir: Memoir, model_name: str, fingerprint: str) -> "Manifest":
        return cls(model=model_name, fingerprint=fingerprint, layer=memoir.config.layer, k=memoir.config.k,
                   width=memoir.width, d_out=memoir.d_out, config=memoir.config.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Loaded:
    """A stored memory: enough to rebuild a Memoir exactly."""

    manifest: Manifest
    basis: Basis
    edits: list[EditRecord]  # live edits in the order they were applied
    version: int


class MemoryStore(Protocol):
    def load(self) -> Loaded | None:
        """The stored memory, or None for an empty store."""

    def create(self, manifest: Manifest, basis: Basis) -> None:
        """Start a new memory (durable before return)."""

    def log_edit(self, record: EditRecord) -> None:
        """Record an applied edit (record.version set; durable before return)."""

    def log_removal(self, edit_id: str, version: int) -> None:
        """Record a rollback (durable before return)."""

    def close(self) -> None: ...


class InMemoryStore:
    """Keeps nothing across processes; for tests and throwaway servers."""

    def __init__(self) -> None:
        self._loaded: Loaded | None = None

    def load(self) -> Loaded | None:
        return self._loaded

    def create(self, manifest: Manifest, basis: Basis) -> None:
        self._loaded = Loaded(manifest, basis, [], 0)

    def log_edit(self, record: EditRecord) -> None:
        assert self._loaded is not None
        live = [r for r in self._loaded.edits if r.id != record.supersedes]
        self._loaded = dataclasses.replace(self._loaded, edits=live + [record], version=record.version)

    def log_removal(self, edit_id: str, version: int) -> None:
        assert self._loaded is not None
        live = [r for r in self._loaded.edits if r.id != edit_id]
        self._loaded = dataclasses.replace(self._loaded, edits=live, version=version)

    def close(self) -> None:
        pass


def restore(memoir: Memoir, loaded: Loaded) -> None:
    """Apply a stored memory to a Memoir built with `loaded.basis` and an empty memory."""
    if memoir.edits or memoir.version:
        raise ValueError("restore needs an empty memory")
    for rec in loaded.edits:
        memoir.apply(rec)
    memoir.version = loaded.version
