"""What the dashboard needs of the daemon, over real HTTP: its files (public, strict CSP, no
cookies, still behind the Host check), the map's network route and the live map stream (behind
tokens and roles; bad input is a 4xx JSON error)."""

from __future__ import annotations

import asyncio
import json

from tests.harness.daemon import make_token
from tests.harness.http import ask, create_session, template_form, upload, wait_status


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_dashboard_files_are_public_and_locked_down(daemons, db_url, http):
    await make_token(db_url, "someone", "reader")
    daemon = await daemons.start(db_url)
    status, body, headers = await ask(http, "GET", daemon.url + "/")
    assert status == 200 and "<title>sumo-supervisor</title>" in body
    assert headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in headers
    status, body, headers = await ask(http, "GET", daemon.url + "/ui/app.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    etag = headers["ETag"]
    status, _, _ = await ask(
        http, "GET", daemon.url + "/ui/app.js", headers={"If-None-Match": etag}
    )
    assert status == 304
    status, _, _ = await ask(http, "GET", daemon.url + "/ui/vendor/uplot/uPlot.esm.js")
    assert status == 200
    # Only the files that are there: never a path outside them.
    for name in ("/ui/nope.js", "/ui/..%2F..%2Fapi.py", "/ui/%2e%2e/%2e%2e/schema.sql"):
        status, body, _ = await ask(http, "GET", daemon.url + name)
        # 404, or 401 where the client resolved the dots and asked for /schema.sql.
        assert status in (401, 404) and "error" in body, (name, status, body)
    # The Host check holds for them too (DNS rebinding).
    status, body, _ = await ask(http, "GET", daemon.url + "/", headers={"Host": "evil.example"})
    assert status == 421, body
    # The data is not public.
    assert (await ask(http, "GET", daemon.url + "/v1/sessions"))[0] == 401


async def test_network_route(daemons, db_url, http, scenarios):
    token = await make_token(db_url, "reader", "reader")
    operator = await make_token(db_url, "op", "operator")
    daemon = await daemons.start(db_url)
    async with http.post(
        f"{daemon.url}/v1/templates",
        data=template_form("long", scenarios["long"]),
        headers=_bearer(operator),
    ) as r:
        assert r.status == 201
    url = f"{daemon.url}/v1/templates/long/versions/1/network"
    assert (await ask(http, "GET", url))[0] == 401
    status, net, _ = await ask(http, "GET", url, headers=_bearer(token))
    assert status == 200
    assert len(net["edges"]) == 48 and len(net["junctions"]) == 16  # a 4x4 grid
    assert {t["id"] for t in net["tls"]} >= {"A0", "B1", "D3"}
    assert all("x" in link for t in net["tls"] for link in t["links"])
    # Asked again: the same answer, from the cache.
    assert (await ask(http, "GET", url, headers=_bearer(token)))[1] == net
    for bad, code in [
        ("/v1/templates/long/versions/x/network", 400),
        ("/v1/templates/long/versions/0/network", 400),
        ("/v1/templates/long/versions/99999999999/network", 400),
        ("/v1/templates/long/versions/2/network", 404),
        ("/v1/templates/nope/versions/1/network", 404),
        ("/v1/templates/Bad%20Name/versions/1/network", 400),
    ]:
        status, body, _ = await ask(http, "GET", daemon.url + bad, headers=_bearer(token))
        assert status == code and "error" in body, (bad, status, body)


async def _first_frame(http, url: str, headers: dict[str, str]) -> dict:
    async with http.get(url, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        event = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event == "frame":
                return json.loads(line.split(":", 1)[1])
    raise AssertionError("the stream ended without a frame")


async def test_live_map_stream(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)  # tokenless on loopback: every caller is admin
    await upload(http, daemon, "long", scenarios["long"])
    session = await create_session(http, daemon, template="long", end=100000)
    await wait_status(http, daemon, session["id"], {"running"})
    url = f"{daemon.url}/v1/sessions/{session['id']}/map"
    frame = await _first_frame(http, url, {})
    n = len(frame["ids"])
    assert n == len(frame["speed"]) == len(frame["angle"]) == len(frame["xy"]) // 2
    assert set(frame["tls"]) >= {"A0", "B1"} and frame["sim_time"] > 0
    # A second watcher gets frames too; then both have gone, and the session runs on.
    second = await _first_frame(http, url, {})
    assert second["sim_time"] >= frame["sim_time"]
    status, body, _ = await ask(http, "POST", f"{daemon.url}/v1/sessions/{session['id']}/stop")
    assert status == 202, body
    await wait_status(http, daemon, session["id"], {"stopped"})
    # An ended session has no live map: 409 saying why; an unknown one 404.
    status, body, _ = await ask(http, "GET", url)
    assert status == 409 and "running session" in body["error"], body
    status, body, _ = await ask(http, "GET", f"{daemon.url}/v1/sessions/nope/map")
    assert status == 404 and "error" in body
    # The session list shows the vehicles of each session's latest sample.
    status, listing, _ = await ask(http, "GET", f"{daemon.url}/v1/sessions")
    assert isinstance(listing["sessions"][0]["vehicles"], int)


async def _next_event(r, timeout: float = 60) -> tuple[str, str | None, dict]:
    """The stream's next event (name, id, data); pings and comments skipped."""
    name, event_id, data = "message", None, []
    async with asyncio.timeout(timeout):
        while True:
            raw = await r.content.readline()
            assert raw, "the stream ended"
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return name, event_id, json.loads("\n".join(data))
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "id":
                event_id = value
            elif key == "data":
                data.append(value)


async def _until(r, wanted) -> list[tuple[str, str | None, dict]]:
    """Events up to and including the first that `wanted` accepts."""
    seen = []
    while True:
        seen.append(event := await _next_event(r))
        if wanted(*event):
            return seen


async def test_session_list_stream(daemons, db_url, http, scenarios):
    reader = _bearer(await make_token(db_url, "watcher", "reader"))
    http.headers.update(_bearer(await make_token(db_url, "op", "operator")))
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    await upload(http, daemon, "other", scenarios["long"])
    url = f"{daemon.url}/v1/sessions/stream"
    async with http.get(url + "?template=long", headers=reader) as r:
        assert r.status == 200, await r.text()
        assert r.headers["Content-Type"].startswith("text/event-stream")
        # First the page: nothing yet.
        name, page_id, page = await _next_event(r)
        assert name == "page" and page["sessions"] == [] and page["cursor"] == page_id
        # A session created shows up, then its changes: running, sim time and vehicles.
        a = await create_session(http, daemon, template="long", end=100000, label="a")
        await _until(
            r,
            lambda n, _, d: n == "session" and d["id"] == a["id"] and (d["sim_time"] or 0) > 0,
        )
        running = await _until(r, lambda n, _, d: d.get("vehicles") is not None)
        assert running[-1][2]["status"] == "running" and running[-1][2]["paused"] is False
        # A session of another template never appears in this list; a pause does.
        b = await create_session(http, daemon, template="other", end=100000)
        await wait_status(http, daemon, b["id"], {"running"})
        status, body, _ = await ask(http, "POST", f"{daemon.url}/v1/sessions/{a['id']}/pause")
        assert status == 200, body
        seen = await _until(r, lambda n, _, d: d.get("paused") is True)
        assert all(d["id"] == a["id"] for n, _, d in seen), seen
        paused_id = seen[-1][1]
        assert paused_id is not None

        # Resumable: a second stream of the same list keeps its feed alive while the first
        # reconnects; the reconnection gets only what it missed, no page.
        async with http.get(url + "?template=long", headers=reader) as holder:
            assert (await _next_event(holder))[0] == "page"
            status, body, _ = await ask(http, "POST", f"{daemon.url}/v1/sessions/{a['id']}/stop")
            assert status == 202, body
            await _until(holder, lambda n, _, d: d.get("status") == "stopped")
            async with http.get(
                url + "?template=long", headers={**reader, "Last-Event-ID": paused_id}
            ) as again:
                assert again.status == 200
                missed = await _until(again, lambda n, _, d: d.get("status") == "stopped")
                assert all(n == "session" for n, _, _ in missed), missed
            # An id it does not know (another feed's, or a restarted daemon's): a fresh page.
            async with http.get(url + "?template=long&after=0badc0de-7", headers=reader) as fresh:
                name, _, page = await _next_event(fresh)
                assert name == "page" and [s["id"] for s in page["sessions"]] == [a["id"]]

    # Filters: by status and label (as the operator: the reader's closed streams may take a
    # moment to give back their slots).
    async with http.get(url + "?status=running") as r:
        name, _, page = await _next_event(r)
        assert name == "page" and [s["id"] for s in page["sessions"]] == [b["id"]]
        assert page["sessions"][0]["template"] == "other"
    async with http.get(url + "?label=a&limit=5") as r:
        _, _, page = await _next_event(r)
        assert [s["id"] for s in page["sessions"]] == [a["id"]]
        assert page["sessions"][0]["status"] == "stopped"
        assert page["sessions"][0]["paused"] is None  # no node runs it now
    # The session JSON says whether it is paused, too.
    status, got, _ = await ask(http, "GET", f"{daemon.url}/v1/sessions/{b['id']}")
    assert status == 200 and got["paused"] is False

    # Bad input: 400 with a JSON body naming the problem.
    for query, headers, what in [
        ("?status=done", {}, "status"),
        ("?template=Bad%20Name", {}, "template name"),
        ("?limit=0", {}, "limit"),
        ("?limit=lots", {}, "limit"),
        ("?limit=100000", {}, "limit"),
        ("?colour=red", {}, "unknown parameter 'colour'"),
        ("", {"Last-Event-ID": "yesterday"}, "Last-Event-ID"),
    ]:
        status, body, _ = await ask(http, "GET", url + query, headers={**reader, **headers})
        assert status == 400 and what in body["error"], (query, status, body)
    # Readers may watch; nobody else.
    status, body, _ = await ask(http, "GET", url, headers={"Authorization": ""})
    assert status == 401 and "error" in body
    status, body, _ = await ask(http, "GET", url, headers=_bearer("sst_nope"))
    assert status == 401 and "error" in body
    await ask(http, "POST", f"{daemon.url}/v1/sessions/{b['id']}/stop")
