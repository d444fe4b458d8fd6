"""The summary is SUMO's own statistic output: on scenarios with undeparted vehicles, unfinished
vehicles, teleports and persons, every figure equals what SUMO writes to `--statistic-output` for
the same run (same seed and end), to SUMO's printed precision; compare and sweeps build on them."""

from __future__ import annotations

import asyncio
import csv
import io
import math
import shutil
import statistics
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import asyncpg
import defusedxml
import pytest

from actors import recorder
from actors import statistics as sumo_statistics
from supervisor import summary as summary_mod
from tests.harness.http import create_session, upload, wait_status
from tests.harness.poll import DEADLINE_S, POLL_S
from tests.harness.scenarios import SUMO_BIN, Scenario, build_once, netgenerate, random_trips

SEED = 5


def _config(path: Path, routes: str, end: float, extra: str = "") -> None:
    path.write_text(
        "<configuration>\n"
        f'  <input><net-file value="net.net.xml"/><route-files value="{routes}"/></input>\n'
        f'  <time><end value="{end}"/></time>\n{extra}'
        '  <report><no-step-log value="true"/></report>\n'
        "</configuration>\n"
    )


@pytest.fixture(scope="session")
def stat_scenarios(run_tmp: Path, sumo_bin: Path) -> dict[str, Scenario]:
    """Scenarios where averaging every tripinfo row is not SUMO's statistics, built once for
    every worker of the run."""
    base = run_tmp / "stat-scenarios"
    names = build_once(base, _build_stat_scenarios).split(",")
    return {name: Scenario(base / name, "s.sumocfg") for name in names}


def _build_stat_scenarios(base: Path) -> str:
    names = []

    def root(name: str) -> Path:
        r = base / name
        r.mkdir()
        names.append(name)
        return r

    single_lane = ("--grid", "--grid.number", "3", "--grid.length", "100")
    single_lane += ("--default.lanenumber", "1")
    # Far more demand than one-lane edges take: most vehicles never depart, and SUMO's tripinfo
    # writes them (depart -1) with the vehicles still running at the end.
    r = root("undeparted")
    netgenerate(r / "net.net.xml", *single_lane)
    random_trips(r / "net.net.xml", r / "routes.rou.xml", "-e", "300", "-p", "0.25", "--seed", "21")
    _config(
        r / "s.sumocfg",
        "routes.rou.xml",
        200,
        '  <output><tripinfo-output.write-undeparted value="true"/></output>\n',
    )
    # Ends long before its demand does: a hundred vehicles are still on their way.
    r = root("unfinished")
    netgenerate(r / "net.net.xml", "--grid", "--grid.number", "4", "--grid.length", "200")
    random_trips(r / "net.net.xml", r / "routes.rou.xml", "-e", "600", "-p", "1.0", "--seed", "22")
    _config(
        r / "s.sumocfg",
        "routes.rou.xml",
        250,
        '  <output><tripinfo-output.write-unfinished value="true"/></output>\n',
    )
    # A congested grid of traffic lights with a short time-to-teleport.
    r = root("teleports")
    netgenerate(r / "net.net.xml", *single_lane, "--default-junction-type", "traffic_light")
    random_trips(r / "net.net.xml", r / "routes.rou.xml", "-e", "400", "-p", "0.4", "--seed", "23")
    _config(
        r / "s.sumocfg",
        "routes.rou.xml",
        300,
        '  <processing><time-to-teleport value="20"/></processing>\n',
    )
    # Cars, persons walking (person trips) and persons riding in their own cars.
    r = root("persons")
    netgenerate(
        r / "net.net.xml",
        "--grid",
        "--grid.number",
        "3",
        "--grid.length",
        "150",
        "--sidewalks.guess",
    )
    net = r / "net.net.xml"
    random_trips(net, r / "cars.rou.xml", "-e", "400", "-p", "2.0", "--seed", "24")
    random_trips(
        net, r / "walks.rou.xml", "-e", "400", "-p", "4.0", "--seed", "25",
        "--persontrips", "--prefix", "w",
    )  # fmt: skip
    random_trips(
        net, r / "rides.rou.xml", "-e", "400", "-p", "4.0", "--seed", "26",
        "--persontrips", "--trip-attributes", 'modes="car"', "--prefix", "r",
    )  # fmt: skip
    _config(r / "s.sumocfg", "cars.rou.xml,walks.rou.xml,rides.rou.xml", 250)
    # One car, gone after half a minute, and persons walking for minutes after it: the run (no
    # end reached) lasts until the last person has arrived, as SUMO's own does.
    r = root("walkers_last")
    (r / "net.net.xml").write_bytes((base / "persons" / "net.net.xml").read_bytes())
    (r / "car.rou.xml").write_text(
        '<routes><trip id="c0" depart="0" from="A0A1" to="A1A2"/></routes>\n'
    )
    random_trips(
        r / "net.net.xml", r / "walks.rou.xml", "-e", "50", "-p", "2.0", "--seed", "27",
        "--persontrips", "--prefix", "w",
    )  # fmt: skip
    _config(r / "s.sumocfg", "car.rou.xml,walks.rou.xml", 5000)
    return ",".join(names)


