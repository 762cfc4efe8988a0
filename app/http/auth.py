"""Access checks, one dependency per kind of route, and the rule on where the server may listen.

Keys come from the environment (app/settings.py):
  MEMOIR_API_KEY / MEMOIR_API_KEYS        client keys: generation routes (/generate, /v1/*)
  MEMOIR_ADMIN_KEY / MEMOIR_ADMIN_KEYS    admin keys: every route that changes or reveals the
                                          memory (edits, registry, state); they also grant the
                                          client routes
The plural forms name each key, "alice:KEY1,bob:KEY2"; the single forms are named "client" and
"admin". A request sends `Authorization: Bearer KEY`; the key is compared (as a SHA-256 digest,
with hmac.compare_digest, against every configured key without stopping early) in constant time.
The name of an admin key is the author recorded with the edits it makes: the body cannot set it.

A kind of route without keys configured is open: client routes without client keys, admin routes
without admin keys. Without an admin key the server only serves on loopback (127.0.0.1, ::1):
`memoir serve` refuses another --host, and connections that arrive on another local address get a
403, unless MEMOIR_ALLOW_INSECURE=1 (--allow-insecure) says otherwise.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import ClassVar

from fastapi import Request, Security
from fastapi.security import HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from app.service.logs import annotate
from app.settings import Settings

from .errors import ServiceError, envelope

log = logging.getLogger(__name__)

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
KEY = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces: what fits in a Bearer header
MIN_KEY_CHARS = 16
# Routes that need no key, by decision: liveness, readiness, /version, and /metrics (which takes the admin
# key when MEMOIR_METRICS_AUTH=1). Every other route depends on client_access or admin_access;
# tests/ops/test_ops_http.py fails for a route that does neither and is not listed here.
PUBLIC_PATHS = {"/health", "/ready", "/metrics", "/version"}


class ConfigError(ValueError):
    """The keys or the address in the settings cannot be used; the server does not start."""


class UnauthorizedError(ServiceError):
    status, code = 401, "invalid_api_key"
    headers: ClassVar[dict[str, str]] = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ServiceError):
    status, code = 403, "forbidden"


@dataclass(frozen=True)
class Key:
    name: str
    admin: bool
    digest: bytes


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _parse(single, named, admin: bool, default_name: str) -> list[Key]:
    what = "MEMOIR_ADMIN_KEY" if admin else "MEMOIR_API_KEY"
    entries: list[tuple[str, str, str]] = []
    if single is not None and single.get_secret_value():
        entries.append((default_name, single.get_secret_value().strip(), what))
    if named is not None and named.get_secret_value().strip():
        for i, part in enumerate(named.get_secret_value().split(",")):
            name, sep, secret = part.strip().partition(":")
            if not sep:
                raise ConfigError(f"{what}S entry {i + 1} is not name:key")
            entries.append((name.strip(), secret.strip(), f"{what}S entry {i + 1}"))
    keys = []
    for name, secret, where in entries:
        if not NAME.match(name):
            raise ConfigError(f"{where}: the name {name!r} must be letters, digits and . _ @ - (up to 64)")
        if len(secret) < MIN_KEY_CHARS or not KEY.match(secret):
            raise ConfigError(f"{where} ({name}): a key must be at least {MIN_KEY_CHARS} printable characters "
                              "without spaces (e.g. `openssl rand -hex 32`)")
        keys.append(Key(name, admin, _digest(secret)))
    return keys


class Keys:
    def __init__(self, keys: list[Key]):
        digests = [k.digest for k in keys]
        if len(set(digests)) != len(digests):
            raise ConfigError("the same key is configured twice (keys must be distinct, client and admin alike)")
        names = [(k.admin, k.name) for k in keys]
        if len(set(names)) != len(names):
            raise ConfigError("two keys of the same kind have the same name")
        self.keys = keys
        self.admin = [k for k in keys if k.admin]
        self.client = [k for k in keys if not k.admin]

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(_parse(settings.api_key, settings.api_keys, False, "client")
                   + _parse(settings.admin_key, settings.admin_keys, True, "admin"))

    def identify(self, authorization: str | None) -> Key | None:
        """The key a `Bearer KEY` header names; None for a missing, malformed or unknown one."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or not KEY.match(token):
            return None
        digest = _digest(token)
        found = None
        for key in self.keys:  # every key is compared: the time does not tell which one matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def keys_of(request: Request) -> Keys:
    return request.app.state.keys


