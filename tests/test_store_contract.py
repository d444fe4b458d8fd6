"""One suite, two stores: every Store operation's observable behaviour, on the in-memory store
and on PostgreSQL (a fresh database per test). Each store comes with a `Look`, the test's own
way to set up and read what the Store protocol does not (templates, rows, events)."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import pytest

from actors.lifecycle import (
    NOW,
    Cause,
    IllegalTransition,
    Status,
    interrupted,
    requeue,
    transition,
)
from actors.memstore import MemStore
from actors.request import SessionRequest
from actors.scenario import TemplateFile
from actors.store import (
    SAMPLE_COLUMNS,
    LeaseLost,
    Mark,
    NewSession,
    NewSweep,
    Node,
    RecordedCommand,
    RowsRefused,
    SessionGone,
    Store,
    partition_name,
)
from supervisor import db
from supervisor.pgstore import PgStore

CONFIG = "cfg/a.sumocfg"
FILES = [
    TemplateFile(CONFIG, hashlib.sha256(b"<configuration/>").hexdigest(), b"<configuration/>"),
    TemplateFile("net/a.net.xml", hashlib.sha256(b"<net/>").hexdigest(), b"<net/>"),
]
FCD = ("time", "vehicle", "x", "y", "speed", "angle", "lane")


class Look(Protocol):
    async def add_template(self, name: str) -> int: ...
    async def session(self, session_id: str) -> dict[str, Any]: ...
    async def events(self, session_id: str) -> list[tuple[str, str]]: ...
    async def samples(self, session_id: str) -> list[dict[str, Any]]: ...
    async def rows(self, partition: str) -> list[dict[str, Any]] | None: ...
    async def statistics(self, session_id: str) -> dict[str, Any] | None: ...
    async def totals(self, session_id: str) -> dict[str, Any] | None: ...
    async def ingest_mark(self, session_id: str, target: str) -> int: ...
    async def sweep(self, sweep_id: str) -> dict[str, Any] | None: ...
    async def refuse_negative(self, table: str, column: str) -> None:
        """From now on, refuse rows of `table` whose `column` is negative, as a CHECK named
        test_refuses would."""

    async def lapse(self, session_id: str) -> None:
        """The session's lease runs out now, as if its owner had stopped renewing it."""

    def other_node(self) -> Store:
        """Another node's store over the same rows (its own leases)."""


class MemLook:
    def __init__(self, store: MemStore) -> None:
        self.store = store

    async def add_template(self, name: str) -> int:
        return self.store.add_template(name, CONFIG, FILES)

    async def session(self, session_id: str) -> dict[str, Any]:
        row = self.store.session(session_id)
        assert row is not None
        return row

    async def events(self, session_id: str) -> list[tuple[str, str]]:
        return [(e["status"], e["reason"]) for e in self.store.events(session_id)]

    async def samples(self, session_id: str) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in r.items() if k != "session_id"}
            for r in self.store.samples(session_id)
        ]

    async def rows(self, partition: str) -> list[dict[str, Any]] | None:
        return self.store.rows(partition)

    async def statistics(self, session_id: str) -> dict[str, Any] | None:
        return self.store.statistics(session_id)

    async def totals(self, session_id: str) -> dict[str, Any] | None:
        return self.store.totals(session_id)

    async def ingest_mark(self, session_id: str, target: str) -> int:
        return self.store.ingest_mark(session_id, target)

    async def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return self.store.sweep(sweep_id)

    async def refuse_negative(self, table: str, column: str) -> None:
        def refuse(t: str, row: dict[str, Any]) -> str | None:
            if t == table and row[column] is not None and row[column] < 0:
                return f'new row for relation "{t}" violates check constraint "test_refuses"'
            return None

        self.store.refuse = refuse

    async def lapse(self, session_id: str) -> None:
        self.store.lapse(session_id)

    def other_node(self) -> Store:
        return self.store.view()


