"""The memory's admin routes: apply edits, list them, roll one back."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.service.engine import Engine
from app.settings import Settings
from memoir_core.errors import InvalidRequestError

from .. import audit, deps
from ..auth import admin_access
from ..preview_protocol import PreviewOut
from ..protocol import EditBody, EditDetail, EditInfo, EditList, EditOut, EditsOut, RemovalOut

router = APIRouter(tags=["edits"])


@router.post("/edit", response_model=EditsOut | PreviewOut, summary="apply one edit or a list, or preview one")
async def post_edit(body: EditBody, request: Request, engine: Engine = Depends(deps.engine),
                    settings: Settings = Depends(deps.settings), author: str | None = Depends(admin_access)):
    """Each edit trains, is written to the store, and becomes visible (a new memory version) as
    soon as its own training ends; the response comes when the last one is done. Bad input in
    any edit of a list applies none of them. With `dry_run` true (one edit) the edit is trained
    on a scratch copy and previewed: nothing is applied."""
    items = body if isinstance(body, list) else [body]
    if not items:
        raise InvalidRequestError("the list of edits is empty")
    if isinstance(body, list) and any(e.dry_run for e in items):
        raise InvalidRequestError("dry_run previews one edit: send a single edit, not a list")
    if len(items) > settings.max_edits_per_request:
        raise InvalidRequestError(f"{len(items)} edits in one request; the limit is {settings.max_edits_per_request}")
    specs = [e.to_spec(author) for e in items]
    if not isinstance(body, list) and body.dry_run:
        return PreviewOut.of(await engine.preview(specs[0]), settings.max_blast_radius)
    applied, version = await engine.edit(specs)
    await audit.record_applied(request.app, applied, author, "api")
    return EditsOut(edits=[EditOut.of(a.record, a.replayed) for a in applied], version=version)


@router.get("/edits", response_model=EditList, summary="the edit registry, in the order edits were applied",
            dependencies=[Depends(deps.min_version)])
async def list_edits(offset: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000),
                     engine: Engine = Depends(deps.engine), _: str | None = Depends(admin_access)):
    records, count, version = await engine.edits(offset, limit)
    return EditList(edits=[EditInfo.of(r) for r in records], count=count, version=version)


@router.get("/edits/{edit_id}", response_model=EditDetail, summary="one edit, with the edits sharing its columns",
            dependencies=[Depends(deps.min_version)])
async def get_edit(edit_id: str, engine: Engine = Depends(deps.engine), _: str | None = Depends(admin_access)):
    record, shared = await engine.detail(edit_id)
    return EditDetail.of(record, shared_columns=shared)


@router.delete("/edits/{edit_id}", response_model=RemovalOut, summary="roll one edit back")
async def delete_edit(edit_id: str, request: Request, engine: Engine = Depends(deps.engine),
                      author: str | None = Depends(admin_access)):
    """Its mask leaves the bank and its delta leaves W_m exactly; the edits that shared columns
    with it are listed (their own deltas stay as they were). The audit trail keeps who rolled it
    back, when, and the greedy answer to its prompt before and after."""
    removal = await audit.roll_back(request, engine, edit_id, author, "api")
    return RemovalOut(id=removal.record.id, version=removal.version, shared_columns=removal.shared_columns)


@router.get("/state/digest", summary="sha256 of W_m and of the mask bank, the version and the edit ids",
            dependencies=[Depends(deps.min_version)])
async def state_digest(engine: Engine = Depends(deps.engine), _: str | None = Depends(admin_access)) -> dict:
    """Two replicas (or one server before and after a restart) with equal digests hold bit-identical
    memories."""
    return await engine.digest()
