"""Each benchmark runs to completion on a tiny case. Figures are not checked here: timings live
in bench/, never in pass/fail tests. They run on a fresh database of the test server
(DATABASE_URL), as a user with a PostgreSQL of their own runs them: a daemon's embedded
PostgreSQL is the subject of test_pgembed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _env(db_url: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url}


@pytest.mark.parametrize(
    "script",
    [
        "record",
        "start_latency",
        "throughput",
        "idle",
        "api_load",
        "writer",
        "auth_cost",
        "sandbox",
        "readers",
        "nodes",
        "store_scale",
        "map_cost",
    ],
)
def test_benchmark_runs_on_a_tiny_case(script, db_url):
    args = [sys.executable, "-m", f"bench.{script}", "--small"]
    if script == "record":
        args += ["--runs", "1"]
    out = subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env(db_url)
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert any(w in out.stdout for w in ("ratio", "per session", "req/s", "growth"))


def test_command_benchmark_runs(db_url):
    out = subprocess.run(
        [sys.executable, "-m", "bench.commands", "--calls", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=_env(db_url),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ratio" in out.stdout


@pytest.mark.e2e
def test_map_paint_benchmark_runs():
    # The browser half of the map's cost (no daemon: the dashboard's files and a synthetic net).
    out = subprocess.run(
        [sys.executable, "-m", "bench.dashboard_map"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "glide_paint_vs_empty_map" in out.stdout