class PgLook:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def add_template(self, name: str) -> int:
        return await db.insert_template_version(self.pool, name, CONFIG, "0" * 64, FILES)

    async def session(self, session_id: str) -> dict[str, Any]:
        row = await db.get_session(self.pool, session_id)
        assert row is not None
        return row | {
            "pid_started_at": await self.pool.fetchval(
                "SELECT pid_started_at FROM sessions WHERE id = $1", session_id
            ),
            "attempt": await self.pool.fetchval(
                "SELECT attempt FROM sessions WHERE id = $1", session_id
            ),
        }

    async def events(self, session_id: str) -> list[tuple[str, str]]:
        return [(e["status"], e["reason"]) for e in await db.session_events(self.pool, session_id)]

    async def samples(self, session_id: str) -> list[dict[str, Any]]:
        return await db.get_samples(self.pool, session_id, None, 1_000_000)

    async def rows(self, partition: str) -> list[dict[str, Any]] | None:
        if await self.pool.fetchval("SELECT to_regclass($1)", partition) is None:
            return None
        return [dict(r) for r in await self.pool.fetch(f'SELECT * FROM "{partition}"')]

    async def statistics(self, session_id: str) -> dict[str, Any] | None:
        value = await self.pool.fetchval(
            "SELECT statistics FROM session_statistics WHERE session_id = $1", session_id
        )
        return value  # type: ignore[no-any-return]

    async def totals(self, session_id: str) -> dict[str, Any] | None:
        row = await self.pool.fetchrow(
            "SELECT inserted, arrived, teleports, running, last_time FROM session_totals"
            " WHERE session_id = $1",
            session_id,
        )
        return dict(row) if row is not None else None

    async def ingest_mark(self, session_id: str, target: str) -> int:
        seq = await self.pool.fetchval(
            "SELECT seq FROM ingest_marks WHERE session_id = $1 AND target = $2",
            session_id,
            target,
        )
        return -1 if seq is None else int(seq)

    async def sweep(self, sweep_id: str) -> dict[str, Any] | None:
        return await db.get_sweep(self.pool, sweep_id)

    async def refuse_negative(self, table: str, column: str) -> None:
        await self.pool.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT test_refuses CHECK ({column} >= 0)"
        )

    async def lapse(self, session_id: str) -> None:
        await self.pool.execute(
            "UPDATE sessions SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
            session_id,
        )

    def other_node(self) -> Store:
        return PgStore(self.pool, retry_s=5.0)


@dataclass
class Backend:
    store: Store
    look: Look


