"""Keys, limits, request ids, logs and metrics against a real server process on a tiny model,
started the way `memoir serve` starts one (tests/support/ops_server.py)."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.http.auth import PUBLIC_PATHS
from tests.support.server_utils import THREADS, Server, free_port

pytestmark = pytest.mark.timeout(180)

CLIENT, ALICE, BOB = "client-key-" + "c" * 16, "alice-key-" + "a" * 16, "bob-key-" + "b" * 16
AS_CLIENT = {"Authorization": f"Bearer {CLIENT}"}
AS_ALICE = {"Authorization": f"Bearer {ALICE}"}
AS_BOB = {"Authorization": f"Bearer {BOB}"}
PROMPT = "who is the chief executive of the company"


@pytest.fixture(scope="module")
def server():
    port = free_port()
    env = {
        "MEMOIR_PORT": str(port), "MEMOIR_THREADS": THREADS, "MEMOIR_LOG_LEVEL": "info",
        "MEMOIR_API_KEYS": f"app:{CLIENT}", "MEMOIR_ADMIN_KEYS": f"alice:{ALICE},bob:{BOB}",
        # limits, small enough to reach
        "MEMOIR_MAX_BODY_BYTES": "65536", "MEMOIR_MAX_PROMPT_TOKENS": "200", "MEMOIR_MAX_NEW_TOKENS": "64",
        "MEMOIR_MAX_WAITING": "4", "MEMOIR_EDIT_QUEUE_SIZE": "1",
        "MEMOIR_MAX_EDIT_PROMPT_TOKENS": "40", "MEMOIR_MAX_TARGET_TOKENS": "6",
    }
    s = Server(["-m", "tests.support.ops_server"], env, port).start(180)
    yield s
    s.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def log_lines(server: Server) -> list[dict]:
    lines = []
    for line in server.output(tail=2_000_000).splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def logged(server: Server, **fields) -> dict:
    """The last log line with these fields; waits a little (a request's line follows its answer)."""
    deadline = time.monotonic() + 10
    while True:
        found = [e for e in log_lines(server) if all(e.get(k) == v for k, v in fields.items())]
        if found or time.monotonic() > deadline:
            assert found, f"no log line with {fields}"
            return found[-1]
        time.sleep(0.1)


# -- every route: no key, a client key, an admin key ---------------------------------------------
# Requests that succeed on the tiny server; a route missing here (a new one) is still walked, with
# path parameters "x" and an empty JSON body, and must then only pass or refuse the key correctly.
EXAMPLES = {
    ("POST", "/edit"): {"json": {"prompt": PROMPT, "target_new": "jane roe", "id": "walk"}},
    ("GET", "/edits"): {},
    ("GET", "/edits/{edit_id}"): {"path": {"edit_id": "walk"}},
    ("DELETE", "/edits/{edit_id}"): {"path": {"edit_id": "walk"}},
    ("POST", "/generate"): {"json": {"prompt": "what is the capital", "max_new_tokens": 2}},
    ("POST", "/v1/completions"): {"json": {"prompt": "what is the capital", "max_tokens": 2}},
    ("POST", "/v1/chat/completions"): {"json": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}},
    ("GET", "/v1/models"): {},
    ("GET", "/v1/models/{model_id}"): {"path": {"model_id": "tiny"}},
    ("GET", "/health"): {},
    ("GET", "/ready"): {},
    ("GET", "/metrics"): {},
}
LAST = [("DELETE", "/edits/{edit_id}")]  # after the reads of the edit the walk made


def routes(client) -> list[tuple[str, str, str]]:
    """(method, path, level) for every route the running app documents; level from the security
    scheme its key dependency declares: admin_key, client_key, or none (then it must be public)."""
    found = []
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        for method, op in ops.items():
            schemes = {name for req in op.get("security", []) for name in req}
            level = "admin" if "admin_key" in schemes else "client" if "client_key" in schemes else "public"
            found.append((method.upper(), path, level))
    return sorted(found, key=lambda r: (r[:2] in LAST, r[1], r[0]))


def call(client, method, path, headers=None):
    example = EXAMPLES.get((method, path), {})
    params = example.get("path", {})
    url = re.sub(r"\{(\w+)(:\w+)?\}", lambda m: params.get(m.group(1), "x"), path)
    body = example.get("json", {} if method in ("POST", "PUT", "PATCH") else None)
    return client.request(method, url, json=body, headers=headers or {})


