"""The actors in-process, where a case needs a hand on their insides: real PostgreSQL, real sumo."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actors import scenario
from actors.errors import SessionConflict
from actors.lifecycle import NOW, Status, transition
from actors.messages import SessionSpec
from actors.ports import PortPool, port_is_free
from actors.request import SessionRequest
from actors.settings import SessionSettings, SupervisorSettings
from actors.store import Mark, partition_name
from actors.supervisor import SupervisorActor, new_session_id
from actors.writer import CsvChunk, WriterActor
from supervisor import db
from supervisor.pgstore import PgStore
from tests.harness.daemon import next_port_range
from tests.harness.scenarios import SUMO_BIN, Scenario


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(db_url)
    await db.apply_schema(pool)
    yield pool
    await pool.close()


async def store_template(pool: asyncpg.Pool, name: str, built: Scenario) -> SessionSpec:
    sha, files = scenario.check_upload(built.config, built.files())
    version = await db.insert_template_version(pool, name, built.config, sha, files)
    return SessionSpec(new_session_id(), name, version, built.config, SessionRequest(name))


async def wait_final(pool: asyncpg.Pool, session_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        row = await db.get_session(pool, session_id)
        if row is not None and row["status"] in db.FINAL_STATUSES:
            return row
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.05)


def make_supervisor(
    store: PgStore, writer: WriterActor, ports: PortPool, tmp_path: Path, max_running: int
) -> SupervisorActor:
    settings = SupervisorSettings(
        temp_root=tmp_path / "sessions",
        max_running=max_running,
        max_queued=10,
        session=SessionSettings(
            sumo_binary=str(SUMO_BIN / "sumo"), stop_grace_s=1.0, connect_timeout_s=30.0
        ),
    )
    return SupervisorActor(settings, store=store, writer=writer, ports=ports)


async def _answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # A framed answer too short for the command: what a socket connected to itself reads back.
    writer.write(b"\x00\x00\x00\x06\x01\x00")
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("answers", [False, True])
async def test_port_refused_by_sumo_is_retried_on_another(
    pool, scenarios, tmp_path: Path, answers: bool
):
    """SUMO itself fails with 'Address already in use' and the session moves to the next port,
    whether what holds the port keeps silent or answers the handshake with garbage.

    The probe is replaced (the one fake here): a real probe would see the taken port and never
    lease it, so this is the only way to reach SUMO's own refusal. Everything else is real."""
    first = next_port_range()[0]  # this test's own, whatever other workers run
    holder = socket.socket()
    holder.bind(("0.0.0.0", first))  # no SO_REUSEADDR: SUMO's bind must fail
    holder.listen()
    server = await asyncio.start_server(_answer_garbage, sock=holder) if answers else None
    writer = WriterActor(PgStore(pool), batch_rows=100, flush_s=0.05, queue_rows=1000)
    ports = PortPool(range(first, first + 3), probe=lambda port: True)
    supervisor = make_supervisor(PgStore(pool), writer, ports, tmp_path, max_running=2)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            tg.create_task(supervisor.run())
            spec = await store_template(pool, "grid3", scenarios["grid3"])
            await supervisor.submit(spec)
            row = await wait_final(pool, spec.id)
            await supervisor.shutdown("test over")
            await writer.close()
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()
        holder.close()
    assert row["status"] == "completed", row
    assert row["port"] == first + 1
    assert supervisor.ports_leased == 0
    assert port_is_free(first + 1)


