"""POST /v1/chat/completions: chat, tool calls, structured output and logprobs.

Chat prompts go through the model's chat template; the memory reads the last user message
(the template's own text around it, tool definitions included, does not change the routing).
`response_format` json_object / json_schema and tool_choice "required" / a named function are
enforced by grammar-constrained decoding (memoir_core/constraints.py), per sequence in the batch.
Streamed with tools on, text that may be the start of a tool call is held back until it is
clear whether it is one; a call is sent as one `delta.tool_calls` chunk.
"""

from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Depends, Request, Response

from app.service.engine import Engine
from app.service.logprobs import chat_logprobs
from app.service.runtime import Runtime
from app.service.streams import Chunk, Prompt
from app.settings import Settings
from memoir_core.constraints import compile_schema
from memoir_core.sampling import OutputConstraint

from .. import deps, tools
from ..auth import client_access
from ..openai_common import Tally, note_ignored, prepare, usage
from ..openai_protocol import ChatCompletionRequest
from ..openai_responses import AssistantMessage, ChatChoice, ChatCompletionResponse
from ..protocol import MemoryOut
from ..sse import SSE_RESPONSE, collect, stream

router = APIRouter(prefix="/v1", tags=["openai"])


def _constraint(body: ChatCompletionRequest) -> OutputConstraint | None:
    constraint = tools.constraint(body)
    fmt = body.response_format
    if constraint is None and fmt is not None and fmt.type != "text":
        constraint = OutputConstraint(fmt.json_schema.schema_ if fmt.type == "json_schema" else {"type": "object"})
    if constraint is not None:
        compile_schema(constraint.schema)  # a 400 now rather than from the engine thread
    return constraint


def _message(text: str, body: ChatCompletionRequest) -> tuple[AssistantMessage, bool]:
    if body.tools_on:
        content, calls = tools.parse(text, body)
        if calls:
            return AssistantMessage(content=content, tool_calls=calls), True
    return AssistantMessage(content=text), False


@router.post("/chat/completions", response_model=ChatCompletionResponse, responses=SSE_RESPONSE,
             dependencies=[Depends(deps.min_version)])
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response,
                           runtime: Runtime = Depends(deps.runtime), engine: Engine = Depends(deps.engine),
                           settings: Settings = Depends(deps.settings), _: None = Depends(client_access)):
    max_tokens = body.max_completion_tokens or body.max_tokens or settings.new_tokens_default
    name = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    n_top = body.top_logprobs or 0
    params = prepare(body, runtime, max_tokens, name, logprobs=n_top if body.logprobs else None,
                     constraint=_constraint(body))
    messages, template_tools = tools.chat_messages(body, tools.template_reads_tools(engine.memoir.encoder.tokenizer))
    prompt = Prompt(messages=messages, tools=template_tools, continue_final=bool(body.continue_final_message),
                    template_kwargs=body.chat_template_kwargs)
    group = engine.generate([prompt] * len(params), params)
    note_ignored(body, response)
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": runtime.model_name}
    sees = request.state.sees_edits
    if body.stream:
        return await stream(engine, group, *_streamer(body, head, len(params), sees, n_top), response.headers)
    done = await collect(engine, group, request)
    choices = []
    for c in done:
        message, called = _message(c.text, body)
        choices.append(ChatChoice(index=c.index, message=message,
                                  finish_reason="tool_calls" if called else c.finish_reason,
                                  logprobs=chat_logprobs(c.logprobs, n_top) if body.logprobs else None,
                                  memory=MemoryOut(**c.memory.to_dict(sees))))
    return ChatCompletionResponse(**head, choices=choices, usage=usage(done, len(params)), memory=choices[0].memory)


def _streamer(body: ChatCompletionRequest, head: dict, n: int, sees: bool, n_top: int):
    tally = Tally(n, body)
    started: set[int] = set()
    held: dict[int, tuple[str, list]] = {}  # text and logprobs held back while they may be a tool call
    streaming: set[int] = set()  # choices known to be plain content

    def chunk(index: int, delta: dict, finish: str | None = None, memory: dict | None = None,
              logprobs: list | None = None) -> dict:
        choice = {"index": index, "delta": delta, "finish_reason": finish,
                  "logprobs": chat_logprobs(logprobs, n_top) if body.logprobs and logprobs else None}
        if memory is not None:
            choice["memory"] = memory
        return {**head, "object": "chat.completion.chunk", "choices": [choice]}

    def render(c: Chunk):
        tally.add(c)
        out = []
        if c.index not in started:
            started.add(c.index)
            out.append(chunk(c.index, {"role": "assistant", "content": ""}))
        text, logprobs = c.piece, c.logprobs
        if body.tools_on and c.index not in streaming:
            before, lps = held.pop(c.index, ("", []))
            text, logprobs = before + text, lps + logprobs
            if tools.may_be_call(text) and not c.finished:
                held[c.index] = (text, logprobs)
                return out
            if c.finished:
                message, called = _message(text, body)
                if called:
                    if message.content:
                        out.append(chunk(c.index, {"content": message.content}))
                    calls = [{"index": i, **call.model_dump()} for i, call in enumerate(message.tool_calls or [])]
                    out.append(chunk(c.index, {"tool_calls": calls}, logprobs=logprobs))
                    out.append(chunk(c.index, {}, "tool_calls", c.memory.to_dict(sees)))
                    return out
            else:
                streaming.add(c.index)
        if text or logprobs:
            out.append(chunk(c.index, {"content": text}, logprobs=logprobs))
        if c.finished:
            out.append(chunk(c.index, {}, c.finish_reason, c.memory.to_dict(sees)))
        return out

    def tail():
        usage_chunk = {**head, "object": "chat.completion.chunk", "choices": [], "usage": tally.usage()}
        return [usage_chunk] if tally.include else []

    return render, tail
