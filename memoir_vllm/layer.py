"""The memory on vLLM's down projection: out += (a[:, idx] - offset) @ cols on a routed request's tokens.

The same arithmetic as memoir_core.memory_layer.ResidualMemory, on vLLM's flattened token axis
instead of a padded [B, T] batch. Requests that carry no route get the base layer's output
untouched (bit-identical to plain vLLM); a batch with no routed request costs one dictionary
scan per step.

As in memoir's own decoder:
  - the memory acts from the routed span's start on (RouteTag.start): what comes before it (a
    chat template's system prompt) is read as the base model reads it;
  - a request keeps its decision (edit and version) for all of its tokens;
  - with release after the answer, once a request's output holds the edit's target the memory
    lets go of it for the rest of its tokens (generate.Decoder._release_answered). That point is
    kept as a position, so a preempted request recomputed from its tokens gets the same KV.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from memoir_core.generate import holds

from .batch import BatchView, Slot
from .routes import RouteTable, StoredRoute
from .tags import RouteTag


@dataclass
class _Running:
    """What the layer keeps of one routed request between steps."""

    tag: RouteTag
    checked: int = 0  # output tokens already looked at for the answer
    release: int | None = None  # first position the memory no longer acts on


class MemoryProjection(nn.Module):
    # vLLM may hand a down projection a pre-quantised activation (fusion/quant_activation.py);
    # the memory reads the plain one
    requires_unquantized_input = True

    def __init__(self, base_layer: nn.Module, view: BatchView, table: RouteTable,
                 decode: Callable[[list[int]], str] | None):
        super().__init__()
        self.base_layer = base_layer
        self.view = view
        self.table = table
        self.decode = decode  # token ids -> text, for release after the answer; None: never released
        self._running: dict[str, _Running | None] = {}  # per request in the batch; None: no route

    def forward(self, x: torch.Tensor):
        out = self.base_layer(x)
        groups = self._groups(x.shape[0])
        if not groups:
            return out
        y, bias = out if isinstance(out, tuple) else (out, None)
        for route, tokens, answers in groups:
            index = torch.tensor(tokens, device=x.device)
            picked = x.index_select(0, index).index_select(-1, route.idx).float()
            if route.offset is not None:
                picked = picked - route.offset
            if answers and route.key is not None:
                rows, which = zip(*answers)
                picked[torch.tensor(rows, device=x.device)] = route.key[torch.tensor(which, device=x.device)]
            y = y.index_add(0, index, (picked @ route.cols).to(y.dtype))
        return (y, bias) if isinstance(out, tuple) else y

    def _groups(self, num_tokens: int) -> list[tuple[StoredRoute, list[int], list[tuple[int, int]]]]:
        """(route, flattened token indices, answers) per route acting in this step: requests on
        the same edit and version share one gather, as in BatchRouting.groups. answers: (place in
        the token list, answer key) of each prompt's last token in this step that reads a key."""
        slots = self.view.slots(num_tokens)
        self._forget({s.req_id for s in slots})
        by_key: dict[tuple[str, int], list[int]] = {}
        answers: dict[tuple[str, int], list[tuple[int, int]]] = {}
        for slot in slots:
            running = self._state(slot)
            if running is None:
                continue
            route = self.table.get(running.tag.key)
            self._check_answer(running, slot, route)
            # positions [start, release) of the prompt and output take the memory
            first = slot.begin + max(0, running.tag.start - slot.position)
            last = slot.end if running.release is None else \
                min(slot.end, slot.begin + max(0, running.release - slot.position))
            if first < last:
                tokens = by_key.setdefault(running.tag.key, [])
                # the prompt's last token, where the answer's first token is read
                at = slot.begin + slot.prompt_len - 1 - slot.position
                if running.tag.answer_key >= 0 and first <= at < last:
                    answers.setdefault(running.tag.key, []).append((len(tokens) + at - first, running.tag.answer_key))
                tokens.extend(range(first, last))
        return [(self.table.get(key), tokens, answers.get(key, [])) for key, tokens in by_key.items()]

    def _state(self, slot: Slot) -> _Running | None:
        if slot.req_id not in self._running:
            tag = RouteTag.from_extra_args(slot.extra_args)
            self._running[slot.req_id] = None if tag is None else _Running(tag)
        return self._running[slot.req_id]

    def _check_answer(self, running: _Running, slot: Slot, route: StoredRoute) -> None:
        """The memory lets go after the first output token whose text holds the answer: that
        token is read without it (as the builtin decoder releases a row before its next step)."""
        if self.decode is None or not route.answer or running.release is not None:
            return
        out = slot.output_token_ids
        for n in range(running.checked + 1, len(out) + 1):
            if holds(self.decode(out[:n]), route.answer):
                running.release = slot.prompt_len + n - 1
                break
        running.checked = len(out)

    def _forget(self, running: set[str]) -> None:
        """Drop what is kept for requests that left the batch (finished, aborted, not scheduled
        this step): it is rebuilt from the request's tokens when it comes back."""
        if len(self._running) > len(running):
            for req_id in [r for r in self._running if r not in running]:
                del self._running[req_id]
