"""The Python client against a real daemon: every method of `Client` and of `AsyncClient`, the
errors they raise, the DataFrames, and a live stream that resumes after real disconnects."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import io
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from supervisor import AsyncClient, Client
from supervisor.client_errors import (
    BadRequest,
    Conflict,
    DaemonUnreachable,
    Forbidden,
    NotFound,
    Unauthorized,
)
from supervisor.client_models import (
    PageEvent,
    Sample,
    SampleEvent,
    Session,
    StatusEvent,
    SweepRun,
)
from supervisor.client_plans import Resume
from tests.harness.daemon import make_token
from tests.harness.poll import DEADLINE_S, POLL_S


class Blocking:
    """An AsyncClient used from blocking code: each coroutine (and each step of an async
    iterator) runs on `loop`, the test's own, while the blocking code runs on a thread. The
    same test body then exercises both clients."""

    def __init__(self, client: AsyncClient, loop: asyncio.AbstractEventLoop) -> None:
        self._client = client
        self._loop = loop
        self.url = client.url

    def _run(self, awaitable: Any) -> Any:
        async def run() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout=300)

    def _iterate(self, events: Any) -> Iterator[Any]:
        try:
            while True:
                try:
                    yield self._run(anext(events))
                except StopAsyncIteration:
                    return
        finally:
            self._run(events.aclose())

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)

        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.iscoroutine(result):
                return self._run(result)
            assert inspect.isasyncgen(result), result
            return self._iterate(result)

        return call


def until(look: Callable[[], Session], *statuses: str) -> Session:
    deadline = time.monotonic() + DEADLINE_S
    while (session := look()).status not in statuses:
        assert time.monotonic() < deadline, session
        time.sleep(POLL_S)
    return session


async def _clients(kind: str, url: str, token: str | None) -> Any:
    if kind == "sync":
        return Client(url, token)
    return Blocking(AsyncClient(url, token), asyncio.get_running_loop())


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_method(kind, daemons, db_url, scenarios, monkeypatch):
    monkeypatch.delenv("SUMO_SUPERVISOR_TOKEN", raising=False)
    admin = await make_token(db_url, "admin", "admin")
    reader = await make_token(db_url, "reader", "reader")
    daemon = await daemons.start(db_url)
    clients = [await _clients(kind, daemon.url, t) for t in (admin, reader, None)]
    try:
        await asyncio.to_thread(_every_method, *clients, scenarios)
    finally:
        for c in clients:
            await (c._client.aclose() if kind == "async" else asyncio.to_thread(c.close))


def _every_method(client: Any, reader: Any, tokenless: Any, scenarios: Any) -> None:
    _templates(client, scenarios)
    done, other = _results(client)
    _control(client, scenarios)
    _sweeps(client)
    _errors(client, reader, tokenless, done)
    _daemon(client, done, other)
    _deletions(client, done)


def _templates(client: Any, scenarios: Any) -> None:
    grid = scenarios["grid3"]
    created = client.add_template("grid3", grid.root / grid.config)
    assert (created.name, created.version, created.config) == ("grid3", 1, grid.config)
    assert {f.path for f in created.files} == set(grid.files())
    listed = client.list_templates()
    assert [(t.name, t.latest_version, t.versions) for t in listed] == [("grid3", 1, 1)]
    (version,) = client.get_template("grid3").versions
    assert set(version.files) == set(created.files) and version.sha256 == created.sha256
    files = {path: grid.root / path for path in grid.files()}
    again = client.upload_template("grid3", grid.config, files)
    assert again.version == 2 and again.sha256 == created.sha256


def _results(client: Any) -> tuple[Session, Session]:
    first = client.create_session("grid3", seed=3, end=60, label="client", record=["trips"])
    assert first.status in ("queued", "starting") and first.request["record"] == [
        "samples",
        "trips",
    ]
    looks: list[Session] = []
    done = client.wait_session(first.id, timeout=DEADLINE_S, poll_s=0.1, progress=looks.append)
    assert done.status == "completed" and done.sim_time == 60 and done.ended
    assert looks[-1].status == "completed" and all(isinstance(s, Session) for s in looks)
    assert client.get_session(first.id).ended_at == done.ended_at

    rows = client.samples(first.id)
    assert [r.sim_time for r in rows] == [10.0, 20.0, 30.0, 40.0, 50.0, 60.0]
    assert client.samples(first.id, after=20, limit=2) == rows[2:4]
    frame = client.samples_df(first.id)
    assert list(frame.columns) == [f.name for f in dataclasses.fields(Sample)]
    assert frame["halting"].tolist() == [r.halting for r in rows]
    # The whole stream of an ended session: every sample, then its final status.
    events = list(client.stream_session(first.id))
    assert [e.sample for e in events if isinstance(e, SampleEvent)] == rows
    assert isinstance(events[-1], StatusEvent) and events[-1].session.status == "completed"
    tail = list(client.stream_session(first.id, after=40))
    assert [e.sample for e in tail if isinstance(e, SampleEvent)] == rows[4:]

    summary = client.summary(first.id)
    assert summary.source == "sumo_statistics" and summary.arrived == sum(r.arrived for r in rows)
    other = client.create_session({"template": "grid3", "seed": 4, "end": 60, "label": "client"})
    client.wait_session(other.id, timeout=DEADLINE_S, poll_s=0.1)
    summaries = client.summaries_df([first.id, other.id])
    assert summaries["id"].tolist() == [first.id, other.id]
    assert summaries["arrived"].tolist()[0] == summary.arrived
    compared = client.compare([first.id, other.id])
    assert [s["id"] for s in compared["sessions"]] == [first.id, other.id]

    assert [s.id for s in client.list_sessions(label="client")] == [other.id, first.id]
    assert [s.id for s in client.list_sessions(label="client", limit=1)] == [other.id]
    # The next page starts after the last one of the page before, none repeated or skipped.
    assert [s.id for s in client.list_sessions(label="client", before=other.id)] == [first.id]
    assert client.list_sessions(label="client", before=first.id) == []
    assert client.list_sessions(label="client", status="failed") == []
    assert len(client.list_sessions(template="grid3")) == 2

    out = io.BytesIO()
    written = client.export_csv(first.id, "samples", out)
    lines = out.getvalue().decode().splitlines()
    assert written == len(out.getvalue()) and len(lines) == len(rows) + 1
    assert lines[0].startswith("sim_time,")
    trips = io.BytesIO()
    client.export_csv(first.id, "trips", trips)
    assert trips.getvalue().startswith(b"vehicle,")
    assert "session_ended" in [e["event"] for e in client.session_logs(first.id)]
    assert [e["status"] for e in client.session_events(first.id)][-1] == "completed"
    return done, other


def _control(client: Any, scenarios: Any) -> None:
    long = scenarios["long"]
    client.add_template("long", long.root / long.config)
    running = client.create_session("long", label="control")
    until(lambda: client.get_session(running.id), "running")
    assert client.pause_session(running.id)["paused"] is True
    assert client.get_session(running.id).paused is True
    assert client.resume_session(running.id)["paused"] is False
    assert client.get_session(running.id).paused is False
    assert client.stop_session(running.id)["stopping"] is True
    assert client.wait_session(running.id, timeout=DEADLINE_S, poll_s=0.1).status == "stopped"

    stepped = client.create_session("grid3", mode="stepped", idle_timeout_s=60)
    until(lambda: client.get_session(stepped.id), "running")
    sample = client.step_session(stepped.id, 20)
    assert isinstance(sample, Sample) and sample.sim_time == 20
    applied = client.send_commands(
        stepped.id,
        [
            {"type": "edge.set_max_speed", "id": "A0B0", "speed": 5.0},
            {"type": "get", "domain": "edge", "id": "A0B0", "var": "vehicle_count"},
        ],
    )
    assert applied["sim_time"] == 20 and all(r["ok"] for r in applied["results"])
    (history,) = client.get_commands(stepped.id)
    assert history["sim_time"] == 20 and history["command"]["type"] == "edge.set_max_speed"
    with pytest.raises(Conflict):
        client.delete_session(stepped.id)  # it runs
    client.stop_session(stepped.id)
    client.wait_session(stepped.id, timeout=DEADLINE_S, poll_s=0.1)
    assert client.delete_session(stepped.id)["deleted"] is True
    with pytest.raises(NotFound):
        client.get_session(stepped.id)


def _sweeps(client: Any) -> None:
    new = client.create_sweep("grid3", runs=2, end=30, vary={"sample_every": [10, 15]})
    assert new.count == 4 and len(new.sessions) == 4
    looks: list[Any] = []
    sweep = client.wait_sweep(new.id, timeout=DEADLINE_S, poll_s=0.2, progress=looks.append)
    assert sweep.done and sweep.by_status == {"completed": 4} and looks[-1] == sweep
    assert sweep == client.get_sweep(new.id)
    assert all(isinstance(r, SweepRun) for r in sweep.sessions)
    assert sorted(g.params["sample_every"] for g in sweep.groups) == [10, 15]
    assert all(g.figures["arrived"].n == 2 for g in sweep.groups)
    frame = client.sweep_samples_df(new.id)
    assert list(frame.columns[:3]) == ["session", "seed", "sample_every"]
    assert set(frame["seed"]) == {1, 2} and set(frame["session"]) == set(new.sessions)
    per_run = frame.groupby("session")["sim_time"].max()
    assert (per_run == 30).all()
    fifteen = frame[frame["sample_every"] == 15]
    assert sorted(set(fifteen["sim_time"])) == [15.0, 30.0]


def _errors(client: Any, reader: Any, tokenless: Any, done: Session) -> None:
    with pytest.raises(NotFound) as missing:
        client.get_session("nope")
    assert missing.value.status == 404 and missing.value.message == "no session 'nope'"
    assert missing.value.body["session"] == "nope"
    with pytest.raises(NotFound):
        client.get_sweep("nope")
    with pytest.raises(Conflict) as ended:
        client.stop_session(done.id)
    assert ended.value.status == 409
    with pytest.raises(BadRequest) as bad:
        client.create_session("grid3", end=-1)
    assert bad.value.body["field"] == "end"
    with pytest.raises(Forbidden) as small:
        reader.create_session("grid3")
    assert "this needs operator" in small.value.message
    assert reader.get_session(done.id) == client.get_session(done.id)
    with pytest.raises(Unauthorized):
        tokenless.list_sessions()
    down = Client("http://127.0.0.1:9")
    with pytest.raises(DaemonUnreachable):
        down.health()
    down.close()


def _daemon(client: Any, done: Session, other: Session) -> None:
    assert client.health()["status"] == "ok"
    (node,) = client.nodes()
    assert node["this"] and node["state"] == "alive"
    report = client.storage(limit=1, order="bytes")
    assert len(report["sessions"]) == 1 and report["sessions_total"] >= 2
    raw = client.request("GET", "/v1/sessions", {"label": "client", "limit": 5})
    assert [s["id"] for s in raw["sessions"]] == [other.id, done.id]
    # The live list: its first event is the page the filters select.
    for event in client.stream_sessions(label="client"):
        assert isinstance(event, PageEvent)
        assert [s.id for s in event.sessions] == [other.id, done.id]
        break


def _deletions(client: Any, done: Session) -> None:
    dropped = client.delete_template_version("long", 1, sessions=True)
    assert dropped["template_deleted"] is True and dropped["sessions_deleted"] == 1
    with pytest.raises(Conflict):
        client.delete_template("grid3")  # it has sessions
    assert client.delete_template("grid3", sessions=True)["deleted"] is True
    assert client.list_templates() == []
    with pytest.raises(NotFound):
        client.get_session(done.id)


# ---- a stream that loses its connection --------------------------------------------------------


class CuttingProxy:
    """A TCP proxy in front of the daemon that cuts every connection once it has passed
    `cut_after` bytes of the daemon's answer: a real disconnect, in the middle of an event
    more often than not (the client sees a broken chunked body or a reset, as it would when a
    network or a proxy drops it), which nothing inside the daemon or the client could fake."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self._target = target_port
        self._cut_after = cut_after
        self.cuts = 0
        self.server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        daemon_r, daemon_w = await asyncio.open_connection("127.0.0.1", self._target)
        self._open |= {client_w, daemon_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, limit: int) -> None:
            passed = 0
            while passed < limit and (data := await r.read(min(4096, limit - passed))):
                w.write(data)
                await w.drain()
                passed += len(data)
            if passed >= limit:
                self.cuts += 1

        upstream = asyncio.create_task(pipe(client_r, daemon_w, 2**62))
        try:
            await pipe(daemon_r, client_w, self._cut_after)
        except ConnectionError:
            pass
        finally:
            upstream.cancel()
            for w in (client_w, daemon_w):
                w.transport.abort()
                self._open.discard(w)

    async def close(self) -> None:
        """Stop listening, and end the connections still open (a client's idle keep-alive)."""
        assert self.server is not None
        self.server.close()
        for w in list(self._open):
            w.transport.abort()
        await self.server.wait_closed()


