"""vLLM's logprobs as memoir's TokenLogprob (memoir_core.sampling), so the API layer formats them
as it does the builtin engine's.

vLLM gives, per position, a mapping token id -> Logprob(logprob, rank): the n most likely tokens
(rank 1 to n) plus the sampled or prompt token at its own rank, which may be beyond n. memoir
keeps that token's value apart from the n best, ordered by rank as the builtin engine's topk is.
The engine runs with logprobs_mode="raw_logprobs" (offline.engine): log-softmax of the raw
logits, the builtin engine's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memoir_core.sampling import TokenLogprob

Position = Mapping[int, Any]  # token id -> vllm.logprobs.Logprob (.logprob, .rank)


def position(token: int, entries: Position, n_top: int) -> TokenLogprob:
    """One position: `token`'s logprob and the n_top best, best first."""
    chosen = entries.get(token)
    if chosen is None:  # vLLM always reports the token itself; a missing one is a layout change
        raise ValueError(f"vLLM reported no logprob for token {token}")
    ranked = sorted(((lp.rank, t, lp.logprob) for t, lp in entries.items() if lp.rank is not None),
                    key=lambda r: r[0])
    return TokenLogprob(token, chosen.logprob, tuple((t, v) for _, t, v in ranked[:n_top]))


def sample(tokens: Sequence[int], entries: Sequence[Position], n_top: int) -> list[TokenLogprob]:
    """The generated tokens' logprobs (as many as both lists hold)."""
    return [position(t, e, n_top) for t, e in zip(tokens, entries)]


def prompt(tokens: Sequence[int], entries: Sequence[Position | None], n_top: int) -> list[TokenLogprob] | None:
    """The prompt's logprobs, the first token's None (nothing precedes it); None until vLLM has
    scored the whole prompt (a prefill cut into chunks reports it once done)."""
    if len(entries) != len(tokens) or not tokens:
        return None
    return [TokenLogprob(tokens[0], None), *(position(t, e, n_top) for t, e in zip(tokens[1:], entries[1:]))]
