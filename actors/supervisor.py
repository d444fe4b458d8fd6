"""The supervisor actor: admission, the TraCI port pool, wall-clock timeouts and escalation.

It owns which sessions exist in this process, their tasks, and the port pool: it is the only
place ports are leased and given back. Everything reaches it through one bounded inbox and is
handled by one loop, so its state needs no locks: the service layer submits, stops and controls
sessions through its methods, session actors lease ports, and each session task reports its own
end. A session owns its SUMO process and its directory (actors/session.py); a stop it ignores is
escalated here by killing that SUMO through the session (actors/sumo_process.py) and then
cancelling its task. At start, recovery kills a previous daemon's SUMO processes and removes the
session dirs it left, which no live session owns.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from actors.ask import ask
from actors.errors import QueueFull, SessionConflict, SessionNotFound, ShuttingDown
from actors.lifecycle import ACTIVE, NOW, Cause, Status, requeue, transition
from actors.messages import Commands, Control, Pause, Resume, SessionSpec, Step, StopSession
from actors.outcome import Outcome
from actors.ports import PortPool
from actors.request import SessionRequest
from actors.session import PortsExhausted, SessionActor
from actors.settings import SupervisorSettings
from actors.store import NewSweep, Store
from actors.sumo_process import kill_orphan
from actors.writer import WriterActor

# A reply from the supervisor to one of its own actors never takes this long unless it is stuck.
REPLY_TIMEOUT_S = 30.0
INBOX_SIZE = 1024
# How long a control message (pause, resume, step, commands) may take to be answered: a step
# of many sim seconds can take long.
CONTROL_TIMEOUT_S = 120.0


def new_session_id() -> str:
    """Fixed-width UTC time first, so ids sort by creation; random suffix for uniqueness."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ").lower() + "-" + secrets.token_hex(4)


# ---- messages ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit:
    """Sessions queued together: all of them, or none (a sweep is never left half-submitted)."""

    specs: tuple[SessionSpec, ...]
    reply: asyncio.Future[None]
    sweep: tuple[str, dict[str, Any]] | None = None  # the sweep's id and request, stored with them


@dataclass(frozen=True)
class Stop:
    session_id: str
    reply: asyncio.Future[str]  # the status the session had when the stop was accepted


@dataclass(frozen=True)
class LeasePort:
    session_id: str
    reply: asyncio.Future[int | None]


@dataclass(frozen=True)
class PortRefused:
    session_id: str
    port: int


@dataclass(frozen=True)
class SimulationDone:
    """The session's SUMO has exited for good; the session is only writing down its end."""

    session_id: str


@dataclass(frozen=True)
class SessionEnded:
    session_id: str
    outcome: Outcome | None


@dataclass(frozen=True)
class Forward:
    """Hand a control message (pause, resume, step, commands) to a running session."""

    session_id: str
    control: Control
    reply: asyncio.Future[None]  # answered once the session has it, not when it has acted


@dataclass(frozen=True)
class Shutdown:
    reason: str


Message = (
    Submit | Stop | LeasePort | PortRefused | SimulationDone | SessionEnded | Forward | Shutdown
)


@dataclass
class _Running:
    actor: SessionActor
    task: asyncio.Task[None]
    wall_deadline: float | None
    ports: set[int] = field(default_factory=set)
    # False once its SUMO has exited for good: it no longer counts against max_running.
    simulating: bool = True
    # Escalation after a stop request: SIGKILL the group, later cancel the task.
    stop_sent_at: float | None = None
    killed: bool = False
    cancelled: bool = False
    # Set while paused, when paused time must not count towards max_wall_s.
    paused_at: float | None = None


class _Broker:
    """A session's view of the supervisor: requests are messages, answers come back as futures."""

    def __init__(self, supervisor: SupervisorActor) -> None:
        self._supervisor = supervisor

    async def lease_port(self, session_id: str) -> int:
        port: int | None = await ask(
            self._supervisor.send, partial(LeasePort, session_id), REPLY_TIMEOUT_S
        )
        if port is None:
            raise PortsExhausted
        return port

    async def port_refused(self, session_id: str, port: int) -> None:
        await self._supervisor.send(PortRefused(session_id, port))

    async def simulation_done(self, session_id: str) -> None:
        await self._supervisor.send(SimulationDone(session_id))


