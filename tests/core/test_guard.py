"""The key guard (guard.py): a stored edit's inputs as a factor, the guard's sum, and its effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memoir_core.guard import KeyGuard, factor, moment
from memoir_core.records import EditRecord


def _record(idx, inputs, edit_id="x"):
    return EditRecord(id=edit_id, prompt="p", target_new="t", idx=torch.tensor(idx), inputs=inputs)


def test_the_factor_keeps_the_second_moment_of_few_keys():
    keys = torch.randn(6, 10)
    f = factor(keys, rank=8)
    assert f.shape == (8, 10) and f.dtype == torch.float16
    assert torch.allclose(f.double().T @ f.double(), keys.double().T @ keys.double() / 6, atol=2e-2)


def test_the_factor_keeps_the_top_directions_of_many_keys():
    keys = torch.randn(80, 40) * torch.linspace(3, 0.01, 40)
    f = factor(keys, rank=8).double()
    moment = keys.double().T @ keys.double() / 80
    top = torch.linalg.eigvalsh(moment)[-8:].sum()
    assert abs(float(torch.trace(f.T @ f)) / float(top) - 1) < 1e-2


def test_the_guard_sums_edits_on_their_own_columns_and_forgets_them_exactly():
    g = KeyGuard(6, 3)
    fa, fb = torch.randn(3, 2).half(), torch.randn(3, 3).half()
    a, b = _record([1, 4], fa, "a"), _record([0, 1, 5], fb, "b")
    g.add(a)
    g.add(b)
    c = g.restricted(torch.tensor([0, 1, 4]))
    ma, mb = fa.double().T @ fa.double(), fb.double().T @ fb.double()
    # on the guard's grid (2^-14): exact for fp16 entries above 1/16, close below
    assert torch.allclose(c[1, 1].double(), ma[0, 0] + mb[1, 1], atol=1e-3)  # column 1 is shared
    assert torch.allclose(c[2, 2].double(), ma[1, 1], atol=1e-3)
    assert torch.allclose(c[0, 2].double(), torch.zeros((), dtype=torch.float64))  # never in one edit
    assert len(g) == 2
    # less one edit's share, as when a new edit replaces it
    without = g.restricted(torch.tensor([0, 1, 4]), without=a)
    assert torch.allclose(without[1, 1].double(), mb[1, 1], atol=1e-3) and float(without[2, 2]) == 0
    g.remove(a)
    g.remove(b)
    assert len(g) == 0 and int(g.cov.abs().max()) == 0  # exactly: C is summed in int64
    off = KeyGuard(6, 3, enabled=False)  # protect = 0: records pass through, nothing is summed
    off.add(a)
    assert len(off) == 0 and off._cov is None
    assert off.sharing(torch.tensor([1, 2, 4]), 2) == [("a", 2)]  # the column index is kept anyway


def test_the_moment_is_exact_in_float64_and_past_2_to_the_53_falls_back_to_int64():
    gen = torch.Generator().manual_seed(0)
    small = torch.randint(-(2**17), 2**17, (32, 50), generator=gen)  # the default model's range
    assert torch.equal(moment(small), small.T @ small) and torch.equal(moment(small, {}), small.T @ small)
    # float64 would round these: 3 x (2^26 + 1)^2 is odd and above 2^53, where float64 steps by 2
    big = torch.full((3, 3), 2**26 + 1, dtype=torch.int64)
    assert torch.equal(moment(big), big.T @ big)
    assert not torch.equal((big.double().T @ big.double()).long(), big.T @ big)


def test_a_rebuild_through_scratch_buffers_sums_what_one_add_at_a_time_does():
    gen = torch.Generator().manual_seed(1)
    recs = [_record(sorted(torch.randperm(12, generator=gen)[:5].tolist()),
                    torch.randn(3, 5, generator=gen).half(), f"e{i}") for i in range(20)]
    one, all_ = KeyGuard(12, 5), KeyGuard(12, 5)
    for rec in recs:
        one.add(rec)
    all_.add_all(recs)
    assert torch.equal(one.cov, all_.cov) and len(one) == len(all_) == 20
    for rec in recs:
        all_.remove(rec)
    assert not all_.cov.any()  # every share leaves exactly


def test_the_guard_finds_the_edits_sharing_most_columns_and_copies_apart():
    g = KeyGuard(8, 3)
    recs = [_record(idx, torch.randn(2, 3).half(), eid)
            for eid, idx in (("c", [0, 1, 3]), ("b", [1, 2, 3]), ("a", [5, 6, 7]), ("d", [1, 2, 7]))]
    for r in recs:
        g.add(r)
    # b and d share two columns with the query, c one: ties go by id, not by slot
    assert g.sharing(torch.tensor([1, 2, 4]), 2) == [("b", 2), ("d", 2)]
    assert g.sharing(torch.tensor([1, 2, 4]), 3)[2] == ("c", 1)
    copy = g.copy()
    g.remove(recs[1])  # the last mask moves into b's slot
    assert g.sharing(torch.tensor([1, 2, 4]), 2) == [("d", 2), ("c", 1)]
    assert copy.sharing(torch.tensor([1, 2, 4]), 1) == [("b", 2)]  # the copy kept its own index
    assert KeyGuard(8, 3).sharing(torch.tensor([1, 2, 4]), 2) == []


def _train(m, prompt, target):
    gen = m.propose(prompt, target)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value


def _disturbance(later: EditRecord, earlier: EditRecord) -> float:
    """Summed squared change the later edit's delta makes to the earlier edit's memory output."""
    _, here, there = np.intersect1d(later.idx.numpy(), earlier.idx.numpy(), return_indices=True)
    delta = later.delta.double()[:, here] / 2**24
    f = earlier.inputs.double()[:, there]
    return float(((delta @ f.T) ** 2).sum())


@pytest.mark.real
def test_a_guarded_edit_moves_an_earlier_edit_about_the_same_subject_less(real):
    """Two facts about one subject share most columns: unguarded, the second edit's update lands
    on what the first reads; guarded, it learns its fact as well and moves the first far less."""
    saved = real.config.protect
    first = real.edit("The mother tongue of Danielle Darrieux is", "Finnish")
    try:
        real.config.protect = 0.0
        free = _train(real, "Danielle Darrieux was born in the city of", "Oslo")
        # one stored edit: a weight that makes its penalty count beside the new edit's loss (the
        # default, 3e-5, is set for banks of hundreds, whose penalties add up)
        real.config.protect = 1e-3
        guarded = _train(real, "Danielle Darrieux was born in the city of", "Oslo")
    finally:
        real.config.protect = saved
        real.remove(first.id)
    assert free.outcome.converged and guarded.outcome.converged
    shared = len(set(first.idx.tolist()) & set(free.record.idx.tolist()))
    assert shared > 0.3 * first.idx.numel()
    assert _disturbance(guarded.record, first) < 0.5 * _disturbance(free.record, first)


def test_a_guard_that_yields_lets_an_edit_it_blocks_land_and_leaves_the_others_alone():
    """A guard far too heavy for one stored edit blocks the next edit: with guard_yield_after it
    gives way step by step to that edit only, from the step named on."""
    from tests.support.tiny import CORPUS, make_memoir

    def second(**config):
        m = make_memoir("llama", protect=10.0, stop_loss=0.1, max_steps=40, **config)
        m.edit(CORPUS[0], "alpha beta")
        proposal = _train(m, CORPUS[3], "gamma delta")
        return proposal.outcome, proposal.record

    blocked, blocked_rec = second(guard_yield_after=0)  # never yields (the default yields after 10)
    yielding, yielding_rec = second(guard_yield_after=3, guard_yield=0.3)
    assert not blocked.converged and blocked.loss > 2.0 and blocked.guard_scale == 1.0
    # the blocked edit says so, with its final loss: never reported as if it had worked
    assert blocked_rec.learnt is False and blocked_rec.final_loss == blocked.loss
    assert blocked_rec.info()["learnt"] is False
    assert yielding.converged and yielding.loss <= 0.5 and yielding_rec.learnt is True
    assert yielding.guard_scale <= 0.3 ** 2  # it yielded only after the third step, then each step
    first = make_memoir("llama", protect=10.0, guard_yield_after=3, guard_yield=0.3)
    assert _train(first, CORPUS[1], "epsilon").outcome.guard_scale == 1.0  # nothing stored, no guard


def test_a_guard_yield_outside_its_range_is_refused():
    from memoir_core.config import MemoirConfig

    for bad in ({"guard_yield": 0.0}, {"guard_yield": 1.5}, {"guard_yield_after": -1}):
        with pytest.raises(ValueError, match="guard_yield"):
            MemoirConfig(**bad).resolved(4, 64)
