"""What the Python client answers with: the daemon's JSON as frozen dataclasses (typed rows),
the events of its live streams, and rows as pandas DataFrames (pandas is optional: only
`to_dataframe` needs it, and it says so when it is missing).

Each row takes the fields it knows from the daemon's JSON and leaves the rest, so a newer
daemon's extra fields break nothing; tests check the fields against the API's own document."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypedDict

if TYPE_CHECKING:
    import pandas

# The statuses a session ends in: it changes no more.
FINAL_STATUSES = frozenset({"completed", "failed", "stopped", "timed_out"})


class _Row:
    """A row built from the daemon's JSON: the fields of the dataclass, timestamps parsed."""

    _times: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        values = {}
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            value = data.get(f.name)
            if f.name in cls._times and isinstance(value, str):
                value = datetime.fromisoformat(value)
            values[f.name] = value
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class Sample(_Row):
    """One sample of a session (the README's sample table says what each figure means);
    `halting` is the queue: the vehicles standing (speed < 0.1 m/s) at `sim_time`."""

    sim_time: float
    vehicles: int
    departed: int
    arrived: int
    mean_speed: float
    halting: int
    waiting_time: float
    teleports: int


@dataclasses.dataclass(frozen=True)
class Session(_Row):
    """A session as `GET /v1/sessions/{id}` shows it; `request` is what it was created with."""

    _times = frozenset({"created_at", "started_at", "ended_at"})

    id: str
    template: str
    version: int
    status: str
    label: str | None
    created_at: datetime
    started_at: datetime | None
    ended_at: datetime | None
    sim_time: float | None
    end: float | None
    progress: float
    port: int | None
    pid: int | None
    exit_code: int | None
    cause: str | None
    error: str | None
    attempt: int
    node: str | None
    vehicles: int | None
    sweep: str | None
    paused: bool | None
    request: dict[str, Any]

    @property
    def ended(self) -> bool:
        """Whether it has ended (completed, failed, stopped or timed out)."""
        return self.status in FINAL_STATUSES


@dataclasses.dataclass(frozen=True)
class Summary(_Row):
    """A session's summary figures (the README's Summary figures say what each is); `None`
    where the run has no such figure. `statistics` is SUMO's own file, element by element."""

    id: str
    status: str
    label: str | None
    source: str
    arrived: float | None
    loaded: float | None
    inserted: float | None
    running: float | None
    waiting: float | None
    trips: float | None
    mean_route_length: float | None
    mean_speed: float | None
    mean_duration: float | None
    mean_waiting_time: float | None
    mean_time_loss: float | None
    mean_depart_delay: float | None
    mean_depart_delay_waiting: float | None
    total_travel_time: float | None
    total_depart_delay: float | None
    teleports: float | None
    teleports_jam: float | None
    teleports_yield: float | None
    teleports_wrong_lane: float | None
    collisions: float | None
    emergency_stops: float | None
    emergency_braking: float | None
    persons_loaded: float | None
    persons_running: float | None
    persons_jammed: float | None
    person_teleports: float | None
    walks: float | None
    mean_walk_route_length: float | None
    mean_walk_duration: float | None
    mean_walk_time_loss: float | None
    rides: float | None
    mean_ride_waiting_time: float | None
    mean_ride_route_length: float | None
    mean_ride_duration: float | None
    transports: float | None
    total_distance: float | None
    p95_duration: float | None
    sim_seconds: float | None
    throughput_per_hour: float | None
    statistics: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class TemplateFile(_Row):
    path: str
    sha256: str
    size: int


