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


class Daemon:
    """`sumo-supervisor serve` on a free port, with its own state dir."""

    def __init__(self, state_dir: Path, *args: str) -> None:
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
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
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
