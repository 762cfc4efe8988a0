"""What replicas behind one load balancer must share besides the memory: import jobs (polled on
any replica) and console sessions (a page may land on any replica). In PostgreSQL mode they are
kept in memoir_service (kind, key, JSON body, expiry); otherwise in this process only
(shared_state returns None and callers keep their own dictionaries)."""

from __future__ import annotations

import json
import time
from typing import Any

DDL = """CREATE TABLE IF NOT EXISTS memoir_service (
    kind     text NOT NULL,
    key      text NOT NULL,
    body     text NOT NULL,
    expires  double precision NOT NULL,
    PRIMARY KEY (kind, key)
)"""


class SharedState:
    """Blocking (psycopg): call it off the event loop."""

    def __init__(self, url: str):
        from memoir_core.store.postgres.side import SideConnection

        self.db = SideConnection(url, DDL, "service")

    def put(self, kind: str, key: str, body: dict[str, Any], ttl: float) -> None:
        self.db.run("INSERT INTO memoir_service (kind, key, body, expires) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (kind, key) DO UPDATE SET body = excluded.body, expires = excluded.expires",
                    (kind, key, json.dumps(body, ensure_ascii=True), time.time() + ttl))

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        rows = self.db.run("SELECT body FROM memoir_service WHERE kind = %s AND key = %s AND expires > %s",
                           (kind, key, time.time()))
        return json.loads(rows[0][0]) if rows else None

    def all(self, kind: str, limit: int = 200) -> list[dict[str, Any]]:
        rows = self.db.run("SELECT body FROM memoir_service WHERE kind = %s AND expires > %s "
                           "ORDER BY expires DESC LIMIT %s", (kind, time.time(), limit))
        return [json.loads(body) for (body,) in rows]

    def delete(self, kind: str, key: str) -> None:
        self.db.run("DELETE FROM memoir_service WHERE kind = %s AND key = %s", (kind, key))

    def expire(self) -> None:
        self.db.run("DELETE FROM memoir_service WHERE expires <= %s", (time.time(),))

    def close(self) -> None:
        self.db.close()


def shared_state(settings) -> SharedState | None:
    store = settings.store
    if settings.state_url is None or store not in ("auto", "postgres"):
        return None
    return SharedState(settings.state_url.get_secret_value())
