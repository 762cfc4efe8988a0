"""Persistence of the memory: the store protocols the service writes through, and an in-memory store.

The durable implementation is memoir_core.store.DirectoryStore (a state directory with a
write-ahead journal and snapshots). Everything that changes the memory goes through a
`MemoryStore`, and a change is acknowledged to a client only after the store's method returned.

What is stored, and in what order:
  manifest  the base model and its fingerprint, block, k, width, d_out, config and format version
  basis     the permutation, the background mean and the training prefixes (masks depend on them)
  log       every applied edit (its record with mask and quantised delta) and every removal,
            each with the memory version it produced; replaying it rebuilds W_m bit for bit

How the engine uses a store (one writer thread):
  store = DirectoryStore(path)            # takes the directory's lock (StateLockedError)
  loaded = store.load(expect)             # None: empty; StateMismatchError / StateCorruptError
  if loaded is None: build the Memoir, store.create(Manifest.of(memoir, ...), memoir.basis)
  else: build the Memoir with basis=loaded.basis, then restore(memoir.memory, loaded)
  per edit and rollback: memoir_core.committer.Committer(memoir, store), which logs first
  (store.log_edit / log_removal with the version the change will make) and applies after,
  under a SharedLog's write lock
  DurabilityError from a log_* call: the change is not acknowledged and must not be applied;
  the store stays failed (store.ready is False) until the process restarts.

MemoryStore names every member the service uses; a store many replicas write through is also a
SharedLog (its `shared` flag says so; shared_log(store) gives it that type).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch

from .basis import Basis
from .errors import StateMismatchError
from .records import EditRecord

if TYPE_CHECKING:
    from .memoir import Memoir
    from .memorystate import Memory
    from .replica import LogEntry

FORMAT_VERSION = 1
# Config fields that change what a stored delta or mask means, each with the value a state written
# before the field existed has (None: not checked then); the rest (tau, optimiser...) may change freely.
_MEANING = {"centre": None, "pool": "mean"}


def stored_meaning(config: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the fields it predates filled in as they were then (a memory written
    before `pool` existed routes on plain means, whatever today's default is)."""
    legacy = {name: value for name, value in _MEANING.items() if value is not None}
    return {**legacy, **config}


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
    def of(cls, memoir: "Memoir", model_name: str, fingerprint: str) -> "Manifest":
        return cls(model=model_name, fingerprint=fingerprint, layer=memoir.config.layer, k=memoir.config.k,
                   width=memoir.width, d_out=memoir.d_out, config=memoir.config.to_dict())

    @classmethod
    def expected(cls, model, config, model_name: str, fingerprint: str | None = None) -> "Manifest":
        """The manifest a Memoir on this model and config would have, without building one
        (so a state can be checked before the basis is computed or the log replayed)."""
        from . import arch, models
        from .config import MemoirConfig

        spec = arch.spec_for(model)
        blocks = arch.get_path(model, spec.blocks)
        probe = arch.get_path(blocks[0], spec.down)
        width, d_out = arch.projection_shape(getattr(probe, "base_layer", probe), spec.conv1d)
        cfg = (config or MemoirConfig()).resolved(len(blocks), width)
        return cls(model=model_name, fingerprint=fingerprint or models.fingerprint(model), layer=cfg.layer,
                   k=cfg.k, width=width, d_out=d_out, config=cfg.to_dict())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def check_manifest(stored: Manifest, expected: Manifest, where: str = "the state") -> None:
    """StateMismatchError naming every difference that makes the stored memory meaningless here."""
    diffs = []
    if stored.format_version > FORMAT_VERSION:
        diffs.append(f"format version: the state has {stored.format_version}, this memoir reads up to "
                     f"{FORMAT_VERSION} (upgrade memoir)")
    if stored.fingerprint != expected.fingerprint:
        diffs.append(f"base model: the state was made for {stored.model!r} (fingerprint {stored.fingerprint}), "
                     f"the running model is {expected.model!r} (fingerprint {expected.fingerprint})")
    for name in ("layer", "k", "width", "d_out"):
        a, b = getattr(stored, name), getattr(expected, name)
        if a != b:
            diffs.append(f"{name}: the state has {a}, the running configuration {b}")
    for name in _MEANING:
        a, b = stored_meaning(stored.config).get(name), expected.config.get(name)
        if a is not None and b is not None and a != b:
            diffs.append(f"config {name}: the state has {a}, the running configuration {b}")
    if diffs:
        raise StateMismatchError(
            f"{where} was made for another model or memory layout: " + "; ".join(diffs)
            + ". Start with the model and settings the state was made for (`memoir state inspect DIR` shows "
            "them), or use a new, empty state directory."
        )


