"""Issue 13: what SUMO's sandbox costs. Two daemons side by side, one with the sandbox (the
default) and one with `sandbox = false` as the baseline, measured alternately in the same run:
start latency (POST until running) and a one-hour run (POST until completed), medians; and, as
the machine's noise is larger than the cost sought, the median of each pair's ratio and SUMO's
own CPU time per run (what the daemon's reaped children used).

    python -m bench.sandbox [--starts 20] [--runs 7] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import psutil

from bench.common import ratio_line, start_daemon
from tests.harness.daemon import Daemon
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import grid_scenario


async def start_latency(http: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    sid = (await create_session(http, url, template="start", mode="stepped"))["id"]
    await wait_all(http, url, [sid], {"running"}, poll_s=0.002)
    took = time.perf_counter() - start
    async with http.post(f"{url}/v1/sessions/{sid}/stop") as r:
        assert r.status == 202
    # The next one starts alone: wait until this one has ended.
    await wait_all(http, url, [sid], {"stopped"}, poll_s=0.01)
    return took


def children_cpu(daemon: Daemon) -> float:
    times = psutil.Process(daemon.proc.pid).cpu_times()
    return float(times.children_user + times.children_system)


async def hour_run(http: aiohttp.ClientSession, daemon: Daemon, seed: int) -> tuple[float, float]:
    """Wall time from POST until completed, and the CPU time its SUMO used."""
    cpu = children_cpu(daemon)
    start = time.perf_counter()
    sid = (await create_session(http, daemon, template="hour", seed=seed))["id"]
    await wait_all(http, daemon.url, [sid], {"completed"}, poll_s=0.01)
    return time.perf_counter() - start, children_cpu(daemon) - cpu


def in_turn(daemons: dict[str, Daemon], i: int) -> list[tuple[str, Daemon]]:
    """Both daemons, the first one first in every other round: neither always runs second."""
    order = list(daemons.items())
    return order if i % 2 == 0 else order[::-1]


def paired(figure: list[float], baseline: list[float]) -> str:
    ratios = [f / b for f, b in zip(figure, baseline, strict=True)]
    return f"median of the {len(ratios)} paired ratios {statistics.median(ratios):.3f}"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    starts, runs = (3, 1) if args.small else (args.starts, args.runs)
    end = 100 if args.small else 3600
    work = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    start_scn = grid_scenario(
        work / "start", grid=6, length=200, end=end, period=1.0, min_distance=500
    )
    hour_scn = grid_scenario(
        work / "hour", grid=5, length=200, end=end, period=1.0, min_distance=400
    )
    # Both start before any session: with DATABASE_URL set they share a database, and neither
    # ever touches the other's sessions.
    daemons = {
        "off": start_daemon(
            work / "off", "--max-running", "1", env={"SUMO_SUPERVISOR_SANDBOX": "false"}
        ),
        "on": start_daemon(work / "on", "--max-running", "1"),
    }
    try:
        async with aiohttp.ClientSession() as http:
            for d in daemons.values():
                await upload(http, d, "start", start_scn)
                await upload(http, d, "hour", hour_scn)
            for d in daemons.values():
                await start_latency(http, d.url)  # a daemon's first session warms it up
            latency: dict[str, list[float]] = {"off": [], "on": []}
            for i in range(starts):
                for mode, d in in_turn(daemons, i):
                    latency[mode].append(await start_latency(http, d.url))
            hour: dict[str, list[float]] = {"off": [], "on": []}
            cpu: dict[str, list[float]] = {"off": [], "on": []}
            for i in range(runs):
                for mode, d in in_turn(daemons, i):
                    wall, used = await hour_run(http, d, seed=i)
                    hour[mode].append(wall)
                    cpu[mode].append(used)
    finally:
        for d in daemons.values():
            d.stop()
    print(f"sandbox cost: sandbox = false is the baseline, the sandbox the figure ({work})")
    for name, figures in (
        (f"start latency (POST until running), median of {starts}", latency),
        (f"a {end} s run (POST until completed), median of {runs}", hour),
        (f"SUMO's CPU time in that run, median of {runs}", cpu),
    ):
        line = ratio_line(name, statistics.median(figures["off"]), statistics.median(figures["on"]))
        print(f"{line}; {paired(figures['on'], figures['off'])}")


if __name__ == "__main__":
    asyncio.run(main())
