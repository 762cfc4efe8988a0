"""Liveness and readiness (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from app.service.runtime import Runtime

from .. import deps
from ..protocol import Health, Ready

router = APIRouter(tags=["health"])


_RESTART = ("failed: the process answers, but only a restart brings edits back (a write failed for a reason "
            "that does not pass, or the engine stopped); restart_helps says so")


@router.get("/health", response_model=Health, response_model_exclude_none=True,
            responses={503: {"model": Health, "description": _RESTART}},
            summary="liveness: the process answers, and whether a restart would help")
async def health(runtime: Runtime = Depends(deps.runtime)):
    """200 while the process is of use as it is, edits paused by a passing fault included (they
    resume by themselves: `writer` "paused", `restart_helps` false); 503 when only a restart can
    bring edits back, so a liveness probe restarts it. A start that fails exits the process."""
    engine = runtime.engine
    if engine is None or runtime._stopping:
        return Health(status="ok")
    failed = engine.writer.failed or runtime.store.failure
    if not engine.alive:
        failed = failed or runtime.error or "the engine thread stopped"
    elif failed and runtime.store.transient and not engine.writer.failed:
        return Health(status="ok", writer="paused", restart_helps=False, error=failed)
    if failed:
        body = Health(status="failed", writer="failed", restart_helps=True, error=failed)
        return JSONResponse(body.model_dump(exclude_none=True), status_code=503)
    return Health(status="ok")


_NOT_READY = ("loading, failed, or degraded (the memory store failed: edits are stopped until a restart, "
              "generation goes on)")


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready, "description": _NOT_READY}},
            summary="readiness: the model and the memory are loaded")
async def ready(runtime: Runtime = Depends(deps.runtime)):
    engine = runtime.engine
    if runtime.status != "ready" or engine is None or not engine.alive:
        status = runtime.status if runtime.status != "ready" else "stopped"
        body = Ready(status=status, model=runtime.model_name, error=runtime.error)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "5"})
    memoir = engine.memoir  # two ints read off the engine thread: a momentary value is fine here
    follower = runtime.follower
    if follower is not None and follower.status != "ok" and \
            (follower.status != "cut_off" or follower.cut_for() > runtime.settings.cut_off_grace):
        # catching up with the shared log, or cut off from it for longer than the grace
        body = Ready(status=follower.status, model=runtime.model_name, version=memoir.version, edits=len(memoir.edits),
                     error=follower.error or f"catching up with the edit log: version {memoir.version} of "
                     f"{follower.head}")
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    failed = engine.writer.failed or runtime.store.failure
    note = None
    if failed and runtime.store.transient and not engine.writer.failed:
        note = f"a passing fault paused edits; they resume by themselves once the store checks sound again: {failed}"
    elif failed:
        note = f"the memory store failed, edits are stopped until a restart: {failed}"
    elif follower is not None and follower.status == "cut_off":
        note = f"cut off from the edit log for {follower.cut_for():.0f} s ({follower.error}); serving version " \
               f"{memoir.version} meanwhile"
    body = Ready(status="degraded" if failed else "ready", model=runtime.model_name,
                 engine=runtime.settings.engine, train_dtype=memoir.train_dtype, version=memoir.version, edits=len(memoir.edits),
                 writer=failed or "ok", error=note)
    if failed:  # generation goes on, but an operator must act (disk space, hardware) and restart
        return JSONResponse(body.model_dump(), status_code=503)
    return body
