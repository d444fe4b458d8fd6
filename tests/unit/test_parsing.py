"""Parsing requests into typed objects, with no SUMO, no PostgreSQL and no daemon: the step and
compare requests of the API, sweeps, and the session request the CLI checks before sending it
with the daemon's own parser."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from actors.errors import InvalidRequest
from supervisor import api, sweeps
from supervisor.commands_cli import CliError, session_body


@pytest.mark.parametrize("seconds", [0.5, 1, 1e7])
def test_a_step_asks_for_positive_seconds(seconds: float):
    assert api.parse_step({"seconds": seconds}) == float(seconds)


@pytest.mark.parametrize("body", [{}, {"seconds": 0}, {"seconds": -1}, {"seconds": True},
                                  {"seconds": "5"}, {"seconds": 1e8}, [5], None])  # fmt: skip
def test_a_bad_step_is_refused(body: Any):
    with pytest.raises(InvalidRequest, match=re.escape('send {"seconds": s} with s > 0')):
        api.parse_step(body)


def test_compare_takes_two_to_fifty_ids_in_order():
    assert api.parse_compare({"sessions": "b,a,,b"}) == ["b", "a", "b"]
    for query in ({}, {"sessions": "a"}, {"sessions": ",".join(map(str, range(51)))}):
        with pytest.raises(InvalidRequest, match="2 to 50 session ids"):
            api.parse_compare(query)


def test_a_sweep_request_keeps_its_body_and_makes_every_run():
    body = {"template": "t", "seeds": [1, 2], "vary": {"scale": [0.5, 2], "end": [100]}}
    sweep = sweeps.parse_sweep_request(body)
    assert sweep.body is body
    assert [(params, req.seed, req.end, req.sumo_options) for params, req in sweep.runs] == [
        ({"end": 100, "scale": 0.5}, 1, 100, (("scale", 0.5),)),
        ({"end": 100, "scale": 0.5}, 2, 100, (("scale", 0.5),)),
        ({"end": 100, "scale": 2}, 1, 100, (("scale", 2),)),
        ({"end": 100, "scale": 2}, 2, 100, (("scale", 2),)),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"template": "t"}, "either 'seeds'"),
        ({"template": "t", "runs": 0}, "runs must be"),
        ({"template": "t", "seeds": [1, 1]}, "distinct"),
        ({"template": "t", "runs": 2, "seed": 3}, "sets 'seed' itself"),
        ({"template": "t", "runs": 2, "vary": {"remote-port": [1]}}, "cannot vary"),
        ({"template": "t", "runs": 2, "vary": {"scale": ["big"]}}, "must be a number"),
        ({"template": "t", "runs": 600, "vary": {"scale": [1, 2]}}, "at most 1000"),
        ([], "must be a JSON object"),
        # Found by the fuzzing (tests/test_fuzz.py): each was a 500.
        ({"template": "t", "runs": 1, "sumo_options": [None, None]}, "must be an object"),
        ({"template": "t", "runs": 1, "sumo_options": "AAA"}, "must be an object"),
        ({"template": "t", "runs": 1, "vary": {"scale": [1]}, "sumo_options": []}, "an object"),
    ],
)
def test_a_bad_sweep_is_refused_before_any_run_is_made(body: Any, message: str):
    with pytest.raises(InvalidRequest, match=message):
        sweeps.parse_sweep_request(body)


def _run_args(**given: Any) -> argparse.Namespace:
    args = {"template": "city", "end": None, "seed": None, "label": None, "sample_every": None}
    return argparse.Namespace(**(args | {"record": None} | given))


def test_the_cli_sends_what_was_given_only():
    assert session_body(_run_args()) == {"template": "city"}
    assert session_body(
        _run_args(end=300.0, seed=5, label="cli", record="samples, trips,")
    ) == {"template": "city", "end": 300.0, "seed": 5, "label": "cli",
          "record": ["samples", "trips"]}  # fmt: skip


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"seed": -1}, "seed must be an integer"),
        ({"label": "two words"}, "label must be"),
        ({"record": "samples,video"}, "record: unknown video"),
        ({"sample_every": 0}, "sample_every must be"),
        ({"end": 0.0}, "end must be a number"),
    ],
)
def test_the_cli_refuses_a_bad_session_request_itself(given: dict[str, Any], message: str):
    with pytest.raises(CliError, match=message):
        session_body(_run_args(**given))


def test_the_cli_leaves_the_daemons_limits_to_the_daemon():
    # Past a default daemon's end_limit (1e7), within what a daemon's settings may allow.
    assert session_body(_run_args(end=5e8))["end"] == 5e8
