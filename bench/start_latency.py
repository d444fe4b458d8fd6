"""Figure 1: start latency. POST /v1/sessions until the session is `running` (TraCI connected),
median of N, against bare `sumo` loading the same scenario and simulating one step.

    python -m bench.start_latency [--n 20] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import bare_sumo, ratio_line, start_daemon
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import grid_scenario


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    n = 3 if args.small else args.n
    work = Path(tempfile.mkdtemp(prefix="bench-start-"))
    scn = grid_scenario(work / "scn", grid=6, length=200, end=3600, period=1.0, min_distance=500)
    bare = statistics.median(bare_sumo(scn, "--end", "1") for _ in range(n))
    daemon = start_daemon(work / "state", "--max-running", "2")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            times = []
            for _ in range(n):
                start = time.perf_counter()
                sid = (await create_session(http, daemon, template="bench", mode="stepped"))["id"]
                await wait_all(http, daemon.url, [sid], {"running"}, poll_s=0.002)
                times.append(time.perf_counter() - start)
                async with http.post(f"{daemon.url}/v1/sessions/{sid}/stop") as r:
                    assert r.status == 202
                # The next one starts alone: wait until this one has ended.
                await wait_all(http, daemon.url, [sid], {"stopped"}, poll_s=0.01)
    finally:
        daemon.stop()
    print(f"start latency, median of {n}")
    print(
        ratio_line("POST until running vs bare sumo load + 1 step", bare, statistics.median(times))
    )


if __name__ == "__main__":
    asyncio.run(main())
