"""What a user may ask of a new session: the typed request, its validation, and the allow-list of
SUMO options that can be passed through."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from actors.errors import InvalidRequest


class OptionCheck(Protocol):
    """A SUMO option's value check: the value as SUMO reads it, or ValueError saying what it
    must be; `schema` is the same rule as JSON Schema (the API's document shows it)."""

    def __call__(self, v: Any) -> str: ...

    @property
    def schema(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class _Float:
    lo: float
    hi: float

    def __call__(self, v: Any) -> str:
        if isinstance(v, bool) or not isinstance(v, int | float) or not self.lo <= v <= self.hi:
            raise ValueError(f"a number in [{self.lo}, {self.hi}]")
        return repr(float(v))

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "number", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class _Int:
    lo: int
    hi: int

    def __call__(self, v: Any) -> str:
        v = _integral(v)
        if isinstance(v, bool) or not isinstance(v, int) or not self.lo <= v <= self.hi:
            raise ValueError(f"an integer in [{self.lo}, {self.hi}]")
        return str(v)

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "integer", "minimum": self.lo, "maximum": self.hi}


@dataclass(frozen=True)
class _Bool:
    def __call__(self, v: Any) -> str:
        if not isinstance(v, bool):
            raise ValueError("true or false")
        return "true" if v else "false"

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "boolean"}


@dataclass(frozen=True)
class _Choice:
    values: tuple[str, ...]

    def __call__(self, v: Any) -> str:
        if v not in self.values:
            raise ValueError(f"one of {', '.join(self.values)}")
        return str(v)

    @property
    def schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(self.values)}


def _integral(v: Any) -> Any:
    """A float with no fraction as the int it is: JSON has one kind of number, and a client
    may well write 10 as 10.0."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _float(lo: float, hi: float) -> OptionCheck:
    return _Float(lo, hi)


def _int(lo: int, hi: int) -> OptionCheck:
    return _Int(lo, hi)


_bool: OptionCheck = _Bool()


def _choice(*values: str) -> OptionCheck:
    return _Choice(values)


# SUMO options a session may set, each with its value check. Anything that names files, ports,
# the GUI or TraCI is deliberately absent: those are the daemon's to choose.
SUMO_OPTIONS: Mapping[str, OptionCheck] = {
    "step-length": _float(0.001, 60),
    "begin": _float(0, 1e9),
    "scale": _float(0, 1000),
    "time-to-teleport": _float(-1, 1e9),
    "time-to-teleport.highways": _float(-1, 1e9),
    "max-depart-delay": _float(-1, 1e9),
    "ignore-route-errors": _bool,
    "ignore-junction-blocker": _float(-1, 1e9),
    "collision.action": _choice("none", "warn", "teleport", "remove"),
    "collision.check-junctions": _bool,
    "lateral-resolution": _float(-1, 100),
    "step-method.ballistic": _bool,
    "default.speeddev": _float(-1, 10),
    "default.action-step-length": _float(0, 60),
    "routing-algorithm": _choice("dijkstra", "astar", "CH", "CHWrapper"),
    "device.rerouting.probability": _float(0, 1),
    "device.rerouting.period": _float(0, 1e9),
    "eager-insert": _bool,
    "random-depart-offset": _float(0, 1e9),
    "no-warnings": _bool,
    "max-num-vehicles": _int(-1, 10_000_000),
    "time-to-impatience": _float(0, 1e9),
}

# What a session can record: `samples` always; the others come from SUMO's own output writers.
RECORDABLE = ("samples", "trajectories", "trips", "edges")

_LABEL_PATTERN = r"[\w.:@/+-]{1,100}"
_LABEL_RE = re.compile(_LABEL_PATTERN)
MAX_INT32 = 2**31 - 1
MAX_SAMPLE_EVERY = 1_000_000
SAMPLE_DETAILS = ("period", "exact")


@dataclass(frozen=True)
class SessionRequest:
    template: str
    version: int | None = None
    end: float | None = None
    seed: int | None = None
    sample_every: int = 10
    # "exact": SUMO's summary of every step; "period": one row per sample (actors/summary.py).
    # A request stored before the choice existed was exact.
    sample_detail: str = "exact"
    max_wall_s: float | None = None
    label: str | None = None
    # (option, value as SUMO reads it), in the order given.
    sumo_options: tuple[tuple[str, Any], ...] = field(default=())
    record: tuple[str, ...] = ("samples",)
    on_interrupt: str = "rerun"
    max_attempts: int = 3
    # "run": the session advances by itself; "stepped": only when asked (POST .../step).
    mode: str = "run"
    idle_timeout_s: float = 300.0
    # Whether time spent paused counts towards max_wall_s.
    pause_counts: bool = True
    # How long it may stay paused in one go (None: the daemon's max_pause_s).
    max_pause_s: float | None = None
    replay_of: str | None = None
    trajectory_period: float = 1.0
    edge_period: float = 60.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["sumo_options"] = dict(self.sumo_options)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SessionRequest:
        """Rebuild a request stored by `to_json` (already validated when it was made)."""
        fields = dict(data)
        fields["sumo_options"] = tuple(fields.get("sumo_options", {}).items())
        fields["record"] = tuple(fields.get("record", ("samples",)))
        return cls(**fields)

    def sumo_args(self) -> list[str]:
        args: list[str] = []
        if self.end is not None:
            args += ["--end", repr(float(self.end))]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        for option, value in self.sumo_options:
            args += [f"--{option}", SUMO_OPTIONS[option](value)]
        return args


def _number(body: Mapping[str, Any], key: str, *, integer: bool, lo: float, hi: float) -> Any:
    value = body.get(key)
    if value is None:
        return None
    if integer:
        value = _integral(value)
    ok = not isinstance(value, bool) and isinstance(value, int if integer else int | float)
    # A range check, not math.isfinite: that raises on a huge int (NaN fails the range too).
    if not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise InvalidRequest(f"{key} must be {kind} in [{lo}, {hi}]", field=key, value=value)
    return value


def _within(value: Any, limit: float, key: str, setting: str) -> None:
    """Refuse a value over one of the daemon's limits, naming the setting that sets it."""
    if value is not None and value > limit:
        raise InvalidRequest(
            f"{key} must be at most {limit:g} (the daemon's {setting})", field=key, value=value
        )


