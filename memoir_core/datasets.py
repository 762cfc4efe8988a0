"""Edit cases from the public evaluation files (ZsRE, CounterFact, hallucination, temporal).

Each format names its fields differently; `load_cases` maps them all to `Case`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Case:
    prompt: str
    target: str
    rephrases: list[str] = field(default_factory=list)
    loc_prompt: str | None = None
    loc_answer: str | None = None
    subject: str | None = None
    case_id: str | None = None


def _first(rec: dict, *names):
    for n in names:
        if rec.get(n) not in (None, ""):
            return rec[n]
    return None


def _list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else [v for v in value if v]


def to_case(rec: dict, i: int) -> Case:
    prompt = _first(rec, "src", "prompt")
    target = _first(rec, "alt", "target_new")
    if prompt is None or target is None:
        raise ValueError(f"record {i} has no prompt (src/prompt) or target (alt/target_new)")
    loc = _first(rec, "loc", "locality_prompt")
    loc_ans = _first(rec, "loc_ans", "locality_ground_truth")
    if isinstance(loc_ans, list):
        loc_ans = loc_ans[0] if loc_ans else None
    return Case(
        prompt=prompt,
        target=target,
        rephrases=_list(_first(rec, "rephrase", "rephrase_prompt", "ood_rephrase")),
        loc_prompt=loc,
        loc_answer=loc_ans,
        subject=rec.get("subject"),
        case_id=str(rec.get("case_id", i)),
    )


def load_cases(path: str | Path, limit: int | None = None, offset: int = 0) -> list[Case]:
    """Cases from a file; records without a prompt or a target (zsre_train_1k has two) are skipped."""
    records = json.loads(Path(path).read_text())
    cases = []
    for i, rec in enumerate(records[offset:], start=offset):
        if limit is not None and len(cases) >= limit:
            break
        try:
            cases.append(to_case(rec, i))
        except ValueError as exc:
            log.warning("skipping %s: %s", Path(path).name, exc)
    return cases


def unedited_subjects(paths: list[str | Path], stored: list[Case]) -> list[str]:
    """Subjects of the records in these files that no stored case is about (the siblings: entities
    nobody edited), in file order."""
    taken = {c.subject.lower() for c in stored if c.subject}
    pool = [c.subject for p in paths if p for c in load_cases(p) if c.subject and c.subject.lower() not in taken]
    return list(dict.fromkeys(pool))


def sibling(case: Case, subject: str) -> str | None:
    """The case's prompt asked about another subject (None: its prompt does not name its own)."""
    return case.prompt.replace(case.subject, subject) if case.subject and case.subject in case.prompt else None
