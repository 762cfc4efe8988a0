"""The commit rule: an edit is trained, then made durable in the store, and only then applied.

An edit a caller hears about is in the store; one the store could not write never becomes
visible. With a SharedLog (many replicas write through it) the rule runs under the log's
write lock: `lock()` takes it and first applies what other replicas wrote, so the edit trains
on the newest memory, and the write that appends the edit lets the lock go.

Two ways to drive it:
  - step by step, as the server's writer does between decode steps (app/service/writer.py):
    lock() (False: another replica writes; try later), train with memoir.propose, commit(),
    or unlock() if the edit is dropped;
  - in one call, for a program using the library: edit(prompt, target) and rollback(edit_id)
    wait for the lock, train, log and apply.
Like the Memoir, it is not thread-safe: the thread that owns the Memoir calls it.
"""

from __future__ import annotations

import logging
import time

from .errors import DurabilityError, EditNotFoundError, MemoirError, TransientDurabilityError
from .memoir import EditProposal, Memoir
from .records import EditRecord
from .replica import apply_entries
from .state import MemoryStore, shared_log

log = logging.getLogger(__name__)


class Committer:
    # Replicas waiting for the lock try it every RETRY seconds; one that has just written waits
    # COURTESY (> RETRY) before it takes the lock again, so a replica with a long queue of edits
    # does not keep the others waiting until its queue is empty.
    RETRY, COURTESY = 0.02, 0.05

    def __init__(self, memoir: Memoir, store: MemoryStore):
        self.memoir = memoir
        self.store = store
        self.log = shared_log(store)  # None: this process is the store's only writer
        self.failed: str | None = None  # set when the store failed: no more writes until restart
        self.locked = False  # this replica holds the shared log's write lock
        self.waiting = False  # lock() found it busy (the caller may sleep a little)
        self._next_try = 0.0

    @property
    def shared(self) -> bool:
        return self.log is not None

    def refuse_if_failed(self) -> None:
        if self.failed:
            raise DurabilityError(f"edits are stopped after a failed write ({self.failed}); restart the server")

    # -- the write lock (a SharedLog's; always granted otherwise) ---------------------------------
    def lock(self) -> bool:
        """Take the write lock and apply what other replicas wrote; False: busy, try later."""
        if self.log is None or self.locked:
            return True
        now = time.monotonic()
        if now < self._next_try:
            self.waiting = True
            return False
        entries = self.log.begin_write(self.memoir.version)
        if entries is None:
            self._next_try, self.waiting = now + self.RETRY, True
            return False
        self.locked, self.waiting = True, False
        try:
            apply_entries(self.memoir.memory, entries)
        except Exception:
            self.unlock()
            raise
        return True

    def unlock(self) -> None:
        """Give the lock back without writing (a dropped or failed edit)."""
        self.waiting = False
        if self.locked:
            self.locked = False
            self.log.abort_write()

    def _released(self) -> None:
        """The write that appended an entry let the lock go."""
        if self.log is not None:
            self.locked = False
            self._next_try = time.monotonic() + self.COURTESY

    # -- log, then apply ------------------------------------------------------------------------
    def commit(self, proposal: EditProposal) -> EditRecord:
        """Make the trained edit durable, then apply it (a new version). With the lock held."""
        record = proposal.record
        record.version = self.memoir.version + 1  # what Memory.commit will give it; the log needs it first
        self._durable(self.store.log_edit, record)
        self._released()
        return self.memoir.commit(proposal)

    def remove(self, edit_id: str) -> EditRecord:
        """Make the rollback durable, then take the edit out (a new version). With the lock held."""
        if edit_id not in self.memoir.edits:
            raise EditNotFoundError(f"no edit with id {edit_id!r}")
        self._durable(self.store.log_removal, edit_id, self.memoir.version + 1)
        self._released()
        return self.memoir.remove(edit_id)

    def _durable(self, write, *args) -> None:
        try:
            write(*args)
        except Exception as error:
            self.locked = False
            if self.log is not None:  # a failed transaction leaves nothing behind: the next edit may try again
                self.log.abort_write()  # (the lock goes back, also when the write never began)
                log.error("the memory store failed: %s", error)
                if isinstance(error, MemoirError):
                    raise
                raise DurabilityError(f"the edit could not be made durable ({error}); it was not applied") \
                    from error
            if isinstance(error, TransientDurabilityError):  # the store pauses, checks and resumes itself
                raise
            # The store may hold a partial write: stop writing rather than build on it.
            self.failed = f"{type(error).__name__}: {error}"
            log.error("the memory store failed; edits are stopped: %s", self.failed)
            if isinstance(error, DurabilityError):
                raise
            raise DurabilityError(f"the edit could not be made durable ({self.failed}); it was not applied") \
                from error

    # -- in one call (a program using the library) ------------------------------------------------
    def acquire(self) -> None:
        """lock(), waiting for as long as other replicas hold it."""
        while not self.lock():
            time.sleep(max(self.RETRY, self._next_try - time.monotonic()))

    def edit(self, prompt: str, target: str, **kwargs) -> EditRecord:
        """Train an edit, log it, apply it (Memoir.edit's arguments); an idempotent retry of a
        stored edit id returns the stored edit."""
        self.refuse_if_failed()
        self.acquire()
        try:
            edit_id = kwargs.get("edit_id")
            found = self.memoir.existing(edit_id, prompt, target) if edit_id is not None else None
            if found is not None:
                self.unlock()
                return found
            return self.commit(self.memoir.train(prompt, target, **kwargs))
        except BaseException:
            self.unlock()
            raise

    def rollback(self, edit_id: str) -> EditRecord:
        """Log the edit's removal, then take it out."""
        self.refuse_if_failed()
        self.acquire()
        try:
            return self.remove(edit_id)
        except BaseException:
            self.unlock()
            raise
