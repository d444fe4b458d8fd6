"""Commands a user may send to a running session: an allow-list of typed commands, each mapped
onto TraCI calls. Never an arbitrary method name.

`parse` checks shapes and values (no SUMO needed); `apply` runs on the session's TraCI thread:
it checks every id against the live simulation first and applies nothing unless all are known,
then applies the batch in order between two steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from traci.connection import Connection
from traci.exceptions import TraCIException

from actors.errors import InvalidRequest, SupervisorError

MAX_COMMANDS = 1000


class UnknownObject(SupervisorError):
    """A command names an object the simulation does not have."""

    status = 404


@dataclass(frozen=True)
class Spec:
    domain: str  # which id list the command's "id" must be in ("" = no id)
    fields: dict[str, str]  # field -> kind: str | number | int | speed | edge | route | vtype
    apply: Callable[[Connection, dict[str, Any]], Any]
    changes: bool = True  # False for queries: not stored for replay


# Where a closed lane keeps the classes it allowed before: a parameter on the lane in SUMO
# itself, so the daemon holds no state of its own and a replay restores the same.
_OPEN_ALLOWED = "sumo-supervisor.allowed"


def _lanes(conn: Connection, edge: str) -> list[str]:
    return [f"{edge}_{i}" for i in range(conn.edge.getLaneNumber(edge))]


def _close_edge(conn: Connection, c: dict[str, Any]) -> None:
    for lane in _lanes(conn, c["id"]):
        if not conn.lane.getParameter(lane, _OPEN_ALLOWED):  # closing twice keeps the first
            allowed = " ".join(conn.lane.getAllowed(lane)) or "all"
            conn.lane.setParameter(lane, _OPEN_ALLOWED, allowed)
        # Only emergency vehicles ("authority") may still use it: closed to normal traffic.
        conn.lane.setAllowed(lane, ["authority"])


def _reopen_edge(conn: Connection, c: dict[str, Any]) -> None:
    """Give each lane back the classes it allowed before it was closed (a sidewalk stays a
    sidewalk); a lane that was never closed is left as it is."""
    for lane in _lanes(conn, c["id"]):
        allowed = conn.lane.getParameter(lane, _OPEN_ALLOWED)
        if not allowed:
            continue
        if allowed == "all":
            conn.lane.setDisallowed(lane, [])
        else:
            conn.lane.setAllowed(lane, allowed.split())
        conn.lane.setParameter(lane, _OPEN_ALLOWED, "")


def _add_vehicle(conn: Connection, c: dict[str, Any]) -> None:
    route = c.get("route")
    if route is None:
        route = f"route_of_{c['id']}"
        conn.route.add(route, c["edges"])
    conn.vehicle.add(c["id"], route, typeID=c.get("vtype", "DEFAULT_VEHTYPE"), depart="now")


_GET = {
    ("vehicle", "speed"): lambda conn, i: conn.vehicle.getSpeed(i),
    ("vehicle", "position"): lambda conn, i: list(conn.vehicle.getPosition(i)),
    ("vehicle", "road"): lambda conn, i: conn.vehicle.getRoadID(i),
    ("vehicle", "lane"): lambda conn, i: conn.vehicle.getLaneID(i),
    ("vehicle", "route"): lambda conn, i: list(conn.vehicle.getRoute(i)),
    ("vehicle", "max_speed"): lambda conn, i: conn.vehicle.getMaxSpeed(i),
    ("tls", "phase"): lambda conn, i: conn.trafficlight.getPhase(i),
    ("tls", "program"): lambda conn, i: conn.trafficlight.getProgram(i),
    ("tls", "state"): lambda conn, i: conn.trafficlight.getRedYellowGreenState(i),
    ("tls", "phase_duration"): lambda conn, i: conn.trafficlight.getPhaseDuration(i),
    ("tls", "next_switch"): lambda conn, i: conn.trafficlight.getNextSwitch(i),
    ("edge", "vehicle_count"): lambda conn, i: conn.edge.getLastStepVehicleNumber(i),
    ("edge", "mean_speed"): lambda conn, i: conn.edge.getLastStepMeanSpeed(i),
    ("edge", "travel_time"): lambda conn, i: conn.edge.getTraveltime(i),
    ("lane", "max_speed"): lambda conn, i: conn.lane.getMaxSpeed(i),
    ("lane", "vehicle_count"): lambda conn, i: conn.lane.getLastStepVehicleNumber(i),
    ("lane", "allowed"): lambda conn, i: list(conn.lane.getAllowed(i)),
}

COMMANDS: dict[str, Spec] = {
    "tls.set_phase": Spec(
        "tls", {"phase": "int"}, lambda conn, c: conn.trafficlight.setPhase(c["id"], c["phase"])
    ),
    "tls.set_phase_duration": Spec(
        "tls",
        {"seconds": "number"},
        lambda conn, c: conn.trafficlight.setPhaseDuration(c["id"], c["seconds"]),
    ),
    "tls.set_program": Spec(
        "tls",
        {"program": "str"},
        lambda conn, c: conn.trafficlight.setProgram(c["id"], c["program"]),
    ),
    "tls.set_state": Spec(
        "tls",
        {"state": "str"},
        lambda conn, c: conn.trafficlight.setRedYellowGreenState(c["id"], c["state"]),
    ),
    "vehicle.set_speed": Spec(
        "vehicle", {"speed": "speed"}, lambda conn, c: conn.vehicle.setSpeed(c["id"], c["speed"])
    ),
    "vehicle.set_max_speed": Spec(
        "vehicle",
        {"speed": "speed"},
        lambda conn, c: conn.vehicle.setMaxSpeed(c["id"], c["speed"]),
    ),
    "vehicle.change_target": Spec(
        "vehicle",
        {"edge": "edge"},
        lambda conn, c: conn.vehicle.changeTarget(c["id"], c["edge"]),
    ),
    "vehicle.reroute": Spec("vehicle", {}, lambda conn, c: conn.vehicle.rerouteTraveltime(c["id"])),
    "vehicle.remove": Spec("vehicle", {}, lambda conn, c: conn.vehicle.remove(c["id"])),
    "vehicle.add": Spec(
        "new_vehicle", {"route?": "route", "edges?": "edges", "vtype?": "vtype"}, _add_vehicle
    ),
    "edge.set_max_speed": Spec(
        "edge", {"speed": "speed"}, lambda conn, c: conn.edge.setMaxSpeed(c["id"], c["speed"])
    ),
    "lane.set_max_speed": Spec(
        "lane", {"speed": "speed"}, lambda conn, c: conn.lane.setMaxSpeed(c["id"], c["speed"])
    ),
    "edge.close": Spec("edge", {}, _close_edge),
    "edge.reopen": Spec("edge", {}, _reopen_edge),
    "get": Spec(
        "by_domain",
        {"domain": "str", "var": "str"},
        lambda conn, c: _GET[(c["domain"], c["var"])](conn, c["id"]),  # type: ignore[no-untyped-call]
        changes=False,
    ),
    # Answered from the network read with sumolib (see `apply`), not from TraCI.
    "network": Spec("", {}, lambda conn, c: None, changes=False),
}


def parse(body: Any) -> list[dict[str, Any]]:
    """Check the shape of a command batch; InvalidRequest names the first bad command."""
    commands = body.get("commands") if isinstance(body, dict) else body
    if not isinstance(commands, list) or not commands:
        raise InvalidRequest('send {"commands": [...]} with at least one command')
    if len(commands) > MAX_COMMANDS:
        raise InvalidRequest(f"at most {MAX_COMMANDS} commands at once")
    out = []
    for n, c in enumerate(commands):
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("type"), str)
            or c["type"] not in COMMANDS
        ):
            raise InvalidRequest(
                f"command {n}: type must be one of {', '.join(sorted(COMMANDS))}",
                index=n,
                allowed=sorted(COMMANDS),
            )
        spec = COMMANDS[c["type"]]
        allowed = {"type", "id"} | {f.rstrip("?") for f in spec.fields}
        extra = sorted(set(c) - allowed)
        if extra:
            raise InvalidRequest(f"command {n}: unknown field(s) {', '.join(extra)}", index=n)
        if spec.domain and not isinstance(c.get("id"), str):
            raise InvalidRequest(f"command {n} ({c['type']}): 'id' is required", index=n)
        for name, kind in spec.fields.items():
            key = name.rstrip("?")
            if key not in c:
                if name.endswith("?"):
                    continue
                raise InvalidRequest(f"command {n} ({c['type']}): '{key}' is required", index=n)
            _check(n, c["type"], key, kind, c[key])
            if kind == "int":
                c = {**c, key: int(c[key])}  # 3.0 is the integer 3 (JSON has one number kind)
        if c["type"] == "get" and (c["domain"], c["var"]) not in _GET:
            raise InvalidRequest(
                f"command {n}: cannot get {c['domain']}.{c['var']}",
                index=n,
                allowed=sorted(f"{d}.{v}" for d, v in _GET),
            )
        if c["type"] == "vehicle.add" and ("route" in c) == ("edges" in c):
            raise InvalidRequest(f"command {n} (vehicle.add): give 'route' or 'edges'", index=n)
        out.append(dict(c))
    return out


# TraCI sends integers as 32-bit: a larger one would fail inside traci, not here.
MAX_INT = 2**31 - 1
# Beyond this a number is no time, speed or duration SUMO can use (and float() of a huge int fails).
MAX_NUMBER = 1e12


def _whole(value: Any) -> bool:
    """An int, or a float with no fraction (JSON has one kind of number: 2.0 is 2)."""
    if isinstance(value, float):
        return value.is_integer()
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -MAX_NUMBER <= value <= MAX_NUMBER  # also false for NaN
    )


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str) and 0 < len(v) <= 1000,
    "edge": lambda v: isinstance(v, str),
    "route": lambda v: isinstance(v, str),
    "vtype": lambda v: isinstance(v, str),
    "int": lambda v: _whole(v) and 0 <= v <= MAX_INT,
    "number": lambda v: _number(v) and v >= 0,
    # -1 hands speed control back to SUMO.
    "speed": lambda v: _number(v) and (v >= 0 or v == -1),
    "edges": lambda v: isinstance(v, list) and bool(v) and all(isinstance(e, str) for e in v),
}


# The same rules as JSON Schema, for the API's document.
_SCHEMAS: dict[str, dict[str, Any]] = {
    "str": {"type": "string", "minLength": 1, "maxLength": 1000},
    "edge": {"type": "string"},
    "route": {"type": "string"},
    "vtype": {"type": "string"},
    "int": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
    "number": {"type": "number", "minimum": 0, "maximum": MAX_NUMBER},
    "speed": {
        "anyOf": [{"type": "number", "minimum": 0, "maximum": MAX_NUMBER}, {"const": -1}],
        "description": "m/s; -1 hands speed control back to SUMO",
    },
    "edges": {"type": "array", "minItems": 1, "items": {"type": "string"}},
}


def command_schema(name: str) -> dict[str, Any]:
    """One command of the allow-list as JSON Schema, made from its Spec (so the two agree)."""
    spec = COMMANDS[name]
    props: dict[str, Any] = {"type": {"const": name}}
    required = ["type"]
    if spec.domain:
        props["id"] = {"type": "string", "description": f"the {spec.domain.replace('_', ' ')}"}
        required.append("id")
    else:
        props["id"] = {"description": "ignored"}
    for field_name, kind in spec.fields.items():
        key = field_name.rstrip("?")
        props[key] = _SCHEMAS[kind]
        if not field_name.endswith("?"):
            required.append(key)
    schema: dict[str, Any] = {
        "type": "object",
        "title": name,
        "properties": props,
        "required": required,
        "additionalProperties": False,
    }
    if name == "get":
        domains: dict[str, list[str]] = {}
        for domain, var in _GET:
            domains.setdefault(domain, []).append(var)
        props["domain"] = {"type": "string", "enum": list(domains)}
        props["var"] = {"type": "string", "minLength": 1, "maxLength": 1000}
        schema["oneOf"] = [
            {"properties": {"domain": {"const": d}, "var": {"enum": vs}}}
            for d, vs in domains.items()
        ]
    if name == "vehicle.add":
        schema["oneOf"] = [{"required": ["route"]}, {"required": ["edges"]}]
    return schema


def json_schema() -> dict[str, Any]:
    """A batch of commands: `{"commands": [...]}`, or the bare list."""
    batch = {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_COMMANDS,
        "items": {"anyOf": [command_schema(name) for name in COMMANDS]},
    }
    return {
        "anyOf": [
            {"type": "object", "required": ["commands"], "properties": {"commands": batch}},
            batch,
        ]
    }


def _check(n: int, kind_name: str, key: str, kind: str, value: Any) -> None:
    if not _CHECKS[kind](value):
        raise InvalidRequest(f"command {n} ({kind_name}): bad {key!r}: {value!r}", index=n)


@dataclass
class Network:
    """The static id lists, read once per session (edges without SUMO's internal ones)."""

    edges: list[str]
    lanes: list[str]
    junctions: list[str]
    tls: list[str]


def apply(
    conn: Connection, commands: list[dict[str, Any]], network: Network
) -> list[dict[str, Any]]:
    """Check every id against the simulation, then apply all commands in order (TraCI thread)."""
    static = {
        "tls": set(network.tls),
        "edge": set(network.edges),
        "lane": set(network.lanes),
    }
    dynamic = {
        "vehicle": conn.vehicle.getIDList,
        "route": conn.route.getIDList,
        "vtype": conn.vehicletype.getIDList,
    }
    # Only the id lists a batch needs are asked of SUMO: each is one more round trip.
    live = _Lazy(static, dynamic)
    for n, c in enumerate(commands):
        spec = COMMANDS[c["type"]]
        domain = c["domain"] if spec.domain == "by_domain" else spec.domain
        if domain == "new_vehicle":
            if c["id"] in live["vehicle"]:
                raise InvalidRequest(f"command {n}: vehicle {c['id']!r} already exists", index=n)
        elif domain and c["id"] not in live[domain]:
            raise UnknownObject(f"command {n}: no {domain} {c['id']!r}", index=n, id=c["id"])
        for key, kind in (("edge", "edge"), ("route", "route"), ("vtype", "vtype")):
            if key in c and c[key] not in live[kind]:
                raise UnknownObject(f"command {n}: no {kind} {c[key]!r}", index=n, id=c[key])
        for edge in c.get("edges", []):
            if edge not in live["edge"]:
                raise UnknownObject(f"command {n}: no edge {edge!r}", index=n, id=edge)
    results = []
    for c in commands:
        if c["type"] == "network":
            value: Any = {
                "edges": network.edges,
                "lanes": network.lanes,
                "junctions": network.junctions,
                "traffic_lights": network.tls,
            }
        else:
            try:
                value = COMMANDS[c["type"]].apply(conn, c)
            except TraCIException as exc:
                # SUMO refused this one (e.g. a phase index past the program's end).
                results.append({"type": c["type"], "ok": False, "error": str(exc)})
                continue
        results.append({"type": c["type"], "ok": True, "value": value})
    return results


class _Lazy(dict[str, set[str]]):
    def __init__(self, static: dict[str, set[str]], dynamic: dict[str, Callable[[], Any]]) -> None:
        super().__init__(static)
        self._dynamic = dynamic

    def __missing__(self, key: str) -> set[str]:
        value = set(self._dynamic[key]())
        self[key] = value
        return value


def changes_state(command: dict[str, Any]) -> bool:
    return COMMANDS[command["type"]].changes
