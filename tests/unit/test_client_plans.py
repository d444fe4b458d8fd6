"""The Python client's plans without a daemon: its rows match the API's document, a stream
resumes from the right event and gives nothing twice, waits end at their deadline, errors are
typed by status, and pandas is needed only for DataFrames."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from httpx_sse import ServerSentEvent

from actors import request
from actors.request import DefaultLimits
from supervisor import client_errors, client_models, client_plans, openapi, summary
from supervisor.client import _Runner
from supervisor.client_plans import Call, Connect, Emit, NextEvent, Resume, Sleep

SCHEMAS = openapi.build([], DefaultLimits())["components"]["schemas"]


def fields(row: type) -> set[str]:
    return {f.name for f in dataclasses.fields(row)}


@pytest.mark.parametrize(
    ("row", "schema"),
    [
        (client_models.Sample, "Sample"),
        (client_models.Session, "Session"),
        (client_models.TemplateListing, "TemplateListing"),
        (client_models.Template, "Template"),
        (client_models.NewVersion, "TemplateVersion"),
        (client_models.Sweep, "Sweep"),
    ],
)
def test_rows_have_the_documented_fields(row, schema):
    assert fields(row) == set(SCHEMAS[schema]["properties"])


def test_nested_rows_have_the_documented_fields():
    version = SCHEMAS["Template"]["properties"]["versions"]["items"]
    assert fields(client_models.TemplateVersion) == set(version["properties"])
    sweep = SCHEMAS["Sweep"]["properties"]
    assert fields(client_models.SweepRun) == set(sweep["sessions"]["items"]["properties"])
    assert fields(client_models.SweepGroup) == set(sweep["groups"]["items"]["properties"])


def test_summary_and_session_fields_follow_the_daemon():
    assert fields(client_models.Summary) == {
        "id", "status", "label", "source", "statistics", *summary.FIGURES,
    }  # fmt: skip
    requested = set(request.json_schema(DefaultLimits())["properties"]) - {"template"}
    assert set(client_models.SessionFields.__annotations__) == requested


def drive(plan: Any, answer: Callable[[Any], Any]) -> tuple[list[Any], list[Any], Any]:
    """Run a plan with `answer(step)` as its I/O: (the steps, the items emitted, its result)."""
    runner = _Runner(plan)
    steps, items = [], []
    while (step := runner.next()) is not None:
        steps.append(step)
        if isinstance(step, Emit):
            items.append(step.item)
            runner.answered(None)
            continue
        try:
            runner.answered(answer(step))
        except client_errors.ClientError as exc:
            runner.failed(exc)
    return steps, items, runner.result


def sample(t: float, attempt: int | None = None) -> ServerSentEvent:
    data = dict.fromkeys(fields(client_models.Sample), 0) | {"sim_time": t}
    return ServerSentEvent("sample", json.dumps(data), repr(t) + (f"@{attempt}" if attempt else ""))


def status(state: str, attempt: int | None = None) -> ServerSentEvent:
    data = dict.fromkeys(fields(client_models.Session)) | {
        "status": state,
        "request": {},
        "attempt": attempt,
    }
    return ServerSentEvent("status", json.dumps(data))


def _replay(
    connections: list[list[Any]], resume: Resume | None = None
) -> tuple[list[Any], list[Any]]:
    """A session stream over these connections' events (an exception: the connection breaks
    there; None: the daemon ends the stream): its steps and what it gave."""
    pending: list[Any] = []

    def answer(step: Any) -> Any:
        if isinstance(step, Connect):
            pending[:] = connections.pop(0)
            return None
        if isinstance(step, NextEvent):
            event = pending.pop(0)
            if isinstance(event, Exception):
                raise event
            return event
        assert isinstance(step, Sleep)

    plan = client_plans.stream_session("s1", resume=resume or Resume(retries=2))
    steps, items, _ = drive(plan, answer)
    assert not connections  # every connection was made
    return steps, items


def _times(items: list[Any]) -> list[float]:
    return [i.sample.sim_time for i in items if isinstance(i, client_models.SampleEvent)]


def test_a_rerun_starts_again_from_sim_time_0_live_and_on_a_resume():
    lost = client_errors.ConnectionLost("cut")
    # Live: the rerun's status, then its samples from the start.
    steps, items = _replay(
        [
            [
                *(sample(10.0, 1), sample(20.0, 1), status("running", 1)),
                *(status("queued", 2), status("running", 2), sample(10.0, 2), lost),
            ],
            [sample(20.0, 2), status("completed", 2), None],
        ]
    )
    assert _times(items) == [10.0, 20.0, 10.0, 20.0]
    assert [s.last_event_id for s in steps if isinstance(s, Connect)] == [None, "10.0@2"]
    statuses = [(i.session.status, i.session.attempt) for i in items if hasattr(i, "session")]
    assert statuses == [("running", 1), ("queued", 2), ("running", 2), ("completed", 2)]
    # Cut during the first attempt, back during the second: the daemon sends the second's
    # samples from its start (the id named the first), and none is dropped as seen.
    _, items = _replay(
        [
            [sample(10.0, 1), sample(20.0, 1), status("running", 1), lost],
            [sample(10.0, 2), sample(20.0, 2), sample(30.0, 2), status("completed", 2), None],
        ]
    )
    assert _times(items) == [10.0, 20.0, 10.0, 20.0, 30.0]


def test_a_stream_resumes_from_its_last_sample_and_gives_nothing_twice():
    lost = client_errors.ConnectionLost("cut")
    # Each connection's events; an exception is the connection breaking there.
    connections = [
        [sample(1.0), sample(2.0), status("running"), lost],
        [lost],  # at once again: a second failure in a row
        [sample(2.0), sample(3.0), status("running"), ServerSentEvent("error", "{}")],
        [sample(4.0), status("completed"), None],
    ]
    steps, items = _replay(connections, Resume(retries=2, backoff_s=0.5))
    assert [s.last_event_id for s in steps if isinstance(s, Connect)] == [None, "2.0", "2.0", "3.0"]
    # Backoff doubles over failures in a row, and starts again once events come.
    assert [s.seconds for s in steps if isinstance(s, Sleep)] == [0.5, 1.0, 0.5]
    assert _times(items) == [1.0, 2.0, 3.0, 4.0]
    statuses = [i.session.status for i in items if isinstance(i, client_models.StatusEvent)]
    assert statuses == ["running", "completed"]


def test_a_stream_gives_up_after_its_retries_and_at_once_on_a_refusal():
    def unreachable(step: Any) -> Any:
        if isinstance(step, Connect):
            raise client_errors.DaemonUnreachable("http://x", "refused")

    with pytest.raises(client_errors.StreamFailed, match="2 reconnections in a row failed"):
        drive(client_plans.stream_session("s1", resume=Resume(retries=2)), unreachable)

    def missing(step: Any) -> Any:
        raise client_errors.api_error(404, {"error": "no session 's1'"}, "", {})

    with pytest.raises(client_errors.NotFound):
        drive(client_plans.stream_session("s1"), missing)


def test_a_busy_daemon_is_waited_for_as_it_asks():
    calls = []

    def busy_then_gone(step: Any) -> Any:
        calls.append(step)
        if isinstance(step, Connect):
            headers = {"Retry-After": "3"}
            raise client_errors.api_error(503, {"error": "busy"}, "", headers)

    with pytest.raises(client_errors.StreamFailed):
        drive(client_plans.stream_session("s1", resume=Resume(retries=1)), busy_then_gone)
    assert [s.seconds for s in calls if isinstance(s, Sleep)] == [3.0]


def test_a_wait_ends_at_its_deadline_with_the_last_state():
    running = dict.fromkeys(fields(client_models.Session)) | {"id": "s1", "status": "running"}
    seen = []

    def answer(step: Any) -> Any:
        assert isinstance(step, Call | Sleep)
        return running if isinstance(step, Call) else None

    with pytest.raises(client_errors.WaitTimeout) as timeout:
        drive(client_plans.wait_session("s1", timeout=0, progress=seen.append), answer)
    assert timeout.value.last.status == "running" and seen == [timeout.value.last]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, client_errors.BadRequest),
        (401, client_errors.Unauthorized),
        (403, client_errors.Forbidden),
        (404, client_errors.NotFound),
        (409, client_errors.Conflict),
        (413, client_errors.PayloadTooLarge),
        (422, client_errors.Unprocessable),
        (429, client_errors.TooManyRequests),
        (503, client_errors.Unavailable),
        (502, client_errors.ApiError),
    ],
)
def test_errors_are_typed_by_status(status, kind):
    error = client_errors.api_error(status, {"error": "why", "field": "end"}, "", {})
    assert type(error) is kind and error.status == status
    assert (error.message, error.body["field"], str(error)) == (
        "why",
        "end",
        f"why (HTTP {status})",
    )


def test_an_error_without_a_json_body_says_what_came():
    error = client_errors.api_error(502, None, "<html>Bad Gateway</html>", {})
    assert error.message == "<html>Bad Gateway</html>" and error.body == {}


def test_dataframes_say_pandas_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"sumo-supervisor\[pandas\]"):
        client_models.to_dataframe([], client_models.Sample)


def test_the_client_imports_without_pandas():
    code = (
        "import sys; sys.modules['pandas'] = None\n"
        "from supervisor import AsyncClient, Client, to_dataframe\n"
        "import supervisor.commands_cli\n"
        "print(sorted(m for m in sys.modules if m.startswith(('pandas', 'aiohttp', 'asyncpg'))))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['pandas']"  # the None it was given, nothing more


def test_an_empty_dataframe_has_its_columns():
    frame = client_models.to_dataframe([], client_models.Sample, session=[])
    assert list(frame.columns) == [
        "session",
        *[f.name for f in dataclasses.fields(client_models.Sample)],
    ]
