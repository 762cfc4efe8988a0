"""The residual-memory layer: wraps the MLP output projection of one block, PEFT style.

    out = base_layer(a) + W_m[:, idx] @ a[idx]     for sequences whose memory is on
    out = base_layer(a)                            otherwise (bit-identical: nothing is added)

At a routed prompt's last token, whose output is the answer's first token, a[idx] is the
edit's answer key instead (the input its own prompt had there, in the prompt's form: bare or
templated): what the memory says there is what the edit trained, however the prompt is worded.

The layer holds no memory and no per-request state of its own. For the length of one batch a
`BatchRouting` is attached to it: at prefill the layer reports each sequence's mean activation
over its prompt span to the routing's decide function (the mask of a text is read from the
very activations the forward pass computes, so routing costs no extra pass), and from then on
it applies the routes that came back, with the columns they froze at prefill.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .relation import PromptActs
from .tophash import span_mean


@dataclass
class Route:
    """The memory of one sequence: the matched edit's columns, frozen at prefill."""

    edit_id: str
    version: int
    idx: torch.Tensor  # [k] column indices of the matched edit's stored mask
    cols: torch.Tensor  # [k, d_out] fp32: W_m[:, idx].T at the version the sequence started at
    offset: torch.Tensor | None = None  # [k] subtracted from a[idx] first (de-centred memory)
    answer: str | None = None  # the edit's target: the decoder may let go once the output holds it
    # [n, k] the edit's answer keys less offset (records.EditRecord.answer_keys: the plain
    # prompt's, then the chat form's where it has one), read in place of a[idx] - offset at the
    # prompt's last token; None: that token's own input is read
    key: torch.Tensor | None = None

    def key_row(self, templated: bool) -> int:
        """The row of `key` a prompt's last token reads: the plain form's for a bare prompt, the
        templated form's for one that ends past its span (a chat template); -1: its own input
        (no key of that form). Both engines choose through this."""
        if self.key is None:
            return -1
        if not templated:
            return 0
        return 1 if self.key.shape[0] > 1 else -1


@dataclass
class Decision:
    """What routing decided for one sequence (route None: memory off)."""

    route: Route | None
    best_edit_id: str | None
    best_overlap: float
    version: int


# decide(features [B, D], tails, texts, acts): tails, where some rows hold several sentences, is
# (rows, their last sentence's features [n, D]): a second way in for those rows; texts, each row's
# span as text, for subject routing; acts (relation.PromptActs), for relation masks
Decide = Callable[..., list[Decision]]


@dataclass
class BatchRouting:
    """Per-row memory decisions of one running batch."""

    decide: Decide | None = None  # called once, at prefill, with features [B, D]
    span: torch.Tensor | None = None  # [B, T] bool: the tokens whose mean makes the mask
    # [B, T] bool, prefill only: where the memory acts (from the prompt span on). What precedes
    # the prompt (a chat template's system prompt) is read as the base model reads it.
    active: torch.Tensor | None = None
    centre: torch.Tensor | None = None  # [D]: norm-weighted features (tophash.span_mean); None: plain mean
    tail: torch.Tensor | None = None  # [B, T] bool, prefill only: the span's last sentence, where it has several
    texts: list[str] | None = None  # prefill only: each row's span as text (subject routing)
    span_ids: list[list[int]] | None = None  # prefill only: each row's span tokens (relation masks)
    # [B, T] bool, prefill only: each row's answer position (the prompt's last token, whose
    # output is the answer's first token), where a route's answer key is read
    answer_at: torch.Tensor | None = None
    decisions: list[Decision] = field(default_factory=list)
    _groups: list[tuple] | None = None

    @classmethod
    def fixed(cls, decisions: Sequence[Decision]) -> "BatchRouting":
        return cls(decisions=list(decisions))

    @property
    def pending(self) -> bool:
        return self.decide is not None

    def resolve(self, acts: torch.Tensor) -> torch.Tensor | None:
        """Decide every row from its prompt features; returns the prefill's active mask (used once)."""
        features = span_mean(acts, self.span, self.centre)
        rows = [] if self.tail is None else self.tail.any(dim=1).nonzero()[:, 0].tolist()
        tails = None
        if rows:
            index = torch.tensor(rows, device=acts.device)
            tails = (rows, span_mean(acts.index_select(0, index), self.tail[rows], self.centre))
        prompt_acts = None if self.span_ids is None else \
            PromptActs(acts, self.span, self.tail, self.centre, self.span_ids)
        extra = {} if prompt_acts is None else {"acts": prompt_acts}
        self.decisions = self.decide(features, *([tails] if tails else []), texts=self.texts, **extra)
        active = self.active
        self.decide = self.span = self.active = self.tail = self.texts = self.span_ids = None
        self.answer_at = None
        self._groups = None
        return active

    def select(self, rows: Sequence[int]) -> "BatchRouting":
        return BatchRouting.fixed([self.decisions[i] for i in rows])

    def released(self, rows: Sequence[int]) -> BatchRouting:
        """The same decisions with the memory off from now on for these rows (their answer is out)."""
        rows = set(rows)
        return BatchRouting.fixed([dataclasses.replace(d, route=None) if i in rows else d
                              for i, d in enumerate(self.decisions)])

    def extend(self, other: "BatchRouting") -> "BatchRouting":
        return BatchRouting.fixed(self.decisions + other.decisions)

    def groups(self, device: torch.device):
        """(route, rows or None for all, idx, cols, offset, key) per distinct route, the tensors on
        `device`: rows that share a route share one gather."""
        if self._groups is None:
            by_route: dict[int, list[int]] = {}
            routes: dict[int, Route] = {}
            for row, decision in enumerate(self.decisions):
                if decision.route is not None:
                    key = id(decision.route)
                    by_route.setdefault(key, []).append(row)
                    routes[key] = decision.route
            groups = []
            n = len(self.decisions)
            for key, rows in by_route.items():
                route = routes[key]
                row_index = None if len(rows) == n else torch.tensor(rows, device=device)
                offset = None if route.offset is None else route.offset.to(device)
                key = None if route.key is None else route.key.to(device)
                groups.append((route, row_index, route.idx.to(device), route.cols.to(device), offset, key))
            self._groups = groups
        return self._groups