async def test_a_stream_resumes_after_disconnects_without_losing_or_repeating(
    daemons, db_url, scenarios
):
    # Cut connections hold their stream slot until the daemon sees them gone: more slots than
    # a client's default 4, so that reconnections are never refused here.
    daemon = await daemons.start(db_url, env={"SUMO_SUPERVISOR_MAX_STREAMS_PER_CLIENT": "64"})
    port = int(daemon.url.rsplit(":", 1)[1])
    proxy = CuttingProxy(port, cut_after=1500)
    through = await proxy.start()
    resume = Resume(retries=8, backoff_s=0.02, max_backoff_s=0.2)
    async with AsyncClient(daemon.url) as direct, AsyncClient(through) as cut:
        grid = scenarios["grid3"]
        await direct.add_template("grid3", grid.root / grid.config)
        # A long run, sampled often: its samples come while both streams read.
        session = await direct.create_session("grid3", end=600, sample_every=2)
        sync_client = Client(through)
        got_sync: list[Any] = []
        reader = threading.Thread(
            target=lambda: got_sync.extend(sync_client.stream_session(session.id, resume=resume))
        )
        reader.start()
        got_async = [e async for e in cut.stream_session(session.id, resume=resume)]
        await asyncio.to_thread(reader.join, DEADLINE_S)
        assert not reader.is_alive()
        await asyncio.to_thread(sync_client.close)
        stored = await direct.samples(session.id)
    await proxy.close()
    assert len(stored) > 100 and proxy.cuts >= 10, (len(stored), proxy.cuts)
    for got in (got_sync, got_async):
        assert [e.sample for e in got if isinstance(e, SampleEvent)] == stored
        statuses = [e.session.status for e in got if isinstance(e, StatusEvent)]
        # Each change once, though every resumed stream says the status again.
        assert statuses[-1] == "completed" and len(statuses) == len(set(statuses))
