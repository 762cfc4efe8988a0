"""The FastAPI application: create_app() wires settings, the runtime, errors and routes.

Run it with `memoir serve`, or `uvicorn app.http.main:app_factory --factory` (one worker: the model
and its memory live in this process, and one thread owns them).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.service import logs, metrics
from app.service.import_jobs import Imports
from app.service.runtime import Builder, Runtime, exit_process
from app.service.shared_state import shared_state
from app.service.stores import open_store
from app.settings import Settings, warn_unknown_variables
from memoir_core.state import MemoryStore

from . import audit, errors, server
from .access import Telemetry
from .auth import Keys, LoopbackOnly, check_exposure
from .console import views as console
from .middleware import BodyLimit
from .routes import audit as audit_routes
from .routes import chat, edits, generate, health, imports, openai, replicas, tokens
from .routes import metrics as metrics_route


def create_app(settings: Settings | None = None, *, builder: Builder | None = None,
               store_factory: Callable[[Settings], MemoryStore] = open_store,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """`builder` makes the Memoir (tests pass a tiny model); by default it loads settings.model.
    `on_fatal`: what a server process does when the memory's state stops the start (Runtime)."""
    settings = settings or Settings()
    logs.quiet_floods()  # whoever configured the log handlers (uvicorn, an embedding app)
    keys = Keys.from_settings(settings)  # a malformed key stops the start here, with its reason
    check_exposure(settings.host, keys, settings.allow_insecure)
    runtime = Runtime(settings, builder, lambda s: metrics.observe_store(store_factory(s)), on_fatal)
    metrics.SERVER.bind(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()  # loads in the background: /health answers at once, /ready once loaded
        try:
            yield
        finally:
            await asyncio.to_thread(runtime.stop, server.time_left(settings))
            for side in (getattr(app.state, "audit", None), shared):
                if side is not None:
                    side.close()

    app = FastAPI(title="memoir", version="0.1.0", lifespan=lifespan,
                  description="An LLM inference server that takes knowledge corrections live (MEMOIR).")
    app.state.runtime = runtime
    app.state.keys = keys
    shared = shared_state(settings)  # PostgreSQL mode: import jobs and console sessions, for every replica
    app.state.shared = shared
    app.state.imports = Imports(shared, lambda applied, author, source: audit.record_applied(app, applied, author,
                                                                                            source),
                                lambda report: audit.record_import(app, report))
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if not keys.admin and not settings.allow_insecure:
        app.add_middleware(LoopbackOnly)
    app.add_middleware(Telemetry)  # outermost: every answer gets a request id, a log line and a count
    for module in (health, edits, imports, audit_routes, generate, openai, chat, tokens, replicas,
                   metrics_route):
        app.include_router(module.router)
    console.install(app)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory`: settings from the environment (and the log format they name); a
    state error exits the process."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level)
    warn_unknown_variables(os.environ)
    return create_app(settings, on_fatal=exit_process)
