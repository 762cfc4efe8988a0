"""GET /replicas: the replicas that follow the shared edit log, as the database sees them."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from app.service.runtime import Runtime
from memoir_core.state import shared_log

from .. import deps
from ..auth import admin_access

router = APIRouter(tags=["health"])


@router.get("/replicas", summary="the replicas on the shared edit log: name, URL, applied version, last seen")
async def replicas(runtime: Runtime = Depends(deps.runtime), _: str | None = Depends(admin_access)) -> dict:
    """With the memory in PostgreSQL (docs/replicas.md): this replica's name and view of the log's
    head, and every replica's applied version as last reported (about once per new version, and
    every 10 s). With a state directory the list is empty (`shared` false)."""
    engine = runtime.ready_engine()
    store, follower = shared_log(runtime.store), runtime.follower
    if follower is None or store is None:
        return {"shared": False, "version": engine.version, "replicas": []}
    found = await asyncio.to_thread(store.replicas)
    return {"shared": True, "name": store.replica, "version": engine.version,
            "head": max(follower.head, engine.version), "status": follower.status, "replicas": found}
