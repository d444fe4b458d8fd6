"""Who may reach the API, and how much of it: one middleware in front of every route.

In order, for every request:
1. Host must be one of the daemon's own names (421 otherwise): a page on a rebound DNS name
   reaches the daemon with its own name as Host, so it can never read an answer.
2. Origin, when a browser sends one, must be the daemon's own or a configured one (403): a
   cross-origin page cannot drive the daemon with "simple" requests that skip CORS preflights.
   Preflights are answered only for configured origins.
3. The token (Authorization: Bearer, never the URL) names a role; each route needs one (401 with
   WWW-Authenticate, or 403). Without any live token the daemon serves loopback only, as admin.
4. A fair share: a token bucket per token (or per address when tokenless), and caps on open
   streams and exports (429 with Retry-After).
5. JSON routes take only application/json (415).
Mutating requests are logged as `api_audit`, whatever their outcome. The token itself is never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from actors.errors import (
    Forbidden,
    InvalidRequest,
    MisdirectedRequest,
    SupervisorError,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
)
from supervisor import text
from supervisor.config import Config
from supervisor.jsonio import json_response
from supervisor.tokens import Role, TokenBook

log = structlog.get_logger(component="api")

Body = Literal["json", "multipart", "none"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    """One route of the API and what it needs. `role` None: open to all (/healthz, the API's
    description: /openapi.json, /docs, and the dashboard's own files, which hold no data: see
    supervisor/dashboard.py)."""

    method: str
    path: str
    handler: Handler
    role: Role | None
    body: Body = "none"


@dataclass(frozen=True)
class Caller:
    key: str  # what its fair share is counted by
    token: str | None  # the token's name; None when the daemon has no tokens
    role: Role


CALLER = web.RequestKey("caller", Caller)
# Handlers add fields to a mutating request's audit line (e.g. the session a POST created).
AUDIT = web.RequestKey("audit", dict)
_MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
_TOKEN_PARAMS = ("token", "access_token", "api_key")
# Over its limit, a request waits this long before its 429: a client that asks again as soon
# as it is answered then costs the daemon one answer a second per connection, not thousands.
TARPIT_S = 1.0
TARPIT_PER_CLIENT = 16
MAX_TRACKED_CLIENTS = 10_000
PREFLIGHT_MAX_AGE_S = 600


def canonical(path: str) -> str:
    """A route's path as aiohttp names its resource: `/ui/{file:.+}` is `/ui/{file}`."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _hostname(value: str) -> tuple[str, int | None] | None:
    """(host, port) of a Host header or a URL's netloc; None if it does not parse."""
    try:
        parts = urlsplit("//" + value)
        host = parts.hostname
        return (host, parts.port) if host else None
    except ValueError:
        return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Buckets:
    """A token bucket per client: `rate` requests a second, bursts of `burst`. Bounded: the
    least recently seen clients are forgotten first (a forgotten client starts full)."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """0 if the request may go now, else the seconds until it may."""
        now = time.monotonic()
        level, at = self._state.pop(key, (self._burst, now))
        level = min(self._burst, level + (now - at) * self._rate)
        wait = 0.0
        if level >= 1.0:
            level -= 1.0
        else:
            wait = (1.0 - level) / self._rate
        self._state[key] = (level, now)
        if len(self._state) > MAX_TRACKED_CLIENTS:
            self._state.popitem(last=False)
        return wait


class _Slots:
    """How many of something each client holds; a client holding none takes no memory."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def take(self, key: str, cap: int) -> bool:
        held = self._held.get(key, 0)
        if held >= cap:
            return False
        self._held[key] = held + 1
        return True

    def give(self, key: str) -> None:
        if (left := self._held[key] - 1) > 0:
            self._held[key] = left
        else:
            del self._held[key]


