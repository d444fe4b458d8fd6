"""API tokens: making them, and the daemon's in-memory book of the live ones.

A token is 256 random bits, shown once; the database keeps only its SHA-256. The daemon checks a
request against its book (a dict lookup: no database round trip per request), which it reloads
when PostgreSQL notifies that a token changed (a revocation made with the CLI, straight in the
database, takes effect at once) and every RELOAD_S in case a notification was missed. Last use
is written back in one statement every RELOAD_S, not once per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from supervisor import db

log = structlog.get_logger(component="tokens")

PREFIX = "sst_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,62}$")
RELOAD_S = 10.0
_DURATION_RE = re.compile(r"^(\d{1,7})([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_LIFETIME_S = 36500 * 86400


class Role(enum.IntEnum):
    """Each role may do everything the ones below it may."""

    reader = 1
    operator = 2
    admin = 3


def new_token() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_role(text: str) -> Role:
    try:
        return Role[text]
    except KeyError:
        raise ValueError(f"role must be one of {', '.join(r.name for r in Role)}") from None


def parse_name(text: str) -> str:
    if not NAME_RE.fullmatch(text):
        raise ValueError("token name must match [A-Za-z0-9][A-Za-z0-9_.@-]{0,62}")
    return text


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '3600s' or '2w', in seconds."""
    match = _DURATION_RE.match(text.strip())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"a duration is a positive number and a unit (s, m, h, d, w): {text!r}")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_LIFETIME_S:
        # Much further and the expiry is past year 9999, which PostgreSQL stores but Python's
        # datetime cannot read back: every listing of tokens would fail.
        raise ValueError(f"a token lives at most 100 years (36500d): {text!r}")
    return float(seconds)


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A token's record as shown to people: never its hash."""
    return {k: v for k, v in row.items() if k != "hash"}


@dataclass(frozen=True)
class Holder:
    """Who a live token belongs to, and until when (a monotonic time; None: no expiry)."""

    name: str
    role: Role
    expires_at: float | None

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class TokenBook:
    """The live tokens, by hash. Owned by the daemon; `run` keeps it in step with the database."""

    def __init__(
        self, pool: asyncpg.Pool, connect: Callable[[], Awaitable[asyncpg.Connection]]
    ) -> None:
        self._pool = pool
        self._connect = connect
        self._by_hash: dict[bytes, Holder] = {}
        self._last_used: dict[str, float] = {}
        self._changed = asyncio.Event()
        # Reloads run one at a time: one whose query ran before a token was made must not
        # land after the reload that saw it, or a fresh token (or a revocation) is undone.
        self._reloading = asyncio.Lock()

    @property
    def required(self) -> bool:
        """Tokens are needed once any token is live (an expired one still counts)."""
        return bool(self._by_hash)

    def lookup(self, token: str) -> Holder | None:
        holder = self._by_hash.get(digest(token))
        if holder is not None:
            self._last_used[holder.name] = time.time()
        return holder

    async def reload(self) -> None:
        async with self._reloading:
            rows = await db.live_token_hashes(self._pool)
            now = time.monotonic()
            self._by_hash = self._book_of(rows, now)

    @staticmethod
    def _book_of(rows: list[dict[str, Any]], now: float) -> dict[bytes, Holder]:
        return {
            bytes(r["hash"]): Holder(
                r["name"],
                Role[r["role"]],
                None if r["expires_in_s"] is None else now + r["expires_in_s"],
            )
            for r in rows
        }

    def forget(self, name: str) -> None:
        """A token revoked by this daemon stops working before the notification comes back."""
        self._by_hash = {h: t for h, t in self._by_hash.items() if t.name != name}

    async def run(self) -> None:
        """Reload on every change notification and every RELOAD_S; write last use back."""
        while True:
            listener = await self._listen()
            try:
                while listener is None or not listener.is_closed():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), RELOAD_S)
                    self._changed.clear()
                    await self._sync()
                    if listener is None:
                        break  # try to listen again
            finally:
                if listener is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(listener.close(), 5)

    async def flush(self) -> None:
        """Write the last uses seen so far (at shutdown, and from `run`)."""
        used, self._last_used = self._last_used, {}
        if not used:
            return
        try:
            await db.touch_tokens(self._pool, used)
        except BaseException:
            for name, at in used.items():  # kept for the next round, unless newer came since
                self._last_used.setdefault(name, at)
            raise

    async def refresh(self) -> None:
        """Reload after this daemon changed a token. The change is already written: a
        database gone away now leaves the book to the next round, not the caller an error."""
        await self._sync(flush=False)

    async def _sync(self, flush: bool = True) -> None:
        try:
            await self.reload()
            if flush:
                await self.flush()
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            # The database is away: keep the book as it is; the next round tries again.
            log.warning("tokens_reload_failed", error=repr(exc))

    async def _listen(self) -> asyncpg.Connection | None:
        """A connection of its own for LISTEN (a pooled one would be handed out while it
        listens); None while the database is away."""
        try:
            conn: asyncpg.Connection = await asyncio.wait_for(self._connect(), 10)
            await conn.add_listener(db.TOKEN_CHANNEL, lambda *_: self._changed.set())
        except Exception as exc:
            if not db.is_transient(exc):
                raise
            log.warning("tokens_listen_failed", error=repr(exc))
            return None
        # Whatever changed while nobody listened: reload once now.
        self._changed.set()
        return conn
