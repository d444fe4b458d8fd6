"""The store the actors keep their state in: a Protocol with exactly the operations they need,
and the row types those operations take and give.

Two implementations: supervisor/pgstore.py (PostgreSQL; the daemon's) and actors/memstore.py
(dicts; for tests that need neither PostgreSQL nor a daemon). tests/test_store_contract.py holds
both to the same behaviour. The actors never see which one they talk to, nor any database error
but the typed ones below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
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
_SAFE_ID = re.compile(r"^[0-9a-z][0-9a-z_-]{0,80}$")


def partition_name(table: str, session_id: str) -> str:
    """The partition of `table` that holds one session's rows; ids are checked, never quoted in."""
    if table not in RECORD_TABLES.values() or not _SAFE_ID.match(session_id):
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


class StoreError(Exception):
    """Base of what a store raises that the actors act on."""


class RowsRefused(StoreError):
    """The store refused rows for good (a constraint, a value it cannot take): writing them
    again would fail again. `str()` names the error as the store gave it."""


class SessionGone(StoreError):
    """The rows' session (or its partition) no longer exists: it was deleted meanwhile."""


# Called before each retry of a write the store could not make yet: the error, the wait.
RetryHook = Callable[[BaseException, float], None]


class Store(Protocol):
    """Every read and write the actors make. Writes are atomic: all of one call, or none."""

    # ---- templates -----------------------------------------------------------------------------

    async def template_config_path(self, name: str, version: int) -> str | None:
        """The config path of a stored template version; None if there is no such version."""
        ...

    async def fetch_template_files(self, name: str, version: int) -> list[TemplateFile]: ...

    # ---- sessions and their status -------------------------------------------------------------

    async def insert_sessions(
        self, sessions: Sequence[NewSession], sweep: NewSweep | None = None
    ) -> None:
        """Sessions in lifecycle.INITIAL status, each with its first event, and the sweep they
        make up: all of them, or none."""
        ...

    async def get_status(self, session_id: str) -> Status | None: ...

    async def sessions_in_status(self, statuses: Iterable[Status]) -> list[SessionRecord]:
        """Sessions in any of `statuses`, oldest first (ids sort by creation)."""
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
    ) -> bool:
        """If the session is in one of `only_from`: set its status and `fields` (lifecycle.NOW
        for the store's clock) and record the change with `reason` as an event, atomically;
        True. Otherwise write nothing; False. Only lifecycle.transition calls this."""
        ...

    async def set_process(
        self, session_id: str, port: int, pid: int | None, pid_started_at: float | None
    ) -> None:
        """The TraCI port and SUMO process of the session's current run."""
        ...

    # ---- a session's rows ----------------------------------------------------------------------

    async def clear_session_rows(self, session_id: str) -> None:
        """Forget an earlier attempt's samples, recorded rows (partitions too), ingest marks and
        statistics, at once: readers see the old rows or none, never a mix of attempts."""
        ...

    async def create_record_partitions(self, session_id: str, tables: Iterable[str]) -> None:
        """The session's partitions of `tables` (values of RECORD_TABLES); idempotent."""
        ...

    async def store_statistics(self, session_id: str, statistics: dict[str, Any]) -> None:
        """SUMO's statistics of the session's run, replacing any stored before."""
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
