"""Structured logs: one JSON object per line (MEMOIR_LOG_FORMAT=json, the default) or plain text.

Every line has ts, level, logger and msg; lines written while serving a request also have its
request_id. Events add their own fields:
  event=request         one line per HTTP request: method, path, route, status, duration_ms,
                        request_id, client, key (the key's name, never the key), memory_version...
  event=edit_applied    id, author, steps, loss, seconds, version, best_overlap, supersedes
  event=edit_replayed   an idempotent retry: nothing trained
  event=edit_refused    an edit that was not applied, and why
  event=edit_rolled_back / edit_rollback_refused
  event=shutdown        SIGTERM received; what is still in flight

The request being served is kept in a context variable: code below a route can add fields to its
access-log line with annotate(), from any thread that holds the RequestInfo.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from memoir_core.throttle import Throttle


@dataclass
class RequestInfo:
    id: str
    method: str
    path: str
    fields: dict[str, Any] = field(default_factory=dict)


REQUEST: ContextVar[RequestInfo | None] = ContextVar("memoir_request", default=None)


def current() -> RequestInfo | None:
    return REQUEST.get()


def annotate(**fields: Any) -> None:
    """Add fields to the access-log line of the request being served (if any)."""
    info = REQUEST.get()
    if info is not None:
        info.fields.update(fields)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, request: RequestInfo | None = None,
          msg: str | None = None, **fields: Any) -> None:
    """Log an event with its fields (as JSON keys, or key=value in the text format)."""
    extra = {"event": name, "fields": fields}
    if request is not None:
        extra["request_id"] = request.id
    logger.log(level, msg or name.replace("_", " "), extra=extra)


_RESERVED = {"ts", "level", "logger", "msg", "event", "request_id"}


def _payload(record: logging.LogRecord) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    name = getattr(record, "event", None)
    if name:
        data["event"] = name
    request_id = getattr(record, "request_id", None)
    if request_id is None:
        info = REQUEST.get()
        request_id = info.id if info is not None else None
    if request_id is not None:
        data["request_id"] = request_id
    for key, value in (getattr(record, "fields", None) or {}).items():
        data[key if key not in _RESERVED else f"field_{key}"] = value
    return data


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = _payload(record)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = _payload(record)
        head = f"{data.pop('ts')} {data.pop('level').upper()} {data.pop('logger')}: {data.pop('msg')}"
        data.pop("event", None)
        tail = " ".join(f"{k}={json.dumps(v, ensure_ascii=False, default=str)}" for k, v in data.items())
        text = f"{head} {tail}" if tail else head
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class Flood(logging.Filter):
    """asyncio logs "socket.accept() out of system resource" (EMFILE) on every retry of the accept
    loop, tens of thousands of lines a minute: pass one per interval, with the count left out."""

    PREFIXES = ("socket.accept() out of system resource",)

    def __init__(self, interval: float = 10.0):
        super().__init__()
        self.throttle = Throttle(interval)

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        prefix = next((p for p in self.PREFIXES if msg.startswith(p)), None)
        if prefix is None:
            return True
        skipped = self.throttle.due(prefix)
        if skipped is None:
            return False
        record.exc_info, record.exc_text = None, None  # the traceback is the same every time
        if skipped:
            record.msg, record.args = f"{msg} ({skipped} more since the last report)", record.args
        return True


class Cancelled(logging.Filter):
    """uvicorn logs the CancelledError of every request it cancels when the shutdown timeout runs
    out as "Exception in ASGI application" with a 60-line traceback at ERROR. It is the drain
    working as configured, not a fault: one WARNING line says so instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and str(record.msg).startswith("Exception in ASGI application"):
            record.msg, record.args = ("a request still running when the shutdown timeout ran out was cancelled "
                                       "(its client got no complete answer)"), ()
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_floods() -> None:
    """Install Flood on asyncio's logger and Cancelled on uvicorn's (once), whoever configured
    the handlers."""
    for name, cls in (("asyncio", Flood), ("uvicorn.error", Cancelled)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


class _Handler(logging.StreamHandler):
    """Ours: configure() recognises it and does not add a second one."""


def configure(fmt: str = "json", level: str | int = "info", replace: bool = False) -> None:
    """Send every log line (the server's, uvicorn's, the libraries') through one formatter on the
    root logger. With replace, other handlers on the root logger go (memoir serve: the CLI's
    plain basicConfig); without, they stay (tests, embedding applications)."""
    root = logging.getLogger()
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if replace:
        for h in list(root.handlers):
            if not isinstance(h, _Handler):
                root.removeHandler(h)
    if ours:
        for h in ours:
            h.setFormatter(formatter)
    else:
        handler = _Handler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    quiet_floods()
    # one access line per request is ours (event=request); uvicorn's would repeat it
    logging.getLogger("uvicorn.access").disabled = True
