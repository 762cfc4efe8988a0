"""Synthetic edits for the state-store tests: deterministic from the version they create,
so a crash-test child and the checking parent agree on every operation without talking; and a
store that checks the commit rule."""

from __future__ import annotations

import numpy as np
import torch

from memoir_core.basis import Basis
from memoir_core.records import EditRecord
from memoir_core.state import InMemoryStore, Manifest

D_OUT, WIDTH, K = 8, 64, 16
SMALL = (D_OUT, WIDTH, K)
LARGER = (128, 2048, 256)  # 128 KB deltas: snapshots take long enough to be killed in


class CheckingStore(InMemoryStore):
    """Checks that each write comes before the change it records is visible (the commit rule);
    can be told to fail (`fail`: ENOSPC). `memoir`: the Memoir whose writes it takes."""

    def __init__(self, memoir=None):
        super().__init__()
        self.memoir = memoir
        self.fail = False
        self.writes: list[tuple] = []

    def log_edit(self, record):
        assert record.id not in self.memoir.edits and record.version == self.memoir.version + 1
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes.append(("edit", record.id, record.version))
        super().log_edit(record)

    def log_removal(self, edit_id, version):
        assert edit_id in self.memoir.edits and version == self.memoir.version + 1
        self.writes.append(("remove", edit_id, version))
        super().log_removal(edit_id, version)


def manifest(dims=SMALL, **over) -> Manifest:
    d_out, width, k = dims
    values = dict(model="tiny-test", fingerprint="ab" * 16, layer=2, k=k, width=width, d_out=d_out,
                  config={"centre": True, "tau": 0.5})
    values.update(over)
    return Manifest(**values)


def basis(dims=SMALL) -> Basis:
    width = dims[1]
    gen = torch.Generator().manual_seed(1)
    return Basis(torch.randperm(width, generator=gen), torch.randn(width, generator=gen), ["I think", "Q: why"])


def record(version: int, edit_id: str | None = None, supersedes: str | None = None, dims=SMALL) -> EditRecord:
    d_out, width, k = dims
    rng = np.random.default_rng(version + 1000)
    idx = torch.from_numpy(np.sort(rng.choice(width, size=k, replace=False)).astype(np.int64))
    delta = torch.from_numpy(rng.integers(-(2**24), 2**24, size=(d_out, k), dtype=np.int32))
    return EditRecord(id=edit_id or f"e{version}", prompt=f"prompt {version}", target_new=f"target {version}",
                      metadata={"ticket": version}, author="test", created_at=1.0 + version, version=version,
                      supersedes=supersedes, idx=idx, delta=delta)


def op(version: int, live: list[str], dims=SMALL, cap: int = 40):
    """The operation that creates `version`, given the live ids before it (about 40 stay live)."""
    rng = np.random.default_rng(version * 7919 + 17)
    r = rng.random()
    p_remove = 0.2 if len(live) < cap else 0.7
    if live and r < p_remove:
        return "remove", live[int(rng.integers(len(live)))]
    if live and r < p_remove + 0.1:
        return "edit", record(version, supersedes=live[int(rng.integers(len(live)))], dims=dims)
    return "edit", record(version, dims=dims)


def apply(store, kind, arg, version: int) -> None:
    if kind == "edit":
        store.log_edit(arg)
    else:
        store.log_removal(arg, version)


class Expected:
    """What the memory must be after each version: a plain model of the log."""

    def __init__(self, dims=SMALL) -> None:
        self.dims = dims
        self.live: dict[str, EditRecord] = {}
        self.order: list[str] = []
        self.version = 0

    def step(self):
        version = self.version + 1
        kind, arg = op(version, list(self.live), self.dims)
        if kind == "edit":
            if arg.supersedes in self.live:
                self._drop(arg.supersedes)
            self.live[arg.id] = arg
            self.order.append(arg.id)
        else:
            self._drop(arg)
        self.version = version
        return kind, arg

    def _drop(self, edit_id: str) -> None:
        del self.live[edit_id]
        i = self.order.index(edit_id)
        last = self.order.pop()
        if i < len(self.order):
            self.order[i] = last

    def acc(self) -> torch.Tensor:
        acc = torch.zeros(self.dims[0], self.dims[1], dtype=torch.int64)
        for rec in self.live.values():
            acc[:, rec.idx] += rec.delta.long()
        return acc


def expected_at(version: int, dims=SMALL) -> Expected:
    exp = Expected(dims)
    while exp.version < version:
        exp.step()
    return exp


def assert_matches(loaded, exp: Expected) -> None:
    assert loaded.version == exp.version
    assert [r.id for r in loaded.edits] == list(exp.live)
    assert loaded.bank_order == exp.order
    for rec in loaded.edits:
        want = exp.live[rec.id]
        assert torch.equal(rec.idx, want.idx) and torch.equal(rec.delta, want.delta)
        assert rec.info() == want.info()
    assert torch.equal(loaded.acc, exp.acc())


def crash_child(root: str, conn, dims, snapshot_every: int) -> None:
    """A writer for the kill -9 test (runs in a child process): appends operations until killed,
    reporting each over `conn` only after the store acknowledged it."""
    from memoir_core.store import DirectoryStore

    store = DirectoryStore(root, snapshot_min_bytes=1 << 20)
    loaded = store.load()
    if loaded is None:
        store.create(manifest(dims), basis(dims))
        live, version = [], 0
    else:
        live, version = [r.id for r in loaded.edits], loaded.version
    conn.send_bytes(b"start %d" % version)
    while True:
        version += 1
        kind, arg = op(version, live, dims)
        apply(store, kind, arg, version)
        conn.send_bytes(b"ack %d" % version)
        if kind == "edit":
            if arg.supersedes in live:
                live.remove(arg.supersedes)
            live.append(arg.id)
        else:
            live.remove(arg)
        if version % snapshot_every == 0:
            conn.send_bytes(b"snap")
            store.snapshot()
            conn.send_bytes(b"snapped")
