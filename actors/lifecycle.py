"""A session's life: its statuses, the causes a failed or timed-out one gives, the transitions
allowed between statuses, and `transition`, the one way a status is written.

Owns the rules, not the rows: the rows live behind a store (actors/store.py). A session is
inserted `queued` (INITIAL) and every later change goes through `transition`, whose write is
conditional on the status the session has, so the table below holds even when two writers race
(a stop while the session ends by itself, a restarted daemon's recovery).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Final, Protocol


class Status(StrEnum):
    """As stored in sessions.status (schema.sql's CHECK lists the same values)."""

    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"
    TIMED_OUT = "timed_out"


class Cause(StrEnum):
    """Why a session ended failed or timed out, as stored in sessions.cause (README's list)."""

    CONFIG_INVALID = "config_invalid"  # SUMO refused the scenario
    SUMO_EXITED = "sumo_exited"  # SUMO died mid-run
    TRACI_CLOSED = "traci_closed"  # SUMO closed the TraCI connection mid-run
    PORT_IN_USE = "port_in_use"  # no TraCI port could be had, or SUMO could not bind one
    IO_ERROR = "io_error"  # the session dir could not be written
    TIMEOUT = "timeout"  # max_wall_s, or SUMO did not open its port in time
    PAUSE_TIMEOUT = "pause_timeout"  # paused longer than max_pause_s
    IDLE_TIMEOUT = "idle_timeout"  # a stepped session nobody stepped for idle_timeout_s
    DAEMON_RESTARTED = "daemon_restarted"  # the daemon died under it, no attempt left
    NODE_LOST = "node_lost"  # its node stopped renewing its lease, no attempt left
    NODE_DRAINED = "node_drained"  # its node drained before it ended, no attempt left
    RESOURCE_LIMIT = "resource_limit"  # SUMO went over one of its sandbox caps
    SANDBOX_FAILED = "sandbox_failed"  # SUMO's sandbox could not be set up
    ROW_QUOTA = "row_quota"  # over max_session_rows
    WRITE_FAILED = "write_failed"  # the database refused some of its rows
    INTERNAL = "internal"  # a bug: the session actor itself failed


INITIAL: Final = Status.QUEUED
FINAL: Final = frozenset({Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.TIMED_OUT})
# Statuses that own a run slot (and maybe a SUMO process): what a restarted daemon recovers.
ACTIVE: Final = frozenset({Status.STARTING, Status.RUNNING})

# Every status change the daemon makes, from -> to. Read from the code that makes them:
#   queued -> starting          a session actor is admitted (also a rerun's next attempt)
#   queued -> stopped           stopped while queued, or the daemon shut down before its turn
#   queued -> failed/timed_out  its actor ended before the `starting` write got through (a
#                               database away past the retry budget, or a cancelled start)
#   starting -> running         TraCI connected
#   starting -> failed          SUMO refused the scenario, no port, sandbox, internal error...
#   starting -> stopped/timed_out  a stop or max_wall_s while SUMO starts
#   running -> completed/failed/stopped/timed_out  how the run ended
#   starting/running -> queued  a restarted daemon, or a node rescuing a lapsed lease, reruns
#                               it (on_interrupt = rerun); a draining node hands it back
#   starting/running -> failed  the same, no attempt left (daemon_restarted, node_lost)
# queued -> starting is written by a node's claim (the store's `claim`, many at once), fenced
# like the rest by the lease it gives.
# `completed` needs `running`: only a connected session can reach its end. Final statuses are
# final: nothing leaves them.
TRANSITIONS: Final[Mapping[Status, frozenset[Status]]] = {
    Status.QUEUED: frozenset({Status.STARTING, Status.STOPPED, Status.FAILED, Status.TIMED_OUT}),
    Status.STARTING: frozenset(
        {Status.RUNNING, Status.FAILED, Status.STOPPED, Status.TIMED_OUT, Status.QUEUED}
    ),
    Status.RUNNING: frozenset(
        {Status.COMPLETED, Status.FAILED, Status.STOPPED, Status.TIMED_OUT, Status.QUEUED}
    ),
    Status.COMPLETED: frozenset(),
    Status.FAILED: frozenset(),
    Status.STOPPED: frozenset(),
    Status.TIMED_OUT: frozenset(),
}

# The same table read backwards: the statuses a session may be in to move to each one.
PREDECESSORS: Final[Mapping[Status, frozenset[Status]]] = {
    to: frozenset(src for src, tos in TRANSITIONS.items() if to in tos) for to in Status
}

# Columns a status change may set besides the status itself.
UPDATABLE: Final = frozenset(
    {
        "started_at",
        "ended_at",
        "end_time",
        "sim_time",
        "port",
        "pid",
        "pid_started_at",
        "exit_code",
        "cause",
        "error",
        "attempt",
    }
)


class _Now:
    """A timestamp field's value meaning "the store's clock, at the write"."""

    def __repr__(self) -> str:
        return "NOW"


NOW: Final = _Now()


class IllegalTransition(Exception):
    """The session was not in a status from which `to` may be reached (or does not exist:
    `current` None). Nothing was written."""

    def __init__(self, session_id: str, current: Status | None, to: Status) -> None:
        have = "no such session" if current is None else f"it is {current}"
        super().__init__(f"session {session_id}: cannot become {to} ({have})")
        self.session_id, self.current, self.to = session_id, current, to


class StatusStore(Protocol):
    """What `transition` needs of a store (actors/store.py's Store has it)."""

    async def set_status(
        self,
        session_id: str,
        to: Status,
        reason: str,
        *,
        only_from: frozenset[Status],
        fields: Mapping[str, Any],
        retry_s: float | None = None,
        fence: Any = None,
    ) -> bool: ...

    async def get_status(self, session_id: str) -> Status | None: ...


async def transition(
    store: StatusStore,
    session_id: str,
    to: Status,
    reason: str,
    *,
    retry_s: float | None = None,
    fence: Any = None,
    **fields: Any,
) -> None:
    """Move a session to `to`, set `fields` (UPDATABLE; NOW for the store's clock) and record
    the change with `reason` as an event, atomically. The only way a status is written.

    The write is conditional: it changes the row only while the session is in one of
    PREDECESSORS[to], and raises IllegalTransition when it was not (nothing written). It is
    fenced too: the owner node and its lease epoch join the status in the write's WHERE (the
    store's lease of the session, or `fence`, a store.Lease a rescuer takes over), so a node
    that lost a session cannot write its status (store.LeaseLost). Transient store errors are
    retried for `retry_s` (None: the store's own budget; math.inf: until the store answers).
    """
    unknown = set(fields) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    written = await store.set_status(
        session_id,
        to,
        reason,
        only_from=PREDECESSORS[to],
        fields=fields,
        retry_s=retry_s,
        fence=fence,
    )
    if not written:
        raise IllegalTransition(session_id, await store.get_status(session_id), to)


async def requeue(
    store: StatusStore, session_id: str, attempt: int, reason: str, *, fence: Any = None
) -> None:
    """An interrupted session goes back to the queue for another attempt, its last run's
    process, port and times forgotten."""
    await transition(
        store,
        session_id,
        Status.QUEUED,
        reason,
        fence=fence,
        attempt=attempt,
        port=None,
        pid=None,
        pid_started_at=None,
        started_at=None,
        sim_time=None,
    )


class Reruns(Protocol):
    """What a session asked for when interrupted (actors/request.py's SessionRequest)."""

    @property
    def on_interrupt(self) -> str: ...

    @property
    def max_attempts(self) -> int: ...


async def interrupted(
    store: StatusStore,
    session_id: str,
    request: Reruns,
    attempt: int,
    why: str,
    cause: Cause,
    *,
    fence: Any = None,
) -> Status:
    """A run cut off from outside (its daemon died, its node lost the lease, a drain handed it
    back): queued again for another attempt when it asked for reruns and has one left, else
    failed with `cause`. The status written."""
    rerun = request.on_interrupt == "rerun"
    max_attempts = request.max_attempts
    if rerun and attempt < max_attempts:
        # A fixed-seed SUMO run is deterministic: running it again gives the same data.
        await requeue(
            store,
            session_id,
            attempt + 1,
            f"{why}: rerun, attempt {attempt + 1} of {max_attempts}",
            fence=fence,
        )
        return Status.QUEUED
    await transition(
        store,
        session_id,
        Status.FAILED,
        why,
        fence=fence,
        ended_at=NOW,
        cause=cause,
        error=f"{why}: the session was interrupted" + (" (no attempts left)" if rerun else ""),
    )
    return Status.FAILED
