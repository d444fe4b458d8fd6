"""Issue 17 (and figure 2 of issue 6): N sessions from the first POST until all are completed,
against `xargs -P <cores>` running the same N bare `sumo` (no output at all), on two scenarios:
a 5x5 grid with traffic lights and random trips, and SUMO's own grid6 (shipped with it: a 6x6
grid with traffic lights, flows, a step of 0.1 s).

    python -m bench.throughput [--ns 1,4,8,32] [--runs 5] [--scenarios grid,grid6]
                               [--details period,exact] [--small]

Each (scenario, N) is measured `--runs` times, bare and each sample detail in turn; medians are
compared. The sessions record their samples (every 10 steps, the default), as a user's do.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import aiohttp

from bench.common import SUMO, ratio_line, start_daemon
from tests.harness.daemon import Daemon
from tests.harness.http import create_session, get_session, upload, wait_all
from tests.harness.scenarios import Scenario, grid6, grid_scenario

# The daemon runs each SUMO in a session of its own at `sumo_nice` (its process and its
# autogroup): the bare runs are placed the same way, so that whatever else runs on the machine
# weighs on both alike. `--nice -10` (as root) puts both ahead of other work on a shared machine;
# run the bench itself the same way (`bench/priority.sh`) so that its daemon is too.
# How often the client looks whether the sessions are done (the figure does not depend on it).
POLL_S = 0.5
_PLACED = 'echo "$NICE" > /proc/self/autogroup 2>/dev/null; exec nice -n "$NICE" "$@"'


def xargs(scn: Scenario, n: int, cores: int, nice: int) -> tuple[float, float]:
    """Wall seconds of N bare runs, `cores` at a time, and the CPU seconds they took."""
    seeds = "\n".join(str(i) for i in range(n)) + "\n"
    before = os.times()
    start = time.perf_counter()
    subprocess.run(
        ["xargs", "-P", str(cores), "-I{}", "setsid", "sh", "-c", _PLACED, "sh",
         str(SUMO), "-c", scn.config, "--seed", "{}"],
        input=seeds.encode(), cwd=scn.root, check=True, capture_output=True,
        env={**os.environ, "NICE": str(nice)},
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = os.times()
    cpu = after.children_user + after.children_system - before.children_user
    return wall, cpu - before.children_system


def cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of `pid` itself (the daemon) and of its reaped children (its SUMOs)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


async def daemon_run(
    http: aiohttp.ClientSession, daemon: Daemon, template: str, n: int, detail: str, run: int
) -> tuple[float, float, float]:
    """Wall seconds from the first POST until all N are completed, their SUMOs' CPU seconds,
    and the daemon's own.

    The end is the last session's `ended_at`, which the daemon stamps (on this machine's clock)
    as it writes the status: the client need not ask every few milliseconds, and it does not,
    as a user would not (at 20 requests a second the asking alone cost the daemon 2% of a core)."""
    url = daemon.url
    own, children = cpu(daemon.proc.pid)
    start = time.time()
    label = f"throughput-{template}-{n}-{detail}-{run}"
    ids = [
        (
            await create_session(
                http, url, template=template, seed=i, label=label, sample_detail=detail
            )
        )["id"]
        for i in range(n)
    ]
    await wait_all(http, url, ids, {"completed"}, poll_s=POLL_S, label=label)
    ended = [
        datetime.fromisoformat((await get_session(http, url, i))["ended_at"]).timestamp()
        for i in ids
    ]
    wall = max(ended) - start
    # The last SUMO is reaped as its session ends: its CPU is counted by then.
    own_after, children_after = cpu(daemon.proc.pid)
    return wall, children_after - children, own_after - own


def scenarios(work: Path, small: bool, grid6_end: float) -> dict[str, Scenario]:
    """The grid runs 1800 s; grid6 runs `grid6_end` s of its flows (600 by default: a session
    of about 2 s, in which the daemon's fixed cost per session, some 40 ms of its CPU, shows)."""
    end = 100 if small else 1800
    root6 = work / "grid6"
    root6.mkdir(parents=True)
    return {
        "grid": grid_scenario(
            work / "grid", grid=5, length=200, end=end, period=1.0, min_distance=400
        ),
        "grid6": Scenario(root6, grid6(root6, end=60 if small else grid6_end)),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ns", default="1,4,8,32")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default="grid,grid6")
    parser.add_argument("--details", default="period,exact")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--grid6-end", type=float, default=600)
    parser.add_argument("--nice", type=int, default=10, help="SUMO's nice, bare and daemon's")
    args = parser.parse_args()
    runs = 1 if args.small else args.runs
    cores = os.cpu_count() or 1
    ns = [1, 2] if args.small else [int(x) for x in args.ns.split(",")]
    details = args.details.split(",")
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    scns = {
        k: v
        for k, v in scenarios(work, args.small, args.grid6_end).items()
        if k in args.scenarios.split(",")
    }
    daemon = start_daemon(
        work / "state",
        "--max-running",
        str(cores),
        env={"SUMO_SUPERVISOR_SUMO_NICE": str(args.nice)},
    )
    try:
        async with aiohttp.ClientSession() as http:
            for name, scn in scns.items():
                await upload(http, daemon, name, scn)
            print(
                f"throughput: {cores} cores, {runs} alternating runs, SUMO at nice {args.nice},"
                f" scenarios in {work}"
            )
            for name, scn in scns.items():
                for n in ns:
                    bare: list[tuple[float, float]] = []
                    ours: dict[str, list[tuple[float, float, float]]] = {d: [] for d in details}
                    for run in range(runs):
                        # Alternate which goes first: the machine's drift falls on all.
                        order: list[str | None] = [None, *details]
                        if run % 2:
                            order.reverse()
                        for detail in order:
                            if detail is None:
                                bare.append(xargs(scn, n, cores, args.nice))
                            else:
                                run_ = await daemon_run(http, daemon, name, n, detail, run)
                                ours[detail].append(run_)
                    for detail in details:
                        label = f"{name} N={n} sample_detail={detail}: daemon vs xargs -P {cores}"
                        for i, what in enumerate(("wall", "SUMO CPU")):
                            print(
                                ratio_line(
                                    f"{label} bare sumo, {what}, median of {runs}",
                                    statistics.median(x[i] for x in bare),
                                    statistics.median(x[i] for x in ours[detail]),
                                ),
                                flush=True,
                            )
                        own = statistics.median(x[2] for x in ours[detail])
                        print(f"{label}: the daemon's own CPU {own:.3f} s", flush=True)
    finally:
        daemon.stop()


if __name__ == "__main__":
    asyncio.run(main())