class Access:
    """The checks, built once from the config; the token book is the daemon's."""

    def __init__(self, cfg: Config, book: TokenBook, routes: list[Route]) -> None:
        self._cfg = cfg
        self._book = book
        self._roles: dict[tuple[str, str], Route] = {
            (r.method, canonical(r.path)): r for r in routes
        }
        self._loopback_only = is_loopback(cfg.host)
        names = {h.lower() for h in cfg.allowed_hosts}
        if not _is_ip(cfg.host.strip("[]")) and cfg.host not in ("", "0.0.0.0", "::"):
            names.add(cfg.host.lower())
        self._public = urlsplit(cfg.public_url) if cfg.public_url else None
        if self._public is not None and self._public.hostname:
            names.add(self._public.hostname.lower())
        # Other nodes forward control requests to this name.
        if cfg.advertise_url and (advertised := urlsplit(cfg.advertise_url).hostname):
            names.add(advertised.lower())
        self._names = frozenset(names)
        self._origins = frozenset(o.rstrip("/").lower() for o in cfg.allowed_origins)
        self._buckets = Buckets(cfg.rate_limit_per_s, cfg.rate_burst)
        self._tarpitted = _Slots()
        self._holds = _Slots()

    @property
    def tokens_required(self) -> bool:
        return self._book.required or not self._loopback_only

    # ---- the middleware --------------------------------------------------------------------

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            self._check_host(request)
            origin = self._check_origin(request)
            if request.method == "OPTIONS" and origin is not None:
                return self._preflight(request, origin)
            # A %00 would reach a query as text PostgreSQL refuses: one check for every route.
            text.check_url(request.path, list(request.query.items()))
            route = self._route(request)
            caller = await self._admit(request, route)
            if route is not None:
                self._check_body(request, route)
        except SupervisorError as exc:
            refusal = error_response(exc)
            self._audit(request, request.get(CALLER), refusal.status)
            return refusal
        request[AUDIT] = {}
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        finally:
            self._audit(request, caller, status)

    def _check_host(self, request: web.Request) -> None:
        raw = request.headers.get("Host")
        if raw is None:
            return  # HTTP/1.0 without a Host: not a browser
        parsed = _hostname(raw)
        host = parsed[0] if parsed else ""
        if host and (is_loopback(host) or _is_ip(host) or self._allowed_name(host)):
            return
        raise MisdirectedRequest(
            f"Host {raw[:100]!r} is not one of this daemon's names: add it to allowed_hosts "
            "(or set public_url) if it should be",
            host=raw[:100],
        )

    def _allowed_name(self, host: str) -> bool:
        return host in self._names or any(
            n.startswith(".") and (host.endswith(n) or host == n[1:]) for n in self._names
        )

    def _check_origin(self, request: web.Request) -> str | None:
        """None when no Origin was sent or it is the daemon's own; the origin when configured;
        Forbidden otherwise."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if self._same_origin(origin, request.headers.get("Host", "")):
            return None
        if origin.rstrip("/").lower() in self._origins:
            return origin
        raise Forbidden(
            f"requests from pages at {origin[:100]!r} are not allowed: add the origin to "
            "allowed_origins if it should be",
            origin=origin[:100],
        )

    def _same_origin(self, origin: str, host_header: str) -> bool:
        try:
            o = urlsplit(origin)
            o_port = o.port or (443 if o.scheme == "https" else 80)
        except ValueError:
            return False
        if o.scheme not in ("http", "https") or not o.hostname:
            return False
        if self._public is not None and self._public.hostname == o.hostname:
            p_port = self._public.port or (443 if self._public.scheme == "https" else 80)
            if (self._public.scheme, p_port) == (o.scheme, o_port):
                return True
        parsed = _hostname(host_header)
        if parsed is None:
            return False
        # Behind a TLS proxy the daemon itself speaks plain HTTP: the scheme is the page's.
        return parsed[0] == o.hostname and (parsed[1] or o_port) == o_port

    def _preflight(self, request: web.Request, origin: str) -> web.Response:
        method = request.headers.get("Access-Control-Request-Method", "")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": origin,
                "Access-Control-Allow-Methods": method or "GET, POST, DELETE",
                "Access-Control-Allow-Headers": "Authorization, Content-Type, Last-Event-ID",
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                "Vary": "Origin",
            },
        )

    def _route(self, request: web.Request) -> Route | None:
        info = request.match_info
        if info.http_exception is not None:
            return None  # 404 / 405: still needs a token (so it tells nothing), then fails
        method = "GET" if request.method == "HEAD" else request.method
        route = self._roles.get(
            (method, info.route.resource.canonical if info.route.resource else "")
        )
        if route is None:
            # Fail closed: a route registered without an entry in the table is refused.
            raise Forbidden("this route has no role: refused")
        return route

    async def _admit(self, request: web.Request, route: Route | None) -> Caller:
        if any(k in request.query for k in _TOKEN_PARAMS):
            raise InvalidRequest(
                "tokens go in the Authorization header only, never in the URL (URLs are logged)"
            )
        caller, problem = self._identify(request)
        request[CALLER] = caller  # for the audit line, if refused
        if (wait := self._buckets.take(caller.key)) > 0:
            await self._tarpit(caller.key)
            raise TooManyRequests(
                f"more than {self._cfg.rate_limit_per_s:g} requests a second: slow down",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
                retry_after_s=round(wait, 3),
            )
        if route is not None and route.role is None:
            return caller  # open to all: /healthz, /openapi.json, /docs
        if problem is not None:
            raise problem
        needed = route.role if route is not None else Role.reader
        if needed is not None and caller.role < needed:
            raise Forbidden(
                f"token {caller.token!r} has the role {caller.role.name}; this needs {needed.name}",
                role=caller.role.name,
                needs=needed.name,
            )
        return caller

    def _identify(self, request: web.Request) -> tuple[Caller, Unauthorized | None]:
        """Who is asking, and why they may not (None: they may, as far as tokens go)."""
        address = f"addr:{request.remote}"
        header = request.headers.get("Authorization")
        if header is None:
            if not self.tokens_required:
                return Caller(address, None, Role.admin), None
            return Caller(address, None, Role.reader), _unauthorized(
                "this daemon needs a token: send 'Authorization: Bearer <token>'", None
            )
        scheme, _, token = header.partition(" ")
        holder = self._book.lookup(token.strip()) if scheme.lower() == "bearer" else None
        if holder is None:
            return Caller(address, None, Role.reader), _unauthorized(
                "the token is unknown or revoked", "invalid_token"
            )
        if holder.expired(time.monotonic()):
            return Caller(address, holder.name, holder.role), _unauthorized(
                f"token {holder.name!r} has expired", "invalid_token"
            )
        return Caller(f"token:{holder.name}", holder.name, holder.role), None

    async def _tarpit(self, key: str) -> None:
        # Past TARPIT_PER_CLIENT held at once, the rest are answered at once.
        if not self._tarpitted.take(key, TARPIT_PER_CLIENT):
            return
        try:
            await asyncio.sleep(TARPIT_S)
        finally:
            self._tarpitted.give(key)

    def _check_body(self, request: web.Request, route: Route) -> None:
        ctype = request.content_type if request.body_exists else None
        if route.body == "json" and ctype != "application/json":
            raise UnsupportedMediaType(
                "send the body as JSON, with Content-Type: application/json",
                content_type=request.headers.get("Content-Type"),
            )
        if route.body == "multipart" and ctype != "multipart/form-data":
            raise UnsupportedMediaType(
                "send the template as multipart/form-data",
                content_type=request.headers.get("Content-Type"),
            )
        if route.body == "none" and ctype not in (None, "application/json"):
            # Ignored if JSON; anything else is what a cross-site form would send.
            raise UnsupportedMediaType(
                "this request takes no body (or JSON)",
                content_type=request.headers.get("Content-Type"),
            )

    def _audit(self, request: web.Request, caller: Caller | None, status: int) -> None:
        if request.method not in _MUTATING:
            return
        info = request.match_info
        resource = info.route.resource if info.http_exception is None else None
        log.info(
            "api_audit",
            token=caller.token if caller else None,
            role=caller.role.name
            if caller and (caller.token or not self.tokens_required)
            else None,
            method=request.method,
            route=resource.canonical if resource is not None else request.path[:200],
            session_id=info.get("id"),
            client=request.remote,
            status=status,
            **(request.get(AUDIT) or {}),
        )

    # ---- CORS on answers, and per-client caps ------------------------------------------------

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """CORS headers on every answer to a configured origin (streams included)."""
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() in self._origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "Retry-After, Location"
            response.headers.add("Vary", "Origin")

    @contextlib.asynccontextmanager
    async def hold(
        self, request: web.Request, what: Literal["streams", "exports"]
    ) -> AsyncIterator[None]:
        """One of the caller's open streams or exports, refused past its cap."""
        caller = request[CALLER]
        cap = (
            self._cfg.max_streams_per_client
            if what == "streams"
            else self._cfg.max_exports_per_client
        )
        slot = f"{what}:{caller.key}"
        if not self._holds.take(slot, cap):
            raise TooManyRequests(
                f"{cap} {what} open already: close one first",
                headers={"Retry-After": "1"},
                limit=cap,
            )
        try:
            yield
        finally:
            self._holds.give(slot)


def _unauthorized(message: str, error: str | None) -> Unauthorized:
    challenge = 'Bearer realm="sumo-supervisor"' + (f', error="{error}"' if error else "")
    return Unauthorized(message, headers={"WWW-Authenticate": challenge})


def error_response(exc: SupervisorError) -> web.Response:
    response = json_response({"error": exc.message, **exc.detail}, status=exc.status)
    response.headers.update(exc.headers)
    return response
