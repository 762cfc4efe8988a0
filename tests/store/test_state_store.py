"""DirectoryStore on synthetic edits: round trips, snapshots, compaction, damage, mismatch."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from memoir_core.errors import StateCorruptError, StateMismatchError
from memoir_core.store import DirectoryStore, journal, snapshot
from memoir_core.store.layout import CURRENT
from tests.support.state_support import Expected, apply, assert_matches, basis, expected_at, manifest, record


def build(root, n: int, **kw) -> Expected:
    """A state with the first n operations of the deterministic stream."""
    exp = Expected()
    with DirectoryStore(root, **kw) as store:
        if store.load() is None:
            store.create(manifest(), basis())
        for _ in range(n):
            kind, arg = exp.step()
            apply(store, kind, arg, exp.version)
        store.wait_snapshot()
    return exp


def reload(root, **kw):
    with DirectoryStore(root, **kw) as store:
        return store.load(manifest()), list(store.notes)


def segments(root) -> list[Path]:
    return sorted((Path(root) / "journal").glob("*.wal"))


def test_empty_directory_loads_as_none_and_create_is_durable(tmp_path):
    with DirectoryStore(tmp_path / "s") as store:
        assert store.load() is None and not store.ready
        store.create(manifest(), basis())
        assert store.ready and store.version == 0
    loaded, _ = reload(tmp_path / "s")
    assert loaded.version == 0 and loaded.edits == [] and loaded.manifest == manifest()
    assert torch.equal(loaded.basis.permutation, basis().permutation) and loaded.basis.prefixes == basis().prefixes


def test_round_trip_with_background_snapshots_and_compaction(tmp_path):
    exp = build(tmp_path, 120, snapshot_min_bytes=4000)
    files = [p.name for p in segments(tmp_path)]
    snaps = os.listdir(tmp_path / "snapshots")
    assert len(snaps) == 1 and int(snaps[0]) > 0  # older snapshots were removed
    assert all(int(f.split(".")[0]) > int(snaps[0]) for f in files)  # covered segments too
    loaded, notes = reload(tmp_path)
    assert_matches(loaded, exp)
    assert notes == []


def test_rollback_of_an_edit_older_than_the_snapshot_is_exact(tmp_path):
    exp = build(tmp_path, 30)
    with DirectoryStore(tmp_path) as store:
        store.load()
        assert store.snapshot() == 30
        oldest = next(iter(exp.live))
        store.log_removal(oldest, 31)
    exp._drop(oldest)
    exp.version = 31
    loaded, _ = reload(tmp_path)
    assert_matches(loaded, exp)  # acc: snapshot accumulator minus the old delta, bit for bit
    fresh = torch.zeros_like(loaded.acc)
    for rec in loaded.edits:
        fresh.index_add_(1, rec.idx, rec.delta.long())
    assert torch.equal(loaded.acc, fresh)


def test_snapshot_does_not_block_edits(tmp_path, monkeypatch):
    build(tmp_path, 10)
    gate, started = threading.Event(), threading.Event()
    real = snapshot.accumulate

    def slow(*a, **kw):
        started.set()
        assert gate.wait(30)
        return real(*a, **kw)

    monkeypatch.setattr(snapshot, "accumulate", slow)
    exp = expected_at(10)
    with DirectoryStore(tmp_path) as store:
        store.load()
        t = threading.Thread(target=store.snapshot)
        t.start()
        assert started.wait(30)
        for _ in range(5):  # while the snapshot is stuck
            kind, arg = exp.step()
            apply(store, kind, arg, exp.version)
        gate.set()
        t.join()
        assert store.snapshot_version == 10
    loaded, _ = reload(tmp_path)
    assert_matches(loaded, exp)


def test_files_are_plain_safetensors(tmp_path):
    build(tmp_path, 6)
    with DirectoryStore(tmp_path) as store:
        loaded = store.load()
        store.snapshot()
    with safe_open(str(tmp_path / "basis.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("permutation"), basis().permutation)
    snap = tmp_path / "snapshots" / os.listdir(tmp_path / "snapshots")[0]
    with safe_open(str(snap / "edits.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("delta")[0], loaded.edits[0].delta)
    with safe_open(str(snap / "memory.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("acc"), loaded.acc)


@pytest.mark.parametrize("tear", ["one byte", "frame only", "half", "bad checksum", "zeros"])
def test_torn_last_record_is_cut(tmp_path, tear):
    exp = build(tmp_path, 5)
    seg = segments(tmp_path)[-1]
    size = seg.stat().st_size
    data = journal.encode_edit(record(6))
    # "bad checksum": whole, but past the commit marker, so never acknowledged (an acknowledged
    # one is corruption: test_state_losses)
    tail = {"one byte": data[:1], "frame only": data[:journal.PREFIX], "half": data[: len(data) // 2],
            "bad checksum": data[:-1] + bytes([data[-1] ^ 1]), "zeros": b"\0" * 4096}[tear]
    with open(seg, "ab") as f:
        f.write(tail)
    loaded, notes = reload(tmp_path)
    assert_matches(loaded, exp)
    assert len(notes) == 1 and "torn" in notes[0] and seg.stat().st_size == size
    exp = build(tmp_path, 0)  # and it goes on from there
    with DirectoryStore(tmp_path) as store:
        store.load()
        store.log_edit(record(6))
    assert reload(tmp_path)[0].version == 6


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_corrupt_middle_record_is_refused(tmp_path):
    build(tmp_path, 5)
    seg = segments(tmp_path)[-1]
    buf = bytearray(seg.read_bytes())
    second = journal.scan(buf).entries[1]
    _flip(seg, second.payload[0] + 40)
    before = seg.read_bytes()
    with pytest.raises(StateCorruptError, match="not a torn write") as err:
        reload(tmp_path)
    assert "record at byte" in str(err.value) and "backup" in str(err.value)
    assert seg.read_bytes() == before  # nothing repaired, nothing cut


def test_damaged_length_field_is_corruption_not_a_tear(tmp_path):
    build(tmp_path, 4)
    seg = segments(tmp_path)[-1]
    _flip(seg, 6)  # header length of the first record
    with pytest.raises(StateCorruptError):
        reload(tmp_path)


@pytest.mark.parametrize("damage", ["missing snapshot file", "snapshot checksum", "missing snapshot", "current",
                                    "journal gap", "basis", "manifest", "duplicate id"])
def test_other_damage_is_refused_with_what_and_what_to_do(tmp_path, damage):
    build(tmp_path, 12)
    with DirectoryStore(tmp_path) as store:
        store.load()
        store.snapshot()
        for v in range(13, 17):
            store.log_edit(record(v))
    snap = tmp_path / "snapshots" / os.listdir(tmp_path / "snapshots")[0]
    if damage == "missing snapshot file":
        (snap / "edits.safetensors").unlink()
    elif damage == "snapshot checksum":
        _flip(snap / "memory.safetensors", 200)
    elif damage == "missing snapshot":
        import shutil
        shutil.rmtree(snap)
    elif damage == "current":
        _flip(tmp_path / CURRENT, 30)
    elif damage == "journal gap":
        (tmp_path / "journal" / "00000000000000000013.wal").rename(tmp_path / "journal" / "00000000000000000014.wal")
    elif damage == "basis":
        (tmp_path / "basis.safetensors").unlink()
    elif damage == "manifest":
        _flip(tmp_path / "manifest.json", 40)
    elif damage == "duplicate id":
        with open(segments(tmp_path)[-1], "ab") as f:
            f.write(journal.encode_edit(record(17, edit_id="e13")))
    with pytest.raises(StateCorruptError) as err:
        reload(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "Nothing was changed" in msg
    if damage == "duplicate id":
        assert "already live" in msg


@pytest.mark.parametrize("field,value", [("fingerprint", "cd" * 16), ("layer", 3), ("k", 8), ("width", 32)])
def test_state_of_another_model_or_layout_is_refused(tmp_path, field, value):
    build(tmp_path, 3)
    other = manifest(**{field: value})
    with DirectoryStore(tmp_path) as store:
        with pytest.raises(StateMismatchError) as err:
            store.load(other)
        with pytest.raises(StateMismatchError):
            store.check(other)
    msg = str(err.value)
    assert str(getattr(manifest(), field)) in msg and str(value) in msg
    # tau and the optimiser may change freely
    assert reload(tmp_path)[0] is not None
    with DirectoryStore(tmp_path) as store:
        store.load(manifest(config={"centre": True, "tau": 0.9, "lr": 1.0}))


def test_a_state_written_before_pool_existed_reads_as_plain_mean_pooling(tmp_path):
    build(tmp_path, 3)  # its manifest's config has no "pool": its masks are plain span means
    with DirectoryStore(tmp_path) as store:
        with pytest.raises(StateMismatchError, match="pool: the state has mean"):
            store.load(manifest(config={"centre": True, "pool": "norm"}))
    with DirectoryStore(tmp_path) as store:
        assert store.load(manifest(config={"centre": True, "pool": "mean"})) is not None
