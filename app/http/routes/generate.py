"""POST /generate: the native completion route, with the memory decision in the answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.service.engine import Engine
from app.service.streams import Chunk, Prompt
from app.settings import Settings

from .. import deps
from ..auth import client_access
from ..protocol import GenerateIn, GenerateOut, MemoryOut, Usage
from ..sse import SSE_RESPONSE, collect, stream

router = APIRouter(tags=["generate"])


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@router.post("/generate", response_model=GenerateOut, responses=SSE_RESPONSE, summary="generate text",
             dependencies=[Depends(deps.min_version)])
async def generate(body: GenerateIn, request: Request, engine: Engine = Depends(deps.engine),
                   settings: Settings = Depends(deps.settings), _: None = Depends(client_access),
                   runtime=Depends(deps.runtime)):
    """With stream true: SSE events `{"text": ...}`, the last one with finish_reason, usage and
    memory, then `data: [DONE]`."""
    await deps.reach(runtime, body.min_version)
    params = deps.sampling(settings, body.max_new_tokens or settings.new_tokens_default, body.temperature,
                           body.top_p, body.stop, body.seed)
    group = engine.generate([Prompt(text=body.prompt)], [params])
    if body.stream:
        sent_memory = []

        def render(chunk: Chunk):
            data = {"text": chunk.piece}
            if not sent_memory or chunk.finished:
                data["memory"] = chunk.memory.to_dict(request.state.sees_edits)
                sent_memory.append(True)
            if chunk.finished:
                data.update(finish_reason=chunk.finish_reason, usage=_usage(chunk.prompt_tokens,
                                                                            chunk.completion_tokens))
            return [data] if data["text"] or len(data) > 1 else []

        return await stream(engine, group, render)
    done = (await collect(engine, group, request))[0]
    return GenerateOut(text=done.text, finish_reason=done.finish_reason,
                       usage=Usage(**_usage(done.prompt_tokens, done.completion_tokens)),
                       memory=MemoryOut(**done.memory.to_dict(request.state.sees_edits)))
