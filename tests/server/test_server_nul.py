"""NUL characters in an edit get the same 400-class answer on the directory store and on
PostgreSQL (whose text type cannot hold U+0000), and change nothing on either."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.support.pg_support import pg_url  # noqa: F401
from tests.support.server_utils import tiny

pytestmark = pytest.mark.timeout(240)

BODIES = [
    {"prompt": "who is the chief\u0000 executive", "target_new": "jane roe"},
    {"prompt": "who is the chief executive", "target_new": "jane\u0000roe"},
    {"prompt": "who is the chief executive", "target_new": "jane roe", "rephrase_prompts": ["who\u0000 runs it"]},
    {"prompt": "who is the chief executive", "target_new": "jane roe", "metadata": {"ticket": "T-1\u0000"}},
    {"prompt": "who is the chief executive", "target_new": "jane roe", "metadata": {"tic\u0000ket": "T-1"}},
]


def answers_of(url: str) -> list[tuple[int, str]]:
    out = []
    with httpx.Client(base_url=url, timeout=60) as c:
        before = c.get("/edits").json()
        for body in BODIES:
            r = c.post("/edit", json=body)
            out.append((r.status_code, r.json()["error"]["message"]))
        jsonl = "\n".join(json.dumps(b) for b in BODIES[:2])
        r = c.post("/edits:import", content=jsonl, headers={"content-type": "application/x-ndjson"})
        assert r.status_code == 202, r.text
        out.append((r.json()["error_count"], ""))
        assert c.get("/edits").json() == before
        r = c.post("/edit", json={"prompt": "who is the chief executive", "target_new": "jane roe", "id": "ok"})
        assert r.status_code == 200, r.text
    return out


def test_nul_characters_are_refused_alike_on_both_stores(tmp_path, pg_url):  # noqa: F811
    results = []
    for env in ({"MEMOIR_STATE_DIR": str(tmp_path / "state")},
                {"MEMOIR_STORE": "postgres", "MEMOIR_STATE_URL": pg_url, "MEMOIR_REPLICA_NAME": "r1"}):
        server = tiny(env).start(120)
        try:
            results.append(answers_of(server.url))
        finally:
            server.stop()
    directory, postgres = results
    assert directory == postgres
    assert all(status == 422 and "must not contain NUL" in message for status, message in directory[:-1])
    assert directory[-1] == (2, "")
