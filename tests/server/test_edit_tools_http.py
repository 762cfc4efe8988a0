"""Edit preview (dry run), the blast-radius limit and bulk import, against real server processes
on a tiny random model."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from memoir_core.memoir import background_texts
from tests.support.console_utils import AS_ADMIN, console

pytestmark = pytest.mark.timeout(180)

PROMPT = "who is the chief executive of the company"


@pytest.fixture(scope="module")
def fresh_server():
    # Its own server: on the session's shared one, edits other modules left behind share columns
    # with this module's edit, and what a tiny random model learns in a few steps then varies.
    server = console().start(120)
    yield server
    server.stop()


@pytest.fixture
def client(fresh_server):
    with httpx.Client(base_url=fresh_server.url, timeout=60, headers=AS_ADMIN) as c:
        yield c


def state(client):
    listed = client.get("/edits", params={"limit": 1000}).json()
    return listed["version"], listed["edits"]


def test_dry_run_changes_nothing(client):
    before = state(client)
    answer = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 16}).json()
    r = client.post("/edit", json={"prompt": PROMPT, "target_new": "jane roe", "dry_run": True,
                                   "rephrase_prompts": ["who is the chief executive"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["version"] == before[0] and body["steps"] >= 1
    assert [a["kind"] for a in body["answers"]] == ["prompt", "paraphrase"]
    assert body["answers"][0]["fired"] and body["answers"][0]["after"].lstrip().startswith("jane")
    assert body["answers"][0]["before"] == answer["text"]
    blast = body["blast_radius"]
    assert blast["total"] == len(background_texts()) and blast["limit"] is None and not blast["over_limit"]
    assert state(client) == before  # memory version and registry identical
    again = client.post("/generate", json={"prompt": PROMPT, "max_new_tokens": 16}).json()
    assert again["text"] == answer["text"] and again["memory"] == answer["memory"]
    r = client.post("/edit", json=[{"prompt": PROMPT, "target_new": "x", "dry_run": True}])
    assert r.status_code == 400 and "single edit" in r.json()["error"]["message"]


def test_blast_radius_over_the_limit_is_refused():
    server = console({"MEMOIR_MAX_BLAST_RADIUS": "0"}).start(120)
    try:
        with httpx.Client(base_url=server.url, timeout=60, headers=AS_ADMIN) as c:
            caught = background_texts()[3]  # an edit of a background text catches that text at least
            preview = c.post("/edit", json={"prompt": caught, "target_new": "Saturn", "dry_run": True}).json()
            assert preview["blast_radius"]["count"] >= 1 and preview["blast_radius"]["over_limit"]
            assert any(p["text"] == caught for p in preview["blast_radius"]["probes"])
            r = c.post("/edit", json={"prompt": caught, "target_new": "Saturn"})
            assert r.status_code == 422, r.text
            error = r.json()["error"]
            assert error["code"] == "edit_rejected" and "MEMOIR_MAX_BLAST_RADIUS=0" in error["message"]
            assert c.get("/edits").json()["count"] == 0
    finally:
        server.stop()


def import_file() -> tuple[str, set[int]]:
    lines, bad = [], {7, 23, 41}
    for n in range(1, 51):
        if n == 7:
            lines.append('{"prompt": "broken json", ')
        elif n == 23:
            lines.append(json.dumps({"prompt": f"who leads team {n}"}))  # no target_new
        elif n == 41:
            lines.append(json.dumps({"prompt": "   ", "target_new": "x"}))  # blank prompt
        else:
            lines.append(json.dumps({"prompt": f"who is the chief of team {n}", "target_new": f"alice {n % 7}",
                                     "paraphrases": [f"team {n} is led by"], "id": f"imp-{n}",
                                     "metadata": {"ticket": f"T-{n}"}}))
    return "\n".join(lines) + "\n", bad


def test_import_reports_bad_rows_by_line_and_applies_the_rest(client):
    text, bad = import_file()
    r = client.post("/edits:import", content=text, headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 50 and r.headers["location"] == f"/edits:import/{job['id']}"
    deadline = time.monotonic() + 120
    while job["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.3)
        job = client.get(f"/edits:import/{job['id']}").json()
    assert job["status"] == "done", job
    assert {e["line"] for e in job["errors"]} == bad
    assert job["applied_count"] == 47 and job["done"] == 50 and job["progress"] == 1.0
    ids = {e["id"] for e in client.get("/edits", params={"limit": 1000}).json()["edits"]}
    assert {f"imp-{n}" for n in range(1, 51) if n not in bad} <= ids
    detail = client.get("/edits/imp-2").json()
    assert detail["author"] == "ops" and detail["rephrase_prompts"] == ["team 2 is led by"]
    assert detail["metadata"] == {"ticket": "T-2"}
    # CSV, with a bad row on line 3; no key: refused
    csv = "prompt,target_new,paraphrases,ticket\nwho runs shop 1,bob,shop 1 is run by,T-9\n,nobody,,\n"
    r = client.post("/edits:import?format=csv", content=csv)
    assert r.status_code == 202
    assert [e["line"] for e in r.json()["errors"]] == [3]
    assert httpx.post(client.base_url.join("/edits:import"), content=csv).status_code == 401
    r = client.get("/edits:import/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "import_not_found"
    # the audit trail: each applied row under the import's id, then the import itself
    trail = client.get("/audit", params={"q": f"import {job['id']}", "limit": 1000}).json()["events"]
    assert trail[0]["kind"] == "import" and trail[0]["author"] == "ops"
    assert trail[0]["detail"] == {"status": "done", "total": 50, "applied_count": 47, "error_count": 3,
                                  "reason": None}
    assert sorted(e["edit_id"] for e in trail[1:]) == sorted(f"imp-{n}" for n in range(1, 51) if n not in bad)
    # a rollback: who, when, and the answer to the prompt before and after
    r = client.delete("/edits/imp-2")
    assert r.status_code == 200, r.text
    (rollback,) = client.get("/audit", params={"kind": "rollback"}).json()["events"]
    assert (rollback["edit_id"], rollback["author"], rollback["edit_author"]) == ("imp-2", "ops", "ops")
    assert rollback["version"] == r.json()["version"] and rollback["prompt"] == "who is the chief of team 2"
    assert isinstance(rollback["answer_before"], str) and isinstance(rollback["answer_after"], str)
    assert client.get("/audit", params={"kind": "nonsense"}).status_code == 422