# The PostgreSQL case reaches its database through getfixturevalue, which the e2e hook cannot
# see: it carries the mark itself.
@pytest.fixture(params=["memory", pytest.param("postgres", marks=pytest.mark.e2e)])
def backend_kind(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    # Only the PostgreSQL store asks for a database: the memory one runs with none.
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("db_url")
    return "memory", None


@pytest.fixture
async def b(backend_kind: tuple[str, str | None]) -> AsyncIterator[Backend]:
    kind, url = backend_kind
    if kind == "memory":
        store = MemStore()
        yield Backend(store, MemLook(store))
        return
    assert url is not None
    pool = await db.create_pool(url)
    try:
        await db.apply_schema(pool)
        yield Backend(PgStore(pool, retry_s=5.0), PgLook(pool))
    finally:
        await pool.close()


_n = 0


def new_session(template: str = "city", version: int = 1, **kw: Any) -> NewSession:
    global _n
    _n += 1
    fields: dict[str, Any] = {
        "id": f"20260101t000000{_n:06d}z-abcd{_n % 10000:04d}",
        "template_name": template,
        "template_version": version,
        "request": {"template": template, "seed": _n, "nested": {"a": [1, 2]}},
        "label": "lbl",
        "end_time": 100.0,
    }
    return NewSession(**(fields | kw))


async def queued(b: Backend, n: int = 1) -> list[str]:
    if not await b.store.fetch_template_files("city", 1):
        await b.look.add_template("city")
    sessions = [new_session() for _ in range(n)]
    await b.store.insert_sessions(sessions)
    return [s.id for s in sessions]


def sample(session_id: str, t: float, vehicles: int = 1) -> tuple[Any, ...]:
    return (session_id, t, vehicles, 1, 0, 2.5, 0, 0.0, 0)


# ---- templates -----------------------------------------------------------------------------------


async def test_template_files_of_a_version(b: Backend):
    assert await b.store.fetch_template_files("city", 1) == []
    assert await b.look.add_template("city") == 1
    assert await b.look.add_template("city") == 2
    files = await b.store.fetch_template_files("city", 2)
    assert sorted(files, key=lambda f: f.path) == sorted(FILES, key=lambda f: f.path)
    assert await b.store.fetch_template_files("city", 3) == []


# ---- sessions and their status -------------------------------------------------------------------


async def test_inserted_sessions_are_queued_with_their_first_event(b: Backend):
    await b.look.add_template("city")
    s = new_session()
    await b.store.insert_sessions([s])
    assert await b.store.get_status(s.id) == Status.QUEUED
    assert await b.look.events(s.id) == [("queued", "submitted")]
    row = await b.look.session(s.id)
    assert row["request"] == s.request and row["label"] == "lbl" and row["end_time"] == 100.0
    assert row["attempt"] == 1 and row["started_at"] is None


async def test_sessions_of_a_sweep_are_inserted_with_it(b: Backend):
    await b.look.add_template("city")
    sweep = NewSweep("sw-1", {"template": "city", "runs": 2})
    sessions = [new_session(sweep_id="sw-1") for _ in range(2)]
    await b.store.insert_sessions(sessions, sweep)
    found = await b.look.sweep("sw-1")
    assert found is not None and found["request"] == sweep.request
    assert [await b.store.get_status(s.id) for s in sessions] == [Status.QUEUED] * 2


async def test_inserting_is_all_or_nothing(b: Backend):
    (taken,) = await queued(b)
    fresh = new_session()
    with pytest.raises(Exception):  # noqa: B017 (each store's own integrity error)
        await b.store.insert_sessions([fresh, new_session(id=taken)])
    assert await b.store.get_status(fresh.id) is None
    with pytest.raises(Exception):  # noqa: B017
        await b.store.insert_sessions([new_session(template="nope")])


async def test_get_status_of_an_unknown_session_is_none(b: Backend):
    assert await b.store.get_status("20260101t000000000000z-00000000") is None


async def test_lapsed_sessions_oldest_first_with_what_a_rescue_needs(b: Backend):
    ids = await queued(b, 3)
    claims = await b.store.claim("node-a", 2, 10.0)
    await transition(b.store, ids[0], Status.RUNNING, "traci connected")
    await b.store.set_process(ids[0], 9001, 4242, 1234.5)
    for sid in ids[:2]:
        await b.look.lapse(sid)
    lapsed = await b.look.other_node().lapsed(10)
    assert [x.record.id for x in lapsed] == ids[:2]  # not the queued one
    first = lapsed[0]
    assert first.lease == claims[0].lease
    assert (first.record.status, first.record.pid, first.record.pid_started_at) == (
        Status.RUNNING, 4242, 1234.5,
    )  # fmt: skip
    assert (first.record.template_name, first.record.template_version) == ("city", 1)
    assert (first.record.attempt, first.record.request["nested"]) == (1, {"a": [1, 2]})


async def test_a_status_is_written_with_its_fields_and_event(b: Backend):
    (sid,) = await queued(b)
    await transition(b.store, sid, Status.STARTING, "admitted (attempt 1)", started_at=NOW)
    await transition(b.store, sid, Status.RUNNING, "traci connected", end_time=50.0, sim_time=None)
    await transition(
        b.store,
        sid,
        Status.FAILED,
        "SUMO died",
        retry_s=math.inf,
        ended_at=NOW,
        cause="sumo_exited",
        error="Error: boom",
        exit_code=-9,
        sim_time=12.0,
    )
    row = await b.look.session(sid)
    assert row["status"] == "failed" and row["cause"] == "sumo_exited"
    assert (row["error"], row["exit_code"], row["sim_time"], row["end_time"]) == (
        "Error: boom", -9, 12.0, 50.0,
    )  # fmt: skip
    assert row["started_at"] is not None and row["ended_at"] >= row["started_at"]
    assert await b.look.events(sid) == [
        ("queued", "submitted"),
        ("starting", "admitted (attempt 1)"),
        ("running", "traci connected"),
        ("failed", "SUMO died"),
    ]


async def test_a_conditional_write_from_another_status_writes_nothing(b: Backend):
    (sid,) = await queued(b)
    written = await b.store.set_status(
        sid, Status.RUNNING, "skips starting", only_from=frozenset({Status.STARTING}), fields={}
    )
    assert written is False
    assert await b.store.get_status(sid) == Status.QUEUED
    assert await b.look.events(sid) == [("queued", "submitted")]
    assert not await b.store.set_status(
        "20260101t000000000000z-00000000",
        Status.STARTING,
        "nobody",
        only_from=frozenset({Status.QUEUED}),
        fields={},
    )


async def test_an_illegal_transition_is_refused(b: Backend):
    """The store's conditional write is what refuses: PostgreSQL's as well as the memory one's."""
    (sid,) = await queued(b)
    with pytest.raises(IllegalTransition) as raised:
        await transition(b.store, sid, Status.COMPLETED, "never ran", ended_at=NOW)
    assert raised.value.current == Status.QUEUED
    await transition(b.store, sid, Status.STOPPED, "stopped while queued", ended_at=NOW)
    with pytest.raises(IllegalTransition) as raised:
        await transition(b.store, sid, Status.STARTING, "admitted after its stop")
    assert raised.value.current == Status.STOPPED
    assert (await b.look.session(sid))["status"] == "stopped"
    assert [e[0] for e in await b.look.events(sid)] == ["queued", "stopped"]


async def test_of_two_racing_final_writes_one_wins(b: Backend):
    """A stop and the session's own end at once: exactly one final status, one final event."""
    (sid,) = await queued(b)
    await transition(b.store, sid, Status.STARTING, "admitted")
    await transition(b.store, sid, Status.RUNNING, "traci connected")
    results = await asyncio.gather(
        transition(b.store, sid, Status.COMPLETED, "end time reached"),
        transition(b.store, sid, Status.STOPPED, "stop requested"),
        return_exceptions=True,
    )
    assert sum(r is None for r in results) == 1
    assert sum(isinstance(r, IllegalTransition) for r in results) == 1
    events = await b.look.events(sid)
    assert [e[0] for e in events[:3]] == ["queued", "starting", "running"] and len(events) == 4


async def test_a_requeued_session_starts_over(b: Backend):
    (sid,) = await queued(b)
    await transition(b.store, sid, Status.STARTING, "admitted", started_at=NOW)
    await b.store.set_process(sid, 9001, 4242, 1234.5)
    await requeue(b.store, sid, 2, "daemon restarted: rerun, attempt 2 of 3")
    row = await b.look.session(sid)
    assert (row["status"], row["attempt"], row["port"], row["pid"], row["started_at"]) == (
        "queued", 2, None, None, None,
    )  # fmt: skip
    assert row["pid_started_at"] is None
    assert await b.store.count_queued() == 1


async def test_set_process(b: Backend):
    (sid,) = await queued(b)
    await b.store.set_process(sid, 9001, None, None)
    row = await b.look.session(sid)
    assert (row["port"], row["pid"]) == (9001, None)
    await b.store.set_process(sid, 9002, 77, 5.0)
    row = await b.look.session(sid)
    assert (row["port"], row["pid"], row["pid_started_at"]) == (9002, 77, 5.0)
    await b.store.set_process("20260101t000000000000z-00000000", 1, 1, 1.0)  # no one: no-op


# ---- a session's rows ----------------------------------------------------------------------------


async def test_statistics_are_stored_and_replaced(b: Backend):
    (sid,) = await queued(b)
    assert await b.look.statistics(sid) is None
    await b.store.store_statistics(sid, {"vehicles": {"loaded": "3"}})
    await b.store.store_statistics(sid, {"vehicles": {"loaded": "4"}, "teleports": {}})
    assert await b.look.statistics(sid) == {"vehicles": {"loaded": "4"}, "teleports": {}}


async def test_a_sessions_totals_are_kept_and_replaced(b: Backend):
    sid, other = await queued(b, 2)
    assert await b.look.totals(sid) is None
    await b.store.keep_totals(sid)
    nothing = {"inserted": 0, "arrived": 0, "teleports": 0, "running": 0, "last_time": None}
    assert await b.look.totals(sid) == nothing
    rows = [
        (sid, 2.0, 4, 2, 1, 5.0, 0, 0.0, 1),
        (sid, 1.0, 3, 3, 0, 5.0, 1, 1.0, 0),
        (other, 1.0, 9, 9, 9, 1.0, 0, 0.0, 9),
    ]
    await b.store.copy_rows("samples", SAMPLE_COLUMNS, rows)
    await b.store.keep_totals(sid)
    # Sums of the session's own samples; running is its last sample's (by sim time).
    assert await b.look.totals(sid) == {
        "inserted": 5, "arrived": 1, "teleports": 1, "running": 4, "last_time": 2.0
    }  # fmt: skip


async def test_commands_are_numbered_on_and_read_in_order(b: Backend):
    (sid,) = await queued(b)
    assert await b.store.session_commands(sid) == []
    await b.store.add_commands(sid, 10.0, [{"type": "edge.close", "id": "e1"}])
    await b.store.add_commands(
        sid, 20.5, [{"type": "tls.set_phase", "id": "c", "phase": 2}, {"type": "edge.reopen"}]
    )
    assert await b.store.session_commands(sid) == [
        RecordedCommand(1, 10.0, {"type": "edge.close", "id": "e1"}),
        RecordedCommand(2, 20.5, {"type": "tls.set_phase", "id": "c", "phase": 2}),
        RecordedCommand(3, 20.5, {"type": "edge.reopen"}),
    ]


async def test_partitions_are_made_once_and_take_rows(b: Backend):
    (sid,) = await queued(b)
    part = partition_name("trips", sid)
    assert await b.look.rows(part) is None
    await b.store.create_record_partitions(sid, ["trips", "trajectories"])
    await b.store.create_record_partitions(sid, ["trips"])
    assert await b.look.rows(part) == []
    await b.store.copy_rows(part, ("vehicle", "duration"), [("v1", 10.0), ("v2", 12)])
    rows = await b.look.rows(part)
    assert rows is not None
    assert sorted((r["session_id"], r["vehicle"], r["duration"]) for r in rows) == [
        (sid, "v1", 10.0),
        (sid, "v2", 12.0),
    ]


async def test_clearing_a_session_forgets_its_earlier_attempt(b: Backend):
    sid, other = await queued(b, 2)
    await b.store.create_record_partitions(sid, ["trajectories", "trips", "edge_data"])
    part = partition_name("trajectories", sid)
    await b.store.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 1.0), sample(other, 1.0)])
    await b.store.copy_csv(part, FCD, b"0;v0;1;2;3;90;e_0\n", mark=Mark(sid, 1))
    await b.store.store_statistics(sid, {"vehicles": {}})
    await b.store.keep_totals(sid)
    await b.store.add_commands(sid, 1.0, [{"type": "edge.close", "id": "e"}])
    await b.store.clear_session_rows(sid)
    assert await b.look.samples(sid) == []
    assert len(await b.look.samples(other)) == 1
    assert await b.look.rows(part) is None
    assert await b.look.ingest_mark(sid, part) == -1
    assert await b.look.statistics(sid) is None
    assert await b.look.totals(sid) is None
    # Commands stay: a rerun of a replay is still a replay of the same commands.
    assert len(await b.store.session_commands(sid)) == 1
    # The next attempt starts with fresh partitions, and its first chunk is not skipped.
    await b.store.create_record_partitions(sid, ["trajectories"])
    await b.store.copy_csv(part, FCD, b"0;v0;1;2;3;90;e_0\n", mark=Mark(sid, 1))
    assert len(await b.look.rows(part) or []) == 1