class SupervisorActor:
    def __init__(
        self,
        settings: SupervisorSettings,
        *,
        store: Store,
        writer: WriterActor,
        ports: PortPool,
        on_started: Callable[[], None] = lambda: None,
        on_finished: Callable[[str], None] = lambda status: None,
    ) -> None:
        self._on_started = on_started
        self._on_finished = on_finished
        self._settings = settings
        self._store = store
        self._writer = writer
        self._ports = ports
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._queue: deque[SessionSpec] = deque()
        self._running: dict[str, _Running] = {}
        self._accepting = True
        self._shutdown_reason: str | None = None
        self._broker = _Broker(self)
        self._log = structlog.get_logger(component="supervisor")

    # ---- what others may read (same event loop, so always consistent) --------------------------

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queued_count(self) -> int:
        return len(self._queue)

    @property
    def ports_leased(self) -> int:
        return self._ports.leased

    # ---- messages in ---------------------------------------------------------------------------

    async def send(self, msg: Message) -> None:
        await asyncio.wait_for(self._inbox.put(msg), REPLY_TIMEOUT_S)

    async def submit(
        self, *specs: SessionSpec, sweep: tuple[str, dict[str, Any]] | None = None
    ) -> None:
        """Queue sessions, all of them or none; their rows are stored before this returns."""
        await ask(self.send, lambda reply: Submit(specs, reply, sweep), REPLY_TIMEOUT_S)

    async def stop(self, session_id: str) -> str:
        """Stop a session; the status it had when the stop was accepted (queued or running)."""
        status: str = await ask(self.send, partial(Stop, session_id), REPLY_TIMEOUT_S)
        return status

    async def pause(self, session_id: str) -> None:
        await self._control(session_id, Pause)

    async def resume(self, session_id: str) -> None:
        await self._control(session_id, Resume)

    async def step(self, session_id: str, seconds: float) -> dict[str, Any]:
        """Advance a stepped session by `seconds` of sim time; the sample it reached."""
        sample: dict[str, Any] = await self._control(session_id, partial(Step, seconds))
        return sample

    async def apply_commands(
        self, session_id: str, commands: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Apply a batch of commands to a running session; its answer (sim time, results)."""
        answer: dict[str, Any] = await self._control(session_id, partial(Commands, commands))
        return answer

    async def _control(
        self, session_id: str, make: Callable[[asyncio.Future[Any]], Control]
    ) -> Any:
        """Hand a control message to a running session, then wait for the session's answer."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        control = make(answer)
        await ask(self.send, partial(Forward, session_id, control), REPLY_TIMEOUT_S)
        try:
            return await asyncio.wait_for(answer, CONTROL_TIMEOUT_S)
        except TimeoutError:
            raise SessionConflict(f"session {session_id} did not answer in time") from None

    async def shutdown(self, reason: str) -> None:
        await self.send(Shutdown(reason))

    # ---- start-up reconciliation ---------------------------------------------------------------

    async def recover(self) -> None:
        """Make the database true again after a previous run of the daemon ended, however it ended.

        Sessions it left starting/running are failed (their SUMO killed if it still lives); queued
        ones are admitted again in their original order; leftover session dirs are removed.
        """
        for row in await self._store.sessions_in_status(ACTIVE):
            killed = await asyncio.to_thread(kill_orphan, row.pid, row.pid_started_at)
            request = SessionRequest.from_json(row.request)
            self._log.warning(
                "session_orphaned", session_id=row.id, pid=row.pid, sumo_killed=killed
            )
            if request.on_interrupt == "rerun" and row.attempt < request.max_attempts:
                # A fixed-seed SUMO run is deterministic: running it again gives the same data.
                attempt = row.attempt + 1
                await requeue(
                    self._store,
                    row.id,
                    attempt,
                    f"daemon restarted: rerun, attempt {attempt} of {request.max_attempts}",
                )
                continue
            await transition(
                self._store,
                row.id,
                Status.FAILED,
                "daemon restarted while the session was active",
                ended_at=NOW,
                cause=Cause.DAEMON_RESTARTED,
                error="the daemon stopped before the session ended"
                + (" (no attempts left)" if request.on_interrupt == "rerun" else ""),
            )
        requeued = 0
        # Reruns and sessions that were waiting, in their original order (ids sort by creation).
        for row in await self._store.sessions_in_status([Status.QUEUED]):
            config_path = await self._store.template_config_path(
                row.template_name, row.template_version
            )
            assert config_path is not None  # a foreign key keeps it
            self._queue.append(
                SessionSpec(
                    id=row.id,
                    template_name=row.template_name,
                    template_version=row.template_version,
                    config_path=config_path,
                    request=SessionRequest.from_json(row.request),
                    attempt=row.attempt,
                )
            )
            requeued += 1
        swept = await asyncio.to_thread(_remove_leftover_dirs, self._settings.temp_root)
        self._log.info("recovered", requeued=requeued, temp_dirs_removed=swept)

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until a Shutdown has stopped every session. Session tasks are owned here."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            self._admit(tg)
            while self._accepting or self._running:
                # Woken at the next deadline, and at least every second regardless.
                timeout = min(self._next_deadline(loop.time()), 1.0)
                try:
                    msg = await asyncio.wait_for(self._inbox.get(), timeout)
                except TimeoutError:
                    msg = None
                if msg is not None:
                    try:
                        await self._handle(msg)
                    except Exception as exc:
                        # A caller's error (or the database's) goes back to the caller; the loop
                        # that owns every session must go on.
                        reply = getattr(msg, "reply", None)
                        if reply is not None and not reply.done():
                            reply.set_exception(exc)
                        else:
                            self._log.exception(
                                "supervisor_message_failed", message=type(msg).__name__
                            )
                self._enforce_deadlines(loop.time())
                self._admit(tg)
        self._log.info("supervisor_stopped", reason=self._shutdown_reason)

    async def _handle(self, msg: Message) -> None:
        match msg:
            case Submit(specs, reply, sweep):
                if not self._accepting:
                    reply.set_exception(ShuttingDown("the daemon is shutting down"))
                elif len(self._queue) + len(specs) > self._settings.max_queued:
                    room = self._settings.max_queued - len(self._queue)
                    reply.set_exception(
                        QueueFull(
                            f"queue is full: room for {room} more sessions, not {len(specs)}"
                            f" ({self._settings.max_queued} may wait)"
                        )
                    )
                else:
                    # The rows are written here, in admission order, so a full queue or a
                    # shutdown never leaves a session in the database that will not run.
                    await self._store.insert_sessions(
                        [s.db_row() for s in specs], NewSweep(*sweep) if sweep else None
                    )
                    self._queue.extend(specs)
                    reply.set_result(None)
            case Stop(session_id, reply):
                reply.set_result(await self._stop(session_id))
            case LeasePort(session_id, reply):
                port = self._ports.lease() if session_id in self._running else None
                if port is not None:
                    self._running[session_id].ports.add(port)
                if not reply.done():
                    reply.set_result(port)
            case PortRefused(session_id, port):
                self._ports.quarantine(port)
                if (run := self._running.get(session_id)) is not None:
                    run.ports.discard(port)
            case SimulationDone(session_id):
                if (run := self._running.get(session_id)) is not None:
                    run.simulating = False
            case SessionEnded(session_id, outcome):
                await self._cleanup(session_id)
                self._on_finished(outcome.status if outcome else Status.STOPPED)
            case Forward(session_id, control, reply):
                await self._forward(session_id, control)
                reply.set_result(None)
            case Shutdown(reason):
                await self._begin_shutdown(reason)

    def _admit(self, tg: asyncio.TaskGroup) -> None:
        loop = asyncio.get_running_loop()
        # max_running bounds SUMO processes (the CPU): a session that is only writing down its
        # end lets the next one start.
        while (
            self._accepting
            and self._queue
            and sum(r.simulating for r in self._running.values()) < self._settings.max_running
        ):
            spec = self._queue.popleft()
            workdir = self._settings.temp_root / spec.id
            actor = SessionActor(
                spec,
                settings=self._settings.session,
                store=self._store,
                writer=self._writer,
                broker=self._broker,
                workdir=workdir,
            )
            wall = spec.request.max_wall_s or self._settings.max_wall_s_default
            task = tg.create_task(self._session_main(actor), name=f"session-{spec.id}")
            self._running[spec.id] = _Running(
                actor, task, loop.time() + wall if wall is not None else None
            )
            self._log.info("session_admitted", session_id=spec.id, running=len(self._running))
            self._on_started()

    async def _session_main(self, actor: SessionActor) -> None:
        outcome: Outcome | None = None
        try:
            outcome = await actor.run()
        except asyncio.CancelledError:
            # Cancelled by the escalation below; the actor has recorded its status. Report the end
            # so cleanup runs, then let the cancellation finish the task.
            await asyncio.shield(self._inbox.put(SessionEnded(actor.spec.id, None)))
            raise
        except Exception:
            # Raised out of a session task, it would end the task group, and every other session
            # and this loop with it. Its port, its place and its files are still given back.
            self._log.exception("session_actor_failed", session_id=actor.spec.id)
        await self._inbox.put(SessionEnded(actor.spec.id, outcome))

    async def _stop(self, session_id: str) -> str:
        for spec in self._queue:
            if spec.id == session_id:
                self._queue.remove(spec)
                await transition(
                    self._store, session_id, Status.STOPPED, "stopped while queued", ended_at=NOW
                )
                self._log.info("session_ended", session_id=session_id, status="stopped")
                return "queued"
        run = self._running.get(session_id)
        if run is None:
            status = await self._store.get_status(session_id)
            if status is None:
                raise SessionNotFound(f"no session {session_id!r}")
            raise SessionConflict(
                f"session {session_id} has already ended ({status})", status=status.value
            )
        self._request_stop(run, StopSession(Status.STOPPED, "stop requested"))
        return "running"

    async def _forward(self, session_id: str, control: Control) -> None:
        run = self._running.get(session_id)
        if run is None:
            if any(spec.id == session_id for spec in self._queue):
                raise SessionConflict(f"session {session_id} is queued, not running yet")
            status = await self._store.get_status(session_id)
            if status is None:
                raise SessionNotFound(f"no session {session_id!r}")
            raise SessionConflict(
                f"session {session_id} is not running ({status})", status=status.value
            )
        run.actor.send(control)
        if not run.actor.spec.request.pause_counts and run.wall_deadline is not None:
            now = asyncio.get_running_loop().time()
            if isinstance(control, Pause) and run.paused_at is None:
                run.paused_at = now
            elif isinstance(control, Resume) and run.paused_at is not None:
                run.wall_deadline += now - run.paused_at
                run.paused_at = None

    def _request_stop(self, run: _Running, stop: StopSession) -> None:
        if run.stop_sent_at is None:
            run.stop_sent_at = asyncio.get_running_loop().time()
            run.actor.send(stop)
            self._log.info("session_stopping", session_id=run.actor.spec.id, reason=stop.reason)

    async def _begin_shutdown(self, reason: str) -> None:
        if not self._accepting:
            return
        self._accepting = False
        self._shutdown_reason = reason
        self._log.info(
            "supervisor_shutting_down",
            reason=reason,
            running=len(self._running),
            queued=len(self._queue),
        )
        while self._queue:
            spec = self._queue.popleft()
            await transition(
                self._store,
                spec.id,
                Status.STOPPED,
                f"daemon shutting down ({reason})",
                ended_at=NOW,
            )
        for run in self._running.values():
            self._request_stop(run, StopSession(Status.STOPPED, f"daemon shutting down ({reason})"))

    # ---- timeouts and escalation ---------------------------------------------------------------

    def _next_deadline(self, now: float) -> float:
        grace = self._settings.session.stop_grace_s
        times: list[float] = []
        for run in self._running.values():
            if run.stop_sent_at is None:
                if run.wall_deadline is not None and run.paused_at is None:
                    times.append(run.wall_deadline)
            elif not run.killed:
                times.append(run.stop_sent_at + grace)
            elif not run.cancelled:
                times.append(run.stop_sent_at + 3 * grace)
        return max(0.0, min(times) - now) if times else float("inf")

    def _enforce_deadlines(self, now: float) -> None:
        grace = self._settings.session.stop_grace_s
        for session_id, run in self._running.items():
            if run.stop_sent_at is None:
                wall = run.wall_deadline
                if wall is not None and run.paused_at is None and now >= wall:
                    self._request_stop(run, StopSession(Status.TIMED_OUT, "max_wall_s exceeded"))
            elif not run.killed and now >= run.stop_sent_at + grace:
                # A jump of many steps can take long; killing SUMO ends it at once, and the actor
                # still records the status it was asked for.
                run.killed = True
                if run.actor.kill_sumo():
                    self._log.warning("session_kill", session_id=session_id)
            elif not run.cancelled and now >= run.stop_sent_at + 3 * grace:
                run.cancelled = True
                self._log.error("session_cancel", session_id=session_id)
                run.task.cancel()

    async def _cleanup(self, session_id: str) -> None:
        run = self._running.pop(session_id, None)
        if run is None:
            return
        for port in run.ports:
            self._ports.release(port)


def _remove_leftover_dirs(root: Path) -> int:
    """Remove every session dir left under `root` (only called before any session runs)."""
    if not root.exists():
        return 0
    removed = 0
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)
        removed += 1
    return removed
