"""One edit: its training rows, and the masked optimisation of W_m's k columns.

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
from transformers import DynamicCache

from .blockrun import capture, replay_from
from .config import MemoirConfig
from .contexts import ContextCache
from .prompts import PromptEncoder


@dataclass(frozen=True)
class Row:
    context: int  # index into the ContextCache (0: none)
    tokens: list[int]  # the row's own tokens before the target (the memory acts on these)
    target: list[int]
    # None: the memory reads the new edit's columns. An edit id: the row is read through that
    # edit's mask instead, so only the shared columns are trained for it (co-training, below).
    route: str | None = None


def training_contexts(encoder: PromptEncoder, prefixes: list[str], chat: bool) -> list[list[int]]:
    """[none, each prefix, chat preamble]: the contexts every edit's rows start with."""
    contexts = [[]] + [encoder.plain(p).ids for p in prefixes]
    if chat and encoder.has_chat:
        enc = encoder.chat([{"role": "user", "content": "PLACEHOLDER"}])
        contexts.append(enc.ids[: enc.span[0]])
    return contexts


def build_rows(encoder: PromptEncoder, contexts: ContextCache, prompt: str, target: str, n_prefixes: int, *,
               chat: bool, rephrases: tuple[str, ...] = ()) -> list[Row]:
    """The plain row, one row per prefix, one per given paraphrase, and the chat-templated row."""
    target_ids = encoder.target(target)
    rows = [Row(0, encoder.plain(prompt).ids, target_ids)]
    cont = encoder.tokenizer(" " + prompt, add_special_tokens=False).input_ids
    rows += [Row(1 + i, cont, target_ids) for i in range(n_prefixes)]
    rows += [Row(0, encoder.plain(p).ids, target_ids) for p in rephrases]
    if chat and encoder.has_chat:
        enc = encoder.chat([{"role": "user", "content": prompt}])
        preamble = contexts.index(enc.ids[: enc.span[0]])
        chat_target = encoder.target(target, after_chat=True)
        if preamble is not None:
            rows.append(Row(preamble, enc.ids[enc.span[0]:], chat_target))
        else:  # a template whose preamble depends on the message: no cached context
            rows.append(Row(0, enc.ids, chat_target))
    return rows


@dataclass
class Batch:
    input_ids: torch.Tensor  # [R, T] the rows' own tokens, right-padded
    attention_mask: torch.Tensor  # [R, P + T] context (left-padded) then own tokens
    position_ids: torch.Tensor  # [R, T]
    context: list[tuple[torch.Tensor, torch.Tensor]] | None  # per-layer cached K, V [R, H, P, d]
    rows: torch.Tensor  # [N] row of each predicted target token
    positions: torch.Tensor  # [N] position (in own tokens) whose output predicts it
    labels: torch.Tensor  # [N]
    # Per row, the position right after its target: there the edited model should go on as
    # the base model would (this keeps "Jane Roe" from becoming "Jane Roe Roe Roe").
    after_rows: torch.Tensor
    after_positions: torch.Tensor

    def inputs(self) -> dict:
        cache = DynamicCache(ddp_cache_data=self.context) if self.context is not None else None
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                    cache=cache, use_cache=cache is not None)


