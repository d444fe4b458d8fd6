"""The supervisor actor: this node's claims on the shared queue, the TraCI port pool,
wall-clock timeouts and escalation, drain.

The queue is the store's, shared by every node of the database: a session is stored queued,
and a node with a free run slot claims the oldest queued sessions (store.claim), which makes
them its own under a lease (actors/leases.py renews it and rescues other nodes' lapsed ones).
It owns which sessions run in this process, their tasks, and the port pool: it is the only
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
import contextlib
import math
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import structlog

from actors.ask import ask
from actors.errors import (
    OwnedElsewhere,
    QueueFull,
    SessionConflict,
    SessionNotFound,
    ShuttingDown,
)
from actors.leases import LeaseKeeper
from actors.lifecycle import ACTIVE, NOW, Cause, IllegalTransition, Status, interrupted, transition
from actors.live_map import LiveMap
from actors.messages import Commands, Control, Pause, Resume, SessionSpec, Step, StopSession
from actors.outcome import Outcome
from actors.ports import PortPool
from actors.request import SessionRequest
from actors.session import PortsExhausted, SessionActor
from actors.settings import SupervisorSettings
from actors.store import Claimed, Lapsed, LeaseLost, NewSweep, Node, Store
from actors.sumo_process import kill_orphan, pid_alive
from actors.writer import WriterActor

# A claim is one statement: longer means the store is away, and the loop has other work.
CLAIM_TIMEOUT_S = 5.0
# A reply from the supervisor to one of its own actors never takes this long unless it is stuck.
REPLY_TIMEOUT_S = 30.0
INBOX_SIZE = 1024
# How long a control message (pause, resume, step, commands) may take to be answered: a step
# of many sim seconds can take long.
CONTROL_TIMEOUT_S = 120.0
# How often, at most, a node admitting from a long queue counts what is left of it.
QUEUE_COUNT_S = 1.0


def new_node_id() -> str:
    """New at every start: a node's identity is its process, never its name."""
    return secrets.token_hex(8)


