"""One edit's optimisation (memoir_core/editor.py) on a tiny model: the loss on the target falls
and the best columns are kept; the step limit and the deadline stop it; one yield per step."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest
import torch

from memoir_core.editor import Trainer
from memoir_core.rows import Row, collate, edit_rows
from tests.support.tiny import make_memoir

PROMPT, TARGET = "who is the chief executive of the company", "jane roe"


def run(m, config=None, deadline=None):
    trainer = m.trainer if config is None else Trainer(m.train_model, m.trainer.blocks, m.trainer.down,
                                                       m.trainer.layer, config)
    rows = edit_rows(m.encoder, m.contexts, PROMPT, TARGET, 2, chat=False)
    prepared = trainer.prepare(collate(rows, m.contexts, m.encoder.pad_id, m.device))
    # the columns an edit of this prompt trains (Memoir.propose), starting from an empty memory
    idx = m.colhash.masks(prepared.features(0, rows[0].key)[None])[0]
    start = torch.zeros(m.d_out, m.config.k)
    steps = trainer.optimise(prepared, idx, start, m._offset(idx), deadline)
    yields = 0
    try:
        while True:
            next(steps)
            yields += 1
    except StopIteration as done:
        return done.value, yields


def test_the_loss_falls():
    m = make_memoir()
    outcome, yields = run(m)
    assert outcome.columns.shape == (m.d_out, m.config.k)
    assert outcome.loss < outcome.losses[0] / 2 and outcome.loss == min(outcome.losses)  # the best is kept
    assert not torch.equal(outcome.columns, torch.zeros_like(outcome.columns))
    assert yields == outcome.steps <= m.config.max_steps  # one yield per step: the caller may decode between


def test_max_steps_and_the_deadline_stop_it():
    m = make_memoir()
    capped, _ = run(m, replace(m.config, max_steps=3, stop_loss=-1.0))
    assert capped.steps == 3 and len(capped.losses) == 4 and not capped.converged
    late, _ = run(m, replace(m.config, stop_loss=-1.0), deadline=time.perf_counter() - 1)
    assert late.steps == 0 and len(late.losses) == 1  # scored once, then out of time


def test_an_unknown_optimiser_is_refused():
    m = make_memoir()
    with pytest.raises(ValueError, match="unknown optimizer"):
        run(m, replace(m.config, optimizer="lbfgs"))


def test_a_merged_preparation_splits_into_what_its_first_rows_give_alone():
    m = make_memoir()
    rows = edit_rows(m.encoder, m.contexts, PROMPT, TARGET, 2, chat=True)
    others = [Row(0, m.encoder.plain(q).ids, [m.encoder.pad_id], key=1) for q in ("where is the company", "how old is it")]
    alone = m.trainer.prepare(collate(rows, m.contexts, m.encoder.pad_id, m.device))
    merged = m.trainer.prepare(collate(rows + others, m.contexts, m.encoder.pad_id, m.device))
    head = merged.first(len(rows))
    assert head.acts.shape == alone.acts.shape and torch.equal(head.batch.labels, alone.batch.labels)
    valid = alone.batch.attention_mask[:, alone.batch.context_length:].bool()
    assert torch.allclose(head.acts[valid], alone.acts[valid], atol=1e-5)
    assert torch.allclose(head.base_out[valid], alone.base_out[valid], atol=1e-5)
    assert torch.allclose(head.after_logprobs, alone.after_logprobs, atol=1e-5)


def test_the_first_step_scores_the_whole_vocabulary_and_trains_through_candidates(monkeypatch):
    from memoir_core import editor

    m = make_memoir()
    whole, _ = run(m, replace(m.config, vocab_candidates=0, max_steps=3, stop_loss=-1.0))
    monkeypatch.setattr(editor, "CANDIDATE_STEP", 8)
    some, _ = run(m, replace(m.config, vocab_candidates=2, max_steps=3, stop_loss=-1.0))
    # the first loss is the whole vocabulary's either way; later ones are the candidates' alone
    assert some.losses[0] == pytest.approx(whole.losses[0], rel=1e-6)
    assert some.losses[1] != pytest.approx(whole.losses[1], rel=1e-6)


def test_candidates_are_filled_to_a_step_and_stay_sorted():
    from memoir_core.editor import CANDIDATE_STEP, _filled

    cand = torch.tensor([3, 17, 900, 2500])
    filled = _filled(cand, 5000)
    assert filled.numel() == CANDIDATE_STEP and torch.equal(filled, filled.sort().values)
    assert torch.isin(cand, filled).all() and filled.unique().numel() == filled.numel()
    assert torch.equal(_filled(torch.tensor([3, 17]), 600), torch.arange(600))  # a small vocabulary: all of it
