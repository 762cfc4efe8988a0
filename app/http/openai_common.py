"""What the OpenAI-compatible routes share: the checks and sampling parameters of a request,
usage counts, and the header naming the fields that were accepted but ignored."""

from __future__ import annotations

import dataclasses
import logging

from fastapi import Response

from app.service.runtime import Runtime
from app.service.streams import Chunk, Completion
from memoir_core.generate import SamplingParams
from memoir_core.sampling import OutputConstraint

from . import deps
from .errors import ModelNotFoundError, UnsupportedParameterError
from .openai_protocol import OpenAIRequest
from .protocol import MAX_SEED, Usage

log = logging.getLogger(__name__)
IGNORED_HEADER = "X-Memoir-Ignored-Fields"


def check_model(name: str | None, runtime: Runtime) -> None:
    if name and name != runtime.model_name:
        raise ModelNotFoundError(f"the model {name!r} does not exist; this server serves {runtime.model_name!r}")


def prepare(body: OpenAIRequest, runtime: Runtime, max_tokens: int, name: str, *, logprobs: int | None = None,
            prompt_logprobs: int | None = None, constraint: OutputConstraint | None = None) -> list[SamplingParams]:
    """Checks shared by both routes; one SamplingParams per choice (n of them)."""
    check_model(body.model, runtime)
    for param, used in body.unsupported():
        if used:
            raise UnsupportedParameterError(f"{param} is not supported by this server", param)
    temperature = 1.0 if body.temperature is None else body.temperature
    top_p = 1.0 if body.top_p is None else body.top_p
    extras = {"top_k": body.top_k or 0, "repetition_penalty": body.repetition_penalty or 1.0,
              "min_tokens": body.min_tokens or 0, "stop_token_ids": tuple(body.stop_token_ids or ()),
              "ignore_eos": bool(body.ignore_eos), "logprobs": logprobs, "prompt_logprobs": prompt_logprobs,
              "constraint": constraint, "max_new_tokens": max_tokens}
    params = []
    for i in range(body.n or 1):
        seed = None if body.seed is None else (body.seed + i) % (MAX_SEED + 1)
        base = deps.sampling(runtime.settings, max(max_tokens, 1), temperature, top_p, body.stop, seed, name)
        p = dataclasses.replace(base, **extras)
        p.validate()
        params.append(p)
    return params


def note_ignored(body: OpenAIRequest, response: Response) -> None:
    ignored = body.ignored()
    if ignored:
        response.headers[IGNORED_HEADER] = ", ".join(ignored)
        log.info("accepted but ignored: %s", ", ".join(ignored))


def usage(done: list[Completion], per_prompt: int) -> Usage:
    prompt = sum(c.prompt_tokens for c in done if c.index % per_prompt == 0)
    completion = sum(c.completion_tokens for c in done)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class Tally:
    """Token counts of a streamed request, for the usage chunk (stream_options.include_usage)."""

    def __init__(self, per_prompt: int, body: OpenAIRequest):
        self.per_prompt = per_prompt
        self.include = body.stream_options is not None and bool(body.stream_options.include_usage)
        self.finished: list[Completion] = []

    def add(self, c: Chunk) -> None:
        if c.finished:
            self.finished.append(Completion(c.index, "", c.finish_reason or "stop", c.prompt_tokens,
                                            c.completion_tokens, c.memory))

    def usage(self) -> dict:
        return usage(self.finished, self.per_prompt).model_dump()
