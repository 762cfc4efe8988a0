"""The server's edit jobs: the one code path that changes the memory, step by step.

An edit request (one edit or a list) is a job that the engine advances a little per turn (one
optimisation step, or one time slice of it: memoir_core/timeslice.py), so generation goes on
while it trains. Before anything is trained the whole list is checked (texts, token limits, id
conflicts), so bad input applies nothing. Each trained edit passes the blast-radius check (or,
in a dry run, is previewed) and is handed to memoir_core.committer.Committer, which keeps the
commit rule: written to the store first, applied only after that (a new memory version), under
a shared log's write lock. This module keeps the bookkeeping: jobs, their answers, retry hints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from memoir_core.committer import Committer
from memoir_core.errors import EditConflictError, MemoirError
from memoir_core.memoir import Memoir
from memoir_core.preview import Probes, check_blast_radius, preview
from memoir_core.records import EditRecord
from memoir_core.state import MemoryStore
from memoir_core.timeslice import Sliced

from .hostmem import trim

log = logging.getLogger(__name__)

Post = Callable[[Any], None]  # hands a result (or an exception) back to the event loop


@dataclass
class EditSpec:
    prompt: str
    target_new: str
    rephrase_prompts: list[str] = field(default_factory=list)
    subject: str | None = None
    aliases: list[str] | None = None  # None: infer (an acronym); []: none
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
        self.committer = Committer(memoir, store)  # the commit rule: train, log durably, apply
        self.seconds_per_edit = 1.0  # moving average, for Retry-After

    @property
    def failed(self) -> str | None:
        """Set when the store failed: no more writes until restart."""
        return self.committer.failed

    @property
    def waiting(self) -> bool:
        """A job waits for another replica's write lock (the engine thread may sleep a little)."""
        return self.committer.waiting

    def refuse_if_failed(self) -> None:
        self.committer.refuse_if_failed()

    # -- edits --------------------------------------------------------------------------------
    def step(self, job: EditJob) -> bool:
        """Advance the job by one optimisation step; True when it is finished (and answered)."""
        try:
            if not job.checked:
                self.refuse_if_failed()
                self._check(job.items)
                job.checked = True
            if job.training is None:
                if not self.committer.lock():
                    return False  # another replica writes: try again on a later turn
                if not self._start_next(job):
                    self.committer.unlock()
                    job.post((list(job.applied), self.memoir.version))
                    trim()  # training's freed buffers would otherwise stay resident, per edit
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
            self.committer.unlock()
            job.post(error)
            return True
        except Exception as error:
            self.committer.unlock()
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
                subject, source = self.memoir.subject_of(prompt, it.subject)
                self.memoir.aliases_of(subject if source else None, it.aliases)
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
                    subject=it.subject, aliases=it.aliases, metadata=it.metadata, author=it.author)
                points = self.memoir.pause_points() if self.slice_seconds else []
                job.training = Sliced(training, points, self.slice_seconds) if points else training
                return True
            job.applied.append(Applied(found, True))
            job.index += 1
        return False

    def _commit(self, proposal, probe_prompts=()) -> EditRecord:
        if self.max_blast_radius is not None:
            check_blast_radius(self.memoir, proposal, self.probes, self.max_blast_radius, "MEMOIR_MAX_BLAST_RADIUS",
                               given=probe_prompts)
        committed = self.committer.commit(proposal)
        self.seconds_per_edit = 0.8 * self.seconds_per_edit + 0.2 * committed.seconds
        return committed

    # -- rollback -----------------------------------------------------------------------------
    def remove(self, job: RemoveJob) -> bool:
        """Roll one edit back; False while another replica holds the write lock (call again)."""
        try:
            self.refuse_if_failed()
            if not self.committer.lock():
                return False
            shared = self.memoir.shared_columns(job.edit_id)  # EditNotFoundError: no such edit
            record = self.committer.remove(job.edit_id)
            job.post(Removal(record, shared, self.memoir.version))
        except Exception as error:
            self.committer.unlock()
            if not isinstance(error, MemoirError):
                log.exception("removing edit %s failed", job.edit_id)
            job.post(error)
        return True
