"""The one code path that changes the memory: train, make durable, commit — in that order.

An edit request (one edit or a list) is a job that the engine advances a little per turn (one
optimisation step, or one time slice of it: memoir_core/timeslice.py), so generation goes on
while it trains. Before anything is trained the whole
list is checked (texts, token limits, id conflicts), so bad input applies nothing. Each edit
is then written to the store and only after that committed (a new memory version) — an edit
the client hears about is durable, and one the store could not write never becomes visible.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memoir_core.errors import (DurabilityError, EditConflictError, EditNotFoundError, MemoirError,
                                TransientDurabilityError)
from memoir_core.memoir import Memoir
from memoir_core.preview import Probes, check_blast_radius, preview
from memoir_core.records import EditRecord
from memoir_core.replica import apply_entries
from memoir_core.state import MemoryStore
from memoir_core.timeslice import Sliced

log = logging.getLogger(__name__)

Post = Callable[[Any], None]  # hands a result (or an exception) back to the event loop


@dataclass
class EditSpec:
    prompt: str
    target_new: str
    rephrase_prompts: list[str] = field(default_factory=list)
    subject: str | None = None
    id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    author: str | None = None
    probe_prompts: list[str] = field(default_factory=list)  # must not change: the dry run and blast radius try them


@dataclass
class Applied:
    record: EditRecord
    replayed: bool  # an idempotent retry: the stored edit, nothing trained


@dataclass
class Removal:
    record: EditRecord
    shared_columns: dict[str, int]
    version: int


class EditBatchError(Exception):
    """An edit of a request failed; `applied` lists the edits before it, which stay applied."""

    def __init__(self, error: Exception, index: int | None, applied: list[Applied]):
        super().__init__(str(error))
        self.error, self.index, self.applied = error, index, applied


@dataclass
class EditJob:
    items: list[EditSpec]
    post: Post
    applied: list[Applied] = field(default_factory=list)
    index: int = 0
    training: Any = None  # the current propose() generator (or its Sliced runner)
    checked: bool = False
    dry_run: bool = False  # train, preview and answer with the Preview; nothing is committed


@dataclass
class RemoveJob:
    edit_id: str
    post: Post


class Writer:
    def __init__(self, memoir: Memoir, store: MemoryStore,
                 max_blast_radius: int | None = None, preview_tokens: int = 16, slice_seconds: float = 0.0):
        self.memoir = memoir
        self.slice_seconds = slice_seconds  # > 0: train in time slices (timeslice.Sliced)
        self.store = store
        self.max_blast_radius = max_blast_radius  # None: no limit
        self.preview_tokens = preview_tokens
        self.probes = Probes()  # background texts for the blast radius
        self.failed: str | None = None  # set when the store failed: no more writes until restart
        self.seconds_per_edit = 1.0  # moving average, for Retry-After
        # A shared store (PostgreSQL: many replicas) is written by one replica at a time: the
        # writer takes the cluster's lock and catches up to the log's head *before* it trains,
        # so every edit trains on the newest memory, and the commit that appends it lets go.
        self.shared = bool(getattr(store, "shared", False))
        self.locked = False  # this replica holds the cluster's write lock
        self.waiting = False  # a job waits for the lock (the engine thread may sleep a little)
        self._next_try = 0.0

    # Replicas waiting for the lock try it every RETRY seconds; one that has just written waits
    # COURTESY (> RETRY) before it takes the lock again, so a replica with a long queue of edits
    # does not keep the others waiting until its queue is empty.
    RETRY, COURTESY = 0.02, 0.05

    def _released(self) -> None:
        self.locked = False
        self._next_try = time.monotonic() + self.COURTESY

    def _lock(self) -> bool:
        """Take the cluster's write lock and apply what other replicas wrote; False: busy, later."""
        if not self.shared or self.locked:
            return True
        now = time.monotonic()
        if now < self._next_try:
            self.waiting = True
            return False
        entries = self.store.begin_write(self.memoir.version)
        if entries is None:
            self._next_try, self.waiting = now + self.RETRY, True
            return False
        self.locked, self.waiting = True, False
        try:
            apply_entries(self.memoir.memory, entries)
        except Exception:
            self._unlock()
            raise
        return True

    def _unlock(self) -> None:
        self.waiting = False
        if self.locked:
            self.locked = False
            self.store.abort_write()

    def refuse_if_failed(self) -> None:
        if self.failed:
            raise DurabilityError(f"edits are stopped after a failed write ({self.failed}); restart the server")

    # -- edits --------------------------------------------------------------------------------
    def step(self, job: EditJob) -> bool:
        """Advance the job by one optimisation step; True when it is finished (and answered)."""
        try:
            if not job.checked:
                self.refuse_if_failed()
                self._check(job.items)
                job.checked = True
            if job.training is None:
                if not self._lock():
                    return False  # another replica writes: try again on a later turn
                if not self._start_next(job):
                    self._unlock()
                    job.post((list(job.applied), self.memoir.version))
                    return True
            try:
                next(job.training)
                return False
            except StopIteration as stop:
                job.training = None
                if job.dry_run:
                    job.post(preview(self.memoir, stop.value, self.probes, max_new_tokens=self.preview_tokens,
                                     given=job.items[job.index].probe_prompts))
                    return True
                job.applied.append(Applied(self._commit(stop.value, job.items[job.index].probe_prompts), False))
                job.index += 1
                return False
        except EditBatchError as error:
            self._unlock()
            job.post(error)
            return True
        except Exception as error:
            self._unlock()
            if not isinstance(error, MemoirError):
                log.exception("edit %d of a request failed", job.index)
            index = job.index if len(job.items) > 1 else None
            job.post(EditBatchError(error, index, list(job.applied)))
            return True

    def _check(self, items: list[EditSpec]) -> None:
        seen: dict[str, tuple[str, str]] = {}
        for i, it in enumerate(items):
            try:
                prompt, target = self.memoir.validate(it.prompt, it.target_new)
                self.memoir.subject_of(prompt, it.subject)
                for j, p in enumerate(it.rephrase_prompts):
                    try:
                        self.memoir.validate(p, target)
                    except MemoirError as e:
                        raise type(e)(f"rephrase_prompts[{j}]: {e}") from None
                if it.id is not None:
                    if seen.get(it.id, (prompt, target)) != (prompt, target):
                        raise EditConflictError(f"edit id {it.id!r} is used twice with different content")
                    seen[it.id] = (prompt, target)
                    self.memoir.existing(it.id, prompt, target)
            except MemoirError as e:
                raise EditBatchError(e, i if len(items) > 1 else None, []) from None

    def _start_next(self, job: EditJob) -> bool:
        """Begin training the next item that needs it; False when none is left."""
        while job.index < len(job.items):
            it = job.items[job.index]
            found = None
            if it.id is not None and not job.dry_run:
                found = self.memoir.existing(it.id, it.prompt, it.target_new)
            if found is None:
                training = self.memoir.propose(
                    it.prompt, it.target_new, edit_id=None if job.dry_run else it.id, rephrases=it.rephrase_prompts,
                    subject=it.subject, metadata=it.metadata, author=it.author)
                points = self.memoir.pause_points() if self.slice_seconds else []
                job.training = Sliced(training, points, self.slice_seconds) if points else training
                return True
            job.applied.append(Applied(found, True))
            job.index += 1
        return False

    def _commit(self, proposal, probe_prompts=()) -> EditRecord:
        record = proposal.record
        if self.max_blast_radius is not None:
            check_blast_radius(self.memoir, proposal, self.probes, self.max_blast_radius, "MEMOIR_MAX_BLAST_RADIUS",
                               given=probe_prompts)
        record.version = self.memoir.version + 1  # what commit() will give it; the log needs it first
        self._durable(self.store.log_edit, record)
        if self.shared:
            self._released()  # the commit released the cluster's lock
        committed = self.memoir.commit(proposal)
        self.seconds_per_edit = 0.8 * self.seconds_per_edit + 0.2 * committed.seconds
        return committed

    # -- rollback -----------------------------------------------------------------------------
    def remove(self, job: RemoveJob) -> bool:
        """Roll one edit back; False while another replica holds the write lock (call again)."""
        try:
            self.refuse_if_failed()
            if not self._lock():
                return False
            if job.edit_id not in self.memoir.edits:
                raise EditNotFoundError(f"no edit with id {job.edit_id!r}")
            shared = self.memoir.shared_columns(job.edit_id)
            version = self.memoir.version + 1
            self._durable(self.store.log_removal, job.edit_id, version)
            if self.shared:
                self._released()
            record = self.memoir.remove(job.edit_id)
            job.post(Removal(record, shared, self.memoir.version))
        except Exception as error:
            self._unlock()
            if not isinstance(error, MemoirError):
                log.exception("removing edit %s failed", job.edit_id)
            job.post(error)
        return True

    def _durable(self, write, *args) -> None:
        try:
            write(*args)
        except Exception as error:
            self.locked = False
            if self.shared:  # a failed transaction leaves nothing behind: the next edit may try again
                self.store.abort_write()  # (the lock goes back, also when the write never began)
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
