"""An edit's training rows and their batch (memoir_core/rows.py): which rows an edit trains, and
that the batch labels each target token at the position that predicts it."""

from __future__ import annotations

import torch

from memoir_core.contexts import ContextCache
from memoir_core.prompts import PromptEncoder
from memoir_core.rows import SHAPE_STEP, Row, collate, edit_rows, neighbour_rows, padded_width, training_contexts
from tests.support.tiny import tiny_model, tiny_tokenizer

PROMPT, TARGET = "who is the chief executive of the company", "jane roe"


def encoder_and_contexts(chat: bool = True):
    tok = tiny_tokenizer()
    encoder = PromptEncoder(tok)
    model = tiny_model("llama", len(tok))
    return encoder, ContextCache(model, training_contexts(encoder, ["paris", "rome"], chat))


def test_contexts_are_none_each_prefix_then_the_chat_preamble():
    encoder, contexts = encoder_and_contexts()
    assert len(contexts) == 4 and contexts.length(0) == 0
    assert contexts.contexts[1] == encoder.plain("paris").ids
    chat = encoder.chat([{"role": "user", "content": "anything"}])
    assert contexts.contexts[3] == chat.ids[: chat.span[0]]
    assert len(encoder_and_contexts(chat=False)[1]) == 3


def test_edit_rows_plain_prefixes_paraphrases_and_chat():
    encoder, contexts = encoder_and_contexts()
    target = encoder.target(TARGET)
    rows = edit_rows(encoder, contexts, PROMPT, TARGET, 2, chat=True, rephrases=("who leads the company",))
    plain, first, second, para, chat = rows
    assert plain == Row(0, encoder.plain(PROMPT).ids, target, after=True, key=len(encoder.plain(PROMPT).ids))
    assert (first.context, second.context) == (1, 2) and first.target == target and not first.after
    assert para.tokens == encoder.plain("who leads the company").ids and para.key == len(para.tokens)
    assert chat.context == 3 and chat.target == encoder.target(TARGET, after_chat=True) and chat.after
    assert all(r.own and r.route is None for r in rows)
    assert len(edit_rows(encoder, contexts, PROMPT, TARGET, 2, chat=False)) == 3


def test_neighbour_rows_keep_the_neighbour_and_cross_the_masks():
    encoder, contexts = encoder_and_contexts(chat=False)
    ids, tgt = encoder.plain(PROMPT).ids, encoder.target(TARGET)
    neighbour = ("e1", "who is the chief of the country", "john doe")
    rows = neighbour_rows(encoder, contexts, ids, tgt, [neighbour], False)
    assert [r.route for r in rows] == ["e1", None, "e1"] and not any(r.own for r in rows)
    assert rows[2].tokens == ids and rows[0].target == encoder.target("john doe")


def test_collate_labels_each_target_token_at_the_position_before_it():
    encoder, contexts = encoder_and_contexts(chat=False)
    rows = [Row(0, [5, 6, 7], [8, 9], after=True), Row(1, [10, 11], [12], own=False)]
    batch = collate(rows, contexts, encoder.pad_id, "cpu")
    assert batch.labels.tolist() == [8, 9, 12]
    assert batch.rows.tolist() == [0, 0, 1] and batch.positions.tolist() == [2, 3, 1]
    assert batch.own.tolist() == [True, True, False]
    # the token after the target is trained on the first row only, at its last position
    assert batch.after_rows.tolist() == [0] and batch.after_positions.tolist() == [4]
    p = contexts.length(1)
    # 5 tokens wide, padded to the shape step
    assert batch.context_length == p and batch.input_ids.shape == (2, padded_width(5))
    assert batch.input_ids[0].tolist() == [5, 6, 7, 8, 9] + [encoder.pad_id] * (padded_width(5) - 5)
    assert batch.input_ids[1, :2].tolist() == [10, 11]  # its last target token is never input
    assert batch.position_ids[1, 0] == p and batch.position_ids[0, 0] == 0  # own tokens follow the context
    assert batch.attention_mask[0].tolist() == [0] * p + [1] * 5 + [0] * (padded_width(5) - 5)
    joined = batch.concat(batch)
    assert joined.labels.tolist() == [8, 9, 12] * 2 and joined.rows.tolist() == [0, 0, 1, 2, 2, 3]
    assert torch.equal(joined.input_ids[2:], batch.input_ids)


def test_batches_are_padded_to_a_shape_step_and_the_first_rows_come_apart():
    encoder, contexts = encoder_and_contexts(chat=False)
    rows = [Row(1, [5, 6, 7], [8, 9], after=True), Row(0, [10, 11, 12, 13, 14, 15, 16, 17, 18], [19], own=False)]
    batch = collate(rows, contexts, encoder.pad_id, "cpu")
    assert batch.input_ids.shape[1] == padded_width(10) == 2 * SHAPE_STEP  # 9 own tokens (a last target token is never input)
    head = batch.first(1)
    # the first row alone: its labels and continuation, as narrow as its own 5 tokens allow
    assert head.input_ids.shape == (1, padded_width(5)) and head.labels.tolist() == [8, 9]
    assert head.after_rows.tolist() == [0] and head.own.tolist() == [True, True]
    assert head.attention_mask.shape[1] == batch.context_length + padded_width(5)
    assert torch.equal(head.input_ids[0], batch.input_ids[0, : padded_width(5)])
    assert all(torch.equal(k[0], kb[0]) for (k, _), (kb, _) in zip(head.context, batch.context))
