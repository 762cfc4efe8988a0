"""Relation masks (memoir_core/relation.py): an edit tells its paraphrases from other questions
about its subject by the words around the name, not by the name every such question shares."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from memoir_core import bitmasks
from memoir_core.forms import other_questions
from memoir_core.prompts import PromptEncoder
from memoir_core.records import EditRecord
from memoir_core.relation import name_free
from memoir_core.subjects import named_spans, subject_words

PROMPT, SUBJECT = "Who is the chief of Acme Corp?", "Acme Corp"


def test_named_spans_are_the_characters_of_each_place_the_text_names_the_subject():
    text = "Who runs Acme? Acme's CEO is new."
    assert [text[a:b] for a, b in named_spans(subject_words("Acme"), text)] == ["Acme", "Acme's"]
    assert named_spans(subject_words("Acme"), "Who runs Acme Motors?") == []  # a part of a longer name
    text = "Where does the Maranon river rise?"
    assert [text[a:b] for a, b in named_spans(subject_words("Marañón"), text)] == ["Maranon"]


@pytest.fixture(scope="module")
def encoder():
    from transformers import AutoTokenizer

    from memoir_core import models

    return PromptEncoder(AutoTokenizer.from_pretrained(str(models.default_model_dir(progress=False))))


@pytest.mark.parametrize("text, subject", [
    ("Who is the CEO of Zorblax Industries?", "Zorblax Industries"),
    ("Who runs Ñandú Müller AG these days?", "Ñandú Müller AG"),  # characters split across byte tokens
    ("Zorblax Industries", "Zorblax Industries"),  # nothing but the name: every token is read
])
def test_name_free_tokens_are_those_outside_the_subjects_name(encoder, text, subject):
    ids = encoder.plain(text).ids
    decoded, ends = encoder.token_ends(ids)
    assert decoded == text and ends[-1] == len(text) and ends == sorted(ends)
    keep = name_free(encoder, ids, lambda t: named_spans(subject_words(subject), t))
    assert len(keep) == len(ids)
    if text == subject:
        assert all(keep)
        return
    dropped = encoder.decode([i for i, k in zip(ids, keep) if not k])
    kept = encoder.decode([i for i, k in zip(ids, keep) if k])
    assert dropped.strip() == subject
    assert not any(word in kept for word in subject.split())


def test_an_edit_keeps_relation_masks_and_reads_its_other_questions_by_them():
    from memoir_core.store.registry import Registry, RegistryError
    from tests.support.tiny import make_memoir

    asked = other_questions(PROMPT, SUBJECT, 6)
    m = make_memoir("llama", max_steps=2, subject_tau=0.0, other_question_lead=0.0, relation_lead=0.0)
    rec = m.edit(PROMPT, "jane roe", subject=SUBJECT)
    # one relation mask per other question, and the prompt's own, plain and chat
    assert rec.avoid_relation.shape[0] == rec.avoid.shape[0] == 2 * len(asked)
    assert rec.own_relation.shape[0] == 2 and rec.own_relation.dtype == np.uint64
    assert not np.array_equal(rec.avoid_relation, rec.avoid)  # the name's tokens are left out
    info = rec.info()
    assert all(isinstance(mask, str) for name in ("own_relation", "avoid_relation") for mask in info[name])
    again = EditRecord.from_info(info, rec.idx, rec.delta, rec.inputs)
    assert np.array_equal(again.own_relation, rec.own_relation)
    assert np.array_equal(again.avoid_relation, rec.avoid_relation)
    for question in asked:
        (decision,) = m.route_prompts([question])
        assert decision.route is None and decision.best_edit_id == rec.id, question
    assert m.route_prompts([PROMPT])[0].route is not None
    # a record stored before relation masks (no such fields) loads, and routes by whole masks alone
    old = EditRecord.from_info({k: v for k, v in info.items() if not k.endswith("_relation")},
                               rec.idx, rec.delta, rec.inputs)
    assert len(old.own_relation) == len(old.avoid_relation) == 0
    registry = Registry(m.config.k, m.d_out, m.width)
    registry.check(old)
    registry.check(rec)
    short = dataclasses.replace(rec, avoid_relation=rec.avoid_relation[1:])
    with pytest.raises(RegistryError, match="avoid_relation"):
        registry.check(short)
    # relation_lead off: none made
    plain = make_memoir("llama", max_steps=2, subject_tau=0.0, other_question_lead=0.0, relation_lead=None)
    made = plain.edit(PROMPT, "jane roe", subject=SUBJECT)
    assert len(made.avoid) == 2 * len(asked) and len(made.own_relation) == len(made.avoid_relation) == 0


@pytest.fixture(scope="module")
def real():
    from memoir_core import models
    from memoir_core.memoir import Memoir

    model, tok = models.load()
    return Memoir(model, tok)


@pytest.mark.real
def test_paraphrases_stay_on_and_other_questions_about_the_subject_go_off(real):
    m = real
    record = m.edit("Who is the CEO of Zorblax Industries?", "Marta Quillon")
    try:
        assert len(record.own_relation) == 2 and len(record.avoid_relation) == len(record.avoid) > 0
        chat = lambda text: m.encoder.chat([{"role": "user", "content": text}])  # noqa: E731
        paraphrases = ["Who is the chief executive of Zorblax Industries?", "The CEO of Zorblax Industries is",
                       "Who runs Zorblax Industries?", "Name the chief executive officer of Zorblax Industries."]
        for text, decision in zip(paraphrases * 2, m.route_prompts(paraphrases + [chat(p) for p in paraphrases])):
            assert decision.route is not None and decision.route.edit_id == record.id, text
        # not among the six questions the edit read its masks from (forms.OTHER_QUESTIONS)
        others = ["Where is Zorblax Industries located?", chat("What does Zorblax Industries make?"),
                  chat("What is Zorblax Industries known for?"), chat("How many employees does Zorblax Industries have?")]
        for text, decision in zip(others, m.route_prompts(others)):
            assert decision.route is None and decision.best_edit_id == record.id, text
    finally:
        m.remove(record.id)
