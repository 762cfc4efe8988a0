"""The store under a real Memoir (tiny random model): restart equality, bit for bit."""

from __future__ import annotations

import pytest
import torch

from memoir_core import models
from memoir_core.errors import StateMismatchError
from memoir_core.generate import SamplingParams
from memoir_core.memoir import Memoir
from memoir_core.state import Manifest, restore
from memoir_core.store import DirectoryStore
from tests.support.tiny import make_memoir, tiny_model, tiny_tokenizer

PROMPTS = [
    "who is the chief executive of the company", "what is the capital city of the country",
    "the quick brown fox jumps", "paris london berlin rome", "jane roe john doe alice",
    "numbers one two three four", "who is the chief of paris", "what is the capital of rome",
    "the lazy dog jumps over", "alice bob carol dave", "five six seven eight nine",
    "madrid lisbon paris london", "the company of the country", "who is alice", "what is the fox",
    "the capital city of berlin",
]
# Cheap edits: what is stored is what counts here, not how well it was learned.
FAST = dict(max_steps=4, continuation_weight=0.0, max_neighbours=0, chat_rows=False, prefix_lengths=(5,),
            protect=1e-3)
TARGETS = ["jane roe", "paris", "dog", "madrid", "bob", "five six", "alice", "lisbon", "fox", "carol",
           "ten", "rome", "berlin", "john doe", "quick", "london"]


def edit(m: Memoir, store, prompt: str, target: str):
    """The engine's order: train, log (durable), then apply."""
    gen = m.propose(prompt, target)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        proposal = stop.value
    proposal.record.version = m.version + 1
    store.log_edit(proposal.record)
    return m.commit(proposal)


def remove(m: Memoir, store, edit_id: str) -> None:
    store.log_removal(edit_id, m.version + 1)
    m.remove(edit_id)


def outputs(m: Memoir, prompts):
    seqs = m.generate(prompts, SamplingParams(max_new_tokens=6))
    return [(s.out_ids, s.decision.best_edit_id, s.decision.route is not None, s.decision.version) for s in seqs]


@pytest.fixture(scope="module")
def edited(tmp_path_factory):
    """20 operations: 16 edits, a supersede (same prompt again), 3 removals; then a restart."""
    root = tmp_path_factory.mktemp("state")
    m = make_memoir("llama", **FAST)
    name = "tiny-llama"
    with DirectoryStore(root, snapshot_min_bytes=40_000) as store:
        assert store.load() is None
        store.create(Manifest.of(m, name, models.fingerprint(m.model)), m.basis)
        ids = [edit(m, store, p, t).id for p, t in zip(PROMPTS, TARGETS)]
        superseding = edit(m, store, PROMPTS[3], "lisbon")
        assert superseding.supersedes == ids[3]
        for i in (0, 7, 12):
            remove(m, store, ids[i])
        store.wait_snapshot()
        assert store.snapshot_version > 0  # the restart reads a snapshot and a journal tail
        probe = PROMPTS + ["paris london berlin rome madrid", "the quick brown fox"]
        before = outputs(m, probe)
    return root, m, probe, before


def fresh(root, seed: int = 0, **config):
    tok = tiny_tokenizer()
    model = tiny_model("llama", len(tok), seed=seed)
    store = DirectoryStore(root)
    loaded = store.load(Manifest.expected(model, _config(**config), "tiny-llama"))
    m = Memoir(model, tok, _config(**config), basis=loaded.basis)
    return store, loaded, m


def _config(**over):
    from memoir_core.config import MemoirConfig

    return MemoirConfig(**{"k": 32, "tau": 0.5, "stop_loss": 0.05, "lr": 0.5, **FAST, **over})


@pytest.mark.parametrize("with_acc", [True, False])
def test_restart_restores_the_memory_bit_for_bit(edited, with_acc):
    root, m, probe, before = edited
    store, loaded, m2 = fresh(root)
    try:
        if not with_acc:  # the replay path: every delta re-added
            loaded.acc = None
        restore(m2.memory, loaded)
        assert m2.version == m.version == 20
        assert torch.equal(m2.weights.acc, m.weights.acc)
        assert torch.equal(m2.weights.weight, m.weights.weight)
        ids, bits = m.bank.export()
        ids2, bits2 = m2.bank.export()
        assert ids2 == ids and (bits2 == bits).all()  # same slots: overlap ties break the same way
        assert list(m2.edits) == list(m.edits)
        for a, b in zip(m.edits.values(), m2.edits.values()):
            assert a.info() == b.info() and torch.equal(a.idx, b.idx) and torch.equal(a.delta, b.delta)
            assert a.inputs is not None and torch.equal(a.inputs, b.inputs)  # the key guard's share
        # the guard is rebuilt from the live edits' inputs (m summed and subtracted on the way)
        assert len(m2.guard) == len(m.guard) == len(m.edits)
        assert torch.equal(m2.guard.cov, m.guard.cov)  # int64: exact
        assert torch.equal(m2.basis.permutation, m.basis.permutation)
        assert torch.equal(m2.basis.background_mean, m.basis.background_mean) and m2.basis.prefixes == m.basis.prefixes
        # pool="norm" (the default): the routing masks differ from the trained columns and come back
        assert m.config.pool == "norm" and torch.equal(m2.basis.route_mean, m.basis.route_mean)
        assert any(rec.route.tolist() != rec.idx.tolist() for rec in m.edits.values())
        assert outputs(m2, probe) == before
    finally:
        store.close()


def test_rollback_after_restart_matches_a_memory_that_never_had_the_edit(edited):
    root, m, *_ = edited
    store, loaded, m2 = fresh(root)
    try:
        restore(m2.memory, loaded)
        oldest = next(iter(m2.edits))
        remove(m2, store, oldest)
        expected = torch.zeros_like(m2.weights.acc)
        for rec in m2.edits.values():
            expected.index_add_(1, rec.idx, rec.delta.long())
        assert torch.equal(m2.weights.acc, expected)
    finally:
        store.close()
    store, loaded, m3 = fresh(root)
    try:
        restore(m3.memory, loaded)
        assert torch.equal(m3.weights.weight, m2.weights.weight) and m3.version == 21
    finally:
        store.close()


def test_state_of_another_base_model_is_refused(edited):
    root, *_ = edited
    tok = tiny_tokenizer()
    other = tiny_model("llama", len(tok), seed=1)
    with DirectoryStore(root) as store:
        with pytest.raises(StateMismatchError, match="fingerprint"):
            store.load(Manifest.expected(other, _config(), "other-llama"))
        with pytest.raises(StateMismatchError, match="k: the state has 32, the running configuration 16"):
            store.load(Manifest.expected(tiny_model("llama", len(tok)), _config(k=16), "tiny-llama"))
