"""Several nodes: how long a killed node's sessions wait before another node takes them over,
at the default lease settings (TTL 10 s, renewed every 3 s), against the issue's bound of 15 s;
and what the shared queue costs: N short sessions on three nodes against the same sessions on
one node of the same total capacity (CPU-bound on a small machine: a ratio near 1 means the
claims cost nothing).

    python -m bench.nodes [--n 24] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from tests.harness.daemon import Daemon
from tests.harness.http import create_session, upload, wait_all, wait_status
from tests.harness.pg import admin_url, fresh_database
from tests.harness.scenarios import grid_scenario

RESCUE_BOUND_S = 15.0


def _node(work: Path, name: str, url: str, max_running: int) -> Daemon:
    # The daemons share the benchmark's own database, whatever DATABASE_URL says.
    return Daemon.spawn(
        work / name,
        "--max-running",
        str(max_running),
        database_url=url,
        own_settings_only=False,
    ).wait_ready()


async def _rescue_s(http: aiohttp.ClientSession, work: Path, url: str, scn: object) -> float:
    a, b = _node(work, "a", url, 1), _node(work, "b", url, 1)
    try:
        await upload(http, a, "bench", scn)  # type: ignore[arg-type]
        ids = [
            (await create_session(http, a, template="bench", mode="stepped"))["id"]
            for _ in range(2)
        ]
        sessions = [await wait_status(http, a, i, "running") for i in ids]
        b_id = b.events("daemon_ready")[0]["node_id"]
        (lost,) = [s for s in sessions if s["node"] == b_id]
        killed = time.time()
        b.signal(signal.SIGKILL)
        while True:
            async with http.get(f"{a.url}/v1/sessions/{lost['id']}/events") as r:
                events = (await r.json())["events"]
            rescued = [e for e in events if "stopped renewing" in (e["reason"] or "")]
            if rescued:
                return datetime.fromisoformat(rescued[0]["at"]).timestamp() - killed
            await asyncio.sleep(0.05)
    finally:
        for d in (a, b):
            d.kill()


async def _queue_s(
    http: aiohttp.ClientSession, work: Path, url: str, scn: object, nodes: int, n: int
) -> float:
    daemons = [_node(work, f"q{nodes}-{i}", url, 6 // nodes) for i in range(nodes)]
    try:
        await upload(http, daemons[0], f"bench{nodes}", scn)  # type: ignore[arg-type]
        start = time.perf_counter()
        ids = [
            (await create_session(http, daemons[0], template=f"bench{nodes}", seed=k))["id"]
            for k in range(n)
        ]
        await wait_all(http, daemons[0].url, ids, {"completed"}, poll_s=0.05)
        return time.perf_counter() - start
    finally:
        for d in daemons:
            d.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    n = 6 if args.small else args.n
    work = Path(tempfile.mkdtemp(prefix="bench-nodes-"))
    scn = grid_scenario(work / "scn", grid=4, length=200, end=600, period=2.0, min_distance=300)
    with admin_url(work / "pg") as admin:
        async with fresh_database(admin) as url, aiohttp.ClientSession() as http:
            one = await _queue_s(http, work, url, scn, 1, n)
            three = await _queue_s(http, work, url, scn, 3, n)
            rescue = await _rescue_s(http, work, url, scn)
    print(f"several nodes, {n} sessions of a 600 s grid, 6 run slots in all")
    print(
        f"3 nodes x 2 slots vs 1 node x 6 slots: baseline {one:.3f} s, 3 nodes {three:.3f} s,"
        f" ratio {three / one:.3f}"
    )
    print(
        f"rescue of a killed node's session (TTL 10 s, renewed every 3 s): {rescue:.1f} s,"
        f" ratio {rescue / RESCUE_BOUND_S:.3f} of the {RESCUE_BOUND_S:.0f} s bound"
    )


if __name__ == "__main__":
    asyncio.run(main())
