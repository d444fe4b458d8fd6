"""Sweeps: one session per combination of seeds and varied parameters, and statistics of the
summary figures across the runs of each combination."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from actors.errors import InvalidRequest
from actors.request import SUMO_OPTIONS, SessionRequest, parse_session_request
from supervisor.config import Config
from supervisor.db import FINAL_STATUSES
from supervisor.summary import FIGURES

MAX_SESSIONS = 1000
# Request fields a sweep may vary besides SUMO options.
VARIABLE_FIELDS = ("end", "sample_every", "trajectory_period", "edge_period", "max_wall_s")


@dataclass(frozen=True)
class SweepRequest:
    """A sweep as it was asked for (`body`, stored with the sweep) and each of its runs: the
    varied values and the session request they make."""

    body: dict[str, Any]
    runs: tuple[tuple[dict[str, Any], SessionRequest], ...]


def parse_sweep_request(body: Any, cfg: Config | None = None) -> SweepRequest:
    """The sweep `body` asks for, every run validated (see `expand`)."""
    runs = expand(body, cfg)
    return SweepRequest(body, tuple(runs))


def expand(body: Any, cfg: Config | None = None) -> list[tuple[dict[str, Any], SessionRequest]]:
    """Every (varied params, session request) of a sweep; all validated, against the daemon's
    limits too, before any is made."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    body = dict(body)
    seeds = body.pop("seeds", None)
    runs = body.pop("runs", None)
    vary = body.pop("vary", {}) or {}
    if (seeds is None) == (runs is None):
        raise InvalidRequest("give either 'seeds' (a list) or 'runs' (a count)", field="seeds")
    if runs is not None:
        if isinstance(runs, bool) or not isinstance(runs, int) or not 1 <= runs <= MAX_SESSIONS:
            raise InvalidRequest(f"runs must be an integer in [1, {MAX_SESSIONS}]", field="runs")
        seeds = list(range(1, runs + 1))
    if not isinstance(seeds, list) or not seeds or len(set(map(repr, seeds))) != len(seeds):
        raise InvalidRequest("seeds must be a non-empty list of distinct seeds", field="seeds")
    if "seed" in body:
        raise InvalidRequest("a sweep sets 'seed' itself: use 'seeds' or 'runs'", field="seed")
    # Checked here, not only per run: the runs' options are merged into it below.
    if not isinstance(body.get("sumo_options", {}), dict | None):
        raise InvalidRequest(
            "sumo_options must be an object of option: value", field="sumo_options"
        )
    if not isinstance(vary, dict) or not all(isinstance(v, list) and v for v in vary.values()):
        raise InvalidRequest("vary must map parameters to non-empty lists of values", field="vary")
    for param in vary:
        if param not in VARIABLE_FIELDS and param not in SUMO_OPTIONS:
            raise InvalidRequest(
                f"cannot vary {param!r}",
                field="vary",
                allowed=sorted([*VARIABLE_FIELDS, *SUMO_OPTIONS]),
            )
    # Counted before any combination is built: a few short lists multiply to millions.
    if math.prod(len(v) for v in vary.values()) * len(seeds) > MAX_SESSIONS:
        raise InvalidRequest(f"a sweep makes at most {MAX_SESSIONS} sessions", field="vary")
    names = sorted(vary)
    combos = [
        dict(zip(names, values, strict=True))
        for values in itertools.product(*(vary[n] for n in names))
    ]
    out = []
    for params in combos:
        for seed in seeds:
            one = dict(body, seed=seed)
            options = dict(one.get("sumo_options") or {})
            for name, value in params.items():
                if name in SUMO_OPTIONS:
                    options[name] = value
                else:
                    one[name] = value
            if options:
                one["sumo_options"] = options
            out.append((params, parse_session_request(one, cfg)))
    return out


def params_of(request: Mapping[str, Any], vary: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Which of the varied values a session of the sweep ran with, as the sweep gave them."""
    options = request.get("sumo_options") or {}
    return {name: options[name] if name in options else request.get(name) for name in vary}


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, standard deviation and the 95% confidence interval of the mean (Student's t)."""
    from scipy import stats as st

    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci95": None}
    mean = statistics.fmean(values)
    if n == 1:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = float(st.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def group_stats(
    runs: list[tuple[Mapping[str, Any], dict[str, Any] | None]],
) -> list[dict[str, Any]]:
    """Per combination of varied params: statistics of each figure over its completed runs."""
    groups: dict[str, tuple[Mapping[str, Any], list[dict[str, Any]]]] = {}
    for params, summary in runs:
        key = repr(sorted(params.items()))
        groups.setdefault(key, (params, []))
        if summary is not None:
            groups[key][1].append(summary)
    out = []
    for params, summaries in groups.values():
        figures = {}
        for fig in FIGURES:
            vals = [float(s[fig]) for s in summaries if s.get(fig) is not None]
            figures[fig] = stats(vals)
        out.append({"params": dict(params), "completed": len(summaries), "figures": figures})
    return out


def report(
    sweep: Mapping[str, Any],
    sessions: list[dict[str, Any]],
    summaries: Mapping[str, dict[str, Any]],
) -> dict[str, Any]:
    """What GET /v1/sweeps/{id} answers: the sweep's progress, each run's params and status, and
    the statistics per combination. `sessions` are the sweep's (id, status, request), in order;
    `summaries` the summaries of its completed ones, by id (a run counts only once completed,
    whatever else is known of it)."""
    by_status: dict[str, int] = {}
    runs = []
    vary = sweep["request"].get("vary") or {}
    for row in sessions:
        by_status[row["status"]] = by_status.get(row["status"], 0) + 1
        params = params_of(row["request"], vary)
        summary = summaries[row["id"]] if row["status"] == "completed" else None
        runs.append((params, summary, row))
    return {
        "id": sweep["id"],
        "request": sweep["request"],
        "created_at": sweep["created_at"],
        "total": len(sessions),
        "by_status": by_status,
        "done": all(r["status"] in FINAL_STATUSES for r in sessions),
        "progress": sum(by_status.get(st, 0) for st in FINAL_STATUSES) / max(len(sessions), 1),
        "sessions": [
            {"id": row["id"], "seed": row["request"]["seed"], "params": p, "status": row["status"]}
            for p, _summary, row in runs
        ],
        "groups": group_stats([(p, summary) for p, summary, _row in runs]),
    }