def bare_statistics(
    scenario: Scenario, workdir: Path, *, seed: int, end: float | None = None
) -> dict[str, dict[str, str]]:
    """SUMO alone on the scenario: its statistic output, as SUMO printed it (strings)."""
    shutil.copytree(scenario.root, workdir)
    subprocess.run(
        [
            SUMO_BIN / "sumo", "-c", scenario.config, "--seed", str(seed),
            "--tripinfo-output", "trips.csv", "--statistic-output", "stats.xml",
            "--duration-log.statistics", "true", *(["--end", str(end)] if end else []),
        ],
        cwd=workdir, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    root = ET.parse(workdir / "stats.xml").getroot()
    return {child.tag: dict(child.attrib) for child in root if child.tag != "performance"}


def printed(value: Any, like: str) -> str:
    """`value` as SUMO prints a figure like `like` (integers bare, else its decimals)."""
    if "." not in like:
        assert value == int(value), value
        return str(int(value))
    return f"{value:.{len(like.split('.')[1])}f}"


def percentile_cont(values: list[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


async def get_json(http, url: str) -> Any:
    async with http.get(url) as r:
        body = await r.json()
        assert r.status == 200, body
        return body


async def recorded_trips(http, url: str) -> list[dict[str, str]]:
    async with http.get(f"{url}/trips.csv") as r:
        assert r.status == 200
        return list(csv.DictReader(io.StringIO(await r.text())))


# What each scenario must show, so that the comparison is about what it is meant to be.
FEATURE = {
    "undeparted": lambda s: s["waiting"] > 100 and s["loaded"] > s["inserted"],
    "unfinished": lambda s: s["running"] > 50 and s["trips"] > s["arrived"],
    "teleports": lambda s: s["teleports"] > 10 and s["teleports_jam"] > 0,
    "persons": lambda s: s["persons_loaded"] > 100 and s["walks"] > 5 and s["rides"] > 5,
    "walkers_last": lambda s: s["trips"] == 1 and s["walks"] > 10 and s["persons_running"] == 0,
}


@pytest.mark.parametrize("name", list(FEATURE))
async def test_summary_is_sumo_statistic_output(
    daemons, db_url, http, stat_scenarios, tmp_path, name
):
    scenario = stat_scenarios[name]
    daemon = await daemons.start(db_url)
    await upload(http, daemon, name, scenario)
    session = await create_session(
        http, daemon, template=name, seed=SEED, record=["samples", "trips"]
    )
    await wait_status(http, daemon, session["id"], "completed", timeout=180)
    bare = await asyncio.to_thread(bare_statistics, scenario, tmp_path / "bare", seed=SEED)
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    summary = await get_json(http, f"{url}/summary")

    assert summary["source"] == "sumo_statistics"
    assert FEATURE[name](summary), summary
    # Every element and figure SUMO wrote, equal as SUMO printed it.
    assert set(summary["statistics"]) == set(bare)
    for element, attributes in bare.items():
        for attribute, text in attributes.items():
            got = summary["statistics"][element][attribute]
            assert printed(got, text) == text, (element, attribute, got, text)
    # The API's names for them.
    trip, vehicles = bare["vehicleTripStatistics"], bare["vehicles"]
    expected = {
        "trips": trip["count"],
        "mean_route_length": trip["routeLength"],
        "mean_speed": trip["speed"],
        "mean_duration": trip["duration"],
        "mean_waiting_time": trip["waitingTime"],
        "mean_time_loss": trip["timeLoss"],
        "mean_depart_delay": trip["departDelay"],
        "mean_depart_delay_waiting": trip["departDelayWaiting"],
        "total_travel_time": trip["totalTravelTime"],
        "total_depart_delay": trip["totalDepartDelay"],
        "loaded": vehicles["loaded"],
        "inserted": vehicles["inserted"],
        "running": vehicles["running"],
        "waiting": vehicles["waiting"],
        "teleports": bare["teleports"]["total"],
        "teleports_jam": bare["teleports"]["jam"],
        "collisions": bare["safety"]["collisions"],
        "emergency_stops": bare["safety"]["emergencyStops"],
        "persons_loaded": bare["persons"]["loaded"],
        "persons_running": bare["persons"]["running"],
        "persons_jammed": bare["persons"]["jammed"],
        "walks": bare["pedestrianStatistics"]["number"],
        "mean_walk_duration": bare["pedestrianStatistics"]["duration"],
        "rides": bare["rideStatistics"]["number"],
    }
    got = {k: printed(summary[k], text) for k, text in expected.items()}
    assert got == expected
    # Vehicles that ended their trip: SUMO's inserted less its running.
    assert summary["arrived"] == int(vehicles["inserted"]) - int(vehicles["running"])
    assert math.isclose(
        summary["total_distance"], float(trip["count"]) * float(trip["routeLength"])
    )
    # What SUMO lacks, from the recorded trips of the vehicles SUMO's averages take.
    departed = [r for r in await recorded_trips(http, url) if float(r["depart"]) >= 0]
    assert len(departed) == int(trip["count"])
    durations = [float(r["duration"]) for r in departed]
    assert printed(statistics.fmean(durations), trip["duration"]) == trip["duration"]
    assert math.isclose(summary["p95_duration"], percentile_cont(durations, 0.95))
    assert summary["sim_seconds"] > 0
    assert math.isclose(
        summary["throughput_per_hour"], summary["arrived"] / (summary["sim_seconds"] / 3600)
    )


async def test_a_finished_session_sums_its_samples_once(daemons, db_url, http, scenarios):
    """Its end keeps its sample totals (session_totals): its summary reads them, and says what
    summing every sample again would say."""
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    session = await create_session(http, daemon, template="grid3", seed=SEED, sample_every=7)
    await wait_status(http, daemon, session["id"], "completed")
    url = f"{daemon.url}/v1/sessions/{session['id']}/summary"
    kept = await get_json(http, url)
    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow(
            "SELECT * FROM session_totals WHERE session_id = $1", session["id"]
        )
        assert row is not None and row["inserted"] > 0 and row["last_time"] > 0, row
        # The summary reads the kept row, not the samples.
        await conn.execute(
            "UPDATE session_totals SET arrived = arrived + 1000 WHERE session_id = $1",
            session["id"],
        )
        assert (await get_json(http, url))["arrived"] == kept["arrived"] + 1000
        await conn.execute("DELETE FROM session_totals WHERE session_id = $1", session["id"])
    finally:
        await conn.close()
    assert await get_json(http, url) == kept


async def test_a_stopped_session_has_sumo_statistics_up_to_its_stop(
    daemons, db_url, http, stat_scenarios, tmp_path
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "teleports", stat_scenarios["teleports"])
    session = await create_session(http, daemon, template="teleports", seed=SEED, mode="stepped")
    await wait_status(http, daemon, session["id"], "running")
    url = f"{daemon.url}/v1/sessions/{session['id']}"
    async with http.post(f"{url}/step", json={"seconds": 150}) as r:
        assert r.status == 200, await r.text()
    async with http.post(f"{url}/stop") as r:
        assert r.status == 202
    stopped = await wait_status(http, daemon, session["id"], "stopped")
    assert stopped["sim_time"] == 150
    summary = await get_json(http, f"{url}/summary")
    bare = await asyncio.to_thread(
        bare_statistics, stat_scenarios["teleports"], tmp_path / "bare", seed=SEED, end=150
    )
    assert summary["source"] == "sumo_statistics"
    assert summary["running"] > 0
    for element, attributes in bare.items():
        for attribute, text in attributes.items():
            got = summary["statistics"][element][attribute]
            assert printed(got, text) == text, (element, attribute, got, text)


@pytest.mark.slow
async def test_compare_and_sweep_use_sumo_statistics(
    daemons, db_url, http, stat_scenarios, tmp_path
):
    daemon = await daemons.start(db_url, max_running=2)
    await upload(http, daemon, "undeparted", stat_scenarios["undeparted"])
    async with http.post(
        f"{daemon.url}/v1/sweeps", json={"template": "undeparted", "seeds": [SEED, SEED + 1]}
    ) as r:
        created = await r.json()
        assert r.status == 201, created
    bares = [
        await asyncio.to_thread(
            bare_statistics, stat_scenarios["undeparted"], tmp_path / f"bare{seed}", seed=seed
        )
        for seed in (SEED, SEED + 1)
    ]
    want = [float(b["vehicleTripStatistics"]["duration"]) for b in bares]
    assert want[0] != want[1]
    deadline = time.monotonic() + 3 * DEADLINE_S
    while not (sweep := await get_json(http, f"{daemon.url}/v1/sweeps/{created['id']}"))["done"]:
        assert time.monotonic() < deadline, sweep
        await asyncio.sleep(POLL_S)
    assert sweep["by_status"] == {"completed": 2}
    ids = [s["id"] for s in sorted(sweep["sessions"], key=lambda s: s["seed"])]

    compared = await get_json(http, f"{daemon.url}/v1/compare?sessions={','.join(ids)}")
    assert [s["mean_duration"] for s in compared["sessions"]] == want
    (difference,) = compared["differences"]
    assert math.isclose(difference["mean_duration"], want[1] - want[0])
    assert difference["waiting"] == int(bares[1]["vehicles"]["waiting"]) - int(
        bares[0]["vehicles"]["waiting"]
    )

    (group,) = sweep["groups"]
    figure = group["figures"]["mean_duration"]
    assert figure["n"] == 2
    assert math.isclose(figure["mean"], statistics.fmean(want))
    assert math.isclose(figure["std"], statistics.stdev(want))
    assert set(summary_mod.FIGURES) <= set(group["figures"])


# ---- pure logic ----------------------------------------------------------------------------------

STATS_XML = b"""<?xml version="1.0" encoding="UTF-8"?>
<statistics>
    <performance clockBegin="1.5" clockEnd="2.5" begin="0.00" end="200.00"/>
    <vehicles loaded="803" inserted="316" running="287" waiting="481"/>
    <teleports total="0" jam="0" yield="0" wrongLane="0"/>
    <vehicleTripStatistics count="316" routeLength="114.06" duration="128.32"
        departDelayWaiting="-1.00" totalTravelTime="40549.00"/>
</statistics>
"""


def test_statistics_parse_keeps_sumo_figures_as_numbers():
    parsed = sumo_statistics.parse(STATS_XML)
    assert "performance" not in parsed  # wall-clock figures of the machine
    assert parsed["vehicles"] == {"loaded": 803, "inserted": 316, "running": 287, "waiting": 481}
    assert parsed["vehicleTripStatistics"]["duration"] == 128.32
    assert parsed["vehicleTripStatistics"]["departDelayWaiting"] == -1.0


def test_statistics_parse_refuses_entities_and_other_files():
    bomb = b'<!DOCTYPE s [<!ENTITY a "aaaa">]><statistics><vehicles loaded="&a;"/></statistics>'
    with pytest.raises(defusedxml.DefusedXmlException):
        sumo_statistics.parse(bomb)
    with pytest.raises(ValueError, match="not SUMO statistics"):
        sumo_statistics.parse(b"<routes/>")


SESSION = {"id": "s1", "status": "completed", "label": None, "request": {}}


def test_summary_takes_sumo_figures_over_the_rows():
    rows = {
        "inserted": 316, "arrived": 29, "running": 287, "teleports": 0, "trips": 801,
        "mean_duration": 50.62, "p95_duration": 190.0, "last_time": 200.0,
        "statistics": sumo_statistics.parse(STATS_XML),
    }  # fmt: skip
    summary = summary_mod.build(SESSION, rows)
    assert summary["source"] == "sumo_statistics"
    assert summary["mean_duration"] == 128.32 and summary["trips"] == 316
    assert summary["arrived"] == 29 and summary["waiting"] == 481
    assert summary["p95_duration"] == 190.0
    assert summary["throughput_per_hour"] == 29 / (200 / 3600)
    assert summary["total_distance"] == 316 * 114.06
    assert summary["collisions"] is None  # SUMO wrote no <safety>


def test_summary_without_sumo_statistics_falls_back_to_the_rows():
    rows = {"inserted": 10, "arrived": 4, "trips": 4, "mean_duration": 50.0, "last_time": 0.0}
    summary = summary_mod.build(SESSION, {**rows, "statistics": None})
    assert summary["source"] == "recorded"
    assert summary["mean_duration"] == 50.0 and summary["inserted"] == 10
    assert summary["throughput_per_hour"] is None
    assert set(summary_mod.FIGURES) <= set(summary)


def test_person_rows_of_the_tripinfo_csv_are_not_trips():
    # SUMO's CSV puts a personinfo's values in the tripinfo columns, with no vType.
    header = ["tripinfo_id", "tripinfo_depart", "tripinfo_duration", "tripinfo_vType"]
    data = b"v0;3.00;20.00;car\nr0;0.00;DEFAULT_PEDTYPE;\nw1;bad;bad;\n"
    columns = ("vehicle", "depart", "duration", "vtype")
    rows = recorder._project(header, recorder._TRIPS, "vtype", columns, data)
    assert rows == [("v0", 3.0, 20.0, "car")]
