"""memoir's SamplingParams (memoir_core.sampling, the engines' contract) as vLLM's, with the route."""

from __future__ import annotations

from memoir_core.errors import InvalidRequestError
from memoir_core.sampling import SamplingParams

from .tags import RouteTag


def to_vllm(params: SamplingParams, tag: RouteTag | None, eos_ids: set[int]):
    """vLLM's SamplingParams for one request. memoir's end tokens (PromptEncoder.eos_ids: the
    tokenizer's and the chat turn ends) are stop tokens, so both engines stop at the same place;
    ignore_eos ignores all of them, as memoir's decoder does."""
    from vllm import SamplingParams as VllmParams

    params.validate()
    if params.constraint is not None:
        # vLLM's structured outputs will take it (issue 21); until then say so rather than ignore it
        raise InvalidRequestError("output constraints (response_format, required tools) are not on the vLLM engine yet")
    if params.prompt_logprobs is not None:
        raise InvalidRequestError("prompt logprobs are not on the vLLM engine yet")
    return VllmParams(
        max_tokens=params.max_new_tokens,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=max(params.top_k, 0),
        seed=params.seed,
        stop=list(params.stop),
        stop_token_ids=sorted(set(params.stop_token_ids) | (set() if params.ignore_eos else set(eos_ids))),
        ignore_eos=params.ignore_eos,
        min_tokens=params.min_tokens,
        repetition_penalty=params.repetition_penalty,
        logprobs=params.logprobs,
        extra_args=None if tag is None else tag.extra_args(),
    )
