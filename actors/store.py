"""The store the actors keep their state in: a Protocol with exactly the operations they need,
and the row types those operations take and give.

Two implementations: supervisor/pgstore.py (PostgreSQL; the daemon's) and actors/memstore.py
(dicts; for tests that need neither PostgreSQL nor a daemon). tests/test_store_contract.py holds
both to the same behaviour. The actors never see which one they talk to, nor any database error
but the typed ones below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from actors.lifecycle import Status
from actors.scenario import TemplateFile

Row = tuple[Any, ...]

# A sample row: its session first (so one batch can hold many sessions' rows), then the
# figures the API shows.
SAMPLE_COLUMNS: Final = (
    "session_id",
    "sim_time",
    "vehicles",
    "departed",
    "arrived",
    "mean_speed",
    "halting",
    "waiting_time",
    "teleports",
)

# Tables with one partition per recording session, and what `record` names them.
RECORD_TABLES: Final = {"trajectories": "trajectories", "trips": "trips", "edges": "edge_data"}
# What a session id may be (new_session_id makes them so): safe in a partition's name and as
# a list's cursor.
SESSION_ID_PATTERN: Final = r"^[0-9a-z][0-9a-z_-]{0,80}$"
_SAFE_ID = re.compile(SESSION_ID_PATTERN)


def is_session_id(text: str) -> bool:
    return _SAFE_ID.match(text) is not None


def partition_name(table: str, session_id: str) -> str:
    """The partition of `table` that holds one session's rows; ids are checked, never quoted in."""
    if table not in RECORD_TABLES.values() or not is_session_id(session_id):
        raise ValueError(f"bad partition {table}/{session_id}")
    return f"{table}__{session_id.replace('-', '_')}"


@dataclass(frozen=True)
class NewSession:
    """A session as it is first stored (queued)."""

    id: str
    template_name: str
    template_version: int
    request: dict[str, Any]
    label: str | None
    end_time: float | None
    sweep_id: str | None = None


@dataclass(frozen=True)
class NewSweep:
    id: str
    request: dict[str, Any]


@dataclass(frozen=True)
class SessionRecord:
    """What a restarted daemon needs to know of a session to recover it."""

    id: str
    status: Status
    template_name: str
    template_version: int
    request: dict[str, Any]
    attempt: int
    # The SUMO process its last run started, with its start time (so a later process with the
    # same pid is never taken for it).
    pid: int | None
    pid_started_at: float | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> SessionRecord:
        """From a sessions row (a database record, or the memory store's dict)."""
        return cls(
            id=row["id"],
            status=Status(row["status"]),
            template_name=row["template_name"],
            template_version=row["template_version"],
            request=row["request"],
            attempt=row["attempt"],
            pid=row["pid"],
            pid_started_at=row["pid_started_at"],
        )


@dataclass(frozen=True)
class RecordedCommand:
    """A command that changed a session's simulation, at the sim time it was applied at."""

    seq: int
    sim_time: float
    command: dict[str, Any]


@dataclass(frozen=True)
class Mark:
    """A recorded chunk's place in its output: `seq` grows by one per chunk of a session."""

    session_id: str
    seq: int


@dataclass(frozen=True)
class Node:
    """One daemon process on the shared database. `id` is new at every start; `name` is for
    people. `boot_id` and `pid` let a node of the same machine tell that this one is dead."""

    id: str
    name: str
    api_url: str | None
    capacity: int
    boot_id: str
    pid: int


@dataclass(frozen=True)
class Lease:
    """A node's hold on a session: the owner and the epoch the claim gave it. A later claim
    gives a higher epoch, so a write conditioned on a lease that was taken over changes
    nothing."""

    node_id: str | None
    epoch: int


@dataclass(frozen=True)
class Claimed:
    """A queued session this node now runs (its status moved to `starting` with the claim)."""

    record: SessionRecord
    config_path: str
    lease: Lease


@dataclass(frozen=True)
class Lapsed:
    """An active session whose owner stopped renewing its lease (or that has no owner)."""

    record: SessionRecord
    lease: Lease
    owner_name: str | None
    owner_boot_id: str | None


class StoreError(Exception):
    """Base of what a store raises that the actors act on."""


class RowsRefused(StoreError):
    """The store refused rows for good (a constraint, a value it cannot take): writing them
    again would fail again. `str()` names the error as the store gave it."""


class SessionGone(StoreError):
    """The rows' session (or its partition) no longer exists: it was deleted meanwhile."""


class LeaseLost(StoreError):
    """This node no longer holds the session: its lease lapsed and another node took the
    session over. Nothing was written."""


# Called before each retry of a write the store could not make yet: the error, the wait.
RetryHook = Callable[[BaseException, float], None]


