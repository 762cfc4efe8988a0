"""Deadlines for slow clients and a cap on connections per client address, in the HTTP
protocol itself (uvicorn's h11 protocol, subclassed), where a request that never finishes its
headers is visible: no ASGI middleware ever sees it.

- headers: a request's headers must arrive within header_timeout seconds of its first byte
  (of the connection, for the first request); otherwise 408 and the connection is closed;
- body: the whole body within body_timeout seconds of the end of the headers; otherwise the
  connection is closed (the route sees a disconnect, nothing is applied);
- connections: more than max_connections_per_ip open from one address get 503 and are closed.

Idle keep-alive connections are uvicorn's timeout_keep_alive (5 s). Cut connections are logged
once per interval, with a count. `memoir serve` installs it (app/http/server.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import Settings
from memoir_core.throttle import Throttle

log = logging.getLogger(__name__)
_throttle = Throttle(10.0)

def _response(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode() + b"\n"
    return (f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n").encode() + body


_408 = _response("408 Request Timeout", "the request's headers came in too slowly")
_503 = _response("503 Service Unavailable", "too many connections from this address; retry later",
                 "retry-after: 1\r\n")


def _cut(what: str, client) -> None:
    skipped = _throttle.due(what)
    if skipped is not None:
        more = f" ({skipped} more since the last report)" if skipped else ""
        log.warning("closed a connection from %s: %s%s", client[0] if client else "?", what, more)


def guarded(settings: Settings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the deadlines and the cap of these settings."""
    per_ip: Counter[str] = Counter()

    class Guarded(H11Protocol):
        header_timeout, body_timeout = settings.header_timeout, settings.body_timeout
        cap = settings.max_connections_per_ip

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._ip = self.client[0] if self.client else "?"
            self._deadline: asyncio.TimerHandle | None = None
            self._phase: str | None = None
            per_ip[self._ip] += 1
            if self.cap and per_ip[self._ip] > self.cap:
                _cut(f"over {self.cap} connections from one address", self.client)
                transport.write(_503)
                transport.close()
                return
            self._arm("headers", self.header_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None, 0)
            per_ip[self._ip] -= 1
            if per_ip[self._ip] <= 0:
                del per_ip[self._ip]
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.IDLE:  # a next request begins (or the first goes on)
                if self._phase != "headers" and data:
                    self._arm("headers", self.header_timeout)
            elif state is h11.SEND_BODY:
                if self._phase != "body":
                    self._arm("body", self.body_timeout)
            else:
                self._arm(None, 0)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.IDLE and self._phase == "body":
                self._arm(None, 0)

        def _arm(self, phase: str | None, seconds: float) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._phase, self._deadline = phase, None
            if phase is not None and seconds > 0:
                self._deadline = self.loop.call_later(seconds, self._expired, phase)

        def _expired(self, phase: str) -> None:
            if self._phase != phase or self.transport.is_closing():
                return
            _cut(f"its request's {phase} did not arrive within the "
                 f"{self.header_timeout if phase == 'headers' else self.body_timeout:g} s deadline", self.client)
            if phase == "headers":  # no response of this request has begun: say why
                self.transport.write(_408)
            self.transport.close()

    return Guarded
