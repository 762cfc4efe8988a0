"""One autocommit connection for small side tables (the audit trail, the service's shared jobs and
sessions), apart from the memory's own connections. A broken connection is dropped and the next
call connects again, so a database restart heals by itself."""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from ...errors import DurabilityError

SIDE_LOCK = 0x6D656D73  # "mems": creating the side tables (schema.py has the memory's own locks)


class SideConnection:
    def __init__(self, url: str, ddl: str, name: str):
        self.url, self.ddl, self.name = url, ddl, name
        self._conn: psycopg.Connection | None = None
        self._mu = threading.Lock()

    def run(self, sql: str, args: tuple = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement; one retry on a fresh connection when the old one broke."""
        with self._mu:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=5,
                                                     application_name=f"memoir {self.name}"[:63])
                        with self._conn.transaction():  # two replicas creating one table at once collide
                            self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (SIDE_LOCK,))
                            self._conn.execute(self.ddl)
                    cur = self._conn.execute(sql, args)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError as error:
                    self._drop()
                    if attempt == 2:
                        raise DurabilityError(f"PostgreSQL ({self.name}): {error}") from error
                except psycopg.Error as error:
                    raise DurabilityError(f"PostgreSQL ({self.name}): {error}") from error
        return []

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None

    def close(self) -> None:
        with self._mu:
            self._drop()
