"""The supervisor, the writer and real session actors in-process on the in-memory store: real
SUMO, no PostgreSQL and no daemon. What a user would see is read from the store's rows."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from actors import scenario
from actors.lifecycle import NOW, Status, transition
from actors.memstore import MemStore
from actors.messages import SessionSpec
from actors.ports import PortPool
from actors.request import SessionRequest
from actors.settings import SessionSettings, SupervisorSettings
from actors.store import SAMPLE_COLUMNS, partition_name
from actors.supervisor import SupervisorActor, new_session_id
from actors.writer import WriterActor
from tests.harness.daemon import next_port_range
from tests.harness.scenarios import SUMO_BIN, Scenario

FINAL = {"completed", "failed", "stopped", "timed_out"}


def add_template(store: MemStore, built: Scenario, name: str) -> int:
    _sha, files = scenario.check_upload(built.config, built.files())
    return store.add_template(name, built.config, files)


def spec_of(store: MemStore, built: Scenario, name: str, **request: Any) -> SessionSpec:
    version = add_template(store, built, name)
    return SessionSpec(
        new_session_id(), name, version, built.config, SessionRequest(name, **request)
    )


@dataclass
class Daemon:
    """The actors as app.py wires them, on a MemStore."""

    store: MemStore
    supervisor: SupervisorActor
    writer: WriterActor
    temp_root: Path


@asynccontextmanager
async def actors(
    store: MemStore, tmp_path: Path, *, max_running: int = 2, recover: bool = False
) -> AsyncIterator[Daemon]:
    first, last = next_port_range(20)
    temp_root = tmp_path / "sessions"
    temp_root.mkdir(exist_ok=True)
    writer = WriterActor(store, batch_rows=500, flush_s=0.05, queue_rows=1000)
    supervisor = SupervisorActor(
        SupervisorSettings(
            temp_root=temp_root,
            max_running=max_running,
            max_queued=10,
            session=SessionSettings(
                sumo_binary=str(SUMO_BIN / "sumo"), stop_grace_s=1.0, connect_timeout_s=30.0
            ),
        ),
        store=store,
        writer=writer,
        ports=PortPool(range(first, last + 1)),
    )
    if recover:
        await supervisor.recover()
    async with asyncio.TaskGroup() as tg:
        writer_task = tg.create_task(writer.run())
        supervisor_task = tg.create_task(supervisor.run())
        try:
            yield Daemon(store, supervisor, writer, temp_root)
        finally:
            # As app.py stops them: every session first, then every row.
            await supervisor.shutdown("test over")
            await asyncio.wait_for(supervisor_task, 60)
            await writer.close()
            await asyncio.wait_for(writer_task, 60)


async def wait_status(
    store: MemStore, session_id: str, statuses: set[str], timeout: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = store.session(session_id)
        if row is not None and row["status"] in statuses:
            return row
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.05)


def history(store: MemStore, session_id: str) -> list[tuple[str, str]]:
    return [(e["status"], e["reason"]) for e in store.events(session_id)]


async def test_a_session_runs_to_completed_with_its_rows(scenarios, tmp_path: Path):
    store = MemStore()
    spec = spec_of(
        store, scenarios["grid3"], "grid3", end=120.0, record=("samples", "trips", "trajectories")
    )
    async with actors(store, tmp_path) as d:
        await d.supervisor.submit(spec)
        row = await wait_status(store, spec.id, FINAL)
        assert d.supervisor.ports_leased == 0
    assert row["status"] == "completed", row
    assert row["cause"] is None and row["exit_code"] == 0 and row["sim_time"] == 120.0
    assert [s for s, _ in history(store, spec.id)] == ["queued", "starting", "running", "completed"]
    samples = store.samples(spec.id)
    # One sample every 10 steps of 1 s, up to the end; every one of them whole.
    assert [s["sim_time"] for s in samples] == [10.0 * k for k in range(1, 13)]
    assert all(set(s) == set(SAMPLE_COLUMNS) for s in samples)
    stats = store.statistics(spec.id)
    assert stats is not None
    assert sum(s["departed"] for s in samples) == int(stats["vehicles"]["inserted"])
    trips = store.rows(partition_name("trips", spec.id)) or []
    trajectories = store.rows(partition_name("trajectories", spec.id)) or []
    assert len(trips) == int(stats["vehicleTripStatistics"]["count"]) > 0
    assert trajectories and all(r["vehicle"] and r["time"] <= 120.0 for r in trajectories)
    assert not (d.temp_root / spec.id).exists()


async def test_a_session_refused_rows_fails_write_failed(scenarios, tmp_path: Path):
    """The store refuses the session's samples (as a CHECK would): it ends failed, not completed
    with rows missing."""
    store = MemStore()
    spec = spec_of(store, scenarios["grid3"], "grid3", end=60.0)
    store.refuse = lambda table, row: "refused for the test" if table == "samples" else None
    async with actors(store, tmp_path) as d:
        await d.supervisor.submit(spec)
        row = await wait_status(store, spec.id, FINAL)
    assert (row["status"], row["cause"]) == ("failed", "write_failed"), row
    assert "refused for the test" in row["error"]
    assert store.samples(spec.id) == []


async def test_a_running_session_is_stopped(scenarios, tmp_path: Path):
    store = MemStore()
    spec = spec_of(store, scenarios["long"], "long")
    async with actors(store, tmp_path) as d:
        await d.supervisor.submit(spec)
        await wait_status(store, spec.id, {"running"})
        assert await d.supervisor.stop(spec.id) == "running"
        row = await wait_status(store, spec.id, FINAL, timeout=30)
        deadline = time.monotonic() + 30
        while d.supervisor.running_count or d.supervisor.ports_leased:
            assert time.monotonic() < deadline, "the stopped session was never cleaned up"
            await asyncio.sleep(0.05)
    assert row["status"] == "stopped" and row["ended_at"] is not None, row
    assert history(store, spec.id)[-1] == ("stopped", "stop requested")
    assert not (d.temp_root / spec.id).exists()


async def test_sessions_beyond_max_running_wait_their_turn_in_order(scenarios, tmp_path: Path):
    store = MemStore()
    first, second, third = (spec_of(store, scenarios["long"], "long") for _ in range(3))
    async with actors(store, tmp_path, max_running=1) as d:
        await d.supervisor.submit(first, second, third)
        await wait_status(store, first.id, {"running"})
        await asyncio.sleep(1.0)  # time enough for a second start, were one allowed
        assert d.supervisor.queued_count == 2
        assert [await store.get_status(s.id) for s in (second, third)] == [Status.QUEUED] * 2
        # A queued session stops at once, and never runs.
        assert await d.supervisor.stop(third.id) == "queued"
        assert (store.session(third.id) or {})["status"] == "stopped"
        # The first one's slot goes to the next in line.
        await d.supervisor.stop(first.id)
        await wait_status(store, second.id, {"running"})
        assert (store.session(first.id) or {})["status"] == "stopped"
        await d.supervisor.stop(second.id)
        await wait_status(store, second.id, FINAL, timeout=30)
    assert history(store, third.id) == [
        ("queued", "submitted"),
        ("stopped", "stopped while queued"),
    ]
    assert [s for s, _ in history(store, second.id)] == ["queued", "starting", "running", "stopped"]


async def _left_running(
    store: MemStore, built: Scenario, *, pid: int | None, started_at: float | None, **request: Any
) -> SessionSpec:
    """A session as a daemon that died under it left it: running, with its SUMO's pid."""
    spec = spec_of(store, built, "grid3", **request)
    await store.insert_sessions([spec.db_row()])
    await transition(store, spec.id, Status.STARTING, "admitted (attempt 1)", started_at=NOW)
    await transition(store, spec.id, Status.RUNNING, "traci connected")
    await store.set_process(spec.id, 12345, pid, started_at)
    return spec


