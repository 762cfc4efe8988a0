"""The operator's side over HTTP on a real server process with a state directory and no admin
key: the console opens without asking for a key, and the audit trail (DIR/audit.jsonl) keeps an
edit, a supersede and a rollback with its answers through a kill -9 and a restart."""

from __future__ import annotations

import httpx
import pytest

from tests.support.console_utils import TINY_CONFIG
from tests.support.server_utils import Server, tiny

pytestmark = pytest.mark.timeout(180)


def start(state_dir) -> Server:
    return tiny({"MEMOIR_STATE_DIR": str(state_dir), "MEMOIR_TINY_CONFIG": TINY_CONFIG}).start(120)


def test_no_key_console_and_a_durable_trail(tmp_path):
    server = start(tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            # no admin key configured: the sign-in page asks for nothing and opens a session
            r = c.get("/console", follow_redirects=True)
            assert r.status_code == 200 and str(r.url).endswith("/console") and 'id="edits"' in r.text
            assert 'name="key"' not in r.text and c.cookies.get("memoir_console")
            assert c.get("/console/history").status_code == 200
            body = {"prompt": "who is the head of the lab", "target_new": "dana", "id": "lab"}
            assert c.post("/edit", json=body).status_code == 200
            assert c.post("/edit", json={**body, "target_new": "erin", "id": "lab2"}).status_code == 200
            assert c.delete("/edits/lab2").status_code == 200
        server.proc.kill()  # kill -9: what was acknowledged must still be there
        server.proc.wait()
    finally:
        server.stop()
    assert (tmp_path / "audit.jsonl").exists()
    server = start(tmp_path)
    try:
        r = httpx.get(server.url + "/audit", timeout=30)
        trail = r.json()
        assert trail["where"].endswith("audit.jsonl") and trail["problems"] == []
        kinds = [(e["kind"], e["edit_id"], e.get("supersedes")) for e in trail["events"]]
        assert kinds == [("rollback", "lab2", None), ("supersede", "lab2", "lab"), ("edit", "lab", None)]
        rollback = trail["events"][0]
        assert rollback["answer_before"] is not None and rollback["answer_after"] is not None
        page = httpx.get(server.url + "/console/history?kind=rollback", follow_redirects=True, timeout=30).text
        assert "lab2" in page and "answer before" in page
    finally:
        server.stop()
