"""What a sample holds, by `sample_detail`, checked against SUMO's own summary output of the same
run: "period" (the default) is SUMO's row at each sample time, "exact" (tests/test_data.py) the
row of the step before it, with every step's halting added up."""

from __future__ import annotations

import csv
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests.harness.http import create_session, get_session, samples, upload, wait_status
from tests.harness.scenarios import SUMO_BIN, Scenario


def bare_summary(scenario: Scenario, workdir: Path, *args: str) -> dict[float, dict[str, str]]:
    """SUMO alone on a copy of `scenario`, writing its summary every step: row by step time."""
    shutil.copytree(scenario.root, workdir)
    subprocess.run(
        [SUMO_BIN / "sumo", "-c", scenario.config, "--summary-output", "summary.csv", *args],
        cwd=workdir, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    with open(workdir / "summary.csv", newline="") as fh:
        rows = csv.DictReader(fh, delimiter=";")
        return {round(float(r["step_time"]), 3): r for r in rows if r["step_time"]}


def assert_sample_is_row(sample: dict[str, Any], row: dict[str, str]) -> None:
    assert sample["vehicles"] == int(row["step_running"])
    assert sample["halting"] == int(row["step_halting"])
    assert math.isclose(sample["mean_speed"], max(float(row["step_meanSpeed"]), 0.0), abs_tol=0.01)


async def run(http: Any, daemon: Any, template: str, **request: Any) -> list[dict[str, Any]]:
    session = await create_session(http, daemon, template=template, seed=7, **request)
    assert session["request"]["sample_detail"] == "period"
    await wait_status(http, daemon, session["id"], "completed", timeout=120)
    return await samples(http, daemon, session["id"])


async def test_period_samples_are_sumos_rows_at_the_sample_times(
    daemons, db_url, http, scenarios, tmp_path
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    stored = await run(http, daemon, "grid4")
    bare = bare_summary(scenarios["grid4"], tmp_path / "bare", "--seed", "7")

    # A sample every 10 steps of 1 s, until the first after which no vehicle is left.
    times = [s["sim_time"] for s in stored]
    assert times == [10.0 * k for k in range(1, len(times) + 1)]
    assert stored[-1]["vehicles"] == 0 and stored[-2]["vehicles"] > 0
    inserted = arrived = 0
    previous = 0.0
    for s in stored:
        row = bare[s["sim_time"]]
        assert_sample_is_row(s, row)
        assert s["departed"] == int(row["step_inserted"]) - inserted
        assert s["arrived"] == int(row["step_arrived"]) - arrived
        inserted, arrived = int(row["step_inserted"]), int(row["step_arrived"])
        # An estimate, by its definition: the halting count times the sample's interval.
        assert s["waiting_time"] == s["halting"] * (s["sim_time"] - previous)
        previous = s["sim_time"]
    # Every vehicle SUMO inserted in the run is in some sample.
    assert inserted == max(int(r["step_inserted"]) for r in bare.values())


async def test_a_run_cut_off_at_its_end_has_its_last_sample_read_over_traci(
    daemons, db_url, http, scenarios, tmp_path
):
    """SUMO writes no period row at an end that falls on the period: the daemon reads that last
    sample itself, the network as the clock reached the end (SUMO's row of the step before)."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    stored = await run(http, daemon, "grid4", end=300)
    bare = bare_summary(scenarios["grid4"], tmp_path / "bare", "--seed", "7")

    assert [s["sim_time"] for s in stored] == [10.0 * k for k in range(1, 31)]
    last, row = stored[-1], bare[299.0]
    assert last["vehicles"] > 0
    assert_sample_is_row(last, row)
    assert sum(s["departed"] for s in stored) == int(row["step_inserted"])
    assert sum(s["arrived"] for s in stored) == int(row["step_arrived"])
    for s in stored[:-1]:
        assert_sample_is_row(s, bare[s["sim_time"]])


async def test_period_samples_follow_the_step_length_of_the_config_and_of_the_request(
    daemons, db_url, http, scenarios, tmp_path
):
    """SUMO's summary period is sample_every steps: the step length comes from the config
    (SUMO's grid6, 0.1 s) or from the request's sumo_options, which win."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid6", scenarios["grid6"])
    stored = await run(http, daemon, "grid6", sample_every=10)
    bare = bare_summary(scenarios["grid6"], tmp_path / "bare", "--seed", "7")
    assert [s["sim_time"] for s in stored] == [float(k) for k in range(1, 121)]
    for s in stored[:-1]:
        assert_sample_is_row(s, bare[s["sim_time"]])
    assert_sample_is_row(stored[-1], bare[119.9])

    stored = await run(
        http, daemon, "grid6", sample_every=4, sumo_options={"step-length": 0.5}, end=60
    )
    bare = bare_summary(
        scenarios["grid6"], tmp_path / "bare2", "--seed", "7", "--step-length", "0.5"
    )
    assert [s["sim_time"] for s in stored] == [2.0 * k for k in range(1, 31)]
    for s in stored[:-1]:
        assert_sample_is_row(s, bare[s["sim_time"]])
    assert_sample_is_row(stored[-1], bare[59.5])


async def test_a_stepped_session_is_sampled_exactly_and_cannot_ask_for_period(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    session = await create_session(http, daemon, template="grid4", mode="stepped")
    assert session["request"]["sample_detail"] == "exact"
    async with http.post(
        f"{daemon.url}/v1/sessions",
        json={"template": "grid4", "mode": "stepped", "sample_detail": "period"},
    ) as r:
        assert r.status == 400
        body = await r.json()
        assert body["field"] == "sample_detail" and "stepped" in body["error"]
    async with http.post(
        f"{daemon.url}/v1/sessions", json={"template": "grid4", "sample_detail": "every"}
    ) as r:
        assert r.status == 400 and (await r.json())["field"] == "sample_detail"
    assert (await get_session(http, daemon, session["id"]))["request"]["sample_detail"] == "exact"


async def test_a_pause_does_not_wait_for_a_sample_far_away(daemons, db_url, http, scenarios):
    """A sample every 100,000 steps of 0.01 s is 1,000 s of sim time, minutes of SUMO's: a pause
    (or a stop) takes effect between two pieces of that jump, not after it."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(
        http,
        daemon,
        template="long",
        sample_every=100_000,
        sumo_options={"step-length": 0.01},
    )
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    await wait_status(http, daemon, session["id"], "running")
    async with http.post(f"{url}/pause", json={}) as r:
        assert r.status == 200, await r.text()
    paused = await get_session(http, daemon, session["id"])
    assert paused["status"] == "running" and paused["paused"] is True
    # Paused in the middle of the first sample's jump: no sample yet.
    assert await samples(http, daemon, session["id"]) == []
    async with http.post(f"{url}/stop", json={}) as r:
        assert r.status == 202, await r.text()
    await wait_status(http, daemon, session["id"], "stopped")
