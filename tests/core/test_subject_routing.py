"""Subject routing (memoir_core/subjects.py, Routing.decide): an edit stays on its subject."""

from __future__ import annotations

import numpy as np
import pytest

from memoir_core import bitmasks
from memoir_core.config import MemoirConfig
from memoir_core.errors import InvalidRequestError
from memoir_core.forms import alias_forms, other_questions, statement_form
from memoir_core.generate import SamplingParams
from memoir_core.preview import neighbour_probes
from memoir_core.records import EditRecord
from memoir_core.subjects import SubjectIndex, infer_aliases, infer_subject, names, subject_words


@pytest.mark.parametrize("prompt, subject", [
    ("Who is the CEO of Zorblax Industries?", "Zorblax Industries"),
    ("What is the country of citizenship of Delta Serpentis?", "Delta Serpentis"),
    ("The mother tongue of Danielle Darrieux is", "Danielle Darrieux"),
    ("Which family does Ramalinaceae belong to?", "Ramalinaceae"),
    ("Who founded the Bank of America?", "Bank of America"),
    ("BBC One's owner is", "BBC One"),
    ("who is the chief executive of the company", None),
])
def test_infer_subject(prompt, subject):
    assert infer_subject(prompt) == subject


@pytest.mark.parametrize("subject, text, named", [
    ("Zorblax Industries", "Who runs zorblax industries?", True),
    ("Zorblax Industries", "What is Zorblax Industries' address?", True),
    ("Zorblax Industries", "Who is the CEO of Zorblax Industry?", True),  # inflection
    ("Zorblax Industries", "Who is the CEO of Zorblaxx Industries?", True),  # a typo in a long word
    ("Zorblax Industries", "Who is the CEO of Borblax Industries?", False),  # not in the first letter
    ("Zorblax Industries", "Who is the CEO of Zorblax Motors?", False),  # the sibling
    ("Zorblax Industries", "Industries of Zorblax", False),  # not side by side
    ("The Beatles", "Who managed Beatles?", True),
    ("The Thinker", "The Artwork The Thinker is by whom?", True),
    ("Marañón", "Where is the Maranon river?", True),
    ("Acme", "Who runs Acne?", False),  # short words must match exactly
    ("German", "When did Herman C. Schultz die?", False),  # a one-word subject: no typo
    ("Office", "During which war was Niyi an officer?", False),
    ("Acme", "Who is the CEO of Acme Motors?", False),  # a part of a longer name
    ("Valley", "What river does Kellogg Valley connect to?", False),
    ("The Last Days", "The mother of The Last Days of Left Eye is whom?", False),
    ("Acme", "Who is the CEO of Acme? Tell me.", True),
    ("Acme", "acme motors", True),  # written in lower case, no name goes on
    ("Milton F. Pavlic", "Which war did Milton F. Pavlic serve in?", True),
    ("Umayyad Caliphate", "He was waived on August 8. Umayyad Caliphate belongs to", True),
])
def test_names(subject, text, named):
    assert names(subject_words(subject), text) is named


def rec(edit_id, subject, source="given"):
    return EditRecord(id=edit_id, prompt=f"Who runs {subject}?", target_new="x", subject=subject, subject_source=source)


def test_index_finds_named_subjects_and_forgets_removed_ones():
    old = rec("old", "Zorblax Industries", source=None)  # stored before subject routing: not indexed
    records = {r.id: r for r in (rec("a", "Zorblax Industries"), rec("b", "Zorblax Motors"), old)}
    index = SubjectIndex.of(records)
    assert len(index) == 2 and "old" not in index and index.size == 3
    assert index.named_in("Who is the CEO of Zorblax Industries?") == {"a"}
    assert index.named_in("zorblax motors' CEO") == {"b"}
    assert index.named_in("Who is the CEO of Zorblex Motors?") == {"b"}  # found through its typo keys
    assert index.named_in("Who is the CEO of Zorblax Industries Motors?") == set()  # a longer name
    # an edit whose own prompt names its subject inside a longer name still routes for it
    player = EditRecord(id="p", prompt="Player Natalie Achonwa played for which team?", target_new="x",
                        subject="Achonwa", subject_source="given")
    index.add(player)
    assert index.named_in(player.prompt) == {"p"}
    index.remove(player)
    index.remove(records["a"])
    assert index.named_in("Who is the CEO of Zorblax Industries?") == set() and index.size == 2


@pytest.mark.parametrize("subject, aliases", [
    ("International Business Machines", ["IBM"]),
    ("Federal Bureau of Investigation", ["FBI"]),  # connectors left out
    ("National Aeronautics and Space Administration", ["NASA"]),
    ("United States", []),  # two letters: too many names share them
    ("Zorblax industries", []),  # not every word capitalised
    ("NASA Ames Research", []),  # holds an acronym already
    (None, []),
])
def test_infer_aliases(subject, aliases):
    assert infer_aliases(subject) == aliases


