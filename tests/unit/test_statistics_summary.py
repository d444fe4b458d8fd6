"""SUMO's own end-of-run statistics, parsed, and the summary figures built on them.

(tests/test_statistics.py checks the same against real SUMO runs, and a few parsing cases.)"""

from __future__ import annotations

from typing import Any

import pytest

from actors import statistics
from supervisor import summary

# As SUMO 1.28 writes --statistic-output with --duration-log.statistics.
STATS = b"""<?xml version="1.0" encoding="UTF-8"?>
<!-- generated on 2026-11-26 by Eclipse SUMO sumo 1.28.0 -->
<statistics xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
    <performance clockBegin="1764170000" clockEnd="1764170002" clockDuration="2.1" realTimeFactor="1900.5"/>
    <vehicles loaded="120" inserted="100" running="15" waiting="20"/>
    <teleports total="3" jam="2" yield="1" wrongLane="0"/>
    <safety collisions="0" emergencyStops="1" emergencyBraking="4"/>
    <persons loaded="0" running="0" jammed="0"/>
    <vehicleTripStatistics count="85" routeLength="412.50" speed="8.25" duration="50.00"
        waitingTime="7.10" timeLoss="12.30" departDelay="0.40" departDelayWaiting="-1.00"
        totalTravelTime="4250.00" totalDepartDelay="34.00"/>
</statistics>
"""


def test_parse_gives_each_element_with_numbers_as_numbers():
    parsed = statistics.parse(STATS)
    assert list(parsed) == [
        "vehicles", "teleports", "safety", "persons", "vehicleTripStatistics",
    ]  # fmt: skip
    assert parsed["vehicles"] == {"loaded": 120, "inserted": 100, "running": 15, "waiting": 20}
    trips = parsed["vehicleTripStatistics"]
    # Integers stay integers, decimals become floats, as SUMO printed them.
    assert trips["count"] == 85 and isinstance(trips["count"], int)
    assert trips["routeLength"] == 412.5 and isinstance(trips["routeLength"], float)
    assert trips["departDelayWaiting"] == -1.0


def test_parse_leaves_out_the_machines_wall_clock_figures():
    assert "performance" not in statistics.parse(STATS)


def test_parse_keeps_a_value_that_is_no_number_as_text():
    parsed = statistics.parse(b'<statistics><x a="1e3" b="n/a" c=""/></statistics>')
    assert parsed == {"x": {"a": 1000.0, "b": "n/a", "c": ""}}


@pytest.mark.parametrize("data", [b"<routes/>", b"<statistic/>"])
def test_parse_refuses_a_file_that_is_not_sumo_statistics(data: bytes):
    with pytest.raises(ValueError, match="not SUMO statistics"):
        statistics.parse(data)


def session(**request: Any) -> dict[str, Any]:
    return {"id": "s1", "status": "completed", "label": "base", "request": request}


def test_build_takes_sumo_figures_under_the_apis_names():
    stats = statistics.parse(STATS)
    out = summary.build(session(), {"statistics": stats, "arrived": 70, "last_time": 1800.0})
    assert (out["id"], out["status"], out["label"]) == ("s1", "completed", "base")
    assert out["source"] == "sumo_statistics"
    assert out["statistics"] == stats
    assert (out["loaded"], out["inserted"], out["running"], out["waiting"]) == (120, 100, 15, 20)
    assert (out["trips"], out["mean_duration"], out["mean_time_loss"]) == (85, 50.0, 12.3)
    assert (out["teleports"], out["teleports_jam"], out["teleports_yield"]) == (3, 2, 1)
    assert (out["collisions"], out["emergency_braking"]) == (0, 4)
    assert out["total_travel_time"] == 4250.0
    assert out["total_distance"] == 85 * 412.5


def test_build_gives_none_for_what_sumo_did_not_write():
    stats = statistics.parse(b'<statistics><vehicles loaded="3" inserted="3"/></statistics>')
    out = summary.build(session(), {"statistics": stats, "arrived": 3, "last_time": 60.0})
    assert out["loaded"] == 3
    assert out["walks"] is None and out["collisions"] is None and out["trips"] is None
    assert out["total_distance"] is None  # no trip count or route length to multiply


def test_build_arrived_is_from_the_samples_not_sumos_trip_count():
    # SUMO's `count` also counts, with write-unfinished, vehicles still running at the end.
    stats = statistics.parse(STATS)
    out = summary.build(session(), {"statistics": stats, "arrived": 70, "last_time": 3600.0})
    assert out["arrived"] == 70 and out["trips"] == 85
    assert out["throughput_per_hour"] == 70.0


def test_build_without_statistics_falls_back_to_the_recorded_figures():
    figures = {
        "statistics": None, "inserted": 40, "arrived": 30, "running": 10, "teleports": 1,
        "trips": 30, "mean_duration": 61.5, "mean_speed": 9.0, "total_distance": 12_000.0,
        "p95_duration": 120.0, "last_time": 900.0,
    }  # fmt: skip
    out = summary.build(session(), figures)
    assert out["source"] == "recorded"
    assert out["statistics"] is None
    assert (out["inserted"], out["arrived"], out["trips"]) == (40, 30, 30)
    assert (out["mean_duration"], out["total_distance"]) == (61.5, 12_000.0)
    assert out["p95_duration"] == 120.0
    # SUMO-only figures have no fallback.
    assert out["loaded"] is None and out["collisions"] is None


def test_build_has_every_figure_compare_and_sweeps_read():
    out = summary.build(session(), {"statistics": None})
    assert set(summary.FIGURES) <= set(out)


def test_sim_seconds_and_throughput_count_from_the_requested_begin():
    # A run from 3600 s to 5400 s simulated half an hour, not an hour and a half.
    out = summary.build(
        session(sumo_options={"begin": 3600}),
        {"statistics": None, "arrived": 50, "last_time": 5400.0},
    )
    assert out["sim_seconds"] == 1800.0
    assert out["throughput_per_hour"] == 100.0


def test_a_run_that_simulated_nothing_has_no_throughput():
    out = summary.build(session(), {"statistics": None, "arrived": 0, "last_time": None})
    assert out["sim_seconds"] == 0.0
    assert out["throughput_per_hour"] is None
    out = summary.build(session(sumo_options={"begin": 100}), {"arrived": 5, "last_time": 50.0})
    assert out["sim_seconds"] == 0.0  # never negative
    assert out["throughput_per_hour"] is None


def test_no_throughput_without_an_arrival_count():
    out = summary.build(session(), {"statistics": None, "last_time": 3600.0})
    assert out["sim_seconds"] == 3600.0
    assert out["throughput_per_hour"] is None