@dataclasses.dataclass(frozen=True)
class NewVersion:
    """What an upload made: the template's new version and its files."""

    name: str
    version: int
    sha256: str
    config: str
    files: tuple[TemplateFile, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewVersion:
        files = tuple(TemplateFile.from_json(f) for f in data["files"])
        return cls(data["name"], data["version"], data["sha256"], data["config"], files)


@dataclasses.dataclass(frozen=True)
class TemplateVersion:
    version: int
    config_path: str
    sha256: str
    total_bytes: int
    created_at: datetime
    files: tuple[TemplateFile, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TemplateVersion:
        return cls(
            data["version"],
            data["config_path"],
            data["sha256"],
            data["total_bytes"],
            datetime.fromisoformat(data["created_at"]),
            tuple(TemplateFile.from_json(f) for f in data["files"]),
        )


@dataclasses.dataclass(frozen=True)
class Template:
    """A template with every version and its files."""

    name: str
    versions: tuple[TemplateVersion, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Template:
        return cls(data["name"], tuple(TemplateVersion.from_json(v) for v in data["versions"]))


@dataclasses.dataclass(frozen=True)
class TemplateListing(_Row):
    """A template as the list shows it: its latest version and how many it has."""

    _times = frozenset({"created_at", "updated_at"})

    name: str
    created_at: datetime
    latest_version: int
    sha256: str
    config_path: str
    updated_at: datetime
    versions: int


@dataclasses.dataclass(frozen=True)
class SweepRun(_Row):
    """One run of a sweep: its session, seed, the varied values it ran with, its status."""

    id: str
    seed: int | None
    params: dict[str, Any]
    status: str


@dataclasses.dataclass(frozen=True)
class FigureStats(_Row):
    """A summary figure over a combination's completed runs: mean, standard deviation and the
    95% confidence interval of the mean (Student's t)."""

    n: int
    mean: float | None
    std: float | None
    ci95: list[float] | None


@dataclasses.dataclass(frozen=True)
class SweepGroup:
    """One combination of the varied values, and its figures' statistics."""

    params: dict[str, Any]
    completed: int
    figures: dict[str, FigureStats]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SweepGroup:
        figures = {k: FigureStats.from_json(v) for k, v in data["figures"].items()}
        return cls(data["params"], data["completed"], figures)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A sweep's progress, its runs, and the statistics per combination."""

    id: str
    request: dict[str, Any]
    created_at: datetime
    total: int
    by_status: dict[str, int]
    done: bool
    progress: float
    sessions: tuple[SweepRun, ...]
    groups: tuple[SweepGroup, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Sweep:
        return cls(
            data["id"],
            data["request"],
            datetime.fromisoformat(data["created_at"]),
            data["total"],
            data["by_status"],
            data["done"],
            data["progress"],
            tuple(SweepRun.from_json(r) for r in data["sessions"]),
            tuple(SweepGroup.from_json(g) for g in data["groups"]),
        )


@dataclasses.dataclass(frozen=True)
class NewSweep:
    """What creating a sweep made: its id and its sessions, one per run."""

    id: str
    count: int
    sessions: tuple[str, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NewSweep:
        return cls(data["id"], data["count"], tuple(data["sessions"]))


class SessionFields(TypedDict, total=False):
    """The fields of a session request besides its template (README, `POST /v1/sessions`)."""

    version: int | None
    end: float | None
    seed: int | None
    sample_every: int | None
    sample_detail: Literal["period", "exact"]
    max_wall_s: float | None
    label: str | None
    sumo_options: dict[str, Any] | None
    record: Sequence[Literal["samples", "trajectories", "trips", "edges"]]
    trajectory_period: float | None
    edge_period: float | None
    on_interrupt: Literal["rerun", "fail"]
    max_attempts: int | None
    mode: Literal["run", "stepped"]
    idle_timeout_s: float | None
    pause_counts: bool
    max_pause_s: float | None
    replay_of: str | None


# ---- live stream events ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SampleEvent:
    """A session's new sample (a resumed stream never gives one twice, nor skips one)."""

    sample: Sample


@dataclasses.dataclass(frozen=True)
class StatusEvent:
    """The session changed status or pause; the stream ends after its final status."""

    session: Session


SessionStreamEvent = SampleEvent | StatusEvent


@dataclasses.dataclass(frozen=True)
class PageEvent:
    """The sessions the filters select, newest first: the list to start from (again, after a
    reconnection the daemon could not resume)."""

    sessions: tuple[Session, ...]


@dataclasses.dataclass(frozen=True)
class SessionChanged:
    """A session of the list is new or changed (status, sim time, progress, paused...)."""

    session: Session


@dataclasses.dataclass(frozen=True)
class SessionRemoved:
    """A session left the list (its status left the filter, or it was deleted)."""

    id: str


ListStreamEvent = PageEvent | SessionChanged | SessionRemoved


# ---- DataFrames --------------------------------------------------------------------------------

PANDAS_MISSING = (
    "pandas is needed for DataFrames: pip install 'sumo-supervisor[pandas]' (or pandas);"
    " the typed rows need nothing more"
)


def to_dataframe(
    rows: Iterable[Any], row_type: type[Any] | None = None, **columns: Sequence[Any]
) -> pandas.DataFrame:
    """The rows (dataclasses of one kind, `row_type` when given: an empty list then still has
    its columns) as a DataFrame, one column per field; `columns` are columns of their own (one
    value per row) put first. Needs pandas."""
    try:
        import pandas
    except ImportError:
        raise ImportError(PANDAS_MISSING) from None
    rows = list(rows)
    kind = row_type or (type(rows[0]) if rows else None)
    names = [f.name for f in dataclasses.fields(kind)] if kind is not None else []
    frame = pandas.DataFrame([dataclasses.asdict(r) for r in rows], columns=names or None)
    for position, (name, values) in enumerate(columns.items()):
        frame.insert(position, name, list(values))
    return frame
