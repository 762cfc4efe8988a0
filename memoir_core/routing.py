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
        pad = self.encoder.pad_id
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            width = max(len(e.ids) for e in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            span = torch.zeros((len(chunk), width), dtype=torch.bool)
            for i, e in enumerate(chunk):
                ids[i, : len(e.ids)] = torch.tensor(e.ids)
                mask[i, : len(e.ids)] = 1
                span[i, e.span[0] : e.span[1]] = True
            acts, _ = capture(self.model.base_model, self.blocks, self.config.layer, self.layer,
                              input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            out.append(span_mean(acts, span, centre).cpu())
        return torch.cat(out)

    def route_prompts(self, prompts: list[str | Encoded], batch_size: int = 16) -> list[Decision]:
        """The routing decision of each prompt, as generation would make it (no tokens generated)."""
        encoded = [p if isinstance(p, Encoded) else self.encoder.plain(p) for p in prompts]
        decisions: list[Decision] = []
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            rows = [i for i, e in enumerate(chunk) if e.tail is not None]
            tails = (rows, self.features([Encoded(chunk[i].ids, chunk[i].tail) for i in rows])) if rows else None
            texts = [self.encoder.span_text(e.ids, e.span) for e in chunk]
            decisions += self.decide(self.features(chunk), tails, texts=texts)
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
               texts: list[str] | None = None) -> list[Decision]:
        """Routing of a batch from its prompt features (and, for subject routing, the text of
        each prompt's span).

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
        named = self._named(texts, masks, dict(zip(tail_rows, tail_masks if tail_masks is not None else [])))
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

    def _named(self, texts: list[str] | None, masks, tail_masks: dict) -> list[tuple[Match, bool] | None]:
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
            kept = [(overlap, e) for overlap, e in scored if not self.asks_else(e, queries, overlap)]
            overlap, edit_id = max(kept or scored)
            out.append((Match(edit_id, overlap), not kept))
        return out

    def asks_else(self, edit_id: str, queries, overlap: float) -> bool:
        """Whether a prompt (its masks `queries`) that scores `overlap` with an edit matches one of
        the edit's other questions about its subject more than config.other_question_lead above
        that: "Where is Acme located?" beside an edit of "Who is the CEO of Acme?"."""
        lead = self.config.other_question_lead
        rec = self.edits.get(edit_id)
        if lead is None or rec is None or not len(rec.avoid):
            return False
        best = max(int(bitmasks.overlaps(rec.avoid, q).max()) for q in queries)
        return best / self.config.k > overlap + lead

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

    def _decide_off(self, features: torch.Tensor, tails=None, texts=None) -> list[Decision]:
        return [Decision(None, None, 0.0, self.version) for _ in range(features.shape[0])]

    def _route(self, edit_id: str) -> Route:
        return self.memory.route(edit_id, self._offset)
