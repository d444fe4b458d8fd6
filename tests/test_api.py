"""The HTTP API against a real daemon: templates, listing, and every kind of bad input getting a
clear 4xx with a JSON body that names the problem."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import pytest

from tests.harness.http import create_session, template_form, upload, wait_status

NET = "net.net.xml"


async def post_template(
    http: aiohttp.ClientSession, daemon: Any, form: aiohttp.FormData
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{daemon.url}/v1/templates", data=form) as r:
        return r.status, await r.json()


async def test_template_upload_list_show_and_versions(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    first = await upload(http, daemon, "nested", scenarios["nested"])
    assert first["version"] == 1
    assert {f["path"] for f in first["files"]} == set(scenarios["nested"].files())
    second = await upload(http, daemon, "nested", scenarios["nested"])
    assert second["version"] == 2
    assert second["sha256"] == first["sha256"]  # same content, same hash
    async with http.get(f"{daemon.url}/v1/templates") as r:
        listed = (await r.json())["templates"]
    assert [(t["name"], t["latest_version"], t["versions"]) for t in listed] == [("nested", 2, 2)]
    async with http.get(f"{daemon.url}/v1/templates/nested") as r:
        shown = await r.json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert "cfg/scenario.sumocfg" in {f["path"] for f in shown["versions"][0]["files"]}
    # A session can pin an older version.
    session = await create_session(http, daemon, template="nested", version=1, end=50)
    assert session["version"] == 1
    await wait_status(http, daemon, session["id"], "completed")


SMALL_UPLOADS = {"SUMO_SUPERVISOR_MAX_UPLOAD_BYTES": "3000000"}


@pytest.fixture
async def daemon(daemons, db_url):
    # A small upload cap so "too large" is cheap to show.
    return await daemons.start(db_url, env=SMALL_UPLOADS)


@pytest.fixture(scope="module")
async def refusing(module_daemons):
    """One daemon for the tables of refused uploads and bad routes: a refusal stores nothing."""
    return await module_daemons.start_fresh(env=SMALL_UPLOADS)


def _files(scenario: Any, **changes: bytes | None) -> dict[str, bytes]:
    files = scenario.files()
    for path, data in changes.items():
        if data is None:
            files.pop(path)
        else:
            files[path] = data
    return files


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("bad_name", 400, "template name must match"),
        ("no_config_field", 400, "'config' is required"),
        ("dotdot_path", 422, "must not contain '..'"),
        ("encoded_dotdot_path", 422, "must not contain '..'"),
        ("absolute_path", 422, "must be a relative path"),
        ("config_missing", 422, "is not among the uploaded files"),
        ("referenced_file_missing", 422, "which is not in the upload"),
        ("reference_escapes", 422, "points outside the template"),
        ("absolute_reference", 422, "must be a relative path"),
        ("xml_entities", 422, "entities and DTDs are not allowed"),
        ("not_xml", 422, "not well-formed XML"),
        ("not_a_sumocfg", 422, "not a SUMO configuration"),
        ("output_escapes", 422, "points outside the template"),
        ("bad_gzip", 422, "not a valid gzip file"),
        ("corrupt_gzip", 422, "not a valid gzip file"),
        ("duplicate_file", 422, "appears twice"),
        ("too_large", 413, "larger than the limit"),
        ("not_multipart", 415, "multipart/form-data"),
    ],
)
async def test_bad_template_uploads(refusing, http, scenarios, case, status, message):
    daemon = refusing
    grid = scenarios["grid3"]
    cfg = grid.config
    form: Any
    if case == "bad_name":
        form = template_form("Bad Name!", grid)
    elif case == "no_config_field":
        form = aiohttp.FormData()
        form.add_field("name", "x")
        form.add_field("file", b"<x/>", filename="a.xml")
    elif case == "dotdot_path":
        form = template_form("x", grid, _files(grid, **{"../evil.xml": b"<x/>"}))
    elif case == "encoded_dotdot_path":
        files = _files(grid, **{"sub%2F..%2F..%2Fevil.xml": b"<x/>"})
        form = template_form("x", grid, files, quote=False)
    elif case == "absolute_path":
        form = template_form("x", grid, _files(grid, **{"/etc/evil.xml": b"<x/>"}))
    elif case == "config_missing":
        form = template_form("x", grid, _files(grid, **{cfg: None}))
    elif case == "referenced_file_missing":
        form = template_form("x", grid, _files(grid, **{"routes.rou.xml": None}))
    elif case == "reference_escapes":
        bad = grid.files()[cfg].replace(b'"routes.rou.xml"', b'"../../routes.rou.xml"')
        form = template_form("x", grid, _files(grid, **{cfg: bad}))
    elif case == "absolute_reference":
        bad = grid.files()[cfg].replace(b'"net.net.xml"', b'"/etc/passwd"')
        form = template_form("x", grid, _files(grid, **{cfg: bad}))
    elif case == "xml_entities":
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;">]><routes>&lol2;</routes>'
        )
        form = template_form("x", grid, _files(grid, **{"routes.rou.xml": bomb}))
    elif case == "not_xml":
        form = template_form("x", grid, _files(grid, **{"routes.rou.xml": b"<routes><oops"}))
    elif case == "not_a_sumocfg":
        form = template_form("x", grid, _files(grid, **{cfg: b"<routes/>"}))
    elif case == "output_escapes":
        add = b'<additional><inductionLoop id="d" lane="x_0" file="../../d.xml"/></additional>'
        form = template_form("x", grid, _files(grid, **{"extra.add.xml": add}))
    elif case == "bad_gzip":
        form = template_form("x", grid, _files(grid, **{"extra.add.xml.gz": b"not gzip"}))
    elif case == "corrupt_gzip":
        # A gzip header and a broken deflate stream: zlib's own error, not gzip's.
        good = gzip.compress(b"<additional/>" * 1000)
        corrupt = good[:12] + b"\xff" * 40 + good[52:]
        form = template_form("x", grid, _files(grid, **{"extra.add.xml.gz": corrupt}))
    elif case == "duplicate_file":
        form = template_form("x", grid)
        form.add_field("file", b"<x/>", filename="routes.rou.xml")
    elif case == "too_large":
        form = template_form("x", grid, _files(grid, **{"big.bin": b"\0" * 3_100_000}))
    else:
        async with http.post(f"{daemon.url}/v1/templates", json={"name": "x"}) as r:
            got_status, body = r.status, await r.json()
        assert (got_status, message in body["error"]) == (status, True), body
        return
    got_status, body = await post_template(http, daemon, form)
    assert got_status == status, body
    assert message in body["error"], body
    # Nothing was stored.
    async with http.get(f"{daemon.url}/v1/templates") as r:
        assert (await r.json())["templates"] == []


async def test_a_multipart_part_with_a_malformed_header_is_a_400(shared_grid3_daemon, http):
    """Found by the fuzzing (tests/test_fuzz.py): a part header aiohttp cannot parse was a 500."""
    boundary = "b0undary"
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="\xc3\x89\x1a\x02"\r\n\r\n{}\r\n'
        + f"--{boundary}--\r\n".encode()
    )
    async with http.post(
        f"{shared_grid3_daemon.url}/v1/templates",
        data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    ) as r:
        got = await r.json()
        assert r.status == 400, got
    assert "malformed" in got["error"], got


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "must be a JSON object"),
        (b'{"template": "grid3", "end": 1' + b"0" * 5000 + b"}", 400, "not valid JSON"),
        (b"[" * 100_000, 400, "not valid JSON"),
        (b'{"template": "grid3", "end": 1' + b"0" * 400 + b"}", 400, "end must be a number"),
        (b"{}", 400, "template is required"),
        (b'{"template": "nope"}', 404, "no template 'nope'"),
        (b'{"template": "grid3", "version": 9}', 404, "version 9"),
        (b'{"template": "grid3", "colour": "red"}', 400, "unknown field(s): colour"),
        (b'{"template": "grid3", "end": -5}', 400, "end must be a number"),
        (b'{"template": "grid3", "end": "soon"}', 400, "end must be a number"),
        (b'{"template": "grid3", "seed": 1.5}', 400, "seed must be an integer"),
        (b'{"template": "grid3", "sample_every": 0}', 400, "sample_every must be an integer"),
        (b'{"template": "grid3", "max_wall_s": true}', 400, "max_wall_s must be a number"),
        (b'{"template": "grid3", "label": "a b;rm"}', 400, "label must be"),
        (b'{"template": "grid3", "sumo_options": {"remote-port": 1}}', 400, "is not allowed"),
        (b'{"template": "grid3", "sumo_options": {"fcd-output": "/etc/x"}}', 400, "not allowed"),
        (b'{"template": "grid3", "sumo_options": {"scale": "many"}}', 400, "must be a number"),
        (b'{"template": "grid3", "sumo_options": ["scale"]}', 400, "must be an object"),
    ],
)
async def test_bad_session_requests(shared_grid3_daemon, http, body, status, message):
    daemon = shared_grid3_daemon
    async with http.post(
        f"{daemon.url}/v1/sessions", data=body, headers={"Content-Type": "application/json"}
    ) as r:
        got = await r.json()
        assert r.status == status, got
    assert message in got["error"], got
    async with http.get(f"{daemon.url}/v1/sessions") as r:
        assert (await r.json())["sessions"] == []


@pytest.mark.parametrize(
    ("method", "path", "status", "message"),
    [
        ("GET", "/v1/sessions/nope", 404, "no session 'nope'"),
        ("GET", "/v1/sessions/nope/samples", 404, "no session 'nope'"),
        ("GET", "/v1/sessions/nope/events", 404, "no session 'nope'"),
        ("POST", "/v1/sessions/nope/stop", 404, "no session 'nope'"),
        ("GET", "/v1/templates/nope", 404, "no template named 'nope'"),
        ("GET", "/v1/sessions?status=done", 400, "status must be one of"),
        ("GET", "/v1/sessions?limit=0", 400, "limit must be in"),
        ("GET", "/v1/sessions?limit=many", 400, "limit must be an integer"),
        ("GET", "/v1/sessions?before=A%20b", 400, "before must be a session id"),
        ("GET", "/v1/sessions?before=" + "x" * 82, 400, "before must be a session id"),
        ("GET", "/v2/anything", 404, "Not Found"),
        ("DELETE", "/v1/templates", 405, "Method Not Allowed"),
    ],
)
async def test_bad_routes_and_queries(refusing, http, method, path, status, message):
    daemon = refusing
    async with http.request(method, f"{daemon.url}{path}") as r:
        body = await r.json()
        assert r.status == status, body
    assert message in body["error"]


async def test_samples_after_and_session_filters(daemon, http, scenarios):
    await upload(http, daemon, "grid3", scenarios["grid3"])
    a = await create_session(http, daemon, template="grid3", end=100, label="exp-a")
    b = await create_session(http, daemon, template="grid3", end=100, label="exp-b")
    for s in (a, b):
        await wait_status(http, daemon, s["id"], "completed")
    async with http.get(f"{daemon.url}/v1/sessions", params={"label": "exp-a"}) as r:
        assert [s["id"] for s in (await r.json())["sessions"]] == [a["id"]]
    async with http.get(f"{daemon.url}/v1/sessions", params={"limit": "1"}) as r:
        assert [s["id"] for s in (await r.json())["sessions"]] == [b["id"]]  # newest first
    async with http.get(f"{daemon.url}/v1/sessions/{a['id']}/samples", params={"after": "50"}) as r:
        rows = (await r.json())["samples"]
    assert [row["sim_time"] for row in rows] == [60.0, 70.0, 80.0, 90.0, 100.0]
    async with http.get(f"{daemon.url}/healthz") as r:
        health = await r.json()
    assert health["status"] == "ok" and health["running"] == 0


async def test_json_bodies_are_read_whole_and_capped_as_they_stream(
    daemons, db_url, http, scenarios
):
    import asyncio
    import json
    from urllib.parse import urlsplit

    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    # A valid 50 KB body that arrives in two TCP segments: the second comes later.
    body = json.dumps({"template": "grid3", "end": 10, "label": "x" * 60, "pad": None}).encode()
    body = body[:-1] + b" " * 50_000 + b"}"
    parts = urlsplit(daemon.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = (
        f"POST /v1/sessions HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body[:1000])
    await writer.drain()
    await asyncio.sleep(0.2)  # not synchronisation: the gap that makes two segments
    writer.write(body[1000:])
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    # "pad" is not a field: a 400 naming it shows the body was read whole and parsed.
    assert b" 400 " in status_line, answer[:300]
    assert b"pad" in rest

    async def chunked():
        for _ in range(32):
            yield b" " * 65536

    async with http.post(
        f"{daemon.url}/v1/sessions", data=chunked(), headers={"Content-Type": "application/json"}
    ) as r:
        assert r.status == 413, await r.text()
        assert "larger than" in (await r.json())["error"]
