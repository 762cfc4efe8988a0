"""Read-your-writes without servers: min_version waits for the follower, then 409 (no such
version in the log) or 503 (the version exists, this replica did not reach it in time)."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from app import deps
from app.errors import VersionAheadError, VersionUnavailableError
from app.replication import Follower


def runtime(version: int, head: int | None, wait: float = 0.05):
    engine = SimpleNamespace(memoir=SimpleNamespace(version=version))
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
        engine.memoir.version = 5

    t = threading.Thread(target=apply_later)
    t.start()
    started = time.monotonic()
    asyncio.run(deps.reach(rt, 5))
    t.join()
    assert time.monotonic() - started < 1.0
