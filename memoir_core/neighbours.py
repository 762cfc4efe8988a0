"""Where an edit could do damage: prompts near it that it must leave alone.

A dry run (preview.py) and the blast-radius check ask these as well as the background texts:
- "other subject": the edit's own prompt about another subject, the siblings an edit leaks to
  first (the stored edits' subjects nearest in mask, then built-in names of several kinds);
- "same subject": other questions about the edit's subject (built-in relation templates);
- "given": prompts the operator names ("must not change").
The memory switching on for an "other subject" or "given" prompt counts against the blast
radius. A "same subject" prompt may well switch it on (it names the subject, and its mask
resembles the edit's); whether its answer changes is what the dry run shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

RELATIONS = ("Where is {s} located?", "When was {s} founded?", "Who created {s}?", "What is {s} known for?")
COUNTED = ("other subject", "given")  # kinds whose memory-on counts against the blast radius


@dataclass
class Neighbour:
    kind: str  # "other subject", "same subject" or "given"
    text: str


def builtin_names() -> list[str]:
    text = resources.files("memoir_core").joinpath("data/entities.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _swap(prompt: str, subject: str, other: str) -> str | None:
    found = re.search(re.escape(subject), prompt, flags=re.IGNORECASE)
    if found is None:
        return None
    return prompt[: found.start()] + other + prompt[found.end() :]


def nearest_subjects(memoir, record, n: int) -> list[str]:
    """Subjects of the stored edits whose routing masks overlap this edit's most."""
    if not len(memoir.bank) or n <= 0:
        return []
    counts = memoir.bank.counts(record.route_mask).astype(np.int64)
    ids = memoir.bank.ids
    own = (record.subject or "").lower()
    out: list[str] = []
    for i in np.argsort(-counts, kind="stable")[: 8 * n]:
        rec = memoir.edits.get(ids[i])
        subject = rec.subject if rec is not None else None
        if subject and subject.lower() != own and subject not in out:
            out.append(subject)
            if len(out) == n:
                break
    return out


def neighbour_prompts(memoir, record, given=(), stored: int = 4, builtin: int = 4) -> list[Neighbour]:
    """The prompts near an edit to try (see the module's docstring), without repeats."""
    out: list[Neighbour] = [Neighbour("given", p.strip()) for p in given if p and p.strip()]
    subject = record.subject
    if subject:
        others = nearest_subjects(memoir, record, stored)
        others += [n for n in builtin_names() if n.lower() != subject.lower() and n not in others][:builtin]
        for other in others:
            swapped = _swap(record.prompt, subject, other)
            if swapped is not None:
                out.append(Neighbour("other subject", swapped))
        out += [Neighbour("same subject", t.format(s=subject)) for t in RELATIONS]
    seen, unique = {record.prompt.strip().lower()}, []
    for nb in out:
        if nb.text.lower() not in seen:
            seen.add(nb.text.lower())
            unique.append(nb)
    return unique
