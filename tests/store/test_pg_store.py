"""PostgresStore in process (tiny model, a fresh database per test): the memory read back is
bit-identical; the write lock is one at a time; snapshots and compaction keep catch-up exact, and
a replica behind the compaction horizon finds a gap and rebuilds; replicas starting together on
an empty database agree on one manifest and basis."""

from __future__ import annotations

import threading

import pytest
import torch

from memoir_core.replica import LogGapError, apply_entries, digest, reset
from memoir_core.state import Manifest, restore
from tests.support.pg_support import pg_url  # noqa: F401
from tests.support.tiny import make_memoir

pytest.importorskip("psycopg")
from memoir_core.store.postgres import PostgresStore  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def fresh(url: str, **kw):
    store = PostgresStore(url, replica="test", **kw)
    assert store.load() is None
    memoir = make_memoir()
    store.create(Manifest.of(memoir, "tiny", "f" * 32), memoir.basis)
    return store, memoir


def follower(url: str):
    store = PostgresStore(url, replica="follower")
    loaded = store.load()
    memoir = make_memoir()
    restore(memoir.memory, loaded)
    return store, memoir


def edit(store, memoir, prompt: str, target: str, edit_id: str):
    gen = memoir.propose(prompt, target, edit_id=edit_id)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        proposal = stop.value
    assert store.begin_write(memoir.version) == []
    proposal.record.version = memoir.version + 1
    store.log_edit(proposal.record)
    return memoir.commit(proposal)


def remove(store, memoir, edit_id: str):
    store.log_removal(edit_id, memoir.version + 1)
    memoir.remove(edit_id)


def test_the_memory_read_back_is_bit_identical_and_followers_apply_the_log(pg_url):  # noqa: F811
    store, memoir = fresh(pg_url)
    try:
        edit(store, memoir, "who is the chief executive of the company", "jane roe", "a")
        edit(store, memoir, "what is the capital city of the country", "paris", "b")
        other, replica = follower(pg_url)
        assert digest(replica.memory) == digest(memoir.memory)
        edit(store, memoir, "the quick brown fox jumps", "alice bob", "c")
        remove(store, memoir, "a")
        entries = other.fetch_after(replica.version)
        assert [(e.version, e.kind, e.edit_id) for e in entries] == [(3, "edit", "c"), (4, "rollback", "a")]
        assert apply_entries(replica.memory, entries) == 2
        assert digest(replica.memory) == digest(memoir.memory)
        assert torch.equal(replica.weights.acc, memoir.weights.acc)
        other.close()
    finally:
        store.close()


def test_one_writer_at_a_time(pg_url):  # noqa: F811
    store, memoir = fresh(pg_url)
    second = PostgresStore(pg_url, replica="second")
    try:
        assert store.begin_write(0) == []
        assert second.begin_write(0) is None  # busy: try again later
        store.abort_write()
        assert second.begin_write(0) == []
        second.abort_write()
    finally:
        second.close()
        store.close()


@pytest.mark.parametrize("large", [16 << 20, 0], ids=["bytea", "large-objects"])
def test_compaction_keeps_catch_up_exact_and_a_replica_behind_it_rebuilds(pg_url, large, monkeypatch):  # noqa: F811
    from memoir_core.store.postgres import blobs

    monkeypatch.setattr(blobs, "CHUNK", 1000)  # a tiny model's delta (8 KB) in several pieces
    store, memoir = fresh(pg_url, large_delta=large)
    try:
        edit(store, memoir, "who is the chief executive of the company", "jane roe", "a")
        other, behind = follower(pg_url)
        for i, name in enumerate(["john doe", "carol dave", "paris london", "berlin rome"]):
            edit(store, memoir, f"what is the capital city of country {i}", name, f"e{i}")
        remove(store, memoir, "e1")
        remove(store, memoir, "a")
        assert store.snapshot(every=1) == 7
        edit(store, memoir, "numbers one two three", "madrid lisbon", "late")
        assert store.snapshot(every=1) == 8  # compacts up to the previous snapshot (7)
        import psycopg

        with psycopg.connect(pg_url) as conn:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM memoir_log ORDER BY seq")]
            deltas = [r[0] for r in conn.execute("SELECT seq FROM memoir_delta ORDER BY seq")]
            masks = [r[0] for r in conn.execute("SELECT seq FROM memoir_log WHERE idx IS NOT NULL ORDER BY seq")]
        assert seqs == list(range(1, 9))  # the audit trail stays whole
        assert deltas == masks == [2, 4, 5, 8]  # rolled-back edits' deltas are gone
        with psycopg.connect(pg_url) as conn:  # deltas above the threshold are large objects, unlinked with them
            objects = conn.execute("SELECT count(*) FROM pg_largeobject_metadata").fetchone()[0]
            inline = conn.execute("SELECT count(*) FROM memoir_delta WHERE delta IS NOT NULL").fetchone()[0]
        assert (objects, inline) == ((4, 0) if large == 0 else (0, 4))
        with pytest.raises(LogGapError):
            other.fetch_after(behind.version)
        reset(behind.memory, other.load_latest())
        assert digest(behind.memory) == digest(memoir.memory)
        _, fresh_replica = follower(pg_url)  # a new replica starts from the snapshot
        assert digest(fresh_replica.memory) == digest(memoir.memory)
        other.close()
    finally:
        store.close()


