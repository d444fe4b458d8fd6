"""The service layer's own logic, with no SUMO and no PostgreSQL: compare differences, sweep
statistics, what a replay inherits, and how many queries compare and sweeps make (a pool in
memory answers them and counts them)."""

from __future__ import annotations

import math
import statistics
from typing import Any

import pytest
from scipy import stats as st

from actors.errors import InvalidRequest, SessionNotFound, SweepNotFound
from actors.request import parse_session_request
from supervisor import service, summary, sweeps


def _session(session_id: str, status: str = "completed", **request: Any) -> dict[str, Any]:
    return {
        "id": session_id,
        "status": status,
        "label": None,
        "template_version": 2,
        "request": {"template": "t", "seed": 1, "sumo_options": {}, **request},
    }


def _figures(arrived: int | None, mean_duration: float | None, last_time: float = 3600.0):
    """What db.session_summary gives for a session with no SUMO statistics."""
    return {
        "inserted": 10,
        "arrived": arrived,
        "running": 0,
        "teleports": 0,
        "last_time": last_time,
        "trips": 5,
        "mean_duration": mean_duration,
        "p95_duration": None,
        "mean_waiting_time": None,
        "mean_time_loss": None,
        "mean_route_length": None,
        "total_distance": None,
        "mean_speed": None,
        "mean_depart_delay": None,
        "statistics": None,
    }


class MemoryPool:
    """Answers the queries of compare and sweeps from rows in memory, and counts them."""

    def __init__(
        self,
        sessions: list[dict[str, Any]],
        figures: dict[str, dict[str, Any]],
        sweep: dict[str, Any] | None = None,
    ) -> None:
        self.sessions = {s["id"]: s for s in sessions}
        self.figures = figures
        self.sweep = sweep
        self.queries: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        self.queries.append(sql)
        if "unnest" in sql:
            return [{"session_id": i, **self.figures[i]} for i in args[0]]
        if "sweep_id = $1" in sql:
            return [s for s in self.sessions.values() if s.get("sweep_id") == args[0]]
        assert "= ANY($1" in sql, sql
        return [self.sessions[i] for i in args[0] if i in self.sessions]

    async def fetchrow(self, sql: str, *args: Any) -> dict[str, Any] | None:
        self.queries.append(sql)
        assert "FROM sweeps" in sql, sql
        return self.sweep if self.sweep and self.sweep["id"] == args[0] else None


# ---- compare -----------------------------------------------------------------------------------


def test_differences_are_against_the_first_figure_by_figure():
    a = summary.build(_session("a"), _figures(100, 50.0))
    b = summary.build(_session("b"), _figures(120, 45.5))
    c = summary.build(_session("c"), _figures(None, 40.0))
    result = summary.compare([a, b, c])
    assert result["sessions"] == [a, b, c]
    db_, dc = result["differences"]
    assert (db_["id"], db_["against"], dc["id"], dc["against"]) == ("b", "a", "c", "a")
    assert db_["arrived"] == 20 and db_["mean_duration"] == -4.5
    # One side without a figure: no difference, not an error.
    assert dc["arrived"] is None and dc["throughput_per_hour"] is None
    assert dc["mean_duration"] == -10.0
    # Every figure, and only the figures, besides the two ids.
    assert set(db_) == {"id", "against", *summary.FIGURES}


async def test_compare_makes_two_queries_however_many_sessions():
    ids = [f"s{i}" for i in range(30)]
    pool = MemoryPool(
        [_session(i) for i in ids], {i: _figures(n, float(n)) for n, i in enumerate(ids)}
    )
    result = await service.compare(pool, [*ids, ids[0]])  # type: ignore[arg-type]
    assert len(pool.queries) == 2
    # In the order asked, a repeated id included, each against the first.
    assert [s["id"] for s in result["sessions"]] == [*ids, ids[0]]
    assert [d["arrived"] for d in result["differences"]] == [*range(1, 30), 0]


async def test_compare_names_the_first_missing_session_in_the_order_asked():
    pool = MemoryPool([_session("a")], {"a": _figures(1, 1.0)})
    with pytest.raises(SessionNotFound, match="no session 'b'"):
        await service.compare(pool, ["a", "b", "c"])  # type: ignore[arg-type]


# ---- sweeps ------------------------------------------------------------------------------------


