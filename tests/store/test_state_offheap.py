"""Stored edits hold no delta in RAM (store/ondisk.py): rollback reads it back exactly, restart
never loads it, and the guard's statistics stay exact through rollbacks and restarts."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from memoir_core import models
from memoir_core.errors import StateCorruptError
from memoir_core.memoir import EditProposal, Memoir
from memoir_core.records import EditRecord
from memoir_core.state import Manifest, restore
from memoir_core.store import DirectoryStore
from tests.support.tiny import make_memoir

N = 201  # the oldest edit, then 200 later ones


def synthetic(m: Memoir, i: int) -> EditRecord:
    """An edit as training leaves it (mask, quantised delta, guard inputs), without training."""
    rng = np.random.default_rng(i)
    k = m.config.k
    idx = torch.from_numpy(np.sort(rng.choice(m.width, size=k, replace=False)).astype(np.int64))
    delta = torch.from_numpy(rng.integers(-(2**20), 2**20, size=(m.d_out, k), dtype=np.int32))
    inputs = torch.from_numpy(rng.standard_normal((4, k)).astype(np.float16))
    return EditRecord(id=f"e{i}", prompt=f"prompt {i}", target_new=f"target {i}", idx=idx, delta=delta,
                      inputs=inputs)


def commit(m: Memoir, store, rec: EditRecord) -> None:
    """The engine's order: log (durable), then apply."""
    rec.version = m.version + 1
    store.log_edit(rec)
    m.commit(EditProposal(rec, None))


def replayed(edits: list[EditRecord]) -> Memoir:
    """A memory built from copies of the given edits, in RAM: what a replay without the others gives."""
    m = make_memoir("llama")
    for rec in edits:
        m.commit(EditProposal(synthetic(m, int(rec.id[1:])), None))
    return m


def assert_same_memory(a: Memoir, b: Memoir) -> None:
    assert torch.equal(a.weights.acc, b.weights.acc)
    assert torch.equal(a.weights.weight, b.weights.weight)  # bit for bit
    assert len(a.guard) == len(b.guard) and torch.equal(a.guard.cov, b.guard.cov)  # int64: exact


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    root = tmp_path_factory.mktemp("offheap")
    m = make_memoir("llama")
    store = DirectoryStore(root, snapshot_min_bytes=200_000)  # a snapshot part-way: the oldest edits move into it
    store.create(Manifest.of(m, "tiny-llama", models.fingerprint(m.model)), m.basis)
    for i in range(N):
        commit(m, store, synthetic(m, i))
    store.wait_snapshot()
    yield root, m, store
    store.close()


def test_a_stored_edit_holds_its_mask_only_and_reads_its_delta_from_the_state_files(stored):
    root, m, store = stored
    assert store.snapshot_version > 0
    for rec in m.edits.values():
        assert rec.held_bytes() == rec.idx.numel() * 2  # the mask as uint16; no delta, no inputs in RAM
        assert not isinstance(rec.stored("delta"), torch.Tensor)
        assert os.path.exists(rec.stored("delta").file.path)  # moved off compacted journal segments
        assert torch.equal(rec.delta, synthetic(m, int(rec.id[1:])).delta)  # the bytes come back
    assert "snapshots" in m.edits["e0"].stored("delta").file.path


def test_rollback_of_the_oldest_edit_after_200_later_ones_is_bit_exact_guard_included(stored):
    root, m, store = stored
    store.log_removal("e0", m.version + 1)
    m.remove("e0")
    assert_same_memory(m, replayed(list(m.edits.values())))


def test_a_restart_reads_no_delta_and_restores_the_memory_and_guard_exactly(stored):
    root, m, store = stored
    store.wait_snapshot()
    store.close()
    fresh = make_memoir("llama")
    with DirectoryStore(root) as again:
        loaded = again.load()
        held = sum(rec.held_bytes() for rec in loaded.edits)
        assert held == len(loaded.edits) * m.config.k * 2  # masks only: 200 deltas stay on disk
        assert all(not isinstance(rec.stored(t), torch.Tensor) for rec in loaded.edits for t in ("delta", "inputs"))
        restore(fresh.memory, loaded)
        assert_same_memory(fresh, m)
        # another old edit leaves the restored memory exactly as a replay without it
        again.log_removal("e1", fresh.version + 1)
        fresh.remove("e1")
        assert_same_memory(fresh, replayed(list(fresh.edits.values())))


def test_a_delta_damaged_on_disk_after_it_was_stored_is_refused_not_summed(tmp_path):
    m = make_memoir("llama")
    with DirectoryStore(tmp_path) as store:
        store.create(Manifest.of(m, "tiny-llama", models.fingerprint(m.model)), m.basis)
        rec = synthetic(m, 7)
        commit(m, store, rec)
        ref = rec.stored("delta")
        with open(ref.file.path, "r+b") as f:
            f.seek(ref.offset + 5)
            byte = f.read(1)
            f.seek(ref.offset + 5)
            f.write(bytes([byte[0] ^ 0x40]))
        before = m.weights.acc.clone()
        with pytest.raises(StateCorruptError, match="crc32"):
            m.remove(rec.id)
        assert torch.equal(m.weights.acc, before)