class ResidualMemory(nn.Module):
    """The wrapper has an inverse, as PEFT's do: disable() leaves the base layer's output alone
    until enable(), and detach() puts the base layer back in the model."""

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        self.base_layer = base_layer
        self.routing: BatchRouting | None = None
        self.enabled = True

    def enable(self) -> None:
        self.enabled = True

    def disable(self) -> None:
        """Nothing is added while disabled; routing still decides at prefill, so a batch decodes as
        usual and its decisions say where the memory would have acted."""
        self.enabled = False

    def detach(self, root: nn.Module) -> nn.Module:
        """Put the wrapped layer back where this wrapper sits in `root`; returns it. The model is
        then the one the wrapper was given (a Memoir on it must not be used any more)."""
        for name, module in root.named_modules():
            if module is self and name:
                parent, _, leaf = name.rpartition(".")
                setattr(root.get_submodule(parent) if parent else root, leaf, self.base_layer)
                self.routing = None
                return self.base_layer
        raise ValueError("this memory layer is not in the given model")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        routing = self.routing
        if routing is None:
            return out
        answer_at = routing.answer_at if routing.pending else None
        if answer_at is not None:
            # a prompt whose last token lies past its span ends in a template (chat): it reads the
            # templated form's key, a bare prompt the plain one
            templated = ~(answer_at & routing.span).any(dim=1)
        active = routing.resolve(x) if routing.pending else None
        if not self.enabled:
            return out
        for route, rows, idx, cols, offset, key in routing.groups(x.device):
            xs = x if rows is None else x.index_select(0, rows)
            picked = xs.index_select(-1, idx).float()
            picked = picked if offset is None else picked - offset
            if key is not None and answer_at is not None:
                # [rows] the key each row reads at its answer position, -1 for its own input
                form = templated if rows is None else templated.index_select(0, rows.cpu())
                which = torch.tensor([route.key_row(t) for t in form.tolist()])
                at = answer_at if rows is None else answer_at.index_select(0, rows.cpu())
                at = (at & (which >= 0).unsqueeze(1)).to(x.device)
                picked = torch.where(at.unsqueeze(-1), key[which.clamp_min(0).to(x.device)].unsqueeze(1), picked)
            delta = picked @ cols
            if active is not None:
                on = active.to(x.device) if rows is None else active.to(x.device).index_select(0, rows)
                delta = delta * on.unsqueeze(-1)
            delta = delta.to(out.dtype)
            if rows is None:
                out = out + delta
            else:
                out = out.index_add(0, rows, delta)
        return out

    @contextmanager
    def use(self, routing: BatchRouting | None):
        previous, self.routing = self.routing, routing
        try:
            yield routing
        finally:
            self.routing = previous
