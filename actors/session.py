"""The session actor: one task per session, owning its SUMO run and its session directory.

It materializes its template into its own directory (created and removed here, nowhere else),
leases a port from the supervisor, starts `sumo` through actors/sumo_process.py (confined by its
sandbox launcher, actors/sandbox.py, which may hand over SUMO's sockets), connects TraCI,
advances the simulation, hands sample rows to the writer, and records how it ended
(actors/outcome.py). The samples' figures come from SUMO's own summary output
(actors/summary.py), so TraCI only moves time on: a running session jumps over several samples
per round trip. TraCI calls (actors/traci_driver.py) run on the session's own single thread,
never on the event loop. Its messages are in actors/messages.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import shutil
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from traci.connection import Connection
from traci.exceptions import FatalTraCIError, TraCIException

from actors import handover, scenario, statistics, traci_commands
from actors.ask import reply, reply_error
from actors.errors import CommandFailed, SessionConflict, SupervisorError
from actors.lifecycle import NOW, Cause, IllegalTransition, Status, interrupted, transition
from actors.live_map import LiveMap
from actors.messages import Commands, Control, Message, Pause, Resume, SessionSpec, StopSession
from actors.network import read_network
from actors.outcome import Ending, Outcome, Seen, classify
from actors.quota import RowQuota
from actors.recorder import Recorder
from actors.settings import SessionSettings
from actors.store import SAMPLE_COLUMNS, LeaseLost, RecordedCommand, Store
from actors.summary import SummaryFeed, SummaryLost
from actors.sumo_process import SumoProcess
from actors.traci_driver import (
    Driver,
    advance,
    close_quietly,
    open_connection,
    run_slice,
    subscribe,
)
from actors.writer import WriterActor

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


class PortBroker(Protocol):
    """What a session needs from the supervisor."""

    async def lease_port(self, session_id: str) -> int: ...
    async def port_refused(self, session_id: str, port: int) -> None: ...
    async def simulation_done(self, session_id: str) -> None: ...


class PortsExhausted(Exception):
    pass


class SessionActor:
    def __init__(
        self,
        spec: SessionSpec,
        *,
        settings: SessionSettings,
        store: Store,
        writer: WriterActor,
        broker: PortBroker,
        workdir: Path,
    ) -> None:
        self.spec = spec
        self._settings = settings
        # How long it may stay paused in one go: its own, or the daemon's (which bounds it).
        self._max_pause_s = spec.request.max_pause_s or settings.max_pause_s
        self._store = store
        self._writer = writer
        self._broker = broker
        # The session's directory: made by this actor when it starts, removed when it ends.
        self._workdir = workdir
        # None: SUMO runs unconfined (no kernel sandbox, or `sandbox = false`).
        self._sandbox = settings.sandbox
        # The SUMO process of the current attempt, while it runs.
        self._sumo: SumoProcess | None = None
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._stop: StopSession | None = None
        self._control: deque[Control] = deque()
        # The control message being handled, taken from _control.
        self._in_hand: Control | None = None
        # Whether a pause holds the simulation now: read by the supervisor for the API.
        self.paused = False
        # Set once its loop reads no more messages (its end being written): a message sent
        # then is answered at once.
        self._closed = False
        # The session's own pause clock (loop time): what max_wall_s does not count when
        # pause_counts is false. Kept here, where the pause takes effect, not where it was asked.
        self._paused_since: float | None = None
        self._paused_s = 0.0
        self._net: traci_commands.Network | None = None
        self._stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._sim_time: float | None = None
        self._samples = 0
        # Set on the loop when a message arrives; the TraCI thread ends its slice when it sees it.
        self._interrupt = threading.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"traci-{spec.id}")
        self._log = structlog.get_logger(component="session").bind(session_id=spec.id)
        # Over it, the TraCI thread ends its slice and the session fails `row_quota`.
        self._quota = RowQuota(settings.max_session_rows, on_exceeded=self._interrupt.set)
        self._recorder = Recorder(spec.id, spec.request, workdir, writer, self._quota)
        # The config's own summary-output, written from the stream the samples come from.
        self._own_summary: Path | None = None
        # SUMO's --summary-output.period: None for a row every step (summary.py).
        self._summary_period: float | None = None
        # Set once its end is written (or given up) and its dir removed: until then its lease
        # and its dir are still its own, even after its task was cancelled.
        self.finished = asyncio.Event()
        # Vehicle positions and light states, read only while a map watches (actors/live_map.py).
        self.live_map = LiveMap()

    # ---- messages ------------------------------------------------------------------------------

    def send(self, msg: Message) -> None:
        """Deliver a message. A stop always gets through; control waits in a bounded inbox."""
        if isinstance(msg, StopSession):
            # The stop jumps the queue: it must not wait behind control messages.
            self._take_stop(msg)
            self._interrupt.set()
            return
        if self._closed:
            # Its loop reads no more messages: an answer now, not the caller's timeout.
            reply_error(msg.reply, SessionConflict("the session has ended"))
            return
        try:
            self._inbox.put_nowait(msg)
        except asyncio.QueueFull:
            raise SessionConflict("the session is busy: too many requests waiting") from None
        self._interrupt.set()

    def kill_sumo(self) -> bool:
        """Kill the session's SUMO now (a stop it ignored); whether one was running. The
        session still records the status it was asked to stop with."""
        if self._sumo is None or self._sumo.returncode is not None:
            return False
        self._sumo.kill()
        return True

    def _stop_requested(self) -> StopSession | None:
        self._drain_inbox()
        return self._stop

    # ---- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> Outcome:
        outcome = Outcome(Status.FAILED, "internal error", cause=Cause.INTERNAL)
        try:
            # Its node's claim made it `starting` (store.claim): every write from here on is
            # fenced by that claim's lease.
            outcome = await self._run()
            await self._broker.simulation_done(self.spec.id)
        except asyncio.CancelledError:
            stop = self._stop_requested()
            outcome = Outcome(
                stop.status if stop else Status.STOPPED,
                (stop.reason if stop else "cancelled") + "; killed after grace period",
                cause=Cause.TIMEOUT if stop and stop.status == Status.TIMED_OUT else None,
                sim_time=self._sim_time,
            )
            raise
        except LeaseLost:
            # Another node runs it now (the SUMO of this run is killed as the actor ends).
            self._take_stop(StopSession(Status.FAILED, "lease lost", interrupt=Cause.NODE_LOST))
        except Exception as exc:
            self._log.exception("session_crashed")
            outcome = Outcome(
                Status.FAILED, "internal error", cause=Cause.INTERNAL, error=repr(exc)
            )
        finally:
            self._close_inbox()
            self._executor.shutdown(wait=False, cancel_futures=True)
            outcome = await asyncio.shield(self._finish(outcome))
        return outcome

    async def _finish(self, outcome: Outcome) -> Outcome:
        try:
            return await self._write_end(outcome)
        except LeaseLost:
            # The session is another node's now: what this run did does not count, and nothing
            # of it is written.
            self._log.warning("session_lease_lost", status=outcome.status)
            await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
            return Outcome(Status.FAILED, "lease lost", cause=Cause.NODE_LOST)
        except IllegalTransition as exc:
            self._log.error("session_end_not_written", status=outcome.status, error=str(exc))
            return outcome
        finally:
            # Also when the task was cancelled: this runs on, shielded, after the task ended.
            self.finished.set()

    async def _write_end(self, outcome: Outcome) -> Outcome:
        if self._stop is not None and self._stop.interrupt is not None:
            return await self._write_interrupted(self._stop)
        try:
            # Every sample is committed before the final status is visible: readers who see
            # 'completed' see all of its rows.
            await asyncio.wait_for(self._writer.flush(), timeout=60)
        except TimeoutError:
            self._log.error("flush_timeout")
        await self._store_statistics()
        await self._keep_totals()
        refused = self._writer.take_failure(self.spec.id)
        if refused is not None and outcome.status != Status.FAILED:
            # Its rows are not all there: whatever SUMO did, the session did not succeed.
            outcome = dataclasses.replace(
                outcome,
                status=Status.FAILED,
                reason=f"the database refused its rows ({outcome.reason})",
                cause=Cause.WRITE_FAILED,
                error=refused,
            )
        await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
        # The one write never given up: a session's end waits for the database to come back
        # (a daemon stopped meanwhile leaves it to the next start's recovery).
        try:
            await transition(
                self._store,
                self.spec.id,
                outcome.status,
                outcome.reason,
                retry_s=math.inf,
                ended_at=NOW,
                exit_code=outcome.exit_code,
                cause=outcome.cause,
                error=outcome.error,
                sim_time=outcome.sim_time if outcome.sim_time is not None else self._sim_time,
            )
        except IllegalTransition as exc:
            # Its status is no longer this actor's to write (it ended already, or another
            # writer moved it): what is stored stands.
            self._log.error("session_end_not_written", status=outcome.status, error=str(exc))
        self._log.info(
            "session_ended",
            status=outcome.status,
            reason=outcome.reason,
            cause=outcome.cause,
            exit_code=outcome.exit_code,
            sim_time=outcome.sim_time,
        )
        return outcome

    async def _write_interrupted(self, stop: StopSession) -> Outcome:
        """Cut off from outside: its rows so far are of a run that will not count (a rerun
        replaces them), so only the interruption is written."""
        assert stop.interrupt is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._writer.flush(), timeout=60)
        await asyncio.to_thread(shutil.rmtree, self._workdir, ignore_errors=True)
        status = await interrupted(
            self._store,
            self.spec.id,
            self.spec.request,
            self.spec.attempt,
            stop.reason,
            stop.interrupt,
        )
        self._log.info("session_interrupted", status=status, reason=stop.reason)
        return Outcome(status, stop.reason, cause=stop.interrupt)

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
            await self._store.store_statistics(self.spec.id, figures)
        except Exception as exc:
            self._log.error("statistics_not_stored", error=repr(exc))

    async def _keep_totals(self) -> None:
        """Its samples summed once, now that they are all written: a later summary reads one
        row. Without them (a failure here), a summary sums the samples itself."""
        try:
            await self._store.keep_totals(self.spec.id)
        except Exception as exc:
            self._log.error("totals_not_kept", error=repr(exc))

    async def _run(self) -> Outcome:
        # The store's calls retry while the database is away (a connection error is an OSError
        # too): only the session dir's own errors are io_error.
        files = await self._store.fetch_template_files(
            self.spec.template_name, self.spec.template_version
        )
        if self.spec.attempt > 1:
            await self._store.clear_session_rows(self.spec.id)
        if self._recorder.active:
            await self._store.create_record_partitions(self.spec.id, self._recorder.tables)
        try:
            await asyncio.to_thread(self._prepare_workdir, files)
        except OSError as exc:
            return Outcome(
                Status.FAILED,
                "could not write the session directory",
                cause=Cause.IO_ERROR,
                error=f"{exc.strerror or exc}: {exc.filename or self._workdir}",
            )
        outcome: Outcome | None = None
        for attempt in range(MAX_PORT_ATTEMPTS):
            if (stop := self._stop_requested()) is not None:
                return Outcome(stop.status, stop.reason)
            try:
                port = await self._broker.lease_port(self.spec.id)
            except PortsExhausted:
                return Outcome(Status.FAILED, "no free TraCI port", cause=Cause.PORT_IN_USE)
            if attempt > 0:
                await asyncio.to_thread(self._recorder.prepare, self.spec.config_path)
            outcome = await self._run_on_port(port)
            if outcome.cause != Cause.PORT_IN_USE:
                return outcome
            self._log.warning("port_refused", port=port)
            await self._broker.port_refused(self.spec.id, port)
        assert outcome is not None
        return outcome

    def _prepare_workdir(self, files: list[scenario.TemplateFile]) -> None:
        self._workdir.mkdir(parents=True, exist_ok=False)
        scenario.materialize(files, self._workdir)
        self._recorder.prepare(self.spec.config_path)
        path = self.spec.config_path
        # Parsed once for all the session needs of it.
        config = scenario.config_values((self._workdir / path).read_bytes(), path)
        own = scenario.output_path(config, path, ("summary-output", "summary"))
        self._own_summary = None if own is None else self._workdir / own
        self._summary_period = self._sample_period(config)

    def _sample_period(self, config: Mapping[str, str]) -> float | None:
        """SUMO's summary period for "period" samples: every `sample_every` steps. None (a row
        every step) for "exact" samples, for a config that asks for its own summary file (it
        gets every step, as it would from SUMO), and where SUMO's periods would not start at
        the run's first sim time (a loaded state) or the step length is not a plain number."""
        request = self.spec.request
        if request.sample_detail != "period" or self._own_summary is not None:
            return None
        if "load-state" in config:
            return None
        step = dict(request.sumo_options).get("step-length")
        if step is None:
            step = config.get("step-length") or 1.0
        try:
            return round(float(step) * request.sample_every, 6)
        except ValueError:
            return None

    # ---- one SUMO process ----------------------------------------------------------------------

    def _command(self, port: int, summary_port: int | None) -> list[str]:
        """SUMO's command line; its summary output is added by its launcher when the launcher
        makes the listener (`summary_port` None)."""
        summary = ["--summary-output", f"127.0.0.1:{summary_port}"] if summary_port else []
        # Explicit either way: a config's own period must not thin the rows the samples need.
        period = self._summary_period
        summary += ["--summary-output.period", "-1" if period is None else repr(period)]
        return [
            self._settings.sumo_binary,
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
        summary = SummaryFeed(self.spec.id, self._own_summary, self._summary_period)
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
                sumo = await SumoProcess.spawn(
                    command,
                    cwd=self._workdir,
                    pass_fds=(theirs.fileno(),) if theirs is not None else (),
                    nice=self._settings.sumo_nice,
                )
            finally:
                if theirs is not None:
                    theirs.close()
            self._sumo = sumo
            try:
                return await self._supervise(sumo, port, summary, sumo_command, ours)
            finally:
                self._sumo = None
        finally:
            if ours is not None:
                ours.close()

    async def _supervise(
        self,
        sumo: SumoProcess,
        port: int,
        summary: SummaryFeed,
        sumo_command: list[str],
        channel: socket.socket | None,
    ) -> Outcome:
        log = self._log.bind(port=port, pid=sumo.pid)
        log.info("sumo_started", command=sumo_command, sandboxed=self._sandbox is not None)
        await self._store.set_process(self.spec.id, port, sumo.pid, sumo.started_at)
        sumo_done = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sumo.relog("stdout", log))
            tg.create_task(sumo.relog("stderr", log, self._stderr_tail))
            if self._recorder.active:
                tg.create_task(self._recorder.follow(sumo_done))
            try:
                ending = await self._drive(sumo, port, log, summary, channel)
            finally:
                await sumo.reap(self._settings.stop_grace_s, log)
                sumo_done.set()
        return classify(
            ending,
            Seen(
                returncode=sumo.returncode,
                stderr_tail=list(self._stderr_tail),
                samples=self._samples,
                sim_time=self._sim_time,
                stop=self._stop,
                quota_exceeded=self._quota.limit if self._quota.exceeded else None,
            ),
        )

    # ---- TraCI ---------------------------------------------------------------------------------

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _drive(
        self,
        sumo: SumoProcess,
        port: int,
        log: Any,
        summary: SummaryFeed,
        channel: socket.socket | None,
    ) -> Ending:
        if channel is None:
            conn = await self._connect(
                sumo, functools.partial(open_connection, port, HANDSHAKE_TIMEOUT_S), log
            )
        else:
            conn = await self._connect_private(sumo, channel, port, log, summary)
        if isinstance(conn, Ending):
            return conn
        try:
            return await self._simulate(conn, port, log, summary)
        except (FatalTraCIError, TraCIException, OSError, SummaryLost, struct.error) as exc:
            # traci reports a socket SUMO closed mid-message as a struct.error (a short read).
            return Ending("traci_lost", str(exc) or type(exc).__name__)
        finally:
            # What comes after (SUMO's exit, the last recorded rows, the end) reads no message.
            self._close_inbox()
            self.live_map.close()
            await self._in_thread(close_quietly, conn)

    async def _connect(
        self,
        sumo: SumoProcess,
        attempt: Callable[[], Connection],
        log: Any,
        *,
        single_socket: bool = False,
    ) -> Connection | Ending:
        """Try `attempt` until SUMO answers on its TraCI port, exits, or the start times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.connect_timeout_s
        while True:
            if sumo.returncode is not None:
                return Ending("exited_early")
            if self._stop_requested() is not None:
                return Ending("stop")
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
                    return Ending("traci_lost", f"TraCI handshake failed: {exc!r}")
            if loop.time() > deadline:
                return Ending("connect_timeout")
            # Waiting on the process as well notices an early exit at once.
            with contextlib.suppress(TimeoutError):
                await sumo.wait_exit(CONNECT_POLL_S)

    async def _connect_private(
        self,
        sumo: SumoProcess,
        channel: socket.socket,
        port: int,
        log: Any,
        summary: SummaryFeed,
    ) -> Connection | Ending:
        """A sandboxed SUMO: its sockets from its launcher, then TraCI over the one made for
        the daemon in SUMO's namespace (nothing else can reach SUMO's port there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.connect_timeout_s
        sockets: handover.Sockets | None = None
        while sockets is None:
            if sumo.returncode is not None:
                return Ending("exited_early")
            if self._stop_requested() is not None:
                return Ending("stop")
            if loop.time() > deadline:
                return Ending("connect_timeout")
            try:
                sockets = await handover.receive(channel, HANDOVER_POLL_S)
            except handover.LauncherGone:
                # It failed before exec; its stderr and exit status, read once reaped, say why.
                return Ending("exited_early")
        channel.close()  # one message is all it carries: no fd held for the session's life
        summary.adopt(sockets.summary_listener)
        conn = await self._connect(
            sumo,
            functools.partial(handover.connect, sockets.traci, port, HANDSHAKE_TIMEOUT_S),
            log,
            single_socket=True,
        )
        if isinstance(conn, Ending):
            sockets.traci.close()
        return conn

    async def _simulate(
        self, conn: Connection, port: int, log: Any, summary: SummaryFeed
    ) -> Ending:
        request = self.spec.request
        setup = await self._in_thread(subscribe, conn)
        await self._in_thread(summary.accept, setup.delta_t, setup.sim_time)
        period = summary.period
        if period is not None and abs(setup.delta_t * request.sample_every - period) > 1e-6:
            raise SummaryLost(
                f"SUMO's step length is {setup.delta_t:g} s, not the config's"
                f" {period / request.sample_every:g} s: its summary rows would miss the samples"
                ' (ask for "sample_detail": "exact")'
            )
        end = request.end
        if end is None and setup.end_time > 0:
            end = setup.end_time
        # A scenario's own end (or none) is bounded like a requested one.
        end = min(end if end is not None else math.inf, self._settings.end_limit)
        if end == math.inf:
            end = None
        replay: deque[RecordedCommand] = deque()
        if request.replay_of:
            replay.extend(await self._store.session_commands(request.replay_of))
        await transition(
            self._store,
            self.spec.id,
            Status.RUNNING,
            "traci connected",
            end_time=end,
            sim_time=None,
        )
        log.info("session_running", end=end, delta_t=setup.delta_t, mode=request.mode)
        driver = Driver(conn, summary, setup, end, request.sample_every)
        self._sim_time = setup.sim_time
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        stepped = request.mode == "stepped"
        while True:
            self._interrupt.clear()
            self._drain_inbox()
            if self._stop is not None:
                return Ending("stop")
            if self._quota.exceeded:
                return Ending("row_quota")
            while self._control:
                msg = self._in_hand = self._control.popleft()
                idle_since = loop.time()
                if isinstance(msg, Pause | Resume):
                    self._set_paused(isinstance(msg, Pause), loop.time())
                    log.info("session_paused" if self.paused else "session_resumed")
                    if self.paused:
                        # Whoever paused it can read every sample up to here at once.
                        await asyncio.wait_for(self._writer.flush(), 60)
                    reply(msg.reply, None)
                elif isinstance(msg, Commands):
                    await self._apply_commands(conn, msg, log)
                elif not stepped:
                    msg.reply.set_exception(SessionConflict("only a stepped session can step"))
                elif self.paused:
                    # A pause holds SUMO still (and stops its wall clock): a step would run it
                    # unbounded by max_wall_s.
                    msg.reply.set_exception(
                        SessionConflict("the session is paused: resume it before stepping")
                    )
                else:
                    target = (self._sim_time or 0.0) + msg.seconds
                    sample, done = await self._jump(
                        driver, target if end is None else min(target, end)
                    )
                    # The answer means the sample is stored: reads after it see it.
                    await asyncio.wait_for(self._writer.flush(), 60)
                    reply(msg.reply, sample)
                    if done is not None:
                        return done
            await self.live_map.tick(conn, self._in_thread, self._sim_time)
            if self._paused_since is not None or stepped:
                # Held still: wait for the next message (a stepped session only until idle).
                wait = 1.0
                if self._paused_since is not None:
                    # A pause somebody forgot must not hold a run slot (and its port) forever.
                    wait = self._paused_since + self._max_pause_s - loop.time()
                    if wait <= 0:
                        return Ending("pause_timeout")
                elif stepped:
                    wait = idle_since + request.idle_timeout_s - loop.time()
                    if wait <= 0:
                        return Ending("idle")
                await self._wait_inbox(min(wait, 1.0))
                continue
            # A replay applies its original's commands at the sim times they were applied at
            # (the first ones maybe at its very start): the slice stops at the next one's.
            await self._replay_due(conn, replay, log)
            limit = replay[0].sim_time if replay else None
            done = await self._run_for_a_slice(driver, limit)
            await self._replay_due(conn, replay, log)
            if done is not None:
                return done

    def _set_paused(self, paused: bool, now: float) -> None:
        if paused and self._paused_since is None:
            self._paused_since = now
        elif not paused and self._paused_since is not None:
            self._paused_s += now - self._paused_since
            self._paused_since = None
        self.paused = paused

    def paused_for(self, now: float) -> float:
        """Loop seconds it has been paused so far, the pause it is in included."""
        since = self._paused_since
        return self._paused_s + (now - since if since is not None else 0.0)

    async def _replay_due(self, conn: Connection, replay: deque[RecordedCommand], log: Any) -> None:
        due = []
        while replay and replay[0].sim_time <= (self._sim_time or 0.0) + 1e-9:
            due.append(replay.popleft().command)
        if due:
            await self._replay(conn, due, log)

    async def _jump(self, driver: Driver, target: float) -> tuple[dict[str, Any], Ending | None]:
        """Advance to `target` in one round trip, write the sample; the end, if reached."""
        jump, _ = await self._in_thread(advance, driver, self._sim_time, target)
        self._sim_time = jump.sim_time
        row = driver.summary.cut(jump.sim_time)
        if self._quota.take(1):
            await self._writer.write(row)
        self._samples += 1
        sample = dict(zip(SAMPLE_COLUMNS[1:], row[1:], strict=True))
        return sample, driver.finished(jump)

    async def _run_for_a_slice(self, driver: Driver, limit: float | None) -> Ending | None:
        """Jump after jump on the TraCI thread for up to RUN_SLICE_S; the end, if reached."""
        rows, last = await self._in_thread(
            run_slice, driver, self._sim_time, limit, self._interrupt
        )
        self._sim_time = last.sim_time
        self._samples += len(rows)
        rows = rows[: self._quota.take(len(rows))]
        await self._writer.write_records("samples", SAMPLE_COLUMNS, rows)
        return driver.finished(last)

    async def _apply_commands(self, conn: Connection, msg: Commands, log: Any) -> None:
        """Apply a batch and answer it. Whatever goes wrong fails the batch, not the session;
        only a lost TraCI connection ends it."""
        try:
            results = await self._in_thread(
                traci_commands.apply, conn, msg.commands, await self._network()
            )
        except SupervisorError as exc:
            reply_error(msg.reply, exc)
            return
        except _CONNECTION_LOST:
            raise
        except Exception as exc:
            log.exception("commands_failed", sim_time=self._sim_time)
            reply_error(msg.reply, CommandFailed(f"applying the commands failed: {exc!r}"))
            return
        try:
            await self._store_applied(msg.commands, results)
        except Exception as exc:
            log.exception("commands_not_stored", sim_time=self._sim_time)
            reply_error(
                msg.reply,
                CommandFailed(f"the commands were applied but could not be stored: {exc!r}"),
            )
            return
        log.info("commands_applied", count=len(msg.commands), sim_time=self._sim_time)
        reply(msg.reply, {"sim_time": self._sim_time, "results": results})

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
            await self._store.add_commands(self.spec.id, self._sim_time or 0.0, applied)

    async def _network(self) -> traci_commands.Network:
        if self._net is None:
            self._net = await asyncio.to_thread(read_network, self._workdir, self.spec.config_path)
        return self._net

    # ---- the inbox -----------------------------------------------------------------------------

    def _take_stop(self, msg: StopSession) -> None:
        # The first stop stands, unless the run is then cut off from outside: no status this
        # node writes for it counts any more but the interruption.
        if self._stop is None or (msg.interrupt is not None and self._stop.interrupt is None):
            self._stop = msg

    def _route(self, msg: Message) -> None:
        if isinstance(msg, StopSession):
            self._take_stop(msg)
        else:
            self._control.append(msg)

    def _close_inbox(self) -> None:
        """Its loop reads no more messages: each waiting one, and each sent from now on, is
        answered at once, not after the caller's timeout. The message in hand too: a session
        that ends while applying commands or stepping (a no-op if it was answered)."""
        self._closed = True
        self._drain_inbox()
        in_hand = [self._in_hand] if self._in_hand is not None else []
        for msg in [*in_hand, *self._control]:
            reply_error(msg.reply, SessionConflict("the session has ended"))
        self._control.clear()

    def _drain_inbox(self) -> None:
        while not self._inbox.empty():
            self._route(self._inbox.get_nowait())

    async def _wait_inbox(self, wait_s: float) -> None:
        try:
            self._route(await asyncio.wait_for(self._inbox.get(), max(wait_s, 0.0)))
        except TimeoutError:
            pass
