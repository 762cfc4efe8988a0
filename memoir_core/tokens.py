"""Choosing each running sequence's next token, and scoring prompts (the engine side of sampling.py).

Sequences that ask for nothing but temperature and top_p share one argmax over the batch;
the others get their own logits processing (penalties, minimum length, constraint, top_k).
"""

from __future__ import annotations

import torch

from .sampling import TokenLogprob, pick, process, token_logprobs


def choose(logits: torch.Tensor, sequences: list, eos: set[int]) -> list[tuple[int | None, TokenLogprob | None]]:
    """(next token, its logprob if asked for) per sequence; None for one that wants no new token."""
    logits = logits.float()
    greedy = logits.argmax(dim=-1).tolist()
    out: list[tuple[int | None, TokenLogprob | None]] = []
    for i, seq in enumerate(sequences):
        p = seq.params
        if p.max_new_tokens == 0:
            out.append((None, None))
            continue
        if p.plain:
            tok = greedy[i] if p.temperature == 0 else pick(logits[i], p, seq.generator)
        else:
            allowed = seq.matcher.allowed(logits.device) if seq.matcher is not None else None
            tok = pick(process(logits[i].clone(), p, seq.out_ids, eos, allowed), p, seq.generator)
        if seq.matcher is not None:
            seq.matcher.consume(tok)
        logprob = token_logprobs(logits[i : i + 1], [tok], p.logprobs)[0] if p.logprobs is not None else None
        out.append((tok, logprob))
    return out


def prompt_scores(sequences: list, logits: torch.Tensor, width: int) -> None:
    """Each prompt token's logprob given the tokens before it (left-padded prefill logits)."""
    for i, seq in enumerate(sequences):
        n_top = seq.params.prompt_logprobs
        if n_top is None:
            continue
        ids = seq.prompt_ids
        pad = width - len(ids)
        rows = logits[i, pad : width - 1]  # row j predicts token j + 1
        first = TokenLogprob(ids[0], None)  # nothing before it to predict it from
        seq.prompt_logprobs = [first, *token_logprobs(rows, ids[1:], n_top)] if len(ids) > 1 else [first]
