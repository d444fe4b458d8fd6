"""Wiring: config -> logging -> database -> schema -> writer -> supervisor -> API, and the ordered
teardown in reverse when a signal arrives."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import shutil
import signal
import socket
import ssl
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from actors import sandbox, scenario
from actors.ports import PortPool, ephemeral_overlap
from actors.settings import SessionSettings, SupervisorSettings
from actors.store import Store
from actors.supervisor import SupervisorActor
from actors.writer import WriterActor
from supervisor import api, db, pgembed, tokens
from supervisor import logs as logsetup
from supervisor.access import is_loopback
from supervisor.config import Config, ConfigError
from supervisor.feeds import FeedHub
from supervisor.loopmon import LoopMonitor
from supervisor.metrics import Metrics
from supervisor.pgstore import PgStore
from supervisor.systemd import Notifier

log = structlog.get_logger(component="daemon")

# In-flight HTTP requests get this long to finish when the daemon stops.
HTTP_SHUTDOWN_S = 3.0


def sumo_binary() -> str:
    """The `sumo` of the eclipse-sumo package; a system one only if that package has none."""
    try:
        import sumo

        bundled = Path(sumo.SUMO_HOME) / "bin" / "sumo"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("sumo")
    if found is None:
        raise ConfigError("no sumo binary: install the eclipse-sumo package")
    return found


async def serve(cfg: Config) -> int:
    """Run the daemon until SIGTERM/SIGINT; returns the process exit code."""
    logsetup.configure(cfg.log_level, cfg.log_format)
    loop = asyncio.get_running_loop()
    stop_reason: asyncio.Future[str] = loop.create_future()

    drain = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if sig == signal.SIGTERM and cfg.drain_on_sigterm and not drain.is_set():
            drain.set()  # a second SIGTERM stops at once
        elif not stop_reason.done():
            stop_reason.set_result(sig.name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    sumo = sumo_binary()
    tls = _tls_context(cfg)
    sandbox_plan = await _sandbox(cfg, sumo)
    if (shared := ephemeral_overlap(cfg.traci_ports.ports())) is not None:
        # Any outgoing connection may take one of these as its source port: a session that
        # meets one retries on another port, but the range is better moved.
        log.warning(
            "traci_ports_in_ephemeral_range",
            traci_ports=str(cfg.traci_ports),
            shared=f"{shared.start}-{shared.stop - 1}",
        )
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    async with pgembed.database(cfg.database_url, cfg.pgdata, cfg.shutdown_timeout_s) as url:
        pool = await db.with_retry(
            lambda: db.create_pool(url, command_timeout=cfg.db_command_timeout_s),
            what="connect",
            deadline_s=60,
        )
        # The lease keeper's own connections (actors/leases.py): renewals never queue for the
        # main pool.
        lease_pool = await db.with_retry(
            lambda: db.create_pool(url, max_size=2, command_timeout=cfg.lease_renew_s * 3),
            what="connect",
            deadline_s=60,
        )
        try:
            await db.apply_schema(pool)
            book = tokens.TokenBook(pool, lambda: asyncpg.connect(url))
            await book.reload()
            if not book.required and not is_loopback(cfg.host):
                raise ConfigError(
                    f"host {cfg.host}: a daemon without tokens serves loopback only; make one"
                    " first: sumo-supervisor token create NAME --role admin (same --state-dir /"
                    " --database-url)"
                )
            store = PgStore(pool, lease_pool=lease_pool)
            return await _run(cfg, pool, store, book, sumo, sandbox_plan, stop_reason, drain, tls)
        finally:
            await asyncio.wait_for(pool.close(), timeout=10)
            await asyncio.wait_for(lease_pool.close(), timeout=10)


def _settle(future: asyncio.Future[str], value: str) -> None:
    if not future.done():
        future.set_result(value)


async def _stage(task: asyncio.Task[None], timeout_s: float, what: str) -> bool:
    """Wait for one stage of the shutdown; False (and cancelled) if it overran its deadline."""
    try:
        await asyncio.wait_for(task, timeout_s)
    except TimeoutError:
        log.error("shutdown_timeout", what=what, timeout_s=timeout_s)
        return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def _sandbox(cfg: Config, sumo: str) -> sandbox.SandboxPlan | None:
    """Probe what the kernel enforces on SUMO, say it, and refuse a reachable daemon whose
    SUMO would be less confined than the README promises, unless told to accept that."""
    caps = sandbox.Caps(cfg.sumo_memory_mb, cfg.sumo_max_file_mb, cfg.sumo_max_open_files)
    try:
        status = await asyncio.to_thread(sandbox.status_at_start, sumo, caps, cfg.sandbox)
    except sandbox.SandboxUnusable as exc:
        raise ConfigError(f"sandbox: {exc}") from None
    (log.warning if status.missing else log.info)("sandbox_status", **status.log_fields())
    refusal = status.refusal(cfg.host, is_loopback(cfg.host), cfg.allow_unconfined)
    if refusal is not None:
        raise ConfigError(refusal)
    return status.plan


def supervisor_settings(
    cfg: Config, sumo: str, sandbox_plan: sandbox.SandboxPlan | None
) -> SupervisorSettings:
    """The actors' settings, taken from the Config once."""
    return SupervisorSettings(
        temp_root=cfg.temp_root,
        max_running=cfg.max_running,
        max_queued=cfg.max_queued,
        max_wall_s_default=min(cfg.max_wall_s_default, cfg.max_wall_s_limit),
        node_name=cfg.node_name or socket.gethostname(),
        lease_ttl_s=cfg.lease_ttl_s,
        lease_renew_s=cfg.lease_renew_s,
        session=SessionSettings(
            sumo_binary=sumo,
            stop_grace_s=cfg.stop_grace_s,
            connect_timeout_s=cfg.connect_timeout_s,
            sumo_nice=cfg.sumo_nice,
            sandbox=sandbox_plan,
            max_session_rows=cfg.max_session_rows,
            max_pause_s=cfg.max_pause_s,
            end_limit=cfg.end_limit,
        ),
    )


