"""The embedded PostgreSQL used when no database URL is configured (the `pgserver` package).

pgserver shares one server among the processes of a data dir: each adds its pid to
`<pgdata>/.handle_pids.json`, and the last one to leave stops the server. A process killed with
-9 never leaves, so its pid stays in the list, the server outlives it, and every later process
joins that server and never stops it either. Before handing over to pgserver, `_reclaim` forgets
handles of processes that are gone and, when no live process holds the server, stops it (and
removes a postmaster.pid naming a pid that is no postgres of this data dir), so a start always
begins from a server this process owns or shares with a live one."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import structlog

log = structlog.get_logger(component="pgembed")

HANDLES = ".handle_pids.json"
STOP_WAIT_S = 10.0


@dataclass
class EmbeddedPostgres:
    url: str
    _server: Any

    async def stop(self) -> None:
        await asyncio.to_thread(self._server.cleanup)
        log.info("embedded_postgres_stopped")


def _postgres_of(pgdata: Path) -> list[psutil.Process]:
    """Postmasters serving `pgdata` (started by pg_ctl with `-D <pgdata>` on their command line;
    a child just forked shows the same until it renames itself, and is left out)."""
    found = {}
    for proc in psutil.process_iter(attrs=["name", "cmdline", "ppid"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmdline and str(pgdata) in cmdline:
            found[proc.pid] = proc
    return [p for p in found.values() if p.info["ppid"] not in found]


def _live_handles(pgdata: Path) -> list[int]:
    """The pids of the handle list whose process still runs and is the one that wrote itself
    there: a process born after the list was last written reuses a dead handle's pid."""
    path = pgdata / HANDLES
    try:
        pids = json.loads(path.read_text())
        written = path.stat().st_mtime
    except (OSError, ValueError):
        return []
    live = []
    for pid in pids:
        with suppress(psutil.Error):
            proc = psutil.Process(int(pid))
            if proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= written + 1:
                live.append(int(pid))
    return live


def _stop(proc: psutil.Process) -> None:
    """Stop a postmaster: SIGINT is PostgreSQL's fast shutdown (clients cut, data flushed)."""
    with suppress(psutil.NoSuchProcess):
        proc.send_signal(2)
        try:
            proc.wait(STOP_WAIT_S)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_WAIT_S)


def _reclaim(pgdata: Path) -> None:
    """Called under pgserver's lock, before it looks at the data dir."""
    live = _live_handles(pgdata)
    handles = pgdata / HANDLES
    if handles.exists():
        handles.write_text(json.dumps(live))
    running = _postgres_of(pgdata)
    if not live:
        # Nobody holds the server: whatever runs was left by a killed process.
        for proc in running:
            log.warning("embedded_postgres_orphan_stopped", pid=proc.pid)
            _stop(proc)
        running = []
    pidfile = pgdata / "postmaster.pid"
    with suppress(OSError, ValueError, IndexError):
        pid = int(pidfile.read_text().splitlines()[0])
        if pid not in {p.pid for p in running}:
            # Dead, or now another process's pid: pgserver would take it for a running server
            # (and PostgreSQL refuses to start while its pid is alive).
            pidfile.unlink()
            log.warning("embedded_postgres_stale_pidfile_removed", pid=pid)


def _get_server(pgdata: Path) -> Any:
    with warnings.catch_warnings():
        # platformdirs warns on import when XDG_RUNTIME_DIR is unset (as under systemd); harmless.
        warnings.simplefilter("ignore")
        import pgserver  # imported late: only the embedded path needs it
        from pgserver.postgres_server import PostgresServer

    pgdata = pgdata.resolve()
    if (pgdata / "PG_VERSION").exists():
        with PostgresServer._lock:
            _reclaim(pgdata)
    return pgserver.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]


async def start(pgdata: Path) -> EmbeddedPostgres:
    """Start (or join) the server whose data lives in `pgdata`. initdb runs on first use."""
    # Blocking (mkdir, initdb, pg_ctl): off the event loop.
    await asyncio.to_thread(pgdata.mkdir, parents=True, exist_ok=True)
    server = await asyncio.to_thread(_get_server, pgdata)
    url = server.get_uri()
    log.info("embedded_postgres_ready", pgdata=str(pgdata), pid=server.get_pid())
    return EmbeddedPostgres(url, server)


@asynccontextmanager
async def database(url: str | None, pgdata: Path) -> AsyncIterator[str]:
    """The configured database's URL, or the embedded server's (started, or joined if another
    live process of this state dir runs it, and stopped when the last one leaves)."""
    if url is not None:
        yield url
        return
    embedded = await start(pgdata)
    try:
        yield embedded.url
    finally:
        await embedded.stop()
