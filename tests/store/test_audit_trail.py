"""The audit trail where the memory lives (memoir_core/audit.py): a self-checking JSON Lines file
in the state directory and a table in real PostgreSQL keep events across a reopen, filter them,
and report a damaged line instead of dropping it; the service's shared table (import jobs,
console sessions) lets a second process find what the first wrote."""

from __future__ import annotations

from pydantic import SecretStr

from app.http.auth import Keys
from app.http.console.session import Sessions
from app.service.import_jobs import Imports
from app.service.shared_state import SharedState
from app.settings import Settings
from memoir_core.audit import AuditEvent, AuditQuery
from memoir_core.store.audit_file import FileAudit
from tests.support.pg_support import pg_url  # noqa: F401

EVENTS = [AuditEvent("edit", "e1", "alice", at=1_767_000_000, version=1, prompt="the CEO of Acme is",
                     target="Jane Roe", source="api"),
          AuditEvent("supersede", "e2", "bob", at=1_767_100_000, version=2, prompt="p\u0000nul", target="t",
                     supersedes="e1", source="import 1a2b"),
          AuditEvent("rollback", "e2", "carol", at=1_767_200_000, version=3, prompt="p", target="t",
                     edit_author="bob", answer_before="t", answer_after="Paris", source="console"),
          AuditEvent("import", None, "bob", at=1_767_300_000, source="import 1a2b",
                     detail={"status": "done", "total": 3, "applied_count": 2, "error_count": 1, "reason": None})]


def check_trail(make) -> None:
    audit = make()
    for e in EVENTS:
        audit.append(e)
    audit.close()
    reopened = make()  # what a restarted server reads
    assert [e.to_dict() for e in reopened.events()] == [e.to_dict() for e in reversed(EVENTS)]
    rollback = reopened.events(AuditQuery(kind="rollback"))[0]
    assert (rollback.author, rollback.edit_author, rollback.answer_before, rollback.answer_after) == \
        ("carol", "bob", "t", "Paris")
    assert [e.kind for e in reopened.events(AuditQuery(author="bob"))] == ["import", "supersede"]
    assert [e.kind for e in reopened.events(AuditQuery(q="1A2B"))] == ["import", "supersede"]
    assert [e.kind for e in reopened.events(AuditQuery(since="2026-01-01", until="2025-12-31"))] == []
    assert reopened.events(AuditQuery(q="nul"))[0].prompt == "p\u0000nul"
    reopened.close()


def test_file_trail_survives_a_reopen_and_reports_damage(tmp_path):
    check_trail(lambda: FileAudit(str(tmp_path)))
    path = tmp_path / "audit.jsonl"
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b"bob", b"eve")  # a changed byte: the checksum no longer matches
    path.write_bytes(b"\n".join(lines) + b'{"crc": 1, "ev')  # and a last line cut short
    audit = FileAudit(str(tmp_path))
    assert [e.kind for e in audit.events()] == ["import", "rollback", "edit"]
    assert len(audit.problems) == 2 and "line 2: damaged" in audit.problems[0] and "torn" in audit.problems[1]
    audit.append(AuditEvent("edit", "e9", "dave"))  # the torn fragment stays, on a line of its own
    assert audit.events()[0].edit_id == "e9" and len(audit.problems) == 2
    assert b'{"crc": 1, "ev\n' in path.read_bytes()


def test_postgres_trail_survives_a_reopen(pg_url):  # noqa: F811
    from memoir_core.store.postgres.audit import PgAudit

    check_trail(lambda: PgAudit(pg_url))


def test_shared_jobs_and_sessions_across_two_processes(pg_url):  # noqa: F811
    one, two = SharedState(pg_url), SharedState(pg_url)
    one.put("import", "j1", {"id": "j1", "done": 3}, ttl=60)
    one.put("import", "old", {"id": "old"}, ttl=-1)  # expired: nobody sees it
    assert two.get("import", "j1") == {"id": "j1", "done": 3} and two.get("import", "old") is None
    assert [r["id"] for r in two.all("import")] == ["j1"]
    keys = Keys.from_settings(Settings(admin_keys=SecretStr("ops:" + "k" * 24)))
    a, b = Sessions(one), Sessions(two)
    session = a.sign_in(keys, "k" * 24)
    found = b.get(session.token)  # a page that lands on the other replica
    assert found is not None and (found.name, found.csrf) == ("ops", session.csrf)
    a.sign_out(session.token)
    assert b.get("nope") is None
    assert b.get(session.token) is None  # signed out on one replica: out on every one
    one.close()
    two.close()


def test_a_job_whose_replica_went_silent_is_reported_lost(pg_url):  # noqa: F811
    import asyncio
    import time

    shared = SharedState(pg_url)
    base = {"status": "running", "total": 4, "done": 1, "created_at": time.time(), "author": None}
    shared.put("import", "quiet", {**base, "id": "quiet", "saved_at": time.time() - 61}, ttl=60)
    shared.put("import", "busy", {**base, "id": "busy", "saved_at": time.time()}, ttl=60)
    imports = Imports(shared)
    lost = asyncio.run(imports.report("quiet"))
    assert lost["status"] == "lost" and "import them again" in lost["reason"] and "saved_at" not in lost
    assert asyncio.run(imports.report("busy"))["status"] == "running"
    assert {r["id"]: r["status"] for r in asyncio.run(imports.reports())} == {"quiet": "lost", "busy": "running"}
    shared.close()
