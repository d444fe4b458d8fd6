"""Recorded data: trajectories, trips and edge data checked against SUMO's own output files for the
same run, the summary against SUMO's statistic output, the live stream, exports and deletion."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import math
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import defusedxml.ElementTree as safe_et
import psutil
import pytest

from supervisor import feeds
from tests.harness.http import (
    create_session,
    read_stream,
    recorded_session,
    samples,
    upload,
    wait_status,
)
from tests.harness.poll import DEADLINE_S, POLL_S, wait_until
from tests.harness.scenarios import SUMO_BIN, Scenario

RECORD_ALL = ["samples", "trajectories", "trips", "edges"]


def bare_run_with_outputs(scenario: Scenario, workdir: Path, *, seed: int) -> dict[str, Any]:
    """SUMO alone, writing the same outputs the daemon asks it for, into `workdir`."""
    shutil.copytree(scenario.root, workdir)
    (workdir / "edges.add.xml").write_text(
        '<additional><edgeData id="e" period="60.0" file="edges.csv"/></additional>'
    )
    subprocess.run(
        [
            SUMO_BIN / "sumo", "-c", scenario.config, "--seed", str(seed),
            "--fcd-output", "fcd.csv", "--fcd-output.attributes", "x,y,speed,angle,lane",
            "--device.fcd.period", "1.0", "--tripinfo-output", "trips.csv",
            "--additional-files", "edges.add.xml", "--statistic-output", "stats.xml",
            "--duration-log.statistics", "true", "--summary-output", "summary.csv",
        ],
        cwd=workdir, check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    def rows(name: str, key: str) -> list[dict[str, str]]:
        with open(workdir / name, newline="") as fh:
            return [r for r in csv.DictReader(fh, delimiter=";") if r[key]]

    stats = ET.parse(workdir / "stats.xml").getroot()
    return {
        "fcd": rows("fcd.csv", "vehicle_id"),
        "trips": rows("trips.csv", "tripinfo_id"),
        "edges": rows("edges.csv", "edge_id"),
        "summary": {float(r["step_time"]): r for r in rows("summary.csv", "step_time")},
        "vehicles": stats.find("vehicles").attrib,  # type: ignore[union-attr]
        "trip_stats": stats.find("vehicleTripStatistics").attrib,  # type: ignore[union-attr]
        "teleports": stats.find("teleports").attrib,  # type: ignore[union-attr]
    }


async def read_csv(http: aiohttp.ClientSession, url: str) -> list[dict[str, str]]:
    async with http.get(url) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/csv")
        return list(csv.DictReader(io.StringIO(await r.text())))


def close(a: float, b: float, tol: float = 0.011) -> bool:
    return math.isclose(a, b, abs_tol=tol, rel_tol=1e-3)


async def test_recorded_data_matches_sumo_files_and_statistics(
    daemons, db_url, http, scenarios, tmp_path
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    session = await create_session(
        http, daemon, template="grid4", seed=7, record=RECORD_ALL, sample_detail="exact"
    )
    await wait_status(http, daemon, session["id"], "completed", timeout=120)
    bare = bare_run_with_outputs(scenarios["grid4"], tmp_path / "bare", seed=7)
    url = f"{daemon.url}/v1/sessions/{session['id']}"

    trajectories = await read_csv(http, f"{url}/trajectories.csv")
    assert len(trajectories) == len(bare["fcd"])
    assert close(
        sum(float(r["speed"]) for r in trajectories),
        sum(float(r["vehicle_speed"]) for r in bare["fcd"]),
    )
    assert {r["vehicle"] for r in trajectories} == {r["vehicle_id"] for r in bare["fcd"]}

    trips = await read_csv(http, f"{url}/trips.csv")
    assert len(trips) == len(bare["trips"])
    assert close(
        sum(float(r["duration"]) for r in trips),
        sum(float(r["tripinfo_duration"]) for r in bare["trips"]),
    )

    edges = await read_csv(http, f"{url}/edges.csv")
    # The session ends when no vehicle is left (740 s), bare SUMO runs on to its end (900 s):
    # every interval the session had is there, edge by edge.
    horizon = max(float(r["interval_begin"]) for r in edges)
    assert len(edges) == sum(1 for r in bare["edges"] if float(r["interval_begin"]) <= horizon)
    assert sum(int(r["entered"]) for r in edges) == sum(
        int(r["edge_entered"]) for r in bare["edges"]
    )

    exported_samples = await read_csv(http, f"{url}/samples.csv")
    stored = await samples(http, daemon, session["id"])
    assert len(exported_samples) == len(stored)
    # Each sample is SUMO's own summary of its last step (the one before its sim time).
    inserted = 0
    for s in stored:
        step = bare["summary"][s["sim_time"] - 1]
        assert s["vehicles"] == int(step["step_running"])
        assert s["halting"] == int(step["step_halting"])
        assert s["mean_speed"] == max(float(step["step_meanSpeed"]), 0.0)
        assert s["departed"] == int(step["step_inserted"]) - inserted
        inserted = int(step["step_inserted"])
    # A sample's waiting_time is the interval's vehicle-seconds of halting: every vehicle arrived,
    # so together they are the trips' waiting times (within 1%: SUMO's halting count and its
    # per-trip waiting time part ways for a vehicle halting in its insertion or arrival step).
    waited = sum(float(r["tripinfo_waitingTime"]) for r in bare["trips"])
    assert waited > 1000
    assert math.isclose(sum(s["waiting_time"] for s in stored), waited, rel_tol=0.01)

    async with http.get(f"{url}/summary") as r:
        summary = await r.json()
    ts, vehicles = bare["trip_stats"], bare["vehicles"]
    assert summary["inserted"] == int(vehicles["inserted"])
    assert summary["running"] == int(vehicles["running"])
    assert summary["arrived"] == summary["trips"] == int(ts["count"])
    assert summary["teleports"] == int(bare["teleports"]["total"])
    assert close(summary["mean_duration"], float(ts["duration"]))
    assert close(summary["mean_route_length"], float(ts["routeLength"]))
    assert close(summary["mean_speed"], float(ts["speed"]))
    assert close(summary["mean_waiting_time"], float(ts["waitingTime"]))
    assert close(summary["mean_time_loss"], float(ts["timeLoss"]))
    assert close(summary["mean_depart_delay"], float(ts["departDelay"]))
    durations = sorted(float(r["tripinfo_duration"]) for r in bare["trips"])
    assert durations[int(0.95 * (len(durations) - 1))] <= summary["p95_duration"] <= durations[-1]
    assert close(
        summary["total_distance"], sum(float(r["tripinfo_routeLength"]) for r in bare["trips"]), 1
    )
    assert close(
        summary["throughput_per_hour"], summary["arrived"] / (summary["sim_seconds"] / 3600)
    )


async def test_stream_delivers_every_sample_in_order_to_two_watchers(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    session = await create_session(http, daemon, template="grid4", seed=7, sample_every=1)
    url = f"{daemon.url}/v1/sessions/{session['id']}/stream"
    first, second = await asyncio.wait_for(
        asyncio.gather(read_stream(http, url), read_stream(http, url)), 120
    )
    stored = await samples(http, daemon, session["id"])
    assert len(stored) > 100
    for events in (first, second):
        streamed = [data for name, data in events if name == "sample"]
        assert streamed == stored  # every sample, in order, no repeats
        statuses = [data["status"] for name, data in events if name == "status"]
        assert statuses[-1] == "completed"
        assert events[-1][0] == "status"

    # Many watchers, one feed: nothing is left running after the streams ended.
    deadline = asyncio.get_running_loop().time() + 10
    while await stream_feeds(http, daemon):
        assert asyncio.get_running_loop().time() < deadline, "a stream feed outlived its watchers"
        await asyncio.sleep(0.05)


async def stream_feeds(http: aiohttp.ClientSession, daemon: Any) -> int:
    async with http.get(f"{daemon.url}/healthz") as r:
        return int((await r.json())["stream_feeds"])


async def test_a_watcher_joining_late_gets_the_whole_history(daemons, db_url, http, scenarios):
    """More samples than a watcher's queue holds are already stored when it connects."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(
        http, daemon, template="long", seed=2, end=100_000, sample_every=1
    )
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    deadline = asyncio.get_running_loop().time() + 120
    while len(await samples(http, daemon, session["id"])) < feeds.WATCHER_QUEUE + 500:
        assert asyncio.get_running_loop().time() < deadline, "too few samples"
        await asyncio.sleep(0.1)
    async with http.post(f"{url}/pause") as r:
        assert r.status == 200

    watcher = asyncio.create_task(read_stream(http, f"{url}/stream"))
    while not await stream_feeds(http, daemon):  # connected, its feed started
        assert asyncio.get_running_loop().time() < deadline, "the stream never started"
        await asyncio.sleep(0.05)
    async with http.post(f"{url}/resume") as r:
        assert r.status == 200
    async with http.post(f"{url}/stop") as r:
        assert r.status == 202
    events = await asyncio.wait_for(watcher, 120)
    assert [name for name, _ in events if name == "error"] == []  # never cut off as too slow
    stored = await samples(http, daemon, session["id"])
    assert [data for name, data in events if name == "sample"] == stored


