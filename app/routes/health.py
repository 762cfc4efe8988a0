"""Liveness and readiness (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .. import deps
from ..protocol import Health, Ready
from ..runtime import Runtime

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, summary="liveness: the process answers")
async def health() -> Health:
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
    failed = engine.writer.failed or getattr(runtime.store, "failure", None)
    note = None
    if failed:
        note = f"the memory store failed, edits are stopped until a restart: {failed}"
    elif follower is not None and follower.status == "cut_off":
        note = f"cut off from the edit log for {follower.cut_for():.0f} s ({follower.error}); serving version " \
               f"{memoir.version} meanwhile"
    body = Ready(status="degraded" if failed else "ready", model=runtime.model_name, version=memoir.version,
                 edits=len(memoir.edits), writer=failed or "ok", error=note)
    if failed:  # generation goes on, but an operator must act (disk space, hardware) and restart
        return JSONResponse(body.model_dump(), status_code=503)
    return body
