"""DirectoryStore on synthetic edits: round trips, snapshots, damage, mismatch, lock, disk errors."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from memoir_core.errors import DurabilityError, StateCorruptError, StateError, StateLockedError, StateMismatchError
from memoir_core.store import DirectoryStore, fsio, journal, snapshot
from memoir_core.store.layout import CURRENT

from .state_support import LARGER, Expected, apply, assert_matches, basis, expected_at, manifest, record

REPO = Path(__file__).resolve().parents[1]


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


def test_second_opener_is_refused_with_the_holders_pid(tmp_path):
    build(tmp_path, 1)
    with DirectoryStore(tmp_path):
        with pytest.raises(StateLockedError, match=str(os.getpid())):
            DirectoryStore(tmp_path)
        code = ("import sys\nfrom memoir_core.store import DirectoryStore\nfrom memoir_core.errors import StateLockedError\n"
                "try:\n    DirectoryStore(sys.argv[1])\nexcept StateLockedError as e:\n    print(e); sys.exit(3)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 3 and str(os.getpid()) in out.stdout
    with DirectoryStore(tmp_path) as store:  # released on close (and by the kernel on death)
        assert store.load().version == 1


def test_writes_that_break_the_protocol_are_refused_without_failing(tmp_path):
    build(tmp_path, 3)
    with DirectoryStore(tmp_path) as store:
        store.load()
        live = list(store._registry.live)
        with pytest.raises(ValueError, match="version"):
            store.log_edit(record(9))
        with pytest.raises(ValueError, match="already live"):
            store.log_edit(record(4, edit_id=live[0]))
        with pytest.raises(ValueError, match="not live"):
            store.log_removal("nope", 4)
        bad = record(4)
        bad.delta = bad.delta[:, :3]
        with pytest.raises(ValueError, match="delta"):
            store.log_edit(bad)
        bad = record(4)
        bad.metadata = {"x": object()}
        with pytest.raises(ValueError, match="cannot be stored"):
            store.log_edit(bad)
        assert store.ready
        store.log_edit(record(4))
    assert reload(tmp_path)[0].version == 4


@pytest.mark.parametrize("failing", ["fsync", "write_all", "create"])
def test_a_failed_write_fails_the_store_and_loses_nothing_acknowledged(tmp_path, monkeypatch, failing):
    exp = build(tmp_path, 4)
    store = DirectoryStore(tmp_path)
    store.load()
    kind, arg = exp.step()
    apply(store, kind, arg, exp.version)  # acknowledged
    real = getattr(fsio, failing)

    def broken(*args):
        if failing == "write_all":  # half the record reaches the file, then the disk is full
            real(args[0], bytes(args[1])[: len(args[1]) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsio, failing, broken)
    if failing == "create":
        store._journal.rotate()  # the next record needs a new segment
    with pytest.raises(DurabilityError, match="not acknowledged|was not acknowledged"):
        store.log_edit(record(exp.version + 1))
    assert not store.ready and "failed" in store.failure
    monkeypatch.undo()
    with pytest.raises(DurabilityError):  # the disk works again; the store still refuses
        store.log_edit(record(exp.version + 1))
    with pytest.raises(DurabilityError):
        store.snapshot()
    store.close()
    loaded, _ = reload(tmp_path)
    assert_matches(loaded, exp)


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def test_full_disk_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    if not _mount_tmpfs(mnt, "1m"):
        pytest.skip("cannot mount a tmpfs here (needs root); the patched ENOSPC test covers the logic")
    try:
        exp = Expected(LARGER)  # 128 KB deltas: a few fill the disk
        store = DirectoryStore(mnt / "s", snapshot_min_bytes=300_000)
        store.create(manifest(LARGER), basis(LARGER))
        with pytest.raises(DurabilityError, match="No space left"):
            for _ in range(1000):
                kind, arg = exp.step()
                apply(store, kind, arg, exp.version)
        assert not store.ready
        store.close()
        acked = expected_at(exp.version - 1, LARGER)
        with DirectoryStore(mnt / "s", background=False) as again:
            assert_matches(again.load(), acked)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_closed_store_refuses_writes(tmp_path):
    build(tmp_path, 1)
    store = DirectoryStore(tmp_path)
    store.load()
    store.close()
    with pytest.raises(StateError, match="closed"):
        store.log_edit(record(2))
