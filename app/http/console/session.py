"""Console sign-in: the admin key is checked once (app/http/auth.py's Keys) and traded for a session
cookie (random, HttpOnly, SameSite=Strict, path /console; kept in this process's memory, so a
restart signs everyone out, and in PostgreSQL mode in the shared table as well, so a page that
lands on another replica finds it). Every form carries the session's CSRF token as well.

Without admin keys configured the admin routes are open (and the server listens on loopback
only), so the console is open too: a session is opened without asking for a key.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit

from fastapi import Request

from app.service.shared_state import SharedState

from ..auth import ForbiddenError, Keys
from .render import form

COOKIE = "memoir_console"
TTL = 12 * 3600.0
MAX_SESSIONS = 1000
KIND = "console-session"


class LoginRequired(Exception):
    """No valid session: the page redirects to the sign-in form."""


@dataclass
class Session:
    token: str
    name: str | None  # the admin key's name: the author of edits made in the console
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    expires: float = field(default_factory=lambda: time.time() + TTL)


class Sessions:
    """Blocking when shared (PostgreSQL): the console calls it off the event loop."""

    def __init__(self, shared: SharedState | None = None):
        self._by_token: dict[str, Session] = {}
        self.shared = shared

    def sign_in(self, keys: Keys, key: str) -> Session | None:
        """A new session for a valid admin key (any key, or none, when no admin key is configured)."""
        if keys.admin:
            found = keys.identify(f"Bearer {key.strip()}") if key.strip() else None
            if found is None or not found.admin:
                return None
            name = found.name
        else:
            name = None
        self._expire()
        session = Session(secrets.token_urlsafe(32), name)
        self._by_token[session.token] = session
        if self.shared is not None:
            self.shared.expire()
            self.shared.put(KIND, session.token, asdict(session), TTL)
        return session

    def sign_out(self, token: str | None) -> None:
        if token:
            self._by_token.pop(token, None)
            if self.shared is not None:
                self.shared.delete(KIND, token)

    def get(self, token: str | None) -> Session | None:
        if self.shared is not None:  # the table decides: opened or closed on another replica
            body = self.shared.get(KIND, token) if token else None
            session = Session(**body) if body is not None else None
        else:
            session = self._by_token.get(token or "")
        if session is None or session.expires < time.time():
            return None
        return session

    def _expire(self) -> None:
        now = time.time()
        for token in [t for t, s in self._by_token.items() if s.expires < now]:
            del self._by_token[token]
        while len(self._by_token) >= MAX_SESSIONS:  # the oldest go first
            del self._by_token[next(iter(self._by_token))]


def sessions_of(request: Request) -> Sessions:
    return request.app.state.console_sessions


async def current(request: Request) -> Session:
    """Dependency of every console page: the signed-in session, or a redirect to sign in (which,
    with no admin key configured, opens a session at once)."""
    sessions = sessions_of(request)
    token = request.cookies.get(COOKIE)
    session = await asyncio.to_thread(sessions.get, token) if sessions.shared else sessions.get(token)
    if session is None:
        raise LoginRequired()
    return session


def check_csrf(session: Session, form: dict[str, str]) -> bool:
    return hmac.compare_digest(session.csrf.encode(), form.get("csrf", "").encode())


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    return not origin or urlsplit(origin).netloc == request.headers.get("host")


async def post_form(request: Request, session: Session) -> dict[str, str]:
    """A form this session posted: same origin, with the session's CSRF token (ForbiddenError)."""
    data = await form(request)
    if not _same_origin(request) or not check_csrf(session, data):
        raise ForbiddenError("the form is stale or came from another site; reload the page")
    return data
