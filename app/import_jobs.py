"""Bulk import jobs: the checked rows of a file are applied one by one through the engine's single
writer (as POST /edit would), while the job keeps a progress count and a report by line number.

Jobs live in this process's memory (the last MAX_KEPT finished ones are kept); the edits they
applied are durable like any other. A row that fails while it is applied (a token limit, an id
conflict, a refused blast radius) is reported and the job goes on; a stopped engine or a failed
store ends the job.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from memoir_core.errors import DurabilityError

from .engine import Engine
from .errors import EngineStoppedError, QueueFullError
from .import_rows import Row
from .writer import EditBatchError, EditSpec

log = logging.getLogger(__name__)
MAX_KEPT = 100


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


class Imports:
    def __init__(self):
        self.jobs: dict[str, ImportJob] = {}

    def get(self, job_id: str) -> ImportJob | None:
        return self.jobs.get(job_id)

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
        try:
            for row in job.rows:
                if row.edit is not None:
                    await self._apply(engine, job, row)
                job.done += 1
            job.status = "done"
        except (EngineStoppedError, DurabilityError) as error:
            job.status, job.reason = "failed", str(error)
        except Exception as error:  # a bug must not leave the job "running" for ever
            log.exception("import %s failed", job.id)
            job.status, job.reason = "failed", f"{type(error).__name__}: {error}"
        finally:
            job.finished_at = time.time()
            log.info("import %s %s: %d applied, %d rows refused", job.id, job.status, len(job.applied),
                     len(job.errors))

    async def _apply(self, engine: Engine, job: ImportJob, row: Row) -> None:
        e = row.edit
        spec = EditSpec(prompt=e.prompt, target_new=e.target_new, rephrase_prompts=list(e.rephrase_prompts),
                        subject=e.subject, id=e.id, metadata=dict(e.metadata), author=job.author)
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
            for a in applied:
                job.applied.append({"line": row.line, "id": a.record.id, "version": a.record.version,
                                    "replayed": a.replayed})
            return