def _remember(request: Request, key: Key | None) -> None:
    """The access log names the key (never the key itself)."""
    if key is not None:
        annotate(key=key.name)


def _authenticate(request: Request, keys: Keys, what: str) -> Key:
    header = request.headers.get("authorization")
    key = keys.identify(header)
    if key is None:
        reason = "no Authorization header" if not header else "the key in the Authorization header is not valid"
        raise UnauthorizedError(f"{what} needs a key ({reason}): send `Authorization: Bearer KEY`")
    return key


# The security schemes document which key a route takes (OpenAPI, /docs); the check is ours.
CLIENT_BEARER = HTTPBearer(scheme_name="client_key", auto_error=False,
                           description="MEMOIR_API_KEY (or an admin key): generation routes")
ADMIN_BEARER = HTTPBearer(scheme_name="admin_key", auto_error=False,
                          description="MEMOIR_ADMIN_KEY: routes that change or reveal the memory")


async def client_access(request: Request, _: object = Security(CLIENT_BEARER)) -> None:
    """Routes that generate text: a client or an admin key, when client keys are configured."""
    keys = keys_of(request)
    if keys.client:
        key = _authenticate(request, keys, "this route")
    else:
        key = keys.identify(request.headers.get("authorization"))
    _remember(request, key)
    # what the memory field may reveal: edit ids are the admin routes' to show (open without admin keys)
    request.state.sees_edits = (key.admin if key is not None else not keys.admin) or \
        request.app.state.runtime.settings.memory_detail == "all"


async def admin_access(request: Request, _: object = Security(ADMIN_BEARER)) -> str | None:
    """Routes that change or reveal the memory: an admin key, when admin keys are configured.
    Returns the author recorded with an edit (the name of the key, never a field of the body);
    None without admin keys."""
    keys = keys_of(request)
    if not keys.admin:
        _remember(request, keys.identify(request.headers.get("authorization")))
        return None
    key = _authenticate(request, keys, "this route (it changes or reveals the memory)")
    _remember(request, key)
    if not key.admin:
        raise ForbiddenError(f"the key {key.name!r} is a client key; this route needs an admin key")
    return key.name


async def metrics_access(request: Request) -> None:
    """/metrics: open, or with MEMOIR_METRICS_AUTH=1 the same as an admin route."""
    if request.app.state.runtime.settings.metrics_auth:
        await admin_access(request)


# -- where the server listens ---------------------------------------------------------------------
def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, keys: Keys, allow_insecure: bool) -> None:
    """Refuse to listen beyond loopback without an admin key (unless told explicitly)."""
    if keys.admin or allow_insecure or is_loopback(host):
        return
    raise ConfigError(
        f"refusing to listen on {host}: without an admin key anyone who reaches that address could change the "
        "memory. Set MEMOIR_ADMIN_KEY (or MEMOIR_ADMIN_KEYS=name:key,...), listen on 127.0.0.1, or pass "
        "--allow-insecure (MEMOIR_ALLOW_INSECURE=1) if something in front of the server checks access")


def warn_open_routes(keys: Keys, allow_insecure: bool) -> None:
    if not keys.admin:
        log.warning("no admin key: the edit routes are open to every local client%s",
                    " and, with MEMOIR_ALLOW_INSECURE, to the network" if allow_insecure else "")
    if keys.admin and not keys.client:
        log.warning("no client key (MEMOIR_API_KEY): the generation routes are open to anyone who reaches the server")


class LoopbackOnly:
    """Without an admin key: a connection that arrived on a non-loopback local address gets a 403
    (covers `uvicorn --host 0.0.0.0`, which `memoir serve`'s own check cannot see). Connections
    whose local address is not an IP (in-process test clients, Unix sockets) pass."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server")
            host = server[0] if server else None
            if host and not is_loopback(host) and _is_ip(host):
                response = envelope(403, "this server has no admin key and serves only on 127.0.0.1; set "
                                         "MEMOIR_ADMIN_KEY or MEMOIR_ALLOW_INSECURE=1", "loopback_only")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False
