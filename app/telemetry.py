"""What the server tells its operators while it runs: request ids, access logs, metrics.

`Telemetry` is the outermost ASGI middleware: it takes the request id from `X-Request-Id` (or
makes one), returns it on the response, and when the response is done counts the request
(http_* metrics) and writes one access-log line. The engine calls the hooks below from its own
thread (prometheus_client is thread-safe): a sequence's first token (time to first token, the
routing decision), every token, its end; and the result of each edit and rollback job.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import metrics
from .errors import status_of
from .logs import REQUEST, RequestInfo, current, event
from .writer import Applied, EditBatchError, Removal

access_log = logging.getLogger("memoir.access")
events_log = logging.getLogger("memoir.events")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
QUIET = {"/health", "/ready", "/metrics"}  # probes and scrapes: logged at DEBUG, counted as usual


class Telemetry:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"").decode("latin-1")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        info = RequestInfo(request_id, scope.get("method", ""), scope.get("path", ""))
        token = REQUEST.set(info)
        t0 = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except asyncio.CancelledError:
            status = status or 499  # the client went away (or a shutdown ran out of time)
            raise
        except BaseException:
            status = status or 500
            raise
        finally:
            REQUEST.reset(token)
            try:
                self._record(scope, info, status or 500, time.perf_counter() - t0)
            except Exception:  # noqa: BLE001 - telemetry never breaks a request
                access_log.exception("recording the request failed")

    @staticmethod
    def _record(scope: Scope, info: RequestInfo, status: int, seconds: float) -> None:
        route = scope.get("route")
        handler = getattr(route, "path", None) or "unmatched"
        method = info.method
        metrics.HTTP_REQUESTS.labels(handler, method, str(status)).inc()
        metrics.HTTP_DURATION.labels(handler, method, str(status)).observe(seconds)
        client = scope.get("client")
        if info.path in QUIET and status in (200, 503):  # 503: /ready while loading
            level = logging.DEBUG
        else:
            level = logging.WARNING if status >= 500 else logging.INFO
        if access_log.isEnabledFor(level):
            event(access_log, "request", level, request=info, msg=f"{method} {info.path} {status}", method=method,
                  path=info.path, route=handler, status=status, duration_ms=round(seconds * 1000, 2),
                  client=client[0] if client else None, **info.fields)


# -- generation: called by the engine -----------------------------------------------------------
class _Generation:
    __slots__ = ("request", "t0")

    def __init__(self, request: RequestInfo | None):
        self.t0 = time.perf_counter()
        self.request = request


def generation_started(group: Any) -> None:
    """On the event loop, in the request's context, as the request's sequences are queued."""
    group.telemetry = _Generation(current())


def on_chunk(work: Any, chunk: Any) -> None:
    """On the engine thread, for each chunk the engine hands a sequence."""
    try:
        _on_chunk(work, chunk)
    except Exception:  # noqa: BLE001
        events_log.exception("recording a token failed")


def _on_chunk(work: Any, chunk: Any) -> None:
    gen = getattr(work.group, "telemetry", None)
    if gen is None:
        return
    now = time.perf_counter()
    first = getattr(work, "t_first", None)
    if first is None:
        work.t_first, work.n_counted = now, 0
        metrics.TIME_TO_FIRST_TOKEN.observe(now - gen.t0)
        metrics.PROMPT_TOKENS.inc(chunk.prompt_tokens)
        metrics.REQUEST_PROMPT_TOKENS.observe(chunk.prompt_tokens)
        memory = chunk.memory
        metrics.ROUTING.labels("on" if memory.on else "off").inc()
        metrics.BEST_OVERLAP.observe(memory.overlap)
        if gen.request is not None and "memory_version" not in gen.request.fields:
            gen.request.fields.update(memory_version=memory.version, memory="on" if memory.on else "off",
                                      edit_id=memory.edit_id)
    new = chunk.completion_tokens - work.n_counted
    if new > 0:
        metrics.GENERATION_TOKENS.inc(new)
        work.n_counted = chunk.completion_tokens
    if chunk.finished:
        metrics.E2E_LATENCY.observe(now - gen.t0)
        metrics.REQUEST_SUCCESS.labels(chunk.finish_reason or "stop").inc()
        metrics.REQUEST_GENERATION_TOKENS.observe(chunk.completion_tokens)
        if chunk.completion_tokens > 1:
            metrics.TIME_PER_OUTPUT_TOKEN.observe((now - work.t_first) / (chunk.completion_tokens - 1))


def aborted(work: Any) -> None:
    """On the engine thread, for a sequence cancelled before it finished."""
    metrics.REQUEST_ABORTED.inc()


# -- edits: the engine wraps the function that answers an edit or rollback job -------------------
def _outcome(error: BaseException) -> str:
    from memoir_core.errors import EditFailedError

    if isinstance(error, EditFailedError):
        return "failed"
    return "rejected" if status_of(error)[0] < 500 else "failed"


def _applied(items: list[Applied], request: RequestInfo | None) -> None:
    for a in items:
        r = a.record
        if a.replayed:
            metrics.EDITS.labels("replayed").inc()
            event(events_log, "edit_replayed", request=request, id=r.id, author=r.author, version=r.version)
            continue
        metrics.EDITS.labels("applied").inc()
        metrics.EDIT_DURATION.observe(r.seconds)
        metrics.EDIT_STEPS.observe(r.steps)
        event(events_log, "edit_applied", request=request, id=r.id, author=r.author, steps=r.steps,
              loss=r.final_loss, seconds=round(r.seconds, 4), version=r.version,
              best_overlap=round(float(r.best_overlap), 6), best_overlap_id=r.best_overlap_id,
              supersedes=r.supersedes)


def watch_edits(post):
    """Wraps an edit job's answer (on the engine thread): counts and logs each edit."""
    request = current()

    def answer(result: Any) -> None:
        try:
            if isinstance(result, BaseException):
                applied = result.applied if isinstance(result, EditBatchError) else []
                inner = result.error if isinstance(result, EditBatchError) else result
                _applied(applied, request)
                outcome = _outcome(inner)
                metrics.EDITS.labels(outcome).inc()
                event(events_log, "edit_refused", logging.WARNING if outcome == "failed" else logging.INFO,
                      request=request, outcome=outcome, error=str(inner), error_type=type(inner).__name__,
                      index=getattr(result, "index", None))
            else:
                applied, version = result
                _applied(applied, request)
                if request is not None:
                    request.fields.update(memory_version=version, edits=[a.record.id for a in applied])
        except Exception:  # noqa: BLE001
            events_log.exception("recording an edit failed")
        post(result)

    return answer


def watch_removal(post, edit_id: str):
    """Wraps a rollback job's answer: counts and logs it."""
    request = current()
    author = request.fields.get("key") if request is not None else None

    def answer(result: Any) -> None:
        try:
            if isinstance(result, Removal):
                metrics.ROLLBACKS.labels("removed").inc()
                event(events_log, "edit_rolled_back", request=request, id=edit_id, by=author,
                      author=result.record.author, version=result.version)
                if request is not None:
                    request.fields.update(memory_version=result.version)
            else:
                outcome = _outcome(result)
                metrics.ROLLBACKS.labels(outcome).inc()
                event(events_log, "edit_rollback_refused", request=request, id=edit_id, by=author,
                      outcome=outcome, error=str(result))
        except Exception:  # noqa: BLE001
            events_log.exception("recording a rollback failed")
        post(result)

    return answer
