"""How a Memoir routes: the features of a prompt, its mask, the best stored match, the decision.

A mixin of Memoir (memoir.py), kept apart because routing reads the memory and never changes
it. It uses the Memoir's model, basis, hashes and memory (memorystate.Memory: banks, weights,
edits, the route cache).
"""

from __future__ import annotations

import numpy as np
import torch

from . import bitmasks
from .blockrun import capture
from .maskbank import Match
from .memory_layer import Decision, Route
from .prompts import Encoded
from .relation import PromptActs, name_free
from .tophash import span_mean


class Routing:
    @property
    def pool_centre(self) -> torch.Tensor | None:
        """What routing features weigh tokens against (tophash.span_mean); None: a plain mean."""
        if self.basis is None or self.config.pool != "norm":
            return None
        return self.basis.background_mean

    @torch.inference_mode()
    def features(self, encoded: list[Encoded], batch_size: int = 16, centre: torch.Tensor | None | str = "basis"
                 ) -> torch.Tensor:
        """Features of the activations entering the memory over each text's span -> [B, D] fp32
        (memory off). centre "basis": pooled as config.pool says (routing features); None: the
        plain mean (the columns an edit trains); a tensor: weighed against it (tophash.span_mean)."""
        if isinstance(centre, str):
            centre = self.pool_centre
        out = []
        for start in range(0, len(encoded), batch_size):
            acts = self.prompt_acts(encoded[start : start + batch_size], centre)
            out.append(span_mean(acts.acts, acts.span, centre).cpu())
        return torch.cat(out)

    def prompt_acts(self, chunk: list[Encoded], centre: torch.Tensor | None) -> PromptActs:
        """The activations entering the memory for a batch of prompts (memory off)."""
        pad = self.encoder.pad_id
        width = max(len(e.ids) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        span = torch.zeros((len(chunk), width), dtype=torch.bool)
        tail = torch.zeros((len(chunk), width), dtype=torch.bool)
        for i, e in enumerate(chunk):
            ids[i, : len(e.ids)] = torch.tensor(e.ids)
            mask[i, : len(e.ids)] = 1
            span[i, e.span[0] : e.span[1]] = True
            if e.tail is not None:
                tail[i, e.tail[0] : e.tail[1]] = True
        acts, _ = capture(self.model.base_model, self.blocks, self.config.layer, self.layer,
                          input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
        return PromptActs(acts, span.to(acts.device), tail.to(acts.device) if bool(tail.any()) else None, centre,
                          [e.ids[e.span[0] : e.span[1]] for e in chunk])

    @torch.inference_mode()
    def route_prompts(self, prompts: list[str | Encoded], batch_size: int = 16) -> list[Decision]:
        """The routing decision of each prompt, as generation would make it (no tokens generated)."""
        encoded = [p if isinstance(p, Encoded) else self.encoder.plain(p) for p in prompts]
        decisions: list[Decision] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            acts = self.prompt_acts(chunk, self.pool_centre)
            rows = [i for i, e in enumerate(chunk) if e.tail is not None]
            tails = (rows, span_mean(acts.acts[rows], acts.tail[rows], acts.centre).cpu()) if rows else None
            texts = [self.encoder.span_text(e.ids, e.span) for e in chunk]
            decisions += self.decide(span_mean(acts.acts, acts.span, acts.centre).cpu(), tails, texts=texts, acts=acts)
        return decisions

    def masks(self, encoded: list[Encoded]) -> torch.Tensor:
        return self.tophash.masks(self.features(encoded))

    def best(self, masks) -> list:
        """Best match of each mask [B, k] among the edits' masks and their extra routing keys
        (a key's overlap counts config.key_margin less: its score, not its raw overlap)."""
        primary = self.bank.best(masks, rank=self.config.gap_rank)
        if not len(self.keybank):
            return primary
        margin = self.config.key_margin
        # the runner-up stays the edits' own masks': a key is an edit's second way in, not a rival
        keyed = [Match(b.edit_id, b.overlap - margin, a.runner_up) if b.edit_id is not None else a
                 for a, b in zip(primary, self.keybank.best(masks))]
        return [a if a.overlap >= b.overlap else b for a, b in zip(primary, keyed)]

    def switches_on(self, match: Match, tau: float) -> bool:
        """On: the best match reaches tau and stands out from the crowd (config.min_gap)."""
        return match.edit_id is not None and match.overlap >= tau and \
            match.overlap - match.runner_up >= self.config.min_gap

    def decide(self, features: torch.Tensor, tails: tuple[list[int], torch.Tensor] | None = None,
               texts: list[str] | None = None, acts: PromptActs | None = None) -> list[Decision]:
        """Routing of a batch from its prompt features (and, for subject routing, the text of
        each prompt's span; for relation masks, the prefill's activations).

        An edit that knows its subject (subjects.py) is reached only by a prompt that names it,
        at a mask overlap of at least subject_tau; among the edits a prompt names, the best
        overlap wins. Other edits route on masks alone: the best stored mask, on if its overlap
        reaches tau and beats the gap_rank-th best by min_gap. `tails` (rows, features of their
        last sentence) are a second way in: a question after some context ("A Marañón Week is
        held since 1990. Howard Glacier is in") is routed on the question when that matches
        better (config tail_routing)."""
        tau = self.tau
        masks = self.tophash.masks(features).numpy()
        matches = self.best(masks)
        tail_rows, tail_masks = [], None
        if tails is not None and self.config.tail_routing:
            tail_rows, tail_features = tails
            tail_masks = self.tophash.masks(tail_features).numpy()
            for row, match in zip(tail_rows, self.best(tail_masks)):
                full = matches[row]
                if self.switches_on(match, tau) and (not self.switches_on(full, tau) or match.overlap > full.overlap):
                    matches[row] = match
        named = self._named(texts, masks, dict(zip(tail_rows, tail_masks if tail_masks is not None else [])), acts)
        decisions = []
        for row, match in enumerate(matches):
            route = None
            if named[row] is not None:
                match, asks_else = named[row]
                if match.overlap >= self.config.subject_tau and not asks_else:
                    route = self._route(match.edit_id)
            elif self.switches_on(match, tau) and match.edit_id not in self.subjects:
                route = self._route(match.edit_id)
            decisions.append(Decision(route, match.edit_id, match.overlap, self.version))
        return decisions

    def _named(self, texts: list[str] | None, masks, tail_masks: dict, acts: PromptActs | None = None
               ) -> list[tuple[Match, bool] | None]:
        """Per row, the best-overlapping edit among those whose subject the row's text names
        (its overlap: the better of the whole span's and its last sentence's) and that the row
        does not ask something else of (`asks_else`), and whether it asks something else of every
        one of them (then the memory stays off); None where the text names no stored subject."""
        if texts is None or not len(self.subjects):
            return [None] * len(masks)
        out = []
        for row, text in enumerate(texts):
            ids = self.subjects.named_in(text)
            if not ids:
                out.append(None)
                continue
            queries = [masks[row]] + ([tail_masks[row]] if row in tail_masks else [])
            scored = [(max(self.overlap_with(e, q) for q in queries), e) for e in sorted(ids)]
            relations = _Relations(self, acts, row, text, len(queries))
            kept = [(overlap, e) for overlap, e in scored if not self.asks_else(e, queries, overlap, relations(e))]
            overlap, edit_id = max(kept or scored)
            out.append((Match(edit_id, overlap), not kept))
        return out

    def asks_else(self, edit_id: str, queries, overlap: float, relations: list | None = None) -> bool:
        """Whether a prompt (its masks `queries`) that scores `overlap` with an edit asks one of the
        edit's other questions about its subject: "Where is Acme located?" beside an edit of "Who
        is the CEO of Acme?". Its lead is how much better it matches the nearest other question
        than the edit. With the prompt's relation masks (`relations`, relation.py) and the edit's,
        the leads on both add up, and the edit stays off past config.relation_lead; otherwise past
        config.other_question_lead on whole masks alone."""
        lead = self.config.other_question_lead
        rec = self.edits.get(edit_id)
        if lead is None or rec is None or not len(rec.avoid):
            return False
        k = self.config.k
        ahead = max(int(bitmasks.overlaps(rec.avoid, q).max()) for q in queries) / k - overlap
        if relations is None or self.config.relation_lead is None or not len(rec.avoid_relation) \
                or not len(rec.own_relation):
            return ahead > lead
        own, margin = rec.own_relation, self.config.key_margin
        score = max(max([int(bitmasks.overlaps(own[:1], q)[0]) / k]
                        + [o / k - margin for o in bitmasks.overlaps(own[1:], q).tolist()]) for q in relations)
        other = max(int(bitmasks.overlaps(rec.avoid_relation, q).max()) for q in relations) / k
        return ahead + other - score > self.config.relation_lead

    def overlap_with(self, edit_id: str, mask) -> float:
        """A mask's score against one stored edit: its own mask's overlap, or a routing key's
        less key_margin, whichever is higher."""
        own = self.bank.overlap_of(edit_id, mask)
        if edit_id in self.keybank:
            own = max(own, self.keybank.overlap_of(edit_id, mask) - self.config.key_margin)
        return own

    @property
    def tau(self) -> float:
        """The routing threshold at the current bank size."""
        return self.config.tau_at(len(self.edits))

    def _decide_off(self, features: torch.Tensor, tails=None, texts=None, acts=None) -> list[Decision]:
        return [Decision(None, None, 0.0, self.version) for _ in range(features.shape[0])]

    def _route(self, edit_id: str) -> Route:
        return self.memory.route(edit_id, self._offset, answer_key=self.config.answer_key)


class _Relations:
    """A row's relation masks for each edit it names, made on first use and shared by the edits
    whose names cover the same characters of the row."""

    def __init__(self, routing: Routing, acts: PromptActs | None, row: int, text: str, n: int):
        self.routing, self.acts, self.row, self.text, self.n = routing, acts, row, text, n
        self.made: dict[tuple, list] = {}

    def __call__(self, edit_id: str) -> list | None:
        """The row's relation masks (its span's, then its last sentence's where it is routed on
        too) without the characters naming the edit's subject; None where they cannot be read."""
        rec = self.routing.edits.get(edit_id)
        if self.acts is None or rec is None or not len(rec.avoid_relation) \
                or self.routing.config.relation_lead is None:
            return None
        subjects = self.routing.subjects
        spans = tuple(subjects.spans(edit_id, self.text))
        if spans not in self.made:
            ids = self.acts.ids[self.row]
            keep = name_free(self.routing.encoder, ids, lambda _: list(spans))  # the text is self.text
            features = self.acts.relation(self.row, keep)[: self.n]
            self.made[spans] = list(self.routing.tophash.masks(features).numpy())
        return self.made[spans]
