"""Bulk import jobs: the checked rows of a file are applied one by one through the engine's single
writer (as POST /edit would), while the job keeps a progress count and a report by line number.

A job runs on the replica that took the file; its report lives in this process's memory (the last
MAX_KEPT finished ones are kept) and, in PostgreSQL mode, in the shared table too (shared_state.py),
so a poll that lands on another replica finds it. The edits it applied are durable like any other,
and each is in the audit trail with the import's id. A row that fails while it is applied (a token limit, an id
conflict, a refused blast radius) is reported and the job goes on; a stopped engine or a failed
store ends the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from memoir_core.errors import DurabilityError

from .engine import Engine
from .engine_errors import EngineStoppedError, QueueFullError
from .shared_state import SharedState
from .writer import EditBatchError

log = logging.getLogger(__name__)
MAX_KEPT = 100
KIND = "import"
KEEP_SECONDS = 7 * 86400.0  # how long a shared report is kept
SAVE_EVERY = 0.5  # seconds between saves of a running job's progress to the shared table
HEARTBEAT = 10.0  # a running job's report is saved at least this often, progress or not
LOST_AFTER = 60.0  # a shared "running" report this old: the replica running it is gone

# what the job tells the audit trail: the edits of a row it applied, then the finished report
OnApplied = Callable[[list, "str | None", str], Awaitable[None]]
OnFinished = Callable[[dict], Awaitable[None]]


class Row(Protocol):
    """One checked row of an import file (app/http/import_rows.py reads them): its line, and either
    the edit (a request model whose `to_spec` makes the writer's item) or why it was refused."""

    line: int
    edit: Any
    error: str | None


@dataclass
class ImportJob:
    id: str
    rows: list[Row]
    author: str | None
    created_at: float = field(default_factory=time.time)
    status: str = "running"  # running -> done | failed
    done: int = 0  # rows handled (applied or reported)
    applied: list[dict[str, Any]] = field(default_factory=list)  # line, id, version, replayed
    errors: list[dict[str, Any]] = field(default_factory=list)  # line, error
    finished_at: float | None = None
    reason: str | None = None  # why a failed job stopped
    task: asyncio.Task | None = None
    saved: float = 0.0  # when the report was last shared (monotonic)

    @property
    def total(self) -> int:
        return len(self.rows)

    def report(self) -> dict[str, Any]:
        return {"id": self.id, "status": self.status, "total": self.total, "done": self.done,
                "applied_count": len(self.applied), "error_count": len(self.errors),
                "progress": round(self.done / self.total, 4) if self.total else 1.0,
                "created_at": self.created_at, "finished_at": self.finished_at, "author": self.author,
                "reason": self.reason, "errors": sorted(self.errors, key=lambda e: e["line"]),
                "applied": list(self.applied)}


async def _nothing(*_) -> None:
    return None


def _checked(report: dict[str, Any]) -> dict[str, Any]:
    """A shared report as another replica sees it: "running" but silent for LOST_AFTER seconds
    means the replica that ran it stopped (killed, cut off); the rows it applied stay applied."""
    silent = time.time() - report.pop("saved_at", time.time())
    if report["status"] == "running" and silent > LOST_AFTER:
        report["status"] = "lost"
        report["reason"] = (f"the replica running it has not reported for {silent:.0f} s; the rows listed as "
                            "applied are durable, the others were not applied: import them again")
    return report


class Imports:
    def __init__(self, shared: SharedState | None = None, on_applied: OnApplied = _nothing,
                 on_finished: OnFinished = _nothing):
        self.jobs: dict[str, ImportJob] = {}
        self.shared = shared
        self.on_applied, self.on_finished = on_applied, on_finished

    async def report(self, job_id: str) -> dict[str, Any] | None:
        """The job's report: this replica's own, else the shared table's (PostgreSQL mode)."""
        job = self.jobs.get(job_id)
        if job is not None:
            return job.report()
        if self.shared is None:
            return None
        report = await asyncio.to_thread(self.shared.get, KIND, job_id)
        return _checked(report) if report is not None else None

    async def reports(self) -> list[dict[str, Any]]:
        mine = {j.id: j.report() for j in self.jobs.values()}
        if self.shared is not None:
            for r in await asyncio.to_thread(self.shared.all, KIND):
                mine.setdefault(r["id"], _checked(r))
        return sorted(mine.values(), key=lambda r: r["created_at"])

    async def _save(self, job: ImportJob, force: bool = False) -> None:
        if self.shared is None or (not force and time.monotonic() - job.saved < SAVE_EVERY):
            return
        job.saved = time.monotonic()
        try:
            report = {**job.report(), "saved_at": time.time()}
            await asyncio.to_thread(self.shared.put, KIND, job.id, report, KEEP_SECONDS)
        except Exception as error:  # progress elsewhere lags; the job itself goes on
            log.warning("import %s: its report could not be shared: %s", job.id, error)

    def start(self, engine: Engine, rows: list[Row], author: str | None) -> ImportJob:
        self._forget_old()
        job = ImportJob(uuid.uuid4().hex[:12], rows, author)
        for row in rows:  # rows that failed the checks are reported at once
            if row.error is not None:
                job.errors.append({"line": row.line, "error": row.error})
        self.jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(engine, job), name=f"import-{job.id}")
        return job

    def _forget_old(self) -> None:
        finished = [j for j in self.jobs.values() if j.status != "running"]
        for job in finished[: max(0, len(finished) - MAX_KEPT + 1)]:
            del self.jobs[job.id]

    async def _run(self, engine: Engine, job: ImportJob) -> None:
        beat = asyncio.get_running_loop().create_task(self._heartbeat(job)) if self.shared is not None else None
        try:
            await self._save(job, force=True)
            for row in job.rows:
                if row.edit is not None:
                    await self._apply(engine, job, row)
                job.done += 1
                await self._save(job)
            job.status = "done"
        except (EngineStoppedError, DurabilityError) as error:
            job.status, job.reason = "failed", str(error)
        except Exception as error:  # a bug must not leave the job "running" for ever
            log.exception("import %s failed", job.id)
            job.status, job.reason = "failed", f"{type(error).__name__}: {error}"
        finally:
            if beat is not None:
                beat.cancel()
            job.finished_at = time.time()
            log.info("import %s %s: %d applied, %d rows refused", job.id, job.status, len(job.applied),
                     len(job.errors))
            await self._save(job, force=True)
            await self.on_finished(job.report())

    async def _heartbeat(self, job: ImportJob) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            await self._save(job, force=True)

    async def _apply(self, engine: Engine, job: ImportJob, row: Row) -> None:
        spec = row.edit.to_spec(job.author, probes=False)  # an import has never checked probe prompts
        while True:
            try:
                applied, _ = await engine.edit([spec])
            except QueueFullError as error:  # other clients' edits fill the queue: wait our turn
                await asyncio.sleep(min(5, error.retry_after or 1))
                continue
            except EditBatchError as error:
                if isinstance(error.error, DurabilityError):
                    raise error.error from None
                job.errors.append({"line": row.line, "error": str(error.error)})
                return
            await self.on_applied(applied, job.author, f"import {job.id}")
            for a in applied:
                job.applied.append({"line": row.line, "id": a.record.id, "version": a.record.version,
                                    "replayed": a.replayed})
            return