class Limits(Protocol):
    """The daemon's limits a request is checked against (the daemon's Config has them)."""

    @property
    def scale_limit(self) -> float: ...
    @property
    def trajectory_period_min(self) -> float: ...
    @property
    def idle_timeout_s_limit(self) -> float: ...
    @property
    def max_pause_s(self) -> float: ...
    @property
    def max_wall_s_limit(self) -> float: ...
    @property
    def end_limit(self) -> float: ...


@dataclass(frozen=True)
class DefaultLimits:
    """The limits of a daemon with default settings."""

    scale_limit: float = 100.0
    trajectory_period_min: float = 0.1
    idle_timeout_s_limit: float = 86_400.0
    max_pause_s: float = 3600.0
    max_wall_s_limit: float = 604_800.0
    end_limit: float = 1e7


# Every field a request may have; anything else is refused by name.
FIELDS = frozenset(
    {
        "template",
        "version",
        "end",
        "seed",
        "sample_every",
        "sample_detail",
        "max_wall_s",
        "label",
        "sumo_options",
        "record",
        "trajectory_period",
        "edge_period",
        "on_interrupt",
        "max_attempts",
        "mode",
        "idle_timeout_s",
        "pause_counts",
        "max_pause_s",
        "replay_of",
    }
)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _range(kind: str, lo: float, hi: float) -> dict[str, Any]:
    return _nullable({"type": kind, "minimum": lo, "maximum": hi})


