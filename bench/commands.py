"""Issue 5's figure: one command round trip over the API (POST .../commands with one query,
answered from the running session) against one bare TraCI call to a SUMO of the same scenario.

    python -m bench.commands [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import aiohttp
import traci

from bench.common import SUMO, start_daemon
from tests.harness.http import upload
from tests.harness.scenarios import Scenario, grid_scenario


def bare_traci(scn: Scenario, calls: int) -> float:
    port = 18813
    proc = subprocess.Popen([SUMO, "-c", scn.config, "--remote-port", str(port)], cwd=scn.root)
    try:
        conn = None
        for _ in range(2000):
            try:
                conn = traci.connection.Connection("127.0.0.1", port, proc, None, False, None)
                break
            except ConnectionRefusedError:
                time.sleep(0.005)
        assert conn is not None
        conn.simulationStep(30)
        tls = conn.trafficlight.getIDList()[0]
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            conn.trafficlight.getPhase(tls)
            times.append(time.perf_counter() - start)
        conn.close()
        return statistics.median(times)
    finally:
        proc.wait(30)


async def daemon_commands(scn: Scenario, work: Path, calls: int) -> float:
    daemon = start_daemon(work / "state")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            body = {"template": "bench", "mode": "stepped", "idle_timeout_s": 600}
            async with http.post(f"{daemon.url}/v1/sessions", json=body) as r:
                sid = (await r.json())["id"]
            while True:
                async with http.get(f"{daemon.url}/v1/sessions/{sid}") as r:
                    if (await r.json())["status"] == "running":
                        break
                await asyncio.sleep(0.02)
            await http.post(f"{daemon.url}/v1/sessions/{sid}/step", json={"seconds": 30})
            url = f"{daemon.url}/v1/sessions/{sid}/commands"
            async with http.post(url, json={"commands": [{"type": "network"}]}) as r:
                tls = (await r.json())["results"][0]["value"]["traffic_lights"][0]
            cmd = {"commands": [{"type": "get", "domain": "tls", "id": tls, "var": "phase"}]}
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                async with http.post(url, json=cmd) as r:
                    await r.read()
                    assert r.status == 200
                times.append(time.perf_counter() - start)
            return statistics.median(times)
    finally:
        daemon.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-commands-"))
    scn = grid_scenario(work / "scn", grid=4, length=200, end=3600, period=1.0, min_distance=300)
    bare = bare_traci(scn, args.calls)
    api = await daemon_commands(scn, work, args.calls)
    print(
        f"median of {args.calls}: bare TraCI trafficlight.getPhase {bare * 1e3:.3f} ms, "
        f"POST /v1/sessions/{{id}}/commands (one get) {api * 1e3:.3f} ms, "
        f"ratio {api / bare:.1f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
