"""Each benchmark runs to completion on a tiny case. Figures are not checked here: timings live
in bench/, never in pass/fail tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.parametrize(
    "script",
    [
        "record.py",
        "start_latency.py",
        "throughput.py",
        "idle.py",
        "api_load.py",
        "writer.py",
        "auth_cost.py",
        "sandbox.py",
        "readers.py",
    ],
)
def test_benchmark_runs_on_a_tiny_case(script, pg_admin_url):
    args = [sys.executable, script, "--small"] if script != "record.py" else [
        sys.executable, script, "--small", "--runs", "1",
    ]  # fmt: skip
    out = subprocess.run(
        args, cwd=BENCH, capture_output=True, text=True, timeout=600, env=dict(os.environ)
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert any(w in out.stdout for w in ("ratio", "per session", "req/s", "growth"))


def test_command_benchmark_runs(pg_admin_url):
    out = subprocess.run(
        [sys.executable, "commands.py", "--calls", "20"],
        cwd=BENCH, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ratio" in out.stdout
