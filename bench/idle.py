"""Figure 3: idle scale. 200 stepped sessions alive at once: the daemon's own RSS and open file
descriptors per session (SUMO's processes not counted), and the event loop's lag p99 meanwhile.

    python -m bench.idle [--n 200] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import aiohttp
import psutil

from bench.common import start_daemon
from tests.harness.http import create_session, metric, upload, wait_all
from tests.harness.scenarios import grid_scenario


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    n = 5 if args.small else args.n
    work = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    scn = grid_scenario(work / "scn", grid=3, length=200, end=3600, period=2.0, min_distance=200)
    daemon = start_daemon(
        work / "state", "--max-running", str(n), "--traci-ports", f"30000-{30000 + n + 50}"
    )
    try:
        proc = psutil.Process(daemon.proc.pid)
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            # One session first, so the per-session figure leaves out one-time imports/caches.
            first = (await create_session(http, daemon, template="bench", mode="stepped"))["id"]
            await wait_all(http, daemon.url, [first], {"running"})
            rss0, fds0 = proc.memory_info().rss, proc.num_fds()
            ids = [
                (
                    await create_session(
                        http, daemon, template="bench", mode="stepped", idle_timeout_s=600
                    )
                )["id"]
                for _ in range(n - 1)
            ]
            await wait_all(http, daemon.url, ids, {"running"}, poll_s=0.2)
            # A full minute of loop-lag samples with all of them alive (a measuring window).
            await asyncio.sleep(5 if args.small else 65)
            rss1, fds1 = proc.memory_info().rss, proc.num_fds()
            p99 = await metric(http, daemon.url, "sumo_event_loop_lag_p99_seconds")
            per_rss = (rss1 - rss0) / (n - 1)
            per_fd = (fds1 - fds0) / (n - 1)
            print(f"idle scale: {n} stepped sessions alive")
            print(f"daemon RSS per session: {per_rss / 1e6:.3f} MB (target < 1 MB)")
            print(f"daemon file descriptors per session: {per_fd:.1f}")
            print(f"event-loop lag p99 over the last minute: {p99 * 1e3:.1f} ms (target < 20 ms)")
    finally:
        daemon.stop()


if __name__ == "__main__":
    asyncio.run(main())
