"""Figure 4: the API under load. While 8 sessions run, one client process drives
GET /v1/sessions/{id} and GET /v1/sessions as fast as it can: requests/s, p50/p99 latency, and how
much the sessions slowed against the same 8 sessions with no API load, in the same run.

Measured twice, with SUMO at the daemon's default lower priority (`sumo_nice` 10) and at the
same priority (0), and with the CPU the load itself used (the client, the daemon's own process,
PostgreSQL) as a share of the machine: on a machine whose cores the sessions already fill, that
share is what the sessions lose.

    python bench/api_load.py [--small] [--nice 10,0]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil
from common import Daemon, build_scenario, create, upload, wait_all

from supervisor.config import Config

CONCURRENCY = 8


async def batch(http: aiohttp.ClientSession, url: str, seeds: range) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = [await create(http, url, template="bench", seed=s) for s in seeds]
    await wait_all(http, url, ids, {"completed"}, poll_s=0.1)
    return time.perf_counter() - start, ids


def cpu_seconds(daemon_pid: int) -> dict[str, float]:
    """CPU time so far of this client, the daemon's process (the API and the sessions' TraCI
    threads; not its SUMO children) and PostgreSQL's processes."""

    def total(p: psutil.Process) -> float:
        t = p.cpu_times()
        return float(t.user + t.system)

    postgres = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info["name"] == "postgres":
            try:
                postgres += total(p)
            except psutil.NoSuchProcess:
                pass
    return {
        "client": total(psutil.Process()),
        "daemon": total(psutil.Process(daemon_pid)),
        "postgres": postgres,
    }


async def measure(cfg: Path, state: Path, nice: int) -> None:
    daemon = Daemon(state, "--max-running", "8", env={"SUMO_SUPERVISOR_SUMO_NICE": str(nice)})
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon.url, cfg)
            quiet, ids = await batch(http, daemon.url, range(8))
            latencies: list[float] = []
            stop = asyncio.Event()

            async def hammer(k: int) -> None:
                while not stop.is_set():
                    path = f"/v1/sessions/{ids[k % len(ids)]}" if k % 2 else "/v1/sessions"
                    t = time.perf_counter()
                    async with http.get(daemon.url + path) as r:
                        await r.read()
                    latencies.append(time.perf_counter() - t)
                    k += 1

            before = cpu_seconds(daemon.proc.pid)
            workers = [asyncio.create_task(hammer(k)) for k in range(CONCURRENCY)]
            loaded, _ = await batch(http, daemon.url, range(8))
            stop.set()
            await asyncio.gather(*workers)
            after = cpu_seconds(daemon.proc.pid)
    finally:
        daemon.stop()
    latencies.sort()
    used = {k: after[k] - before[k] for k in after}
    machine = loaded * (os.cpu_count() or 1)
    default = " (the default)" if nice == Config().sumo_nice else ""
    print(f"-- SUMO at nice {nice}{default}")
    print(
        f"API under load: {len(latencies)} requests in {loaded:.2f} s = "
        f"{len(latencies) / loaded:,.0f} req/s ({CONCURRENCY} concurrent, one client process)"
    )
    print(
        f"latency p50 {statistics.median(latencies) * 1e3:.2f} ms, "
        f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1e3:.2f} ms (target p99 < 50 ms)"
    )
    print(
        "CPU the load used: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
        + f" = {sum(used.values()) / machine:.0%} of the machine's {machine:.1f} CPU-seconds"
    )
    print(
        f"8 sessions: {quiet:.2f} s without API load, {loaded:.2f} s with it: "
        f"slowed by {(loaded / quiet - 1) * 100:.1f}% (target < 5%)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--nice", default="10,0", help="SUMO priorities to measure at")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    end = 300 if args.small else 2400
    cfg = build_scenario(work / "scn", grid=5, length=200, end=end, period=1.0, min_distance=400)
    for nice in (int(n) for n in args.nice.split(",")):
        await measure(cfg, work / f"state-{nice}", nice)


if __name__ == "__main__":
    asyncio.run(main())
