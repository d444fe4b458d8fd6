"""The actors' store in memory: dicts with PostgreSQL's semantics where the actors can tell
(the conditional status write, events, duplicate samples skipped, ingest marks, partitions,
column types and NOT NULL, refused rows), for tests that run the actors without a database.

Every call is atomic: it checks all it takes before it changes anything, and yields to the event
loop once first, as a round trip would. Besides the Store operations it has what a test needs to
set up and look (`add_template`, `session`, `events`, `rows`, ...), and `refuse`, a hook that
refuses chosen rows the way a CHECK constraint would.
"""

from __future__ import annotations

import asyncio
import copy
import csv
import io
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

from actors.lifecycle import ACTIVE, INITIAL, NOW, UPDATABLE, Status
from actors.scenario import TemplateFile
from actors.store import (
    RECORD_TABLES,
    SAMPLE_COLUMNS,
    Claimed,
    Lapsed,
    Lease,
    LeaseLost,
    Mark,
    NewSession,
    NewSweep,
    Node,
    RecordedCommand,
    RetryHook,
    Row,
    RowsRefused,
    SessionGone,
    SessionRecord,
    Store,
    StoreError,
    partition_name,
)

# The bulk tables' columns as schema.sql has them: type, and whether NULL is refused.
_FLOAT, _INT, _TEXT = float, int, str
_TABLES: Final[dict[str, dict[str, tuple[type, bool]]]] = {
    "samples": {c: (_TEXT if c == "session_id" else _FLOAT, True) for c in SAMPLE_COLUMNS}
    | {c: (_INT, True) for c in ("vehicles", "departed", "arrived", "halting", "teleports")},
    "trajectories": {
        "session_id": (_TEXT, True),
        "time": (_FLOAT, True),
        "vehicle": (_TEXT, True),
        "x": (_FLOAT, False),
        "y": (_FLOAT, False),
        "angle": (_FLOAT, False),
        "speed": (_FLOAT, False),
        "lane": (_TEXT, False),
    },
    "trips": {
        "session_id": (_TEXT, True),
        "vehicle": (_TEXT, True),
        "vtype": (_TEXT, False),
        "depart": (_FLOAT, False),
        "arrival": (_FLOAT, False),
        "duration": (_FLOAT, False),
        "route_length": (_FLOAT, False),
        "waiting_time": (_FLOAT, False),
        "waiting_count": (_INT, False),
        "time_loss": (_FLOAT, False),
        "depart_delay": (_FLOAT, False),
        "reroutes": (_INT, False),
    },
    "edge_data": {
        "session_id": (_TEXT, True),
        "interval_begin": (_FLOAT, True),
        "interval_end": (_FLOAT, True),
        "edge": (_TEXT, True),
        "entered": (_INT, False),
        "left_edge": (_INT, False),
        "mean_speed": (_FLOAT, False),
        "occupancy": (_FLOAT, False),
        "density": (_FLOAT, False),
        "sampled_seconds": (_FLOAT, False),
    },
}
# Columns a row may leave out, and what they then hold (schema.sql's DEFAULTs).
_DEFAULTS: Final = {"samples": {"teleports": 0}}

# Given a table and a row (column -> value), an error message to refuse it with, or None.
Refusal = Callable[[str, dict[str, Any]], str | None]


class _Refused(Exception):
    pass


@dataclass
class _Partition:
    table: str
    session_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


