"""One edit: the masked optimisation of W_m's k columns over the edit's rows (rows.py).

Only the k columns of the edit's mask are trained (a [d_out, k] parameter initialised from
W_m's current values there); the loss is cross-entropy on the target tokens only. Rows start
from cached contexts (see contexts.py) and the hidden states entering and leaving block L
with the memory off are computed once per edit; each step adds the memory term to block L's
output and runs blocks L+1.. and the LM head at the target positions only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .blockrun import capture, replay_from
from .config import MemoirConfig
from .rows import SHAPE_STEP, Batch
from .tophash import span_mean


CANDIDATE_STEP = 1024  # the candidate vocabulary is filled to a multiple of this (rows.SHAPE_STEP)


@dataclass
class TrainOutcome:
    columns: torch.Tensor  # trained W_m[:, idx], fp32 [d_out, k]
    steps: int
    loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False
    guard_scale: float = 1.0  # the guard's weight at the last step, as a share of config.protect


@dataclass
class Prepared:
    """What one edit computes once: activations entering the memory and block L's output, memory off."""

    batch: Batch
    acts: torch.Tensor  # [R, T, D]
    base_out: torch.Tensor  # [R, T, d_out]
    started: float
    after_logprobs: torch.Tensor | None = None  # [A, V] base model's log-probs after each target

    def features(self, row: int, length: int, centre: torch.Tensor | None = None,
                 keep: list[bool] | None = None) -> torch.Tensor:
        """Routing features of the first `length` own tokens of one row (of those `keep` marks,
        where given) -> [D] fp32 (tophash.span_mean)."""
        acts = self.acts[row : row + 1, :length]
        span = torch.ones(acts.shape[:2], dtype=torch.bool) if keep is None else torch.tensor([keep])
        return span_mean(acts, span, centre)[0].cpu()

    def first(self, n: int, step: int = SHAPE_STEP) -> "Prepared":
        """The first n rows' preparation alone (their continuation targets all come first)."""
        batch = self.batch.first(n, step)
        width = batch.input_ids.shape[1]
        after = self.after_logprobs
        if after is not None:
            after = after[: batch.after_rows.numel()]
        return Prepared(batch, self.acts[:n, :width], self.base_out[:n, :width], self.started, after)

    def extend(self, other: "Prepared") -> "Prepared":
        """Both preparations as one batch (rows of `other` after ours)."""
        t = max(self.acts.shape[1], other.acts.shape[1])
        pad = lambda x: F.pad(x, (0, 0, 0, t - x.shape[1]))  # noqa: E731
        after = [a for a in (self.after_logprobs, other.after_logprobs) if a is not None]
        return Prepared(self.batch.concat(other.batch), torch.cat([pad(self.acts), pad(other.acts)]),
                        torch.cat([pad(self.base_out), pad(other.base_out)]), self.started,
                        torch.cat(after) if after else None)


