"""The session actor: one task per session, owning one SUMO subprocess and its TraCI connection.

It materializes its template, leases a port from the supervisor, starts `sumo` (confined by its
sandbox launcher, actors/sandbox.py, which may hand over SUMO's sockets), connects TraCI,
advances the simulation, hands a sample row to the writer every `sample_every` steps, and records
how it ended. The samples' figures come from SUMO's own summary output (actors/summary.py), so
TraCI only moves time on: a running session jumps over several samples per round trip. TraCI
calls run on the session's own single thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import os
import re
import shutil
import signal
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
import psutil
import structlog
import traci.constants as tc
from traci.connection import Connection
from traci.exceptions import FatalTraCIError, TraCIException

from actors import handover, scenario, statistics, traci_commands
from actors.errors import CommandFailed, SessionConflict, SupervisorError
from actors.quota import RowQuota
from actors.recorder import Recorder
from actors.request import SessionRequest
from actors.sandbox import SandboxPlan
from actors.summary import MAX_STEPS_UNREAD, Cut, SummaryFeed, SummaryLost
from actors.writer import WriterActor
from supervisor import db

T = TypeVar("T")

# How often a starting SUMO's port is tried: SUMO needs ~0.1 s to listen; traci.start's 1 s
# sleeps between tries would dominate start latency.
CONNECT_POLL_S = 0.005
MAX_PORT_ATTEMPTS = 5
# SUMO answers its first command at once once it listens.
HANDSHAKE_TIMEOUT_S = 5.0
STDERR_TAIL_LINES = 20
# How often a sandboxed SUMO's start, waiting for its launcher's sockets, looks for a stop.
HANDOVER_POLL_S = 0.05
# A running session's TraCI thread makes jump after jump for up to this long before it hands
# the samples back: one hand-over per slice rather than per sample, during which SUMO idles. A
# message for the session (stop, pause, commands) ends the slice at the next jump.
RUN_SLICE_S = 0.2
# How long one TraCI jump of a running session should take: long enough that the round trip
# between jumps, when SUMO waits, is a small share of it.
JUMP_S = 0.05
_ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)
# What SUMO (or the loader) says when one of its caps (actors/sandbox.py) stops it.
_OVER_CAP = (
    (re.compile(r"std::bad_alloc|failed to map segment|cannot allocate memory", re.I), "memory"),
    (re.compile(r"too many open files", re.I), "open files"),
    (re.compile(r"file too large", re.I), "file size"),
)


@dataclass(frozen=True)
class SessionSpec:
    id: str
    template_name: str
    template_version: int
    config_path: str
    request: SessionRequest
    attempt: int = 1
    sweep_id: str | None = None

    def db_row(self) -> db.NewSession:
        """The session as it is first stored, queued."""
        return db.NewSession(
            id=self.id,
            template_name=self.template_name,
            template_version=self.template_version,
            request=self.request.to_json(),
            label=self.request.label,
            end_time=self.request.end,
            sweep_id=self.sweep_id,
        )


@dataclass(frozen=True)
class StopSession:
    """End the session; it ends with `status` ('stopped' or 'timed_out')."""

    status: str
    reason: str


@dataclass(frozen=True)
class Pause:
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Resume:
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Step:
    """Advance a stepped session by exactly `seconds` of sim time; the reply is the sample."""

    seconds: float
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Commands:
    commands: list[dict[str, Any]]
    reply: asyncio.Future[Any]


Control = Pause | Resume | Step | Commands
Message = StopSession | Control
INBOX_SIZE = 64

# How traci reports a connection SUMO closed (a short read is a struct.error): these end the
# session as traci_lost; any other error while applying commands fails only those commands.
_CONNECTION_LOST = (FatalTraCIError, OSError, struct.error)


# The format and names the daemon reads SUMO's outputs in (its summary stream, the recorder's
# CSV). On the command line they win over a config's own choice (a ',' separator, no header, or a
# prefix on every output's name made sessions end `completed` with no recorded rows, h:m:s times
# crashed them on the first sample); the config's own outputs are written this way too.
OUTPUT_FORMAT_ARGS = (
    "--output.column-separator", ";",
    "--output.column-header", "tag",
    "--human-readable-time", "false",
    "--output-prefix", "",
    "--output-suffix", "",
)  # fmt: skip

# SUMO runs headless: sumo-gui's file options are cleared, their files never opened.
_GUI_ONLY_ARGS = tuple(
    arg for option in scenario.GUI_ONLY_FILE_OPTIONS for arg in (f"--{option}", "")
)


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str
    cause: str | None = None
    error: str | None = None
    exit_code: int | None = None
    sim_time: float | None = None


class PortBroker(Protocol):
    """What a session needs from the supervisor."""

    async def lease_port(self, session_id: str) -> int: ...
    async def port_refused(self, session_id: str, port: int) -> None: ...
    async def sumo_started(self, session_id: str, pid: int) -> None: ...
    async def simulation_done(self, session_id: str) -> None: ...


class PortsExhausted(Exception):
    pass


@dataclass
class _Jump:
    sim_time: float
    min_expected: int


class _Drive:
    """Result of driving one SUMO process, before its exit status is known."""

    def __init__(self, kind: str, detail: str = "") -> None:
        # completed | stop | exited_early | traci_lost | connect_timeout | idle | row_quota
        # | pause_timeout
        self.kind = kind
        self.detail = detail


def _settle_process(pid: int, nice: int) -> float | None:
    """Run a new SUMO below the daemon's priority; its start time (which tells it from a later
    process with the same pid), or None if it is gone already. Blocking: /proc."""
    if nice:
        # Set from here, not in the child (a preexec_fn is unsafe in a threaded process):
        # SUMO spends its first tenth of a second loading anyway.
        with contextlib.suppress(ProcessLookupError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        # Linux's autogroups schedule each session (SUMO has its own, to be killed as a group)
        # as one unit, whatever its processes' nice values: beside 8 SUMO sessions the daemon
        # got 1/9 of the CPU and answered requests 10 to 40 ms late. The group's nice counts.
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


class SessionActor:
    def __init__(
        self,
        spec: SessionSpec,
        *,
        pool: asyncpg.Pool,
        writer: WriterActor,
        broker: PortBroker,
        workdir: Path,
        sumo_binary: str,
        stop_grace_s: float,
        connect_timeout_s: float,
        sumo_nice: int = 0,
        sandbox: SandboxPlan | None = None,
        max_rows: int = 0,
        max_pause_s: float = math.inf,
        end_limit: float = math.inf,
    ) -> None:
        self.spec = spec
        # How long it may stay paused in one go: its own, or the daemon's (which bounds it).
        self._max_pause_s = spec.request.max_pause_s or max_pause_s
        self._end_limit = end_limit
        self._pool = pool
        self._writer = writer
        self._broker = broker
        self._workdir = workdir
        self._sumo_binary = sumo_binary
        self._stop_grace_s = stop_grace_s
        self._connect_timeout_s = connect_timeout_s
        self._sumo_nice = sumo_nice
        # None: SUMO runs unconfined (no kernel sandbox, or `sandbox = false`).
        self._sandbox = sandbox
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._stop: StopSession | None = None
        self._control: deque[Control] = deque()
        # The control message being handled, taken from _control.
        self._in_hand: Control | None = None
        self._net: traci_commands.Network | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._sim_time: float | None = None
        self._samples = 0
        # Set on the loop when a message arrives; the TraCI thread ends its slice when it sees it.
        self._interrupt = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"traci-{spec.id}")
        self._log = structlog.get_logger(component="session").bind(session_id=spec.id)
        # Over it, the TraCI thread ends its slice and the session fails `row_quota`.
        self._quota = RowQuota(max_rows, on_exceeded=self._interrupt.set)
        self._recorder = Recorder(spec.id, spec.request, workdir, writer, self._quota)
        # The config's own summary-output, written from the stream the samples come from.
        self._own_summary: Path | None = None

    # ---- messages ------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Deliver a message. A stop always gets through; control waits in a bounded inbox."""
        if isinstance(msg, StopSession):
            # The stop jumps the queue: it must not wait behind control messages.
            self._stop = self._stop or msg
            self._interrupt.set()
            return
        try:
            self._inbox.put_nowait(msg)
        except asyncio.QueueFull:
            raise SessionConflict("the session is busy: too many requests waiting") from None
        self._interrupt.set()

    def _stop_requested(self) -> StopSession | None:
        self._drain_inbox()
        return self._stop

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        outcome = Outcome("failed", "internal error", cause="internal")
        try:
            await db.set_session_status(
                self._pool,
                self.spec.id,
                "starting",
                f"admitted (attempt {self.spec.attempt})",
                started_at="now",
            )
            outcome = await self._run()
            await self._broker.simulation_done(self.spec.id)
        except asyncio.CancelledError:
            stop = self._stop_requested()
            outcome = Outcome(
                stop.status if stop else "stopped",
                (stop.reason if stop else "cancelled") + "; killed after grace period",
                cause="timeout" if stop and stop.status == "timed_out" else None,
                sim_time=self._sim_time,
            )
            raise
        except Exception as exc:
            self._log.exception("session_crashed")
            outcome = Outcome("failed", "internal error", cause="internal", error=repr(exc))
        finally:
            self._drain_inbox()
            # The message in hand too: a session that ends while applying commands or stepping
            # answers at once, not after the caller's timeout (a no-op if it was answered).
            in_hand = [self._in_hand] if self._in_hand is not None else []
            for msg in [*in_hand, *self._control]:
                _reply_error(msg.reply, SessionConflict("the session has ended"))
            self._executor.shutdown(wait=False, cancel_futures=True)
            outcome = await asyncio.shield(self._finish(outcome))
        return outcome

    async def _finish(self, outcome: Outcome) -> Outcome:
        try:
            # Every sample is committed before the final status is visible: readers who see
            # 'completed' see all of its rows.
            await asyncio.wait_for(self._writer.flush(), timeout=60)
        except TimeoutError:
            self._log.error("flush_timeout")
        await self._store_statistics()
        refused = self._writer.take_failure(self.spec.id)
        if refused is not None and outcome.status != "failed":
            # Its rows are not all there: whatever SUMO did, the session did not succeed.
            outcome = dataclasses.replace(
                outcome,
                status="failed",
                reason=f"the database refused its rows ({outcome.reason})",
                cause="write_failed",
                error=refused,
            )
        await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
        # The one write never given up: a session's end waits for the database to come back
        # (a daemon stopped meanwhile leaves it to the next start's recovery).
        await db.set_session_status(
            self._pool,
            self.spec.id,
            outcome.status,
            outcome.reason,
            retry_s=math.inf,
            ended_at="now",
            exit_code=outcome.exit_code,
            cause=outcome.cause,
            error=outcome.error,
            sim_time=outcome.sim_time if outcome.sim_time is not None else self._sim_time,
        )
        self._log.info(
            "session_ended",
            status=outcome.status,
            reason=outcome.reason,
            cause=outcome.cause,
            exit_code=outcome.exit_code,
            sim_time=outcome.sim_time,
        )
        return outcome

    async def _store_statistics(self) -> None:
        """SUMO's own statistics of the run, stored before the final status is visible."""
        try:
            figures = await asyncio.to_thread(statistics.read, self._workdir)
        except (OSError, ValueError, SyntaxError) as exc:  # ParseError is a SyntaxError
            self._log.warning("statistics_unreadable", error=repr(exc))
            return
        if figures is None:
            return
        try:
            await db.store_session_statistics(self._pool, self.spec.id, figures)
        except Exception as exc:
            self._log.error("statistics_not_stored", error=repr(exc))

    async def _run(self) -> Outcome:
        try:
            files = await db.fetch_template_files(
                self._pool, self.spec.template_name, self.spec.template_version
            )
            await asyncio.to_thread(self._prepare_workdir, files)
            if self.spec.attempt > 1:
                await db.clear_session_rows(self._pool, self.spec.id)
            if self._recorder.active:
                await db.create_record_partitions(self._pool, self.spec.id, self._recorder.tables)
        except OSError as exc:
            return Outcome(
                "failed",
                "could not write the session directory",
                cause="io_error",
                error=f"{exc.strerror or exc}: {exc.filename or self._workdir}",
            )
        outcome: Outcome | None = None
        for attempt in range(MAX_PORT_ATTEMPTS):
            if (stop := self._stop_requested()) is not None:
                return Outcome(stop.status, stop.reason)
            try:
                port = await self._broker.lease_port(self.spec.id)
            except PortsExhausted:
                return Outcome("failed", "no free TraCI port", cause="port_in_use")
            if attempt > 0:
                await asyncio.to_thread(self._recorder.prepare, self.spec.config_path)
            outcome = await self._run_on_port(port)
            if outcome.cause != "port_in_use":
                return outcome
            self._log.warning("port_refused", port=port)
            await self._broker.port_refused(self.spec.id, port)
        assert outcome is not None
        return outcome

    def _prepare_workdir(self, files: list[scenario.TemplateFile]) -> None:
        self._workdir.mkdir(parents=True, exist_ok=False)
        scenario.materialize(files, self._workdir)
        self._recorder.prepare(self.spec.config_path)
        config = (self._workdir / self.spec.config_path).read_bytes()
        own = scenario.config_output(config, self.spec.config_path, ("summary-output", "summary"))
        self._own_summary = None if own is None else self._workdir / own

    # ---- one SUMO process ----------------------------------------------------------------------

    def _command(self, port: int, summary_port: int | None) -> list[str]:
        """SUMO's command line; its summary output is added by its launcher when the launcher
        makes the listener (`summary_port` None)."""
        summary = ["--summary-output", f"127.0.0.1:{summary_port}"] if summary_port else []
        return [
            self._sumo_binary,
            "-c",
            self.spec.config_path,
            "--remote-port",
            str(port),
            "--no-step-log",
            "true",
            *OUTPUT_FORMAT_ARGS,
            *_GUI_ONLY_ARGS,
            *self.spec.request.sumo_args(),
            *self._recorder.sumo_args(),
            *statistics.SUMO_ARGS,
            *summary,
        ]

    async def _run_on_port(self, port: int) -> Outcome:
        self._stderr_tail.clear()
        # A fresh feed per SUMO process: a retry on another port starts from nothing.
        summary = SummaryFeed(self.spec.id, self._own_summary)
        # An earlier SUMO's statistics are not this one's.
        await asyncio.to_thread(statistics.discard, self._workdir)
        try:
            return await self._run_sumo(port, summary)
        finally:
            summary.close()

    async def _run_sumo(self, port: int, summary: SummaryFeed) -> Outcome:
        # In a network namespace of its own, SUMO's sockets come from its launcher over this
        # pair; otherwise SUMO connects to the daemon's summary listener, as unconfined.
        private = self._sandbox is not None and self._sandbox.netns
        ours, theirs = handover.socket_pair() if private else (None, None)
        try:
            summary_port = None if private else summary.open()
            sumo_command = self._command(port, summary_port)
            command = sumo_command
            if self._sandbox is not None:
                command = self._sandbox.command(
                    sumo_command,
                    traci_port=port,
                    summary_port=summary_port,
                    handover_fd=theirs.fileno() if theirs is not None else None,
                )
            try:
                proc = await asyncio.create_subprocess_exec(
                    *command,
                    cwd=self._workdir,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    # Its own process group, so the whole group can be killed whatever SUMO
                    # spawned. The launcher execs SUMO: the process is SUMO's, pid and all.
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),) if theirs is not None else (),
                )
            finally:
                if theirs is not None:
                    theirs.close()
            return await self._supervise(proc, port, summary, sumo_command, ours)
        finally:
            if ours is not None:
                ours.close()

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        port: int,
        summary: SummaryFeed,
        sumo_command: list[str],
        channel: socket.socket | None,
    ) -> Outcome:
        log = self._log.bind(port=port, pid=proc.pid)
        started_at = await asyncio.to_thread(_settle_process, proc.pid, self._sumo_nice)
        log.info("sumo_started", command=sumo_command, sandboxed=self._sandbox is not None)
        await self._broker.sumo_started(self.spec.id, proc.pid)
        await db.set_session_process(self._pool, self.spec.id, port, proc.pid, started_at)
        assert proc.stdout is not None and proc.stderr is not None
        sumo_done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._relog(proc.stdout, "stdout", log))
            tg.create_task(self._relog(proc.stderr, "stderr", log))
            if self._recorder.active:
                tg.create_task(self._recorder.follow(sumo_done))
            try:
                drive = await self._drive(proc, port, log, summary, channel)
            finally:
                await self._reap(proc, log)
                sumo_done.set()
        return self._classify(drive, proc.returncode)

    async def _relog(self, stream: asyncio.StreamReader, name: str, log: Any) -> None:
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            if name == "stderr":
                self._stderr_tail.append(line)
            log.info("sumo_output", stream=name, line=line)

    async def _reap(self, proc: asyncio.subprocess.Process, log: Any) -> None:
        """Let SUMO exit by itself for a moment, then kill its whole process group."""
        try:
            await asyncio.wait_for(proc.wait(), timeout=self._stop_grace_s)
        except TimeoutError:
            log.warning("sumo_kill", reason="did not exit after TraCI closed")
        with contextlib.suppress(ProcessLookupError, PermissionError):
            # Also catches anything SUMO left behind in its group.
            os.killpg(proc.pid, signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), timeout=10)
        log.info("sumo_exited", exit_code=proc.returncode)

    def _classify(self, drive: _Drive, returncode: int | None) -> Outcome:
        stop = self._stop
        if drive.kind == "stop" or (stop is not None and drive.kind == "traci_lost"):
            assert stop is not None
            return Outcome(
                stop.status,
                stop.reason,
                cause="timeout" if stop.status == "timed_out" else None,
                exit_code=returncode,
                sim_time=self._sim_time,
            )
        if self._quota.exceeded:
            # Before "completed": rows past the quota were not stored, so the run is not whole
            # (the recorder's last rows may have gone over it after SUMO ended).
            return Outcome(
                "failed",
                "the session went over its row quota",
                cause="row_quota",
                error=f"max_session_rows ({self._quota.limit}) reached: the rows stored up to"
                " it are kept, none after",
                exit_code=returncode,
                sim_time=self._sim_time,
            )
        if drive.kind == "idle":
            return Outcome(
                "timed_out",
                "idle_timeout_s exceeded: nobody stepped the session",
                cause="idle_timeout",
                exit_code=returncode,
                sim_time=self._sim_time,
            )
        if drive.kind == "pause_timeout":
            return Outcome(
                "timed_out",
                "max_pause_s exceeded: paused for too long",
                cause="pause_timeout",
                exit_code=returncode,
                sim_time=self._sim_time,
            )
        if drive.kind == "completed":
            return Outcome("completed", drive.detail, exit_code=returncode, sim_time=self._sim_time)
        tail = "\n".join(self._stderr_tail)
        errors = "\n".join(line for line in self._stderr_tail if line.startswith("Error"))
        if (cap := _over_cap(returncode, self._stderr_tail)) is not None:
            # Checked first: a SUMO stopped by its cap while loading did not refuse the scenario.
            return Outcome(
                "failed",
                f"SUMO went over its {cap} cap",
                cause="resource_limit",
                error="\n".join(
                    filter(None, [errors or tail, f"SUMO {_describe_exit(returncode)}"])
                ),
                exit_code=returncode,
                sim_time=self._sim_time,
            )
        if any(line.startswith("Error: sandbox:") for line in self._stderr_tail):
            return Outcome(
                "failed",
                "SUMO's sandbox could not be set up",
                cause="sandbox_failed",
                error=errors,
                exit_code=returncode,
            )
        if drive.kind == "exited_early" and _ADDRESS_IN_USE.search(tail):
            return Outcome("failed", "TraCI port in use", cause="port_in_use", error=tail)
        # SUMO reads routes as the simulation runs, so a bad route file may only fail the first
        # step: an error exit before any step completed is still a scenario SUMO refused.
        refused = drive.kind == "traci_lost" and self._samples == 0 and returncode == 1 and errors
        if drive.kind == "exited_early" or refused:
            return Outcome(
                "failed",
                "SUMO could not load the scenario",
                cause="config_invalid",
                error=errors or tail or f"sumo exited with code {returncode}",
                exit_code=returncode,
            )
        if drive.kind == "connect_timeout":
            return Outcome(
                "failed",
                "SUMO did not open its TraCI port in time",
                cause="timeout",
                error=tail or None,
                exit_code=returncode,
            )
        # traci_lost: SUMO died or closed the connection mid-run.
        died = returncode is not None and returncode != 0
        how = _describe_exit(returncode)
        return Outcome(
            "failed",
            f"SUMO {how} during the simulation" if died else "TraCI connection lost",
            cause="sumo_exited" if died else "traci_closed",
            error="\n".join(filter(None, [errors or tail, f"{drive.detail} ({how})"])),
            exit_code=returncode,
            sim_time=self._sim_time,
        )

    # ---- TraCI ---------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _drive(
        self,
        proc: asyncio.subprocess.Process,
        port: int,
        log: Any,
        summary: SummaryFeed,
        channel: socket.socket | None,
    ) -> _Drive:
        if channel is None:
            conn = await self._connect(
                proc, functools.partial(_open_connection, port, HANDSHAKE_TIMEOUT_S), log
            )
        else:
            conn = await self._connect_private(proc, channel, port, log, summary)
        if isinstance(conn, _Drive):
            return conn
        try:
            return await self._simulate(conn, port, log, summary)
        except (FatalTraCIError, TraCIException, OSError, SummaryLost, struct.error) as exc:
            # traci reports a socket SUMO closed mid-message as a struct.error (a short read).
            return _Drive("traci_lost", str(exc) or type(exc).__name__)
        finally:
            await self._in_thread(_close_quietly, conn)

    async def _connect(
        self,
        proc: asyncio.subprocess.Process,
        attempt: Callable[[], Connection],
        log: Any,
        *,
        single_socket: bool = False,
    ) -> Connection | _Drive:
        """Try `attempt` until SUMO answers on its TraCI port, exits, or the start times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s
        while True:
            if proc.returncode is not None:
                return _Drive("exited_early")
            if self._stop_requested() is not None:
                return _Drive("stop")
            try:
                return await self._in_thread(attempt)
            except ConnectionRefusedError:
                pass
            except (TimeoutError, FatalTraCIError, TraCIException, OSError, struct.error) as exc:
                # Something that is not this SUMO answered on the port (SUMO itself failed to
                # listen there), or answered garbage; its exit, noticed next time round, tells why.
                log.warning("traci_handshake_failed", error=repr(exc))
                if single_socket:
                    # Only SUMO listens in its namespace, and the one socket is spent.
                    return _Drive("traci_lost", f"TraCI handshake failed: {exc!r}")
            if loop.time() > deadline:
                return _Drive("connect_timeout")
            # Waiting on the process as well notices an early exit at once.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), CONNECT_POLL_S)

    async def _connect_private(
        self,
        proc: asyncio.subprocess.Process,
        channel: socket.socket,
        port: int,
        log: Any,
        summary: SummaryFeed,
    ) -> Connection | _Drive:
        """A sandboxed SUMO: its sockets from its launcher, then TraCI over the one made for
        the daemon in SUMO's namespace (nothing else can reach SUMO's port there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout_s
        sockets: handover.Sockets | None = None
        while sockets is None:
            if proc.returncode is not None:
                return _Drive("exited_early")
            if self._stop_requested() is not None:
                return _Drive("stop")
            if loop.time() > deadline:
                return _Drive("connect_timeout")
            try:
                sockets = await handover.receive(channel, HANDOVER_POLL_S)
            except handover.LauncherGone:
                # It failed before exec; its stderr and exit status, read once reaped, say why.
                return _Drive("exited_early")
        channel.close()  # one message is all it carries: no fd held for the session's life
        summary.adopt(sockets.summary_listener)
        conn = await self._connect(
            proc,
            functools.partial(handover.connect, sockets.traci, port, HANDSHAKE_TIMEOUT_S),
            log,
            single_socket=True,
        )
        if isinstance(conn, _Drive):
            sockets.traci.close()
        return conn

    async def _simulate(
        self, conn: Connection, port: int, log: Any, summary: SummaryFeed
    ) -> _Drive:
        request = self.spec.request
        setup = await self._in_thread(_subscribe, conn)
        await self._in_thread(summary.accept, setup.delta_t)
        end = request.end
        if end is None and setup.end_time > 0:
            end = setup.end_time
        # A scenario's own end (or none) is bounded like a requested one.
        end = min(end if end is not None else math.inf, self._end_limit)
        if end == math.inf:
            end = None
        replay: deque[dict[str, Any]] = deque()
        if request.replay_of:
            replay.extend(await db.session_commands(self._pool, request.replay_of))
        await db.set_session_status(
            self._pool,
            self.spec.id,
            "running",
            "traci connected",
            end_time=end,
            sim_time=None,
        )
        log.info("session_running", end=end, delta_t=setup.delta_t, mode=request.mode)
        drive = _Driving(conn, summary, setup, end, request.sample_every)
        self._sim_time = setup.sim_time
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        paused = False
        paused_since = 0.0
        stepped = request.mode == "stepped"
        while True:
            self._interrupt.clear()
            self._drain_inbox()
            if self._stop is not None:
                return _Drive("stop")
            if self._quota.exceeded:
                return _Drive("row_quota")
            while self._control:
                msg = self._in_hand = self._control.popleft()
                idle_since = loop.time()
                if isinstance(msg, Pause | Resume):
                    if isinstance(msg, Pause) and not paused:
                        paused_since = loop.time()
                    paused = isinstance(msg, Pause)
                    log.info("session_paused" if paused else "session_resumed")
                    if paused:
                        # Whoever paused it can read every sample up to here at once.
                        await asyncio.wait_for(self._writer.flush(), 60)
                    _reply(msg.reply, None)
                elif isinstance(msg, Commands):
                    await self._apply_commands(conn, msg, log)
                elif not stepped:
                    msg.reply.set_exception(SessionConflict("only a stepped session can step"))
                else:
                    target = (self._sim_time or 0.0) + msg.seconds
                    sample, done = await self._jump(
                        drive, target if end is None else min(target, end)
                    )
                    # The answer means the sample is stored: reads after it see it.
                    await asyncio.wait_for(self._writer.flush(), 60)
                    _reply(msg.reply, sample)
                    if done is not None:
                        return done
            if paused or stepped:
                # Held still: wait for the next message (a stepped session only until idle).
                wait = 1.0
                if paused:
                    # A pause somebody forgot must not hold a run slot (and its port) forever.
                    wait = paused_since + self._max_pause_s - loop.time()
                    if wait <= 0:
                        return _Drive("pause_timeout")
                elif stepped:
                    wait = idle_since + request.idle_timeout_s - loop.time()
                    if wait <= 0:
                        return _Drive("idle")
                await self._wait_inbox(min(wait, 1.0))
                continue
            # A replay's next command is due at a sim time the slice must stop at.
            limit = replay[0]["sim_time"] if replay else None
            done = await self._run_slice(drive, limit)
            # A replay applies its original's commands at the sim times they were applied at.
            due = []
            while replay and replay[0]["sim_time"] <= (self._sim_time or 0.0) + 1e-9:
                due.append(replay.popleft()["command"])
            if due:
                await self._replay(conn, due, log)
            if done is not None:
                return done

    async def _jump(self, drive: _Driving, target: float) -> tuple[dict[str, Any], _Drive | None]:
        """Advance to `target` in one round trip, write the sample; the end, if reached."""
        jump, _ = await self._in_thread(_advance, drive, self._sim_time, target)
        self._sim_time = jump.sim_time
        row = drive.summary.cut(jump.sim_time)
        if self._quota.take(1):
            await self._writer.write(row)
        self._samples += 1
        sample = dict(zip(db.SAMPLE_COLUMNS[1:], row[1:], strict=True))
        return sample, drive.finished(jump)

    async def _run_slice(self, drive: _Driving, limit: float | None) -> _Drive | None:
        """Jump after jump on the TraCI thread for up to RUN_SLICE_S; the end, if reached."""
        rows, last = await self._in_thread(
            _run_slice, drive, self._sim_time, limit, self._interrupt
        )
        self._sim_time = last.sim_time
        self._samples += len(rows)
        rows = rows[: self._quota.take(len(rows))]
        await self._writer.write_records("samples", db.SAMPLE_COLUMNS, rows)
        return drive.finished(last)

    async def _apply_commands(self, conn: Connection, msg: Commands, log: Any) -> None:
        """Apply a batch and answer it. Whatever goes wrong fails the batch, not the session;
        only a lost TraCI connection ends it."""
        try:
            results = await self._in_thread(
                traci_commands.apply, conn, msg.commands, await self._network()
            )
        except SupervisorError as exc:
            _reply_error(msg.reply, exc)
            return
        except _CONNECTION_LOST:
            raise
        except Exception as exc:
            log.exception("commands_failed", sim_time=self._sim_time)
            _reply_error(msg.reply, CommandFailed(f"applying the commands failed: {exc!r}"))
            return
        try:
            await self._store_applied(msg.commands, results)
        except Exception as exc:
            log.exception("commands_not_stored", sim_time=self._sim_time)
            _reply_error(
                msg.reply,
                CommandFailed(f"the commands were applied but could not be stored: {exc!r}"),
            )
            return
        log.info("commands_applied", count=len(msg.commands), sim_time=self._sim_time)
        _reply(msg.reply, {"sim_time": self._sim_time, "results": results})

    async def _replay(self, conn: Connection, due: list[dict[str, Any]], log: Any) -> None:
        """Apply a replay's recorded commands one by one: one the replay's simulation cannot
        take (its vehicle never came, under other options) fails alone, with a warning."""
        for command in due:
            try:
                results = await self._in_thread(
                    traci_commands.apply, conn, [command], await self._network()
                )
            except _CONNECTION_LOST:
                raise
            except Exception as exc:
                error = exc.message if isinstance(exc, SupervisorError) else repr(exc)
                results = [{"type": command["type"], "ok": False, "error": error}]
            if not results[0]["ok"]:
                log.warning(
                    "replayed_command_failed",
                    sim_time=self._sim_time,
                    command=command,
                    error=results[0]["error"],
                )
                continue
            try:
                await self._store_applied([command], results)
            except Exception:
                log.exception("replayed_command_not_stored", sim_time=self._sim_time)

    async def _store_applied(
        self, batch: list[dict[str, Any]], results: list[dict[str, Any]]
    ) -> None:
        """Store the commands of a batch that changed the simulation, for a replay to apply."""
        applied = [
            c
            for c, r in zip(batch, results, strict=True)
            if r["ok"] and traci_commands.changes_state(c)
        ]
        if applied:
            await db.add_session_commands(self._pool, self.spec.id, self._sim_time or 0.0, applied)

    async def _network(self) -> traci_commands.Network:
        if self._net is None:
            self._net = await asyncio.to_thread(_read_network, self._workdir, self.spec.config_path)
        return self._net

    # ---- the inbox -----------------------------------------------------------------------------

    def _route(self, msg: Message) -> None:
        if isinstance(msg, StopSession):
            self._stop = self._stop or msg
        else:
            self._control.append(msg)

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            self._route(self._inbox.get_nowait())

    async def _wait_inbox(self, wait_s: float) -> None:
        try:
            self._route(await asyncio.wait_for(self._inbox.get(), max(wait_s, 0.0)))
        except TimeoutError:
            pass


