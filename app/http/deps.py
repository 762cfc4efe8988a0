"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Header, Request

from app.service.engine import Engine
from app.service.runtime import Runtime
from app.settings import Settings
from memoir_core.errors import InvalidRequestError
from memoir_core.generate import SamplingParams

from .errors import VersionAheadError, VersionUnavailableError


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def engine(request: Request) -> Engine:
    """The engine, or 503 (with Retry-After) while the model is loading."""
    return request.app.state.runtime.ready_engine()


def settings(request: Request) -> Settings:
    return request.app.state.runtime.settings


def sampling(settings: Settings, max_new_tokens: int, temperature: float, top_p: float, stop, seed: int | None,
             name: str = "max_new_tokens") -> SamplingParams:
    if max_new_tokens > settings.max_new_tokens:
        raise InvalidRequestError(f"{name} is {max_new_tokens}; the limit is {settings.max_new_tokens}")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stops,
                            seed=seed)
    params.validate()
    return params


async def reach(runtime: Runtime, version: int | None) -> None:
    """Read-your-writes: wait (MEMOIR_MIN_VERSION_WAIT seconds at most) until this replica's
    memory is at `version` or newer. 409 if no such version exists, 503 if it exists in the
    shared log but this replica did not reach it in time (another replica may have)."""
    if version is None:
        return
    engine = runtime.ready_engine()
    if engine.version >= version:
        return
    follower = runtime.follower
    if follower is None:  # one server: every version it has is already here
        raise VersionAheadError(f"min_version {version}: the memory is at version {engine.version}")
    if await follower.reach(version, runtime.settings.min_version_wait):
        return
    head = follower.head
    if version > head:
        raise VersionAheadError(f"min_version {version}: the edit log ends at version {head}")
    raise VersionUnavailableError(f"min_version {version}: this replica is at version {engine.version} and "
                                  f"did not reach {version} within {runtime.settings.min_version_wait:g} s; "
                                  "retry, or ask another replica")


async def min_version(request: Request, x_memoir_min_version: int | None = Header(
        None, ge=0, description="answer from memory version >= this one (read-your-writes after an edit)")) -> None:
    await reach(request.app.state.runtime, x_memoir_min_version)
