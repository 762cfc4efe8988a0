"""Read-your-writes without servers: min_version waits for the follower, then 409 (no such
version in the log) or 503 (the version exists, this replica did not reach it in time)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from app.http import deps
from app.http.errors import VersionAheadError, VersionUnavailableError
from app.service.replication import Follower


def runtime(version: int, head: int | None, wait: float = 0.05):
    engine = SimpleNamespace(version=version)
    follower = None
    if head is not None:
        follower = Follower(store=None, engine=engine)
        follower.head = head
    return SimpleNamespace(ready_engine=lambda: engine, follower=follower,
                           settings=SimpleNamespace(min_version_wait=wait)), engine


def test_a_version_already_reached_answers_at_once():
    rt, _ = runtime(7, 7)
    asyncio.run(deps.reach(rt, 7))
    asyncio.run(deps.reach(rt, None))


def test_a_version_in_the_log_but_not_reached_is_503():
    rt, _ = runtime(3, 5)
    with pytest.raises(VersionUnavailableError) as err:
        asyncio.run(deps.reach(rt, 5))
    assert err.value.status == 503 and err.value.retry_after


def test_a_version_beyond_the_log_is_409():
    rt, _ = runtime(3, 4)
    with pytest.raises(VersionAheadError) as err:
        asyncio.run(deps.reach(rt, 5))
    assert err.value.status == 409
    single, _ = runtime(3, None)  # one server (a state directory): nothing to wait for
    with pytest.raises(VersionAheadError):
        asyncio.run(deps.reach(single, 4))


def test_the_request_waits_for_the_follower_and_kicks_it():
    rt, engine = runtime(3, 5, wait=2.0)

    def apply_later():
        assert rt.follower._kick.wait(1.0), "the waiting request asks the follower to look now"
        time.sleep(0.05)
        engine.version = 5

    t = threading.Thread(target=apply_later)
    t.start()
    started = time.monotonic()
    asyncio.run(deps.reach(rt, 5))
    t.join()
    assert time.monotonic() - started < 1.0


def test_ready_while_catching_up_and_once_cut_off_for_longer_than_the_grace():
    from app.http.routes.health import ready

    engine = SimpleNamespace(alive=True, memoir=SimpleNamespace(version=3, edits={}, train_dtype="float32"),
                             writer=SimpleNamespace(failed=None))
    follower = Follower(store=None, engine=engine)
    follower.head = 5
    rt = SimpleNamespace(status="ready", engine=engine, follower=follower, model_name="tiny", error=None,
                         store=SimpleNamespace(failure=None), settings=SimpleNamespace(cut_off_grace=10.0,
                                                                                       engine="builtin"))

    def answer():
        r = asyncio.run(ready(rt))
        return getattr(r, "status_code", 200), r.body if hasattr(r, "body") else r.model_dump()

    code, body = answer()
    assert code == 503 and b"catching_up" in body and b"version 3 of 5" in body
    follower.status = "ok"
    code, body = answer()
    assert code == 200 and body["train_dtype"] == "float32"
    follower._cut_off(OSError("connection refused"))
    code, body = answer()
    assert code == 200 and "cut off from the edit log" in body["error"]  # within the grace: serve on
    follower.cut_since -= 11
    code, body = answer()
    assert code == 503 and b"cut_off" in body


def test_the_state_url_chooses_postgres_and_contradictions_are_refused(monkeypatch):
    from app.service import stores
    from app.settings import Settings
    from memoir_core.errors import StateError

    made = []
    monkeypatch.setitem(stores.STORES, "postgres", lambda settings: made.append(settings) or "pg")
    url = "postgresql://memoir@db/memoir"
    assert stores.open_store(Settings(state_url=url, store="auto")) == "pg"
    assert stores.open_store(Settings(state_url=url, store="auto", state_dir="/var/lib/memoir")) == "pg"  # the image's
    for other in ("dir", "memory"):
        with pytest.raises(StateError, match="MEMOIR_STATE_URL"):
            stores.open_store(Settings(state_url=url, store=other))
    assert "secret" not in repr(Settings(state_url="postgresql://memoir:secret@db/memoir"))
