"""The console's operator pages: bulk import and the audit history.

/console/import             upload a JSON Lines or CSV file (the POST /edits:import job machinery)
/console/import/{id}        its progress and report, refreshed while it runs
/console/history            the audit trail (edits, supersedes, rollbacks, imports), filterable
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse

from memoir_core.audit import KINDS, AuditQuery

from .. import deps
from ..audit import audit_of
from ..errors import KNOWN
from ..import_rows import parse
from .render import message, page
from .session import Session, current, post_form

router = APIRouter(prefix="/console", include_in_schema=False)
FORMATS = ("", "jsonl", "csv")


@router.get("/import")
async def import_form(request: Request, session: Session = Depends(current)):
    return page(request, "import.html", session=session, jobs=(await request.app.state.imports.reports())[::-1])


@router.post("/import")
async def import_file(request: Request, session: Session = Depends(current)):
    data = await post_form(request, session)
    body, fmt = data.get("body", ""), data.get("format", "")
    if not body.strip() or fmt not in FORMATS:
        return page(request, "import.html", status=422, session=session, jobs=[],
                    error="choose a JSON Lines or CSV file (or paste its rows)")
    try:
        engine = deps.engine(request)
        rows = parse(body.encode("utf-8"), fmt or None, None, deps.settings(request).max_import_rows)
    except KNOWN as error:
        status, text = message(error)
        return page(request, "import.html", status=status, session=session, jobs=[], error=text)
    job = request.app.state.imports.start(engine, rows, session.name)
    return RedirectResponse(f"/console/import/{job.id}", status_code=303)


@router.get("/import/{job_id}")
async def import_job(job_id: str, request: Request, session: Session = Depends(current)):
    report = await request.app.state.imports.report(job_id)
    if report is None:
        return page(request, "error.html", status=404, session=session, error=f"no import job with id {job_id!r}")
    return page(request, "import_job.html", session=session, job=report)


@router.get("/history")
async def history(request: Request, session: Session = Depends(current)):
    p = request.query_params
    query = AuditQuery(**{k: (p.get(k) or "").strip()[:200] for k in ("kind", "author", "q", "since", "until")})
    audit = audit_of(request.app)
    events = await asyncio.to_thread(audit.events, query, 500)
    authors = sorted({e.author for e in events if e.author} | ({query.author} if query.author else set()))
    return page(request, "history.html", session=session, events=events, f=query, kinds=KINDS, authors=authors,
                where=audit.where, problems=audit.problems,
                failures=getattr(request.app.state, "audit_failures", 0))
