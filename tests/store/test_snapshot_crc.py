"""Start-up reads a snapshot's header and masks only (store/snapshot.py): each delta and guard
factor is checked by the crc32 the registry holds for it when it is read. Damage anywhere in the
edits file is reported (at start-up, or by the read that meets it), never summed into W_m."""

from __future__ import annotations

import os

import pytest
import torch

from memoir_core import models
from memoir_core.errors import StateCorruptError
from memoir_core.state import Manifest, restore
from memoir_core.store import DirectoryStore, portable, snapshot
from memoir_core.store.layout import CURRENT, SNAPSHOTS, checked_json, parse_checked, sha256
from tests.store.test_state_offheap import assert_same_memory, commit, synthetic
from tests.support.tiny import make_memoir

N = 6


@pytest.fixture
def stored(tmp_path):
    """A state directory whose live edits all sit in a snapshot (no journal after it)."""
    m = make_memoir("llama")
    with DirectoryStore(tmp_path, background=False) as store:
        store.create(Manifest.of(m, "tiny-llama", models.fingerprint(m.model)), m.basis)
        for i in range(N):
            commit(m, store, synthetic(m, i))
        store.snapshot()
    return str(tmp_path), m


def edits_file(root: str) -> str:
    current = snapshot.read_current(root)
    return os.path.join(root, SNAPSHOTS, current["snapshot"], snapshot.EDITS)


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def data_start(path: str) -> int:
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def load(root: str):
    with DirectoryStore(root) as store:
        return store.load()


def test_the_registry_holds_a_crc_of_every_part_and_start_up_restores_the_memory_exactly(stored):
    root, m = stored
    current = snapshot.read_current(root)
    folder = os.path.join(root, SNAPSHOTS, current["snapshot"])
    body = parse_checked(open(os.path.join(folder, snapshot.REGISTRY), "rb").read(), "memoir-snapshot", root, "r")
    crcs = body["files"][snapshot.EDITS]["crc32"]
    assert len(crcs["delta"]) == len(crcs["inputs"]) == N and None not in crcs["inputs"]
    loaded = load(root)
    assert all(rec.held_bytes() == rec.idx.numel() * 2 for rec in loaded.edits)  # deltas stay on disk
    fresh = make_memoir("llama")
    restore(fresh.memory, loaded)
    assert_same_memory(fresh, m)
    assert torch.equal(loaded.edits[3].delta, synthetic(m, 3).delta)


def test_a_damaged_delta_is_refused_when_read_and_by_verify(stored):
    root, m = stored
    path = edits_file(root)
    loaded = load(root)  # start-up does not read deltas: it cannot see this damage yet
    flip(path, loaded.edits[2].stored("delta").offset + 11)
    loaded = load(root)
    fresh = make_memoir("llama")
    restore(fresh.memory, loaded)
    before = fresh.weights.acc.clone()
    with pytest.raises(StateCorruptError, match="crc32"):
        fresh.remove(loaded.edits[2].id)  # a rollback reads it: refused, W_m untouched
    assert torch.equal(fresh.weights.acc, before)
    assert torch.equal(loaded.edits[1].delta, synthetic(m, 1).delta)  # its neighbours read fine
    with pytest.raises(StateCorruptError, match="checksum"):
        portable.verify(root)  # the operator's check reads every byte
    with DirectoryStore(root) as store:  # and a snapshot, which rewrites every delta, stops at it
        store.load()
        store.log_removal(loaded.edits[0].id, loaded.version + 1)
        with pytest.raises(StateCorruptError, match="crc32"):
            store.snapshot()


def test_damaged_masks_fail_start_up(stored):
    root, _ = stored
    path = edits_file(root)
    flip(path, data_start(path) + 8 * 3 + 1)
    with pytest.raises(StateCorruptError, match="masks"):
        load(root)


def test_a_damaged_guard_factor_fails_start_up_when_the_guard_is_rebuilt(stored):
    root, _ = stored
    loaded = load(root)
    flip(edits_file(root), loaded.edits[4].stored("inputs").offset + 3)
    loaded = load(root)
    with pytest.raises(StateCorruptError, match="crc32"):
        restore(make_memoir("llama").memory, loaded)


def test_a_damaged_header_or_a_cut_file_fails_start_up(stored):
    root, _ = stored
    path = edits_file(root)
    flip(path, 20)
    with pytest.raises(StateCorruptError):
        load(root)
    flip(path, 20)
    load(root)  # undone: fine again
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(StateCorruptError, match="bytes"):
        load(root)


def test_a_snapshot_written_before_the_crcs_is_read_whole_and_checked(stored):
    root, m = stored
    current = snapshot.read_current(root)
    reg_path = os.path.join(root, SNAPSHOTS, current["snapshot"], snapshot.REGISTRY)
    body = parse_checked(open(reg_path, "rb").read(), "memoir-snapshot", root, "r")
    del body["files"][snapshot.EDITS]["crc32"]
    raw = checked_json(body, "memoir-snapshot")
    with open(reg_path, "wb") as f:
        f.write(raw)
    with open(os.path.join(root, CURRENT), "wb") as f:
        f.write(checked_json({**current, "registry_sha256": sha256(raw)}, "memoir-current"))
    fresh = make_memoir("llama")
    restore(fresh.memory, load(root))
    assert_same_memory(fresh, m)
    flip(edits_file(root), os.path.getsize(edits_file(root)) - 7)  # the last guard factor
    with pytest.raises(StateCorruptError, match="checksum"):
        load(root)  # read whole: the sha256 catches it at start-up
