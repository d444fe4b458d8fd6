"""Figure 4: the API under load, with the fair share at its defaults. While 8 sessions run, one
client floods the API (8 connections asking again as soon as they are answered) and a second,
polite client asks 10 times a second: the polite client's p50/p99 latency, what the flood got
(answers and 429s), and how much the sessions slowed against the same 8 sessions with no API
load, in the same run. Each client has a token of its own (the fair share is per token).

Targets (issue 12): sessions slowed < 5%, polite p99 < 50 ms.

    python -m bench.api_load [--small]
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

from bench.common import make_token, start_daemon, token_command
from supervisor.config import Config
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import Scenario, grid_scenario

FLOOD_CONNECTIONS = 8
POLITE_PER_S = 10.0


async def batch(http: aiohttp.ClientSession, url: str, seeds: range) -> tuple[float, list[str]]:
    start = time.perf_counter()
    ids = [(await create_session(http, url, template="bench", seed=s))["id"] for s in seeds]
    # The control client polls gently (it is not the one measured).
    await wait_all(http, url, ids, {"completed"}, poll_s=0.25)
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


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def measure(scn: Scenario, state: Path, rounds: int) -> None:
    tokens = {name: make_token(state, name, "operator") for name in ("control", "flood", "polite")}
    daemon = start_daemon(state, "--max-running", "8", fair_share=True)
    try:
        async with (
            aiohttp.ClientSession(headers=_auth(tokens["control"])) as control,
            aiohttp.ClientSession(headers=_auth(tokens["flood"])) as flood,
            aiohttp.ClientSession(headers=_auth(tokens["polite"])) as polite,
        ):
            await upload(control, daemon, "bench", scn)
            _, ids = await batch(control, daemon.url, range(8))  # warm-up, and ids to ask for
            quiet_runs: list[float] = []
            loaded_runs: list[float] = []
            flood_status: dict[int, int] = {}
            latencies: list[float] = []
            polite_status: dict[int, int] = {}

            async def flooder(k: int) -> None:
                while not stop.is_set():
                    path = f"/v1/sessions/{ids[k % len(ids)]}" if k % 2 else "/v1/sessions"
                    async with flood.get(daemon.url + path) as r:
                        await r.read()
                    flood_status[r.status] = flood_status.get(r.status, 0) + 1
                    k += 1

            async def polite_client() -> None:
                next_at = time.perf_counter()
                k = 0
                while not stop.is_set():
                    path = f"/v1/sessions/{ids[k % len(ids)]}" if k % 2 else "/v1/sessions"
                    t = time.perf_counter()
                    async with polite.get(daemon.url + path) as r:
                        await r.read()
                    latencies.append(time.perf_counter() - t)
                    polite_status[r.status] = polite_status.get(r.status, 0) + 1
                    k += 1
                    next_at += 1 / POLITE_PER_S
                    await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

            used = {"client": 0.0, "daemon": 0.0, "postgres": 0.0}
            # Medians of alternating runs: the machine's own drift favours neither.
            for _ in range(rounds):
                quiet_runs.append((await batch(control, daemon.url, range(8)))[0])
                stop = asyncio.Event()
                before = cpu_seconds(daemon.proc.pid)
                workers = [asyncio.create_task(flooder(k)) for k in range(FLOOD_CONNECTIONS)]
                workers.append(asyncio.create_task(polite_client()))
                loaded_runs.append((await batch(control, daemon.url, range(8)))[0])
                stop.set()
                await asyncio.gather(*workers)
                after = cpu_seconds(daemon.proc.pid)
                for k in used:
                    used[k] += after[k] - before[k]
    finally:
        daemon.stop()
        # Leave the database as found: a shared DATABASE_URL must not keep needing tokens.
        for name in tokens:
            token_command(state, "revoke", name)
    latencies.sort()
    quiet, loaded = statistics.median(quiet_runs), statistics.median(loaded_runs)
    machine = sum(loaded_runs) * (os.cpu_count() or 1)
    defaults = Config()
    print(
        f"fair share (defaults): {defaults.rate_limit_per_s:g} requests/s per token,"
        f" bursts of {defaults.rate_burst}"
    )
    flood_total = sum(flood_status.values())
    print(
        f"flooding client: {flood_total} requests in {sum(loaded_runs):.2f} s ="
        f" {flood_total / sum(loaded_runs):,.0f}"
        f" req/s, {flood_status.get(200, 0)} answered, {flood_status.get(429, 0)} refused (429)"
    )
    print(
        f"polite client at {POLITE_PER_S:g} req/s: {len(latencies)} requests"
        f" ({polite_status}), latency p50 {statistics.median(latencies) * 1e3:.2f} ms,"
        f" p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1e3:.2f} ms (target p99 < 50 ms)"
    )
    print(
        "CPU the load used: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in used.items())
        + f" = {sum(used.values()) / machine:.0%} of the machine's {machine:.1f} CPU-seconds"
    )
    print(
        f"8 sessions, medians of {rounds} alternating runs: {quiet:.2f} s without API load,"
        f" {loaded:.2f} s with it: "
        f"ratio {loaded / quiet:.3f}, slowed by {(loaded / quiet - 1) * 100:.1f}% (target < 5%)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-api-"))
    end = 100 if args.small else 2400
    scn = grid_scenario(work / "scn", grid=5, length=200, end=end, period=1.0, min_distance=400)
    await measure(scn, work / "state", rounds=1 if args.small else 5)


if __name__ == "__main__":
    asyncio.run(main())