class _Driving:
    """Where the jumps of a running session go."""

    def __init__(
        self, conn: Connection, summary: SummaryFeed, setup: _Setup, end: float | None, every: int
    ) -> None:
        self.conn = conn
        self.summary = summary
        self.setup = setup
        self.end = end
        self._jump_s = setup.delta_t * every
        self._k = 0
        # Unread summary rows must fit in the socket: at most MAX_STEPS_UNREAD steps per jump.
        self._max_samples = max(1, MAX_STEPS_UNREAD // every)
        self.samples_per_jump = 1

    def adapt(self, elapsed: float, samples: int) -> None:
        """Size the next jump to take about JUMP_S, from how long this one took."""
        if samples <= 0:
            return
        per_sample = max(elapsed / samples, 1e-6)
        self.samples_per_jump = max(1, min(self._max_samples, int(JUMP_S / per_sample)))

    def finished(self, jump: _Jump) -> _Drive | None:
        if self.end is not None and jump.sim_time >= self.end - 1e-9:
            return _Drive("completed", "end time reached")
        if jump.min_expected == 0:
            return _Drive("completed", "no vehicles left to simulate")
        return None

    def next_target(self) -> float:
        self._k += 1
        # Targets are computed from the start, not accumulated, so float error cannot drift.
        target = round(self.setup.sim_time + self._k * self._jump_s, 6)
        return target if self.end is None else min(target, self.end)


def _reply(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _reply_error(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _read_network(workdir: Path, config_path: str) -> traci_commands.Network:
    """Edge, lane, junction and traffic-light ids of the session's net, read with sumolib."""
    import sumolib

    config = workdir / config_path
    net_file = next(
        v
        for _s, opt, v in scenario.sumocfg_options(config.read_bytes(), config_path)
        if opt == "net-file"
    )
    net = sumolib.net.readNet(str(config.parent / net_file.split(",")[0].strip()))
    edges = [e.getID() for e in net.getEdges()]
    return traci_commands.Network(
        edges=edges,
        lanes=[lane.getID() for e in net.getEdges() for lane in e.getLanes()],
        junctions=[n.getID() for n in net.getNodes()],
        tls=[t.getID() for t in net.getTrafficLights()],
    )


def _over_cap(returncode: int | None, stderr: Iterable[str]) -> str | None:
    """Which of SUMO's caps stopped it, if one did: SIGXFSZ is the kernel's answer to a write
    over the file-size cap; the others show in what SUMO or its loader said."""
    if returncode == -signal.SIGXFSZ:
        return "file size"
    for line in stderr:
        for pattern, cap in _OVER_CAP:
            if pattern.search(line):
                return cap
    return None


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


# ---- blocking TraCI work, run on the session's thread -------------------------------------------

_SIM_VARS = [tc.VAR_TIME, tc.VAR_MIN_EXPECTED_VEHICLES]


@dataclass(frozen=True)
class _Setup:
    sim_time: float
    delta_t: float
    end_time: float  # SUMO's own end (from the config); negative when it has none


def _subscribe(conn: Connection) -> _Setup:
    """Subscribe to what a jump needs to know, so each jump is a single round trip."""
    conn.simulation.subscribe(_SIM_VARS)
    return _Setup(
        sim_time=float(conn.simulation.getTime()),
        delta_t=float(conn.simulation.getDeltaT()),
        end_time=float(conn.simulation.getEndTime()),
    )


def _advance(
    drive: _Driving, start: float | None, target: float, cuts: deque[float] | None = None
) -> tuple[_Jump, list[Cut]]:
    """Advance to `target`, reading SUMO's summary rows of every step on the way; the samples
    at `cuts` are cut as their rows come in."""
    step = drive.setup.delta_t
    now = drive.setup.sim_time if start is None else start
    cut: list[Cut] = []
    while True:
        drive.conn.simulationStep(min(target, now + MAX_STEPS_UNREAD * step))
        sim = drive.conn.simulation.getSubscriptionResults()
        now = float(sim[tc.VAR_TIME])
        # SUMO sent the rows of the steps before `now` before it answered.
        cut += drive.summary.read_until(now - step, cuts)
        if now >= target - 1e-9:
            return _Jump(sim_time=now, min_expected=int(sim[tc.VAR_MIN_EXPECTED_VEHICLES])), cut


def _run_slice(
    drive: _Driving, start: float | None, limit: float | None, interrupt: threading.Event
) -> tuple[list[tuple[Any, ...]], _Jump]:
    """Jumps over several samples each until the slice's time is up, a message waits, the run
    ends or sim time reaches `limit`; their sample rows and the last jump.

    The samples are cut from the summary stream, so a jump needs no stop at each one; it spans
    as many as take about JUMP_S, so that SUMO seldom waits for the daemon."""
    deadline = time.monotonic() + RUN_SLICE_S
    rows: list[tuple[Any, ...]] = []
    while True:
        cuts: deque[float] = deque()
        while len(cuts) < drive.samples_per_jump:
            cuts.append(drive.next_target())
            if (drive.end is not None and cuts[-1] >= drive.end - 1e-9) or (
                limit is not None and cuts[-1] >= limit - 1e-9
            ):
                break
        began = time.monotonic()
        jump, cut = _advance(drive, start, cuts[-1], cuts)
        drive.adapt(time.monotonic() - began, len(cut))
        if jump.min_expected == 0:
            # The run ended somewhere in this jump: stop where a jump per sample would have, at
            # the first sample after which no vehicle was active any more.
            while len(cut) > 1 and cut[-2][1] == 0:
                cut.pop()
            jump = _Jump(sim_time=cut[-1][0][1], min_expected=0)
        start = jump.sim_time
        rows.extend(row for row, _active in cut)
        if (
            drive.finished(jump) is not None
            or (limit is not None and jump.sim_time >= limit - 1e-9)
            or interrupt.is_set()
            or time.monotonic() >= deadline
        ):
            return rows, jump


def _open_connection(port: int, handshake_timeout_s: float) -> Connection:
    """Connect and check that SUMO answers: a listener that is not SUMO would block forever."""
    conn = Connection("127.0.0.1", port, None, None, False, None)
    sock = conn._socket
    if sock.getsockname() == sock.getpeername():
        # Nothing listened, and the connect picked the port itself as its source port (it is in
        # the ephemeral range): TCP joined the socket to itself. Not SUMO, not there yet.
        sock.close()
        raise ConnectionRefusedError(f"port {port}: connected to itself")
    sock.settimeout(handshake_timeout_s)
    try:
        conn.getVersion()
    except BaseException:
        _close_quietly(conn)
        raise
    # A jump of many steps may take as long as it takes; SUMO dying closes the socket anyway.
    conn._socket.settimeout(None)
    return conn


def _close_quietly(conn: Connection) -> None:
    # SUMO may close its end first (it does at its end time): the close's answer is then short.
    with contextlib.suppress(FatalTraCIError, TraCIException, OSError, struct.error):
        conn.close(wait=False)
    # close() skips the socket when the command failed; make sure it is gone.
    sock = getattr(conn, "_socket", None)
    if sock is not None:
        sock.close()
