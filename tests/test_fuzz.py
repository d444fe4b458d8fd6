"""Schemathesis against a live daemon, from its own /openapi.json: no answer is a 5xx, every
answer's status is one the document lists, and every JSON answer matches its schema.

Bounded for CI: a fixed number of examples per operation, deterministic generation (the same
requests every run), one worker. The admin pass runs every phase, stateful included: the test
uploads a template first, tests/fuzz_hooks.py aims most session bodies at it, and the document's
links (with those schemathesis infers) chain a created session into stepping, pausing, commands,
stopping and deleting it. The reader and operator passes check that refusals for a too-small
role are documented too. Each failure it found became a fix and a regular test (see the
"Found by the fuzzing" cases in test_parsing, test_api and test_access)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness.daemon import make_token
from tests.harness.http import upload

CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
# A stream of a running session lasts as long as the session; a drain takes the node out of
# service for the rest of the run. Both have tests of their own (test_readers, test_nodes).
# Streams never end by themselves (each would cost a request timeout); a drain ends the daemon.
EXCLUDED = (
    "/v1/sessions/{id}/stream",
    "/v1/sessions/stream",
    "/v1/sessions/{id}/map",
    "/v1/node/drain",
)
ST = Path(sys.executable).parent / "st"
CONFIG = Path(__file__).parent / "fuzz.toml"


def schemathesis_run(
    url: str, token: str, examples: int, phases: str, counts: Path
) -> tuple[int, str]:
    cmd = [
        str(ST), "--config-file", str(CONFIG), "run", f"{url}/openapi.json",
        "--checks", CHECKS,
        "--phases", phases,
        "--max-examples", str(examples),
        "--generation-deterministic",
        "--no-shrink",
        "--workers", "1",
        "--request-timeout", "60",
        "--continue-on-failure",
        "--no-color",
        "-H", f"Authorization: Bearer {token}",
    ]  # fmt: skip
    for path in EXCLUDED:
        cmd += ["--exclude-path", path]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.fuzz_hooks",
        "FUZZ_TEMPLATE": "grid3",
        "FUZZ_KEEP": "fuzz-admin,fuzz-operator,fuzz-reader,grid3",
        "FUZZ_COUNTS": str(counts),
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    return done.returncode, done.stdout + done.stderr


def session_lines(daemon: Any, report: str) -> str:
    """The daemon's log lines about each session the report names: what the session was doing
    when a request about it failed is the clue the report itself lacks."""
    ids = set(re.findall(r"/v1/sessions/([0-9a-z]{20,}-[0-9a-f]{8})", report))
    lines = [line[:600] for line in list(daemon.raw) if any(i in line for i in ids)]
    return "\n".join(lines[-150:])


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_schemathesis_finds_nothing(daemons, db_url, scenarios, tmp_path):
    tokens = {
        role: await make_token(db_url, f"fuzz-{role}", role)
        for role in ("admin", "operator", "reader")
    }
    # Two SUMOs at most: the sessions the fuzzing starts queue behind them.
    daemon = await daemons.start(db_url, max_running=2)
    headers = {"Authorization": f"Bearer {tokens['admin']}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        await upload(http, daemon, "grid3", scenarios["grid3"])

    passes = [
        ("admin", 25, "coverage,fuzzing,stateful"),
        ("operator", 4, "fuzzing"),
        ("reader", 4, "fuzzing"),
    ]
    requests: dict[str, int] = {}
    acted: dict[str, int] = {}
    for role, examples, phases in passes:
        counts = tmp_path / f"counts-{role}.json"
        code, report = await asyncio.to_thread(
            schemathesis_run, daemon.url, tokens[role], examples, phases, counts
        )
        assert code == 0, (
            report[-20_000:]
            + "\n---- the daemon on those sessions ----\n"
            + (session_lines(daemon, report))
        )
        seen = json.loads(counts.read_text())
        requests[role] = seen["requests"]
        statuses = {key.rsplit(" ", 1)[1] for key in seen if key != "requests"}
        assert not any(s.startswith("5") and s != "503" for s in statuses), seen
        if role == "admin":
            # The stateful phase reached sessions it made: not only 404s for made-up ids.
            assert seen.get("POST /v1/sessions 201", 0) > 0, report[-5000:]
            acted = {
                k: n
                for k, n in seen.items()
                if k.startswith(("POST /v1/sessions/{id}/", "DELETE /v1/sessions/{id}"))
                and k.endswith((" 200", " 202"))
            }
            assert acted, {k: n for k, n in seen.items() if "/v1/sessions/{id}" in k}
            assert "Stateful" in report
        else:
            # Everything beyond the role was refused, as documented.
            assert seen.get("POST /v1/tokens 403", 0) > 0, seen
    # No request made the daemon log an internal error, whatever status it answered.
    assert daemon.events("api_internal_error") == []
    print(f"schemathesis requests by pass: {requests}, total {sum(requests.values())}")
    print(f"acted on sessions it made: {acted}")
