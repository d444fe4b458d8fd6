"""Readers with bounded memory (issue 14 D): samples, charts, live streams and exports of a large
session are read in pages and streamed, slow or idle readers are cut off, and none of them
holds the others out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from supervisor import db
from tests.harness.http import create_session, recorded_session, upload, wait_status
from tests.harness.poll import DEADLINE_S, POLL_S, wait_until

N_SAMPLES = 500_000
# Every client here is 127.0.0.1: the per-client caps stay out of the way unless a test is
# about them.
OPEN_CAPS = {
    "SUMO_SUPERVISOR_MAX_STREAMS_PER_CLIENT": "50",
    "SUMO_SUPERVISOR_MAX_EXPORTS_PER_CLIENT": "50",
}


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def reset_peak(pid: int) -> int:
    """Start the daemon's peak RSS (VmHWM) afresh at its current RSS; return that."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_kb(pid, "VmHWM")


def peak_rss(pid: int) -> int:
    return _status_kb(pid, "VmHWM")


async def large_session(
    http: aiohttp.ClientSession, daemon: Any, db_url: str, scenarios: Any
) -> str:
    """A completed session with N_SAMPLES more samples, written to the database directly."""
    await upload(http, daemon, "grid3", scenarios["grid3"])
    session = await create_session(http, daemon, template="grid3", end=10)
    await wait_status(http, daemon, session["id"], "completed")
    pool = await db.create_pool(db_url)
    try:
        await pool.execute(
            "INSERT INTO samples (session_id, sim_time, vehicles, departed, arrived, mean_speed,"
            " halting, waiting_time, teleports)"
            " SELECT $1, 1000 + g, g % 500, g % 3, g % 2, (g % 1000) / 50.0, g % 7, g % 11, 0"
            " FROM generate_series(0, $2 - 1) g",
            session["id"],
            N_SAMPLES,
        )
        total = await pool.fetchval(
            "SELECT count(*) FROM samples WHERE session_id = $1", session["id"]
        )
    finally:
        await pool.close()
    assert total >= N_SAMPLES
    return str(session["id"])


async def read_all(http: aiohttp.ClientSession, url: str) -> bytes:
    tail = b""
    count = 0
    # A bound on a hang: six of these at once take a minute or more on a busy machine.
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=300)) as r:
        assert r.status == 200, await r.text()
        async for chunk in r.content.iter_chunked(1 << 20):
            count += (tail[-16:] + chunk).count(b'"sim_time"') - tail[-16:].count(b'"sim_time"')
            tail = (tail + chunk)[-64:]
    return json.dumps({"count": count, "tail": tail.decode(errors="replace")}).encode()


