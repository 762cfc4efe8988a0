"""The masks an edit keeps of other questions about its subject (EditRecord.avoid), and the
relation masks of those and of its own prompt (EditRecord.avoid_relation, own_relation).

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
from .forms import OTHER_QUESTIONS, other_questions
from .relation import name_free
from .rows import Row, collate
from .subjects import name_of, named_spans

if TYPE_CHECKING:
    from .memoir import Memoir


@dataclass
class OtherQuestions:
    avoid: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # whole masks of the other questions
    avoid_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # theirs without the name, row for row
    own_relation: np.ndarray = field(default_factory=lambda: bitmasks.EMPTY)  # the edit prompt's: plain, then chat


def other_question_masks(memoir: Memoir, prompt: str, subject: str) -> OtherQuestions:
    """Masks of other questions about the subject, plain and as chat messages (none when
    config.other_question_lead is off), and with config.relation_lead their relation masks and
    the edit prompt's. Read as the edit's own routing keys are: on the training copy, chat rows
    after the cached chat preamble, in one pass."""
    config = memoir.config
    if config.other_question_lead is None:
        return OtherQuestions()
    questions = other_questions(prompt, subject, len(OTHER_QUESTIONS))
    if not questions:
        return OtherQuestions()
    name = name_of(subject, prompt) if config.relation_lead is not None else None
    asked = [prompt, *questions] if name is not None else list(questions)
    encoder = memoir.encoder
    pad = [encoder.pad_id]  # a stand-in target: collate keeps every own token as input
    forms = [[(0, encoder.plain(q).ids) for q in asked]]
    if config.chat_rows and encoder.has_chat:
        chat = []
        for q in asked:
            enc = encoder.chat([{"role": "user", "content": q}])
            preamble = memoir.contexts.index(enc.ids[: enc.span[0]])
            if preamble is not None:  # the mask reads the question's tokens only: the template's tail is not run
                chat.append((preamble, enc.ids[enc.span[0] : enc.span[1]]))
        if len(chat) == len(asked):
            forms.append(chat)
    rows = [Row(context, ids, pad, key=len(ids)) for form in forms for context, ids in form]
    prepared = memoir.trainer.prepare(collate(rows, memoir.contexts, encoder.pad_id, memoir.device))
    centre = memoir.pool_centre

    def masks(keep_of=None) -> np.ndarray:
        features = torch.stack([prepared.features(i, r.key, centre, None if keep_of is None else keep_of(r.tokens))
                                for i, r in enumerate(rows)])
        return memoir.tophash.masks(features).numpy().reshape(len(forms), len(asked), -1)

    whole = masks()
    if name is None:
        return OtherQuestions(avoid=bitmasks.pack(whole.reshape(-1, whole.shape[-1])))
    spans_in = lambda text: named_spans(list(name.words), text, name.whole, name.capitals)  # noqa: E731
    relation = masks(lambda ids: name_free(encoder, ids, spans_in))
    flat = lambda m: m.reshape(-1, m.shape[-1])  # noqa: E731
    return OtherQuestions(avoid=bitmasks.pack(flat(whole[:, 1:])), avoid_relation=bitmasks.pack(flat(relation[:, 1:])),
                          own_relation=bitmasks.pack(relation[:, 0]))
