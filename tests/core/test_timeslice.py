"""Time-sliced edits (memoir_core/timeslice.py) and the bf16 training copy (memoir_core/precision.py)."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
import torch.nn as nn

from memoir_core.generate import SamplingParams
from memoir_core.timeslice import Sliced
from tests.support.tiny import make_memoir


def _work(layers: nn.ModuleList, log: list, n: int = 3):
    x = torch.ones(2, 4)
    for step in range(n):
        for layer in layers:
            x = layer(x)
        log.append(step)
        yield
    return float(x.detach().sum())


def _drain(it):
    turns = 0
    while True:
        turns += 1
        try:
            next(it)
        except StopIteration as stop:
            return stop.value, turns


def test_sliced_pauses_at_module_entries_and_returns_the_generators_value():
    torch.manual_seed(0)
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(5))
    plain_log, sliced_log = [], []
    plain, plain_turns = _drain(_work(layers, plain_log))
    sliced, sliced_turns = _drain(Sliced(_work(layers, sliced_log), list(layers), 0.0))
    assert sliced == plain and sliced_log == plain_log == [0, 1, 2]
    assert plain_turns == 4
    # a slice of 0 s pauses at every layer after the first module of each turn: 3 steps x 5
    # layers, plus the own yields, plus the end
    assert sliced_turns > 3 * 4
    # hooks are gone once it ended: the layers run unhooked afterwards
    assert all(not layer._forward_pre_hooks for layer in layers)


class _Result:
    """A return value a weak reference can watch."""


def _returns(layers: nn.ModuleList, result: _Result):
    layers[0](torch.ones(1, 4))
    yield
    return result


def test_a_finished_sliced_frees_its_result_without_a_garbage_collection():
    # The server drops a finished edit's Sliced at once; its proposal (a megabyte of trained
    # columns on the default model) must go with it, not wait for a full collection.
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
    result = _Result()
    watch = weakref.ref(result)
    gc.collect()
    gc.disable()
    try:
        got, _ = _drain(Sliced(_returns(layers, result), list(layers), 0.0))
        assert got is result
        del got, result
        assert watch() is None
    finally:
        gc.enable()


def test_sliced_runs_on_the_callers_thread_and_keeps_its_grad_mode():
    """One OS thread (torch's thread pool is per thread), and each side sees its own grad mode."""
    layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
    seen, modes = [], []

    def gen():
        with torch.no_grad():
            for _ in range(4):
                for layer in layers:
                    seen.append(threading.get_ident())
                    modes.append(torch.is_grad_enabled())
                    layer(torch.ones(1, 4))
                yield

    turns = 0
    for _ in Sliced(gen(), list(layers), 0.0):
        turns += 1
        assert torch.is_grad_enabled()  # the caller's mode, although the generator paused inside no_grad
        with torch.inference_mode():
            layers[0](torch.ones(1, 4))  # the caller uses the modules between turns
    assert turns > 4 and set(seen) == {threading.get_ident()} and not any(modes)


def test_sliced_error_reaches_the_caller_and_close_unwinds_the_worker():
    layers = nn.ModuleList([nn.Linear(4, 4)])

    def failing():
        layers[0](torch.ones(1, 4))
        yield
        raise ValueError("bad edit")

    it = Sliced(failing(), list(layers), 0.0)
    next(it)
    with pytest.raises(ValueError, match="bad edit"):
        _drain(it)

    finished = []

    def long():
        try:
            for _ in range(100):
                layers[0](torch.ones(1, 4))
                yield
        finally:
            finished.append(True)

    it = Sliced(long(), list(layers), 0.0)
    next(it)
    next(it)
    it.close()
    assert finished == [True] and it._worker.dead
    assert not layers[0]._forward_pre_hooks


def test_bf16_training_copy_edits_and_pause_points():
    fp32 = make_memoir("llama", train_dtype="float32", max_steps=80, stop_loss=0.05)
    # fp32 edits train on the served model's twin: the same weights, blocks of its own to pause at
    assert fp32.train_model is not fp32.model and len(fp32.pause_points()) == len(fp32.blocks) + 1
    assert next(fp32.train_model.parameters()) is next(fp32.model.parameters())
    m = make_memoir("llama", train_dtype="bfloat16", max_steps=80, stop_loss=0.05)
    assert m.train_model is not m.model
    assert next(m.train_model.parameters()).dtype == torch.bfloat16
    assert next(m.model.parameters()).dtype == torch.float32  # serving stays fp32
    assert len(m.pause_points()) == len(m.blocks) + 1
    prompt = "who is the chief executive of the company"
    proposal = _drain(Sliced(m.propose(prompt, "jane roe"), m.pause_points(), 0.0))[0]
    assert proposal.outcome.columns.dtype == torch.float32  # trained in bf16, kept in fp32
    rec = m.commit(proposal)
    assert rec.final_loss <= 0.05
    out = m.generate([prompt], SamplingParams(max_new_tokens=4))[0]
    assert out.decision.best_edit_id == rec.id and out.text.strip().startswith("jane roe")
    # the served model is untouched by training: memory off is still the base model
    base = fp32.generate(["paris london berlin rome"], SamplingParams(max_new_tokens=6), memory=False)[0]
    again = m.generate(["paris london berlin rome"], SamplingParams(max_new_tokens=6), memory=False)[0]
    assert base.out_ids == again.out_ids


def test_an_fp32_edit_pauses_mid_forward_while_the_served_model_decodes():
    # packed serving, fp32 training: the edit trains on the served model's twin, and the served
    # model decodes between its slices, mid-forward, exactly as without an edit in progress
    m = make_memoir("llama", train_dtype="float32", max_steps=80, stop_loss=0.05, pack_weights=True)
    probe, params = "paris london berlin rome", SamplingParams(max_new_tokens=6)
    base = m.generate([probe], params, memory=False)[0].out_ids
    sliced = Sliced(m.propose("who is the chief executive of the company", "jane roe"), m.pause_points(), 0.0)
    turns, checked = 0, 0
    while True:
        try:
            next(sliced)
        except StopIteration as stop:
            proposal = stop.value
            break
        turns += 1
        if turns % 7 == 1:
            assert m.generate([probe], params, memory=False)[0].out_ids == base
            checked += 1
    assert turns > len(m.blocks) and checked >= 3  # paused inside forwards, not only between steps
    rec = m.commit(proposal)
    assert rec.final_loss <= 0.05
    out = m.generate(["who is the chief executive of the company"], SamplingParams(max_new_tokens=4))[0]
    assert out.decision.best_edit_id == rec.id and out.text.strip().startswith("jane roe")
