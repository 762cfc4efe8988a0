"""Writing the audit trail (memoir_core/audit.py) from every route that changes the memory: the
JSON API, bulk imports and the console all go through these helpers, so no path leaves no trace.

The trail is kept beside the memory: DIR/audit.jsonl for a state directory, memoir_audit for
PostgreSQL (shared by the replicas), this process's memory for a RAM-only store. An event is
written after the change it records is acknowledged by the store; a trail that cannot be written
is logged loudly but does not undo or fail the change (it is already durable).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import FastAPI, Request

from app.service.engine import Engine
from app.service.engine_errors import NotReadyError
from app.service.writer import Applied, Removal
from memoir_core.audit import AuditEvent, AuditLog, MemoryAudit
from memoir_core.generate import SamplingParams
from memoir_core.state import MemoryStore

log = logging.getLogger(__name__)


def open_audit(store: MemoryStore, settings: Any) -> AuditLog:
    if store.root is not None:
        from memoir_core.store.audit_file import FileAudit

        return FileAudit(str(store.root))
    if store.shared and settings.state_url is not None:
        from memoir_core.store.postgres.audit import PgAudit

        return PgAudit(settings.state_url.get_secret_value(), store.where)
    return MemoryAudit()


def audit_of(app: FastAPI) -> AuditLog:
    """Opened once the store is (the trail lives where the memory does)."""
    audit = getattr(app.state, "audit", None)
    if audit is None:
        runtime = app.state.runtime
        if runtime.store is None:  # still opening: the trail's place is not known yet
            raise NotReadyError("the memory's store is not open yet; try again shortly")
        audit = app.state.audit = open_audit(runtime.store, runtime.settings)
    return audit


async def write(app: FastAPI, events: list[AuditEvent]) -> None:
    audit = audit_of(app)
    try:
        for event in events:
            await asyncio.to_thread(audit.append, event)
    except Exception as error:  # the change is durable already: say so loudly, do not undo it
        app.state.audit_failures = getattr(app.state, "audit_failures", 0) + 1
        log.error("the audit trail (%s) could not be written: %s: %s; events lost: %s", audit.where,
                  type(error).__name__, error, [e.to_dict() for e in events])


def applied_events(applied: list[Applied], author: str | None, source: str) -> list[AuditEvent]:
    return [AuditEvent(kind="supersede" if a.record.supersedes else "edit", edit_id=a.record.id, author=author,
                       version=a.record.version, prompt=a.record.prompt, target=a.record.target_new,
                       supersedes=a.record.supersedes, source=source)
            for a in applied if not a.replayed]


async def record_applied(app: FastAPI, applied: list[Applied], author: str | None, source: str) -> None:
    events = applied_events(applied, author, source)
    if events:
        await write(app, events)


async def _answer(engine: Engine, prompt: str, tokens: int) -> str | None:
    try:
        (out,) = await engine.call(lambda m: m.generate([prompt], SamplingParams(max_new_tokens=tokens)))
        return out.text
    except Exception as error:  # an answer is "where available": the rollback itself matters
        log.warning("no answer for the audit trail: %s: %s", type(error).__name__, error)
        return None


async def roll_back(request: Request, engine: Engine, edit_id: str, author: str | None, source: str) -> Removal:
    """Roll an edit back and record who did it, with the greedy answer to its prompt before and after."""
    tokens = request.app.state.runtime.settings.preview_max_new_tokens
    record = await engine.record(edit_id)
    before = await _answer(engine, record.prompt, tokens) if record is not None else None
    removal = await engine.remove(edit_id)
    after = await _answer(engine, removal.record.prompt, tokens)
    r = removal.record
    await write(request.app, [AuditEvent(kind="rollback", edit_id=r.id, author=author, version=removal.version,
                                         prompt=r.prompt, target=r.target_new, source=source,
                                         edit_author=r.author, answer_before=before, answer_after=after)])
    return removal


async def record_import(app: FastAPI, report: dict[str, Any]) -> None:
    detail = {k: report[k] for k in ("status", "total", "applied_count", "error_count", "reason")}
    await write(app, [AuditEvent(kind="import", author=report["author"], source=f"import {report['id']}",
                                 detail=detail)])