class Store(Protocol):
    """Every read and write the actors make. Writes are atomic: all of one call, or none."""

    # ---- templates -----------------------------------------------------------------------------

    async def fetch_template_files(self, name: str, version: int) -> list[TemplateFile]: ...

    # ---- sessions and their status -------------------------------------------------------------

    async def insert_sessions(
        self, sessions: Sequence[NewSession], sweep: NewSweep | None = None
    ) -> None:
        """Sessions in lifecycle.INITIAL status, each with its first event, and the sweep they
        make up: all of them, or none."""
        ...

    async def get_status(self, session_id: str) -> Status | None: ...

    async def count_queued(self) -> int:
        """How many sessions wait in the queue, every node's."""
        ...

    async def set_status(
        self,
        session_id: str,
        to: Status,
        reason: str,
        *,
        only_from: frozenset[Status],
        fields: Mapping[str, Any],
        retry_s: float | None = None,
        fence: Lease | None = None,
    ) -> bool:
        """If the session is in one of `only_from`: set its status and `fields` (lifecycle.NOW
        for the store's clock) and record the change with `reason` as an event, atomically;
        True. Otherwise write nothing; False. Only lifecycle.transition calls this.

        Fenced: by `fence` if given (a rescuer names the lease it takes over), else by the
        lease this store claimed the session under, if any; LeaseLost when the session is held
        under another. A status out of ACTIVE ends the lease (no owner)."""
        ...

    async def set_process(
        self, session_id: str, port: int, pid: int | None, pid_started_at: float | None
    ) -> None:
        """The TraCI port and SUMO process of the session's current run."""
        ...

    # ---- nodes, claims and leases --------------------------------------------------------------
    # Every write this store makes for a session it claimed (status, process, rows, commands,
    # statistics, partitions) is conditioned on that lease, until `release`.

    async def register_node(self, node: Node) -> None: ...

    async def node_stopped(self, node_id: str) -> None:
        """The node has left (its leases are all ended or handed back)."""
        ...

    async def set_draining(self, node_id: str) -> None: ...

    async def dead_nodes(self, boot_id: str, alive: Callable[[int], bool]) -> list[str]:
        """Nodes of this machine (`boot_id`) not marked stopped whose pid `alive` says is gone;
        they are marked stopped and their leases made to lapse now."""
        ...

    async def claim(
        self, node_id: str, limit: int, ttl_s: float, exclude: Collection[str] = ()
    ) -> list[Claimed]:
        """Up to `limit` of the oldest queued sessions no other node is claiming at the same
        moment (not `exclude`): each moves to `starting`, owned by `node_id` under a new lease
        that lapses `ttl_s` from now on the store's clock."""
        ...

    async def renew(self, node_id: str, ttl_s: float, held: Mapping[str, int]) -> set[str]:
        """One round trip: the node's heartbeat, and every lease in `held` (session -> epoch)
        extended to `ttl_s` from now. The sessions whose lease it still held."""
        ...

    async def lapsed(self, limit: int) -> list[Lapsed]:
        """Active sessions whose lease has lapsed (or that have no owner), oldest first."""
        ...

    def release(self, session_id: str) -> None:
        """The session's run here has ended: its lease is no longer held, and a write for it
        that still comes (a batch the writer retried) is refused, until this store claims it
        again."""
        ...

    def released(self) -> Collection[str]:
        """Sessions released here and not claimed again since (the most recent ones)."""
        ...

    # ---- a session's rows ----------------------------------------------------------------------

    async def clear_session_rows(self, session_id: str) -> None:
        """Forget an earlier attempt's samples, recorded rows (partitions too), ingest marks,
        statistics and totals, at once: readers see the old rows or none, never a mix of
        attempts."""
        ...

    async def create_record_partitions(self, session_id: str, tables: Iterable[str]) -> None:
        """The session's partitions of `tables` (values of RECORD_TABLES); idempotent."""
        ...

    async def store_statistics(self, session_id: str, statistics: dict[str, Any]) -> None:
        """SUMO's statistics of the session's run, replacing any stored before."""
        ...

    async def keep_totals(self, session_id: str) -> None:
        """Sum the session's samples once, at its end (inserted, arrived and teleports added up;
        running and last_time of its last sample), replacing any kept before."""
        ...

    async def add_commands(
        self, session_id: str, sim_time: float, commands: Sequence[dict[str, Any]]
    ) -> None:
        """Commands applied at `sim_time`, numbered on from the session's last one."""
        ...

    async def session_commands(self, session_id: str) -> list[RecordedCommand]:
        """The session's applied commands in the order they were applied."""
        ...

    # ---- bulk writes (the writer actor's) ------------------------------------------------------
    # Both retry while the store is away, until they succeed (calling `on_retry` before each
    # retry), and raise RowsRefused or SessionGone when it refuses the rows.

    async def copy_rows(
        self,
        target: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        mark: Mark | None = None,
        *,
        on_retry: RetryHook | None = None,
    ) -> None:
        """Rows into "samples" (any sessions', SAMPLE_COLUMNS; a row whose session and sim time
        are stored already is skipped: a rerun wrote it before) or into a session's partition
        (partition_name). With a `mark`, the rows are written at most once: not when
        `mark.seq` is at or below the target's ingest mark of that session, and the mark
        moves to `mark.seq` with them."""
        ...

    async def copy_csv(
        self,
        target: str,
        columns: Sequence[str],
        data: bytes,
        *,
        required: str | None = None,
        mark: Mark | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:
        """Whole lines of SUMO's ';'-separated CSV (no header; an empty field is NULL) into a
        session's partition, `columns` in the lines' order; lines whose `required` column is
        empty are left out. `mark` as for copy_rows."""
        ...
