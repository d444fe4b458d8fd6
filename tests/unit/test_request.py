"""What a new session may ask for: the daemon's limits, unknown fields, and a 400 naming the
field that is wrong. (Labels: tests/test_session_request.py.)"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from actors.errors import InvalidRequest
from actors.request import SessionRequest, parse_session_request


@dataclass(frozen=True)
class TightLimits:
    """A daemon configured with smaller limits than the defaults (any object with these
    properties is a `Limits`)."""

    scale_limit: float = 2.0
    trajectory_period_min: float = 0.5
    idle_timeout_s_limit: float = 60.0
    max_pause_s: float = 120.0
    max_wall_s_limit: float = 600.0
    end_limit: float = 3600.0


def refusal(body: Any, cfg: Any = None) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse_session_request(body, cfg)
    return caught.value


# ---- the daemon's limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key", "setting"),
    [
        ({"sumo_options": {"scale": 2.5}}, "scale", "scale_limit"),
        ({"idle_timeout_s": 61}, "idle_timeout_s", "idle_timeout_s_limit"),
        ({"max_pause_s": 120.5}, "max_pause_s", "max_pause_s"),
        ({"max_wall_s": 601}, "max_wall_s", "max_wall_s_limit"),
        ({"end": 3600.01}, "end", "end_limit"),
    ],
)
def test_a_value_over_the_daemons_limit_is_refused_naming_the_setting(
    body: dict[str, Any], key: str, setting: str
):
    error = refusal({"template": "t", **body}, TightLimits())
    assert f"{key} must be at most" in error.message
    assert f"(the daemon's {setting})" in error.message
    # The same request passes a daemon with default limits.
    parse_session_request({"template": "t", **body})


def test_a_trajectory_period_under_the_daemons_minimum_is_refused():
    error = refusal({"template": "t", "trajectory_period": 0.25}, TightLimits())
    assert error.detail["field"] == "trajectory_period"
    assert "at least 0.5 (the daemon's trajectory_period_min)" in error.message
    # A daemon with default limits takes it.
    req = parse_session_request({"template": "t", "trajectory_period": 0.25})
    assert req.trajectory_period == 0.25


def test_values_at_the_limits_pass():
    body = {
        "template": "t", "sumo_options": {"scale": 2}, "idle_timeout_s": 60, "max_pause_s": 120,
        "max_wall_s": 600, "end": 3600, "trajectory_period": 0.5,
    }  # fmt: skip
    req = parse_session_request(body, TightLimits())
    assert (req.end, req.max_wall_s, req.max_pause_s, req.idle_timeout_s) == (3600, 600, 120, 60)
    assert req.trajectory_period == 0.5


def test_the_idle_timeout_defaults_to_300_s_unless_the_daemon_allows_less():
    assert parse_session_request({"template": "t"}).idle_timeout_s == 300.0
    assert parse_session_request({"template": "t"}, TightLimits()).idle_timeout_s == 60.0


# ---- unknown fields and types ------------------------------------------------------------------


def test_unknown_fields_are_refused_and_listed():
    error = refusal({"template": "t", "seeds": [1], "End": 10})
    assert error.message == "unknown field(s): End, seeds"
    assert error.detail["fields"] == ["End", "seeds"]


@pytest.mark.parametrize("body", [[], "t", None, 3])
def test_a_body_that_is_not_an_object_is_refused(body: Any):
    assert "JSON object" in refusal(body).message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("template", 3),
        ("template", ""),
        ("version", "1"),
        ("version", 0),
        ("end", "3600"),
        ("end", True),
        ("seed", 1.5),
        ("seed", -1),
        ("sample_every", True),
        ("sample_every", 0),
        ("max_wall_s", "60"),
        ("label", 7),
        ("sumo_options", ["scale"]),
        ("record", "trips"),
        ("record", ["samples", 1]),
        ("record", ["trips", "speeds"]),
        ("trajectory_period", [1]),
        ("edge_period", "60"),
        ("on_interrupt", "retry"),
        ("max_attempts", 1.5),
        ("max_attempts", 101),
        ("mode", "fast"),
        ("idle_timeout_s", {}),
        ("pause_counts", "yes"),
        ("max_pause_s", False),
        ("replay_of", 12),
    ],
)
def test_a_wrong_value_is_refused_naming_its_field(key: str, value: Any):
    body = {"template": "t", key: value}
    error = refusal(body)
    assert error.status == 400
    assert error.detail["field"] == key
    assert key in error.message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"step-length": "1"}, "SUMO option 'step-length' must be a number in [0.001, 60]"),
        ({"step-length": 0}, "SUMO option 'step-length' must be a number in [0.001, 60]"),
        ({"scale": True}, "SUMO option 'scale' must be a number in [0, 1000]"),
        ({"max-num-vehicles": 1.5}, "SUMO option 'max-num-vehicles' must be an integer"),
        ({"ignore-route-errors": 1}, "SUMO option 'ignore-route-errors' must be true or false"),
        ({"collision.action": "explode"}, "SUMO option 'collision.action' must be one of none,"),
        ({"net-file": "other.net.xml"}, "SUMO option 'net-file' is not allowed"),
    ],
)
def test_a_sumo_option_is_checked_by_its_own_rule(options: dict[str, Any], message: str):
    error = refusal({"template": "t", "sumo_options": options})
    assert error.detail["field"] == "sumo_options"
    assert error.message.startswith(message)


def test_a_replay_cannot_be_stepped():
    error = refusal({"template": "t", "replay_of": "abc", "mode": "stepped"})
    assert error.detail["field"] == "mode"


# ---- what a valid request becomes --------------------------------------------------------------


def test_a_valid_request_becomes_sumos_command_line_in_the_order_given():
    req = parse_session_request(
        {
            "template": "t", "end": 600, "seed": 7,
            "sumo_options": {"step-length": 1, "ignore-route-errors": True, "max-num-vehicles": 5},
        }
    )  # fmt: skip
    assert req.sumo_args() == [
        "--end", "600.0", "--seed", "7", "--step-length", "1.0",
        "--ignore-route-errors", "true", "--max-num-vehicles", "5",
    ]  # fmt: skip


def test_record_always_has_samples_in_a_fixed_order():
    req = parse_session_request({"template": "t", "record": ["edges", "trips", "trips"]})
    assert req.record == ("samples", "trips", "edges")


def test_a_stored_request_reads_back_the_same():
    req = parse_session_request(
        {"template": "t", "sumo_options": {"scale": 1.5}, "record": ["trips"], "label": "a"}
    )
    # As the database keeps it: JSON.
    assert SessionRequest.from_json(json.loads(json.dumps(req.to_json()))) == req


@pytest.mark.parametrize("options", [[], "", 0, False, ["scale"]])
def test_sumo_options_that_are_not_an_object_are_refused_even_when_empty(options: Any):
    with pytest.raises(InvalidRequest) as err:
        parse_session_request({"template": "grid", "sumo_options": options})
    assert err.value.detail["field"] == "sumo_options"


def test_sample_detail_is_period_for_a_running_session_and_exact_for_a_stepped_one():
    assert parse_session_request({"template": "t"}).sample_detail == "period"
    assert parse_session_request({"template": "t", "mode": "stepped"}).sample_detail == "exact"
    exact = parse_session_request({"template": "t", "sample_detail": "exact"})
    assert exact.sample_detail == "exact"
    # Stored before the choice existed: sampled as it was then, every step.
    stored = exact.to_json()
    del stored["sample_detail"]
    assert SessionRequest.from_json(stored).sample_detail == "exact"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"sample_detail": "fast"}, "must be 'period' or 'exact'"),
        ({"sample_detail": 1}, "must be 'period' or 'exact'"),
        ({"sample_detail": "period", "mode": "stepped"}, "stepped one is sampled exactly"),
    ],
)
def test_bad_sample_detail_is_refused_naming_it(body, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_session_request({"template": "t", **body})
    assert caught.value.detail["field"] == "sample_detail"
