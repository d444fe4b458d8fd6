"""Figure 4: the API under load. While 8 sessions run, one client process drives
GET /v1/sessions/{id} and GET /v1/sessions as fast as it can: requests/s, p50/p99 latency, and how
much the sessions slowed against the same 8 sessions with no API load, in the same run.

    python bench/api_load.py [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
from common import Daemon, build_scenario, create, upload, wait_all

CONCURRENCY = 8


async def batch(http: aiohttp.ClientSession, url: str, seeds: range) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = [await create(http, url, template="bench", seed=s) for s in seeds]
    await wait_all(http, url, ids, {"completed"}, poll_s=0.1)
    return time.perf_counter() - start, ids


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    end = 300 if args.small else 2400
    cfg = build_scenario(work / "scn", grid=5, length=200, end=end, period=1.0, min_distance=400)
    daemon = Daemon(work / "state", "--max-running", "8")
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

            workers = [asyncio.create_task(hammer(k)) for k in range(CONCURRENCY)]
            loaded, _ = await batch(http, daemon.url, range(8))
            stop.set()
            await asyncio.gather(*workers)
    finally:
        daemon.stop()
    latencies.sort()
    print(
        f"API under load: {len(latencies)} requests in {loaded:.2f} s = "
        f"{len(latencies) / loaded:,.0f} req/s ({CONCURRENCY} concurrent, one client process)"
    )
    print(
        f"latency p50 {statistics.median(latencies) * 1e3:.2f} ms, "
        f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1e3:.2f} ms (target p99 < 50 ms)"
    )
    print(
        f"8 sessions: {quiet:.2f} s without API load, {loaded:.2f} s with it: "
        f"slowed by {(loaded / quiet - 1) * 100:.1f}% (target < 5%)"
    )


if __name__ == "__main__":
    asyncio.run(main())
