"""What the engine refuses work with, in the service's own terms: no HTTP here.

app/http/errors.py alone maps these (and memoir_core's errors) to HTTP statuses, so the engine, the
writer and the import jobs can be used and tested without a web framework.
"""

from __future__ import annotations

from memoir_core import errors as core


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


class NotReadyError(EngineError):
    """The model or the memory's store is still loading (or failed to); `retry_after`: try again then."""

    retry_after = 5


# Work refused for a reason of its own (its input, an unknown id, a conflict, a full queue), as
# against work that failed: the edits' "rejected" outcome on /metrics. app/http/errors.py answers
# exactly these with a 4xx (tests/server/test_engine_errors.py holds the two together).
REFUSED = (core.InvalidRequestError, core.EditNotFoundError, core.EditConflictError, core.EditRejectedError,
           QueueFullError)


def refused(error: BaseException) -> bool:
    return isinstance(error, REFUSED) and not isinstance(error, core.EditFailedError)