def test_an_alias_names_its_edit_and_an_acronym_only_in_capitals():
    ibm = EditRecord(id="ibm", prompt="Who is the CEO of International Business Machines?", target_new="x",
                     subject="International Business Machines", subject_source="inferred", aliases=["IBM"])
    coke = EditRecord(id="coke", prompt="Who is the CEO of Coca-Cola?", target_new="x", subject="Coca-Cola",
                      subject_source="given", aliases=["Coke", "The Coca-Cola Company"])
    index = SubjectIndex.of({r.id: r for r in (ibm, coke)})
    assert index.named_in("Who runs IBM?") == {"ibm"}
    assert index.named_in("IBM's chief executive is") == {"ibm"}  # a possessive is still capitals
    assert index.named_in("Who runs ibm?") == set()  # lower case: not the acronym
    assert index.named_in("Who is the CEO of IBM Research?") == set()  # a longer name
    assert index.named_in("who makes coke?") == {"coke"}  # a name of words matches as a subject does
    assert index.named_in("Who chairs the Coca-Cola Company?") == {"coke"}
    index.remove(ibm)
    assert index.named_in("Who runs IBM?") == set()
    # an edit stored before aliases (no field in its record) routes on its subject alone
    old = EditRecord.from_info({k: v for k, v in ibm.info().items() if not k.startswith("aliases")},
                               idx=None, delta=None)
    assert old.aliases == [] and SubjectIndex.of({"ibm": old}).named_in("Who runs IBM?") == set()


def test_other_questions_about_the_subject_leave_out_the_prompts_own_relation():
    assert other_questions("Who is the CEO of Acme Corp?", "Acme Corp", 3) == (
        "Tell me about Acme Corp.", "What kind of thing is Acme Corp?", "What does Acme Corp look like?")
    # "history" is the prompt's own relation: that question may be a paraphrase, so it is skipped
    assert "What is the history of Acme?" not in other_questions("What was the early history of Acme?", "Acme", 6)
    assert len(other_questions("What was the early history of Acme?", "Acme", 6)) == 5
    assert other_questions("Who runs it?", None, 3) == () == other_questions("Who runs it?", "Acme", 3)
    assert other_questions("Who is the CEO of Acme?", "Acme", 0) == ()


def test_alias_forms():
    assert alias_forms("Who is the CEO of Acme Corp?", "acme corp", ["AC", "Acme"]) == (
        "Who is the CEO of AC?", "Who is the CEO of Acme?")
    assert alias_forms("Who runs it?", "Acme", ["AC"]) == ()


def test_statement_form():
    assert statement_form("Who is the CEO of Acme Corp?", "Acme Corp") == "The CEO of Acme Corp is"
    assert statement_form("When was Acme Corp founded?", "Acme Corp") == "Acme Corp was founded in"
    assert statement_form("Which family does Ramalinaceae belong to?", "Ramalinaceae") is None
    assert statement_form("The CEO of Acme is", "Acme") is None


@pytest.fixture(scope="module")
def real():
    from memoir_core import models
    from memoir_core.memoir import Memoir

    model, tok = models.load()
    return Memoir(model, tok)


GREEDY = SamplingParams(max_new_tokens=10)


@pytest.mark.real
def test_an_edit_stays_on_its_subject_and_answers_every_form(real):
    m = real
    sibling = "Who is the CEO of Zorblax Motors?"
    (before,) = m.generate([sibling], GREEDY)
    record = m.edit("Who is the CEO of Zorblax Industries?", "Marta Quillon")
    try:
        assert (record.subject, record.subject_source) == ("Zorblax Industries", "inferred")
        (after,) = m.generate([sibling], GREEDY)
        assert after.decision.route is None and after.text == before.text  # byte-identical
        chat = m.encoder.chat([{"role": "user", "content": "Who runs Zorblax Industries?"}])
        forms = ["Who is the chief executive of Zorblax Industries?", "The CEO of Zorblax Industries is", chat]
        for form, out in zip(forms, m.generate(forms, GREEDY)):
            assert out.decision.route is not None and out.decision.route.edit_id == record.id, form
            assert "Marta Quillon" in out.text, (form, out.text)
        # Past the target the memory lets go and the base model writes on: the answer says the
        # name once. Held on to the end, the memory's pull repeats it.
        longer = SamplingParams(max_new_tokens=24)
        released = [out.text.count("Marta Quillon") for out in m.generate(forms, longer)]
        held = m.config
        m.config = MemoirConfig(**{**held.to_dict(), "release_after_answer": False})
        try:
            kept = [out.text.count("Marta Quillon") for out in m.generate(forms, longer)]
        finally:
            m.config = held
        assert released == [1, 1, 1] and max(kept) >= 2, (released, kept)
    finally:
        m.remove(record.id)