# ---- bulk writes ---------------------------------------------------------------------------------


async def test_samples_of_many_sessions_in_one_copy_skipping_a_reruns_duplicates(b: Backend):
    a, c = await queued(b, 2)
    await b.store.copy_rows(
        "samples", SAMPLE_COLUMNS, [sample(a, t) for t in (1.0, 2.0)] + [sample(c, 1.0)]
    )
    # A rerun hands over 2.0 again (with other figures) and a new 3.0: the stored one stays.
    await b.store.copy_rows(
        "samples", SAMPLE_COLUMNS, [sample(a, 2.0, vehicles=99), sample(a, 3.0)]
    )
    got = await b.look.samples(a)
    assert [(s["sim_time"], s["vehicles"]) for s in got] == [(1.0, 1), (2.0, 1), (3.0, 1)]
    assert got[0] == {
        "sim_time": 1.0, "vehicles": 1, "departed": 1, "arrived": 0, "mean_speed": 2.5,
        "halting": 0, "waiting_time": 0.0, "teleports": 0,
    }  # fmt: skip
    assert len(await b.look.samples(c)) == 1
    assert (await b.look.session(a))["sim_time"] == 3.0  # no sim_time of its own: its samples'


async def test_samples_of_an_unknown_session_are_refused_as_gone(b: Backend):
    (sid,) = await queued(b)
    gone = "20260101t000000000000z-00000000"
    with pytest.raises(SessionGone):
        await b.store.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 1.0), sample(gone, 1.0)])
    assert await b.look.samples(sid) == []  # all of the call, or none