@pytest.mark.slow
async def test_export_streams_without_loading_into_memory(daemons, db_url, http, scenarios):
    # A short statement timeout, which an export outlives, and a short stall bound.
    timeout_s, stall_s = 1.5, 6.0
    settings = {
        "SUMO_SUPERVISOR_DB_COMMAND_TIMEOUT_S": str(timeout_s),
        "SUMO_SUPERVISOR_EXPORT_STALL_S": str(stall_s),
        # Every client here is 127.0.0.1: the per-client cap is out of the way of the
        # daemon-wide one tested below.
        "SUMO_SUPERVISOR_MAX_EXPORTS_PER_CLIENT": "10",
        # A fifth export is refused at once rather than waiting for a slot (that it gets
        # one once idle holders are cut off is test_readers'), and the minimum rate is out
        # of the way of the stall bound and of the slow client below.
        "SUMO_SUPERVISOR_EXPORT_SLOT_WAIT_S": "0",
        "SUMO_SUPERVISOR_EXPORT_MIN_RATE_BYTES_S": "0",
    }
    daemon = await daemons.start(db_url, env=settings)
    n = 2_000_000
    session = await recorded_session(http, daemon, db_url, scenarios, n)
    daemon_proc = psutil.Process(daemon.proc.pid)
    before = daemon_proc.memory_info().rss
    peak = before
    lines = 0
    size = 0
    async with http.get(f"{daemon.url}/v1/sessions/{session['id']}/trajectories.csv") as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(1 << 20):
            size += len(chunk)
            lines += chunk.count(b"\n")
            peak = max(peak, daemon_proc.memory_info().rss)
    assert lines == n + 1  # header + rows
    assert size > 80_000_000
    # Far less than the export's size stayed in the daemon at any time.
    assert peak - before < 40_000_000, (before, peak, size)

    # A client that leaves half-way is logged as gone, not as a database outage.
    url = f"{daemon.url}/v1/sessions/{session['id']}/trajectories.csv"
    async with aiohttp.ClientSession() as leaving, leaving.get(url) as r:
        await r.content.readexactly(1 << 20)
    await wait_until(lambda: daemon.events("api_client_gone"), "the export to notice")
    assert daemon.events("api_database_unavailable") == []

    # A slow client gets the whole export, however much longer than the statement timeout it
    # takes: a megabyte, then a pause, again and again (the pauses are the scenario).
    lines = 0
    started = time.monotonic()
    async with http.get(url) as r:
        while time.monotonic() - started < 3 * timeout_s:
            lines += (await r.content.readexactly(1 << 20)).count(b"\n")
            await asyncio.sleep(1.0)
        while chunk := await r.content.read(1 << 20):
            lines += chunk.count(b"\n")
    assert lines == n + 1

    # A client that stops reading is cut off after the stall bound: its body ends unfinished,
    # so it cannot take a part for the whole.
    async with aiohttp.ClientSession() as stalled, stalled.get(url) as r:
        await r.content.readexactly(1 << 20)
        await wait_until(lambda: daemon.events("api_client_stalled"), "the stall to be noticed")
        with pytest.raises(aiohttp.ClientPayloadError):
            while await r.content.read(1 << 20):
                pass

    # Four exports at once at most (each holds a database connection while its client reads):
    # a fifth is told to come back, and comes back to a free slot once they are gone. On a
    # daemon with the default stall bound: on a busy machine, opening the five took longer than
    # 6 s, and the stall bound freed a slot before the fifth asked.
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    daemon = await daemons.start(db_url, env={**settings, "SUMO_SUPERVISOR_EXPORT_STALL_S": "60"})
    url = f"{daemon.url}/v1/sessions/{session['id']}/trajectories.csv"
    async with contextlib.AsyncExitStack() as held:
        for _ in range(4):
            client = await held.enter_async_context(aiohttp.ClientSession())
            export = await held.enter_async_context(client.get(url))
            await export.content.readexactly(1 << 16)
        async with http.get(url) as r:
            assert r.status == 503
            assert "4 exports are running" in (await r.json())["error"]
    deadline = time.monotonic() + DEADLINE_S
    while True:
        async with aiohttp.ClientSession() as client, client.get(url) as r:
            if r.status == 200:
                break
        assert time.monotonic() < deadline, "no export slot came free"
        await asyncio.sleep(POLL_S)
    assert daemon.events("api_database_unavailable") == []
    assert daemon.events("api_internal_error") == []


