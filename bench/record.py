"""Issue 3's figure: what recording everything into PostgreSQL costs over bare SUMO.

1. One session recording samples,trajectories,trips (1 s period) on a scenario of a few hundred
   simultaneous vehicles over one hour, from POST until its final status (every row committed by
   then), divided by bare `sumo` with no output. References from the same run: SUMO's own CSV
   FCD + tripinfo writers alone.
2. Rows committed per second by the writer, for that session and for four at once.

    python -m bench.record [--runs 3] [--small]
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
from tests.harness.http import upload
from tests.harness.scenarios import grid_scenario

RECORD = ["samples", "trajectories", "trips"]


async def run_sessions(http: aiohttp.ClientSession, url: str, n: int) -> tuple[float, int]:
    """Start n sessions at once; wall time until all are final, and rows committed."""
    start = time.perf_counter()
    ids = []
    for i in range(n):
        body = {"template": "bench", "seed": 42 + i, "record": RECORD, "trajectory_period": 1.0}
        async with http.post(f"{url}/v1/sessions", json=body) as r:
            ids.append((await r.json())["id"])
    pending = set(ids)
    while pending:
        for session_id in list(pending):
            async with http.get(f"{url}/v1/sessions/{session_id}") as r:
                s = await r.json()
            if s["status"] not in ("queued", "starting", "running"):
                assert s["status"] == "completed", s
                pending.discard(session_id)
        await asyncio.sleep(0.02)
    wall = time.perf_counter() - start
    rows = 0
    for session_id in ids:
        async with http.get(f"{url}/v1/sessions/{session_id}/summary") as r:
            summary = await r.json()
        async with http.get(f"{url}/v1/sessions/{session_id}/samples") as r:
            rows += len((await r.json())["samples"])
        rows += summary["trips"] + await count_trajectories(http, url, session_id)
    return wall, rows


async def count_trajectories(http: aiohttp.ClientSession, url: str, session_id: str) -> int:
    lines = 0
    async with http.get(f"{url}/v1/sessions/{session_id}/trajectories.csv") as r:
        async for chunk in r.content.iter_chunked(1 << 20):
            lines += chunk.count(b"\n")
    return lines - 1


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--small", action="store_true", help="a tiny case (smoke test)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-record-"))
    if args.small:
        scn = grid_scenario(work / "scn", grid=4, length=200, end=100, period=1.0, min_distance=300)
    else:
        # ~500 vehicles in the network at once by the end of the hour.
        scn = grid_scenario(
            work / "scn", grid=7, length=250, end=3600, period=0.8, min_distance=1000
        )

    bare = statistics.median(bare_sumo(scn) for _ in range(args.runs))
    sumo_csv = statistics.median(
        bare_sumo(
            scn,
            "--fcd-output",
            "fcd.csv",
            "--fcd-output.attributes",
            "x,y,speed,angle,lane",
            "--device.fcd.period",
            "1",
            "--tripinfo-output",
            "trips.csv",
        )
        for _ in range(args.runs)
    )
    daemon = start_daemon(work / "state", "--max-running", "4")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            singles = [await run_sessions(http, daemon.url, 1) for _ in range(args.runs)]
            one_wall = statistics.median(w for w, _ in singles)
            one_rows = singles[0][1]
            four_wall, four_rows = await run_sessions(http, daemon.url, 4)
    finally:
        daemon.stop()
    print(f"scenario: {scn.root}, runs: {args.runs} (medians)")
    print(ratio_line("reference, sumo's own CSV FCD+tripinfo writers vs bare sumo", bare, sumo_csv))
    print(ratio_line("1 session recording samples,trajectories,trips vs bare sumo", bare, one_wall))
    print(
        f"rows committed, 1 session: {one_rows} rows in {one_wall:.2f} s = "
        f"{one_rows / one_wall:,.0f} rows/s"
    )
    print(
        f"rows committed, 4 sessions at once: {four_rows} rows in {four_wall:.2f} s = "
        f"{four_rows / four_wall:,.0f} rows/s"
    )


if __name__ == "__main__":
    asyncio.run(main())
