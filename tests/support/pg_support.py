"""A fresh PostgreSQL database per test (memoir_test_<random>, dropped afterwards) on the server
at MEMOIR_TEST_PG (default postgresql://postgres@127.0.0.1:5432/postgres); the tests that need
one skip, saying why, where psycopg or the server is missing."""

from __future__ import annotations

import os
import secrets

import pytest

ADMIN_URL = os.environ.get("MEMOIR_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _admin():
    psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (the postgres extra)")
    try:
        return psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as e:
        pytest.skip(f"no PostgreSQL at {ADMIN_URL}: {e}")


def url_of(name: str) -> str:
    """ADMIN_URL with another database, as a postgresql:// URL (what MEMOIR_STATE_URL takes)."""
    from urllib.parse import quote

    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(ADMIN_URL)
    auth = quote(info.get("user", "postgres")) + (f":{quote(info['password'])}" if info.get("password") else "")
    return f"postgresql://{auth}@{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}/{name}"


@pytest.fixture
def pg_url():
    """The URL of a new, empty database, dropped (with its connections) after the test."""
    admin = _admin()
    name = f"memoir_test_{secrets.token_hex(6)}"
    admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url_of(name)
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()