@pytest.mark.slow
async def test_database_restart_mid_session_loses_no_row(daemons, http, scenarios, tmp_path):
    """PostgreSQL stops for a few seconds while a recording session runs, then comes back."""
    import pgserver
    from pgserver._commands import pg_ctl

    pgdata = tmp_path / "pg"
    server = pgserver.get_server(pgdata, cleanup_mode="stop")
    streaming: aiohttp.ClientSession | None = None
    watcher: asyncio.Task[list[tuple[str, Any]]] | None = None
    try:
        daemon = await daemons.start(server.get_uri())
        await upload(http, daemon, "long", scenarios["long"])
        session = await create_session(
            http, daemon, template="long", seed=3, end=20000, record=["samples", "trajectories"]
        )
        await wait_status(http, daemon, session["id"], "running")
        await wait_until_samples(http, daemon, session["id"])
        # A live stream watches through the outage (its client has no overall timeout).
        streaming = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_read=120))
        stream_url = f"{daemon.url}/v1/sessions/{session['id']}/stream"
        watcher = asyncio.create_task(read_stream(streaming, stream_url))
        deadline = time.monotonic() + DEADLINE_S
        while not await stream_feeds(http, daemon):
            assert time.monotonic() < deadline, "the stream never started"
            await asyncio.sleep(POLL_S)
        await asyncio.to_thread(
            pg_ctl, ["-w", "stop", "-m", "fast"], pgdata=pgdata, user=server.system_user
        )
        async with http.get(f"{daemon.url}/healthz") as r:
            assert r.status == 503
            assert (await r.json())["status"] == "unavailable"
        await asyncio.sleep(10)  # the outage itself
        await asyncio.to_thread(server.ensure_postgres_running)
        done = await wait_status(http, daemon, session["id"], {"completed", "failed"}, 180)
        assert done["status"] == "completed", done
        assert any(e["event"] == "batch_retry" or e["event"] == "db_retry" for e in daemon.lines)
        bare = bare_run_with_outputs_end(scenarios["long"], tmp_path / "bare", seed=3, end=20000)
        stored = await samples(http, daemon, session["id"])
        assert sum(s["departed"] for s in stored) == bare["inserted"]
        async with http.get(f"{daemon.url}/v1/sessions/{session['id']}/summary") as r:
            summary = await r.json()
        assert summary["inserted"] == bare["inserted"]
        conn = await asyncpg.connect(server.get_uri())
        try:
            count = await conn.fetchval(
                "SELECT count(*) FROM trajectories WHERE session_id = $1", session["id"]
            )
        finally:
            await conn.close()
        assert count == bare["fcd_rows"]
        # The stream went on through the outage, to the end: every sample, then 'completed'.
        # An outage past the lease (7 s) reruns the session: the stream then says so (a status
        # of the next attempt) and gives that attempt's samples from the start. Each attempt's
        # samples are the stored ones (the same seed), the last attempt's all of them.
        events = await asyncio.wait_for(watcher, 60)
        attempts: dict[int, list[Any]] = {}
        attempt = 1
        for name, data in events:
            if name == "status":
                attempt = data["attempt"]
            elif name == "sample":
                attempts.setdefault(attempt, []).append(data)
        *earlier, last = attempts.values()
        assert last == stored
        assert all(run == stored[: len(run)] for run in earlier)
        assert events[-1][0] == "status" and events[-1][1]["status"] == "completed"
        # What the libraries said of the outage too is one JSON event per line.
        assert [line for line in daemon.raw if not line.startswith("{")] == []
    finally:
        if watcher is not None:
            watcher.cancel()
        if streaming is not None:
            await streaming.close()
        # Before its database goes: a daemon (and its SUMOs) must not outlive the server.
        daemons.kill_all()
        server.cleanup()


