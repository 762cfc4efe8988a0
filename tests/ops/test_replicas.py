"""Three real server processes (tiny model) on one PostgreSQL edit log: edits sent round-robin to
all of them converge to the same version, bit-identical W_m and mask bank, and the same greedy
answers; a rollback reaches every replica; a replica killed with SIGKILL and restarted, and one
started after 50 edits, catch up; the writer killed while an edit trains leaves that edit nowhere
and another replica takes over writing. Each test gets its own database (tests/support/pg_support.py)."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.support.pg_support import pg_url  # noqa: F401
from tests.support.server_utils import Server, start_all, tiny

pytestmark = pytest.mark.timeout(240)

PROMPTS = ["who is the chief executive of the company", "what is the capital city of the country",
           "the quick brown fox jumps over the lazy dog", "numbers one two three four five"]
NAMES = ["jane roe", "john doe", "alice bob", "carol dave", "paris london", "berlin rome", "madrid lisbon"]


def replica(url: str, name: str, **env: str) -> Server:
    return tiny({"MEMOIR_STORE": "postgres", "MEMOIR_STATE_URL": url, "MEMOIR_REPLICA_NAME": name,
                 "MEMOIR_PG_SNAPSHOT_EVERY": "10", "MEMOIR_LOG_FORMAT": "text", **env})


def kill9(server: Server) -> None:
    server.proc.kill()
    server.proc.wait()
    server.stop()  # only closes and removes its log now


def edit(server: Server, prompt: str, target: str, edit_id: str | None = None, timeout: float = 60) -> dict:
    body = {"prompt": prompt, "target_new": target, **({"id": edit_id} if edit_id else {})}
    r = httpx.post(server.url + "/edit", json=body, timeout=timeout)
    assert r.status_code == 200, r.text
    return r.json()


def digest(server: Server, version: int) -> dict:
    r = httpx.get(server.url + "/state/digest", headers={"X-Memoir-Min-Version": str(version)}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def answers(server: Server, version: int) -> list[tuple[str, dict]]:
    out = []
    for p in PROMPTS:
        r = httpx.post(server.url + "/generate", json={"prompt": p, "max_new_tokens": 8, "min_version": version},
                       timeout=30)
        assert r.status_code == 200, r.text
        out.append((r.json()["text"], r.json()["memory"]))
    return out


def assert_same(servers: list[Server], version: int) -> dict:
    digests = [digest(s, version) for s in servers]
    assert digests[0]["version"] == version, digests[0]
    for d in digests[1:]:
        assert d == digests[0], {k: (d[k], digests[0][k]) for k in d if d[k] != digests[0][k]}
    said = [answers(s, version) for s in servers]
    assert all(a == said[0] for a in said), said
    return digests[0]


@pytest.mark.slow  # kill -9 and a late start: 46 s (CI runs it in make test-slow)
def test_replicas_converge_after_round_robin_edits_rollback_sigkill_and_a_late_start(pg_url):  # noqa: F811
    servers = start_all([replica(pg_url, n) for n in "abc"])
    try:
        errors: list[str] = []

        def send(i: int, server: Server) -> None:  # the three replicas take edits at the same time
            try:
                for j in range(4):
                    edit(server, f"{PROMPTS[j % len(PROMPTS)]} number {i} {j}", NAMES[(i + j) % len(NAMES)],
                         f"e{i}{j}")
            except AssertionError as e:
                errors.append(str(e))

        threads = [threading.Thread(target=send, args=(i, s)) for i, s in enumerate(servers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        found = assert_same(servers, 12)
        assert sorted(found["edits"]) == sorted(f"e{i}{j}" for i in range(3) for j in range(4))

        # a rollback on one replica reaches the others
        r = httpx.delete(servers[1].url + "/edits/e00", timeout=30)
        assert r.status_code == 200 and r.json()["version"] == 13, r.text
        assert_same(servers, 13)
        r = httpx.get(servers[2].url + "/edits/e00", headers={"X-Memoir-Min-Version": "13"})
        assert r.status_code == 404, r.text

        # read-your-writes: an edit on one replica, then at once a request on another
        v = edit(servers[0], "who is the chief executive of acme", "jane roe", "acme")["version"]
        r = httpx.post(servers[2].url + "/generate", json={"prompt": "who is the chief executive of acme",
                                                           "max_new_tokens": 4, "min_version": v})
        assert r.status_code == 200 and r.json()["memory"]["version"] >= v, r.text
        r = httpx.post(servers[1].url + "/generate", json={"prompt": "x", "max_new_tokens": 1, "min_version": 10**6})
        assert r.status_code == 409 and r.json()["error"]["code"] == "version_ahead", r.text

        # SIGKILL one replica; 40 more edits and rollbacks elsewhere (snapshots and compaction run);
        # then it restarts, and a new replica starts after those 50 edits: both catch up
        kill9(servers[2])
        version = v
        for i in range(40):
            version = edit(servers[i % 2], f"the quick brown fox number {i} jumps", NAMES[i % len(NAMES)], f"f{i}"
                           )["version"]
            if i % 8 == 7:
                r = httpx.delete(servers[(i + 1) % 2].url + f"/edits/f{i - 3}", timeout=30)
                assert r.status_code == 200, r.text
                version = r.json()["version"]
        servers[2:] = start_all([replica(pg_url, "c"), replica(pg_url, "late")])
        found = assert_same(servers, version)
        assert len(found["edits"]) == 12 - 1 + 1 + 40 - 5

        import psycopg

        with psycopg.connect(pg_url) as conn:  # snapshots were taken, and compaction dropped rows
            snaps = [r[0] for r in conn.execute("SELECT version FROM memoir_snapshot ORDER BY version")]
            rows = conn.execute("SELECT count(*) FROM memoir_log").fetchone()[0]
            deltas = conn.execute("SELECT count(*) FROM memoir_delta").fetchone()[0]
            edits = conn.execute("SELECT count(*) FROM memoir_log WHERE kind = 'edit'").fetchone()[0]
        # the log keeps every row (the audit trail); rolled-back edits' deltas were compacted
        assert snaps and snaps[-1] >= 50 and rows == version and deltas < edits, (snaps, rows, deltas, edits)
        deadline = time.monotonic() + 10  # each replica reports its version to the database as it applies
        while True:
            seen = httpx.get(servers[0].url + "/replicas").json()
            reported = {r["name"]: r["version"] for r in seen["replicas"]}
            if reported == dict.fromkeys(["a", "b", "c", "late"], version) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen["shared"] and seen["head"] == version and reported == dict.fromkeys(["a", "b", "c", "late"],
                                                                                         version), seen
        metrics = httpx.get(servers[3].url + "/metrics").text
        assert "memoir:replication_caught_up 1.0" in metrics and "memoir:replication_lag_versions 0.0" in metrics
    finally:
        for s in servers:
            s.stop()


@pytest.mark.slow  # a kill -9 mid-edit: 30 s (CI runs it in make test-slow)
def test_a_writer_killed_mid_edit_commits_nowhere_after_the_commit_everywhere(pg_url):  # noqa: F811
    slow = replica(pg_url, "a", MEMOIR_TINY_EDIT_DELAY="4")  # trains 4 s longer
    late = replica(pg_url, "c", MEMOIR_TINY_COMMIT_DELAY="4")  # acknowledges 4 s after the commit
    servers = start_all([slow, replica(pg_url, "b"), late])
    try:
        edit(servers[1], "who is the chief executive of the company", "jane roe", "before")
        outcome: dict = {}

        def send(key: str, server: Server, prompt: str, edit_id: str) -> None:
            try:
                outcome[key] = httpx.post(server.url + "/edit", json={"prompt": prompt, "target_new": "carol dave",
                                                                     "id": edit_id}, timeout=60)
            except httpx.HTTPError as e:
                outcome[key] = e

        # killed while it trains (holding the write lock): the edit is nowhere, another replica writes
        doomed = threading.Thread(target=send, args=("x", slow, "what is the capital city of the country", "x"))
        doomed.start()
        time.sleep(1.5)  # slow holds the write lock and trains
        taker = threading.Thread(target=send, args=("y", servers[1], "numbers one two three four", "y"))
        taker.start()
        time.sleep(0.5)
        assert "y" not in outcome, "the second edit must wait for the writer's lock"
        kill9(slow)
        doomed.join(10)
        taker.join(30)
        assert isinstance(outcome["x"], httpx.HTTPError), "the killed writer acknowledged nothing"
        assert outcome["y"].status_code == 200, outcome["y"].text
        assert outcome["y"].json()["version"] == 2  # x took no version: it was never committed
        assert all(httpx.get(s.url + "/edits/x").status_code == 404 for s in servers[1:])

        # killed after its commit, before its answer: the edit is everywhere
        committed = threading.Thread(target=send, args=("z", late, "the quick brown fox jumps", "z"))
        committed.start()
        deadline = time.monotonic() + 30
        while httpx.get(servers[1].url + "/ready").json().get("version", 0) < 3:  # b applied it
            assert time.monotonic() < deadline and "z" not in outcome
            time.sleep(0.05)
        kill9(late)
        committed.join(10)
        assert isinstance(outcome["z"], httpx.HTTPError), "killed before it could answer"

        servers[0], servers[2] = start_all([replica(pg_url, "a"), replica(pg_url, "c")])
        found = assert_same(servers, 3)
        assert found["edits"] == ["before", "y", "z"]
        assert all(httpx.get(s.url + "/edits/x").status_code == 404 for s in servers)
        retry = edit(servers[0], "the quick brown fox jumps", "carol dave", "z")  # the client retries
        assert retry["edits"][0]["replayed"] is True and retry["version"] == 3

        # the database drops every connection (a restart, a failover): the replicas reconnect
        import psycopg

        from tests.support.pg_support import ADMIN_URL

        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            dbname = psycopg.conninfo.conninfo_to_dict(pg_url)["dbname"]
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        edit(servers[1], "the quick brown fox jumps over the lazy dog", "alice bob", "after")
        assert_same(servers, 4)
        deadline = time.monotonic() + 10
        while not all(httpx.get(s.url + "/ready").status_code == 200 for s in servers):
            assert time.monotonic() < deadline, [httpx.get(s.url + "/ready").json() for s in servers]
            time.sleep(0.2)
    finally:
        for s in servers:
            s.stop()