def _sweep_runs(n_per_scale: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    sweep = {"id": "sweep-1", "request": {"vary": {"scale": [0.5, 1]}}, "created_at": "then"}
    sessions = []
    for scale in (0.5, 1):
        for seed in range(1, n_per_scale + 1):
            session = _session(f"{scale}-{seed}", seed=seed, sumo_options={"scale": scale})
            sessions.append(session | {"sweep_id": "sweep-1"})
    return sweep, sessions


def test_sweep_statistics_count_completed_runs_only():
    sweep, sessions = _sweep_runs(3)
    sessions[2]["status"] = "failed"  # scale 0.5, seed 3
    sessions[5]["status"] = "running"  # scale 1, seed 3
    arrived = {s["id"]: 10 * i for i, s in enumerate(sessions)}
    # A summary of a run that has not completed is not counted, even when there is one.
    summaries = {
        s["id"]: summary.build(s, _figures(arrived[s["id"]], 1.0, last_time=1800)) for s in sessions
    }
    report = sweeps.report(sweep, sessions, summaries)
    assert report["total"] == 6 and report["by_status"] == {
        "completed": 4,
        "failed": 1,
        "running": 1,
    }
    assert report["done"] is False and report["progress"] == 5 / 6
    assert [(s["seed"], s["params"], s["status"]) for s in report["sessions"][:3]] == [
        (1, {"scale": 0.5}, "completed"),
        (2, {"scale": 0.5}, "completed"),
        (3, {"scale": 0.5}, "failed"),
    ]
    low, high = report["groups"]
    assert low["params"] == {"scale": 0.5} and high["params"] == {"scale": 1}
    assert low["completed"] == high["completed"] == 2
    figure = high["figures"]["arrived"]
    values = [30.0, 40.0]
    assert figure["n"] == 2 and figure["mean"] == 35.0
    assert math.isclose(figure["std"], statistics.stdev(values))
    half = st.t.ppf(0.975, 1) * statistics.stdev(values) / math.sqrt(2)
    assert math.isclose(figure["ci95"][0], 35.0 - half)
    assert high["figures"]["throughput_per_hour"]["mean"] == 70.0  # over half an hour
    assert high["figures"]["p95_duration"] == {"n": 0, "mean": None, "std": None, "ci95": None}


def test_a_sweep_with_every_run_ended_is_done():
    sweep, sessions = _sweep_runs(1)
    sessions[0]["status"] = "stopped"
    summaries = {sessions[1]["id"]: summary.build(sessions[1], _figures(5, 1.0))}
    report = sweeps.report(sweep, sessions, summaries)
    assert report["done"] is True and report["progress"] == 1.0
    assert [g["completed"] for g in report["groups"]] == [0, 1]
    assert report["groups"][0]["figures"]["arrived"]["n"] == 0


async def test_sweep_report_makes_three_queries_however_many_runs():
    sweep, sessions = _sweep_runs(20)
    sessions[0]["status"] = "queued"
    pool = MemoryPool(sessions, {s["id"]: _figures(7, 1.0) for s in sessions}, sweep)
    report = await service.sweep_report(pool, "sweep-1")  # type: ignore[arg-type]
    assert len(pool.queries) == 3
    assert report["total"] == 40 and report["by_status"] == {"queued": 1, "completed": 39}
    assert [g["completed"] for g in report["groups"]] == [19, 20]
    # Only the completed runs' summaries are asked for.
    assert "unnest" in pool.queries[2]


async def test_an_unknown_sweep_is_not_found():
    pool = MemoryPool([], {}, None)
    with pytest.raises(SweepNotFound, match="no sweep 'sweep-x'"):
        await service.sweep_report(pool, "sweep-x")  # type: ignore[arg-type]


# ---- replay ------------------------------------------------------------------------------------


def test_a_replay_is_its_originals_request_with_the_body_on_top():
    original = _session(
        "orig",
        seed=7,
        end=400.0,
        mode="stepped",
        version=None,
        label="first",
        sumo_options={"scale": 0.5},
    )
    body = service.replay_body(original, {"replay_of": "orig", "end": 200, "label": "again"})
    assert body["seed"] == 7 and body["sumo_options"] == {"scale": 0.5}
    # Pinned to the original's template version, run by itself, the body's changes on top.
    assert body["version"] == 2 and body["mode"] == "run"
    assert (body["end"], body["label"], body["replay_of"]) == (200, "again", "orig")
    req = parse_session_request(body)
    assert req.replay_of == "orig" and req.version == 2 and req.sumo_options == (("scale", 0.5),)


def test_a_replay_must_begin_at_or_before_the_first_command():
    history = [{"sim_time": 30.0}, {"sim_time": 90.0}]

    def req(**options: float) -> Any:
        return parse_session_request({"template": "t", "sumo_options": options})

    service.check_replayable(req(begin=30), history)
    service.check_replayable(req(begin=30 + 1e-12), history)  # within rounding
    service.check_replayable(req(), history)
    service.check_replayable(req(begin=500), [])  # no command to miss
    with pytest.raises(InvalidRequest, match="begin 31 is after the replayed session's first"):
        service.check_replayable(req(begin=31), history)
