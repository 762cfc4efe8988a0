"""The training rows of one edit, and their batch layout.

Every row is [cached context][own tokens][target]; the memory acts on the own tokens and
target, never on the context (see contexts.py). A batch keeps the contexts left-padded and
the own tokens right-padded, so one forward serves all rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from . import kvcache
from .contexts import ContextCache
from .prompts import PromptEncoder


# oneDNN (bf16 matrix products on CPUs) builds a kernel for each matrix shape on its first use, and
# every edit brought shapes of its own (docs/tuning.md, "Shapes that recur"). So batches are padded
# to a multiple of SHAPE_STEP tokens, and the trainer pads target positions and the candidate
# vocabulary alike: shapes recur from edit to edit, and their kernels are reused.
SHAPE_STEP = 8


@dataclass(frozen=True)
class Row:
    context: int  # index into the ContextCache (0: none)
    tokens: list[int]  # the row's own tokens before the target (the memory acts on these)
    target: list[int]
    # None: the memory reads the new edit's columns. An edit id: the row is read through that
    # edit's mask instead, so only the shared columns are trained for it (co-training).
    route: str | None = None
    own: bool = True  # False: a neighbour's fact, trained to stay intact (looser stop criterion)
    after: bool = False  # also train the token after the target to follow the base model
    key: int = 0  # > 0: the first `key` own tokens are a text whose mask routes to this edit


def training_contexts(encoder: PromptEncoder, prefixes: list[str], chat: bool) -> list[list[int]]:
    """[none, each prefix, chat preamble]: the contexts every edit's rows start with."""
    contexts = [[]] + [encoder.plain(p).ids for p in prefixes]
    if chat and encoder.has_chat:
        enc = encoder.chat([{"role": "user", "content": "PLACEHOLDER"}])
        contexts.append(enc.ids[: enc.span[0]])
    return contexts


def edit_rows(encoder: PromptEncoder, contexts: ContextCache, prompt: str, target: str, n_prefixes: int, *,
              chat: bool, rephrases: tuple[str, ...] = (), statements: tuple[str, ...] = (),
              after: bool = True) -> list[Row]:
    """The plain row, one row per prefix, one per given paraphrase and per statement form
    (forms.py), and the chat-templated row.

    The token after the target is trained on the plain, statement and chat rows only: those are
    the shapes a served request has, and one forward fewer per edit stays cheap."""
    target_ids = encoder.target(target)
    plain = encoder.plain(prompt).ids
    rows = [Row(0, plain, target_ids, after=after, key=len(plain))]
    cont = encoder.tokenizer(" " + prompt, add_special_tokens=False).input_ids
    rows += [Row(1 + i, cont, target_ids) for i in range(n_prefixes)]
    for p in rephrases:
        ids = encoder.plain(p).ids
        rows.append(Row(0, ids, target_ids, key=len(ids)))
    for p in statements:
        ids = encoder.plain(p).ids
        rows.append(Row(0, ids, target_ids, after=after, key=len(ids)))
    if chat and encoder.has_chat:
        enc = encoder.chat([{"role": "user", "content": prompt}])
        preamble = contexts.index(enc.ids[: enc.span[0]])
        chat_target = encoder.target(target, after_chat=True)
        user = enc.span[1] - enc.span[0]
        if preamble is not None:
            rows.append(Row(preamble, enc.ids[enc.span[0]:], chat_target, after=after, key=user))
        else:  # a template whose preamble depends on the message: no cached context, no key
            rows.append(Row(0, enc.ids, chat_target, after=after))
    return rows


