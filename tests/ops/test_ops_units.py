"""Operations pieces in process: keys and the address rule, the loopback guard, structured logs,
snapshot metrics, /metrics behind the admin key, and the per-edit limits on steps and time."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.http import auth
from app.http.auth import ConfigError, Keys, LoopbackOnly, check_exposure
from app.http.main import create_app
from app.service import logs, metrics
from app.settings import Settings
from memoir_core.state import InMemoryStore, SnapshotObservers
from tests.support.server_utils import THREADS
from tests.support.tiny import make_memoir

pytestmark = pytest.mark.timeout(120)

ALICE, BOB, CLIENT = "a" * 24, "b" * 24, "c" * 24


def keys(**kw) -> Keys:
    return Keys.from_settings(Settings(**kw))


def test_keys_single_and_named_forms():
    k = keys(api_key=CLIENT, admin_keys=f"alice:{ALICE}, bob:{BOB}")
    assert [(x.name, x.admin) for x in k.keys] == [("client", False), ("alice", True), ("bob", True)]
    assert k.identify(f"Bearer {BOB}").name == "bob"
    assert k.identify(f"bearer   {ALICE}").name == "alice"  # scheme case and spaces as RFC 6750 allows
    assert k.identify(f"Bearer {CLIENT}").admin is False
    for header in (None, "", ALICE, f"Basic {ALICE}", "Bearer", f"Bearer {ALICE} x", f"Bearer {ALICE}x"):
        assert k.identify(header) is None, header
    assert keys().keys == []


@pytest.mark.parametrize("kw,words", [
    ({"admin_key": "short"}, "at least 16"),
    ({"admin_key": "has a space in it!!"}, "without spaces"),
    ({"admin_keys": f"alice {ALICE}"}, "not name:key"),
    ({"admin_keys": f"al ice:{ALICE}"}, "the name"),
    ({"admin_keys": f"alice:{ALICE},alice:{BOB}"}, "same name"),
    ({"admin_keys": f"alice:{ALICE}", "api_key": ALICE}, "configured twice"),
])
def test_bad_keys_stop_the_start(kw, words):
    with pytest.raises(ConfigError, match=words):
        keys(**kw)
    with pytest.raises(ConfigError, match=words):
        create_app(Settings(**kw), builder=lambda loaded: None)


def test_no_admin_key_means_loopback_only():
    none, admin = keys(), keys(admin_key=ALICE)
    for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"):
        check_exposure(host, none, False)
    for host in ("0.0.0.0", "::", "10.0.0.5", "memoir.example"):
        with pytest.raises(ConfigError, match="refusing to listen on .*MEMOIR_ADMIN_KEY.*--allow-insecure"):
            check_exposure(host, none, False)
        check_exposure(host, admin, False)
        check_exposure(host, none, True)
    with pytest.raises(ConfigError, match="refusing"):
        create_app(Settings(host="0.0.0.0"), builder=lambda loaded: None)


def test_loopback_guard_refuses_connections_on_other_addresses():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(server):
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        await LoopbackOnly(app)({"type": "http", "server": server, "headers": []}, receive, send)
        return sent[0]["status"]

    assert asyncio.run(call(("127.0.0.1", 8000))) == 204
    assert asyncio.run(call(("::1", 8000))) == 204
    assert asyncio.run(call(("testserver", 80))) == 204  # not an address: in-process clients
    assert asyncio.run(call(None)) == 204  # a Unix socket
    assert asyncio.run(call(("10.1.2.3", 8000))) == 403


def test_json_log_lines_carry_the_request_id_and_event_fields():
    record = logging.LogRecord("memoir.events", logging.INFO, __file__, 1, "edit applied", None, None)
    record.event, record.fields = "edit_applied", {"id": "e1", "author": "alice", "steps": 4, "msg": "x"}
    token = logs.REQUEST.set(logs.RequestInfo("req-1", "POST", "/edit"))
    try:
        line = json.loads(logs.JsonFormatter().format(record))
        text = logs.TextFormatter().format(record)
    finally:
        logs.REQUEST.reset(token)
    assert line["event"] == "edit_applied" and line["request_id"] == "req-1" and line["author"] == "alice"
    assert line["msg"] == "edit applied" and line["field_msg"] == "x" and line["level"] == "info"
    assert 'request_id="req-1"' in text and 'author="alice"' in text


def test_snapshots_are_observed_through_the_store():
    class Store(InMemoryStore):  # a store that snapshots, with the observer hook every store has
        fail = False

        def __init__(self):
            super().__init__()
            self.observers = SnapshotObservers()

        def observe(self, observer):
            self.observers.add(observer)

        def snapshot(self):
            with self.observers.timed():
                if self.fail:
                    raise OSError("disk full")
                return 7

    def count(outcome):
        return metrics.REGISTRY.get_sample_value("memoir:snapshots_total", {"outcome": outcome}) or 0.0

    store = metrics.observe_store(Store())
    assert metrics.observe_store(store) is store  # observed once however often given
    ok, failed = count("ok"), count("failed")
    assert store.snapshot() == 7
    store.fail = True
    with pytest.raises(OSError):
        store.snapshot()
    assert (count("ok"), count("failed")) == (ok + 1, failed + 1)
    stamp = metrics.REGISTRY.get_sample_value("memoir:snapshot_last_success_timestamp_seconds")
    assert stamp is None or stamp <= time.time()  # gauges come from a bound server only
    stats = {"snapshot_version": 3, "journal_bytes": 10, "name": "x"}
    assert {m.name: m.samples[0].value for m in metrics._store_stats(type("S", (), {"stats": lambda _: stats})())} == {
        "memoir:store_journal_bytes": 10.0, "memoir:store_snapshot_version": 3.0}


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(THREADS))
    yield
    torch.set_num_threads(before)


def serve(settings: Settings, **config) -> TestClient:
    client = TestClient(create_app(settings.model_copy(update={"served_model_name": "tiny"}),
                                   builder=lambda loaded: make_memoir(**config)))
    client.__enter__()
    for _ in range(300):
        if client.get("/ready").json()["status"] != "loading":
            break
        time.sleep(0.1)
    return client


def test_metrics_behind_the_admin_key_when_asked(one_thread):
    client = serve(Settings(metrics_auth=True, admin_key=SecretStr(ALICE)))
    try:
        assert client.get("/metrics").status_code == 401
        r = client.get("/metrics", headers={"Authorization": f"Bearer {ALICE}"})
        assert r.status_code == 200 and "memoir:memory_version" in r.text
    finally:
        client.__exit__(None, None, None)


def test_steps_and_seconds_per_edit_are_bounded(one_thread):
    # The tiny model's config would train up to 100000 steps (stop_loss below any loss).
    endless = {"stop_loss": -1.0, "max_steps": 100_000, "max_edit_seconds": 600.0}
    client = serve(Settings(max_edit_steps=3), **endless)
    try:
        r = client.post("/edit", json={"prompt": "who is the chief executive", "target_new": "bob"})
        assert r.status_code == 200, r.text
        assert r.json()["edits"][0]["steps"] == 3
    finally:
        client.__exit__(None, None, None)
    client = serve(Settings(max_edit_seconds=0.5), **endless)
    try:
        t0 = time.perf_counter()
        r = client.post("/edit", json={"prompt": "who is the chief executive", "target_new": "bob"})
        assert r.status_code == 200, r.text
        edit = r.json()["edits"][0]
        assert 0 < edit["steps"] < 100_000 and edit["seconds"] < 5 and time.perf_counter() - t0 < 10
    finally:
        client.__exit__(None, None, None)


def test_public_paths_are_the_documented_ones():
    assert auth.PUBLIC_PATHS == {"/health", "/ready", "/metrics", "/version"}
