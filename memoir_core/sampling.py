"""The contract between the API layer and an engine: what a sequence asks for and what it gets.

An engine (the builtin decoder here, a vLLM one later) takes, per sequence,
  - `SamplingParams`: how to pick tokens (temperature, top_p, top_k, penalties, stops, limits),
  - an optional `OutputConstraint`: a JSON schema or JSON object the output must match,
  - `logprobs` / `prompt_logprobs`: how many alternatives to report per generated / prompt token,
and hands back text pieces with `TokenLogprob`s. Cancellation is the engine's `cancel(group)`:
a cancelled sequence leaves the batch before its next decode step and is counted as aborted.
The logprobs reported are the model's own distribution (log-softmax of the raw logits), before
temperature, penalties or constraints, as vLLM and lm-eval expect.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import InvalidRequestError

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class OutputConstraint:
    """The output must be JSON matching `schema` (a JSON schema; {"type": "object"} for any object)."""

    schema: dict[str, Any] = field(default_factory=lambda: {"type": "object"})

    def __hash__(self) -> int:  # dict fields: hash by identity, the engine never keys on it
        return id(self)


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int = 0  # 0 or -1: off
    repetition_penalty: float = 1.0  # 1: off (CTRL's: divides positive logits, multiplies negative ones)
    min_tokens: int = 0  # end-of-sequence and stop_token_ids are masked until this many tokens
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n: the sampled token's logprob and the n most likely
    prompt_logprobs: int | None = None  # the same for each prompt token (echo)
    constraint: OutputConstraint | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 0 or (self.max_new_tokens == 0 and self.prompt_logprobs is None):
            raise InvalidRequestError("max_new_tokens must be at least 1 (0 only when scoring the prompt)")
        if not 0.0 <= self.temperature <= 5.0:
            raise InvalidRequestError("temperature must be between 0 and 5")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise InvalidRequestError("stop strings must not be empty")
        if self.top_k < -1:
            raise InvalidRequestError("top_k must be -1, 0 (off) or positive")
        if not 0.0 < self.repetition_penalty <= 10.0:
            raise InvalidRequestError("repetition_penalty must be in (0, 10]")
        if self.min_tokens < 0 or self.min_tokens > max(self.max_new_tokens, 0):
            raise InvalidRequestError("min_tokens must be between 0 and max_tokens")
        for n in (self.logprobs, self.prompt_logprobs):
            if n is not None and not 0 <= n <= MAX_LOGPROBS:
                raise InvalidRequestError(f"logprobs must be between 0 and {MAX_LOGPROBS}")

    @property
    def plain(self) -> bool:
        """Nothing but temperature and top_p: the fast path."""
        return (self.top_k <= 0 and self.repetition_penalty == 1.0 and self.min_tokens == 0
                and self.constraint is None)


@dataclass(frozen=True)
class TokenLogprob:
    token: int
    logprob: float | None  # None: a prompt's first token
    top: tuple[tuple[int, float], ...] = ()  # the most likely tokens, best first


def token_logprobs(logits: torch.Tensor, tokens: list[int], n_top: int) -> list[TokenLogprob]:
    """Logprobs of `tokens` under each row of `logits` (rows x vocab), with the n_top best."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    chosen = logp.gather(1, torch.tensor(tokens, device=logp.device).unsqueeze(1)).squeeze(1).tolist()
    if n_top > 0:
        values, ids = logp.topk(n_top, dim=-1)
        tops = [tuple(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(tokens)
    return [TokenLogprob(t, lp, top) for t, lp, top in zip(tokens, chosen, tops)]


def process(logits: torch.Tensor, params: SamplingParams, out_ids: list[int], eos: set[int],
            allowed: torch.Tensor | None) -> torch.Tensor:
    """One sequence's logits after its penalties, minimum length, constraint mask and top_k."""
    if params.repetition_penalty != 1.0 and out_ids:
        seen = torch.tensor(sorted(set(out_ids)), device=logits.device)
        picked = logits[seen]
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if len(out_ids) < params.min_tokens:
        banned = [t for t in (*eos, *params.stop_token_ids) if t < logits.shape[-1]]
        logits[banned] = float("-inf")
    if allowed is not None:
        logits = logits.masked_fill(~allowed[: logits.shape[-1]], float("-inf"))
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = logits.topk(params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits


def pick(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Sample one token from one sequence's (processed) logits."""
    if params.temperature == 0:
        return int(logits.argmax())
    # A temperature near zero would overflow the logits to inf (and the softmax to NaN).
    probs = torch.softmax(logits / max(params.temperature, 1e-6), dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
        keep[0] = True  # a top_p below float32's smallest number would keep no token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))