async def open_silent_stream(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An SSE client that sends its request and never reads a byte of the answer."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    return reader, writer


@pytest.mark.slow
async def test_large_session_readers_stay_within_100_mb(daemons, db_url, http, scenarios):
    daemon = await daemons.start(
        db_url, env={**OPEN_CAPS, "SUMO_SUPERVISOR_STREAM_SEND_TIMEOUT_S": "2"}
    )
    session_id = await large_session(http, daemon, db_url, scenarios)
    base = f"{daemon.url}/v1/sessions/{session_id}"
    pid = daemon.proc.pid
    before = reset_peak(pid)

    # Six whole reads at once, of every sample (the old limit's largest page).
    results = await asyncio.gather(
        *(read_all(http, f"{base}/samples?limit=1000000") for _ in range(6))
    )
    for raw in results:
        result = json.loads(raw)
        assert result["count"] >= N_SAMPLES
        assert result["tail"].rstrip().endswith("]}")
    # A chart of them all, with a bounded number of points.
    async with http.get(f"{base}/plot.svg?metric=vehicles") as r:
        assert r.status == 200
        svg = await r.read()
    assert len(svg) < 2_000_000, len(svg)
    # Eight live streams that never read their backlog: cut off after the send timeout.
    silent = [await open_silent_stream(f"{base}/stream") for _ in range(8)]
    ports = {writer.get_extra_info("sockname")[1] for _, writer in silent}
    daemon_proc = psutil.Process(pid)

    def connected() -> set[int]:
        return {
            c.raddr.port
            for c in daemon_proc.net_connections(kind="tcp")
            if c.raddr and c.raddr.port in ports and c.status == psutil.CONN_ESTABLISHED
        }

    try:
        # Accepted by the daemon (its own sockets), and then closed by it.
        seen: set[int] = set()

        def all_taken() -> bool:
            seen.update(connected())
            return seen == ports

        await wait_until(all_taken, "the daemon to take the silent watchers")
        await wait_until(lambda: not connected(), "the daemon to cut off the silent watchers")
    finally:
        for _, writer in silent:
            writer.close()
    grown = peak_rss(pid) - before
    print(f"daemon peak RSS grew by {grown / 1e6:.1f} MB")
    assert grown < 100_000_000, grown

    # The paging contract holds: after= and limit= pick exactly the rows asked for.
    async with http.get(f"{base}/samples?after=1000.5&limit=3") as r:
        page = await r.json()
    assert [s["sim_time"] for s in page["samples"]] == [1001.0, 1002.0, 1003.0]
    assert daemon.events("api_internal_error") == []


async def test_watchers_capped_per_session(daemons, db_url, http, scenarios):
    daemon = await daemons.start(
        db_url, env={**OPEN_CAPS, "SUMO_SUPERVISOR_MAX_WATCHERS_PER_SESSION": "2"}
    )
    await upload(http, daemon, "grid3", scenarios["grid3"])
    session = await create_session(http, daemon, template="grid3", end=100000, mode="stepped")
    await wait_status(http, daemon, session["id"], "running")
    url = f"{daemon.url}/v1/sessions/{session['id']}/stream"
    async with contextlib.AsyncExitStack() as held:
        for _ in range(2):
            client = await held.enter_async_context(aiohttp.ClientSession())
            r = await held.enter_async_context(client.get(url))
            assert r.status == 200
        async with http.get(url) as r:
            assert r.status == 503, r.status
            assert "2 watchers" in (await r.json())["error"]
    # Once they are gone, a watcher gets in again.
    deadline = time.monotonic() + DEADLINE_S
    while True:
        async with http.get(url, timeout=aiohttp.ClientTimeout(sock_read=5)) as r:
            if r.status == 200:
                break
        assert time.monotonic() < deadline, "no watcher slot came free"
        await asyncio.sleep(POLL_S)
    await http.post(f"{daemon.url}/v1/sessions/{session['id']}/stop")


async def _trajectory_export(http, daemon, db_url, scenarios, rows: int) -> str:
    session = await recorded_session(http, daemon, db_url, scenarios, rows)
    return f"{daemon.url}/v1/sessions/{session['id']}/trajectories.csv"


@pytest.mark.slow
async def test_export_below_minimum_rate_is_cut_off(daemons, db_url, http, scenarios):
    daemon = await daemons.start(
        db_url,
        env={
            **OPEN_CAPS,
            "SUMO_SUPERVISOR_EXPORT_MIN_RATE_BYTES_S": "1000000",
            "SUMO_SUPERVISOR_EXPORT_RATE_WINDOW_S": "2",
        },
    )
    url = await _trajectory_export(http, daemon, db_url, scenarios, 1_000_000)
    # A client that keeps reading, a little at a time, far below the minimum rate (the pauses
    # are the scenario, not a synchronisation): it never stalls, yet it is cut off, and what it
    # has is plainly unfinished.
    async with aiohttp.ClientSession() as slow, slow.get(url) as r:
        assert r.status == 200
        deadline = time.monotonic() + DEADLINE_S
        while not daemon.events("api_client_too_slow"):
            assert await r.content.read(1 << 14), "the export ended"
            assert time.monotonic() < deadline, "the slow export was never cut off"
            await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientPayloadError):
            while await r.content.read(1 << 20):
                pass
    assert daemon.events("api_client_too_slow")
    # A client that reads at its pace gets all of it.
    lines = 0
    async with http.get(url) as r:
        async for chunk in r.content.iter_chunked(1 << 20):
            lines += chunk.count(b"\n")
    assert lines == 1_000_000 + 1


async def test_idle_exports_do_not_lock_others_out(daemons, db_url, http, scenarios):
    daemon = await daemons.start(
        db_url,
        env={
            **OPEN_CAPS,
            "SUMO_SUPERVISOR_EXPORT_RATE_WINDOW_S": "2",
            "SUMO_SUPERVISOR_EXPORT_SLOT_WAIT_S": "30",
        },
    )
    url = await _trajectory_export(http, daemon, db_url, scenarios, 1_000_000)
    async with contextlib.AsyncExitStack() as held:
        # Four clients (as many as the daemon-wide slots) that start an export and go idle.
        for _ in range(4):
            client = await held.enter_async_context(aiohttp.ClientSession())
            export = await held.enter_async_context(client.get(url))
            assert export.status == 200
            await export.content.readexactly(1 << 16)
        # Another client, while they are still connected, gets its whole export.
        lines = 0
        async with http.get(url) as r:
            assert r.status == 200, await r.text()
            async for chunk in r.content.iter_chunked(1 << 20):
                lines += chunk.count(b"\n")
        assert lines == 1_000_000 + 1
    assert daemon.events("api_client_too_slow") or daemon.events("api_client_stalled")
    assert daemon.events("api_internal_error") == []
