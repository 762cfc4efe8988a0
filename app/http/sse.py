"""Server-sent events for streamed generation, and the non-streamed collection of a group.

Errors found before the first token (a prompt over the limit, a full queue) still get a proper
4xx: the response starts only once the first chunk has arrived. A client that goes away
cancels its sequences, which frees their place in the running batch, streamed or not.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable

from fastapi import Request
from fastapi.responses import StreamingResponse

from app.service.engine import Engine
from app.service.streams import Chunk, Completion, Group

from .errors import ClientGoneError, response_for

log = logging.getLogger(__name__)

SSE_RESPONSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE events when stream is true"}}


def event(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def stream(engine: Engine, group: Group, render: Callable[[Chunk], Iterable[dict]],
                 tail: Callable[[], Iterable[dict]] = tuple, headers=None) -> StreamingResponse:
    try:
        await group.first()
    except BaseException:
        engine.cancel(group)
        raise

    async def body():
        try:
            async for chunk in group.chunks():
                for data in render(chunk):
                    yield event(data)
            for data in tail():
                yield event(data)
        except Exception as error:  # noqa: BLE001 - the status line is gone: report in the stream
            yield event(json.loads(response_for(error).body))
        finally:
            engine.cancel(group)
        yield event("[DONE]")

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={**{k: v for k, v in (headers or {}).items() if k.lower() != "content-length"},
                                      "Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def collect(engine: Engine, group: Group, request: Request | None = None) -> list[Completion]:
    """The whole answer; a client that goes away first cancels it (checked every DISCONNECT_POLL s)."""
    watch = asyncio.create_task(_gone(request, engine, group)) if request is not None else None
    try:
        return await group.collect()
    except BaseException:
        engine.cancel(group)
        raise
    finally:
        if watch is not None:
            watch.cancel()


DISCONNECT_POLL = 0.05


async def _gone(request: Request, engine: Engine, group: Group) -> None:
    while not group.finished:
        if await request.is_disconnected():
            log.info("the client went away; its request is cancelled")
            engine.cancel(group)
            group.queue.put_nowait(ClientGoneError("the client closed the connection before the answer"))
            return
        await asyncio.sleep(DISCONNECT_POLL)
