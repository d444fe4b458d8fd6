"""The token book never lets an older reload undo a newer one.

A stand-in pool is used here, not PostgreSQL: the case is two reloads whose queries finish in the
opposite order to their starts, and only a pool whose answers the test releases can order them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from supervisor import tokens


class _Pool:
    """Answers `fetch` with the rows live when it was called, once the test lets it."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.gates: list[asyncio.Event] = []

    async def fetch(self, *_: Any) -> list[dict[str, Any]]:
        rows = list(self.rows)
        gate = asyncio.Event()
        self.gates.append(gate)
        await asyncio.wait_for(gate.wait(), 5)
        return rows


def _token(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "role": "reader", "hash": tokens.digest(secret), "expires_in_s": None}


async def _answer_newest_first(pool: _Pool, *tasks: asyncio.Task[None]) -> None:
    """Lets every reader that can reach its query do so, then answers the newest first: the
    order in which a stale read lands last."""
    async with asyncio.timeout(5):
        while not all(t.done() for t in tasks):
            for _ in range(20):
                await asyncio.sleep(0)  # a loop turn, not a wait: each ready task runs on
            waiting = [g for g in pool.gates if not g.is_set()]
            if waiting:
                waiting[-1].set()
    for t in tasks:
        t.result()


async def test_a_reload_that_read_before_a_new_token_does_not_drop_it():
    pool = _Pool()
    book = tokens.TokenBook(pool, connect=None)  # type: ignore[arg-type]
    stale = asyncio.create_task(book.reload())  # e.g. the periodic round, reading no token yet
    await asyncio.sleep(0)
    pool.rows = [_token("ci", "s3cret")]  # the token is made, and the handler reloads
    await _answer_newest_first(pool, stale, asyncio.create_task(book.refresh()))
    assert book.required and book.lookup("s3cret") is not None


async def test_a_reload_that_read_before_a_revocation_does_not_bring_the_token_back():
    pool = _Pool()
    pool.rows = [_token("ci", "s3cret"), _token("other", "x")]
    book = tokens.TokenBook(pool, connect=None)  # type: ignore[arg-type]
    await _answer_newest_first(pool, asyncio.create_task(book.reload()))
    stale = asyncio.create_task(book.reload())
    await asyncio.sleep(0)
    pool.rows = [_token("other", "x")]  # 'ci' is revoked, and the handler reloads
    book.forget("ci")
    await _answer_newest_first(pool, stale, asyncio.create_task(book.refresh()))
    assert book.lookup("s3cret") is None and book.lookup("x") is not None


def test_a_token_lives_at_most_a_hundred_years():
    from supervisor.tokens import parse_duration

    assert parse_duration("5200w") == 5200 * 7 * 86400
    assert parse_duration("36500d") == 36500 * 86400
    for text in ("36501d", "1006943w", "9999999d"):
        with pytest.raises(ValueError, match="at most 100 years"):
            parse_duration(text)
