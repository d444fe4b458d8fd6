"""Figure 2: throughput at scale. N sessions of a mid-sized scenario (samples recorded), from the
first POST until all are completed, against `xargs -P <cores>` running the same N bare `sumo`.

    python -m bench.throughput [--ns 1,2,8,32] [--runs 3] [--small]

Each N is measured `--runs` times, baseline and daemon alternately; medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import SUMO, ratio_line, start_daemon
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import Scenario, grid_scenario


def xargs(scn: Scenario, n: int, cores: int) -> float:
    seeds = "\n".join(str(i) for i in range(n)) + "\n"
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(cores), "-I{}", str(SUMO), "-c", scn.config, "--seed", "{}"],
        input=seeds.encode(), cwd=scn.root, check=True, capture_output=True,
    )  # fmt: skip
    return time.perf_counter() - start


async def daemon_run(http: aiohttp.ClientSession, url: str, n: int, run: int) -> float:
    start = time.perf_counter()
    label = f"throughput-{n}-{run}"
    ids = [
        (await create_session(http, url, template="bench", seed=i, label=label))["id"]
        for i in range(n)
    ]
    await wait_all(http, url, ids, {"completed"}, poll_s=0.05, label=label)
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ns", default="1,2,8,32")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = 1 if args.small else args.runs
    cores = os.cpu_count() or 1
    ns = [1, 2] if args.small else [int(x) for x in args.ns.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    end = 100 if args.small else 1800
    scn = grid_scenario(work / "scn", grid=5, length=200, end=end, period=1.0, min_distance=400)
    daemon = start_daemon(work / "state", "--max-running", str(cores))
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            print(f"throughput: {cores} cores, scenario {scn.root}")
            for n in ns:
                bare, ours = [], []
                for run in range(runs):
                    bare.append(xargs(scn, n, cores))
                    ours.append(await daemon_run(http, daemon.url, n, run))
                name = f"N={n}: daemon vs xargs -P {cores} bare sumo, median of {runs}"
                print(ratio_line(name, statistics.median(bare), statistics.median(ours)))
    finally:
        daemon.stop()


if __name__ == "__main__":
    asyncio.run(main())
