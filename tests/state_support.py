"""Synthetic edits for the state-store tests: deterministic from the version they create,
so a crash-test child and the checking parent agree on every operation without talking."""

from __future__ import annotations

import numpy as np
import torch

from memoir_core.basis import Basis
from memoir_core.records import EditRecord
from memoir_core.state import Manifest

D_OUT, WIDTH, K = 8, 64, 16


def manifest(**over) -> Manifest:
    values = dict(model="tiny-test", fingerprint="ab" * 16, layer=2, k=K, width=WIDTH, d_out=D_OUT,
                  config={"centre": True, "tau": 0.5})
    values.update(over)
    return Manifest(**values)


def basis(width: int = WIDTH) -> Basis:
    gen = torch.Generator().manual_seed(1)
    return Basis(torch.randperm(width, generator=gen), torch.randn(width, generator=gen), ["I think", "Q: why"])


def record(version: int, edit_id: str | None = None, supersedes: str | None = None, *, d_out: int = D_OUT,
           width: int = WIDTH, k: int = K) -> EditRecord:
    rng = np.random.default_rng(version + 1000)
    idx = torch.from_numpy(np.sort(rng.choice(width, size=k, replace=False)).astype(np.int64))
    delta = torch.from_numpy(rng.integers(-(2**24), 2**24, size=(d_out, k), dtype=np.int32))
    return EditRecord(id=edit_id or f"e{version}", prompt=f"prompt {version}", target_new=f"target {version}",
                      metadata={"ticket": version}, author="test", created_at=1.0 + version, version=version,
                      supersedes=supersedes, idx=idx, delta=delta)


def op(version: int, live: list[str]):
    """The operation that creates `version`, given the live ids before it."""
    rng = np.random.default_rng(version * 7919 + 17)
    r = rng.random()
    if live and r < 0.2:
        return "remove", live[int(rng.integers(len(live)))]
    if live and r < 0.3:
        return "edit", record(version, supersedes=live[int(rng.integers(len(live)))])
    return "edit", record(version)


def apply(store, kind, arg, version: int) -> None:
    if kind == "edit":
        store.log_edit(arg)
    else:
        store.log_removal(arg, version)


class Expected:
    """What the memory must be after each version: a plain model of the log."""

    def __init__(self) -> None:
        self.live: dict[str, EditRecord] = {}
        self.order: list[str] = []
        self.version = 0

    def step(self):
        version = self.version + 1
        kind, arg = op(version, list(self.live))
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

    def acc(self, d_out: int = D_OUT, width: int = WIDTH) -> torch.Tensor:
        acc = torch.zeros(d_out, width, dtype=torch.int64)
        for rec in self.live.values():
            acc[:, rec.idx] += rec.delta.long()
        return acc


def expected_at(version: int) -> Expected:
    exp = Expected()
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
