"""Log a recurring error once per interval, not once per event, saying how many were left out.

A fault that repeats thousands of times a second (EMFILE on every accept, ENOSPC on every
edit) would otherwise fill the disk with the same line and bury what came before it."""

from __future__ import annotations

import threading
import time


class Throttle:
    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._mu = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def due(self, key: str) -> int | None:
        """None: leave this event out; otherwise log it now, with this many left out since."""
        now = time.monotonic()
        with self._mu:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._skipped[key] = self._skipped.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._skipped.pop(key, 0)
