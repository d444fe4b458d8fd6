"""Scenarios as people bring them: configs saved from sumo-gui, configs with outputs and output
formats of their own. Real daemon, real SUMO, real PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.harness.http import create_session, samples, upload, wait_status
from tests.harness.scenarios import Scenario


def variant(scenario: Scenario, root: Path, extra: str) -> Scenario:
    """The scenario with `extra` option elements added to its config."""
    shutil.copytree(scenario.root, root)
    config = root / scenario.config
    text = config.read_text()
    config.write_text(text.replace("</configuration>", f"{extra}\n</configuration>"))
    return Scenario(root, scenario.config)


async def row_counts(
    http, daemon, session_id: str, kinds: tuple[str, ...] = ("trajectories", "trips")
) -> dict[str, int]:
    counts = {}
    for kind in kinds:
        async with http.get(f"{daemon.url}/v1/sessions/{session_id}/{kind}.csv") as r:
            assert r.status == 200
            counts[kind] = (await r.text()).count("\n") - 1
    return counts


@pytest.mark.slow
async def test_a_config_that_changes_sumos_csv_format_records_the_same_rows(
    daemons, db_url, http, scenarios, tmp_path
):
    """A config that sets the CSV separator, drops the column header and writes times as
    h:m:s records exactly what the plain scenario records: the daemon's format is SUMO's
    command line, which wins over the config."""
    own_format = variant(
        scenarios["grid3"],
        tmp_path / "own_format",
        "  <output>"
        '<output.column-separator value=","/>'
        '<output.column-header value="none"/>'
        '<human-readable-time value="true"/>'
        "</output>",
    )
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "plain", scenarios["grid3"])
    await upload(http, daemon, "own_format", own_format)
    record = ["samples", "trajectories", "trips"]
    counts, stored = [], []
    for name in ("plain", "own_format"):
        session = await create_session(http, daemon, template=name, seed=11, record=record)
        await wait_status(http, daemon, session["id"], "completed", timeout=120)
        counts.append(await row_counts(http, daemon, session["id"]))
        stored.append(await samples(http, daemon, session["id"]))
    assert counts[0]["trajectories"] > 0 and counts[0]["trips"] > 0, counts
    assert counts[1] == counts[0]
    assert stored[1] == stored[0]


async def test_a_config_with_an_output_prefix_records_the_same_rows(
    daemons, db_url, http, scenarios, tmp_path
):
    """SUMO puts output-prefix and output-suffix into the name of every output, the daemon's
    too: they are cleared on the command line, or the recorder would follow files that never
    come and the session would end `completed` with no recorded rows."""
    prefixed = variant(
        scenarios["grid3"],
        tmp_path / "prefixed",
        '  <output><output-prefix value="run1_"/><output-suffix value=".x"/></output>',
    )
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "plain", scenarios["grid3"])
    await upload(http, daemon, "prefixed", prefixed)
    counts = []
    for name in ("plain", "prefixed"):
        session = await create_session(
            http, daemon, template=name, seed=11, record=["trajectories", "trips"]
        )
        await wait_status(http, daemon, session["id"], "completed", timeout=120)
        counts.append(await row_counts(http, daemon, session["id"]))
    assert counts[0]["trajectories"] > 0 and counts[0]["trips"] > 0, counts
    assert counts[1] == counts[0]


async def test_a_config_saved_from_sumo_gui_runs_without_its_gui_files(
    daemons, db_url, http, scenarios, tmp_path
):
    """sumo-gui saves its own options (a settings file, a second net, a selection) in the
    config; the daemon runs SUMO headless, so it needs none of their files."""
    from_gui = variant(
        scenarios["grid3"],
        tmp_path / "from_gui",
        "  <gui_only>"
        '<gui-settings-file value="gui.view.xml"/>'
        '<alternative-net-file value="other.net.xml"/>'
        '<selection-file value="chosen.txt"/>'
        '<edgedata-files value="colours.xml"/>'
        '<start value="true"/><quit-on-end value="true"/><delay value="100"/>'
        "</gui_only>",
    )
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "from_gui", from_gui)
    session = await create_session(http, daemon, template="from_gui", seed=11)
    done = await wait_status(http, daemon, session["id"], "completed", timeout=120)
    assert done["sim_time"] > 0


async def test_a_configs_own_summary_output_is_written_beside_the_daemons_samples(
    daemons, db_url, http, scenarios, tmp_path
):
    """The daemon takes SUMO's summary output for its samples (on the command line, which wins
    over the config); a config that names its own summary-output still gets its file, with the
    same steps the samples are made of."""
    own_summary = variant(
        scenarios["grid3"],
        tmp_path / "own_summary",
        '  <output><summary-output value="own.summary.xml"/></output>',
    )
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "own_summary", own_summary)
    session = await create_session(http, daemon, template="own_summary", mode="stepped")
    await wait_status(http, daemon, session["id"], "running")
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    async with http.post(f"{url}/step", json={"seconds": 100}) as r:
        assert r.status == 200, await r.text()
        sample = (await r.json())["sample"]
    assert sample["sim_time"] == 100
    own = daemon.state_dir / "sessions" / session["id"] / "own.summary.xml"
    steps = {
        float(line.split('time="')[1].split('"')[0]): line
        for line in own.read_text().splitlines()
        if "<step " in line
    }
    # The sample at 100 s is SUMO's summary of its step at 99 s.
    assert 99.0 in steps, sorted(steps)[-3:]
    assert f'running="{sample["vehicles"]}"' in steps[99.0]
    async with http.post(f"{url}/stop") as r:
        assert r.status == 202
    await wait_status(http, daemon, session["id"], "stopped")


async def test_a_configs_own_tripinfo_output_is_kept_and_recorded(
    daemons, db_url, http, scenarios, tmp_path
):
    """SUMO writes one tripinfo output. A recording session of a config that names its own
    keeps the config's file (written by SUMO where the config says, as XML) and records the
    same trips as the plain scenario, from that file."""
    own_trips = variant(
        scenarios["grid4"],
        tmp_path / "own_trips",
        '  <output><tripinfo-output value="own.trips.xml"/></output>',
    )
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "plain", scenarios["grid4"])
    await upload(http, daemon, "own_trips", own_trips)
    plain = await create_session(http, daemon, template="plain", seed=7, record=["trips"])
    await wait_status(http, daemon, plain["id"], "completed", timeout=120)
    session = await create_session(
        http, daemon, template="own_trips", seed=7, record=["trips"], mode="stepped"
    )
    await wait_status(http, daemon, session["id"], "running")
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    async with http.post(f"{url}/step", json={"seconds": 700}) as r:
        assert r.status == 200, await r.text()
    own = daemon.state_dir / "sessions" / session["id"] / "own.trips.xml"
    # SUMO buffers the file: most of its trips are there while it runs, all once it ends.
    written = own.read_text().count("<tripinfo ")
    async with http.post(f"{url}/step", json={"seconds": 300}) as r:
        assert r.status == 200, await r.text()
    await wait_status(http, daemon, session["id"], "completed")
    counts = [
        (await row_counts(http, daemon, s["id"], ("trips",)))["trips"] for s in (plain, session)
    ]
    assert counts[0] > 100, counts
    assert counts[1] == counts[0]
    assert 0 < written <= counts[0]