def make_writer(
    cfg: Config, store: Store, on_batch: Callable[[float], None] = lambda seconds: None
) -> WriterActor:
    """The writer with the daemon's settings (the writer benchmark measures this same one)."""
    return WriterActor(
        store,
        batch_rows=cfg.writer_batch_rows,
        flush_s=cfg.writer_flush_s,
        queue_rows=cfg.writer_queue_rows,
        on_batch=on_batch,
    )


def _tls_context(cfg: Config) -> ssl.SSLContext | None:
    if cfg.tls_cert is None or cfg.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"tls_cert/tls_key: cannot load them: {exc}") from None
    return context


async def _run(
    cfg: Config,
    pool: asyncpg.Pool,
    store: PgStore,
    book: tokens.TokenBook,
    sumo: str,
    sandbox_plan: sandbox.SandboxPlan | None,
    stop_reason: asyncio.Future[str],
    drain: asyncio.Event,
    tls: ssl.SSLContext | None,
) -> int:
    metrics = Metrics()
    # The actors reach the database through the store; the API reads through the pool.
    writer = make_writer(cfg, store, on_batch=metrics.batch_seconds.observe)
    supervisor = SupervisorActor(
        supervisor_settings(cfg, sumo, sandbox_plan),
        store=store,
        writer=writer,
        ports=PortPool(cfg.traci_ports.ports()),
        on_started=metrics.sessions_started.inc,
        on_finished=lambda status: metrics.sessions_finished.labels(status).inc(),
        on_drained=partial(_settle, stop_reason, "drained"),
    )
    notifier = Notifier()
    monitor = LoopMonitor(
        notifier,
        lambda: f"{supervisor.running_count} running, {supervisor.queued_count} queued",
    )
    metrics.bind(
        supervisor=supervisor,
        writer=writer,
        ports_total=len(cfg.traci_ports.ports()),
        loop_monitor=monitor,
    )
    cfg.temp_root.mkdir(parents=True, exist_ok=True)
    await supervisor.recover()
    feeds = FeedHub(pool, supervisor.paused)
    runner = web.AppRunner(
        api.make_app(
            api.Services(
                cfg,
                pool,
                supervisor,
                writer,
                feeds,
                metrics,
                book,
                scenario.CheckSlots(cfg.upload_checks, cfg.upload_check_wait_s),
            ),
            # Test-only: a route that blocks the event loop, to show the watchdog stops.
            test_hooks=os.environ.get("SUMO_SUPERVISOR_TEST_HOOKS") == "1",
        ),
        access_log=None,
        shutdown_timeout=HTTP_SHUTDOWN_S,
    )
    async with asyncio.TaskGroup() as tg:
        writer_task = tg.create_task(writer.run(), name="writer")
        supervisor_task = tg.create_task(supervisor.run(), name="supervisor")
        monitor_task = tg.create_task(monitor.run(), name="loop-monitor")
        tokens_task = tg.create_task(book.run(), name="tokens")
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=tls)
        await site.start()
        host, port = runner.addresses[0][:2]
        scheme = "https" if tls else "http"
        advertised = cfg.advertise_url or cfg.public_url or f"{scheme}://{_url_host(host)}:{port}"
        if not cfg.advertise_url and host in ("0.0.0.0", "::"):
            # Other nodes could not forward control requests to a wildcard address.
            log.warning("advertise_url_unreachable", advertise_url=advertised)
        await supervisor.advertise(advertised)
        log.info(
            "daemon_ready",
            host=host,
            port=port,
            url=f"{scheme}://{_url_host(host)}:{port}",
            public_url=cfg.public_url,
            tokens_required=book.required or not is_loopback(cfg.host),
            state_dir=str(cfg.state_dir),
            traci_ports=str(cfg.traci_ports),
            max_running=cfg.max_running,
            sumo=sumo,
            node_id=supervisor.node_id,
        )
        notifier.notify(
            "READY=1", f"STATUS=ready, {cfg.max_running} sessions at once, on {host}:{port}"
        )
        drain_task = tg.create_task(drain.wait(), name="drain-signal")
        waits: list[asyncio.Future[Any]] = [stop_reason, drain_task]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if drain.is_set() and not stop_reason.done():
            await supervisor.drain(cfg.drain_timeout_s)
        drain_task.cancel()
        # After a drain: once its sessions have ended or been handed back (on_drained), or,
        # should their ends never get written (the database away), once the drain is long over.
        while True:
            try:
                async with asyncio.timeout(1.0):
                    reason = await asyncio.shield(stop_reason)
                break
            except TimeoutError:
                if supervisor.drain_overdue(cfg.shutdown_timeout_s):
                    log.error("drain_timeout", grace_s=cfg.shutdown_timeout_s)
                    reason = "drain timed out"
                    break
        log.info("daemon_stopping", reason=reason)
        # Every stage below is bounded; should the process still be here well past them all,
        # stderr gets every thread's stack, so that a stuck shutdown says where it is stuck.
        faulthandler.dump_traceback_later(3 * cfg.shutdown_timeout_s + HTTP_SHUTDOWN_S + 60)
        notifier.notify("STOPPING=1", f"STATUS=stopping ({reason})")
        # Ordered: no new sessions, every session stopped, every row written, then HTTP closed.
        await supervisor.shutdown(reason)
        clean = await _stage(supervisor_task, cfg.shutdown_timeout_s, "sessions")
        await writer.close()
        clean &= await _stage(writer_task, cfg.shutdown_timeout_s, "writer")
        await feeds.close()
        await runner.cleanup()
        tokens_task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(book.flush(), 5)
        monitor_task.cancel()
    notifier.close()
    log.info("daemon_stopped", clean=clean)
    return 0 if clean else 1
