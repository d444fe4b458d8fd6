"""What watching a live map costs a session: the same session (same scenario, same seed) run
alone and with a map open on it, alternately, medians of R runs each. The map reads every
vehicle's position, speed and angle and every light's state from SUMO twice a second (a context
subscription made and dropped at once) and encodes the frame once for its watchers.

The scenario: a 10x10 grid with traffic lights and a vehicle inserted every 0.25 s, so that some
thousand to two thousand vehicles are on the map at once (the issue's "2,000 vehicles at 2 Hz").
The figure: the session's wall time (the daemon's own `created_at` to `ended_at`) watched,
against unwatched; and what the watcher got: frames a second, vehicles and bytes per frame.

    python -m bench.map_cost [--runs 3] [--end 900] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import start_daemon
from tests.harness.http import create_session, get_session, upload, wait_all, wait_status
from tests.harness.scenarios import grid_scenario


async def watch(http: aiohttp.ClientSession, url: str, got: dict[str, Any]) -> None:
    """Read the map stream until it ends, counting what it gives."""
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as r:
        assert r.status == 200, await r.text()
        event = ""
        async for line in r.content:
            text = line.decode().rstrip("\r\n")
            if text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:") and event == "frame":
                data = text[5:].strip()
                got["frames"] += 1
                got["bytes"].append(len(data))
                got["vehicles"].append(len(orjson.loads(data)["ids"]))
                got["last"] = time.monotonic()
                got.setdefault("first", got["last"])
            elif text.startswith("data:") and event == "end":
                return


async def one(
    http: aiohttp.ClientSession, daemon_url: str, end: float, watched: bool, run: int
) -> tuple[float, dict[str, Any]]:
    session = await create_session(
        http, daemon_url, template="map", seed=7, end=end, label=f"map-{watched}-{run}"
    )
    sid = session["id"]
    got: dict[str, Any] = {"frames": 0, "bytes": [], "vehicles": []}
    # Both kinds wait for `running` the same way; only one then opens the map.
    await wait_status(http, daemon_url, sid, {"running"})
    watcher = (
        asyncio.create_task(watch(http, f"{daemon_url}/v1/sessions/{sid}/map", got))
        if watched
        else None
    )
    try:
        await wait_all(http, daemon_url, [sid], {"completed"}, poll_s=0.2, label="map")
    finally:
        if watcher is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(watcher), 10)
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    s = await get_session(http, daemon_url, sid)
    wall = (
        datetime.fromisoformat(s["ended_at"]) - datetime.fromisoformat(s["created_at"])
    ).total_seconds()
    return wall, got


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--end", type=float, default=900)
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    runs, end = (1, 60.0) if args.small else (args.runs, args.end)
    work = Path(tempfile.mkdtemp(prefix="bench-map-"))
    scn = grid_scenario(
        work / "scn", grid=10, length=200, end=int(end), period=0.25, min_distance=1500
    )
    daemon = start_daemon(work / "state", "--max-running", "1")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "map", scn)
            alone: list[float] = []
            seen: list[float] = []
            frames: list[dict[str, Any]] = []
            for run in range(runs):
                alone.append((await one(http, daemon.url, end, False, run))[0])
                wall, got = await one(http, daemon.url, end, True, run)
                seen.append(wall)
                frames.append(got)
    finally:
        daemon.stop()
    a, w = statistics.median(alone), statistics.median(seen)
    got = frames[len(frames) // 2]
    span = max(got.get("last", 0) - got.get("first", 0), 1e-9)
    print(f"live map cost, {runs} alternating runs each, medians (sim end {end:g} s)")
    print(f"session alone {a:.2f} s, watched by a map {w:.2f} s: ratio {w / a:.3f}")
    if got["frames"]:
        print(
            f"the watcher got {got['frames']} frames, {(got['frames'] - 1) / span:.2f} a second;"
            f" vehicles per frame: median {statistics.median(got['vehicles']):.0f},"
            f" max {max(got['vehicles'])}; bytes per frame: median"
            f" {statistics.median(got['bytes']):.0f}"
        )


if __name__ == "__main__":
    asyncio.run(main())
