"""Bulk import: POST /edits:import starts a job, GET /edits:import/{job} follows it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from app.service.engine import Engine
from app.service.import_jobs import Imports

from .. import deps
from ..auth import admin_access
from ..errors import ImportNotFoundError
from ..import_rows import parse

router = APIRouter(tags=["edits"])

FILE_BODY = {"content": {"application/x-ndjson": {"schema": {"type": "string"}},
                         "text/csv": {"schema": {"type": "string"}}},
             "required": True, "description": "JSON Lines or CSV (see docs/console.md)"}


class RowError(BaseModel):
    line: int
    error: str


class RowApplied(BaseModel):
    line: int
    id: str
    version: int
    replayed: bool


class ImportOut(BaseModel):
    id: str
    status: str = Field(description="running, done, failed, or lost (the replica running it stopped)")
    total: int = Field(description="rows in the file")
    done: int = Field(description="rows handled so far (applied or refused)")
    applied_count: int
    error_count: int
    progress: float
    created_at: float
    finished_at: float | None
    author: str | None
    reason: str | None = Field(description="why a failed job stopped")
    errors: list[RowError] = Field(description="rows refused, by line number")
    applied: list[RowApplied]


def imports(request: Request) -> Imports:
    return request.app.state.imports


@router.post("/edits:import", status_code=202, response_model=ImportOut, openapi_extra={"requestBody": FILE_BODY},
             summary="import edits from a JSON Lines or CSV file, as a job")
async def start_import(request: Request, format: str | None = Query(None, pattern="^(jsonl|csv)$"),
                       engine: Engine = Depends(deps.engine), jobs: Imports = Depends(imports),
                       settings=Depends(deps.settings), author: str | None = Depends(admin_access)):
    """Rows are checked at once (a bad row is reported by line number and skipped) and the good
    ones applied in order through the single writer; follow the job at the Location it names."""
    rows = parse(await request.body(), format, request.headers.get("content-type"), settings.max_import_rows)
    job = jobs.start(engine, rows, author)
    return JSONResponse(ImportOut(**job.report()).model_dump(), status_code=202,
                        headers={"Location": f"/edits:import/{job.id}"})


@router.get("/edits:import", summary="the import jobs this process knows (every replica's, on PostgreSQL)")
async def list_imports(jobs: Imports = Depends(imports), _: str | None = Depends(admin_access)) -> dict[str, Any]:
    reports = await jobs.reports()
    return {"jobs": [{k: r[k] for k in ("id", "status", "total", "done", "applied_count", "error_count",
                                        "created_at", "author")} for r in reports]}


@router.get("/edits:import/{job_id}", response_model=ImportOut, summary="progress and report of an import")
async def get_import(job_id: str, jobs: Imports = Depends(imports), _: str | None = Depends(admin_access)):
    report = await jobs.report(job_id)
    if report is None:
        raise ImportNotFoundError(f"no import job with id {job_id!r}")
    return ImportOut(**report)
