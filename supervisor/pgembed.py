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
import atexit
import json
import os
import threading
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
    pgdata: Path
    _server: Any

    async def stop(self, timeout_s: float) -> None:
        """pgserver's stop: it waits, unbounded, for the data dir's lock, then for `pg_ctl -w
        stop`. Past `timeout_s` the server is stopped here instead, rather than never exit."""
        done = asyncio.get_running_loop().create_future()

        def cleanup() -> None:
            try:
                self._server.cleanup()
                error = None
            except Exception as exc:  # reported below, in the loop
                error = exc
            done.get_loop().call_soon_threadsafe(_settle, done, error)

        # A thread of its own, not the loop's executor: a cleanup stuck on the lock must not
        # hold up the interpreter's exit, which waits for the executor's threads.
        threading.Thread(target=cleanup, name="pgserver-cleanup", daemon=True).start()
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout_s)
        except TimeoutError:
            log.error("embedded_postgres_stop_stuck", timeout_s=timeout_s)
            # pgserver would try again at exit, under the same lock.
            atexit.unregister(self._server._cleanup)
            await asyncio.to_thread(_stop_unshared, self.pgdata)
        except Exception as exc:
            log.error("embedded_postgres_stop_failed", error=repr(exc))
            await asyncio.to_thread(_stop_unshared, self.pgdata)
        log.info("embedded_postgres_stopped")


def _settle(done: asyncio.Future[None], error: Exception | None) -> None:
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


def _stop_unshared(pgdata: Path) -> None:
    """Stop the server unless another live process still holds it (without pgserver's lock:
    the fallback when that lock cannot be had)."""
    if [pid for pid in _live_handles(pgdata) if pid != os.getpid()]:
        return
    for proc in _postgres_of(pgdata):
        log.warning("embedded_postgres_stopped_directly", pid=proc.pid)
        _stop(proc)


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
    # pgserver guards each data dir's handle list and start/stop with one lock file shared by
    # every server of the user: unrelated daemons then queue behind each other's initdb. The
    # guarded state is the data dir's own (its socket dir too), so the lock is made the data
    # dir's: every process of this data dir goes through this function and takes the same one.
    import fasteners

    PostgresServer._lock = fasteners.InterProcessLock(pgdata.with_name(pgdata.name + ".lock"))
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
    return EmbeddedPostgres(url, Path(server.pgdata), server)


@asynccontextmanager
async def database(url: str | None, pgdata: Path, stop_timeout_s: float) -> AsyncIterator[str]:
    """The configured database's URL, or the embedded server's (started, or joined if another
    live process of this state dir runs it, and stopped when the last one leaves)."""
    if url is not None:
        yield url
        return
    embedded = await start(pgdata)
    try:
        yield embedded.url
    finally:
        await embedded.stop(stop_timeout_s)