@dataclass
class Loaded:
    """A stored memory: enough to rebuild a Memoir exactly."""

    manifest: Manifest
    basis: Basis
    edits: list[EditRecord]  # live edits in the order they were applied
    version: int
    acc: torch.Tensor | None = None  # W_m's int64 accumulator, when the store has it (else summed)
    bank_order: list[str] | None = None  # mask bank slot order (ties in best match break by it)


SnapshotObserver = Callable[[float, bool], None]  # (seconds, ok) after each snapshot() call


class MemoryStore(Protocol):
    """Every member the service (app/) uses on a store; it uses nothing else. `shared` says
    whether the store is also a SharedLog (many replicas write through it)."""

    shared: bool  # True: a SharedLog (the writer takes its lock; a follower applies its entries)
    root: str | None  # the state directory (the audit trail lives beside it); None: not a directory
    where: str  # where the memory is kept, for messages ("state directory /srv/memoir", ...)

    def load(self, expect: Manifest | None = None) -> Loaded | None:
        """The stored memory, or None for an empty store; with `expect`, StateMismatchError first
        if the state was made for another model, block, k or width."""

    def create(self, manifest: Manifest, basis: Basis) -> None:
        """Start a new memory (durable before return)."""

    def log_edit(self, record: EditRecord) -> None:
        """Record an applied edit (record.version set; durable before return)."""

    def log_removal(self, edit_id: str, version: int) -> None:
        """Record a rollback (durable before return)."""

    @property
    def ready(self) -> bool:
        """False once a write failed: the store refuses every further write (DurabilityError)."""

    @property
    def failure(self) -> str | None:
        """Why writes are refused (None: they are not)."""

    @property
    def transient(self) -> bool:
        """The failure passes by itself (a full disk freed): writes resume without a restart."""

    def stats(self) -> dict[str, float]:
        """Numbers for /metrics (memoir:store_<name>); empty when the store has none."""

    def observe(self, observer: SnapshotObserver) -> None:
        """Call `observer(seconds, ok)` after each snapshot (once per observer however often given)."""

    def close(self) -> None: ...


class SharedLog(MemoryStore, Protocol):
    """A store many replicas write through (PostgreSQL): one writer at a time holds its lock,
    and every replica follows its log of entries."""

    replica: str  # this replica's name on the log
    deltas: Any  # stored deltas read back on demand; spill(record) lets an applied one leave RAM

    def begin_write(self, after: int) -> list[LogEntry] | None:
        """Take the write lock and return the entries after `after` (None: another replica holds it)."""

    def abort_write(self) -> None:
        """Give the lock back without writing (also when no write began)."""

    def head(self) -> int:
        """The newest version in the log."""

    def fetch_after(self, version: int) -> list[LogEntry]:
        """The entries after `version`, in order (LogGapError: compacted past it)."""

    def load_latest(self) -> Loaded:
        """The newest snapshot with the log after it (a replica that fell behind a compaction)."""

    def listener(self) -> Any:
        """Announcements of new entries: wait(seconds) -> version or None; close()."""

    def report(self, version: int, url: str | None = None) -> None:
        """Say which version this replica has applied (GET /replicas lists them)."""

    def replicas(self) -> list[dict]:
        """Every replica's last report."""


def shared_log(store: MemoryStore) -> SharedLog | None:
    """The store as a SharedLog where it is one (its `shared` flag says so), else None."""
    return cast("SharedLog", store) if store.shared else None


class SnapshotObservers:
    """A store's snapshot observers: `with observers.timed():` around a snapshot reports its
    duration and whether it raised."""

    def __init__(self) -> None:
        self._observers: list[SnapshotObserver] = []

    def add(self, observer: SnapshotObserver) -> None:
        if observer not in self._observers:
            self._observers.append(observer)

    @contextmanager
    def timed(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except Exception:
            self._tell(time.perf_counter() - t0, False)
            raise
        self._tell(time.perf_counter() - t0, True)

    def _tell(self, seconds: float, ok: bool) -> None:
        for observer in self._observers:
            observer(seconds, ok)


class InMemoryStore:
    """Keeps nothing across processes; for tests and throwaway servers."""

    ready = True
    failure: str | None = None
    transient = False
    shared = False
    root: str | None = None
    where = "this process's memory (RAM only)"

    def __init__(self) -> None:
        self._loaded: Loaded | None = None

    def load(self, expect: Manifest | None = None) -> Loaded | None:
        if self._loaded is not None and expect is not None:
            check_manifest(self._loaded.manifest, expect)
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

    def stats(self) -> dict[str, float]:
        return {}

    def observe(self, observer: SnapshotObserver) -> None:
        pass  # it never takes a snapshot

    def close(self) -> None:
        pass


def restore(memory: "Memory", loaded: Loaded) -> None:
    """Apply a stored memory to an empty Memory (one built with `loaded.basis`)."""
    memory.restore(loaded.edits, loaded.version, loaded.acc, loaded.bank_order)
