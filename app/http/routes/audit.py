"""GET /audit: the audit trail (who edited, superseded, rolled back or imported what, and when)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Query, Request

from ..audit import audit_of
from ..auth import admin_access

router = APIRouter(tags=["edits"])


@router.get("/audit", summary="the audit trail, newest first, filterable")
async def audit_trail(request: Request, kind: str = Query("", pattern="^(|edit|supersede|rollback|import)$"),
                      author: str = Query("", max_length=200), q: str = Query("", max_length=200),
                      since: str = Query("", pattern=r"^(|\d{4}-\d{2}-\d{2})$"),
                      until: str = Query("", pattern=r"^(|\d{4}-\d{2}-\d{2})$"),
                      limit: int = Query(100, ge=1, le=1000), _: str | None = Depends(admin_access)) -> dict[str, Any]:
    """Kept beside the memory (DIR/audit.jsonl, or the memoir_audit table shared by the replicas);
    `problems` lists damaged entries found while reading it (never dropped silently)."""
    from memoir_core.audit import AuditQuery

    audit = audit_of(request.app)
    events = await asyncio.to_thread(audit.events, AuditQuery(kind, author, q, since, until), limit)
    return {"events": [e.to_dict() for e in events], "where": audit.where, "problems": list(audit.problems)}