class Trainer:
    """Trains the k columns of one edit against the frozen model."""

    def __init__(self, model, blocks, down, layer: int, config: MemoirConfig):
        self.model = model
        self.backbone = model.base_model
        self.head = model.get_output_embeddings()
        self.blocks = blocks
        self.down = down
        self.layer = layer
        self.config = config

    def prepare(self, batch: Batch) -> Prepared:
        t0 = time.perf_counter()
        acts, base_out = capture(self.backbone, self.blocks, self.layer, self.down, **batch.inputs())
        prepared = Prepared(batch, acts, base_out, t0)
        if batch.after_rows.numel() and self.config.continuation_weight > 0:
            # The base model's next-token distribution after each target, from the rows that
            # train it only (the memory is off here: block L's output is the captured one).
            rows = batch.after_rows
            with torch.no_grad(), replay_from(self.blocks, self.layer, base_out.index_select(0, rows)):
                hidden = self.backbone(**batch.select(rows)).last_hidden_state
                logits = self.head(hidden[torch.arange(rows.numel()), batch.after_positions]).float()
            prepared.after_logprobs = logits.log_softmax(-1)
        return prepared

    def _hidden(self, prepared: Prepared, out: torch.Tensor) -> torch.Tensor:
        """Final hidden states at the target positions, then at the positions after the targets."""
        batch = prepared.batch
        # Replay reads the model's block list: nothing else may run the model until this
        # forward is done, which holds because callers only yield between steps.
        with replay_from(self.blocks, self.layer, out):
            hidden = self.backbone(**batch.inputs()).last_hidden_state
        rows = torch.cat([batch.rows, batch.after_rows])
        positions = torch.cat([batch.positions, batch.after_positions])
        return hidden[rows, positions]

    def optimise(self, prepared: Prepared, idx: torch.Tensor, start: torch.Tensor,
                 offset: torch.Tensor | None = None, deadline: float | None = None,
                 gate: torch.Tensor | None = None, const: torch.Tensor | None = None,
                 guard: torch.Tensor | None = None):
        """A generator: yields after each optimisation step and returns a TrainOutcome.

        `offset` [k] is subtracted from the activations before the memory reads them (the
        de-centred memory). The caller may use the model between yields (the server decodes).

        `gate` [R, k] (0/1) and `const` [R, T, d_out] let a row read the memory through another
        edit's mask: only the shared columns are trained for it, the other edit's own columns
        add a constant. Every step's softmax runs over the tokens that were in the top
        `vocab_candidates` at some trained position at the first step, and the targets; the
        whole vocabulary is scored once, without a graph, to pick them. The head's forward and
        backward over 49k tokens cost a third of a step on the default model, while the tokens
        left out hold a negligible share of the probability mass."""
        cfg = self.config
        batch = prepared.batch
        acts_k = prepared.acts.index_select(-1, idx.to(prepared.acts.device)).float()  # [R, T, k]
        if offset is not None:
            acts_k = acts_k - offset.to(acts_k.device)
        if gate is not None:
            acts_k = acts_k * gate.to(acts_k.device).unsqueeze(1)
        base_out = prepared.base_out
        base_out_f = base_out.float()
        if const is not None:
            base_out_f = base_out_f + const.to(base_out_f.device)
        start = start.detach().to(acts_k.device)
        cols = start.clone().requires_grad_(True)  # [d_out, k]
        if guard is not None:
            guard = guard.to(acts_k.device)
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam([cols], lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            opt = torch.optim.SGD([cols], lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
        n = batch.rows.numel()
        labels = batch.labels.to(base_out.device)
        after = prepared.after_logprobs
        head = None  # (weight rows, bias) of the candidate vocabulary once chosen
        own = batch.own.to(base_out.device)
        has_neighbours = bool((~own).any())
        losses: list[float] = []
        best = (float("inf"), cols.detach().clone())
        steps, converged_at = 0, None
        guard_scale = 1.0
        while True:
            hidden = self._hidden(prepared, (base_out_f + acts_k @ cols.T).to(base_out.dtype))
            n_all = hidden.shape[0]
            hidden = F.pad(hidden, (0, 0, 0, -n_all % SHAPE_STEP))  # zero rows, sliced off: shapes recur
            exact = None
            if head is None and cfg.vocab_candidates:
                # The whole vocabulary is scored once, without a graph: it picks the candidates and
                # gives the first step's exact loss; the gradient flows through the candidates only.
                with torch.no_grad():
                    full = self.head(hidden)[:n_all].float()
                    exact = F.cross_entropy(full[:n][own], labels[own])
                    top = full.topk(min(cfg.vocab_candidates, full.shape[-1]), dim=-1).indices
                    cand = _filled(torch.cat([top.flatten(), labels]).unique(), full.shape[-1])
                    bias = self.head.bias[cand] if getattr(self.head, "bias", None) is not None else None
                    head = (self.head.weight[cand], bias)
                    labels = torch.searchsorted(cand, labels)
                    if after is not None:
                        after = after[:, cand].log_softmax(-1)
                    del full
            all_logits = (self.head(hidden) if head is None else F.linear(hidden, *head))[:n_all].float()
            logits, after_logits = all_logits[:n], all_logits[n:]
            token_loss = F.cross_entropy(logits, labels, reduction="none")
            own_loss = token_loss[own].mean()
            loss = own_loss
            # early stop and reports use the new edit's targets (the first step's over the whole vocabulary)
            value = float(own_loss.detach() if exact is None else exact)
            neighbour_value = 0.0
            if has_neighbours:
                neighbour_loss = token_loss[~own].mean()
                neighbour_value = float(neighbour_loss.detach())
                loss = loss + neighbour_loss
            if after is not None:
                drift = F.kl_div(after_logits.log_softmax(-1), after, log_target=True, reduction="batchmean")
                loss = loss + cfg.continuation_weight * drift
            if guard is not None:
                if cfg.guard_yield_after and steps >= cfg.guard_yield_after \
                        and value > cfg.settle_ratio * cfg.stop_loss:
                    guard_scale *= cfg.guard_yield
                change = cols - start
                loss = loss + guard_scale * cfg.protect * ((change @ guard) * change).sum()
            losses.append(value)
            if value <= cfg.stop_loss and converged_at is None:
                converged_at = steps
            if value < best[0] or (value <= cfg.stop_loss and best[0] <= cfg.stop_loss):
                best = (value, cols.detach().clone())
            out_of_time = deadline is not None and time.perf_counter() > deadline
            # Neighbours may conflict with the new fact: once it holds, they get a few steps more.
            neighbours_done = neighbour_value <= cfg.neighbour_stop_loss or (
                converged_at is not None and steps - converged_at >= cfg.neighbour_extra_steps)
            if (value <= cfg.stop_loss and neighbours_done) or self._settled(steps, value) \
                    or steps >= cfg.max_steps or out_of_time or value != value:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([cols], cfg.grad_clip)
            opt.step()
            steps += 1
            yield
        loss_value, trained = best
        # Time spent at yields (the caller's work) is counted too: it is wall time per edit.
        return TrainOutcome(trained, steps, loss_value, losses, time.perf_counter() - prepared.started,
                            loss_value <= cfg.stop_loss or self._settled(steps, loss_value), guard_scale)

    def _settled(self, steps: int, loss: float) -> bool:
        """Close enough after settle_steps (a ratio, so a negative stop_loss still never stops)."""
        cfg = self.config
        return steps >= cfg.settle_steps and loss <= cfg.settle_ratio * cfg.stop_loss


def _filled(cand: torch.Tensor, vocab: int) -> torch.Tensor:
    """The sorted candidate ids and the lowest other ids, up to a multiple of CANDIDATE_STEP (all of
    the vocabulary where that is smaller). The fill only adds mass to the softmax's denominator."""
    size = min(vocab, -(-cand.numel() // CANDIDATE_STEP) * CANDIDATE_STEP)
    if size <= cand.numel():
        return cand
    free = torch.ones(vocab, dtype=torch.bool, device=cand.device)
    free[cand] = False
    return torch.cat([cand, free.nonzero()[: size - cand.numel(), 0]]).sort().values