def collate(rows: list[Row], contexts: ContextCache, pad_id: int, device, after: bool = True) -> Batch:
    # Positions past the last target token never influence the loss; the last target token is
    # input only when the position after the target is trained too.
    cut = 0 if after else 1
    width = max(len(r.tokens) + len(r.target) - cut for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    own_mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    row_of, pos_of, labels, after_rows, after_pos = [], [], [], [], []
    for i, r in enumerate(rows):
        seq = r.tokens + r.target
        seq = seq[: len(seq) - cut]
        ids[i, : len(seq)] = torch.tensor(seq)
        own_mask[i, : len(seq)] = 1
        start = contexts.length(r.context)
        positions[i] = torch.arange(start, start + width)
        for j, tok in enumerate(r.target):
            row_of.append(i)
            pos_of.append(len(r.tokens) + j - 1)
            labels.append(tok)
        if after and r.route is None:
            after_rows.append(i)
            after_pos.append(len(seq) - 1)
    kv, ctx_mask = contexts.batch([r.context for r in rows])
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return Batch(ids.to(device), torch.cat([ctx_mask, own_mask], dim=1).to(device), positions.to(device), kv,
                 t(row_of), t(pos_of), t(labels), t(after_rows), t(after_pos))


@dataclass
class TrainOutcome:
    columns: torch.Tensor  # trained W_m[:, idx], fp32 [d_out, k]
    steps: int
    loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False


@dataclass
class Prepared:
    """What one edit computes once: activations entering the memory and block L's output, memory off."""

    batch: Batch
    acts: torch.Tensor  # [R, T, D]
    base_out: torch.Tensor  # [R, T, d_out]
    started: float
    after_logprobs: torch.Tensor | None = None  # [R, V] base model's log-probs after each target

    def features(self, row: int, length: int) -> torch.Tensor:
        """Mean activation over the first `length` own tokens of one row -> [D] fp32."""
        return self.acts[row, :length].float().mean(dim=0).cpu()


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
            with torch.no_grad():
                _, after = self._logits(prepared, base_out)
            prepared.after_logprobs = after.log_softmax(-1)
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

    def _logits(self, prepared: Prepared, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self._hidden(prepared, out)).float()
        n = prepared.batch.rows.numel()
        return logits[:n], logits[n:]

    def optimise(self, prepared: Prepared, idx: torch.Tensor, start: torch.Tensor,
                 offset: torch.Tensor | None = None, deadline: float | None = None,
                 gate: torch.Tensor | None = None, const: torch.Tensor | None = None):
        """A generator: yields after each optimisation step and returns a TrainOutcome.

        `offset` [k] is subtracted from the activations before the memory reads them (the
        de-centred memory). The caller may use the model between yields (the server decodes).

        `gate` [R, k] (0/1) and `const` [R, T, d_out] let a row read the memory through another
        edit's mask: only the shared columns are trained for it, the other edit's own columns
        add a constant. The first step scores the whole vocabulary; later steps only the tokens that were in
        the top `vocab_candidates` at some trained position, and the targets. The head's
        forward and backward over 49k tokens cost a third of a step on the default model,
        while the tokens left out hold a negligible share of the probability mass."""
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
        cols = start.detach().clone().to(acts_k.device).requires_grad_(True)  # [d_out, k]
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
        losses: list[float] = []
        best = (float("inf"), cols.detach().clone())
        steps = 0
        while True:
            hidden = self._hidden(prepared, (base_out_f + acts_k @ cols.T).to(base_out.dtype))
            all_logits = (self.head(hidden) if head is None else F.linear(hidden, *head)).float()
            logits, after_logits = all_logits[:n], all_logits[n:]
            loss = F.cross_entropy(logits, labels)
            value = float(loss.detach())  # early stop and reports use the target loss alone
            if after is not None:
                drift = F.kl_div(after_logits.log_softmax(-1), after, log_target=True, reduction="batchmean")
                loss = loss + cfg.continuation_weight * drift
            losses.append(value)
            if value < best[0]:
                best = (value, cols.detach().clone())
            out_of_time = deadline is not None and time.perf_counter() > deadline
            if value <= cfg.stop_loss or steps >= cfg.max_steps or out_of_time or value != value:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_([cols], cfg.grad_clip)
            opt.step()
            steps += 1
            if head is None and cfg.vocab_candidates:
                with torch.no_grad():
                    top = all_logits.topk(min(cfg.vocab_candidates, all_logits.shape[-1]), dim=-1).indices
                    cand = torch.cat([top.flatten(), labels]).unique()
                    weight = self.head.weight[cand]
                    bias = self.head.bias[cand] if getattr(self.head, "bias", None) is not None else None
                    head = (weight, bias)
                    labels = torch.searchsorted(cand, labels)
                    if after is not None:
                        after = after[:, cand].log_softmax(-1)
            yield
        loss_value, trained = best
        # Time spent at yields (the caller's work) is counted too: it is wall time per edit.
        return TrainOutcome(trained, steps, loss_value, losses, time.perf_counter() - prepared.started,
                            loss_value <= cfg.stop_loss)
