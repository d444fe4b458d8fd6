"""What only the benchmarks need: a daemon on the benchmarks' database, bare SUMO as the
baseline, timing and the ratio line. Every figure is a ratio against a baseline from the same
run. Scenarios, the daemon process and the API helpers are the tests' harness
(`tests/harness`), so run the benchmarks from the repo root: `python -m bench.X`."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.daemon import Daemon, token_cli
from tests.harness.scenarios import SUMO_BIN, Scenario

SUMO = SUMO_BIN / "sumo"


def start_daemon(
    state_dir: Path, *args: str, env: dict[str, str] | None = None, fair_share: bool = False
) -> Daemon:
    """`sumo-supervisor serve` on `DATABASE_URL`, else on its embedded PostgreSQL in
    `state_dir`. It keeps the caller's SUMO_SUPERVISOR_* settings; the fair share is out of the
    way unless `fair_share` (api_load measures it)."""
    return Daemon.spawn(
        state_dir,
        *args,
        database_url=os.environ.get("DATABASE_URL"),
        env=env,
        fair_share=fair_share,
        own_settings_only=False,
    ).wait_ready()


def token_command(state_dir: Path, *args: str) -> str:
    """`sumo-supervisor token ...` on the daemon's database (before or while it runs)."""
    out = token_cli(*args, database_url=os.environ.get("DATABASE_URL"), state_dir=state_dir)
    out.check_returncode()
    return out.stdout.strip()


def make_token(state_dir: Path, name: str, role: str) -> str:
    return token_command(state_dir, "create", name, "--role", role)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bare_sumo(scenario: Scenario, *extra: str) -> float:
    """Seconds of `sumo -c` on the scenario, run in a dir beside it: outputs named in `extra`
    land there, not among the files a benchmark uploads."""
    cwd = scenario.root.parent / "bare"
    cwd.mkdir(exist_ok=True)
    cfg = scenario.root / scenario.config
    return timed(
        lambda: subprocess.run([SUMO, "-c", cfg, *extra], cwd=cwd, check=True, capture_output=True)
    )


def ratio_line(name: str, baseline: float, figure: float, unit: str = "s") -> str:
    return (
        f"{name}: baseline {baseline:.3f} {unit}, daemon {figure:.3f} {unit},"
        f" ratio {figure / baseline:.3f}"
    )
