"""How a Memoir routes (memoir_core/routing.py): an empty memory stays off, an edit's own prompt
switches it on with that edit's columns, and the threshold and the gap decide."""

from __future__ import annotations

from memoir_core.maskbank import Match
from tests.support.tiny import make_memoir

PROMPT, TARGET = "who is the chief executive of the company", "jane roe"


def test_an_empty_memory_routes_nothing():
    m = make_memoir()
    decisions = m.route_prompts([PROMPT, "paris london berlin"])
    assert [d.route for d in decisions] == [None, None] and all(d.best_edit_id is None for d in decisions)


def test_an_edits_own_prompt_routes_to_it():
    m = make_memoir()
    rec = m.edit(PROMPT, TARGET)
    (own,) = m.route_prompts([PROMPT])
    assert own.route is not None and own.route.edit_id == rec.id and own.best_edit_id == rec.id
    assert own.best_overlap >= m.tau and own.version == m.version
    assert own.route.idx.numel() == m.config.k
    mask = m.masks([m.encoder.plain(PROMPT)])[0].numpy()
    assert m.overlap_with(rec.id, mask) == own.best_overlap  # the decision's score is the bank's
    m.remove(rec.id)
    assert m.route_prompts([PROMPT])[0].route is None  # gone with its edit


def test_switches_on_needs_tau_and_the_gap():
    m = make_memoir(min_gap=0.1)
    assert m.switches_on(Match("e", 0.6, 0.2), 0.5)
    assert not m.switches_on(Match("e", 0.4, 0.0), 0.5)  # below tau
    assert not m.switches_on(Match("e", 0.6, 0.55), 0.5)  # does not stand out from the runner-up
    assert not m.switches_on(Match(None, 1.0, 0.0), 0.5)  # an empty bank
