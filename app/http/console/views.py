"""The web console's pages, server-rendered, thin over the engine (as the JSON routes are).

/console                    the edit list, with search and filters
/console/edits/{id}         one edit: prompts, target, stats, edits sharing its columns, rollback
/console/new                preview (dry run) and commit an edit
/console/try                a prompt with and without the memory, and which edit fired
/console/login, /logout     sign in with the admin key (session.py)
/console/import, /history   bulk import and the audit trail (operations.py)
"""

from __future__ import annotations

import asyncio
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from app.service.writer import EditBatchError, EditSpec
from memoir_core.errors import EditNotFoundError
from memoir_core.preview import try_prompt

from .. import audit, deps
from ..auth import keys_of
from ..errors import KNOWN as SERVICE_KNOWN
from ..preview_protocol import PreviewOut, TryOut
from ..protocol import EditIn
from .filters import Filters, select
from .render import STATIC, form, message, page, static
from .session import COOKIE, TTL, LoginRequired, Session, Sessions, current, post_form, sessions_of

router = APIRouter(prefix="/console", include_in_schema=False)
MAX_TRY_CHARS = 2000
KNOWN = (*SERVICE_KNOWN, EditBatchError)


def install(app: FastAPI) -> None:
    from . import operations

    app.state.console_sessions = Sessions(getattr(app.state, "shared", None))

    async def to_login(request: Request, exc: LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/console/login?next={quote(target)}", status_code=303)

    app.add_exception_handler(LoginRequired, to_login)
    app.include_router(router)
    app.include_router(operations.router)


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


# -- sign in ------------------------------------------------------------------------------------
@router.get("/login")
async def login_form(request: Request):
    nxt = request.query_params.get("next", "")
    if not keys_of(request).admin:  # no admin key configured: nothing to ask for
        return await _signed_in(request, "", nxt)
    return page(request, "login.html", next=nxt)


@router.post("/login")
async def login(request: Request):
    data = await form(request)
    return await _signed_in(request, data.get("key", ""), data.get("next", ""))


async def _signed_in(request: Request, key: str, nxt: str) -> Response:
    session = await asyncio.to_thread(sessions_of(request).sign_in, keys_of(request), key)
    if session is None:
        return page(request, "login.html", status=401, error="that is not an admin key", next=nxt)
    response = _redirect(nxt if nxt.startswith("/console") else "/console")
    response.set_cookie(COOKIE, session.token, max_age=int(TTL), path="/console", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, session: Session = Depends(current)):
    await post_form(request, session)
    await asyncio.to_thread(sessions_of(request).sign_out, session.token)
    response = _redirect("/console/login")
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("/static/{name}")
async def static_file(name: str):
    if name not in STATIC:
        return Response("not found", status_code=404)
    return static(name)


# -- the edit list and one edit -----------------------------------------------------------------
@router.get("")
async def edit_list(request: Request, session: Session = Depends(current)):
    engine = deps.engine(request)
    records, _, version = await engine.edits()
    filters = Filters.of(request.query_params)
    shown, matched = select(records, filters)
    authors = sorted({r.author for r in records if r.author})
    return page(request, "list.html", session=session, edits=shown, matched=matched, total=len(records),
                version=version, f=filters, authors=authors)


@router.get("/edits/{edit_id}")
async def edit_detail(edit_id: str, request: Request, session: Session = Depends(current)):
    engine = deps.engine(request)
    try:
        record, shared = await engine.detail(edit_id)
    except EditNotFoundError as error:
        return page(request, "error.html", status=404, session=session, error=str(error))
    return page(request, "detail.html", session=session, e=record, shared=sorted(shared.items(), key=lambda kv: -kv[1]),
                k=engine.memoir.config.k)


@router.post("/edits/{edit_id}/rollback")
async def rollback(edit_id: str, request: Request, session: Session = Depends(current)):
    await post_form(request, session)
    try:
        removal = await audit.roll_back(request, deps.engine(request), edit_id, session.name, "console")
    except KNOWN as error:
        status, text = message(error)
        return page(request, "error.html", status=status, session=session, error=text)
    return _redirect(f"/console?msg={quote(f'rolled back {removal.record.id}; memory version {removal.version}')}")


# -- preview and commit -------------------------------------------------------------------------
def _spec(data: dict[str, str], author: str | None) -> EditSpec:
    lines = [p.strip() for p in data.get("paraphrases", "").splitlines() if p.strip()]
    probes = [p.strip() for p in data.get("probes", "").splitlines() if p.strip()]
    metadata = {k: data[k].strip() for k in ("ticket", "reason") if data.get(k, "").strip()}
    # A form is checked by the engine as it is (an empty prompt gets the form's own message):
    # the model is built without pydantic's validation, then converted as the API's edits are.
    edit = EditIn.model_construct(prompt=data.get("prompt", "").strip(), target_new=data.get("target_new", "").strip(),
                                  rephrase_prompts=lines, subject=data.get("subject", "").strip() or None, id=None,
                                  metadata=metadata, probe_prompts=probes, dry_run=False)
    return edit.to_spec(author)


@router.get("/new")
async def new_form(request: Request, session: Session = Depends(current)):
    values = {k: request.query_params.get(k, "") for k in ("prompt", "target_new")}
    return page(request, "new.html", session=session, v=values)


@router.post("/new")
async def new_edit(request: Request, session: Session = Depends(current)):
    data = await post_form(request, session)
    spec = _spec(data, session.name)
    engine, settings = deps.engine(request), deps.settings(request)
    if not spec.prompt or not spec.target_new:
        return page(request, "new.html", status=422, session=session, v=data, error="prompt and target are needed")
    try:
        if data.get("action") == "commit":
            applied, _ = await engine.edit([spec])
            await audit.record_applied(request.app, applied, session.name, "console")
            edit_id = applied[0].record.id
            return _redirect(f"/console/edits/{quote(edit_id)}?msg={quote(f'committed {edit_id}')}")
        preview = PreviewOut.of(await engine.preview(spec), settings.max_blast_radius)
    except KNOWN as error:
        status, text = message(error)
        return page(request, "new.html", status=status, session=session, v=data, error=text)
    return page(request, "new.html", session=session, v=data, preview=preview)


# -- try a prompt -------------------------------------------------------------------------------
@router.get("/try")
async def try_page(request: Request, session: Session = Depends(current)):
    prompt = (request.query_params.get("prompt") or "")[:MAX_TRY_CHARS]
    result, error = None, None
    if prompt.strip():
        tokens = min(24, deps.settings(request).max_new_tokens)
        try:
            result = TryOut.of(await deps.engine(request).call(lambda m: try_prompt(m, prompt, tokens)))
        except KNOWN as e:
            error = message(e)[1]
    return page(request, "try.html", session=session, prompt=prompt, result=result, error=error)
