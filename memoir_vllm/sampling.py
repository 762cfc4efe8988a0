"""memoir's SamplingParams (memoir_core.sampling, the engines' contract) as vLLM's, with the route."""

from __future__ import annotations

from memoir_core.constraints import compact, compile_schema
from memoir_core.sampling import SamplingParams

from .tags import RouteTag


def to_vllm(params: SamplingParams, tag: RouteTag | None, eos_ids: set[int]):
    """vLLM's SamplingParams for one request. memoir's end tokens (PromptEncoder.eos_ids: the
    tokenizer's and the chat turn ends) are stop tokens, so both engines stop at the same place;
    ignore_eos ignores all of them, as memoir's decoder does. A constraint goes to vLLM's
    structured outputs (the guidance backend, offline.engine) in memoir's JSON layout
    (constraints.compact), so both engines write the same bytes."""
    from vllm import SamplingParams as VllmParams
    from vllm.sampling_params import StructuredOutputsParams

    params.validate()
    structured = None
    if params.constraint is not None:
        compile_schema(params.constraint.schema)  # InvalidRequestError (a 400) before vLLM sees it
        structured = StructuredOutputsParams(json=compact(params.constraint.schema))
    return VllmParams(
        # vLLM samples at least one token: a prompt only scored (max_new_tokens 0) gets one,
        # which VllmDecoder drops
        max_tokens=max(params.max_new_tokens, 1),
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
        prompt_logprobs=params.prompt_logprobs,
        structured_outputs=structured,
        extra_args=None if tag is None else tag.extra_args(),
    )