def neighbour_rows(encoder: PromptEncoder, contexts: ContextCache, prompt_ids: list[int], target_ids: list[int],
                   neighbours: list[tuple[str, str, str]], chat: bool) -> list[Row]:
    """Co-training rows for neighbours given as (edit id, prompt, target).

    Edits about one subject get nearly the same mask, so a question about one may be routed
    to the other, and a new edit's update lands on columns its neighbour relies on. So the new
    edit also trains, on its own columns: the neighbour's prompt read through the neighbour's
    mask (keep it intact), the neighbour's prompt through the new mask, and the new prompt
    through the neighbour's mask (either may win the routing), and the neighbour's chat form
    through its own mask."""
    rows = []
    for edit_id, prompt, target in neighbours:
        ids, tgt = encoder.plain(prompt).ids, encoder.target(target)
        rows += [Row(0, ids, tgt, route=edit_id, own=False), Row(0, ids, tgt, own=False),
                 Row(0, prompt_ids, target_ids, route=edit_id, own=False)]
        if chat and encoder.has_chat:
            enc = encoder.chat([{"role": "user", "content": prompt}])
            preamble = contexts.index(enc.ids[: enc.span[0]])
            if preamble is not None:
                rows.append(Row(preamble, enc.ids[enc.span[0]:], encoder.target(target, after_chat=True),
                                route=edit_id, own=False))
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
    own: torch.Tensor  # [N] bool: the label belongs to the new edit (not to a neighbour)
    # The position right after a row's target: there the edited model should go on as the
    # base model would (this keeps "Jane Roe" from becoming "Jane Roe Roe Roe").
    after_rows: torch.Tensor
    after_positions: torch.Tensor

    @property
    def context_length(self) -> int:
        return self.attention_mask.shape[1] - self.input_ids.shape[1]

    def inputs(self) -> dict:
        cache = DynamicCache(ddp_cache_data=self.context) if self.context is not None else None
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask, position_ids=self.position_ids,
                    **{kvcache.CACHE_KW: cache}, use_cache=cache is not None)

    def select(self, rows: torch.Tensor) -> dict:
        """Model inputs of a subset of rows."""
        ctx = None if self.context is None else [(k.index_select(0, rows), v.index_select(0, rows))
                                                  for k, v in self.context]
        cache = DynamicCache(ddp_cache_data=ctx) if ctx is not None else None
        return dict(input_ids=self.input_ids.index_select(0, rows),
                    attention_mask=self.attention_mask.index_select(0, rows),
                    position_ids=self.position_ids.index_select(0, rows), **{kvcache.CACHE_KW: cache},
                    use_cache=cache is not None)

    def first(self, n: int, step: int = SHAPE_STEP) -> "Batch":
        """The first n rows alone, as narrow as their own tokens allow in steps of `step` (collate
        lays labels out row by row, so theirs come first)."""
        p = self.context_length
        width = min(padded_width(int(self.attention_mask[:n, p:].sum(1).max()), step), self.input_ids.shape[1])
        keep = self.rows < n
        after = self.after_rows < n
        ctx = None if self.context is None else [(k[:n], v[:n]) for k, v in self.context]
        return Batch(self.input_ids[:n, :width], self.attention_mask[:n, : p + width], self.position_ids[:n, :width],
                     ctx, self.rows[keep], self.positions[keep], self.labels[keep], self.own[keep],
                     self.after_rows[after], self.after_positions[after])

    def concat(self, other: "Batch") -> "Batch":
        """Both batches' rows in one: contexts left-padded, own tokens right-padded to a common width."""
        p, t = max(self.context_length, other.context_length), max(self.input_ids.shape[1], other.input_ids.shape[1])

        def layout(b: "Batch"):
            pc, tc = b.context_length, b.input_ids.shape[1]
            mask = torch.cat([F.pad(b.attention_mask[:, :pc], (p - pc, 0)), F.pad(b.attention_mask[:, pc:], (0, t - tc))], 1)
            ctx = None
            if p:
                template = (self.context or other.context)
                ctx = []
                for j in range(len(template)):
                    if b.context is None:
                        k0, v0 = template[j]
                        shape = (b.input_ids.shape[0], k0.shape[1], p, k0.shape[3])
                        ctx.append((k0.new_zeros(shape), v0.new_zeros(shape)))
                    else:
                        k, v = b.context[j]
                        ctx.append((F.pad(k, (0, 0, p - pc, 0)), F.pad(v, (0, 0, p - pc, 0))))
            return F.pad(b.input_ids, (0, t - tc)), mask, F.pad(b.position_ids, (0, t - tc)), ctx

        ids_a, mask_a, pos_a, ctx_a = layout(self)
        ids_b, mask_b, pos_b, ctx_b = layout(other)
        r = self.input_ids.shape[0]
        ctx = None if ctx_a is None else [(torch.cat([ka, kb]), torch.cat([va, vb]))
                                          for (ka, va), (kb, vb) in zip(ctx_a, ctx_b)]
        return Batch(torch.cat([ids_a, ids_b]), torch.cat([mask_a, mask_b]), torch.cat([pos_a, pos_b]), ctx,
                     torch.cat([self.rows, other.rows + r]), torch.cat([self.positions, other.positions]),
                     torch.cat([self.labels, other.labels]), torch.cat([self.own, other.own]),
                     torch.cat([self.after_rows, other.after_rows + r]),
                     torch.cat([self.after_positions, other.after_positions]))


def padded_width(tokens: int, step: int = SHAPE_STEP) -> int:
    """Row widths go up in steps of `step`, so that matrix shapes recur from edit to edit."""
    return -(-tokens // step) * step


def collate(rows: list[Row], contexts: ContextCache, pad_id: int, device, step: int = SHAPE_STEP) -> Batch:
    """step: the width's step (1: none, where products run in fp32: MKL builds no kernel per shape,
    and the padding would only add work)."""
    # Positions past the last target token never influence the loss; the last target token is
    # input only for rows that train the position after it.
    lengths = [len(r.tokens) + len(r.target) - (0 if r.after else 1) for r in rows]
    width = padded_width(max(lengths), step)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    own_mask = torch.zeros((len(rows), width), dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    row_of, pos_of, labels, own, after_rows, after_pos = [], [], [], [], [], []
    for i, (r, n) in enumerate(zip(rows, lengths)):
        seq = (r.tokens + r.target)[:n]
        ids[i, :n] = torch.tensor(seq)
        own_mask[i, :n] = 1
        start = contexts.length(r.context)
        positions[i] = torch.arange(start, start + width)
        for j, tok in enumerate(r.target):
            row_of.append(i)
            pos_of.append(len(r.tokens) + j - 1)
            labels.append(tok)
            own.append(r.own)
        if r.after:
            after_rows.append(i)
            after_pos.append(n - 1)
    kv, ctx_mask = contexts.batch([r.context for r in rows])
    t = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return Batch(ids.to(device), torch.cat([ctx_mask, own_mask], dim=1).to(device), positions.to(device), kv,
                 t(row_of), t(pos_of), t(labels), torch.tensor(own, dtype=torch.bool, device=device),
                 t(after_rows), t(after_pos))
