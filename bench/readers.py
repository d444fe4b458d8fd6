"""Issue 14 D: readers of a large session. A session of 500,000 samples (written to the database
directly, as a long run would leave it); then six whole reads of its samples at once, its chart,
and eight live streams whose clients never read. Prints the daemon's RSS before, its peak
(VmHWM) during each load, and the growth: the daemon holds pages, not sessions.

    python -m bench.readers [--samples 500000] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import start_daemon
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import grid_scenario


def _status_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak(pid: int) -> int:
    """Start VmHWM afresh at the current RSS (Linux: clear_refs 5); return the RSS."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _status_bytes(pid, "VmRSS")


async def fill(database_url: str, session_id: str, n: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO samples (session_id, sim_time, vehicles, departed, arrived, mean_speed,"
            " halting, waiting_time, teleports)"
            " SELECT $1, 1000 + g, g % 500, g % 3, g % 2, (g % 1000) / 50.0, g % 7, g % 11, 0"
            " FROM generate_series(0, $2 - 1) g",
            session_id,
            n,
        )
    finally:
        await conn.close()


async def read_whole(http: aiohttp.ClientSession, url: str) -> int:
    size = 0
    async with http.get(url) as r:
        assert r.status == 200, r.status
        async for chunk in r.content.iter_chunked(1 << 20):
            size += len(chunk)
    return size


async def silent_streams(url: str, n: int, hold_s: float) -> None:
    """n SSE clients that send their request and never read; held for `hold_s` (a measuring
    window), then closed."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    path = "/" + url.removeprefix("http://").split("/", 1)[1]
    writers = []
    try:
        for _ in range(n):
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
            await writer.drain()
            writers.append(writer)
        await asyncio.sleep(hold_s)
    finally:
        for writer in writers:
            writer.close()


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    n = 20_000 if args.small else args.samples
    hold_s = 3.0 if args.small else 15.0
    work = Path(tempfile.mkdtemp(prefix="bench-readers-"))
    database_url = os.environ.get("DATABASE_URL")
    server = None
    if database_url is None:
        import pgserver

        server = pgserver.get_server(work / "pg", cleanup_mode="stop")
        database_url = server.get_uri()
    os.environ["DATABASE_URL"] = database_url
    scn = grid_scenario(work / "scn", grid=3, length=200, end=10, period=2.0, min_distance=200)
    daemon = start_daemon(
        work / "state",
        env={
            "SUMO_SUPERVISOR_MAX_STREAMS_PER_CLIENT": "50",
            "SUMO_SUPERVISOR_MAX_EXPORTS_PER_CLIENT": "50",
        },
    )
    try:
        pid = daemon.proc.pid
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http:
            await upload(http, daemon, "bench", scn)
            sid = (await create_session(http, daemon, template="bench", end=10))["id"]
            await wait_all(http, daemon.url, [sid], {"completed"})
            await fill(database_url, sid, n)
            base = f"{daemon.url}/v1/sessions/{sid}"
            print(f"readers: a session of {n} samples")

            before = reset_peak(pid)
            started = time.perf_counter()
            sizes = await asyncio.gather(
                *(read_whole(http, f"{base}/samples?limit=1000000") for _ in range(6))
            )
            took = time.perf_counter() - started
            peak = _status_bytes(pid, "VmHWM")
            print(
                f"six whole /samples reads at once ({mb(sizes[0])} each, {took:.1f} s):"
                f" RSS before {mb(before)}, peak {mb(peak)}, growth {mb(peak - before)}"
                " (target < 100 MB)"
            )

            before = reset_peak(pid)
            size = await read_whole(http, f"{base}/plot.svg?metric=vehicles")
            peak = _status_bytes(pid, "VmHWM")
            print(
                f"plot.svg ({size / 1e3:.0f} kB): RSS before {mb(before)}, peak {mb(peak)},"
                f" growth {mb(peak - before)}"
            )

            before = reset_peak(pid)
            await silent_streams(f"{base}/stream", 8, hold_s)
            peak = _status_bytes(pid, "VmHWM")
            print(
                f"eight SSE clients that never read, held {hold_s:.0f} s: RSS before"
                f" {mb(before)}, peak {mb(peak)}, growth {mb(peak - before)}"
            )
    finally:
        daemon.stop()
        if server is not None:
            server.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
