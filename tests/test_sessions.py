"""Sessions end to end: a real daemon process, real PostgreSQL, real `sumo`, real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess

import asyncpg
import psutil

from actors.ports import EPHEMERAL_RANGE, port_is_free
from tests.harness.daemon import next_port_range, pid_alive, sumo_children
from tests.harness.http import create_session, get_session, samples, upload, wait_status
from tests.harness.poll import wait_until
from tests.harness.scenarios import SUMO_BIN, bare_sumo_totals


async def test_six_sessions_of_different_scenarios_match_bare_sumo(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url, max_running=3)
    for name in ("grid4", "grid3", "nested"):
        await upload(http, daemon, name, scenarios[name])
    runs = [
        ("grid4", 7, None),
        ("grid4", 8, 300.0),  # cut short by `end`: vehicles still running at the end
        ("grid3", 11, None),
        ("grid3", 12, None),
        ("nested", 5, None),
        ("nested", 6, 250.0),
    ]
    created = [
        await create_session(http, daemon, template=t, seed=seed, end=end, sample_every=5)
        for t, seed, end in runs
    ]
    # All six were accepted at once: some wait in the queue behind max_running=3.
    assert {s["status"] for s in created} <= {"queued", "starting"}
    emptied = 0
    for (template, seed, end), session in zip(runs, created, strict=True):
        done = await wait_status(http, daemon, session["id"], "completed", timeout=120)
        rows = await samples(http, daemon, session["id"])
        expected = bare_sumo_totals(scenarios[template], seed=seed, end=end)
        assert sum(r["arrived"] for r in rows) == expected["arrived"], (template, seed, end)
        assert sum(r["departed"] for r in rows) == expected["inserted"], (template, seed, end)
        assert rows[-1]["vehicles"] == expected["running"]
        times = [r["sim_time"] for r in rows]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert done["progress"] == 1.0 and done["exit_code"] == 0 and done["error"] is None
        assert done["sim_time"] == times[-1]
        if end is not None:
            assert done["sim_time"] == end
        ended = [e for e in daemon.events("session_ended") if e["session_id"] == session["id"]]
        if ended[0]["reason"] == "no vehicles left to simulate":
            # It ended at the first sample with no vehicle left, not some jump later.
            emptied += 1
            assert rows[-1]["vehicles"] == 0 and rows[-2]["vehicles"] > 0
    assert emptied > 0
    # Everything a session had is gone: temp dirs, ports, processes.
    assert list((daemon.state_dir / "sessions").iterdir()) == []
    assert sumo_children(daemon.proc.pid) == []


async def test_queue_admits_in_fifo_order_up_to_max_running(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=1)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    ids = [
        (await create_session(http, daemon, template="grid3", seed=i, end=200))["id"]
        for i in range(4)
    ]
    async with http.get(f"{daemon.url}/v1/sessions", params={"status": "queued"}) as r:
        queued = {s["id"] for s in (await r.json())["sessions"]}
    assert set(ids[1:]) <= queued | {ids[1]}  # the first is admitted at once, the rest wait
    finished = [await wait_status(http, daemon, i, "completed") for i in ids]
    starts = [s["started_at"] for s in finished]
    assert starts == sorted(starts)
    # With max_running=1 each SUMO started only after the one before it had exited (the session
    # before may still be writing down its end: that holds no SUMO).
    sumo_started = {e["session_id"]: e["timestamp"] for e in daemon.events("sumo_started")}
    sumo_exited = {e["session_id"]: e["timestamp"] for e in daemon.events("sumo_exited")}
    assert all(sumo_exited[ids[i]] <= sumo_started[ids[i + 1]] for i in range(len(ids) - 1))
    admitted = [e["session_id"] for e in daemon.events("session_admitted")]
    assert admitted == ids


def _autogroup_nice(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/autogroup") as f:  # "/autogroup-123 nice 7"
            return int(f.read().split()[-1])
    except FileNotFoundError:  # a kernel without autogroups
        return None


async def test_sumo_runs_below_the_daemons_cpu_priority(daemons, db_url, http, scenarios):
    # When simulations fill every core, the daemon (API, writer, TraCI threads) must still get
    # the CPU at once: its SUMO processes run niced, by the configured amount.
    daemon = await daemons.start(db_url, env={"SUMO_SUPERVISOR_SUMO_NICE": "7"})
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", mode="stepped", idle_timeout_s=60)
    running = await wait_status(http, daemon, s["id"], "running")
    assert psutil.Process(running["pid"]).nice() == 7
    # Linux with autogroups schedules SUMO's session as one group: its nice must be set too.
    assert _autogroup_nice(running["pid"]) in (None, 7)
    assert psutil.Process(daemon.proc.pid).nice() == psutil.Process().nice()
    async with http.post(f"{daemon.url}/v1/sessions/{s['id']}/stop") as r:
        assert r.status == 202, await r.text()
    await wait_status(http, daemon, s["id"], "stopped")


async def test_stop_running_and_queued_sessions(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=1)
    await upload(http, daemon, "long", scenarios["long"])
    running = await create_session(http, daemon, template="long", sample_every=50)
    queued = await create_session(http, daemon, template="long")
    session = await wait_status(http, daemon, running["id"], "running")
    port, pid = session["port"], session["pid"]

    async with http.post(f"{daemon.url}/v1/sessions/{queued['id']}/stop") as r:
        assert r.status == 202
    assert (await get_session(http, daemon, queued["id"]))["status"] == "stopped"

    async with http.post(f"{daemon.url}/v1/sessions/{running['id']}/stop") as r:
        assert r.status == 202
    stopped = await wait_status(http, daemon, running["id"], "stopped", timeout=5)
    assert stopped["ended_at"] is not None and stopped["sim_time"] > 0
    await wait_until(lambda: not pid_alive(pid), "sumo to exit", timeout=5)
    await wait_until(lambda: port_is_free(port), "port to be free", timeout=5)
    await wait_until(
        lambda: not (daemon.state_dir / "sessions" / running["id"]).exists(), "temp dir removal"
    )
    # Its samples up to the stop are kept.
    assert len(await samples(http, daemon, running["id"])) > 0
    async with http.get(f"{daemon.url}/v1/sessions/{running['id']}/events") as r:
        history = [e["status"] for e in (await r.json())["events"]]
    assert history == ["queued", "starting", "running", "stopped"]
    # Stopping again is a conflict, not a crash.
    async with http.post(f"{daemon.url}/v1/sessions/{running['id']}/stop") as r:
        assert r.status == 409
        assert "already ended" in (await r.json())["error"]


async def test_wall_clock_timeout(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(http, daemon, template="long", max_wall_s=1.5)
    ended = await wait_status(http, daemon, session["id"], {"timed_out", "failed", "completed"})
    assert ended["status"] == "timed_out"
    assert ended["cause"] == "timeout"
    assert not pid_alive(ended["pid"])


async def test_sumo_killed_fails_that_session_only(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    await upload(http, daemon, "grid4", scenarios["grid4"])
    victim = await create_session(http, daemon, template="long")
    bystander = await create_session(http, daemon, template="long", label="bystander")
    victim = await wait_status(http, daemon, victim["id"], "running")
    await wait_status(http, daemon, bystander["id"], "running")
    os.kill(victim["pid"], signal.SIGKILL)
    failed = await wait_status(http, daemon, victim["id"], {"failed", "completed", "stopped"}, 10)
    assert failed["status"] == "failed"
    assert failed["cause"] == "sumo_exited"
    assert failed["exit_code"] == -signal.SIGKILL
    assert "SIGKILL" in failed["error"]
    assert (await get_session(http, daemon, bystander["id"]))["status"] == "running"
    # The daemon goes on: a new session still runs to completion.
    fresh = await create_session(http, daemon, template="grid4", seed=7)
    await wait_status(http, daemon, fresh["id"], "completed")


async def test_port_held_by_another_process_is_skipped(daemons, db_url, http, scenarios):
    first, last = next_port_range(5)  # this test's own, whatever other workers run
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("0.0.0.0", first))
    holder.listen()
    try:
        daemon = await daemons.start(db_url, traci_ports=(first, last))
        await upload(http, daemon, "grid3", scenarios["grid3"])
        session = await create_session(http, daemon, template="grid3", seed=1)
        done = await wait_status(http, daemon, session["id"], {"completed", "failed"})
        assert done["status"] == "completed", done
        assert first < done["port"] <= last
    finally:
        holder.close()


async def test_traci_ports_outgoing_connections_may_take_are_named_at_start(daemons, db_url):
    low, _high = map(int, EPHEMERAL_RANGE.read_text().split())
    inside = await daemons.start(db_url, traci_ports=(low + 100, low + 109))
    [warning] = inside.events("traci_ports_in_ephemeral_range")
    assert warning["shared"] == f"{low + 100}-{low + 109}"
    below = await daemons.start(db_url)  # the tests' own ranges lie below the kernel's
    assert below.events("traci_ports_in_ephemeral_range") == []


async def test_scenario_sumo_refuses_fails_with_its_message(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "broken", scenarios["broken"])
    session = await create_session(http, daemon, template="broken")
    failed = await wait_status(http, daemon, session["id"], {"failed", "completed"})
    assert failed["status"] == "failed"
    assert failed["cause"] == "config_invalid"
    assert "no_such_edge" in failed["error"]
    assert failed["exit_code"] == 1
    assert not (daemon.state_dir / "sessions" / session["id"]).exists()
    # SUMO's own words were re-logged under the session.
    assert any(
        "no_such_edge" in e["line"] for e in daemon.events("sumo_output", session_id=session["id"])
    )


async def test_restart_reconciles_from_the_database(daemons, db_url, http, scenarios, tmp_path):
    state = tmp_path / "state"
    ports = (21900, 21949)
    daemon = await daemons.start(db_url, state_dir=state, traci_ports=ports, max_running=1)
    await upload(http, daemon, "long", scenarios["long"])
    await upload(http, daemon, "grid3", scenarios["grid3"])
    # on_interrupt "fail": this test is about reconciliation; reruns are tested in test_faults.
    orphan = await create_session(http, daemon, template="long", on_interrupt="fail")
    waiting = await create_session(http, daemon, template="grid3", seed=2)
    orphan = await wait_status(http, daemon, orphan["id"], "running")
    # The daemon dies without any chance to clean up.
    daemon.signal(signal.SIGKILL)
    await daemon.wait_exit()
    assert (state / "sessions" / orphan["id"]).exists()

    again = await daemons.start(db_url, state_dir=state, traci_ports=ports, max_running=1)
    failed = await get_session(http, again, orphan["id"])
    assert failed["status"] == "failed"
    assert failed["cause"] == "daemon_restarted"
    await wait_until(lambda: not pid_alive(orphan["pid"]), "the orphaned sumo to be killed", 5)
    assert not (state / "sessions" / orphan["id"]).exists()
    # The session that was still queued runs now.
    await wait_status(http, again, waiting["id"], "completed")


async def test_sigterm_stops_everything_and_leaves_nothing(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=2)
    await upload(http, daemon, "long", scenarios["long"])
    running = [await create_session(http, daemon, template="long", seed=i) for i in range(2)]
    queued = await create_session(http, daemon, template="long", seed=9)
    running = [await wait_status(http, daemon, s["id"], "running") for s in running]
    children = sumo_children(daemon.proc.pid)
    assert len(children) == 2

    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(timeout=30) == 0

    for proc in children:
        assert not pid_alive(proc.pid)
    for s in running:
        assert port_is_free(s["port"])
    assert list((daemon.state_dir / "sessions").iterdir()) == []
    # The statuses are in the database: read them through a new daemon on the same database.
    # The queue is every node's: the session that waited still waits, and the next daemon
    # runs it.
    after = await daemons.start(db_url)
    for s in running:
        assert (await get_session(http, after, s["id"]))["status"] == "stopped"
    await wait_status(http, after, queued["id"], "running")
    assert daemon.events("daemon_stopped")[0]["clean"] is True


async def test_embedded_postgres_when_no_database_url(daemons, http, scenarios):
    daemon = await daemons.start(None)
    async with http.get(f"{daemon.url}/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"
    assert (daemon.state_dir / "pgdata" / "PG_VERSION").exists()
    await upload(http, daemon, "grid3", scenarios["grid3"])
    session = await create_session(http, daemon, template="grid3", seed=3, end=100)
    await wait_status(http, daemon, session["id"], "completed")
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    # The embedded server stopped with the daemon.
    assert not (daemon.state_dir / "pgdata" / "postmaster.pid").exists()


async def test_restart_kills_only_the_recorded_process(daemons, db_url, http, scenarios, tmp_path):
    """A SUMO still waiting for its TraCI client outlives a killed daemon; a restart kills it, but
    never a process that merely reuses a recorded pid (told apart by start time).

    The crash state is written into the database by hand, because the moment a daemon dies while
    its SUMO is still loading cannot be hit reliably; the processes themselves are real."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    ids = [
        (await create_session(http, daemon, template="grid3", end=20, on_interrupt="fail"))["id"]
        for _ in range(2)
    ]
    for i in ids:
        await wait_status(http, daemon, i, "completed")
    daemon.signal(signal.SIGKILL)
    await daemon.wait_exit()

    port = next_port_range()[0]
    orphan = subprocess.Popen(
        [SUMO_BIN / "sumo", "-c", scenarios["grid3"].config, "--remote-port", str(port)],
        cwd=scenarios["grid3"].root,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    bystander = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        conn = await asyncpg.connect(db_url)
        try:
            for session_id, proc, skew in ((ids[0], orphan, 0.0), (ids[1], bystander, -1000.0)):
                started = psutil.Process(proc.pid).create_time() + skew
                await conn.execute(
                    "UPDATE sessions SET status = 'running', pid = $2, pid_started_at = $3"
                    " WHERE id = $1",
                    session_id,
                    proc.pid,
                    started,
                )
        finally:
            await conn.close()
        again = await daemons.start(db_url)
        for session_id in ids:
            session = await get_session(http, again, session_id)
            assert session["status"] == "failed" and session["cause"] == "daemon_restarted"
        assert orphan.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for proc in (orphan, bystander):
            proc.kill()
            proc.wait()
