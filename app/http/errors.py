"""Every error the service answers with, mapped to an HTTP status in one place.

All errors share OpenAI's envelope, {"error": {"message", "type", "param", "code"}}, so one
client-side handler reads them all. Request validation errors are 422 on the native routes
(FastAPI's convention) and 400 on /v1 (OpenAI's); nothing a client sends should produce a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.service.engine_errors import EngineError, EngineStoppedError, NotReadyError, QueueFullError
from memoir_core import errors as core

log = logging.getLogger(__name__)


class ServiceError(Exception):
    status = 500
    code = "internal_error"
    retry_after: int | None = None


class VersionUnavailableError(ServiceError):
    """min_version: the version exists in the shared log, but this replica did not reach it in time."""
    status, code, retry_after = 503, "version_unavailable", 1


class VersionAheadError(ServiceError):
    """min_version: no such memory version exists (yet)."""
    status, code = 409, "version_ahead"


class ClientGoneError(ServiceError):
    """The client closed the connection before its (non-streamed) answer; nginx's 499 in the logs."""
    status, code = 499, "client_closed_request"


class ModelNotFoundError(ServiceError):
    status, code = 404, "model_not_found"


class ImportNotFoundError(ServiceError):
    status, code = 404, "import_not_found"


class UnsupportedParameterError(ServiceError):
    status, code = 400, "unsupported_parameter"

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


# the engine's errors (engine_errors.py), which carry no HTTP status: status and code here
ENGINE_STATUS: list[tuple[type[Exception], int, str]] = [
    (QueueFullError, 429, "queue_full"),
    (EngineStoppedError, 503, "engine_stopped"),
    (NotReadyError, 503, "not_ready"),
]
KNOWN = (ServiceError, EngineError, core.MemoirError)  # errors whose message a client may read

# memoir_core's typed errors; the first matching class wins (subclasses before bases)
CORE_STATUS: list[tuple[type[Exception], int]] = [
    (core.InvalidRequestError, 400),
    (core.EditNotFoundError, 404),
    (core.EditConflictError, 409),
    (core.EditRejectedError, 422),
    (core.EditFailedError, 422),
    (core.DurabilityError, 503),
    (core.StateError, 503),
    (core.UnsupportedArchitectureError, 500),
]

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 499: "invalid_request_error",
          503: "service_unavailable"}


def envelope(status: int, message: str, code: str | None = None, param: str | None = None,
             headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    error = {"message": message, "type": _TYPES.get(status, "server_error"), "param": param, "code": code}
    error.update(extra)
    return JSONResponse({"error": jsonable_encoder(error)}, status_code=status, headers=headers)


def status_of(error: BaseException) -> tuple[int, str]:
    if isinstance(error, ServiceError):
        return error.status, error.code
    for cls, status, code in ENGINE_STATUS:
        if isinstance(error, cls):
            return status, code
    for cls, status in CORE_STATUS:
        if isinstance(error, cls):
            return status, getattr(error, "code", "error")
    return 500, "internal_error"


def response_for(error: BaseException, **extra: Any) -> JSONResponse:
    """The error response for an exception raised anywhere below a route."""
    from app.service.writer import EditBatchError  # the writer imports nothing from here at import time

    if isinstance(error, EditBatchError):
        applied = [{"id": a.record.id, "version": a.record.version} for a in error.applied]
        inner = error.error
        prefix = f"edits[{error.index}]: " if error.index is not None else ""
        extra = {"index": error.index, "applied": applied, **extra}
        return response_for_plain(inner, prefix, **extra)
    return response_for_plain(error, "", **extra)


def response_for_plain(error: BaseException, prefix: str, **extra: Any) -> JSONResponse:
    status, code = status_of(error)
    if status >= 500 and not isinstance(error, KNOWN):
        log.error("internal error", exc_info=error)
        message = f"internal error ({type(error).__name__}); see the server log"
    else:
        message = str(error)
    retry = getattr(error, "retry_after", None)
    headers = dict(getattr(error, "headers", None) or {}) if isinstance(error, ServiceError) else {}
    if retry:
        headers["Retry-After"] = str(retry)
    return envelope(status, prefix + message, code, getattr(error, "param", None), headers or None, **extra)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "literal", "json-or-python"}
_PLAIN = {"Extra inputs are not permitted": "unknown field (not part of this API)"}


def _field(part: Any) -> bool:
    """Whether a part of pydantic's error location is a field name, not the name of a type it tried
    (a union's branch: 'str', 'list[TextPart]', 'function-after[_utf8(), constrained-str]', 'TextPart')."""
    if isinstance(part, int):
        return True
    return part != "body" and part not in _TYPE_TAGS and part[:1].islower() and \
        not any(c in part for c in "[]()-, ")


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    parts, first, seen = [], None, set()
    for e in errors:
        where = ""
        for p in filter(_field, e.get("loc", ())):
            where += f"[{p}]" if isinstance(p, int) else (f".{p}" if where else str(p))
        first = first or where or None
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        line = f"{where}: {_PLAIN.get(msg, msg)}" if where else msg
        if line not in seen:
            seen.add(line)
            parts.append(line)
    more = f" (and {len(parts) - 5} more)" if len(parts) > 5 else ""
    return "; ".join(parts[:5]) + more, first


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        message, param = _describe(list(exc.errors()))
        status = 400 if request.url.path.startswith("/v1/") else 422
        return envelope(status, message or "invalid request", "invalid_request", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return envelope(exc.status_code, str(exc.detail), codes.get(exc.status_code, "http_error"),
                        headers=getattr(exc, "headers", None))

    from app.service.writer import EditBatchError

    async def _known(request: Request, exc: Exception):
        return response_for(exc)

    # Known errors go through Starlette's exception middleware; the catch-all below is the
    # server-error middleware's, which also logs the traceback.
    for cls in (core.MemoirError, ServiceError, EngineError, EditBatchError, Exception):
        app.add_exception_handler(cls, _known)
