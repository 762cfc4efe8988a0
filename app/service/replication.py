"""A replica follows the shared edit log: it learns of new entries at once (LISTEN/NOTIFY, with
polling as the fallback), fetches them and has the engine thread apply them in order.

Status, for /ready: "catching_up" until the replica has reached the log's head once (and again
while it rebuilds after falling behind a compaction), "cut_off" while the database cannot be
reached, "ok". A replica cut off for longer than MEMOIR_CUT_OFF_GRACE is not ready: others may
have moved on, so the load balancer should send requests elsewhere. (Within the grace it goes on
serving: a short database restart should not take every replica out of the load balancer.)
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from memoir_core.errors import StateError
from memoir_core.replica import LogGapError, apply_entries, reset
from memoir_core.state import SharedLog

from .engine import Engine

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, store: SharedLog, engine: Engine, poll: float = 1.0, url: str | None = None):
        self.store = store
        self.engine = engine
        self.poll = poll
        self.url = url
        self.status = "catching_up"
        self.error: str | None = None
        self.head = 0  # the newest version this replica knows the log has
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memoir-follower", daemon=True)
        self._listener = None
        self._reported = (-1, 0.0)
        self.cut_since: float | None = None  # monotonic time the log became unreadable

    def cut_for(self) -> float:
        """Seconds this replica has been cut off from the log (0 when it is not)."""
        return time.monotonic() - self.cut_since if self.status == "cut_off" and self.cut_since else 0.0

    @property
    def version(self) -> int:
        return self.engine.version

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._kick.set()
        self._thread.join(5)

    def kick(self) -> None:
        """Look at the log now (a request waits for a version this replica has not seen)."""
        self._kick.set()

    # -- the follower's thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._listener is None:
                    self._listener = self.store.listener()
                self.sync()
                self._wait()
            except Exception as error:  # noqa: BLE001 - the database is away: try again
                self._cut_off(error)
                self._stop.wait(min(self.poll, 1.0))
        if self._listener is not None:
            self._listener.close()

    def _wait(self) -> None:
        """Until an entry is announced, a request kicks, or the poll interval passes."""
        deadline = time.monotonic() + self.poll
        while not self._stop.is_set() and not self._kick.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            announced = self._listener.wait(min(left, 0.1))
            if announced is not None:
                self.head = max(self.head, announced)
                if announced > self.version:
                    return
        self._kick.clear()

    def _cut_off(self, error: Exception) -> None:
        if self.status != "cut_off":
            log.error("replication: the shared log cannot be read (%s); this replica may fall behind", error)
            self.cut_since = time.monotonic()
        self.status, self.error = "cut_off", f"{type(error).__name__}: {error}"
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def sync(self) -> None:
        """Apply every entry up to the log's head (blocking until the engine has applied them)."""
        self.head = max(self.head, self.store.head())
        while self.version < self.head and not self._stop.is_set():
            try:
                entries = self.store.fetch_after(self.version)
            except LogGapError as gap:
                self._rebuild(gap)
                continue
            if not entries:
                break
            self.head = max(self.head, entries[-1].version)
            try:
                self.engine.submit(lambda memoir, e=entries: apply_entries(memoir.memory, e)).result(60)
                for e in entries:  # applied: their deltas leave RAM (read back from the database)
                    if e.record is not None:
                        self.store.deltas.spill(e.record)
            except LogGapError:
                continue  # the engine's writer moved the memory on meanwhile: fetch again
        if self.status != "ok":
            log.info("replication: caught up at version %d", self.version)
        self.status, self.error = "ok", None
        self._report()

    def _rebuild(self, gap: LogGapError) -> None:
        """Fallen behind a compaction: replace the memory by the newest snapshot plus the log tail."""
        self.status = "catching_up"
        log.warning("replication: %s; rebuilding the memory from the newest snapshot", gap)
        loaded = self.store.load_latest()
        self.engine.submit(lambda memoir: reset(memoir.memory, loaded) if loaded.version > memoir.version else None
                           ).result(300)

    def _report(self) -> None:
        version, at = self._reported
        if version != self.version or time.monotonic() - at > 10:
            try:
                self.store.report(self.version, self.url)
                self._reported = (self.version, time.monotonic())
            except StateError:
                pass

    # -- read-your-writes -------------------------------------------------------------------------
    async def reach(self, version: int, wait: float) -> bool:
        """Wait up to `wait` seconds for the memory to reach `version`."""
        deadline = time.monotonic() + wait
        while self.version < version:
            if time.monotonic() >= deadline:
                return False
            self.kick()
            await asyncio.sleep(0.005)
        return True