async def wait_until_samples(http: aiohttp.ClientSession, daemon: Any, session_id: str) -> None:
    deadline = asyncio.get_running_loop().time() + 60
    while not await samples(http, daemon, session_id):
        assert asyncio.get_running_loop().time() < deadline, "no samples written"
        await asyncio.sleep(0.05)


def bare_run_with_outputs_end(
    scenario: Scenario, workdir: Path, *, seed: int, end: float
) -> dict[str, int]:
    shutil.copytree(scenario.root, workdir)
    subprocess.run(
        [
            SUMO_BIN / "sumo", "-c", scenario.config, "--seed", str(seed), "--end", str(end),
            "--fcd-output", "fcd.csv", "--fcd-output.attributes", "x,y,speed,angle,lane",
            "--device.fcd.period", "1.0", "--statistic-output", "stats.xml",
        ],
        cwd=workdir, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    with open(workdir / "fcd.csv", newline="") as fh:
        fcd_rows = sum(1 for r in csv.DictReader(fh, delimiter=";") if r["vehicle_id"])
    stats = ET.parse(workdir / "stats.xml").getroot()
    return {"inserted": int(stats.find("vehicles").attrib["inserted"]), "fcd_rows": fcd_rows}  # type: ignore[union-attr]


async def test_delete_compare_and_plot(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    await upload(http, daemon, "long", scenarios["long"])
    a = await create_session(http, daemon, template="grid4", seed=7, record=RECORD_ALL)
    b = await create_session(http, daemon, template="grid4", seed=8, record=["trips"])
    running = await create_session(http, daemon, template="long", record=["trajectories"])
    for s in (a, b):
        await wait_status(http, daemon, s["id"], "completed")

    async with http.get(
        f"{daemon.url}/v1/compare", params={"sessions": f"{a['id']},{b['id']}"}
    ) as r:
        compared = await r.json()
        assert r.status == 200
    sa, sb = compared["sessions"]
    diff = compared["differences"][0]
    assert diff["against"] == a["id"] and diff["id"] == b["id"]
    assert diff["arrived"] == sb["arrived"] - sa["arrived"]
    assert math.isclose(diff["mean_duration"], sb["mean_duration"] - sa["mean_duration"])

    async with http.get(
        f"{daemon.url}/v1/sessions/{a['id']}/plot.svg", params={"metric": "mean_speed"}
    ) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/svg+xml"
        svg = safe_et.fromstring(await r.read())
    assert svg.tag.endswith("svg")

    await wait_status(http, daemon, running["id"], "running")
    async with http.delete(f"{daemon.url}/v1/sessions/{running['id']}") as r:
        assert r.status == 409
        assert "stop it before deleting" in (await r.json())["error"]

    async with http.delete(f"{daemon.url}/v1/sessions/{a['id']}") as r:
        assert r.status == 200
    async with http.get(f"{daemon.url}/v1/sessions/{a['id']}") as r:
        assert r.status == 404
    conn = await asyncpg.connect(db_url)
    try:
        left = await conn.fetchval(
            "SELECT count(*) FROM pg_class WHERE relname LIKE $1", f"%{a['id'].replace('-', '_')}%"
        )
        assert left == 0
        assert (
            await conn.fetchval("SELECT count(*) FROM samples WHERE session_id = $1", a["id"]) == 0
        )
        # The other session's rows are untouched.
        assert await conn.fetchval("SELECT count(*) FROM trips WHERE session_id = $1", b["id"]) > 0
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        (
            "POST",
            "/v1/sessions",
            {"template": "grid3", "record": ["video"]},
            400,
            "record: unknown video",
        ),
        ("POST", "/v1/sessions", {"template": "grid3", "record": "trips"}, 400, "must be a list"),
        (
            "POST",
            "/v1/sessions",
            {"template": "grid3", "trajectory_period": 0},
            400,
            "trajectory_period",
        ),
        ("GET", "/v1/compare?sessions=one", None, 400, "2 to 50 session ids"),
        ("GET", "/v1/compare?sessions=a,b", None, 404, "no session 'a'"),
        ("GET", "/v1/sessions/nope/summary", None, 404, "no session"),
        ("GET", "/v1/sessions/nope/stream", None, 404, "no session"),
        ("GET", "/v1/sessions/nope/trips.csv", None, 404, "no session"),
        ("DELETE", "/v1/sessions/nope", None, 404, "no session"),
    ],
)
async def test_bad_data_requests(shared_grid3_daemon, http, method, path, body, status, message):
    daemon = shared_grid3_daemon
    async with http.request(method, f"{daemon.url}{path}", json=body) as r:
        got = await r.json()
        assert r.status == status, got
    assert message in got["error"]


async def test_bad_plot_metric_and_export_kind(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    s = await create_session(http, daemon, template="grid3", end=20)
    async with http.get(f"{daemon.url}/v1/sessions/{s['id']}/plot.svg?metric=colour") as r:
        assert r.status == 400 and "metric must be one of" in (await r.json())["error"]
    async with http.get(f"{daemon.url}/v1/sessions/{s['id']}/photos.csv") as r:
        assert r.status == 404 and "no export 'photos'" in (await r.json())["error"]