def boot_id() -> str:
    """The kernel's id of this boot: nodes that share it run on this machine."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


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


@dataclass(frozen=True)
class Drain:
    """Claim nothing more; running sessions may end until `timeout_s`, then are handed back."""

    timeout_s: float


Message = (
    Submit
    | Stop
    | LeasePort
    | PortRefused
    | SimulationDone
    | SessionEnded
    | Forward
    | Shutdown
    | Drain
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

    def wall_deadline_at(self, now: float) -> float | None:
        """When max_wall_s runs out; None while that clock stands still (paused, and pauses
        do not count). The session's own pause clock counts: a pause asked for but not yet
        taken (or refused) stops nothing."""
        if self.wall_deadline is None or self.actor.spec.request.pause_counts:
            return self.wall_deadline
        if self.actor.paused:
            return None
        return self.wall_deadline + self.actor.paused_for(now)


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
        on_drained: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_started = on_started
        self._on_finished = on_finished
        self._on_drained = on_drained
        self._settings = settings
        self._store = store
        self._writer = writer
        self._ports = ports
        self._inbox: asyncio.Queue[Message] = asyncio.Queue(maxsize=INBOX_SIZE)
        self._running: dict[str, _Running] = {}
        # Sessions whose task was cancelled while their end was still being written.
        self._finishing: dict[str, SessionActor] = {}
        # The epoch of each running session's lease (what the lease keeper renews).
        self._leases: dict[str, int] = {}
        self._accepting = True
        self._shutdown_reason: str | None = None
        self._broker = _Broker(self)
        self.node_id = new_node_id()
        self._boot_id = boot_id()
        self._api_url: str | None = None
        # Nodes of this machine found dead at start: their sessions' rescue says so.
        self._dead_here: set[str] = set()
        self._keeper = LeaseKeeper(
            store,
            self.node_id,
            self,
            ttl_s=settings.lease_ttl_s,
            renew_s=settings.lease_renew_s,
        )
        # Claims: due at once when something was queued here, else every claim_poll_s.
        self._claim_due = 0.0
        self._queued_seen = 0
        self._counted_at = -math.inf
        self._drain_deadline: float | None = None
        self._log = structlog.get_logger(component="supervisor").bind(node_id=self.node_id)

    # ---- what others may read (same event loop, so always consistent) --------------------------

    @property
    def running_count(self) -> int:
        return len(self._running)

    @property
    def queued_count(self) -> int:
        """Sessions waiting in the shared queue, as last counted."""
        return self._queued_seen

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def node(self) -> Node:
        return Node(
            id=self.node_id,
            name=self._settings.node_name,
            api_url=self._api_url,
            capacity=self._settings.max_running,
            boot_id=self._boot_id,
            pid=os.getpid(),
        )

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

    def live_map(self, session_id: str) -> LiveMap | None:
        """The map feed of a session this node runs now; None when it runs none such."""
        run = self._running.get(session_id)
        return run.actor.live_map if run is not None else None

    @property
    def map_watchers(self) -> int:
        """Live maps open on the sessions this node runs (read at scrape time)."""
        return sum(run.actor.live_map.watchers for run in self._running.values())

    def paused(self, session_id: str) -> bool | None:
        """Whether a session this node runs is paused now; None when it runs no such session."""
        run = self._running.get(session_id)
        return run.actor.paused if run is not None else None

    async def shutdown(self, reason: str) -> None:
        await self.send(Shutdown(reason))

    async def drain(self, timeout_s: float) -> None:
        await self.send(Drain(timeout_s))

    def drain_overdue(self, grace_s: float) -> bool:
        """A drain whose sessions have not all ended `grace_s` past its deadline (their ends
        cannot be written, say): the daemon stops instead."""
        return (
            self._drain_deadline is not None
            and asyncio.get_running_loop().time() > self._drain_deadline + grace_s
        )

    async def advertise(self, api_url: str) -> None:
        """Where other nodes reach this one's API (known once it listens)."""
        self._api_url = api_url
        await self._store.register_node(self.node())

    # ---- leases (actors/leases.py calls these) -------------------------------------------------

    def held_leases(self) -> Mapping[str, int]:
        return self._leases

    def leases_lost(self, session_ids: set[str], why: str) -> None:
        for session_id in session_ids:
            run = self._running.get(session_id)
            if run is None:
                continue
            # Killed now, not after a grace: another node may run it any moment.
            run.actor.send(StopSession(Status.FAILED, why, interrupt=Cause.NODE_LOST))
            if run.stop_sent_at is None:
                run.stop_sent_at = asyncio.get_running_loop().time()
            run.killed = True
            run.actor.kill_sumo()
            self._log.warning("session_lease_lost", session_id=session_id, why=why)

    async def rescue(self, lapsed: list[Lapsed]) -> None:
        for x in lapsed:
            await self._rescue_one(x)

    async def _rescue_one(self, x: Lapsed) -> None:
        owner = x.lease.node_id
        here = owner is None or x.owner_boot_id == self._boot_id
        if here and x.record.pid is not None:
            # Its SUMO may still run on this machine: only the recorded process is killed.
            killed = await asyncio.to_thread(kill_orphan, x.record.pid, x.record.pid_started_at)
            self._log.warning(
                "session_orphaned", session_id=x.record.id, pid=x.record.pid, sumo_killed=killed
            )
        if owner is None or owner in self._dead_here:
            why, cause = "daemon restarted", Cause.DAEMON_RESTARTED
        else:
            why, cause = f"node {x.owner_name or owner} stopped renewing its lease", Cause.NODE_LOST
        try:
            status = await interrupted(
                self._store,
                x.record.id,
                SessionRequest.from_json(x.record.request),
                x.record.attempt,
                why,
                cause,
                fence=x.lease,
            )
        except (LeaseLost, IllegalTransition):
            return  # another node rescued it first, or it ended meanwhile
        except Exception as exc:
            # The database slow or away, its owner's lock held, a request this version cannot
            # read: this session waits for the next round; the others, and this node, go on.
            self._log.warning("session_rescue_failed", session_id=x.record.id, error=repr(exc))
            return
        self._log.warning("session_rescued", session_id=x.record.id, from_node=owner, status=status)

    # ---- start-up reconciliation ---------------------------------------------------------------

    async def recover(self) -> None:
        """Make the database true again after a previous run of the daemon on this machine
        ended, however it ended: register this node, fail or rerun (on_interrupt) the sessions
        of this machine's dead nodes at once (their SUMO killed if it still lives; other nodes'
        wait for their leases to lapse), and remove leftover session dirs."""
        await self._store.register_node(self.node())
        self._dead_here = set(await self._store.dead_nodes(self._boot_id, pid_alive))
        rescued = 0
        while batch := [
            x
            for x in await self._store.lapsed(500)
            if x.lease.node_id is None or x.lease.node_id in self._dead_here
        ]:
            for x in batch:
                await self._rescue_one(x)
            rescued += len(batch)
        self._queued_seen = await self._store.count_queued()
        swept = await asyncio.to_thread(_remove_leftover_dirs, self._settings.temp_root)
        self._log.info(
            "recovered",
            node_name=self._settings.node_name,
            dead_nodes=len(self._dead_here),
            rescued=rescued,
            queued=self._queued_seen,
            temp_dirs_removed=swept,
        )

    # ---- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until a Shutdown has stopped every session. Session tasks are owned here."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            keeper = tg.create_task(self._keeper.run(), name="leases")
            await self._admit(tg)
            while self._accepting or self._running or self._finishing:
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
                self._keeper.check_deadline()
                self._reap_finishing()
                self._enforce_deadlines(loop.time())
                await self._admit(tg)
                self._check_drained(loop.time())
            self._keeper.stop()
            keeper.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store.node_stopped(self.node_id), 5)
        self._log.info("supervisor_stopped", reason=self._shutdown_reason)

    async def _handle(self, msg: Message) -> None:
        match msg:
            case Submit(specs, reply, sweep):
                if not self._accepting or self.draining:
                    reply.set_exception(ShuttingDown("the daemon is shutting down"))
                    return
                # The shared queue's length: nodes submitting at once may overshoot a little.
                waiting = await self._store.count_queued()
                if waiting + len(specs) > self._settings.max_queued:
                    room = max(0, self._settings.max_queued - waiting)
                    reply.set_exception(
                        QueueFull(
                            f"queue is full: room for {room} more sessions, not {len(specs)}"
                            f" ({self._settings.max_queued} may wait)"
                        )
                    )
                    return
                await self._store.insert_sessions(
                    [s.db_row() for s in specs], NewSweep(*sweep) if sweep else None
                )
                self._queued_seen = waiting + len(specs)
                self._claim_due = 0.0
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
            case Drain(timeout_s):
                await self._begin_drain(timeout_s)

    async def _admit(self, tg: asyncio.TaskGroup) -> None:
        """Claim as many queued sessions as there are free run slots, and start them."""
        loop = asyncio.get_running_loop()
        # max_running bounds SUMO processes (the CPU): a session that is only writing down its
        # end lets the next one start.
        free = self._settings.max_running - sum(r.simulating for r in self._running.values())
        if (
            not self._accepting
            or self.draining
            or free <= 0
            or loop.time() < self._claim_due
            or not self._keeper.healthy
        ):
            return
        self._claim_due = loop.time() + self._settings.claim_poll_s
        exclude = [*self._running, *self._finishing]
        if not self._writer.idle:
            # Rows of an earlier run here may still be on their way: that run's writes are
            # refused while its lease is released, and would pass under a new claim's.
            exclude += self._store.released()
        try:
            async with asyncio.timeout(CLAIM_TIMEOUT_S):
                claimed = await self._store.claim(
                    self.node_id, free, self._settings.lease_ttl_s, exclude=exclude
                )
        except Exception as exc:  # the store away: the next round tries again
            self._log.warning("claim_failed", error=repr(exc))
            return
        for c in claimed:
            self._start(tg, c)
        try:
            # All there was, or what is left (for /healthz and the metrics only): counted at
            # most once a QUEUE_COUNT_S, as the count of a long queue costs as much as a claim.
            if len(claimed) < free:
                self._queued_seen = 0
            elif loop.time() >= self._counted_at + QUEUE_COUNT_S:
                async with asyncio.timeout(CLAIM_TIMEOUT_S):
                    self._queued_seen = await self._store.count_queued()
                self._counted_at = loop.time()
            else:
                self._queued_seen = max(0, self._queued_seen - len(claimed))
        except Exception as exc:
            self._log.warning("queue_count_failed", error=repr(exc))
        if len(claimed) == free:
            self._claim_due = 0.0  # there may be more: look again next turn

    def _start(self, tg: asyncio.TaskGroup, claim: Claimed) -> None:
        loop = asyncio.get_running_loop()
        row = claim.record
        spec = SessionSpec(
            id=row.id,
            template_name=row.template_name,
            template_version=row.template_version,
            config_path=claim.config_path,
            request=SessionRequest.from_json(row.request),
            attempt=row.attempt,
        )
        # Rows an earlier run here had refused are that run's, not this one's.
        self._writer.take_failure(spec.id)
        actor = SessionActor(
            spec,
            settings=self._settings.session,
            store=self._store,
            writer=self._writer,
            broker=self._broker,
            workdir=self._settings.temp_root / spec.id,
        )
        wall = spec.request.max_wall_s or self._settings.max_wall_s_default
        task = tg.create_task(self._session_main(actor), name=f"session-{spec.id}")
        self._running[spec.id] = _Running(
            actor, task, loop.time() + wall if wall is not None else None
        )
        self._leases[spec.id] = claim.lease.epoch
        self._log.info(
            "session_admitted",
            session_id=spec.id,
            attempt=spec.attempt,
            epoch=claim.lease.epoch,
            running=len(self._running),
        )
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
        self._refuse_if_ending(session_id)
        run = self._running.get(session_id)
        if run is None:
            status = await self._store.get_status(session_id)
            if status == Status.QUEUED:
                # Any node may stop a queued session: the write loses to a claim, if one is
                # made at the same moment (then the claiming node is asked to stop it).
                try:
                    await transition(
                        self._store, session_id, Status.STOPPED, "stopped while queued",
                        ended_at=NOW,
                    )  # fmt: skip
                except IllegalTransition:
                    status = await self._store.get_status(session_id)
                else:
                    self._log.info("session_ended", session_id=session_id, status="stopped")
                    return "queued"
            if status is None:
                raise SessionNotFound(f"no session {session_id!r}")
            if status in ACTIVE:
                raise OwnedElsewhere(f"session {session_id} runs on another node")
            raise SessionConflict(
                f"session {session_id} has already ended ({status})", status=status.value
            )
        self._request_stop(run, StopSession(Status.STOPPED, "stop requested"))
        return "running"

    def _refuse_if_ending(self, session_id: str) -> None:
        if session_id in self._finishing:
            raise SessionConflict(f"session {session_id} is ending: its end is being written")

    async def _forward(self, session_id: str, control: Control) -> None:
        self._refuse_if_ending(session_id)
        run = self._running.get(session_id)
        if run is None:
            status = await self._store.get_status(session_id)
            if status is None:
                raise SessionNotFound(f"no session {session_id!r}")
            if status == Status.QUEUED:
                raise SessionConflict(f"session {session_id} is queued, not running yet")
            if status in ACTIVE:
                raise OwnedElsewhere(f"session {session_id} runs on another node")
            raise SessionConflict(
                f"session {session_id} is not running ({status})", status=status.value
            )
        run.actor.send(control)

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
        # The queue is every node's: what waits in it stays there, for another node or this
        # one's next start.
        self._log.info("supervisor_shutting_down", reason=reason, running=len(self._running))
        for run in self._running.values():
            self._request_stop(run, StopSession(Status.STOPPED, f"daemon shutting down ({reason})"))

    async def _begin_drain(self, timeout_s: float) -> None:
        if self.draining or not self._accepting:
            return
        self._drain_deadline = asyncio.get_running_loop().time() + timeout_s
        self._log.info("node_draining", running=len(self._running), timeout_s=timeout_s)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._store.set_draining(self.node_id), CLAIM_TIMEOUT_S)

    def _check_drained(self, now: float) -> None:
        if self._drain_deadline is None or not self._accepting:
            return
        if not self._running and not self._finishing:
            self._log.info("node_drained")
            self._accepting = False  # the loop ends; the daemon's shutdown finds it done
            self._shutdown_reason = "drained"
            self._on_drained()
            return
        if now >= self._drain_deadline:
            for session_id, run in self._running.items():
                if run.stop_sent_at is None:
                    self._log.info("session_handed_back", session_id=session_id)
                    self._request_stop(
                        run,
                        StopSession(Status.STOPPED, "node drained", interrupt=Cause.NODE_DRAINED),
                    )

    # ---- timeouts and escalation ---------------------------------------------------------------

    def _next_deadline(self, now: float) -> float:
        grace = self._settings.session.stop_grace_s
        times: list[float] = []
        for run in self._running.values():
            if run.stop_sent_at is None:
                if (wall := run.wall_deadline_at(now)) is not None:
                    times.append(wall)
            elif not run.killed:
                times.append(run.stop_sent_at + grace)
            elif not run.cancelled:
                times.append(run.stop_sent_at + 3 * grace)
        return max(0.0, min(times) - now) if times else float("inf")

    def _enforce_deadlines(self, now: float) -> None:
        grace = self._settings.session.stop_grace_s
        for session_id, run in self._running.items():
            if run.stop_sent_at is None:
                wall = run.wall_deadline_at(now)
                if wall is not None and now >= wall:
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
        if run.actor.finished.is_set():
            self._release(session_id)
        else:
            # Cancelled while it writes its end: its lease stays held (and renewed), and the
            # session is not claimed again here, until that write is done.
            self._finishing[session_id] = run.actor

    def _release(self, session_id: str) -> None:
        self._leases.pop(session_id, None)
        self._store.release(session_id)

    def _reap_finishing(self) -> None:
        for session_id, actor in list(self._finishing.items()):
            if actor.finished.is_set():
                del self._finishing[session_id]
                self._release(session_id)


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
