"""The embedded PostgreSQL used when no database URL is configured (the `pgserver` package)."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger(component="pgembed")


@dataclass
class EmbeddedPostgres:
    url: str
    _server: Any

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.cleanup)
        log.info("embedded_postgres_stopped")


async def start(pgdata: Path) -> EmbeddedPostgres:
    """Start (or join) the server whose data lives in `pgdata`. initdb runs on first use."""
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (as under systemd); harmless.
        warnings.simplefilter("ignore")
        import pgserver  # imported late: only the embedded path needs it

    # Blocking (mkdir, initdb, pg_ctl): off the event loop.
    await asyncio.to_thread(pgdata.mkdir, parents=True, exist_ok=True)
    get_server = pgserver.get_server  # type: ignore[attr-defined]
    server = await asyncio.to_thread(get_server, pgdata, cleanup_mode="stop")
    url = server.get_uri()
    log.info("embedded_postgres_ready", pgdata=str(pgdata))
    return EmbeddedPostgres(url, server)


@asynccontextmanager
async def database(url: str | None, pgdata: Path) -> AsyncIterator[str]:
    """The configured database's URL, or the embedded server's (started, or joined if another
    process of this state dir runs it, and left when done)."""
    if url is not None:
        yield url
        return
    embedded = await start(pgdata)
    try:
        yield embedded.url
    finally:
        await embedded.stop()
