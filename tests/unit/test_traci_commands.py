"""The command allow-list: what `parse` lets through to a running session, and which commands
are kept for a replay."""

from __future__ import annotations

from typing import Any

import pytest

from actors.errors import InvalidRequest
from actors.traci_commands import COMMANDS, MAX_COMMANDS, MAX_INT, changes_state, parse


def refusal(body: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(body)
    return caught.value


def test_a_batch_comes_back_as_given():
    batch = [
        {"type": "tls.set_phase", "id": "J1", "phase": 2},
        {"type": "vehicle.set_speed", "id": "v0", "speed": -1},  # back to SUMO's control
        {"type": "vehicle.add", "id": "new", "edges": ["e1", "e2"], "vtype": "bus"},
        {"type": "vehicle.add", "id": "new2", "route": "r0"},
        {"type": "edge.close", "id": "e1"},
        {"type": "get", "id": "J1", "domain": "tls", "var": "phase"},
        {"type": "network"},
    ]
    assert parse({"commands": batch}) == batch
    assert parse(batch) == batch  # a bare list is a batch too


@pytest.mark.parametrize("body", [{}, {"commands": []}, {"commands": {"type": "network"}}, "x"])
def test_a_batch_is_a_non_empty_list(body: Any):
    assert "at least one command" in refusal(body).message


def test_a_batch_has_at_most_max_commands():
    assert len(parse([{"type": "network"}] * MAX_COMMANDS)) == MAX_COMMANDS
    assert f"at most {MAX_COMMANDS}" in refusal([{"type": "network"}] * (MAX_COMMANDS + 1)).message


def test_the_first_bad_command_is_named_by_its_index():
    error = refusal([{"type": "network"}, {"type": "vehicle.teleport", "id": "v0"}])
    assert error.message.startswith("command 1: type must be one of ")
    assert error.detail["index"] == 1
    assert error.detail["allowed"] == sorted(COMMANDS)


@pytest.mark.parametrize("command", ["network", {"id": "v0"}, {"type": "getattr"}])
def test_an_unknown_type_is_refused(command: Any):
    assert "type must be one of" in refusal([command]).message


def test_an_unknown_field_is_refused():
    error = refusal([{"type": "vehicle.remove", "id": "v0", "force": True}])
    assert error.message == "command 0: unknown field(s) force"


@pytest.mark.parametrize(
    "command",
    [
        {"type": "vehicle.remove"},
        {"type": "vehicle.remove", "id": 3},
        {"type": "get", "domain": "tls", "var": "phase"},
    ],
)
def test_a_command_on_an_object_needs_its_id(command: dict[str, Any]):
    assert "'id' is required" in refusal([command]).message


def test_a_required_field_is_required():
    error = refusal([{"type": "tls.set_phase", "id": "J1"}])
    assert error.message == "command 0 (tls.set_phase): 'phase' is required"


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ({"type": "tls.set_phase", "id": "J", "phase": -1}, "phase"),
        ({"type": "tls.set_phase", "id": "J", "phase": 1.5}, "phase"),
        ({"type": "tls.set_phase", "id": "J", "phase": True}, "phase"),
        ({"type": "tls.set_phase", "id": "J", "phase": MAX_INT + 1}, "phase"),  # TraCI: 32 bits
        ({"type": "tls.set_phase_duration", "id": "J", "seconds": -0.5}, "seconds"),
        ({"type": "tls.set_phase_duration", "id": "J", "seconds": float("nan")}, "seconds"),
        ({"type": "tls.set_phase_duration", "id": "J", "seconds": float("inf")}, "seconds"),
        ({"type": "tls.set_phase_duration", "id": "J", "seconds": 10**13}, "seconds"),
        ({"type": "tls.set_program", "id": "J", "program": ""}, "program"),
        ({"type": "tls.set_state", "id": "J", "state": "G" * 1001}, "state"),
        ({"type": "vehicle.set_speed", "id": "v", "speed": -2}, "speed"),
        ({"type": "vehicle.set_speed", "id": "v", "speed": "fast"}, "speed"),
        ({"type": "vehicle.change_target", "id": "v", "edge": 5}, "edge"),
        ({"type": "vehicle.add", "id": "n", "edges": []}, "edges"),
        ({"type": "vehicle.add", "id": "n", "edges": ["e1", 2]}, "edges"),
        ({"type": "vehicle.add", "id": "n", "route": "r", "vtype": None}, "vtype"),
    ],
)
def test_a_bad_value_is_refused_naming_the_field(command: dict[str, Any], key: str):
    error = refusal([command])
    assert error.message.startswith(f"command 0 ({command['type']}): bad {key!r}: ")


def test_values_at_the_edges_pass():
    parse(
        [
            {"type": "tls.set_phase", "id": "J", "phase": 0},
            {"type": "tls.set_phase", "id": "J", "phase": MAX_INT},
            {"type": "tls.set_phase_duration", "id": "J", "seconds": 0},
            {"type": "vehicle.set_speed", "id": "v", "speed": 0.0},
            {"type": "edge.set_max_speed", "id": "e", "speed": 1e12},
        ]
    )


def test_get_only_reads_what_is_listed():
    assert parse([{"type": "get", "id": "e1", "domain": "edge", "var": "travel_time"}])
    error = refusal([{"type": "get", "id": "v0", "domain": "vehicle", "var": "__class__"}])
    assert error.message == "command 0: cannot get vehicle.__class__"
    assert "vehicle.speed" in error.detail["allowed"]


@pytest.mark.parametrize(
    "command",
    [
        {"type": "vehicle.add", "id": "n"},
        {"type": "vehicle.add", "id": "n", "route": "r", "edges": ["e"]},
    ],
)
def test_a_new_vehicle_has_a_route_or_edges_not_both(command: dict[str, Any]):
    assert refusal([command]).message == "command 0 (vehicle.add): give 'route' or 'edges'"


def test_parse_copies_the_commands():
    command = {"type": "edge.close", "id": "e1"}
    [parsed] = parse([command])
    parsed["id"] = "e2"
    assert command["id"] == "e1"


@pytest.mark.parametrize("kind", ["get", "network"])
def test_queries_do_not_change_state(kind: str):
    assert changes_state({"type": kind}) is False


@pytest.mark.parametrize("kind", sorted(set(COMMANDS) - {"get", "network"}))
def test_every_other_command_changes_state(kind: str):
    # Stored with its sim time, and applied again by a replay.
    assert changes_state({"type": kind}) is True


@pytest.mark.parametrize("kind", [[], {}, 1, None, True])
def test_a_type_that_is_not_a_string_is_refused_not_a_crash(kind: Any):
    with pytest.raises(InvalidRequest, match="command 0: type must be one of"):
        parse({"commands": [{"type": kind}]})


def test_an_integer_written_with_a_fraction_of_zero_is_that_integer():
    # JSON has one kind of number: 2.0 is 2, as the command's JSON Schema says.
    (command,) = parse([{"type": "tls.set_phase", "id": "J1", "phase": 2.0}])
    assert command["phase"] == 2 and isinstance(command["phase"], int)
