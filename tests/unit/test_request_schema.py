"""The JSON Schemas the API's document shows agree with the validators that decide: a body the
schema allows is accepted, and a body it refuses is refused, field by field and value by value
(hypothesis mixes values drawn from the schema with junk)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors import request, traci_commands
from actors.errors import InvalidRequest
from tests.schema_values import values as from_schema
from tests.unit.test_request import TightLimits

# No NaN or infinity: JSON has neither, and the API refuses them before any validator sees them.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(-1e12, 1e12, allow_nan=False),
    st.floats(0, 2, allow_nan=False),
    st.text(max_size=8),
    st.lists(st.text(max_size=4), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
SETTINGS = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck)
)


def accepted(parse: Any, body: Any) -> bool:
    try:
        parse(body)
    except InvalidRequest:
        return False
    return True


def edges(schema: dict[str, Any]) -> list[Any]:
    """Values at and just past each bound the schema states (where a wrong bound shows)."""
    out: list[Any] = []
    for sub in [schema, *schema.get("anyOf", ())]:
        for bound in ("minimum", "maximum"):
            if bound in sub:
                b = sub[bound]
                out += [b, b - 1, b + 1, b - 0.001, b + 0.001, float(b)]
    return out


def corrupt(schema: dict[str, Any], name: str) -> st.SearchStrategy[Any]:
    near = edges(schema["properties"].get(name, {}))
    return st.one_of(JUNK, st.sampled_from(near)) if near else JUNK


@st.composite
def _bodies(draw: st.DrawFn, schema: dict[str, Any], extra_keys: list[str]) -> dict[str, Any]:
    """A body the schema allows, then 0 to 2 of its fields (or an unknown one) made junk or set
    to a value at the edge of its bounds."""
    body = dict(draw(from_schema(schema)))
    names = sorted(schema["properties"]) + extra_keys
    for name in draw(st.lists(st.sampled_from(names), max_size=2, unique=True)):
        body[name] = draw(corrupt(schema, name))
    return body


def bodies(schema: dict[str, Any], extra_keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return _bodies(schema, extra_keys)


def nested_options(schema: dict[str, Any]) -> dict[str, Any]:
    return schema["properties"]["sumo_options"]["anyOf"][0]  # type: ignore[no-any-return]


@pytest.mark.parametrize("limits", [None, TightLimits()], ids=["defaults", "tight"])
def test_session_schema_and_validator_agree(limits: Any):
    schema = request.json_schema(limits)
    validator = jsonschema.Draft202012Validator(schema)

    @SETTINGS
    @given(bodies(schema, ["seeds", "Template"]))
    def check(body: dict[str, Any]) -> None:
        ok = accepted(lambda b: request.parse_session_request(b, limits), body)
        assert ok == validator.is_valid(body), (body, list(validator.iter_errors(body))[:2])

    check()


PROBES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    1.5,
    "",
    "x",
    "run",
    "a b",
    "é",
    "x" * 101,
    [],
    {},
    ["trips"],
]


@pytest.mark.parametrize("limits", [None, TightLimits()], ids=["defaults", "tight"])
def test_every_field_agrees_at_its_edges(limits: Any):
    """Each field alone, at and past each bound the schema states, and a few probes."""
    schema = request.json_schema(limits)
    validator = jsonschema.Draft202012Validator(schema)
    cases = [
        {"template": "t", name: value}
        for name, sub in schema["properties"].items()
        for value in [*edges(sub), *PROBES]
    ]
    options = nested_options(schema)["properties"]
    cases += [
        {"template": "t", "sumo_options": {name: value}}
        for name, sub in options.items()
        for value in [*edges(sub), *PROBES, *sub.get("enum", ())]
    ]
    for body in cases:
        ok = accepted(lambda b: request.parse_session_request(b, limits), body)
        assert ok == validator.is_valid(body), body


def test_the_schema_lists_every_field_the_validator_knows():
    assert set(request.json_schema()["properties"]) == request.FIELDS


@SETTINGS
@given(st.data())
def test_each_sumo_option_check_matches_its_schema(data: st.DataObject):
    name = data.draw(st.sampled_from(sorted(request.SUMO_OPTIONS)))
    check = request.SUMO_OPTIONS[name]
    value = data.draw(st.one_of(from_schema(check.schema), JUNK))
    try:
        check(value)
        ok = True
    except ValueError:
        ok = False
    assert ok == jsonschema.Draft202012Validator(check.schema).is_valid(value), (name, value)


def test_command_schema_and_parser_agree():
    schema = traci_commands.json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    one = st.one_of(
        st.sampled_from(sorted(traci_commands.COMMANDS)).flatmap(
            lambda name: from_schema(traci_commands.command_schema(name))
        ),
        st.fixed_dictionaries(
            {"type": st.sampled_from(sorted(traci_commands.COMMANDS))},
            optional={
                k: JUNK for k in ("id", "speed", "edge", "edges", "phase", "seconds", "domain")
            },
        ),
    )

    @SETTINGS
    @given(st.fixed_dictionaries({"commands": st.lists(one, min_size=1, max_size=3)}))
    def check(body: dict[str, Any]) -> None:
        ok = accepted(traci_commands.parse, body)
        assert ok == validator.is_valid(body), (body, list(validator.iter_errors(body))[:2])

    check()
