"""The HTTP API against a real uvicorn process on a tiny random model: edits, registry,
rollback, generation, streaming, the 429 of a full edit queue. Bad input is in
test_server_errors.py; the OpenAI client in test_server_openai.py."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

pytestmark = pytest.mark.timeout(180)

PROMPT = "who is the chief executive of the company"


@pytest.fixture
def client(tiny_server):
    with httpx.Client(base_url=tiny_server.url, timeout=60) as c:
        yield c


def generate(client, prompt, **kw):
    r = client.post("/generate", json={"prompt": prompt, "max_new_tokens": 8, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_ready(client):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready" and ready.json()["model"] == "tiny"
    # what edits train in is the engine's own choice, reported as the training copy's dtype
    assert ready.json()["train_dtype"] in ("float32", "bfloat16")


def test_edit_registry_retry_conflict_and_rollback(client):
    before = generate(client, PROMPT)
    assert before["usage"]["completion_tokens"] == 8 and before["finish_reason"] == "length"
    r = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe", "id": "api-ceo",
                                   "metadata": {"ticket": "T-1", "reason": "test"}})
    assert r.status_code == 200, r.text
    body = r.json()
    (edit,) = body["edits"]
    assert edit["id"] == "api-ceo" and edit["version"] == body["version"] and not edit["replayed"]
    assert edit["steps"] >= 1 and edit["seconds"] > 0 and edit["supersedes"] is None
    version = body["version"]
    try:
        after = generate(client, PROMPT)
        assert after["memory"]["on"] and after["memory"]["edit_id"] == "api-ceo"
        assert after["memory"]["overlap"] == 1.0 and after["memory"]["version"] == version
        assert after["text"].lstrip().startswith("jane roe"), after

        listed = client.get("/edits").json()
        assert listed["version"] == version and listed["count"] == len(listed["edits"])
        entry = next(e for e in listed["edits"] if e["id"] == "api-ceo")
        assert entry["metadata"] == {"ticket": "T-1", "reason": "test"} and entry["target_new"] == "jane roe"
        detail = client.get("/edits/api-ceo").json()
        assert detail["prompt"] == PROMPT and isinstance(detail["shared_columns"], dict)

        # An idempotent retry returns the stored edit; the same id with other content is a conflict.
        again = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe", "id": "api-ceo"}).json()
        assert again["edits"][0]["replayed"] and again["version"] == version
        conflict = client.post("/edit", json={"prompt": PROMPT, "target_new": "john doe", "id": "api-ceo"})
        assert conflict.status_code == 409 and "api-ceo" in conflict.json()["error"]["message"]
        assert client.get("/ready").json()["version"] == version
    finally:
        removed = client.delete("/edits/api-ceo")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"id": "api-ceo", "removed": True, "version": version + 1, "shared_columns": {}}
    restored = generate(client, PROMPT)
    assert restored["text"] == before["text"] and not restored["memory"]["on"]
    assert client.get("/edits/api-ceo").status_code == 404
    assert client.delete("/edits/api-ceo").status_code == 404


def test_list_of_edits_applied_in_order_and_superseding(client):
    r = client.post("/edit", json=[
        {"prompt": "what is the capital city of the country", "target_new": "paris", "id": "cap-1"},
        {"prompt": "what is the capital city of the country", "target_new": "lisbon", "id": "cap-2"},
    ])
    assert r.status_code == 200, r.text
    first, second = r.json()["edits"]
    try:
        assert second["version"] == first["version"] + 1 == r.json()["version"]
        assert second["supersedes"] == "cap-1"  # the same question again replaces the old answer
        ids = [e["id"] for e in client.get("/edits").json()["edits"]]
        assert "cap-2" in ids and "cap-1" not in ids
        out = generate(client, "what is the capital city of the country")
        assert out["memory"]["edit_id"] == "cap-2" and out["text"].lstrip().startswith("lisbon"), out
    finally:
        client.delete("/edits/cap-2")


def test_generate_stream_matches_plain_answer(client):
    plain = generate(client, "paris london berlin", max_new_tokens=10)
    events = []
    with client.stream("POST", "/generate", json={"prompt": "paris london berlin", "max_new_tokens": 10,
                                                  "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    data = [json.loads(e) for e in events[:-1]]
    assert "".join(d["text"] for d in data) == plain["text"]
    assert data[-1]["finish_reason"] == plain["finish_reason"] and data[-1]["usage"] == plain["usage"]
    assert data[0]["memory"] == plain["memory"]


def test_sampling_is_reproducible_with_a_seed(client):
    a = generate(client, "numbers one two", temperature=1.0, top_p=0.9, seed=7)
    b = generate(client, "numbers one two", temperature=1.0, top_p=0.9, seed=7)
    assert a["text"] == b["text"]


def test_stop_strings_cut_the_text(client):
    full = generate(client, "jane roe john doe", max_new_tokens=12)["text"]
    if len(full) < 4:
        pytest.skip("the tiny model wrote too little to cut")
    stop = full[2:4]
    cut = generate(client, "jane roe john doe", max_new_tokens=12, stop=[stop])
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.find(stop)]


def test_full_edit_queue_answers_429_with_retry_after(tiny_server):
    """The tiny server's queue holds 2 edit requests (training or waiting); more get a 429."""
    prompts = [f"numbers {w} seven eight nine ten" for w in ("one", "two", "three", "four", "five", "six")]

    async def main():
        async with httpx.AsyncClient(base_url=tiny_server.url, timeout=60) as c:
            return await asyncio.gather(*[c.post("/edit", json={"prompt": p, "target_new": "alice"}) for p in prompts])

    answers = asyncio.run(main())
    busy = [r for r in answers if r.status_code == 429]
    done = [r for r in answers if r.status_code == 200]
    try:
        assert busy and done and len(busy) + len(done) == len(prompts), [r.text for r in answers]
        assert int(busy[0].headers["retry-after"]) >= 1 and "queue" in busy[0].json()["error"]["message"]
    finally:
        with httpx.Client(base_url=tiny_server.url, timeout=60) as c:
            for r in done:
                for e in r.json()["edits"]:
                    c.delete(f"/edits/{e['id']}")