def test_replicas_starting_together_agree_on_one_memory(pg_url):  # noqa: F811
    first, second = PostgresStore(pg_url, replica="1"), PostgresStore(pg_url, replica="2")
    try:
        assert first.load() is None  # holds the init lock until create()
        got = {}
        t = threading.Thread(target=lambda: got.setdefault("loaded", second.load()))
        t.start()
        t.join(1.0)
        assert t.is_alive(), "the second replica waits for the first to create the memory"
        memoir = make_memoir()
        first.create(Manifest.of(memoir, "tiny", "f" * 32), memoir.basis)
        t.join(30)
        loaded = got["loaded"]
        assert loaded is not None and loaded.version == 0
        assert torch.equal(loaded.basis.permutation, memoir.basis.permutation)
        assert loaded.basis.prefixes == memoir.basis.prefixes
    finally:
        first.close()
        second.close()


def test_a_follower_behind_the_compaction_horizon_rebuilds_on_its_engine(pg_url, caplog):  # noqa: F811
    from app.service.engine import Engine
    from app.service.replication import Follower
    from app.settings import Settings

    store, memoir = fresh(pg_url)
    other, replica = follower(pg_url)
    engine = Engine(replica, other, Settings())
    engine.start()
    try:
        lagging = Follower(other, engine)
        edit(store, memoir, "who is the chief executive of the company", "jane roe", "a")
        lagging.sync()  # the plain path: fetch and apply in order
        assert lagging.status == "ok" and digest(replica.memory) == digest(memoir.memory)
        edit(store, memoir, "what is the capital city of the country", "paris", "b")
        remove(store, memoir, "b")
        store.snapshot(every=1)
        edit(store, memoir, "numbers one two three", "madrid lisbon", "c")
        store.snapshot(every=1)  # "b"'s delta is compacted: the follower cannot replay version 2
        with caplog.at_level("WARNING", logger="app.service.replication"):
            lagging.sync()
        assert "rebuilding the memory from the newest snapshot" in caplog.text
        assert engine.submit(lambda m: digest(m.memory)).result(10) == digest(memoir.memory)
        assert lagging.status == "ok" and lagging.head == memoir.version
    finally:
        engine.stop()
        other.close()
        store.close()


def test_memoir_state_inspect_and_verify_read_a_memory_in_postgres(pg_url, capsys):  # noqa: F811
    import json

    from memoir_cli.main import main

    store, memoir = fresh(pg_url)
    try:
        edit(store, memoir, "who is the chief executive of the company", "jane roe", "a")
        edit(store, memoir, "what is the capital city of the country", "paris", "b")
        remove(store, memoir, "a")
        store.report(memoir.version, "http://127.0.0.1:1")
    finally:
        store.close()
    assert main(["state", "inspect", pg_url, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["version"], found["live_edits"], found["log"]) == (3, 1, {"edits": 2, "rollbacks": 1})
    assert [e["id"] for e in found["last_edits"]] == ["b"] and found["replicas"][0]["version"] == 3
    assert main(["state", "inspect", pg_url]) == 0 and "live edits       1" in capsys.readouterr().out
    assert main(["state", "verify", pg_url]) == 0
    assert "ok: the memory in PostgreSQL is sound: version 3, 1 live edits" in capsys.readouterr().out
    assert main(["state", "verify", pg_url.replace("memoir_test_", "memoir_none_")]) == 1
