"""What the engine refuses work with, in the service's own terms: no HTTP here.

app/errors.py alone maps these (and memoir_core's errors) to HTTP statuses, so the engine, the
writer and the import jobs can be used and tested without a web framework.
"""

from __future__ import annotations


class EngineError(Exception):
    """The engine cannot take this work now."""

    retry_after: int | None = None  # seconds after which trying again may succeed


class EngineStoppedError(EngineError):
    """The engine thread is not running (stopped, failed, or shutting down)."""


class QueueFullError(EngineError):
    """The queue of sequences or edit requests is full; `retry_after`: when to try again."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after
