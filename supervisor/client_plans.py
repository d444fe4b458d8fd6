"""Every call of the Python client, written once for both clients and free of I/O.

A plan is a generator: it yields the steps it needs done (`Call` the daemon, `Sleep`, run a
`Blocking` function, `Connect` to a live stream and take its `NextEvent`, `Emit` an item to the
caller) and receives each step's answer, or has its error thrown in. `Client` performs the steps
with httpx's blocking client, `AsyncClient` with its asyncio one (supervisor/client.py); what to
ask, how to read the answer, when a wait gives up and how a stream resumes are decided here, once.
(The "sans-I/O" pattern of h11 and hyper-h2, with generators as the protocol.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Generic, Protocol, TypeVar, Unpack
from urllib.parse import quote

from httpx_sse import ServerSentEvent

from supervisor.client_errors import (
    ApiError,
    ClientError,
    ConnectionLost,
    DaemonUnreachable,
    RequestTimeout,
    StreamFailed,
    WaitTimeout,
)
from supervisor.client_models import (
    FINAL_STATUSES,
    ListStreamEvent,
    NewSweep,
    NewVersion,
    PageEvent,
    Sample,
    SampleEvent,
    Session,
    SessionChanged,
    SessionFields,
    SessionRemoved,
    SessionStreamEvent,
    StatusEvent,
    Summary,
    Sweep,
    Template,
    TemplateListing,
    to_dataframe,
)
from supervisor.client_scenario import read_files, scenario_files

if TYPE_CHECKING:
    import pandas

T = TypeVar("T")

# ---- the steps ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request; its answer is the decoded JSON body (an error status raises `ApiError`)."""

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    form: Mapping[str, str] | None = None
    files: Sequence[tuple[str, tuple[str, bytes]]] | None = None


@dataclass(frozen=True)
class Download:
    """Stream the answer's bytes into the binary file `out`; answers the bytes written."""

    path: str
    out: IO[bytes]


@dataclass(frozen=True)
class Blocking:
    """A function that blocks (reading files): the async client runs it on a thread."""

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Connect:
    """Open a live stream (closing the one open before), from `last_event_id` when given."""

    path: str
    params: Mapping[str, Any] | None
    last_event_id: str | None
    read_timeout_s: float


@dataclass(frozen=True)
class NextEvent:
    """The open stream's next event (a ServerSentEvent), or None once the daemon ended it."""


@dataclass(frozen=True)
class Emit(Generic[T]):
    """An item for the caller iterating over the plan."""

    item: T


Step = Call | Download | Blocking | Sleep | Connect | NextEvent
# A call: its steps, then its answer.
Plan = Generator[Step, Any, T]
# A stream: its steps and the items it gives, until it ends.
StreamPlan = Generator[Step | Emit[T], Any, None]


def _id(value: str | int) -> str:
    """A path segment: an id or name exactly as given, never a path of its own."""
    return quote(str(value), safe="")


def _object(call: Call) -> Plan[dict[str, Any]]:
    """A call whose answer is a JSON object, taken as it is."""
    body: dict[str, Any] = yield call
    return body


def _query(**params: Any) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


def request(
    method: str, path: str, params: Mapping[str, Any] | None = None, body: Any = None
) -> Plan[Any]:
    """Any route of the daemon: its JSON answer as it is (for what has no method of its own)."""
    return (yield Call(method, path, _query(**(params or {})), body))


# ---- templates ---------------------------------------------------------------------------------


def upload_template(name: str, config: str, files: Mapping[str, Path]) -> Plan[NewVersion]:
    """Upload a scenario: `config` is the .sumocfg's path among `files` ({upload path: file on
    disk}). The same name again makes a new version."""
    parts = yield Blocking(lambda: read_files(dict(files)))
    body = yield Call("POST", "/v1/templates", form={"name": name, "config": config}, files=parts)
    return NewVersion.from_json(body)


def add_template(name: str, config: str | Path) -> Plan[NewVersion]:
    """Upload the .sumocfg `config` and every input file it names, wherever they are (as the
    CLI's `template add` does); `ScenarioError` when one is missing."""
    config_path, files = yield Blocking(lambda: scenario_files(config))
    return (yield from upload_template(name, config_path, files))


def list_templates() -> Plan[list[TemplateListing]]:
    """Every template, with its latest version."""
    body = yield Call("GET", "/v1/templates")
    return [TemplateListing.from_json(t) for t in body["templates"]]


def get_template(name: str) -> Plan[Template]:
    """A template's versions and their files."""
    return Template.from_json((yield Call("GET", f"/v1/templates/{_id(name)}")))


