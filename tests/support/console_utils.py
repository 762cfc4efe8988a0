"""A tiny-model server with an admin key for the console, import, preview and client tests
(session-scoped: tests share it and must not depend on each other's edits)."""

from __future__ import annotations

import json

import pytest

from .server_utils import tiny

ADMIN = "console-admin-" + "k" * 20
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
# cheap edits: a few optimisation steps, no co-training with neighbours
TINY_CONFIG = json.dumps({"max_steps": 12, "max_neighbours": 0})


def console(env: dict[str, str] | None = None):
    return tiny({"MEMOIR_ADMIN_KEYS": f"ops:{ADMIN}", "MEMOIR_TINY_CONFIG": TINY_CONFIG,
                 "MEMOIR_MAX_NEW_TOKENS": "64", **(env or {})})


@pytest.fixture(scope="session")
def console_server():
    server = console().start(120)
    yield server
    server.stop()
