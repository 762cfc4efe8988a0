"""OpenAI-compatible routes: /v1/completions, /v1/chat/completions, /v1/models.

Works with the official `openai` client. Non-streamed answers carry a `memory` extension (the
memory decision, per choice and for choice 0 at the top); streamed ones carry it in the chunk
that finishes each choice. Chat prompts go through the model's chat template; the memory reads
the last user message (the template's own text around it does not change the routing).
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends

from memoir_core.generate import SamplingParams

from .. import deps
from ..auth import client_access
from ..engine import Engine
from ..errors import ModelNotFoundError, UnsupportedParameterError
from ..openai_protocol import (
    AssistantMessage,
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ModelCard,
    ModelList,
    OpenAIRequest,
)
from ..protocol import MAX_SEED, MemoryOut, Usage
from ..runtime import Runtime
from ..settings import Settings
from ..sse import SSE_RESPONSE, collect, stream
from ..streams import Chunk, Completion, Prompt

router = APIRouter(prefix="/v1", tags=["openai"])


@router.get("/models", response_model=ModelList)
async def list_models(runtime: Runtime = Depends(deps.runtime), _: None = Depends(client_access)):
    return ModelList(data=[ModelCard(id=runtime.model_name, created=runtime.created)])


@router.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, runtime: Runtime = Depends(deps.runtime), _: None = Depends(client_access)):
    _check_model(model_id, runtime)
    return ModelCard(id=runtime.model_name, created=runtime.created)


def _check_model(name: str | None, runtime: Runtime) -> None:
    if name and name != runtime.model_name:
        raise ModelNotFoundError(f"the model {name!r} does not exist; this server serves {runtime.model_name!r}")


def _prepare(body: OpenAIRequest, runtime: Runtime, max_tokens: int, name: str) -> list[SamplingParams]:
    """Checks shared by both routes; one SamplingParams per choice (n of them)."""
    _check_model(body.model, runtime)
    for param, used in body.unsupported():
        if used:
            raise UnsupportedParameterError(f"{param} is not supported by this server", param)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    return [deps.sampling(runtime.settings, max_tokens, temperature, top_p, body.stop,
                          None if body.seed is None else (body.seed + i) % (MAX_SEED + 1), name)
            for i in range(body.n or 1)]


def _usage(done: list[Completion], per_prompt: int) -> Usage:
    prompt = sum(c.prompt_tokens for c in done if c.index % per_prompt == 0)
    completion = sum(c.completion_tokens for c in done)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _memory(chunk_or_done) -> MemoryOut:
    return MemoryOut(**chunk_or_done.memory.to_dict())


class _Tally:
    """Token counts of a streamed request, for the usage chunk (stream_options.include_usage)."""

    def __init__(self, per_prompt: int):
        self.per_prompt = per_prompt
        self.finished: list[Completion] = []

    def add(self, c: Chunk) -> None:
        if c.finished:
            self.finished.append(Completion(c.index, "", c.finish_reason or "stop", c.prompt_tokens,
                                            c.completion_tokens, c.memory))

    def usage(self) -> dict:
        return _usage(self.finished, self.per_prompt).model_dump()


@router.post("/completions", response_model=CompletionResponse, responses=SSE_RESPONSE,
             dependencies=[Depends(deps.min_version)])
async def completions(body: CompletionRequest, runtime: Runtime = Depends(deps.runtime),
                      engine: Engine = Depends(deps.engine), _: None = Depends(client_access)):
    params = _prepare(body, runtime, 16 if body.max_tokens is None else body.max_tokens, "max_tokens")
    prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
    n = len(params)
    group = engine.generate([Prompt(text=p) for p in prompts for _ in range(n)], params * len(prompts))
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": runtime.model_name}
    if body.stream:
        tally = _Tally(n)

        def render(c: Chunk):
            tally.add(c)
            if not (c.piece or c.finished):
                return []
            choice = {"index": c.index, "text": c.piece, "logprobs": None,
                      "finish_reason": c.finish_reason if c.finished else None}
            if c.finished:
                choice["memory"] = c.memory.to_dict()
            return [{**head, "object": "text_completion", "choices": [choice]}]

        def tail():
            include = body.stream_options is not None and body.stream_options.include_usage
            return [{**head, "object": "text_completion", "choices": [], "usage": tally.usage()}] if include else []

        return await stream(engine, group, render, tail)
    done = await collect(engine, group)
    choices = [CompletionChoice(index=c.index, text=c.text, finish_reason=c.finish_reason, memory=_memory(c))
               for c in done]
    return CompletionResponse(**head, choices=choices, usage=_usage(done, n), memory=choices[0].memory)


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=SSE_RESPONSE,
             dependencies=[Depends(deps.min_version)])
async def chat_completions(body: ChatCompletionRequest, runtime: Runtime = Depends(deps.runtime),
                           engine: Engine = Depends(deps.engine), settings: Settings = Depends(deps.settings),
                           _: None = Depends(client_access)):
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.new_tokens_default
    name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    params = _prepare(body, runtime, max_tokens, name)
    # "developer" is the newer name of "system"; most chat templates know only the latter.
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    group = engine.generate([Prompt(messages=messages)] * len(params), params)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": runtime.model_name}
    if body.stream:
        tally = _Tally(len(params))
        started: set[int] = set()

        def chunk(index: int, delta: dict, finish: str | None = None, memory: dict | None = None) -> dict:
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            if memory is not None:
                choice["memory"] = memory
            return {**head, "object": "chat.completion.chunk", "choices": [choice]}

        def render(c: Chunk):
            tally.add(c)
            out = []
            if c.index not in started:
                started.add(c.index)
                out.append(chunk(c.index, {"role": "assistant", "content": ""}))
            if c.piece:
                out.append(chunk(c.index, {"content": c.piece}))
            if c.finished:
                out.append(chunk(c.index, {}, c.finish_reason, c.memory.to_dict()))
            return out

        def tail():
            include = body.stream_options is not None and body.stream_options.include_usage
            usage = {**head, "object": "chat.completion.chunk", "choices": [], "usage": tally.usage()}
            return [usage] if include else []

        return await stream(engine, group, render, tail)
    done = await collect(engine, group)
    choices = [ChatChoice(index=c.index, message=AssistantMessage(content=c.text), finish_reason=c.finish_reason,
                          memory=_memory(c)) for c in done]
    return ChatCompletionResponse(**head, choices=choices, usage=_usage(done, len(params)), memory=choices[0].memory)
