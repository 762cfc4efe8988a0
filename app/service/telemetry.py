"""What the engine tells the operators while it runs: the metrics and event-log lines of each
generation (time to first token, the routing decision, every token, its end) and of each edit and
rollback job. The engine calls these hooks from its own thread (prometheus_client is thread-safe);
the request's access log and http_* metrics are the HTTP shell's (app/http/access.py).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import metrics
from .engine_errors import refused
from .logs import RequestInfo, current, event
from .writer import Applied, EditBatchError, Removal

events_log = logging.getLogger("memoir.events")


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
    return "rejected" if refused(error) else "failed"


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