def delete_template(name: str, *, sessions: bool = False) -> Plan[dict[str, Any]]:
    """Delete a template and every version (admin); `sessions=True` also deletes its ended
    sessions, else `Conflict` while it has any."""
    params = {"sessions": "delete"} if sessions else None
    return (yield from _object(Call("DELETE", f"/v1/templates/{_id(name)}", params)))


def delete_template_version(
    name: str, version: int, *, sessions: bool = False
) -> Plan[dict[str, Any]]:
    """Delete one version (admin), the same way; the last one takes the template with it."""
    params = {"sessions": "delete"} if sessions else None
    return (
        yield from _object(
            Call("DELETE", f"/v1/templates/{_id(name)}/versions/{_id(version)}", params)
        )
    )


# ---- sessions ----------------------------------------------------------------------------------


def _session_body(
    template: str | Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = dict(template) if isinstance(template, Mapping) else {}
    if isinstance(template, str):
        body["template"] = template
    body.update(fields)
    if "record" in body:
        body["record"] = list(body["record"])
    return body


def create_session(
    template: str | Mapping[str, Any] | None = None, /, **fields: Unpack[SessionFields]
) -> Plan[Session]:
    """Start a session of `template` (its name, or a whole request body as a dict); the
    keywords are the request's fields (README, `POST /v1/sessions`): `end`, `seed`, `label`,
    `record`, `mode`, `sumo_options`, `replay_of`..."""
    body = yield Call("POST", "/v1/sessions", json=_session_body(template, fields))
    return Session.from_json(body)


def get_session(session_id: str) -> Plan[Session]:
    """A session: status, sim time, progress, error..."""
    return Session.from_json((yield Call("GET", f"/v1/sessions/{_id(session_id)}")))


def list_sessions(
    *,
    status: str | None = None,
    label: str | None = None,
    template: str | None = None,
    limit: int | None = None,
    before: str | None = None,
) -> Plan[list[Session]]:
    """Sessions, newest first: those with this status, label and template (None: any), at most
    `limit` (the daemon's default 100, at most 10 000); with `before` (a session's id: the last
    of the page before), only those older than it, the next page."""
    params = _query(status=status, label=label, template=template, limit=limit, before=before)
    body = yield Call("GET", "/v1/sessions", params)
    return [Session.from_json(s) for s in body["sessions"]]


def _poll(
    look: Callable[[], Plan[T]],
    done: Callable[[T], bool],
    what: str,
    timeout: float,
    poll_s: float,
    progress: Callable[[T], object] | None,
) -> Plan[T]:
    """Look until `done`, calling `progress` with each look; WaitTimeout after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        state = yield from look()
        if progress is not None:
            progress(state)
        if done(state):
            return state
        left = deadline - time.monotonic()
        if left <= 0:
            raise WaitTimeout(f"{what} was not done after {timeout:g} s", state)
        yield Sleep(min(poll_s, left))


def wait_session(
    session_id: str,
    *,
    timeout: float = 3600.0,
    poll_s: float = 1.0,
    progress: Callable[[Session], object] | None = None,
) -> Plan[Session]:
    """Wait until the session has ended, looking every `poll_s` s; `progress(session)` after
    each look (keep it quick). The ended session, or `WaitTimeout` after `timeout` s (its
    `last` is the session as last seen)."""
    return (
        yield from _poll(
            lambda: get_session(session_id),
            lambda s: s.ended,
            f"session {session_id}",
            timeout,
            poll_s,
            progress,
        )
    )


def _act(session_id: str, action: str, body: Any = None) -> Plan[dict[str, Any]]:
    return (yield from _object(Call("POST", f"/v1/sessions/{_id(session_id)}/{action}", json=body)))


def stop_session(session_id: str) -> Plan[dict[str, Any]]:
    """Stop a session: a running one ends `stopped` within a second or two, a queued one at
    once. `Conflict` when it has ended already."""
    return (yield from _act(session_id, "stop"))


def pause_session(session_id: str) -> Plan[dict[str, Any]]:
    """Hold a running session still (its SUMO and port kept)."""
    return (yield from _act(session_id, "pause"))


def resume_session(session_id: str) -> Plan[dict[str, Any]]:
    """Let a paused session go on."""
    return (yield from _act(session_id, "resume"))


def step_session(session_id: str, seconds: float) -> Plan[Sample]:
    """Advance a `mode="stepped"` session by exactly `seconds` of sim time: its new sample."""
    body = yield from _act(session_id, "step", {"seconds": seconds})
    return Sample.from_json(body["sample"])


def send_commands(session_id: str, commands: Iterable[Mapping[str, Any]]) -> Plan[dict[str, Any]]:
    """Apply commands together between two steps (README, Controlling a running session):
    `{"sim_time", "results": [...]}`, each command's result in order."""
    return (yield from _act(session_id, "commands", {"commands": [dict(c) for c in commands]}))


def _session_list(session_id: str, what: str) -> Plan[list[dict[str, Any]]]:
    body = yield Call("GET", f"/v1/sessions/{_id(session_id)}/{what}")
    return list(body[what])


def get_commands(session_id: str) -> Plan[list[dict[str, Any]]]:
    """The commands that changed the simulation, with the sim time each was applied at."""
    return (yield from _session_list(session_id, "commands"))


def session_logs(session_id: str) -> Plan[list[dict[str, Any]]]:
    """The session's recent log events (the daemon keeps a bounded few)."""
    return (yield from _session_list(session_id, "logs"))


def session_events(session_id: str) -> Plan[list[dict[str, Any]]]:
    """Every status change of the session, with its time and reason."""
    return (yield from _session_list(session_id, "events"))


def delete_session(session_id: str) -> Plan[dict[str, Any]]:
    """Delete an ended session and all its rows (`Conflict` while it is queued or running)."""
    return (yield from _object(Call("DELETE", f"/v1/sessions/{_id(session_id)}")))


# ---- results -----------------------------------------------------------------------------------

# Samples are read this many at a time (the daemon streams each page from the database).
SAMPLE_PAGE = 100_000


def samples(
    session_id: str, *, after: float | None = None, limit: int | None = None
) -> Plan[list[Sample]]:
    """The session's samples in sim-time order: those after `after`, at most `limit` (all of
    them when None, read a page at a time)."""
    rows: list[Sample] = []
    while limit is None or len(rows) < limit:
        want = SAMPLE_PAGE if limit is None else min(SAMPLE_PAGE, limit - len(rows))
        params = _query(after=after, limit=want)
        body = yield Call("GET", f"/v1/sessions/{_id(session_id)}/samples", params)
        page = [Sample.from_json(s) for s in body["samples"]]
        rows += page
        if len(page) < want:
            break
        after = page[-1].sim_time
    return rows


def samples_df(
    session_id: str, *, after: float | None = None, limit: int | None = None
) -> Plan[pandas.DataFrame]:
    """`samples` as a pandas DataFrame, one column per figure (needs pandas)."""
    return to_dataframe((yield from samples(session_id, after=after, limit=limit)), Sample)


def summary(session_id: str) -> Plan[Summary]:
    """The session's summary figures (SUMO's own statistics of the run, and a few more)."""
    return Summary.from_json((yield Call("GET", f"/v1/sessions/{_id(session_id)}/summary")))


def summaries_df(session_ids: Iterable[str]) -> Plan[pandas.DataFrame]:
    """The summaries of these sessions as a DataFrame, one row each (needs pandas)."""
    rows = []
    for session_id in session_ids:
        rows.append((yield from summary(session_id)))
    return to_dataframe(rows, Summary)


def compare(session_ids: Iterable[str]) -> Plan[dict[str, Any]]:
    """Summaries side by side, and each one's differences against the first (2 to 50)."""
    return (yield from _object(Call("GET", "/v1/compare", {"sessions": ",".join(session_ids)})))


EXPORTS = ("samples", "trajectories", "trips", "edges")


def export_csv(session_id: str, kind: str, out: IO[bytes]) -> Plan[int]:
    """Stream a CSV export (`samples`, `trajectories`, `trips` or `edges`) into the binary file
    `out`; the bytes written."""
    if kind not in EXPORTS:
        raise ValueError(f"kind must be one of {', '.join(EXPORTS)}")
    written: int = yield Download(f"/v1/sessions/{_id(session_id)}/{kind}.csv", out)
    return written


# ---- sweeps ------------------------------------------------------------------------------------


def create_sweep(
    template: str | Mapping[str, Any] | None = None,
    /,
    *,
    seeds: Iterable[int] | None = None,
    runs: int | None = None,
    vary: Mapping[str, Sequence[Any]] | None = None,
    **fields: Unpack[SessionFields],
) -> Plan[NewSweep]:
    """One session per seed (`seeds`, or `runs` for seeds 1..runs) and per combination of
    `vary` ({parameter: values}); the other keywords are every run's session fields."""
    body = _session_body(template, fields)
    if seeds is not None:
        body["seeds"] = list(seeds)
    if runs is not None:
        body["runs"] = runs
    if vary is not None:
        body["vary"] = {k: list(v) for k, v in vary.items()}
    return NewSweep.from_json((yield Call("POST", "/v1/sweeps", json=body)))


def get_sweep(sweep_id: str) -> Plan[Sweep]:
    """A sweep's progress, its runs, and per combination the statistics of every figure."""
    return Sweep.from_json((yield Call("GET", f"/v1/sweeps/{_id(sweep_id)}")))


def wait_sweep(
    sweep_id: str,
    *,
    timeout: float = 3600.0,
    poll_s: float = 1.0,
    progress: Callable[[Sweep], object] | None = None,
) -> Plan[Sweep]:
    """Wait until every run of the sweep has ended, as `wait_session` does for one."""
    return (
        yield from _poll(
            lambda: get_sweep(sweep_id),
            lambda s: s.done,
            f"sweep {sweep_id}",
            timeout,
            poll_s,
            progress,
        )
    )


def sweep_samples_df(sweep_id: str, *, completed_only: bool = True) -> Plan[pandas.DataFrame]:
    """Every run's samples in one DataFrame (needs pandas): the columns `session`, `seed` and
    each varied parameter, then the sample's figures. Only completed runs unless
    `completed_only=False`."""
    sweep = yield from get_sweep(sweep_id)
    rows: list[Sample] = []
    extra: dict[str, list[Any]] = {"session": [], "seed": []}
    extra |= {name: [] for name in sweep.request.get("vary") or {}}
    for run in sweep.sessions:
        if completed_only and run.status != "completed":
            continue
        got = yield from samples(run.id)
        rows += got
        for name, column in extra.items():
            value = (
                run.id if name == "session" else run.seed if name == "seed" else run.params[name]
            )
            column += [value] * len(got)
    return to_dataframe(rows, Sample, **extra)


# ---- live streams ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resume:
    """How a live stream comes back after a disconnect: up to `retries` reconnections in a row
    without an event between them, waiting `backoff_s`, doubling up to `max_backoff_s` (or the
    daemon's Retry-After); a read that gets nothing, not even the daemon's pings (every 15 s),
    for `read_timeout_s` counts as a disconnect."""

    retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    read_timeout_s: float = 60.0


# The daemon's answers that say "not now" rather than "no".
_RETRYABLE = frozenset({429, 502, 503, 504})


@dataclass
class _SessionReader:
    """A session stream's events, made typed; where to resume (the last sample's event id);
    samples at or before the last one given are never given again, within an attempt (a
    rerun's status comes before its samples, which start again from sim time 0)."""

    last_id: str | None
    last_time: float | None = None
    # The attempt the samples given so far belong to: a later one's start again from 0.
    attempt: int | None = None
    state: tuple[str, bool | None, int] | None = None
    finished: bool = False
    broken: bool = False

    def take(self, sse: ServerSentEvent) -> list[SessionStreamEvent]:
        if sse.event == "sample":
            sample = Sample.from_json(json.loads(sse.data))
            # Its id is `<sim time>@<attempt>`: the first sample of a later attempt (given
            # first thing when a stream resumes after a rerun) starts the count again.
            self._in_attempt(_attempt_of(sse.id))
            if self.last_time is not None and sample.sim_time <= self.last_time:
                return []
            self.last_id, self.last_time = sse.id or repr(sample.sim_time), sample.sim_time
            return [SampleEvent(sample)]
        if sse.event == "status":
            session = Session.from_json(json.loads(sse.data))
            self.finished = session.status in FINAL_STATUSES
            # A resumed stream says the status again: given once per change.
            self._in_attempt(session.attempt)
            state = (session.status, session.paused, session.attempt)
            if state == self.state:
                return []
            self.state = state
            return [StatusEvent(session)]
        # "error": the daemon dropped this watcher (too slow); it resumes like a disconnect.
        self.broken = sse.event == "error"
        return []

    def _in_attempt(self, attempt: int | None) -> None:
        if attempt is None:
            return
        if self.attempt is not None and attempt != self.attempt:
            self.last_time = None  # a rerun: its samples start again from sim time 0
        self.attempt = attempt


def _attempt_of(event_id: str | None) -> int | None:
    """The attempt an event id names (`<sim time>@<attempt>`), if it names one."""
    if not event_id or "@" not in event_id:
        return None
    try:
        return int(event_id.rpartition("@")[2])
    except ValueError:
        return None


@dataclass
class _ListReader:
    """A session list stream's events; each event's id resumes it."""

    last_id: str | None = None
    finished: bool = False
    broken: bool = False

    def take(self, sse: ServerSentEvent) -> list[ListStreamEvent]:
        if sse.event in ("error", "end"):
            # Dropped (too slow), or the daemon is going away: resume, or start again.
            self.broken = True
            return []
        self.last_id = sse.id or self.last_id
        data = json.loads(sse.data)
        if sse.event == "page":
            return [PageEvent(tuple(Session.from_json(s) for s in data["sessions"]))]
        if sse.event == "session":
            return [SessionChanged(Session.from_json(data))]
        if sse.event == "removed":
            return [SessionRemoved(data["id"])]
        return []


@dataclass
class _Failures:
    resume: Resume
    count: int = 0
    last: ClientError | None = field(default=None)

    def delay(self, error: ClientError | None, what: str) -> float:
        """The wait before the next reconnection; StreamFailed when none is left."""
        self.count += 1
        self.last = error
        if self.count > self.resume.retries:
            raise StreamFailed(
                f"{what}: {self.resume.retries} reconnections in a row failed"
                + (f" (last: {error})" if error else "")
            ) from error
        if isinstance(error, ApiError) and error.retry_after is not None:
            return min(error.retry_after, self.resume.max_backoff_s)
        return min(self.resume.backoff_s * 2.0 ** (self.count - 1), self.resume.max_backoff_s)


class _Reader(Protocol[T]):
    last_id: str | None
    finished: bool
    broken: bool

    def take(self, sse: ServerSentEvent) -> list[T]: ...


def _follow(
    path: str, params: Mapping[str, Any] | None, reader: _Reader[T], resume: Resume
) -> StreamPlan[T]:
    """Emit the stream's events as `reader` makes them, reconnecting from its last event id
    after a disconnect, until `reader` is finished."""
    failures = _Failures(resume)
    while True:
        error: ClientError | None = None
        try:
            yield Connect(path, params, reader.last_id, resume.read_timeout_s)
            while (sse := (yield NextEvent())) is not None:
                items = reader.take(sse)
                if items:
                    failures.count = 0
                for item in items:
                    yield Emit(item)
                if reader.finished:
                    return
                if reader.broken:
                    reader.broken = False
                    break
        except (DaemonUnreachable, RequestTimeout, ConnectionLost) as exc:
            error = exc
        except ApiError as exc:
            if exc.status not in _RETRYABLE:
                raise
            error = exc
        yield Sleep(failures.delay(error, path))


def stream_session(
    session_id: str, *, after: float | None = None, resume: Resume | None = None
) -> StreamPlan[SessionStreamEvent]:
    """The session's live events: a `SampleEvent` per sample (those after sim time `after`,
    from the first when None) and a `StatusEvent` per change of status or pause, ending after
    its final status. A dropped connection is resumed from the last sample received (its event
    id), so no sample is lost or given twice (see `Resume`)."""
    reader = _SessionReader(None if after is None else repr(float(after)))
    reader.last_time = after
    path = f"/v1/sessions/{_id(session_id)}/stream"
    yield from _follow(path, None, reader, resume or Resume())


def stream_sessions(
    *,
    status: str | None = None,
    label: str | None = None,
    template: str | None = None,
    limit: int | None = None,
    resume: Resume | None = None,
) -> StreamPlan[ListStreamEvent]:
    """The session list, live: a `PageEvent` (the sessions these filters select, newest first),
    then a `SessionChanged` or `SessionRemoved` per change. A reconnection resumes from the last
    event, or starts from a new `PageEvent` when the daemon cannot resume. Never ends by itself:
    break out of the loop."""
    params = _query(status=status, label=label, template=template, limit=limit)
    yield from _follow("/v1/sessions/stream", params, _ListReader(), resume or Resume())


# ---- the daemon --------------------------------------------------------------------------------


def health() -> Plan[dict[str, Any]]:
    """`/healthz`: whether the daemon and its database answer, and its counts."""
    return (yield from _object(Call("GET", "/healthz")))


def nodes() -> Plan[list[dict[str, Any]]]:
    """The daemons sharing this daemon's database."""
    return list((yield Call("GET", "/v1/nodes"))["nodes"])


def storage(
    *, limit: int | None = None, offset: int | None = None, order: str | None = None
) -> Plan[dict[str, Any]]:
    """What templates and sessions take in the database, biggest first."""
    return (
        yield from _object(
            Call("GET", "/v1/storage", _query(limit=limit, offset=offset, order=order))
        )
    )


def drain(timeout_s: float | None = None) -> Plan[dict[str, Any]]:
    """Make the daemon the client talks to stop claiming sessions and exit once drained
    (admin); running sessions get `timeout_s` to end (the daemon's drain_timeout_s)."""
    body = {} if timeout_s is None else {"timeout_s": timeout_s}
    return (yield from _object(Call("POST", "/v1/node/drain", json=body)))
