"""The cache of routed edits' frozen columns is bounded: on an 8B model each route holds 64 MB
of GPU memory, and a cache of every edit ever routed to would fill the card."""

import numpy as np
import torch

from memoir_core import memorystate
from memoir_core.generate import SamplingParams
from memoir_core.records import EditRecord
from memoir_core.residual import quantise
from tests.support.tiny import make_memoir


def stored(m, n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    for i in range(n):
        idx = np.sort(rng.choice(m.width, size=m.config.k, replace=False))
        delta = quantise(torch.from_numpy(rng.normal(0, 0.05, (m.d_out, m.config.k))).float())
        m.apply(EditRecord(id=f"e{i}", prompt=f"p{i}", target_new="t", idx=torch.from_numpy(idx), delta=delta))
    return [f"e{i}" for i in range(n)]


def test_the_least_recently_routed_edit_leaves_first_and_comes_back_the_same(monkeypatch):
    m = make_memoir()
    ids = stored(m, 5)
    one = m._route(ids[0]).cols.nbytes
    monkeypatch.setattr(memorystate, "ROUTE_CACHE_BYTES", 3 * one)
    first = m._route(ids[0])
    for edit_id in ids[1:3]:
        m._route(edit_id)
    assert m._route(ids[0]) is first  # a hit makes it the most recent
    for edit_id in ids[3:]:
        m._route(edit_id)
    assert list(m.memory.routes) == [ids[0], ids[3], ids[4]]
    again = m._route(ids[1])  # evicted: rebuilt from W_m, the same columns
    assert torch.equal(again.cols, m.weights.columns(again.idx).T) and len(m.memory.routes) == 3
    monkeypatch.setattr(memorystate, "ROUTE_CACHE_BYTES", 0)  # a route bigger than the budget is still kept alone
    m._route(ids[2])
    assert list(m.memory.routes) == [ids[2]]


def test_a_batch_routed_to_more_edits_than_the_cache_holds_decodes_as_with_a_big_cache(monkeypatch):
    m = make_memoir(tau=0.0, min_gap=0.0)  # every prompt switches the memory on, to its best stored edit
    stored(m, 6, seed=1)
    prompts = ["the quick brown fox", "paris london berlin", "jane roe john doe", "numbers one two three",
               "who is the chief executive", "what is the capital city"]
    params = SamplingParams(max_new_tokens=6)
    big = m.generate(prompts, params, max_batch=6)
    m.memory.routes.clear()
    monkeypatch.setattr(memorystate, "ROUTE_CACHE_BYTES", 1)
    small = m.generate(prompts, params, max_batch=6)
    assert len({s.decision.best_edit_id for s in big}) >= 2 and all(s.decision.route is not None for s in big)
    assert [s.out_ids for s in small] == [s.out_ids for s in big] and len(m.memory.routes) == 1
