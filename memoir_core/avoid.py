"""The masks an edit keeps of other questions about its subject (EditRecord.avoid), and the
relation masks of those and of its own prompt (EditRecord.avoid_relation, own_relation).

The questions run as extra rows of the edit's own preparation (Proposing.propose): one forward
up to block L instead of two, which reads the model's weights once.

Routing leaves an edit off for a prompt that matches one of them well ahead of the edit's own
masks (config.other_question_lead and relation_lead, Routing.asks_else): "Where is Acme
located?" beside an edit of "Who is the CEO of Acme?". docs/routing.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import bitmasks
from .editor import Prepared
from .forms import OTHER_QUESTIONS, other_questions
from .relation import name_free
from .rows import Row
from .subjects import Name, name_of, named_spans

if TYPE_CHECKING:
    from .memoir import Memoir


@dataclass
class OtherQuestions:
    avoid: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # whole masks of the other questions
    avoid_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # theirs without the name, row for row
    own_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # the edit prompt's: plain, then chat


@dataclass
class AskedRows:
    """The other questions as rows of the edit's own preparation (one forward up to block L for
    both: the weights are read once), and how to read their masks back out of it."""

    rows: list[Row]  # the questions plain, then (where every one has a cached preamble) as chat messages
    forms: int  # 1 or 2
    name: Name | None  # the subject's name as it appears in the prompt (relation masks), or None


def other_question_rows(memoir: Memoir, prompt: str, subject: str) -> AskedRows | None:
    """Rows of other questions about the subject (None when config.other_question_lead is off or
    none can be asked). Rows read as the edit's own routing keys are: chat rows after the cached
    chat preamble, the question's tokens only (the template's tail is not run)."""
    config = memoir.config
    if config.other_question_lead is None:
        return None
    questions = other_questions(prompt, subject, len(OTHER_QUESTIONS))
    if not questions:
        return None
    name = name_of(subject, prompt) if config.relation_lead is not None else None
    encoder = memoir.encoder
    pad = [encoder.pad_id]  # a stand-in target: collate keeps every own token as input
    forms = [[(0, encoder.plain(q).ids) for q in questions]]
    if config.chat_rows and encoder.has_chat:
        chat = []
        for q in questions:
            enc = encoder.chat([{"role": "user", "content": q}])
            preamble = memoir.contexts.index(enc.ids[: enc.span[0]])
            if preamble is not None:
                chat.append((preamble, enc.ids[enc.span[0] : enc.span[1]]))
        if len(chat) == len(questions):
            forms.append(chat)
    rows = [Row(context, ids, pad, key=len(ids)) for form in forms for context, ids in form]
    return AskedRows(rows, len(forms), name)


def other_question_masks(memoir: Memoir, asked: AskedRows | None, prepared: Prepared, first: int,
                         own: list[tuple[int, Row]]) -> OtherQuestions:
    """The masks of `asked`, whose rows sit in `prepared` from row `first` on, and with
    config.relation_lead their relation masks and the edit prompt's, read from `own`: the edit's
    plain row and its keyed chat row (index in `prepared`, row), the same tokens a question of
    its own would be."""
    if asked is None:
        return OtherQuestions()
    centre = memoir.pool_centre
    n = len(asked.rows) // asked.forms

    def masks(indexed, keep_of=None) -> np.ndarray:
        features = torch.stack([prepared.features(i, r.key, centre, None if keep_of is None else keep_of(r.tokens[: r.key]))
                                for i, r in indexed])
        return memoir.tophash.masks(features).numpy()

    others = list(enumerate(asked.rows, start=first))
    whole = masks(others)
    if asked.name is None:
        return OtherQuestions(avoid=bitmasks.pack(whole))
    name = asked.name
    spans_in = lambda text: named_spans(list(name.words), text, name.whole, name.capitals)  # noqa: E731
    keep = lambda ids: name_free(memoir.encoder, ids, spans_in)  # noqa: E731
    relation = masks(others, keep)
    own_relation = masks(own[: asked.forms], keep)
    return OtherQuestions(avoid=bitmasks.pack(whole), avoid_relation=bitmasks.pack(relation),
                          own_relation=bitmasks.pack(own_relation))
