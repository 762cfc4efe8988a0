"""The outermost ASGI middleware: request ids, one access-log line and the http_* metrics per request.

It takes the request id from `X-Request-Id` (or makes one), returns it on the response, and when
the response is done counts the request and writes the access-log line. The request's context
(app/service/logs.py) is what the engine's hooks (app/service/telemetry.py) log against.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.service import metrics
from app.service.logs import REQUEST, RequestInfo, event

access_log = logging.getLogger("memoir.access")

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
                headers = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
                message = {**message, "headers": headers}
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
            event(access_log, "request", level, request=info, msg=f"{method} {info.path} {status}",
                  method=method, path=info.path, route=handler, status=status,
                  duration_ms=round(seconds * 1000, 2),
                  client=client[0] if client else None, **info.fields)