async def test_a_refused_row_refuses_its_whole_copy(b: Backend):
    a, c = await queued(b, 2)
    await b.look.refuse_negative("samples", "vehicles")
    with pytest.raises(RowsRefused, match="test_refuses"):
        await b.store.copy_rows(
            "samples", SAMPLE_COLUMNS, [sample(a, 1.0), sample(c, 1.0, vehicles=-1)]
        )
    assert await b.look.samples(a) == []
    await b.store.copy_rows("samples", SAMPLE_COLUMNS, [sample(a, 1.0)])
    assert len(await b.look.samples(a)) == 1


async def test_rows_of_the_wrong_type_or_missing_a_required_column_are_refused(b: Backend):
    (sid,) = await queued(b)
    with pytest.raises(RowsRefused):
        await b.store.copy_rows(
            "samples", SAMPLE_COLUMNS, [(sid, 1.0, "many", 1, 0, 1.0, 0, 0.0, 0)]
        )
    await b.store.create_record_partitions(sid, ["trips"])
    with pytest.raises(RowsRefused):
        await b.store.copy_rows(
            partition_name("trips", sid), ("vehicle", "duration"), [(None, 1.0)]
        )
    assert await b.look.samples(sid) == []


async def test_a_marked_chunk_is_written_at_most_once(b: Backend):
    (sid,) = await queued(b)
    await b.store.create_record_partitions(sid, ["trips"])
    part = partition_name("trips", sid)
    rows = [("v1", 10.0)]
    await b.store.copy_rows(part, ("vehicle", "duration"), rows, Mark(sid, 1))
    # The same chunk again (a retry whose first answer was lost), and an older one: skipped.
    await b.store.copy_rows(part, ("vehicle", "duration"), rows, Mark(sid, 1))
    await b.store.copy_rows(part, ("vehicle", "duration"), [("v0", 1.0)], Mark(sid, 0))
    assert await b.look.ingest_mark(sid, part) == 1
    await b.store.copy_rows(part, ("vehicle", "duration"), [("v2", 3.0)], Mark(sid, 2))
    assert await b.look.ingest_mark(sid, part) == 2
    assert sorted(r["vehicle"] for r in await b.look.rows(part) or []) == ["v1", "v2"]