@pytest.mark.real
def test_an_edit_answers_under_its_alias_and_leaves_the_sibling_alone(real):
    m = real
    sibling = "Who is the CEO of Microsoft?"
    (before,) = m.generate([sibling], GREEDY)
    with pytest.raises(InvalidRequestError, match="aliases need a subject"):
        m.train("who is there?", "Marta Quillon", aliases=["IBM"])
    record = m.edit("Who is the CEO of International Business Machines?", "Marta Quillon")
    try:
        assert (record.aliases, record.aliases_source) == (["IBM"], "inferred")
        forms = ["Who is the CEO of IBM?", "Who is IBM's CEO?", "Who is the CEO of International Business Machines?"]
        for form, out in zip(forms, m.generate(forms, GREEDY)):
            assert out.decision.route is not None and out.decision.route.edit_id == record.id, form
            assert "Marta Quillon" in out.text, (form, out.text)
        (after,) = m.generate([sibling], GREEDY)
        assert after.decision.route is None and after.text == before.text
    finally:
        m.remove(record.id)
    # aliases=[]: none inferred, and the acronym does not switch the memory on
    record = m.edit("Who is the CEO of International Business Machines?", "Marta Quillon", aliases=[])
    try:
        assert record.aliases == [] and record.aliases_source is None
        (out,) = m.generate(["Who is the CEO of IBM?"], GREEDY)
        assert out.decision.route is None
    finally:
        m.remove(record.id)


@pytest.mark.real
def test_a_given_subject_must_be_named_and_a_dry_run_names_the_neighbour_it_would_hit(real):
    m = real
    with pytest.raises(InvalidRequestError, match="not named in the prompt"):
        m.subject_of("Who is the CEO of Zorblax Industries?", "Acme")
    # masks alone (subject routing off, as for an edit stored before it): the sibling is hit,
    # and the dry run says so
    loose = m.config
    m.config = MemoirConfig(**{**loose.to_dict(), "subject_routing": False})
    try:
        proposal = m.train("Who is the CEO of Zorblax Industries?", "Marta Quillon", subject="Zorblax Industries")
        assert proposal.record.subject_source is None
        probes = {p.text: p for p in neighbour_probes(m, proposal, ["Who is the CEO of Zorblax Motors?"])}
        hit = probes["Who is the CEO of Zorblax Motors?"]
        assert hit.kind == "given" and hit.fired and hit.counted
    finally:
        m.config = loose
    # with subject routing the same neighbour stays off
    proposal = m.train("Who is the CEO of Zorblax Industries?", "Marta Quillon")
    probes = {p.text: p for p in neighbour_probes(m, proposal, ["Who is the CEO of Zorblax Motors?"])}
    assert not probes["Who is the CEO of Zorblax Motors?"].fired
    assert any(p.kind == "other subject" for p in probes.values())
    assert any(p.kind == "same subject" for p in probes.values())



def test_a_prompt_that_asks_something_else_about_the_subject_leaves_the_edit_off():
    from memoir_core.records import EditRecord
    from tests.support.tiny import make_memoir

    prompt, subject = "Who is the chief of Acme Corp?", "Acme Corp"
    asked = other_questions(prompt, subject, 6)
    off = make_memoir("llama", max_steps=2, subject_tau=0.0, other_question_lead=None)
    plain = off.edit(prompt, "jane roe", subject=subject)
    assert len(plain.avoid) == 0  # the rule is off: no masks made, routing as before
    on = make_memoir("llama", max_steps=2, subject_tau=0.0, other_question_lead=0.0, relation_lead=None)
    rec = on.edit(prompt, "jane roe", subject=subject)
    assert rec.avoid.shape[0] == 2 * len(asked) and rec.avoid.dtype == np.uint64  # plain and chat, as bitsetsets
    # stored with the record (every store keeps info()) and read back as it was
    info = rec.info()
    assert all(isinstance(mask, str) for mask in info["avoid"])
    again = EditRecord.from_info(info, rec.idx, rec.delta, rec.inputs)
    assert np.array_equal(again.avoid, rec.avoid)
    # a record stored before the masks were packed (column index lists) reads as the same masks
    listed = EditRecord.from_info({**info, "avoid": bitmasks.columns(rec.avoid)}, rec.idx, rec.delta, rec.inputs)
    assert np.array_equal(listed.avoid, rec.avoid)
    # each other question matches its own avoid mask fully, and the edit's own masks less
    for question in asked:
        (without,) = off.route_prompts([question])
        (with_rule,) = on.route_prompts([question])
        assert without.route is not None  # the subject is named: on, whatever it asks
        assert with_rule.route is None and with_rule.best_edit_id == rec.id  # the nearest edit is still named
    assert on.route_prompts([prompt])[0].route is not None  # its own question still routes
    own = rec.route_mask
    assert not on.asks_else(rec.id, [own], on.overlap_with(rec.id, own))
    first = np.asarray(bitmasks.columns(rec.avoid)[0])
    assert len(first) == on.config.k
    assert on.asks_else(rec.id, [first], on.overlap_with(rec.id, first))