def json_schema(cfg: Limits | None = None) -> dict[str, Any]:
    """What `parse_session_request` accepts, as JSON Schema (against `cfg`'s limits, or the
    defaults). tests/unit/test_request_schema.py checks the two agree, value by value."""
    cfg = cfg or DefaultLimits()
    options = {name: dict(check.schema) for name, check in SUMO_OPTIONS.items()}
    options["scale"]["maximum"] = min(options["scale"]["maximum"], cfg.scale_limit)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["template"],
        "properties": {
            "template": {"type": "string", "minLength": 1, "description": "a template's name"},
            "version": {
                **_range("integer", 1, MAX_INT32),
                "description": "the template's version; its latest when absent",
            },
            "end": {
                **_range("number", 0.001, min(1e9, cfg.end_limit)),
                "description": "sim seconds to run to; the scenario's own end when absent",
            },
            "seed": _range("integer", 0, MAX_INT32),
            "sample_every": {
                **_range("integer", 1, MAX_SAMPLE_EVERY),
                "description": "sim steps between two samples (10)",
            },
            "sample_detail": {
                "type": "string",
                "enum": list(SAMPLE_DETAILS),
                "description": "period (a running session's default): SUMO's summary once per"
                " sample; exact (a stepped session's, and only choice): every step",
            },
            "max_wall_s": {
                **_range("number", 0.001, min(1e8, cfg.max_wall_s_limit)),
                "description": "wall-clock seconds the session may run before it is timed out",
            },
            "label": _nullable({"type": "string", "pattern": f"^{_LABEL_PATTERN}$"}),
            "sumo_options": _nullable(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": options,
                    "description": "SUMO options from an allow-list; each value is checked",
                }
            ),
            "record": {
                "type": "array",
                "items": {"type": "string", "enum": list(RECORDABLE)},
                "description": "what to record besides samples",
            },
            "trajectory_period": _range("number", max(0.001, cfg.trajectory_period_min), 1e6),
            "edge_period": _range("number", 0.001, 1e9),
            "on_interrupt": {"type": "string", "enum": ["rerun", "fail"]},
            "max_attempts": _range("integer", 1, 100),
            "mode": {
                "type": "string",
                "enum": ["run", "stepped"],
                "description": "run: advances by itself; stepped: only when stepped",
            },
            "idle_timeout_s": _range("number", 0.001, min(1e7, cfg.idle_timeout_s_limit)),
            "pause_counts": {"type": "boolean"},
            "max_pause_s": _range("number", 0.001, min(1e8, cfg.max_pause_s)),
            "replay_of": {
                **_nullable({"type": "string"}),
                "description": "a session whose commands to apply again at the same sim times",
            },
        },
        "allOf": [
            # A replay runs by itself.
            {
                "if": {"properties": {"replay_of": {"type": "string"}}, "required": ["replay_of"]},
                "then": {"properties": {"mode": {"const": "run"}}},
            },
            # A stepped session is sampled exactly.
            {
                "if": {"properties": {"mode": {"const": "stepped"}}, "required": ["mode"]},
                "then": {"properties": {"sample_detail": {"const": "exact"}}},
            },
        ],
    }


