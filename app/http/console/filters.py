"""The edit list's search and filters (author, date, subject), over registry records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


@dataclass
class Filters:
    q: str = ""  # in the id, prompt, target, paraphrases or subject
    author: str = ""
    subject: str = ""
    since: str = ""  # YYYY-MM-DD (UTC), inclusive
    until: str = ""  # YYYY-MM-DD (UTC), inclusive

    @classmethod
    def of(cls, params) -> Filters:
        return cls(**{name: (params.get(name) or "").strip()[:200] for name in ("q", "author", "subject", "since",
                                                                              "until")})

    @property
    def active(self) -> bool:
        return any((self.q, self.author, self.subject, self.since, self.until))


def _day(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


def select(records, f: Filters, limit: int = 200) -> tuple[list, int]:
    """The matching records, newest first (up to `limit`), and how many matched."""
    q, subject = f.q.lower(), f.subject.lower()
    since = _day(f.since)
    until = _day(f.until)
    until = until + timedelta(days=1).total_seconds() if until is not None else None
    found = []
    for r in reversed(records):
        if f.author and (r.author or "") != f.author:
            continue
        if subject and subject not in (r.subject or "").lower():
            continue
        if since is not None and r.created_at < since:
            continue
        if until is not None and r.created_at >= until:
            continue
        if q and not any(q in (t or "").lower() for t in (r.id, r.prompt, r.target_new, r.subject,
                                                           *r.rephrase_prompts)):
            continue
        found.append(r)
    return found[:limit], len(found)
