"""How a Memoir routes: the features of a prompt, its mask, the best stored match, the decision.

A mixin of Memoir (memoir.py), kept apart because routing reads the memory and never changes
it. It uses the Memoir's model, basis, hashes, banks, weights and edits.
"""

from __future__ import annotations

import torch

from .blockrun import capture
from .maskbank import Match
from .memory import Decision, Route
from .prompts import Encoded
from .tophash import span_mean

ROUTE_CACHE_BYTES = 1 << 30  # the frozen columns of recently routed edits kept between requests


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

    def decide(self, features: torch.Tensor, tails: tuple[list[int], torch.Tensor] | None = None) -> list[Decision]:
        """Routing of a batch from its prompt features: the best stored mask, on if its overlap
        reaches tau and beats the gap_rank-th best by min_gap. `tails` (rows, features of their
        last sentence) are a second way in: a question after some context ("A Marañón Week is
        held since 1990. Howard Glacier is in") is routed on the question when that matches
        better (config tail_routing)."""
        tau = self.tau
        matches = self.best(self.tophash.masks(features).numpy())
        if tails is not None and self.config.tail_routing:
            rows, tail_features = tails
            for row, match in zip(rows, self.best(self.tophash.masks(tail_features).numpy())):
                full = matches[row]
                if self.switches_on(match, tau) and (not self.switches_on(full, tau) or match.overlap > full.overlap):
                    matches[row] = match
        decisions = []
        for match in matches:
            route = None
            if self.switches_on(match, tau):
                route = self._route(match.edit_id)
            decisions.append(Decision(route, match.edit_id, match.overlap, self.version))
        return decisions

    @property
    def tau(self) -> float:
        """The routing threshold at the current bank size."""
        return self.config.tau_at(len(self.edits))

    def _decide_off(self, features: torch.Tensor, tails=None) -> list[Decision]:
        return [Decision(None, None, 0.0, self.version) for _ in range(features.shape[0])]

    def _route(self, edit_id: str) -> Route:
        route = self._routes.pop(edit_id, None)
        if route is None:
            rec = self.edits[edit_id]
            idx = rec.idx.to(self.device)
            cols = self.weights.columns(idx).T.contiguous()
            route = Route(edit_id, self.version, idx, cols, self._offset(idx))
        self._routes[edit_id] = route  # the most recently used last
        # A route holds k x d_out fp32 columns: 1 MB on the default model, 64 MB on an 8B one,
        # where a cache of every edit ever routed to would fill a GPU. The least recently used
        # go first; sequences still running keep theirs.
        limit = max(1, ROUTE_CACHE_BYTES // max(1, route.cols.nbytes))
        while len(self._routes) > limit:
            del self._routes[next(iter(self._routes))]
        return route
