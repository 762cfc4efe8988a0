"""Access checks, one dependency per kind of route. Both let everyone in for now: keys
(MEMOIR_API_KEY, MEMOIR_ADMIN_KEY) are the operations issue's; every route already depends on
the right one, so adding them changes this file only."""

from __future__ import annotations

from fastapi import Request


async def client_access(request: Request) -> None:
    """Routes that generate text."""


async def admin_access(request: Request) -> str | None:
    """Routes that change or reveal the memory. Returns the author recorded with an edit
    (the name of the key, never a field of the body); None without keys."""
    return None
