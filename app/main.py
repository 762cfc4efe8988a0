"""The FastAPI application: create_app() wires settings, the runtime, errors and routes.

Run it with `memoir serve`, or `uvicorn app.main:app_factory --factory` (one worker: the model
and its memory live in this process, and one thread owns them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from memoir_core.state import MemoryStore

from . import errors
from .middleware import BodyLimit
from .routes import edits, generate, health, openai
from .runtime import Builder, Runtime, exit_process
from .settings import Settings
from .stores import open_store


def create_app(settings: Settings | None = None, *, builder: Builder | None = None,
               store_factory: Callable[[Settings], MemoryStore] = open_store,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """`builder` makes the Memoir (tests pass a tiny model); by default it loads settings.model.
    `on_fatal`: what a server process does when the memory's state stops the start (Runtime)."""
    settings = settings or Settings()
    runtime = Runtime(settings, builder, store_factory, on_fatal)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()  # loads in the background: /health answers at once, /ready once loaded
        try:
            yield
        finally:
            await asyncio.to_thread(runtime.stop)

    app = FastAPI(title="memoir", version="0.1.0", lifespan=lifespan,
                  description="An LLM inference server that takes knowledge corrections live (MEMOIR).")
    app.state.runtime = runtime
    errors.install(app)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    for module in (health, edits, generate, openai):
        app.include_router(module.router)
    return app


def app_factory() -> FastAPI:
    """For `uvicorn --factory`: settings from the environment; a state error exits the process."""
    return create_app(Settings(), on_fatal=exit_process)
