"""DirectoryStore when things go wrong around it: a second opener, misuse, failed writes, passing faults that
heal, a full disk."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memoir_core.errors import DurabilityError, StateError, StateLockedError, TransientDurabilityError
from memoir_core.store import DirectoryStore, fsio, journal
from tests.store.test_state_store import build, reload, segments
from tests.support.state_support import (LARGER, Expected, apply, assert_matches, basis, expected_at,
                                         manifest, record)
from tests.support.tmpfs import mount_tmpfs

REPO = Path(__file__).resolve().parents[2]


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
        if failing == "write_all":  # half the record reaches the file, then the disk fails
            real(args[0], bytes(args[1])[: len(args[1]) // 2])
        raise OSError(errno.EIO, "Input/output error")  # never retried: see test_a_passing_fault_heals

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


@pytest.mark.parametrize("fault", [errno.ENOSPC, errno.EMFILE])
def test_a_passing_fault_pauses_writes_and_heals_without_a_restart(tmp_path, monkeypatch, fault):
    exp = build(tmp_path, 4)
    store = DirectoryStore(tmp_path)
    store.load()
    real_write = fsio.write_all

    def full(fd, data):  # half the record reaches the file, then the disk is full
        real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    def no_fds(path):
        raise OSError(errno.EMFILE, "Too many open files")

    # the fault also shows where the store checks for it before resuming: free space, a descriptor
    if fault == errno.ENOSPC:
        monkeypatch.setattr(fsio, "write_all", full)
        monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((4096,) * 3 + (0,) * 7))
    else:
        monkeypatch.setattr(fsio, "create", no_fds)
        monkeypatch.setattr(fsio, "fsync_dir", no_fds)
        store._journal.rotate()  # the next record needs a new segment
    kind, arg = exp.step()
    for _ in range(2):  # the fault, then the pause
        with pytest.raises(TransientDurabilityError, match="resume by themselves"):
            apply(store, kind, arg, exp.version)
        assert not store.ready and store.transient
    time.sleep(1.5)
    assert not store.ready  # the fault lasts: still paused
    monkeypatch.undo()
    deadline = time.monotonic() + 15
    while not store.ready and time.monotonic() < deadline:
        time.sleep(0.1)
    assert store.ready and store.failure is None
    apply(store, kind, arg, exp.version)  # the same edit, acknowledged now
    store.close()
    assert_matches(reload(tmp_path)[0], exp)


def test_damage_found_before_resuming_stops_writes_for_good(tmp_path, monkeypatch):
    build(tmp_path, 4)
    store = DirectoryStore(tmp_path)
    store.load()
    monkeypatch.setattr(fsio, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(TransientDurabilityError):
        store.log_edit(record(5))
    monkeypatch.undo()
    with open(segments(tmp_path)[-1], "ab") as f:  # someone else wrote to the journal meanwhile
        f.write(journal.encode_edit(record(5)))
    deadline = time.monotonic() + 15
    while store.transient and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not store.ready and not store.transient and "ends at version 5" in store.failure
    with pytest.raises(DurabilityError, match="restart"):
        store.log_edit(record(5))
    store.close()


def test_full_disk_on_a_small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    if not mount_tmpfs(mnt, "1m"):
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
