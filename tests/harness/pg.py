"""PostgreSQL for a test run: `DATABASE_URL` when it is set, else an embedded pgserver in a
directory of the caller's; and a fresh database per test on it."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit


@contextlib.contextmanager
def admin_url(data_dir: Path) -> Iterator[str]:
    """A URL to a server where databases may be created: `DATABASE_URL`, or a pgserver started
    in `data_dir` and stopped on exit. pgserver is imported only here: a run that never asks
    for a database never starts (or imports) it."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name` instead."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def fresh_database(admin: str) -> AsyncIterator[str]:
    """A new, empty database on the server of `admin`, dropped on exit (connections and all)."""
    import asyncpg

    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        yield with_database(admin, name)
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
