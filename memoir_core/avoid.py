"""The masks an edit keeps of other questions about its subject (EditRecord.avoid).

Routing leaves an edit off for a prompt that matches one of them well ahead of the edit's own
masks (config.other_question_lead, Routing.asks_else): "Where is Acme located?" beside an edit of
"Who is the CEO of Acme?". docs/routing.md has the measurements.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .forms import OTHER_QUESTIONS, other_questions
from .rows import Row, collate

if TYPE_CHECKING:
    from .memoir import Memoir


def other_question_masks(memoir: Memoir, prompt: str, subject: str) -> list[list[int]]:
    """Masks of other questions about the subject, plain and as chat messages (none when
    config.other_question_lead is off). Read as the edit's own routing keys are: on the training
    copy, chat rows after the cached chat preamble."""
    if memoir.config.other_question_lead is None:
        return []
    questions = other_questions(prompt, subject, len(OTHER_QUESTIONS))
    if not questions:
        return []
    encoder = memoir.encoder
    pad = [encoder.pad_id]  # a stand-in target: collate keeps every own token as input
    rows = [Row(0, ids, pad, key=len(ids)) for ids in (encoder.plain(q).ids for q in questions)]
    if memoir.config.chat_rows and encoder.has_chat:
        for q in questions:
            enc = encoder.chat([{"role": "user", "content": q}])
            preamble = memoir.contexts.index(enc.ids[: enc.span[0]])
            if preamble is not None:  # the mask reads the question's tokens only: the template's tail is not run
                rows.append(Row(preamble, enc.ids[enc.span[0]:enc.span[1]], pad, key=enc.span[1] - enc.span[0]))
    prepared = memoir.trainer.prepare(collate(rows, memoir.contexts, encoder.pad_id, memoir.device))
    features = torch.stack([prepared.features(i, r.key, memoir.pool_centre) for i, r in enumerate(rows)])
    return memoir.tophash.masks(features).tolist()
