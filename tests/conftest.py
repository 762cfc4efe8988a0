"""Shared fixtures, for every test under tests/: tiny random models (fast, for behaviour that does
not depend on knowledge; built in tests/support/tiny.py) and the real default model (for behaviour
that does; tests marked `real`), and the servers in subprocesses."""

from __future__ import annotations

import os

import pytest

# Servers started by the tests keep their memory in RAM unless a test gives them a state
# directory (MEMOIR_STATE_DIR, with MEMOIR_STORE=auto or dir; support/server_utils.Server sets auto when
# MEMOIR_STATE_DIR is in the env it is given): the default, a durable directory per model under
# ~/.local/share, would carry edits from one test (and one run) into the next.
os.environ.setdefault("MEMOIR_STORE", "memory")

from .support.tiny import tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def real():
    """The default model with a fresh memory (shared per session: tests must undo their edits)."""
    from memoir_core import models
    from memoir_core.memoir import Memoir

    model, tok = models.load()
    return Memoir(model, tok)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("MEMOIR_SKIP_REAL") == "1":
        skip = pytest.mark.skip(reason="MEMOIR_SKIP_REAL=1")
        for item in items:
            if "real" in item.keywords:
                item.add_marker(skip)


# Servers in subprocesses for the HTTP tests (session-scoped, shared by the test modules).
from .support.console_utils import console_server  # noqa: E402,F401
from .support.server_utils import real_server, tiny_server  # noqa: E402,F401