async def test_recovery_fails_or_reruns_what_a_dead_daemon_left_running(scenarios, tmp_path: Path):
    """The store says two sessions are running, with no daemon running them: the one that
    asked to fail is failed (its orphaned SUMO, still alive, is killed), the one that asked to
    rerun is run again from the start (its first attempt's rows replaced), and a queued one
    runs in its turn. A leftover session dir goes."""
    store = MemStore()
    grid3 = scenarios["grid3"]
    orphan = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        started_at = psutil.Process(orphan.pid).create_time()
        fail = await _left_running(
            store, grid3, pid=orphan.pid, started_at=started_at, on_interrupt="fail"
        )
        rerun = await _left_running(store, grid3, pid=None, started_at=None, end=60.0)
        # Its first attempt's rows: a sample the second attempt never writes.
        await store.copy_rows(
            "samples", SAMPLE_COLUMNS, [(rerun.id, 9999.0, 1, 1, 0, 1.0, 0, 0.0, 0)]
        )
        waiting = spec_of(store, grid3, "grid3", end=30.0)
        await store.insert_sessions([waiting.db_row()])
        (tmp_path / "sessions" / "leftover").mkdir(parents=True)
        async with actors(store, tmp_path, recover=True) as d:
            assert not (d.temp_root / "leftover").exists()
            assert orphan.wait(timeout=10) is not None
            rows = {s.id: await wait_status(store, s.id, FINAL) for s in (fail, rerun, waiting)}
    finally:
        orphan.kill()
        orphan.wait()
    assert (rows[fail.id]["status"], rows[fail.id]["cause"]) == ("failed", "daemon_restarted")
    assert rows[rerun.id]["status"] == "completed" and rows[rerun.id]["attempt"] == 2
    assert ("queued", "daemon restarted: rerun, attempt 2 of 3") in history(store, rerun.id)
    assert history(store, rerun.id)[-1][0] == "completed"
    times = [s["sim_time"] for s in store.samples(rerun.id)]
    assert times == [10.0 * k for k in range(1, 7)]  # attempt 2's rows only
    assert rows[waiting.id]["status"] == "completed"