async def test_csv_lines_go_in_as_sumo_wrote_them(b: Backend):
    (sid,) = await queued(b)
    await b.store.create_record_partitions(sid, ["trajectories"])
    part = partition_name("trajectories", sid)
    data = (
        b"0.00;v0;1.5;2.5;3.0;90.00;e_0\n"
        b"1.00;;;;;;\n"  # a time step with no vehicle: left out
        b"1.00;v1;1.0;2.0;0.0;180.0;\n"  # no lane: NULL
    )
    await b.store.copy_csv(part, FCD, data, required="vehicle", mark=Mark(sid, 1))
    await b.store.copy_csv(part, FCD, data, required="vehicle", mark=Mark(sid, 1))
    rows = sorted(await b.look.rows(part) or [], key=lambda r: r["vehicle"])
    assert [(r["time"], r["vehicle"], r["x"], r["angle"], r["lane"]) for r in rows] == [
        (0.0, "v0", 1.5, 90.0, "e_0"),
        (1.0, "v1", 1.0, 180.0, None),
    ]
    assert rows[0]["session_id"] == sid
    assert await b.look.ingest_mark(sid, part) == 1


async def test_bad_csv_is_refused_and_a_missing_partition_is_gone(b: Backend):
    (sid,) = await queued(b)
    await b.store.create_record_partitions(sid, ["trajectories"])
    part = partition_name("trajectories", sid)
    with pytest.raises(RowsRefused):
        await b.store.copy_csv(part, FCD, b"zero;v0;1;2;3;90;e_0\n", mark=Mark(sid, 1))
    assert await b.look.rows(part) == [] and await b.look.ingest_mark(sid, part) == -1
    with pytest.raises(SessionGone):
        await b.store.copy_csv(partition_name("trips", sid), ("vehicle",), b"v0\n")


