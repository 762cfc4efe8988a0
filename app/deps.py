"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from fastapi import Request

from memoir_core.errors import InvalidRequestError
from memoir_core.generate import SamplingParams

from .engine import Engine
from .runtime import Runtime
from .settings import Settings


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