class HeldFlushWriter(WriterActor):
    """A writer whose flush waits until the test lets it go, so a session stays in the act of
    writing down its end (the fake here: a real end is written too fast to catch it there)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.release = asyncio.Event()

    async def flush(self) -> None:
        await self.release.wait()
        await super().flush()


async def test_a_session_writing_down_its_end_frees_its_place(pool, scenarios, tmp_path: Path):
    """max_running bounds SUMO processes: the next session starts while the one before is still
    writing down its end. A pause sent to that one meanwhile is refused at once: its loop reads
    no more messages (it used to wait out the control timeout, 120 s)."""
    writer = HeldFlushWriter(PgStore(pool), batch_rows=100, flush_s=0.05, queue_rows=1000)
    supervisor = make_supervisor(PgStore(pool), writer, PortPool(range(23410, 23420)), tmp_path, 1)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        tg.create_task(supervisor.run())
        first = await store_template(pool, "grid3", scenarios["grid3"])
        second = await store_template(pool, "grid3", scenarios["grid3"])
        await supervisor.submit(first)
        await supervisor.submit(second)
        deadline = time.monotonic() + 60
        while (await db.get_session(pool, second.id) or {}).get("status") != "running":
            assert time.monotonic() < deadline, "the second session never started"
            await asyncio.sleep(0.05)
        # The first is still not final: its end is held in the writer.
        assert (await db.get_session(pool, first.id) or {})["status"] == "running"
        with pytest.raises(SessionConflict, match="has ended"):
            await asyncio.wait_for(supervisor.pause(first.id), 10)
        writer.release.set()
        rows = [await wait_final(pool, spec.id) for spec in (first, second)]
        await supervisor.shutdown("test over")
        await writer.close()
    assert [r["status"] for r in rows] == ["completed", "completed"]


async def test_a_session_ending_while_the_database_is_away_is_written_down_when_it_is_back(
    scenarios, tmp_path: Path
):
    """The database goes away for longer than a session's step waits for it, and a session ends
    meanwhile. Its end waits for the database, and the supervisor goes on meanwhile.
    The store waits 1 s for the database (its retry_s; the daemon's waits 120 s): an outage
    that long cannot be shown in a test's time."""
    import pgserver
    from pgserver._commands import pg_ctl

    retry_s = 1.0
    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    pool = await db.create_pool(server.get_uri())
    try:
        await db.apply_schema(pool)
        store = PgStore(pool, retry_s=retry_s)
        writer = WriterActor(store, batch_rows=100, flush_s=0.05, queue_rows=1000)
        supervisor = make_supervisor(store, writer, PortPool(range(23420, 23430)), tmp_path, 2)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            loop_task = tg.create_task(supervisor.run())
            spec = await store_template(pool, "grid3", scenarios["grid3"])
            # Stepped: it writes nothing while it waits, so its end is the only write pending.
            spec = dataclasses.replace(
                spec, request=dataclasses.replace(spec.request, mode="stepped")
            )
            await supervisor.submit(spec)
            deadline = time.monotonic() + 60
            while (await db.get_session(pool, spec.id) or {}).get("status") != "running":
                assert time.monotonic() < deadline, "the session never started"
                await asyncio.sleep(0.05)
            await asyncio.to_thread(
                pg_ctl, ["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user
            )
            assert await supervisor.stop(spec.id) == "running"
            await asyncio.sleep(4 * retry_s)  # the outage, four times longer than a step waits
            assert not loop_task.done()
            await asyncio.to_thread(server.ensure_postgres_running)
            row = await wait_final(pool, spec.id)
            assert row["status"] == "stopped", row
            deadline = time.monotonic() + 60
            while supervisor.ports_leased:
                assert time.monotonic() < deadline, "the session's port was never given back"
                await asyncio.sleep(0.05)
            await supervisor.shutdown("test over")
            await writer.close()
    finally:
        await pool.close()
        server.cleanup()


async def test_writer_keeps_every_row_and_flushes_on_close(pool, scenarios):
    """Rows written faster than one batch, with a queue smaller than the total: none is lost."""
    spec = await store_template(pool, "grid3", scenarios["grid3"])
    await PgStore(pool).insert_sessions([spec.db_row()])
    writer = WriterActor(PgStore(pool), batch_rows=64, flush_s=0.01, queue_rows=50)
    task = asyncio.create_task(writer.run())
    try:
        for t in range(5000):
            await writer.write((spec.id, float(t), 1, 1, 0, 1.0, 0, 0.0, 0))
        await writer.close()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    rows = await db.get_samples(pool, spec.id, None, 10_000)
    assert len(rows) == 5000
    assert sum(r["departed"] for r in rows) == 5000
    # A rerun's duplicate rows are skipped, the new ones kept.
    writer = WriterActor(PgStore(pool), batch_rows=64, flush_s=0.01, queue_rows=50)
    task = asyncio.create_task(writer.run())
    for t in range(4990, 5010):
        await writer.write((spec.id, float(t), 1, 1, 0, 1.0, 0, 0.0, 0))
    await writer.flush()
    await writer.close()
    await asyncio.wait_for(task, 30)
    assert len(await db.get_samples(pool, spec.id, None, 10_000)) == 5010


class LosesFirstAnswer:
    """A pool whose first commit's answer is lost: the rows are committed, then the connection
    fails, as when the server dies just after a commit. The one other fake in this file: that
    moment cannot be timed with a real server; the database under it is real."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.lost = 0

    @contextlib.asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[asyncpg.Connection]:
        async with self.pool.acquire(timeout=timeout) as conn:
            yield conn
        if not self.lost:
            self.lost += 1
            raise asyncpg.exceptions.ConnectionDoesNotExistError("connection lost after commit")


async def test_writer_applies_a_recorded_chunk_once_when_a_commit_answer_is_lost(pool, scenarios):
    spec = await store_template(pool, "grid3", scenarios["grid3"])
    await PgStore(pool).insert_sessions([spec.db_row()])
    await PgStore(pool).create_record_partitions(spec.id, ["trajectories", "trips"])
    flaky = LosesFirstAnswer(pool)
    writer = WriterActor(PgStore(flaky), batch_rows=10_000, flush_s=0.01, queue_rows=100)
    task = asyncio.create_task(writer.run())
    columns = ("time", "vehicle", "x", "y", "speed", "angle", "lane")
    lines = b"".join(b"%d;v%d;1.0;2.0;3.0;90.0;e_0\n" % (t, t) for t in range(500))
    trajectories = partition_name("trajectories", spec.id)
    trips = partition_name("trips", spec.id)
    await writer.write_csv(CsvChunk(trajectories, columns, lines, 500, None, Mark(spec.id, 1)))
    await writer.flush()
    await writer.write_records(trips, ("vehicle", "duration"), [("v1", 10.0)], Mark(spec.id, 2))
    await writer.write_csv(CsvChunk(trajectories, columns, lines, 500, None, Mark(spec.id, 3)))
    await writer.close()
    await asyncio.wait_for(task, 30)
    assert flaky.lost == 1 and writer.stats.retries == 1
    # The first chunk once, the second once: the retry saw the first commit and skipped it.
    assert await pool.fetchval(f'SELECT count(*) FROM "{trajectories}"') == 1000
    assert await pool.fetchval(f'SELECT count(*) FROM "{trips}"') == 1


async def test_writer_retries_a_copy_whose_connection_dies_while_the_server_is_not_reading(
    pool, db_url, scenarios
):
    """The server stops reading a COPY (blocked on a lock here, shutting down in real life) and
    then drops the connection. asyncpg's COPY then waits for its socket to drain forever: the
    writer must notice the lost connection, retry, and keep every row."""
    spec = await store_template(pool, "grid3", scenarios["grid3"])
    await PgStore(pool).insert_sessions([spec.db_row()])
    await PgStore(pool).create_record_partitions(spec.id, ["trajectories"])
    trajectories = partition_name("trajectories", spec.id)
    columns = ("time", "vehicle", "x", "y", "speed", "angle", "lane")
    # Far more than the socket buffers hold, so the COPY's writes must wait for the server.
    lines = b"".join(b"%d;v%d;1.0;2.0;3.0;90.0;e_0\n" % (t, t) for t in range(200_000))
    writer = WriterActor(PgStore(pool), batch_rows=1_000_000, flush_s=0.01, queue_rows=100)
    task = asyncio.create_task(writer.run())
    locker = await asyncpg.connect(db_url)
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute(f'LOCK TABLE "{trajectories}" IN ACCESS EXCLUSIVE MODE')
        chunk = CsvChunk(trajectories, columns, lines, 200_000, None, Mark(spec.id, 1))
        await writer.write_csv(chunk)
        deadline = time.monotonic() + 30
        # The writer's is the one connection that waits on a lock (pg_stat_activity may still
        # show it idle: its state is reported lazily).
        while not (
            pid := await locker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()"
            )
        ):
            assert time.monotonic() < deadline, "the writer's COPY never waited on the lock"
            await asyncio.sleep(0.05)
        await locker.fetchval("SELECT pg_terminate_backend($1)", pid)
        await lock.rollback()
        await asyncio.wait_for(writer.flush(), 60)
        await writer.close()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        await locker.close()
    assert writer.stats.retries >= 1
    assert await pool.fetchval(f'SELECT count(*) FROM "{trajectories}"') == 200_000


def _free_ports(n: int) -> list[int]:
    """Ports free a moment ago (the kernel's picks: on a busy machine a neighbour of a free port
    may well be taken)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_port_pool_skips_ports_held_elsewhere_and_rotates():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    try:
        pool = PortPool([taken, *_free_ports(2)])
        leased = pool.lease()
        assert leased is not None and leased != taken
        second = pool.lease()
        assert second not in (None, taken, leased)
        assert pool.lease() is None  # the held one is quarantined, the others leased
        pool.release(leased)
        assert pool.lease() == leased
    finally:
        holder.close()


async def test_one_sessions_refused_row_keeps_the_others_rows_and_fails_only_that_session(
    pool, scenarios, tmp_path: Path
):
    """A real session whose sample rows the database refuses (a CHECK made for the test: the
    refusal is PostgreSQL's own) ends `failed` with `cause: write_failed` and the error, rather
    than `completed` with rows missing; another session's rows written meanwhile are all kept
    (the rows of several sessions in one COPY: the next test)."""
    good = await store_template(pool, "grid3", scenarios["grid3"])
    bad = await store_template(pool, "grid3", scenarios["grid3"])
    await PgStore(pool).insert_sessions([good.db_row()])
    # Only its rows are written here: ended, so that no node claims it to run.
    await transition(PgStore(pool), good.id, Status.STOPPED, "rows only", ended_at=NOW)
    await pool.execute(
        f"ALTER TABLE samples ADD CONSTRAINT test_refuses CHECK (session_id <> '{bad.id}')"
    )
    writer = WriterActor(PgStore(pool), batch_rows=1000, flush_s=0.05, queue_rows=1000)
    first, last = next_port_range(10)
    supervisor = make_supervisor(
        PgStore(pool), writer, PortPool(range(first, last + 1)), tmp_path, 2
    )
    async with asyncio.TaskGroup() as tg:
        tg.create_task(writer.run())
        tg.create_task(supervisor.run())
        await supervisor.submit(bad)
        # Another session's rows, written while the refused session runs.
        for t in range(200):
            await writer.write((good.id, float(t), 1, 1, 0, 1.0, 0, 0.0, 0))
        await writer.flush()
        row = await wait_final(pool, bad.id)
        await supervisor.shutdown("test over")
        await writer.close()
    assert len(await db.get_samples(pool, good.id, None, 10_000)) == 200
    assert row["status"] == "failed", row
    assert row["cause"] == "write_failed", row
    assert "test_refuses" in (row["error"] or ""), row


async def test_writer_fails_the_owner_of_a_refused_batch_and_keeps_the_rest_of_the_batch(
    pool, scenarios
):
    """Rows of three sessions in one COPY, one row of one session refused by PostgreSQL: the
    other two sessions' rows are committed; the writer reports the failure for that session."""
    specs = [await store_template(pool, "grid3", scenarios["grid3"]) for _ in range(3)]
    await PgStore(pool).insert_sessions([s.db_row() for s in specs])
    await pool.execute("ALTER TABLE samples ADD CONSTRAINT test_refuses CHECK (vehicles >= 0)")
    writer = WriterActor(PgStore(pool), batch_rows=10_000, flush_s=0.05, queue_rows=10_000)
    task = asyncio.create_task(writer.run())
    try:
        for t in range(100):
            for i, spec in enumerate(specs):
                vehicles = -1 if (i == 1 and t == 50) else 1
                await writer.write((spec.id, float(t), vehicles, 1, 0, 1.0, 0, 0.0, 0))
        await writer.flush()
        await writer.close()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
    counts = [len(await db.get_samples(pool, s.id, None, 10_000)) for s in specs]
    assert counts[0] == counts[2] == 100, counts
    assert writer.take_failure(specs[0].id) is None
    assert writer.take_failure(specs[2].id) is None
    assert "test_refuses" in (writer.take_failure(specs[1].id) or "")
