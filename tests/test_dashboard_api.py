"""What the dashboard needs of the daemon, over real HTTP: its files (public, strict CSP, no
cookies, still behind the Host check), the map's network route and the live map stream (behind
tokens and roles; bad input is a 4xx JSON error)."""

from __future__ import annotations

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
