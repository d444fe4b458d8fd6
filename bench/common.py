"""Shared pieces of the benchmarks: scenarios built with SUMO's own tools, a daemon started as
a subprocess, timing helpers. Every figure is a ratio against a baseline from the same run."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sumo

SUMO_HOME = Path(sumo.SUMO_HOME)
SUMO = SUMO_HOME / "bin" / "sumo"


def build_scenario(
    root: Path,
    *,
    grid: int,
    length: float,
    end: int,
    period: float,
    min_distance: float,
    seed: int = 42,
) -> Path:
    """A grid with random trips; returns the .sumocfg path."""
    root.mkdir(parents=True, exist_ok=True)
    net, routes, cfg = root / "net.net.xml", root / "routes.rou.xml", root / "scenario.sumocfg"
    if not cfg.exists():
        subprocess.run(
            [
                SUMO_HOME / "bin" / "netgenerate",
                "--grid",
                "--grid.number",
                str(grid),
                "--grid.length",
                str(length),
                "--default-junction-type",
                "traffic_light",
                "-o",
                net,
            ],
            check=True,
            capture_output=True,
        )
        with tempfile.TemporaryDirectory() as scratch:
            subprocess.run(
                [
                    sys.executable,
                    SUMO_HOME / "tools" / "randomTrips.py",
                    "-n",
                    net,
                    "-o",
                    routes,
                    "-e",
                    str(end),
                    "-p",
                    str(period),
                    "--seed",
                    str(seed),
                    "--min-distance",
                    str(min_distance),
                ],
                check=True,
                capture_output=True,
                cwd=scratch,
            )
        cfg.write_text(
            "<configuration><input>"
            f'<net-file value="net.net.xml"/><route-files value="routes.rou.xml"/>'
            f'</input><time><end value="{end}"/></time>'
            '<report><no-step-log value="true"/></report></configuration>\n'
        )
    return cfg


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_of(n: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(n))


def bare_sumo(cfg: Path, *extra: str) -> float:
    return timed(
        lambda: subprocess.run(
            [SUMO, "-c", cfg.name, *extra], cwd=cfg.parent, check=True, capture_output=True
        )
    )


# The benchmarks poll as fast as they measure: the fair share is out of their way, except where
# a benchmark measures it (api_load).
NO_RATE_LIMIT = {
    "SUMO_SUPERVISOR_RATE_LIMIT_PER_S": "1000000",
    "SUMO_SUPERVISOR_RATE_BURST": "1000000",
}


def token_command(state_dir: Path, *args: str) -> str:
    """`sumo-supervisor token ...` on the daemon's database (before or while it runs)."""
    cmd = [sys.executable, "-m", "supervisor", "token", *args]
    if os.environ.get("DATABASE_URL"):
        cmd += ["--database-url", os.environ["DATABASE_URL"]]
    else:
        cmd += ["--state-dir", str(state_dir)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


def make_token(state_dir: Path, name: str, role: str) -> str:
    return token_command(state_dir, "create", name, "--role", role)


class Daemon:
    """`sumo-supervisor serve` on a free port, with its own state dir."""

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        env: dict[str, str] | None = None,
        fair_share: bool = False,
    ) -> None:
        cmd = [
            sys.executable,
            "-m",
            "supervisor",
            "serve",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            *args,
        ]
        if os.environ.get("DATABASE_URL"):
            cmd += ["--database-url", os.environ["DATABASE_URL"]]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **({} if fair_share else NO_RATE_LIMIT), **(env or {})},
        )
        self.url = ""
        ready = threading.Event()

        def pump() -> None:
            assert self.proc.stdout is not None
            for raw in self.proc.stdout:
                try:
                    event = json.loads(raw)
                except ValueError:
                    continue
                if event.get("event") == "daemon_ready":
                    self.url = event["url"]
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(120) or not self.url:
            raise RuntimeError("daemon did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def ratio_line(name: str, baseline: float, figure: float, unit: str = "s") -> str:
    return (
        f"{name}: baseline {baseline:.3f} {unit}, daemon {figure:.3f} {unit},"
        f" ratio {figure / baseline:.3f}"
    )


# ---- the daemon's API, for the benchmarks ------------------------------------------------------


async def upload(http: Any, url: str, cfg: Path, name: str = "bench") -> None:
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("name", name)
    form.add_field("config", cfg.name)
    for f in sorted(cfg.parent.iterdir()):
        if f.suffix in (".xml", ".sumocfg"):
            form.add_field("file", f.read_bytes(), filename=f.name)
    async with http.post(f"{url}/v1/templates", data=form) as r:
        assert r.status == 201, await r.text()


async def create(http: Any, url: str, **body: Any) -> str:
    async with http.post(f"{url}/v1/sessions", json=body) as r:
        answer = await r.json()
        assert r.status == 201, answer
        return str(answer["id"])


async def wait_all(
    http: Any,
    url: str,
    ids: list[str],
    statuses: set[str],
    poll_s: float = 0.02,
    label: str | None = None,
) -> None:
    """Poll until every session is in one of `statuses`: one list request per poll (of the
    sessions with `label`, when given), as a client watching many sessions would."""
    import asyncio

    pending = set(ids)
    while pending:
        if len(pending) == 1:
            (only,) = pending
            async with http.get(f"{url}/v1/sessions/{only}") as r:
                rows = [await r.json()]
        else:
            params = {"limit": "10000", **({"label": label} if label else {})}
            async with http.get(f"{url}/v1/sessions", params=params) as r:
                rows = (await r.json())["sessions"]
        for s in rows:
            if s["id"] not in pending:
                continue
            if s["status"] in statuses:
                pending.discard(s["id"])
            elif s["status"] in {"failed", "stopped", "timed_out", "completed"} - statuses:
                raise RuntimeError(f"session ended {s['status']}: {s.get('error')}")
        if pending:
            await asyncio.sleep(poll_s)


async def metric(http: Any, url: str, name: str) -> float:
    async with http.get(f"{url}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)