# ---- nodes, claims and leases ------------------------------------------------------------------


async def _node(store: Store, node_id: str) -> None:
    await store.register_node(Node(node_id, "host", None, 2, "boot", 1))


async def test_claims_take_the_oldest_queued_sessions_up_to_the_limit(b: Backend):
    ids = await queued(b, 3)
    a, other = b.store, b.look.other_node()
    await _node(a, "node-a")
    await _node(other, "node-b")
    first = await a.claim("node-a", 2, 10.0)
    assert [c.record.id for c in first] == ids[:2]
    assert all(c.lease.node_id == "node-a" and c.lease.epoch == 1 for c in first)
    assert first[0].config_path == CONFIG
    assert (await b.look.session(ids[0]))["status"] == "starting"
    assert await b.look.events(ids[0]) == [
        ("queued", "submitted"),
        ("starting", "claimed by node node-a (attempt 1)"),
    ]
    assert [c.record.id for c in await other.claim("node-b", 5, 10.0)] == ids[2:]
    assert await a.claim("node-a", 5, 10.0) == []
    assert await a.count_queued() == 0


async def test_nodes_claiming_at_once_never_take_the_same_session(b: Backend):
    ids = await queued(b, 10)
    stores = [b.store, b.look.other_node(), b.look.other_node()]
    claims = await asyncio.gather(*(s.claim(f"n{i}", 4, 10.0) for i, s in enumerate(stores)))
    taken = [c.record.id for claim in claims for c in claim]
    assert sorted(taken) == ids  # every one once


