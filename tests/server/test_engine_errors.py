"""The service's errors and the HTTP shell's statuses agree: what the engine's telemetry counts as
refused (app/service/engine_errors.refused, the "rejected" outcome on /metrics) is what
app/http/errors.py answers with a 4xx, but for an edit that trained and did not fit (a 422 to its
client, the service's failure on /metrics)."""

from __future__ import annotations

import pytest

from app.http.errors import response_for, status_of
from app.service.engine_errors import EngineError, EngineStoppedError, NotReadyError, QueueFullError, refused
from memoir_core import errors as core

EXAMPLES = [
    core.InvalidRequestError("bad"), core.EditNotFoundError("e1"), core.EditConflictError("taken"),
    core.EditRejectedError("too wide"), core.EditFailedError("no fit"), core.DurabilityError("disk"),
    core.TransientDurabilityError("disk"), core.StateError("state"), core.StateMismatchError("layout"),
    core.UnsupportedArchitectureError("arch"), core.ConfigError("field"), QueueFullError("full", 3),
    EngineStoppedError("stopped"), NotReadyError("loading"), RuntimeError("a bug"),
]


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_refused_is_a_client_status(error):
    assert refused(error) == (status_of(error)[0] < 500 and not isinstance(error, core.EditFailedError))


def test_not_ready_is_a_503_to_retry():
    error = NotReadyError("the model is loading")
    assert isinstance(error, EngineError) and status_of(error) == (503, "not_ready")
    response = response_for(error)
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert b"the model is loading" in response.body
