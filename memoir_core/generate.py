"""Batched generation with per-sequence routing and the decision fixed for every new token.

A `Decoder` owns one running batch. `add` prefills new sequences together (left-padded); the
memory layer reads each one's prompt-span activations in that same pass, routes it, and the
route (with W_m's columns frozen at that moment) is kept for all of its tokens. When the
cache allows it, new sequences join a batch that is already decoding (continuous batching).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from . import kvcache, packed
from .memory_layer import BatchRouting, Decide, Decision, ResidualMemory
from .sampling import SamplingParams, TokenLogprob
from .tokens import choose, prompt_scores

__all__ = ["Decoder", "Event", "GenSequence", "SamplingParams"]


@dataclass
class GenSequence:
    """One prompt being generated in the running batch (named apart from typing.Sequence)."""

    prompt_ids: list[int]
    span: tuple[int, int]
    params: SamplingParams
    tag: Any = None  # the caller's handle (a request id, a queue)
    decision: Decision | None = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""  # decoded output, cut at a stop string
    emitted: int = 0  # characters of `text` already handed out
    finish_reason: str | None = None
    generator: torch.Generator | None = None
    tail: tuple[int, int] | None = None  # the span's last sentence, also routed on (Encoded.tail)
    matcher: Any = None  # constraints.Matcher of an output constraint
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of out_ids, when params.logprobs is set
    prompt_logprobs: list[TokenLogprob] | None = None  # of prompt_ids (the first one's logprob is None)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class Event:
    sequence: GenSequence
    piece: str  # new text since the last event
    finished: bool
    logprobs: list[TokenLogprob] = field(default_factory=list)  # of the tokens since the last event


def holds(text: str, answer: str) -> bool:
    """Whether a text contains the answer, up to case and spacing."""
    return " ".join(answer.casefold().split()) in " ".join(text.casefold().split())


class Decoder:
    def __init__(self, model, layer: ResidualMemory, decide: Decide, encoder, max_batch: int = 16,
                 centre: torch.Tensor | None = None, release_after_answer: bool = False):
        self.model = model
        # Once a sequence's output holds its edit's answer, the memory lets go of it and the base
        # model writes the rest: past the target, the memory's pull repeats it ("Jane Roe, Jane Roe").
        self.release_after_answer = release_after_answer
        self.centre = centre  # routing features' pooling (BatchRouting.centre)
        self.layer = layer
        self.decide = decide
        self.encoder = encoder
        self.max_batch = max_batch
        self.device = next(model.parameters()).device
        self.eos = encoder.eos_ids
        self.running: list[GenSequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self._routing = BatchRouting()
        self._steps = packed.DecodeSteps(model)  # bf16 copies for one-token steps, where packing made them

    # -- scheduling -----------------------------------------------------------------------
    @property
    def room(self) -> int:
        if self.running and self._cache is not None and not kvcache.joinable(self._cache):
            return 0
        return self.max_batch - len(self.running)

    @torch.inference_mode()
    def add(self, sequences: list[GenSequence]) -> list[Event]:
        """Prefill `sequences` together, route each, sample its first token and join the batch."""
        if not sequences:
            return []
        if len(sequences) > self.room:
            raise RuntimeError("no room in the running batch")
        for seq in sequences:
            seq.params.validate()
            if seq.generator is None and seq.params.temperature > 0:
                seed = seq.params.seed if seq.params.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1
                seq.generator = torch.Generator(device=self.device).manual_seed(seed)
        width = max(len(s.prompt_ids) for s in sequences)
        ids = torch.full((len(sequences), width), self.encoder.pad_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        span = torch.zeros((len(sequences), width), dtype=torch.bool)
        active = torch.zeros((len(sequences), width), dtype=torch.bool)
        tail = torch.zeros((len(sequences), width), dtype=torch.bool)
        for i, s in enumerate(sequences):
            pad = width - len(s.prompt_ids)
            ids[i, pad:] = torch.tensor(s.prompt_ids)
            mask[i, pad:] = 1
            span[i, pad + s.span[0] : pad + s.span[1]] = True
            active[i, pad + s.span[0] :] = True
            if s.tail is not None:
                tail[i, pad + s.tail[0] : pad + s.tail[1]] = True
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp_min(0)
        cache = DynamicCache(config=self.model.config)
        routing = BatchRouting(decide=self.decide, span=span, active=active, centre=self.centre,
                          tail=tail if any(s.tail is not None for s in sequences) else None,
                          texts=[self.encoder.span_text(s.prompt_ids, s.span) for s in sequences],
                          span_ids=[s.prompt_ids[s.span[0] : s.span[1]] for s in sequences],
                          answer_at=_last_column(width, len(sequences)))
        with self.layer.use(routing):
            scored = any(s.params.prompt_logprobs is not None for s in sequences)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{kvcache.CACHE_KW: cache},
                             use_cache=True,
                             logits_to_keep=0 if scored else 1)
        if scored:
            prompt_scores(sequences, out.logits, width)
        for seq, decision in zip(sequences, routing.decisions):
            seq.decision = decision
        next_positions = mask.sum(1)
        if self.running:
            self._cache, self._mask = kvcache.join(self._cache, self._mask, cache, mask)
            self._positions = torch.cat([self._positions, next_positions])
            self._routing = self._routing.extend(routing)
        else:
            self._cache, self._mask, self._positions, self._routing = cache, mask, next_positions, routing
        self.running.extend(sequences)
        events = self._emit(sequences, out.logits[:, -1])
        self._release_answered()
        self._drop_finished()
        return events

    @torch.inference_mode()
    def run(self, sequences: list[GenSequence]) -> None:
        """Decode all of them to the end, admitting new ones as room frees (offline use)."""
        pending = list(sequences)
        while pending or self.running:
            room = self.room
            if pending and room:
                self.add(pending[:room])
                pending = pending[room:]
            else:
                self.step()

    def step(self) -> list[Event]:
        """One new token for every running sequence."""
        if not self.running:
            return []
        last = torch.tensor([[s.out_ids[-1]] for s in self.running], device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.running), 1))], dim=1)
        with self.layer.use(self._routing), self._steps:
            out = self.model(
                input_ids=last,
                attention_mask=self._mask,
                position_ids=self._positions.unsqueeze(1),
                **{kvcache.CACHE_KW: self._cache},
                use_cache=True,
            )
        self._positions = self._positions + 1
        events = self._emit(self.running, out.logits[:, -1])
        self._release_answered()
        self._drop_finished()
        return events

    def cancel(self, tag: Any) -> None:
        for seq in self.running:
            if seq.tag is tag:
                seq.finish_reason = "cancelled"
        self._drop_finished()

    # -- internals ------------------------------------------------------------------------
    def _emit(self, sequences: list[GenSequence], logits: torch.Tensor) -> list[Event]:
        events = []
        for seq, (tok, logprob) in zip(sequences, choose(logits, sequences, self.eos)):
            if tok is None:  # max_new_tokens 0: the prompt was only scored
                seq.finish_reason = "length"
                events.append(Event(seq, "", True))
                continue
            seq.out_ids.append(tok)
            event = self._advance(seq, tok)
            if logprob is not None and len(seq.out_ids) > len(seq.logprobs):  # not an end token dropped
                seq.logprobs.append(logprob)
                event.logprobs = [logprob]
            events.append(event)
        return events

    def _advance(self, seq: GenSequence, tok: int) -> Event:
        if (tok in self.eos and not seq.params.ignore_eos) or tok in seq.params.stop_token_ids:
            seq.out_ids.pop()
            seq.finish_reason = "stop"
        elif seq.matcher is not None and seq.matcher.done:  # the constrained output is complete
            seq.finish_reason = "stop"
        text = self.encoder.decode(seq.out_ids)
        for stop in seq.params.stop:
            at = text.find(stop)
            if at >= 0:
                text = text[:at]
                seq.finish_reason = "stop"
        if seq.finish_reason is None and len(seq.out_ids) >= seq.params.max_new_tokens:
            seq.finish_reason = "length"
        seq.text = text
        safe = len(text)
        if not seq.finished:
            if text.endswith("\ufffd"):  # half of a multi-byte character
                safe -= 1
            for stop in seq.params.stop:  # hold back what may be the start of a stop string
                for n in range(min(len(stop) - 1, len(text)), 0, -1):
                    if text.endswith(stop[:n]):
                        safe = min(safe, len(text) - n)
                        break
        piece = text[seq.emitted : max(safe, seq.emitted)]
        seq.emitted += len(piece)
        return Event(seq, piece, seq.finished)

    def _release_answered(self) -> None:
        """Rows whose output now holds their edit's answer go on without the memory (Route.answer);
        their decision, as reported, stays the one made at prefill."""
        if not self.release_after_answer:
            return
        rows = [i for i, (seq, d) in enumerate(zip(self.running, self._routing.decisions, strict=True))
                if d.route is not None and d.route.answer and not seq.finished and holds(seq.text, d.route.answer)]
        if rows:
            self._routing = self._routing.released(rows)

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self.running) if not s.finished]
        if len(keep) == len(self.running):
            return
        self.running = [self.running[i] for i in keep]
        if not keep:
            self._cache = self._mask = self._positions = None
            self._routing = BatchRouting()
            return
        rows = torch.tensor(keep, device=self.device)
        self._cache, self._mask = kvcache.select(self._cache, self._mask, rows)
        self._positions = self._positions.index_select(0, rows)
        self._routing = self._routing.select(keep)


def _last_column(width: int, rows: int) -> torch.Tensor:
    """[rows, width] bool, true at the last position: prompts are left-padded, so every row's
    last token, where its answer's first token is read, sits there."""
    at = torch.zeros((rows, width), dtype=torch.bool)
    at[:, -1] = True
    return at
