"""Crashes at every step of the store's writes, and kill -9 at random moments."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from memoir_core.store import DirectoryStore
from tests.support.durable_fs import Crash, DurableFS
from tests.support.state_support import (
    LARGER,
    Expected,
    apply,
    assert_matches,
    basis,
    crash_child,
    expected_at,
    manifest,
)

REPO = Path(__file__).resolve().parents[2]
OPS = 14
SNAPSHOT_AFTER = (5, 11)


def _scratch() -> str:
    """A directory on tmpfs when there is one: the simulation models durability itself, and
    the real fsyncs of a few thousand runs are slow on a disk."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="memoir-crash-", dir=base)


def _workload(root: str, acks: list[int]) -> None:
    store = DirectoryStore(root, background=False)
    try:
        assert store.load() is None
        store.create(manifest(), basis())
        acks.append(0)
        exp = Expected()
        for _ in range(OPS):
            kind, arg = exp.step()
            apply(store, kind, arg, exp.version)
            acks.append(exp.version)
            if exp.version in SNAPSHOT_AFTER:
                store.snapshot()
    finally:
        _abandon(store)


def _abandon(store: DirectoryStore) -> None:
    """What a dead process leaves: no close(), just its descriptors gone."""
    if store._journal is not None and store._journal._fd is not None:
        os.close(store._journal._fd)
        store._journal._fd = None
    store._lock.release()


def _check_recovered(target: str, acks: list[int]) -> int:
    store = DirectoryStore(target, background=False)
    try:
        loaded = store.load(manifest())
        if loaded is None:
            assert not acks, "create() was acknowledged but the state is gone"
            store.create(manifest(), basis())
            version = 0
        else:
            version = loaded.version
            last = acks[-1] if acks else 0
            assert last <= version <= last + 1, (acks, version)
            assert_matches(loaded, expected_at(version))
        # it takes writes again, and they survive
        exp = expected_at(version)
        kind, arg = exp.step()
        apply(store, kind, arg, exp.version)
    finally:
        store.close()
    with DirectoryStore(target, background=False) as again:
        assert_matches(again.load(), exp)
    return version


def test_every_crash_point_of_create_edits_and_snapshots(monkeypatch):
    """Stop at each disk operation; rebuild the directory as a power cut (only fsynced data),
    a process crash (page cache kept) and a torn write would leave it; every acknowledged
    operation must be there, nothing half, and the store must work on."""
    scratch = _scratch()
    try:
        os.mkdir(os.path.join(scratch, "count"))
        counter = DurableFS(os.path.join(scratch, "count"))
        counter.install(monkeypatch)
        _workload(counter.root, [])
        total = counter.ops
        assert total > 60
        monkeypatch.undo()
        seen = set()
        for n in range(1, total + 1):
            root = os.path.join(scratch, f"run{n}")
            os.mkdir(root)
            fs = DurableFS(root, crash_at=n)
            fs.install(monkeypatch)
            acks: list[int] = []
            with pytest.raises(Crash):
                _workload(root, acks)
            monkeypatch.undo()
            for mode in ("drop", "keep", "tear"):
                target = os.path.join(scratch, f"run{n}-{mode}")
                fs.materialize(target, mode, seed=n)
                seen.add(_check_recovered(target, acks) - (acks[-1] if acks else 0))
        assert seen == {0, 1}  # both "the crashed write did not land" and "it did" occurred
    finally:
        monkeypatch.undo()
        shutil.rmtree(scratch, ignore_errors=True)


def _drain(conn, msgs: list[bytes]) -> None:
    while True:
        try:
            if not conn.poll(0):
                return
            msgs.append(conn.recv_bytes())
        except (EOFError, OSError):
            return


@pytest.mark.slow
def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path, monkeypatch):
    rounds = int(os.environ.get("MEMOIR_CRASH_ROUNDS", "20"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.support.state_support", "memoir_core.store"])
    root = str(tmp_path / "state")
    rng = random.Random(4)
    exp = Expected(LARGER)
    in_snapshot = 0
    for r in range(rounds):
        reader, writer = ctx.Pipe(duplex=False)
        child = ctx.Process(target=crash_child, args=(root, writer, LARGER, 17), daemon=True)
        child.start()
        writer.close()
        msgs: list[bytes] = []
        assert reader.poll(120), "the writer did not start"
        msgs.append(reader.recv_bytes())
        if r % 2:  # kill it inside a snapshot
            deadline = time.monotonic() + 30
            while b"snap" not in msgs[-1:] and time.monotonic() < deadline:
                if reader.poll(0.5):
                    msgs.append(reader.recv_bytes())
            time.sleep(rng.uniform(0, 0.03))
        else:
            time.sleep(rng.uniform(0.0, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        _drain(reader, msgs)
        reader.close()
        acked = max(int(m.split()[1]) for m in msgs if m.startswith((b"ack", b"start")))
        in_snapshot += msgs[-1] == b"snap"
        with DirectoryStore(root, background=False) as store:
            loaded = store.load(manifest(LARGER))
            assert acked <= loaded.version <= acked + 1, (r, acked, loaded.version)
            while exp.version < loaded.version:
                exp.step()
            assert_matches(loaded, exp)
            assert not [n for n in os.listdir(os.path.join(root, "snapshots")) if ".tmp-" in n]
    print(f"\n{rounds} rounds, {in_snapshot} killed inside a snapshot, version {exp.version}, {len(exp.live)} live")
    assert in_snapshot >= 1, "no round was killed inside a snapshot"