def parse_session_request(body: Any, cfg: Limits | None = None) -> SessionRequest:
    """Check a request against its own rules and the daemon's limits (`cfg`; the defaults when
    None)."""
    cfg = cfg or DefaultLimits()
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}", fields=unknown)
    template = body.get("template")
    if not isinstance(template, str) or not template:
        raise InvalidRequest("template is required (a template name)", field="template")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or not _LABEL_RE.fullmatch(label)):
        raise InvalidRequest(
            "label must be 1-100 characters of letters, digits and ._:@/+-", field="label"
        )
    options = body.get("sumo_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidRequest(
            "sumo_options must be an object of option: value", field="sumo_options"
        )
    sumo_options = []
    for option, value in options.items():
        check = SUMO_OPTIONS.get(option)
        if check is None:
            raise InvalidRequest(
                f"SUMO option {option!r} is not allowed",
                field="sumo_options",
                allowed=sorted(SUMO_OPTIONS),
            )
        try:
            check(value)
            # Kept as given (a replay or a sweep reads it back); made SUMO's string in sumo_args.
            sumo_options.append((option, value))
        except ValueError as exc:
            raise InvalidRequest(
                f"SUMO option {option!r} must be {exc}", field="sumo_options", value=value
            ) from None
    _within(dict(sumo_options).get("scale"), cfg.scale_limit, "scale", "scale_limit")
    sample_every = _number(body, "sample_every", integer=True, lo=1, hi=MAX_SAMPLE_EVERY)
    record = body.get("record", ["samples"])
    if not isinstance(record, list) or not all(isinstance(r, str) for r in record):
        raise InvalidRequest("record must be a list of names", field="record")
    bad = sorted(set(record) - set(RECORDABLE))
    if bad:
        raise InvalidRequest(
            f"record: unknown {', '.join(bad)}; choose from {', '.join(RECORDABLE)}",
            field="record",
        )
    trajectory_period = _number(body, "trajectory_period", integer=False, lo=0.001, hi=1e6)
    if trajectory_period is not None and trajectory_period < cfg.trajectory_period_min:
        raise InvalidRequest(
            f"trajectory_period must be at least {cfg.trajectory_period_min:g}"
            " (the daemon's trajectory_period_min)",
            field="trajectory_period",
            value=trajectory_period,
        )
    edge_period = _number(body, "edge_period", integer=False, lo=0.001, hi=1e9)
    on_interrupt = body.get("on_interrupt", "rerun")
    if on_interrupt not in ("rerun", "fail"):
        raise InvalidRequest("on_interrupt must be 'rerun' or 'fail'", field="on_interrupt")
    max_attempts = _number(body, "max_attempts", integer=True, lo=1, hi=100)
    mode = body.get("mode", "run")
    if mode not in ("run", "stepped"):
        raise InvalidRequest("mode must be 'run' or 'stepped'", field="mode")
    idle_timeout_s = _number(body, "idle_timeout_s", integer=False, lo=0.001, hi=1e7)
    _within(idle_timeout_s, cfg.idle_timeout_s_limit, "idle_timeout_s", "idle_timeout_s_limit")
    max_pause_s = _number(body, "max_pause_s", integer=False, lo=0.001, hi=1e8)
    _within(max_pause_s, cfg.max_pause_s, "max_pause_s", "max_pause_s")
    max_wall_s = _number(body, "max_wall_s", integer=False, lo=0.001, hi=1e8)
    _within(max_wall_s, cfg.max_wall_s_limit, "max_wall_s", "max_wall_s_limit")
    end = _number(body, "end", integer=False, lo=0.001, hi=1e9)
    _within(end, cfg.end_limit, "end", "end_limit")
    pause_counts = body.get("pause_counts", True)
    if not isinstance(pause_counts, bool):
        raise InvalidRequest("pause_counts must be true or false", field="pause_counts")
    replay_of = body.get("replay_of")
    if replay_of is not None and not isinstance(replay_of, str):
        raise InvalidRequest("replay_of must be a session id", field="replay_of")
    if replay_of is not None and mode != "run":
        raise InvalidRequest("a replay runs by itself: mode must be 'run'", field="mode")
    # Cheap by default; a stepped session answers each step with its sample at once, which
    # needs the row of the step before (summary.py).
    sample_detail = body.get("sample_detail", "period" if mode == "run" else "exact")
    if sample_detail not in SAMPLE_DETAILS:
        raise InvalidRequest(
            "sample_detail must be 'period' or 'exact'", field="sample_detail", value=sample_detail
        )
    if sample_detail == "period" and mode != "run":
        raise InvalidRequest(
            "sample_detail 'period' is for a running session: a stepped one is sampled exactly",
            field="sample_detail",
        )
    return SessionRequest(
        template=template,
        version=_number(body, "version", integer=True, lo=1, hi=2**31 - 1),
        end=end,
        seed=_number(body, "seed", integer=True, lo=0, hi=2**31 - 1),
        sample_every=10 if sample_every is None else sample_every,
        sample_detail=sample_detail,
        max_wall_s=max_wall_s,
        label=label,
        sumo_options=tuple(sumo_options),
        record=tuple(r for r in RECORDABLE if r == "samples" or r in record),
        trajectory_period=1.0 if trajectory_period is None else trajectory_period,
        edge_period=60.0 if edge_period is None else edge_period,
        on_interrupt=on_interrupt,
        max_attempts=3 if max_attempts is None else max_attempts,
        mode=mode,
        # 300 s unless the daemon allows less.
        idle_timeout_s=(
            min(300.0, cfg.idle_timeout_s_limit) if idle_timeout_s is None else idle_timeout_s
        ),
        pause_counts=pause_counts,
        max_pause_s=max_pause_s,
        replay_of=replay_of,
    )
