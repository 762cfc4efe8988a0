"""Relation masks: a prompt's mask read without its subject's name.

Every question about a subject shares the subject's tokens, and norm pooling weighs those most
(tophash.span_mean), so "Who is the CEO of Acme?" and "Where is Acme located?" get close masks.
Pooled over the tokens outside the name ("Who is the CEO of", "?"), the same activations give a
*relation mask*, which tells the two apart: an edit keeps the relation masks of its own prompt and
of its other questions (EditRecord.own_relation, avoid_relation; avoid.py), and routing reads a
prompt's relation mask only where the prompt names a stored subject, from the activations its
prefill computed anyway (Routing.asks_else, config.relation_lead). docs/routing.md has the
measurements.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .tophash import span_mean

Spans = list[tuple[int, int]]


def name_free(encoder, ids: list[int], spans_in: Callable[[str], Spans]) -> list[bool]:
    """Per token of `ids`: whether none of its characters lies in the spans that `spans_in` finds
    in their text (the subject's name). Every token, where the name is all there is."""
    text, ends = encoder.token_ends(ids)
    spans = spans_in(text)
    starts = [0] + ends[:-1]
    keep = [not any(a < end and b > start for start, end in spans) for a, b in zip(starts, ends)]
    return keep if any(keep) else [True] * len(ids)


@dataclass
class PromptActs:
    """One batch's activations entering the memory at prefill, kept for the length of its routing
    decision: relation features are pooled from them, with no second pass."""

    acts: torch.Tensor  # [B, T, D]
    span: torch.Tensor  # [B, T] bool: each row's prompt span
    tail: torch.Tensor | None  # [B, T] bool: the span's last sentence, where it has several
    centre: torch.Tensor | None  # as routing pools (tophash.span_mean)
    ids: list[list[int]]  # each row's span tokens, in order

    def relation(self, row: int, keep: list[bool]) -> torch.Tensor:
        """Features [n, D] of the row's span over the `keep` tokens of it, then of its last
        sentence over the same tokens where it has one (n = 1 or 2)."""
        span = self.span[row].to(self.acts.device)
        positions = span.nonzero()[:, 0]
        where = torch.zeros_like(span)
        where[positions[torch.tensor(keep, device=positions.device)]] = True
        pools = [where]
        if self.tail is not None:
            tail = self.tail[row].to(self.acts.device)
            if bool(tail.any()):
                inside = where & tail
                pools.append(inside if bool(inside.any()) else tail)
        acts = self.acts[row : row + 1].expand(len(pools), -1, -1)
        return span_mean(acts, torch.stack(pools), self.centre).cpu()