def test_every_route_answers_each_key_as_its_access_level_says(client):
    walked = routes(client)
    assert {(m, p) for m, p, _ in walked} >= set(EXAMPLES), "a route of the examples is gone"
    undecided = [(m, p) for m, p, level in walked if level == "public" and p not in PUBLIC_PATHS]
    assert not undecided, f"routes with no access decision (client_access, admin_access, PUBLIC_PATHS): {undecided}"
    bad = ["Basic " + ALICE, "Bearer", "Bearer " + "z" * 32, ALICE]
    for method, path, level in walked:
        where = f"{method} {path}"
        known = (method, path) in EXAMPLES
        if level == "public":
            for headers in ({}, AS_CLIENT, AS_ALICE):
                r = call(client, method, path, headers)
                assert r.status_code == 200, (where, r.text)
            continue
        for headers in [{}] + [{"Authorization": b} for b in bad]:
            r = call(client, method, path, headers)
            assert r.status_code == 401, (where, headers, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer" and r.json()["error"]["code"] == "invalid_api_key"
        r = call(client, method, path, AS_CLIENT)
        if level == "admin":
            assert r.status_code == 403, (where, r.text)
            assert "client key" in r.json()["error"]["message"]
        else:
            assert (r.status_code == 200) if known else r.status_code not in (401, 403), (where, r.text)
        r = call(client, method, path, AS_ALICE)
        assert (r.status_code == 200) if known else r.status_code not in (401, 403), (where, r.text)


def test_the_key_is_checked_before_the_body(client):
    r = client.post("/edit", json={"no": "such field"})
    assert r.status_code == 401
    r = client.post("/edit", json={"no": "such field"}, headers=AS_CLIENT)
    assert r.status_code == 403
    r = client.post("/v1/completions", json={"prompt": 5})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_the_author_is_the_name_of_the_key(client, server):
    r = client.post("/edit", headers=AS_BOB, json=[
        {"prompt": "numbers one two three", "target_new": "four", "id": "by-bob",
         "metadata": {"author": "someone else", "ticket": "OPS-1"}}])
    assert r.status_code == 200, r.text
    try:
        info = client.get("/edits/by-bob", headers=AS_ALICE).json()
        assert info["author"] == "bob" and info["metadata"] == {"author": "someone else", "ticket": "OPS-1"}
        # the body cannot name an author
        r = client.post("/edit", headers=AS_ALICE, json={"prompt": "x y", "target_new": "z", "author": "mallory"})
        assert r.status_code == 422 and "author" in r.json()["error"]["message"]
    finally:
        client.delete("/edits/by-bob", headers=AS_ALICE)
    assert logged(server, event="edit_applied", id="by-bob")["author"] == "bob"


# -- request ids and access logs -------------------------------------------------------------------
def test_request_ids_are_taken_or_made_and_logged(client, server):
    r = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 3}, headers={**AS_CLIENT,
                                                                                      "X-Request-Id": "ops-req-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "ops-req-1"
    made = client.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    odd = client.get("/health", headers={"X-Request-Id": b"no spaces \xe9"}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", odd)
    assert client.get("/nope", headers={"X-Request-Id": "ops-404"}).headers["x-request-id"] == "ops-404"

    line = logged(server, event="request", request_id="ops-req-1")
    assert line["method"] == "POST" and line["path"] == "/generate" and line["status"] == 200
    assert line["key"] == "app" and line["memory"] in ("on", "off") and isinstance(line["memory_version"], int)
    assert line["duration_ms"] > 0 and line["level"] == "info" and line["ts"].endswith("Z")
    assert CLIENT not in server.output(tail=2_000_000), "a key was written to the log"
    missing = logged(server, event="request", request_id="ops-404")
    assert missing["status"] == 404 and missing["route"] == "unmatched"


# -- limits ---------------------------------------------------------------------------------------
def error(r, status):
    assert r.status_code == status, r.text
    return r.json()["error"]["message"]


def test_body_and_token_limits_answer_clearly(client):
    assert "larger than 65536 bytes" in error(client.post("/generate", json={"prompt": "x" * 70_000},
                                                          headers=AS_CLIENT), 413)
    long = "paris london berlin rome " * 120
    assert "tokens; the limit is 200" in error(client.post("/generate", json={"prompt": long}, headers=AS_CLIENT), 400)
    assert "max_new_tokens is 65; the limit is 64" in error(
        client.post("/generate", json={"prompt": "x", "max_new_tokens": 65}, headers=AS_CLIENT), 400)
    assert "max_tokens is 65; the limit is 64" in error(
        client.post("/v1/completions", json={"prompt": "x", "max_tokens": 65}, headers=AS_CLIENT), 400)
    assert "target_new is" in error(client.post("/edit", json={"prompt": "x y", "target_new": "jane roe " * 5},
                                                headers=AS_ALICE), 400)
    assert "the limit is 40" in error(client.post("/edit", json={"prompt": long[:400], "target_new": "jane"},
                                                  headers=AS_ALICE), 400)


def test_full_generation_queue_answers_429_with_retry_after(server):
    """4 sequences may wait or run; 12 streamed requests at once overflow it."""
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AS_CLIENT) as c:
            return await asyncio.gather(*[c.post("/generate", json={"prompt": f"numbers {i} one two", "stream": True,
                                                                    "max_new_tokens": 64}) for i in range(12)])

    answers = asyncio.run(main())
    busy = [r for r in answers if r.status_code == 429]
    assert busy and all(r.status_code in (200, 429) for r in answers), [r.status_code for r in answers]
    assert int(busy[0].headers["retry-after"]) >= 1 and "queued or running" in busy[0].json()["error"]["message"]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.post("/v1/completions", json={"prompt": "x", "n": 5, "max_tokens": 2}, headers=AS_CLIENT)
    assert r.status_code == 400 and "the limit is 4" in r.json()["error"]["message"]


def test_full_edit_queue_answers_429_with_retry_after(server):
    async def main():
        async with httpx.AsyncClient(base_url=server.url, timeout=60, headers=AS_ALICE) as c:
            return await asyncio.gather(*[c.post("/edit", json={"prompt": f"numbers {w} seven eight", "target_new":
                                                                "alice"}) for w in ("one", "two", "three", "four")])

    answers = asyncio.run(main())
    done = [r for r in answers if r.status_code == 200]
    try:
        busy = [r for r in answers if r.status_code == 429]
        assert busy and done and len(busy) + len(done) == 4, [r.text for r in answers]
        assert int(busy[0].headers["retry-after"]) >= 1 and "edit queue is full" in busy[0].json()["error"]["message"]
    finally:
        with httpx.Client(base_url=server.url, timeout=60, headers=AS_ALICE) as c:
            for r in done:
                for e in r.json()["edits"]:
                    c.delete(f"/edits/{e['id']}")


# -- metrics ----------------------------------------------------------------------------------------
def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(m, name, **labels) -> float:
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_edits_and_generations(client):
    before = scrape(client)
    r = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe", "id": "metrics-1"}, headers=AS_ALICE)
    assert r.status_code == 200, r.text
    edited = scrape(client)
    answers = [client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 5}, headers=AS_CLIENT).json(),
               client.post("/v1/completions", json={"prompt": "what is the capital city", "max_tokens": 4},
                           headers=AS_CLIENT).json()]
    with client.stream("POST", "/generate", json={"prompt": "numbers one two", "max_new_tokens": 6, "stream": True},
                       headers=AS_CLIENT) as s:
        assert s.status_code == 200 and s.read().endswith(b"data: [DONE]\n\n")
    assert client.delete("/edits/metrics-1", headers=AS_ALICE).status_code == 200
    after = scrape(client)

    def delta(name, m=after, base=before, **labels):
        return value(m, name, **labels) - value(base, name, **labels)

    assert delta("http_requests_total", handler="/generate", method="POST", status="200") == 2
    assert delta("http_requests_total", handler="/edit", method="POST", status="200") == 1
    assert delta("http_request_duration_seconds_count", handler="/v1/completions", method="POST", status="200") == 1
    assert delta("memoir:edits_total", outcome="applied") == 1
    assert delta("memoir:edit_duration_seconds_count") == 1 and delta("memoir:edit_duration_seconds_sum") > 0
    assert delta("memoir:edit_steps_count") == 1
    assert delta("memoir:edit_rollbacks_total", outcome="removed") == 1
    assert delta("memoir:active_edits", m=edited) == 1 and delta("memoir:active_edits") == 0
    assert delta("memoir:memory_version", m=edited) == 1 and delta("memoir:memory_version") == 2
    # what the stored edit holds in RAM comes and goes with it; the planning figure is always there
    assert delta("memoir:edit_tensor_bytes", m=edited) > 0 and delta("memoir:edit_tensor_bytes") == 0
    assert value(after, "memoir:edit_ram_bytes_per_edit") > 0
    # glibc's own count: the loaded model alone is hundreds of MB handed out, whether by the arenas or mmap
    assert value(after, "memoir:host_heap_in_use_bytes") + value(after, "memoir:host_heap_mmapped_bytes") > 2**20
    assert value(after, "memoir:host_heap_free_bytes") >= 0
    usage = [a["usage"] for a in answers]
    assert delta("memoir:prompt_tokens_total") >= sum(u["prompt_tokens"] for u in usage) + 1
    assert delta("memoir:generation_tokens_total") == sum(u["completion_tokens"] for u in usage) + 6
    assert delta("memoir:time_to_first_token_seconds_count") == 3
    assert delta("memoir:e2e_request_latency_seconds_count") == 3
    assert delta("memoir:request_success_total", finished_reason="length") == 3
    # the edited prompt itself routes to its edit; the two others are decided one way or the other
    # (a client key sees that the memory was on, not which edit: edit ids are the admin key's)
    assert answers[0]["memory"]["on"] and answers[0]["memory"]["edit_id"] is None
    assert delta("memoir:routing_decisions_total", decision="on") >= 1
    assert delta("memoir:routing_decisions_total", decision="on") + delta(
        "memoir:routing_decisions_total", decision="off") == 3
    assert delta("memoir:routing_best_overlap_count") == 3 and delta("memoir:routing_best_overlap_sum") >= 1.0
    for gauge in ("memoir:num_requests_running", "memoir:num_requests_waiting", "memoir:edit_queue_requests",
                  "memoir:ready", "memoir:writer_failed", "process_resident_memory_bytes"):
        assert (gauge, ()) in after, gauge
    assert value(after, "memoir:ready") == 1 and value(after, "memoir:writer_failed") == 0
    assert value(after, "memoir:model_info", k="32", layer="3", model_name="tiny", tau="0.5") == 1
