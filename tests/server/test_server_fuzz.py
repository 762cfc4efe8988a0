"""Property-based fuzzing of every route from the OpenAPI schema (schemathesis): whatever a
client sends, valid or not, the answer is never a 5xx. Tiny model; edits train 2 steps."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error

from app.http.main import create_app
from app.settings import Settings
from tests.support.server_utils import tiny

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def fuzz_server():
    server = tiny({"MEMOIR_TINY_CONFIG": '{"max_steps": 2}', "MEMOIR_MAX_NEW_TOKENS": "8",
                   "MEMOIR_EDIT_QUEUE_SIZE": "64", "MEMOIR_MAX_PROMPT_TOKENS": "512"}).start(120)
    yield server
    server.stop()


# The schema of the app the server runs (building the app loads no model). Read here rather
# than from the running server: schemathesis's lazy fixture loader does not work on pytest 9.
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi())


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case, fuzz_server):
    case.call_and_validate(base_url=fuzz_server.url, checks=[not_a_server_error], timeout=60)
