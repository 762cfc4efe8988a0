"""LISTEN on the log's channel: wait until a new entry is announced, or a timeout passes."""

from __future__ import annotations

import psycopg

from ...errors import DurabilityError


class Listener:
    def __init__(self, conn: psycopg.Connection, channel: str):
        self.conn = conn
        try:
            conn.execute(f"LISTEN {channel}")
        except psycopg.Error as e:
            conn.close()
            raise DurabilityError(f"cannot LISTEN on {channel}: {e}") from e

    def wait(self, timeout: float) -> int | None:
        """The newest version announced within `timeout` seconds (draining the backlog), or None."""
        newest = None
        try:
            for note in self.conn.notifies(timeout=timeout, stop_after=1):
                newest = max(newest or 0, _version(note.payload))
            for note in self.conn.notifies(timeout=0.0):  # whatever else is already queued
                newest = max(newest or 0, _version(note.payload))
        except psycopg.Error as e:
            raise DurabilityError(f"the LISTEN connection failed: {e}") from e
        return newest

    def close(self) -> None:
        try:
            self.conn.close()
        except psycopg.Error:
            pass


def _version(payload: str) -> int:
    try:
        return int(payload)
    except ValueError:
        return 0
