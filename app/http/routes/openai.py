"""OpenAI-compatible routes: /v1/completions and /v1/models (chat: routes/chat.py).

Works with the official `openai` client and lm-eval. Non-streamed answers carry a `memory`
extension (the memory decision, per choice and for choice 0 at the top); streamed ones carry it
in the chunk that finishes each choice. Prompts may be text or token ids; `echo` with `logprobs`
scores the prompt (max_tokens 0: only that), as loglikelihood evaluations need.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request, Response

from app.service.engine import Engine
from app.service.logprobs import completion_logprobs
from app.service.runtime import Runtime
from app.service.streams import Chunk, Prompt

from .. import deps
from ..auth import client_access
from ..openai_common import Tally, check_model, note_ignored, prepare, usage
from ..openai_protocol import CompletionRequest
from ..openai_responses import CompletionChoice, CompletionResponse, ModelCard, ModelList
from ..protocol import MemoryOut
from ..sse import SSE_RESPONSE, collect, stream

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
async def list_models(runtime: Runtime = Depends(deps.runtime), _: None = Depends(client_access)):
    return ModelList(data=[ModelCard(id=runtime.model_name, created=runtime.created)])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, runtime: Runtime = Depends(deps.runtime), _: None = Depends(client_access)):
    check_model(model_id, runtime)
    return ModelCard(id=runtime.model_name, created=runtime.created)


def _echo(prompt: str | list[int], prompt_views: list[dict] | None) -> str:
    if isinstance(prompt, str):
        return prompt
    return "".join(v["token"] for v in prompt_views or [])


@router.post("/completions", response_model=CompletionResponse, responses=SSE_RESPONSE,
             dependencies=[Depends(deps.min_version)])
async def completions(body: CompletionRequest, request: Request, response: Response,
                      runtime: Runtime = Depends(deps.runtime), engine: Engine = Depends(deps.engine),
                      _: None = Depends(client_access)):
    max_tokens = 16 if body.max_tokens is None else body.max_tokens
    scored = (body.logprobs or 0) if body.echo else None
    params = prepare(body, runtime, max_tokens, "max_tokens", logprobs=body.logprobs, prompt_logprobs=scored)
    prompts = body.prompts()
    n = len(params)
    asked = [Prompt(text=p) if isinstance(p, str) else Prompt(ids=p) for p in prompts]
    group = engine.generate([p for p in asked for _ in range(n)], params * len(prompts))
    note_ignored(body, response)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": runtime.model_name}
    sees = request.state.sees_edits
    if body.stream:
        tally = Tally(n, body)
        offsets: dict[int, int] = {}

        def choice(c: Chunk, text: str, views: list[dict], finished: bool) -> dict:
            out = {"index": c.index, "text": text, "logprobs": None,
                   "finish_reason": c.finish_reason if finished else None}
            if body.logprobs is not None:
                out["logprobs"] = completion_logprobs(views, body.logprobs, offsets.get(c.index, 0))
                offsets[c.index] = offsets.get(c.index, 0) + sum(len(v["token"]) for v in views)
            if finished:
                out["memory"] = c.memory.to_dict(sees)
            return {**head, "object": "text_completion", "choices": [out]}

        def render(c: Chunk):
            tally.add(c)
            out = []
            if c.prompt_logprobs is not None:
                out.append(choice(c, _echo(prompts[c.index // n], c.prompt_logprobs), c.prompt_logprobs, False))
            if c.piece or c.finished or c.logprobs:
                out.append(choice(c, c.piece, c.logprobs, c.finished))
            return out

        def tail():
            usage_chunk = {**head, "object": "text_completion", "choices": [], "usage": tally.usage()}
            return [usage_chunk] if tally.include else []

        return await stream(engine, group, render, tail, response.headers)
    done = await collect(engine, group, request)
    choices = []
    for c in done:
        prefix = _echo(prompts[c.index // n], c.prompt_logprobs) if body.echo else ""
        views = (c.prompt_logprobs or []) + c.logprobs if body.echo else c.logprobs
        logprobs = completion_logprobs(views, body.logprobs) if body.logprobs is not None else None
        choices.append(CompletionChoice(index=c.index, text=prefix + c.text, finish_reason=c.finish_reason,
                                        logprobs=logprobs, memory=MemoryOut(**c.memory.to_dict(sees))))
    return CompletionResponse(**head, choices=choices, usage=usage(done, n), memory=choices[0].memory)
