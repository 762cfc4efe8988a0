"""Two replica processes (tiny model) behind one PostgreSQL, as behind a load balancer: an import
started on one is followed on the other (progress, report, the listing), an unknown job is 404
import_not_found on both, a console session opened on one works (and ends) on the other, and the
audit trail one replica writes is the other's too."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from tests.ops.test_replicas import replica
from tests.support.console_utils import ADMIN, AS_ADMIN, TINY_CONFIG
from tests.support.pg_support import pg_url  # noqa: F401
from tests.support.server_utils import start_all

pytestmark = pytest.mark.timeout(240)


def test_import_jobs_and_console_sessions_follow_the_client_across_replicas(pg_url):  # noqa: F811
    env = {"MEMOIR_ADMIN_KEYS": f"ops:{ADMIN}", "MEMOIR_TINY_CONFIG": TINY_CONFIG}
    a, b = start_all([replica(pg_url, "a", **env), replica(pg_url, "b", **env)])
    try:
        rows = "\n".join(json.dumps({"prompt": f"who is the head of unit {n}", "target_new": f"carol {n}",
                                     "id": f"unit-{n}"}) for n in range(1, 9)) + "\n{broken\n"
        r = httpx.post(a.url + "/edits:import", content=rows, timeout=30,
                       headers={**AS_ADMIN, "Content-Type": "application/x-ndjson"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        seen, deadline = [], time.monotonic() + 120
        while time.monotonic() < deadline:  # polled on the replica that does not run it
            job = httpx.get(f"{b.url}/edits:import/{job_id}", headers=AS_ADMIN, timeout=30)
            assert job.status_code == 200, job.text
            seen.append(job.json()["done"])
            if job.json()["status"] != "running":
                break
            time.sleep(0.2)
        report = job.json()
        assert report["status"] == "done" and report["applied_count"] == 8, report
        assert [e["line"] for e in report["errors"]] == [9] and report["author"] == "ops"
        assert seen == sorted(seen) and len(set(seen)) > 1, f"progress seen on the other replica: {seen}"
        assert job_id in [j["id"] for j in httpx.get(b.url + "/edits:import", headers=AS_ADMIN).json()["jobs"]]
        for s in (a, b):
            r = httpx.get(f"{s.url}/edits:import/nope", headers=AS_ADMIN)
            assert r.status_code == 404 and r.json()["error"]["code"] == "import_not_found"

        # the audit trail is shared: b lists what a applied
        trail = httpx.get(b.url + "/audit", params={"q": job_id}, headers=AS_ADMIN).json()
        assert "memoir_audit" in trail["where"] and len(trail["events"]) == 9  # 8 edits and the import

        # a console session opened on a is good on b, for pages and forms; signing out ends it on both
        with httpx.Client(timeout=60) as c:
            r = c.post(a.url + "/console/login", data={"key": ADMIN, "next": "/console"})
            assert r.status_code == 303 and c.cookies.get("memoir_console")
            page = c.get(b.url + "/console/history", params={"q": job_id})
            assert page.status_code == 200 and "8 of 9 rows applied" in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
            r = c.post(b.url + "/console/edits/unit-3/rollback", data={"csrf": csrf},
                       headers={"Origin": b.url})
            assert r.status_code == 303 and "rolled back unit-3" in httpx.URL(r.headers["location"]).params["msg"]
            token = c.cookies.get("memoir_console")
            assert c.post(a.url + "/console/logout", data={"csrf": csrf}, headers={"Origin": a.url}).status_code == 303
        r = httpx.get(b.url + "/console", cookies={"memoir_console": token})
        assert r.status_code == 303 and "/console/login" in r.headers["location"]
        rollback = httpx.get(a.url + "/audit", params={"kind": "rollback"}, headers=AS_ADMIN).json()["events"]
        assert [(e["edit_id"], e["author"], e["source"]) for e in rollback] == [("unit-3", "ops", "console")]
    finally:
        for s in (a, b):
            s.stop()