async def test_a_lapsed_lease_is_rescued_and_the_old_owner_is_fenced(b: Backend):
    (sid,) = await queued(b)
    old, rescuer = b.store, b.look.other_node()
    (claim,) = await old.claim("node-a", 1, 10.0)
    await transition(old, sid, Status.RUNNING, "traci connected")
    assert await old.renew("node-a", 10.0, {sid: claim.lease.epoch}) == {sid}
    assert await rescuer.lapsed(10) == []

    await b.look.lapse(sid)
    (lapsed,) = await rescuer.lapsed(10)
    assert (lapsed.record.id, lapsed.lease) == (sid, claim.lease)
    request = SessionRequest.from_json({"template": "city"})
    status = await interrupted(
        rescuer, sid, request, 1, "node a stopped renewing its lease", Cause.NODE_LOST,
        fence=lapsed.lease,
    )  # fmt: skip
    assert status == Status.QUEUED
    # A second rescuer that read the same lapsed lease finds it taken.
    with pytest.raises((LeaseLost, IllegalTransition)):
        await interrupted(
            b.look.other_node(), sid, request, 1, "late", Cause.NODE_LOST, fence=lapsed.lease
        )
    (again,) = await rescuer.claim("node-b", 1, 10.0)
    assert again.lease.epoch == claim.lease.epoch + 1 and again.record.attempt == 2

    # The old owner comes back: nothing it writes of its run lands.
    assert await old.renew("node-a", 10.0, {sid: claim.lease.epoch}) == set()
    with pytest.raises(LeaseLost):
        await transition(old, sid, Status.RUNNING, "traci connected")
    with pytest.raises(LeaseLost):
        await transition(old, sid, Status.FAILED, "SUMO died", ended_at=NOW)
    with pytest.raises(LeaseLost):
        await old.set_process(sid, 9001, 4242, 1.0)
    with pytest.raises(LeaseLost):
        await old.add_commands(sid, 5.0, [{"type": "x"}])
    with pytest.raises(LeaseLost):
        await old.store_statistics(sid, {"a": 1})
    with pytest.raises(LeaseLost):
        await old.keep_totals(sid)
    await old.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 10.0)])  # left out, silently
    assert await b.look.samples(sid) == []
    row = await b.look.session(sid)
    assert (row["status"], row["port"], row["node"]) == ("starting", None, "node-b")
    # The new owner's writes land.
    await transition(rescuer, sid, Status.RUNNING, "traci connected")
    await rescuer.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 10.0)])
    assert len(await b.look.samples(sid)) == 1


async def test_a_final_status_ends_the_lease(b: Backend):
    (sid,) = await queued(b)
    (claim,) = await b.store.claim("node-a", 1, 10.0)
    await transition(b.store, sid, Status.RUNNING, "traci connected")
    await transition(b.store, sid, Status.COMPLETED, "end time reached", ended_at=NOW)
    assert (await b.look.session(sid))["node"] is None
    assert await b.store.renew("node-a", 10.0, {sid: claim.lease.epoch}) == set()
    await b.look.lapse(sid)
    assert await b.store.lapsed(10) == []  # ended: nothing to rescue


async def test_a_released_run_writes_nothing_until_claimed_again(b: Backend):
    """A batch of a run that has ended here (one the writer still retried) is refused, not let
    through unfenced; a new claim of the session writes again."""
    (sid,) = await queued(b)
    (claim,) = await b.store.claim("node-a", 1, 10.0)
    await requeue(b.store, sid, 2, "node drained: rerun, attempt 2 of 3")
    b.store.release(sid)
    assert sid in b.store.released()
    with pytest.raises(LeaseLost):
        await b.store.set_process(sid, 9001, 4242, 1.0)
    await b.store.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 10.0)])  # left out
    assert await b.look.samples(sid) == []
    (again,) = await b.store.claim("node-a", 1, 10.0)
    assert again.lease.epoch == claim.lease.epoch + 1 and sid not in b.store.released()
    await b.store.copy_rows("samples", SAMPLE_COLUMNS, [sample(sid, 10.0)])
    assert len(await b.look.samples(sid)) == 1
