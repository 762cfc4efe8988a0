"""The audit trail: who changed the memory, how and when (edits, supersedes, rollbacks, imports).

The memory's own log is compacted (snapshots drop what is no longer live), so a rolled-back edit
would leave no trace there; the trail is kept apart, append-only, next to the memory: a JSON
Lines file in the state directory (store/audit_file.py), a table in PostgreSQL
(store/postgres/audit.py), or this process's memory (MemoryAudit, for a RAM-only store).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

KINDS = ("edit", "supersede", "rollback", "import")


@dataclass
class AuditEvent:
    kind: str  # one of KINDS
    edit_id: str | None = None  # an import has none
    author: str | None = None  # who did it: the admin key's name (None: no admin key configured)
    at: float = field(default_factory=time.time)
    version: int | None = None  # the memory version it made
    prompt: str | None = None
    target: str | None = None
    supersedes: str | None = None
    source: str | None = None  # api, console, import <job id>
    edit_author: str | None = None  # a rollback: who had made the edit
    answer_before: str | None = None  # a rollback: the greedy answer to the prompt before and after
    answer_after: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # an import's counts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> AuditEvent:
        known = {k: v for k, v in body.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass
class AuditQuery:
    kind: str = ""
    author: str = ""
    q: str = ""  # in the edit id, prompt, target or source
    since: str = ""  # YYYY-MM-DD (UTC), inclusive
    until: str = ""

    def matches(self, e: AuditEvent) -> bool:
        if self.kind and e.kind != self.kind:
            return False
        if self.author and (e.author or "") != self.author:
            return False
        since, until = _day(self.since), _day(self.until)
        if since is not None and e.at < since:
            return False
        if until is not None and e.at >= until + timedelta(days=1).total_seconds():
            return False
        q = self.q.lower()
        return not q or any(q in (t or "").lower() for t in (e.edit_id, e.prompt, e.target, e.source))


def _day(text: str) -> float | None:
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        return None


class AuditLog:
    """append() is durable when it returns (for the durable kinds); events() reads newest first."""

    where = "this process's memory"
    problems: list[str] = []  # damaged entries found by the last read (a durable log reports them)

    def append(self, event: AuditEvent) -> None:
        raise NotImplementedError

    def events(self, query: AuditQuery | None = None, limit: int = 500) -> list[AuditEvent]:
        query = query or AuditQuery()
        found = []
        for e in self._newest_first():
            if query.matches(e):
                found.append(e)
                if len(found) >= limit:
                    break
        return found

    def _newest_first(self):
        raise NotImplementedError

    def close(self) -> None:
        pass


class MemoryAudit(AuditLog):
    def __init__(self):
        self._events: list[AuditEvent] = []
        self._mu = threading.Lock()

    def append(self, event: AuditEvent) -> None:
        with self._mu:
            self._events.append(event)

    def _newest_first(self):
        with self._mu:
            return list(reversed(self._events))