class MemStore:
    def __init__(self) -> None:
        self._templates: dict[tuple[str, int], tuple[str, list[TemplateFile]]] = {}
        self._sessions: dict[str, dict[str, Any]] = {}
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._sweeps: dict[str, dict[str, Any]] = {}
        self._samples: dict[str, dict[float, dict[str, Any]]] = {}
        self._partitions: dict[str, _Partition] = {}
        self._marks: dict[tuple[str, str], int] = {}
        self._statistics: dict[str, dict[str, Any]] = {}
        self._totals: dict[str, dict[str, Any]] = {}
        self._commands: dict[str, list[dict[str, Any]]] = {}
        self._nodes: dict[str, dict[str, Any]] = {}
        # This store's claims, as a PgStore keeps them: the memory is shared by the nodes of a
        # test only through `view`, which gives another node's store over the same rows.
        self._leases: dict[str, Lease] = {}
        self._released: dict[str, Lease] = {}
        self.refuse: Refusal | None = None

    def view(self) -> MemStore:
        """Another node's store over the same rows: its own leases, everything else shared."""
        other = copy.copy(self)
        other._leases = {}
        other._released = {}
        return other

    # ---- for tests: set up and look ------------------------------------------------------------

    def add_template(self, name: str, config_path: str, files: Sequence[TemplateFile]) -> int:
        """A new version of template `name`; its number."""
        version = 1 + max((v for n, v in self._templates if n == name), default=0)
        self._templates[(name, version)] = (config_path, list(files))
        return version

    def session(self, session_id: str) -> dict[str, Any] | None:
        """The session's row as db.get_session reads it (sim_time falls back to its samples')."""
        row = self._sessions.get(session_id)
        if row is None:
            return None
        out = copy.deepcopy(row)
        out["node"] = out["owner_node"]
        if out["sim_time"] is None and self._samples.get(session_id):
            out["sim_time"] = max(self._samples[session_id])
        return out

    def events(self, session_id: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self._events.get(session_id, []))

    def samples(self, session_id: str) -> list[dict[str, Any]]:
        """The session's samples in sim-time order."""
        by_time = self._samples.get(session_id, {})
        return [copy.deepcopy(by_time[t]) for t in sorted(by_time)]

    def rows(self, partition: str) -> list[dict[str, Any]] | None:
        """A partition's rows in the order they came; None if it does not exist."""
        part = self._partitions.get(partition)
        return None if part is None else copy.deepcopy(part.rows)

    def statistics(self, session_id: str) -> dict[str, Any] | None:
        return copy.deepcopy(self._statistics.get(session_id))

    def ingest_mark(self, session_id: str, target: str) -> int:
        return self._marks.get((session_id, target), -1)

    def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return copy.deepcopy(self._sweeps.get(sweep_id))

    # ---- templates -----------------------------------------------------------------------------

    async def fetch_template_files(self, name: str, version: int) -> list[TemplateFile]:
        await asyncio.sleep(0)
        found = self._templates.get((name, version))
        return [] if found is None else list(found[1])

    # ---- sessions and their status -------------------------------------------------------------

    async def insert_sessions(
        self, sessions: Sequence[NewSession], sweep: NewSweep | None = None
    ) -> None:
        await asyncio.sleep(0)
        ids = [s.id for s in sessions]
        if len(set(ids)) < len(ids) or any(i in self._sessions for i in ids):
            raise StoreError("a session with this id exists already")
        if sweep is not None and sweep.id in self._sweeps:
            raise StoreError(f"sweep {sweep.id} exists already")
        for s in sessions:
            if (s.template_name, s.template_version) not in self._templates:
                raise StoreError(f"no template {s.template_name} version {s.template_version}")
            if s.sweep_id is not None and s.sweep_id not in self._sweeps:
                if sweep is None or s.sweep_id != sweep.id:
                    raise StoreError(f"no sweep {s.sweep_id}")
        now = _now()
        if sweep is not None:
            self._sweeps[sweep.id] = {
                "id": sweep.id,
                "request": copy.deepcopy(sweep.request),
                "created_at": now,
            }
        for s in sessions:
            self._sessions[s.id] = {
                "id": s.id,
                "template_name": s.template_name,
                "template_version": s.template_version,
                "status": INITIAL.value,
                "request": copy.deepcopy(s.request),
                "label": s.label,
                "created_at": now,
                "started_at": None,
                "ended_at": None,
                "end_time": s.end_time,
                "sim_time": None,
                "port": None,
                "pid": None,
                "pid_started_at": None,
                "exit_code": None,
                "cause": None,
                "error": None,
                "attempt": 1,
                "sweep_id": s.sweep_id,
                "owner_node": None,
                "lease_epoch": 0,
                "lease_expires_at": None,
            }
            self._events[s.id] = [{"at": now, "status": INITIAL.value, "reason": "submitted"}]

    async def get_status(self, session_id: str) -> Status | None:
        await asyncio.sleep(0)
        row = self._sessions.get(session_id)
        return None if row is None else Status(row["status"])

    async def count_queued(self) -> int:
        await asyncio.sleep(0)
        return sum(r["status"] == Status.QUEUED for r in self._sessions.values())

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
        await asyncio.sleep(0)
        if unknown := set(fields) - UPDATABLE:
            raise ValueError(f"not updatable: {sorted(unknown)}")
        row = self._sessions.get(session_id)
        if row is None or row["status"] not in only_from:
            return False
        own = fence is None
        lease = self._leases.get(session_id) if own else fence
        if lease is not None and not _holds(row, lease):
            raise LeaseLost(f"session {session_id}: lease {lease.epoch} is lost")
        now = _now()
        row["status"] = to.value
        if to not in ACTIVE:
            row.update(owner_node=None, lease_expires_at=None)
            if own and session_id in self._leases:
                self.release(session_id)
        for key, value in fields.items():
            # Stored as the database stores it: an enum (a Cause) as its plain string.
            row[key] = now if value is NOW else copy.deepcopy(_plain(value))
        self._events[session_id].append({"at": now, "status": to.value, "reason": reason})
        return True

    async def set_process(
        self, session_id: str, port: int, pid: int | None, pid_started_at: float | None
    ) -> None:
        await asyncio.sleep(0)
        self._fence(session_id)
        if (row := self._sessions.get(session_id)) is not None:
            row.update(port=port, pid=pid, pid_started_at=pid_started_at)

    # ---- a session's rows ----------------------------------------------------------------------

    async def clear_session_rows(self, session_id: str) -> None:
        await asyncio.sleep(0)
        self._fence(session_id)
        self._samples.pop(session_id, None)
        self._statistics.pop(session_id, None)
        self._totals.pop(session_id, None)
        for key in [k for k in self._marks if k[0] == session_id]:
            del self._marks[key]
        for table in RECORD_TABLES.values():
            self._partitions.pop(partition_name(table, session_id), None)

    async def create_record_partitions(self, session_id: str, tables: Iterable[str]) -> None:
        await asyncio.sleep(0)
        self._fence(session_id)
        names = {partition_name(table, session_id): table for table in tables}
        for name, table in names.items():
            self._partitions.setdefault(name, _Partition(table, session_id))

    async def store_statistics(self, session_id: str, statistics: dict[str, Any]) -> None:
        await asyncio.sleep(0)
        self._require_session(session_id)
        self._fence(session_id)
        self._statistics[session_id] = copy.deepcopy(statistics)

    async def keep_totals(self, session_id: str) -> None:
        await asyncio.sleep(0)
        self._require_session(session_id)
        self._fence(session_id)
        rows = self.samples(session_id)
        self._totals[session_id] = {
            "inserted": sum(r["departed"] for r in rows),
            "arrived": sum(r["arrived"] for r in rows),
            "teleports": sum(r["teleports"] for r in rows),
            "running": rows[-1]["vehicles"] if rows else 0,
            "last_time": rows[-1]["sim_time"] if rows else None,
        }

    def totals(self, session_id: str) -> dict[str, Any] | None:
        """What keep_totals kept, as the session_totals row reads."""
        return dict(self._totals[session_id]) if session_id in self._totals else None

    async def add_commands(
        self, session_id: str, sim_time: float, commands: Sequence[dict[str, Any]]
    ) -> None:
        await asyncio.sleep(0)
        self._require_session(session_id)
        self._fence(session_id)
        stored = self._commands.setdefault(session_id, [])
        first = 1 + max((c["seq"] for c in stored), default=0)
        stored.extend(
            {"seq": first + i, "sim_time": sim_time, "command": copy.deepcopy(c)}
            for i, c in enumerate(commands)
        )

    async def session_commands(self, session_id: str) -> list[RecordedCommand]:
        await asyncio.sleep(0)
        return [
            RecordedCommand(c["seq"], c["sim_time"], copy.deepcopy(c["command"]))
            for c in sorted(self._commands.get(session_id, []), key=lambda c: c["seq"])
        ]

    def _fence(self, session_id: str) -> None:
        if session_id not in self._leases and session_id in self._released:
            raise LeaseLost(f"session {session_id}: its run here has ended")
        lease = self._leases.get(session_id)
        row = self._sessions.get(session_id)
        if lease is not None and row is not None and not _holds(row, lease):
            raise LeaseLost(f"session {session_id}: lease {lease.epoch} is no longer held")

    # ---- nodes, claims and leases --------------------------------------------------------------

    def node(self, node_id: str) -> dict[str, Any] | None:
        return copy.deepcopy(self._nodes.get(node_id))

    def lapse(self, session_id: str) -> None:
        """For tests: the session's lease runs out now, as if its owner had stopped renewing."""
        self._sessions[session_id]["lease_expires_at"] = time.monotonic() - 1

    async def register_node(self, node: Node) -> None:
        await asyncio.sleep(0)
        self._nodes[node.id] = {
            "id": node.id,
            "name": node.name,
            "api_url": node.api_url,
            "capacity": node.capacity,
            "boot_id": node.boot_id,
            "pid": node.pid,
            "heartbeat_at": time.monotonic(),
            "draining": False,
            "stopped_at": None,
        }

    async def node_stopped(self, node_id: str) -> None:
        await asyncio.sleep(0)
        if (node := self._nodes.get(node_id)) is not None:
            node.update(stopped_at=_now(), draining=False)

    async def set_draining(self, node_id: str) -> None:
        await asyncio.sleep(0)
        if (node := self._nodes.get(node_id)) is not None:
            node["draining"] = True

    async def dead_nodes(self, boot_id: str, alive: Callable[[int], bool]) -> list[str]:
        mine = [n for n in self._nodes.values() if n["boot_id"] == boot_id and not n["stopped_at"]]
        dead = await asyncio.to_thread(lambda: [n["id"] for n in mine if not alive(n["pid"])])
        for node_id in dead:
            self._nodes[node_id]["stopped_at"] = _now()
        for row in self._sessions.values():
            if row["owner_node"] in dead and row["status"] in ACTIVE:
                row["lease_expires_at"] = time.monotonic() - 1
        return dead

    async def claim(
        self, node_id: str, limit: int, ttl_s: float, exclude: Collection[str] = ()
    ) -> list[Claimed]:
        await asyncio.sleep(0)
        picked = [
            r
            for _id, r in sorted(self._sessions.items())
            if r["status"] == Status.QUEUED and r["id"] not in exclude
        ][: max(0, limit)]
        out = []
        now = _now()
        for row in picked:
            row.update(
                status=Status.STARTING.value,
                owner_node=node_id,
                lease_epoch=row["lease_epoch"] + 1,
                lease_expires_at=time.monotonic() + ttl_s,
                started_at=now,
            )
            self._events[row["id"]].append(
                {
                    "at": now,
                    "status": Status.STARTING.value,
                    "reason": f"claimed by node {node_id} (attempt {row['attempt']})",
                }
            )
            lease = Lease(node_id, row["lease_epoch"])
            self._released.pop(row["id"], None)
            self._leases[row["id"]] = lease
            config_path = self._templates[(row["template_name"], row["template_version"])][0]
            out.append(Claimed(SessionRecord.of(copy.deepcopy(row)), config_path, lease))
        return out

    async def renew(self, node_id: str, ttl_s: float, held: Mapping[str, int]) -> set[str]:
        await asyncio.sleep(0)
        now = time.monotonic()
        if (node := self._nodes.get(node_id)) is not None:
            node["heartbeat_at"] = now
        renewed = set()
        for session_id, epoch in held.items():
            row = self._sessions.get(session_id)
            if row is not None and row["status"] in ACTIVE and _holds(row, Lease(node_id, epoch)):
                row["lease_expires_at"] = now + ttl_s
                renewed.add(session_id)
        return renewed

    async def lapsed(self, limit: int) -> list[Lapsed]:
        await asyncio.sleep(0)
        now = time.monotonic()
        out = []
        for _id, row in sorted(self._sessions.items()):
            expires = row["lease_expires_at"]
            if row["status"] in ACTIVE and (expires is None or expires < now):
                node = self._nodes.get(row["owner_node"] or "")
                out.append(
                    Lapsed(
                        SessionRecord.of(copy.deepcopy(row)),
                        Lease(row["owner_node"], row["lease_epoch"]),
                        None if node is None else node["name"],
                        None if node is None else node["boot_id"],
                    )
                )
        return out[:limit]

    def release(self, session_id: str) -> None:
        lease = self._leases.pop(session_id, None)
        if lease is not None:
            self._released[session_id] = lease

    def released(self) -> Collection[str]:
        return self._released.keys()

    def _require_session(self, session_id: str) -> None:
        if session_id not in self._sessions:
            raise StoreError(f"no session {session_id}")

    # ---- bulk writes ---------------------------------------------------------------------------

    async def copy_rows(
        self,
        target: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        mark: Mark | None = None,
        *,
        on_retry: RetryHook | None = None,
    ) -> None:
        await asyncio.sleep(0)
        table = self._table_of(target)
        if self._applied(mark, target):
            return
        if target == "samples":
            # Rows of many sessions: those of a session this node lost are left out.
            lost = {
                str(r[0])
                for r in rows
                if (str(r[0]) not in self._leases and str(r[0]) in self._released)
                or (
                    str(r[0]) in self._leases
                    and str(r[0]) in self._sessions
                    and not _holds(self._sessions[str(r[0])], self._leases[str(r[0])])
                )
            }
            rows = [r for r in rows if str(r[0]) not in lost]
        try:
            converted = [
                self._convert(table, target, dict(zip(columns, row, strict=True)), parse=False)
                for row in rows
            ]
        except (_Refused, ValueError) as exc:  # zip's own: a row of the wrong length
            raise RowsRefused(str(exc)) from None
        self._insert(target, converted, mark)

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
        await asyncio.sleep(0)
        table = self._table_of(target)
        if self._applied(mark, target):
            return
        converted = []
        try:
            for fields in csv.reader(io.StringIO(data.decode()), delimiter=";"):
                if len(fields) != len(columns):
                    raise _Refused(f"{len(fields)} fields in a line, not {len(columns)}")
                raw = {c: (v if v != "" else None) for c, v in zip(columns, fields, strict=True)}
                row = self._convert(table, target, raw, parse=True, check=False)
                if required is None or row.get(required) is not None:
                    converted.append(self._check(table, row))
        except (_Refused, UnicodeDecodeError) as exc:
            raise RowsRefused(str(exc)) from None
        self._insert(target, converted, mark)

    def _table_of(self, target: str) -> str:
        if target == "samples":
            return target
        part = self._partitions.get(target)
        if part is None:
            # PostgreSQL's UndefinedTable: the session's partitions were dropped with it.
            raise SessionGone(f"no partition {target}")
        return part.table

    def _applied(self, mark: Mark | None, target: str) -> bool:
        """True when `mark`'s chunk was committed before (nothing to do)."""
        if mark is None:
            return False
        if mark.session_id not in self._sessions:
            raise SessionGone(f"no session {mark.session_id}")
        self._fence(mark.session_id)
        return self._marks.get((mark.session_id, target), -1) >= mark.seq

    def _convert(
        self, table: str, target: str, raw: dict[str, Any], *, parse: bool, check: bool = True
    ) -> dict[str, Any]:
        spec = _TABLES[table]
        if unknown := set(raw) - set(spec):
            raise _Refused(f"no column {sorted(unknown)} in {table}")
        row: dict[str, Any] = {c: None for c in spec} | _DEFAULTS.get(table, {})
        if table != "samples":
            row["session_id"] = self._partitions[target].session_id
        for column, value in raw.items():
            kind = spec[column][0]
            row[column] = None if value is None else _typed(kind, value, parse, column)
        return self._check(table, row) if check else row

    def _check(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        for column, (_kind, not_null) in _TABLES[table].items():
            if not_null and row[column] is None:
                raise _Refused(f'null value in column "{column}" of relation "{table}"')
        if self.refuse is not None and (error := self.refuse(table, row)) is not None:
            raise _Refused(error)
        return row

    def _insert(self, target: str, rows: list[dict[str, Any]], mark: Mark | None) -> None:
        if target == "samples":
            if missing := {r["session_id"] for r in rows} - set(self._sessions):
                raise SessionGone(f"no session {sorted(missing)}")
            for row in rows:
                # A rerun wrote this sample before: keep the first (ON CONFLICT DO NOTHING).
                self._samples.setdefault(row["session_id"], {}).setdefault(row["sim_time"], row)
        else:
            self._partitions[target].rows.extend(rows)
        if mark is not None:
            self._marks[(mark.session_id, target)] = mark.seq


def _holds(row: dict[str, Any], lease: Lease) -> bool:
    return (row["owner_node"], row["lease_epoch"]) == (lease.node_id, lease.epoch)


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, StrEnum) else value


def _typed(kind: type, value: Any, parse: bool, column: str) -> Any:
    """`value` as a column of `kind` takes it: parsed from CSV text, or checked as asyncpg's
    COPY checks a Python value (an int is a float; nothing else is converted)."""
    try:
        if parse:
            return kind(value) if kind is not int else int(value)
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is str and isinstance(value, str):
            return value
    except ValueError:
        raise _Refused(f"invalid input for column {column}: {value!r}") from None
    raise _Refused(f"invalid input for column {column}: {value!r} is not {kind.__name__}")


if TYPE_CHECKING:
    # mypy holds the class to the protocol here, where no caller would.
    _conforms: Store = MemStore()
