"""The daemon's HTTP API as the tests and benchmarks use it. `at` is a daemon (anything with a
`url`) or its base URL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from tests.harness.poll import DEADLINE_S, POLL_S
from tests.harness.scenarios import Scenario

# The statuses a session ends in, as the API shows them.
FINAL = frozenset({"completed", "failed", "stopped", "timed_out"})


class HasUrl(Protocol):
    url: str


def base_url(at: HasUrl | str) -> str:
    return at if isinstance(at, str) else at.url


def template_form(
    name: str,
    scenario: Scenario,
    files: dict[str, bytes] | None = None,
    config: str | None = None,
    *,
    quote: bool = True,
) -> aiohttp.FormData:
    """The upload of a scenario; `quote=False` sends file names exactly as given, like curl."""
    form = aiohttp.FormData(quote_fields=quote)
    form.add_field("name", name)
    form.add_field("config", config if config is not None else scenario.config)
    for path, data in (files if files is not None else scenario.files()).items():
        form.add_field("file", data, filename=path, content_type="application/octet-stream")
    return form


async def upload(
    http: aiohttp.ClientSession, at: HasUrl | str, name: str, scenario: Scenario
) -> dict[str, Any]:
    async with http.post(f"{base_url(at)}/v1/templates", data=template_form(name, scenario)) as r:
        body = await r.json()
        assert r.status == 201, body
        return body  # type: ignore[no-any-return]


async def create_session(
    http: aiohttp.ClientSession, at: HasUrl | str, **request: Any
) -> dict[str, Any]:
    async with http.post(f"{base_url(at)}/v1/sessions", json=request) as r:
        body = await r.json()
        assert r.status == 201, body
        return body  # type: ignore[no-any-return]


async def get_session(
    http: aiohttp.ClientSession, at: HasUrl | str, session_id: str
) -> dict[str, Any]:
    async with http.get(f"{base_url(at)}/v1/sessions/{session_id}") as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


async def wait_status(
    http: aiohttp.ClientSession,
    at: HasUrl | str,
    session_id: str,
    statuses: set[str] | str,
    timeout: float = DEADLINE_S,
) -> dict[str, Any]:
    """Poll until the session is in one of `statuses`; fail with its last state at the deadline,
    or at once when it has ended in another (an end is final)."""
    wanted = {statuses} if isinstance(statuses, str) else statuses
    deadline = time.monotonic() + timeout
    while True:
        session = await get_session(http, at, session_id)
        if session["status"] in wanted:
            return session
        if session["status"] in FINAL:
            raise AssertionError(f"session ended {session['status']}, not {wanted}: {session}")
        if time.monotonic() > deadline:
            raise AssertionError(f"session never reached {wanted}: {session}")
        await asyncio.sleep(POLL_S)


async def wait_all(
    http: aiohttp.ClientSession,
    at: HasUrl | str,
    ids: list[str],
    statuses: set[str],
    poll_s: float = 0.02,
    label: str | None = None,
) -> None:
    """Poll until every session is in one of `statuses`: one list request per poll (of the
    sessions with `label`, when given), as a client watching many sessions would."""
    url = base_url(at)
    pending = set(ids)
    while pending:
        if len(pending) == 1:
            (only,) = pending
            rows = [await get_session(http, url, only)]
        else:
            params = {"limit": "10000", **({"label": label} if label else {})}
            async with http.get(f"{url}/v1/sessions", params=params) as r:
                rows = (await r.json())["sessions"]
        for s in rows:
            if s["id"] not in pending:
                continue
            if s["status"] in statuses:
                pending.discard(s["id"])
            elif s["status"] in FINAL - statuses:
                raise RuntimeError(f"session ended {s['status']}: {s.get('error')}")
        if pending:
            await asyncio.sleep(poll_s)


async def samples(
    http: aiohttp.ClientSession, at: HasUrl | str, session_id: str
) -> list[dict[str, Any]]:
    async with http.get(f"{base_url(at)}/v1/sessions/{session_id}/samples") as r:
        assert r.status == 200
        return (await r.json())["samples"]  # type: ignore[no-any-return]


async def read_stream(http: aiohttp.ClientSession, url: str) -> list[tuple[str, Any]]:
    """Every (event name, data) of a session's SSE stream, until the daemon ends it."""
    events: list[tuple[str, Any]] = []
    async with http.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        name = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name or "message", json.loads(line.split(":", 1)[1])))
    return events


async def ask(
    http: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, Any, Any]:
    """(status, body as JSON or text, headers) of one request."""
    async with http.request(method, url, **kw) as r:
        text = await r.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return r.status, body, r.headers


async def metric(http: aiohttp.ClientSession, at: HasUrl | str, name: str) -> float:
    """One unlabelled figure of the daemon's Prometheus metrics."""
    async with http.get(f"{base_url(at)}/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise KeyError(name)


async def recorded_session(
    http: aiohttp.ClientSession,
    at: HasUrl | str,
    db_url: str,
    scenarios: Mapping[str, Scenario],
    rows: int,
) -> dict[str, Any]:
    """A completed session with `rows` trajectory rows, made in the database directly (a real
    run this size takes long)."""
    from supervisor import db
    from supervisor.pgstore import PgStore

    await upload(http, at, "grid3", scenarios["grid3"])
    session = await create_session(http, at, template="grid3", end=10)
    await wait_status(http, at, session["id"], "completed")
    pool = await db.create_pool(db_url)
    try:
        await PgStore(pool).create_record_partitions(session["id"], ["trajectories"])
        await pool.execute(
            "INSERT INTO trajectories (session_id, time, vehicle, x, y, angle, speed, lane)"
            " SELECT $1, g / 100, 'veh' || (g % 100), g * 0.5, g * 0.25, 90, 13.5, 'edge_0'"
            " FROM generate_series(0, $2 - 1) g",
            session["id"],
            rows,
        )
    finally:
        await pool.close()
    return session
