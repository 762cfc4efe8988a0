"""Edit preview on a tiny random model: a dry run leaves the memory exactly as it was; the blast
radius counts the background texts an edit would catch and can refuse it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from memoir_core.errors import EditRejectedError
from memoir_core.preview import Probes, check_blast_radius, preview, reach, trial, try_prompt
from tests.support.tiny import CORPUS, make_memoir

PROMPT = "who is the chief executive of the company"


def snapshot(m):
    return (m.version, m.weights.acc.clone(), m.weights.weight.clone(), m.bank.export(), m.keybank.export(),
            [(r.id, r.version, r.info()) for r in m.edits.values()])


def same(a, b):
    assert a[0] == b[0]
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    for (ids_a, bits_a), (ids_b, bits_b) in ((a[3], b[3]), (a[4], b[4])):
        assert ids_a == ids_b and (bits_a == bits_b).all()
    assert a[5] == b[5]


@pytest.fixture(scope="module")
def memoir():
    m = make_memoir(max_steps=30)
    m.edit("what is the capital city of the country", "paris", edit_id="capital")
    return m


def test_dry_run_changes_nothing(memoir):
    before = snapshot(memoir)
    proposal = memoir.train(PROMPT, "jane roe", rephrases=["who is the chief executive"])
    result = preview(memoir, proposal, Probes(CORPUS[:6]), max_new_tokens=4)
    same(before, snapshot(memoir))
    assert [a.kind for a in result.answers] == ["prompt", "paraphrase"]
    assert result.answers[0].fired and result.answers[0].overlap >= 0.95  # bf16-made mask: see memoir.propose
    assert result.answers[0].after.strip().startswith("jane")
    # the prompt is one of the background texts: it is caught
    assert result.blast.total == 6 and any(p.text == PROMPT for p in result.blast.probes)
    # a superseding edit (same prompt as a stored one) is undone as exactly
    proposal = memoir.train("what is the capital city of the country", "rome")
    assert proposal.record.supersedes == "capital"
    with trial(memoir, proposal):
        assert "capital" not in memoir.edits and memoir.version == before[0] + 1
    same(before, snapshot(memoir))


def test_blast_radius_limit(memoir):
    proposal = memoir.train(PROMPT, "jane roe")
    probes = Probes(CORPUS[:6])
    assert check_blast_radius(memoir, proposal, probes, None).count >= 1
    with pytest.raises(EditRejectedError, match="MEMOIR_MAX_BLAST_RADIUS=0"):
        check_blast_radius(memoir, proposal, probes, 0, "MEMOIR_MAX_BLAST_RADIUS")


def test_try_prompt(memoir):
    tried = try_prompt(memoir, "what is the capital city of the country", max_new_tokens=4)
    # the mask was made on the bf16 training copy: a few marginal columns differ from fp32
    assert tried.edit_id == "capital" and tried.overlap >= 0.95
    assert tried.with_memory.strip().startswith("paris") and tried.with_memory != tried.without_memory


def test_blast_radius_matches_the_routing_after_the_commit(memoir):
    """reach() predicts from masks alone what routing does once the edit is in the bank."""
    probes = Probes(sorted(set(CORPUS)) + ["who is the chief executive", "the chief executive of the company"])
    encoded = [memoir.encoder.plain(t) for t in probes.texts]
    for prompt in (PROMPT, "what is the capital city of the country", "the quick brown fox"):
        proposal = memoir.train(prompt, "jane roe", rephrases=["who is the boss"])
        predicted = {i for i, _ in reach(memoir, proposal.record, probes.masks(memoir))}
        with trial(memoir, proposal):
            decisions = memoir.decide(memoir.features(encoded))
        actual = {i for i, d in enumerate(decisions) if d.route is not None and d.route.edit_id == proposal.record.id}
        assert predicted == actual and actual, prompt


@pytest.mark.parametrize("swapped", [1, 3])
def test_blast_radius_follows_the_gap_rule(swapped):
    """With stored masks crowding round the edit's, texts near it stop reaching it, in the
    prediction exactly as in the routing after the commit."""
    m = make_memoir(max_steps=30, gap_rank=8, min_gap=0.06)
    probes = Probes(sorted(set(CORPUS)) + [PROMPT, "who is the chief executive", "the chief executive of the company"])
    encoded = [m.encoder.plain(t) for t in probes.texts]
    m.edit("what is the capital city of the country", "paris", edit_id="capital")
    proposal = m.train(PROMPT, "jane roe")
    alone = {i for i, _ in reach(m, proposal.record, probes.masks(m))}
    route = proposal.record.route_mask
    spare = np.setdiff1d(np.arange(m.width), route)
    for i in range(7):  # look-alikes of the new mask: all but `swapped` of its 32 columns
        cut = np.arange(i * swapped, (i + 1) * swapped)
        m.bank.add(f"crowd-{i}", np.sort(np.append(np.delete(route, cut), spare[cut])))
    predicted = {i for i, _ in reach(m, proposal.record, probes.masks(m))}
    with trial(m, proposal):
        decisions = m.decide(m.features(encoded))
    actual = {i for i, d in enumerate(decisions) if d.route is not None and d.route.edit_id == proposal.record.id}
    assert predicted == actual
    # 31 of 32 alike: the edit's own prompt beats the crowd by 1/32 < min_gap; 29 of 32: by 3/32
    assert (probes.texts.index(PROMPT) in actual) == (swapped == 3)
    assert actual < alone if swapped == 1 else actual == alone
