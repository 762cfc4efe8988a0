"""The audit trail in PostgreSQL: memoir_audit, one row per event, shared by every replica.

The event is kept as JSON text (ASCII-escaped), not jsonb: jsonb refuses \\u0000, and a prompt
may hold one.
"""

from __future__ import annotations

import json

from ...audit import AuditEvent, AuditLog, AuditQuery
from .side import SideConnection

DDL = """CREATE TABLE IF NOT EXISTS memoir_audit (
    seq   bigserial PRIMARY KEY,
    at    double precision NOT NULL,
    body  text NOT NULL
)"""


class PgAudit(AuditLog):
    def __init__(self, url: str, where: str = "PostgreSQL"):
        self.db = SideConnection(url, DDL, "audit")
        self.where = f"{where}, table memoir_audit"

    def append(self, event: AuditEvent) -> None:
        self.db.run("INSERT INTO memoir_audit (at, body) VALUES (%s, %s)",
                    (event.at, json.dumps(event.to_dict(), ensure_ascii=True)))

    def events(self, query: AuditQuery | None = None, limit: int = 500) -> list[AuditEvent]:
        query = query or AuditQuery()
        found = []
        for (body,) in self.db.run("SELECT body FROM memoir_audit ORDER BY seq DESC LIMIT 100000"):
            event = AuditEvent.from_dict(json.loads(body))
            if query.matches(event):
                found.append(event)
                if len(found) >= limit:
                    break
        return found

    def close(self) -> None:
        self.db.close()
