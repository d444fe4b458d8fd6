"""Storage has bounds: templates and their versions can be deleted, template bytes have a quota,
and `GET /v1/storage` tells what each template and session takes."""

from __future__ import annotations

from typing import Any

import aiohttp

from tests.harness.http import ask, create_session, get_session, template_form, upload, wait_status


async def _ask(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any]:
    status, body, _headers = await ask(http, method, url, **kw)
    return status, body


async def test_delete_one_version(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    assert (await upload(http, daemon, "t", scenarios["long"]))["version"] == 1
    assert (await upload(http, daemon, "t", scenarios["grid3"]))["version"] == 2
    assert (await upload(http, daemon, "t", scenarios["grid3"]))["version"] == 3
    running = await create_session(http, daemon, template="t", version=1)
    await wait_status(http, daemon, running["id"], "running")
    done = await create_session(http, daemon, template="t", version=3, end=50)
    await wait_status(http, daemon, done["id"], "completed")
    base = f"{daemon.url}/v1/templates/t/versions"

    status, answer = await _ask(http, "DELETE", f"{base}/1")
    assert status == 409 and answer["active"] == 1, answer
    status, answer = await _ask(http, "DELETE", f"{base}/3")
    assert status == 409 and "?sessions=delete" in answer["error"], answer
    status, answer = await _ask(http, "DELETE", f"{base}/2")
    assert status == 200, answer
    assert answer == {
        "name": "t", "version": 2, "deleted": True, "sessions_deleted": 0,
        "template_deleted": False,
    }  # fmt: skip
    assert (await _ask(http, "DELETE", f"{base}/2"))[0] == 404
    assert (await _ask(http, "DELETE", f"{base}/x"))[0] == 404
    assert (await _ask(http, "DELETE", f"{daemon.url}/v1/templates/nope/versions/1"))[0] == 404
    status, answer = await _ask(http, "DELETE", f"{base}/3?sessions=delete")
    assert status == 200 and answer["sessions_deleted"] == 1, answer
    assert (await _ask(http, "GET", f"{daemon.url}/v1/sessions/{done['id']}"))[0] == 404
    status, template = await _ask(http, "GET", f"{daemon.url}/v1/templates/t")
    assert [v["version"] for v in template["versions"]] == [1]
    # A number once given is never given again while the template exists: a deleted version's
    # number named other content.
    assert (await upload(http, daemon, "t", scenarios["grid3"]))["version"] == 4
    assert (await _ask(http, "DELETE", f"{base}/4"))[0] == 200
    # The session on version 1 is untouched by all this; once it ends, the last version goes
    # and takes the template with it.
    assert (await get_session(http, daemon, running["id"]))["status"] == "running"
    assert (await _ask(http, "POST", f"{daemon.url}/v1/sessions/{running['id']}/stop"))[0] == 202
    await wait_status(http, daemon, running["id"], "stopped")
    status, answer = await _ask(http, "DELETE", f"{base}/1?sessions=delete")
    assert status == 200 and answer["template_deleted"] is True, answer
    assert (await _ask(http, "GET", f"{daemon.url}/v1/templates/t"))[0] == 404
    # A new upload of the name starts again.
    assert (await upload(http, daemon, "t", scenarios["grid3"]))["version"] == 1


async def test_template_bytes_quota(daemons, db_url, http, scenarios):
    size = sum(len(b) for b in scenarios["grid3"].files().values())
    daemon = await daemons.start(
        db_url, env={"SUMO_SUPERVISOR_MAX_TEMPLATE_BYTES": str(2 * size + size // 2)}
    )
    await upload(http, daemon, "a", scenarios["grid3"])
    await upload(http, daemon, "a", scenarios["grid3"])
    async with http.post(
        f"{daemon.url}/v1/templates", data=template_form("b", scenarios["grid3"])
    ) as r:
        answer = await r.json()
        assert r.status == 413, answer
    assert answer["quota"] == "max_template_bytes", answer
    assert "max_template_bytes" in answer["error"]
    assert answer["limit"] == 2 * size + size // 2 and answer["used"] == 2 * size
    assert (await _ask(http, "GET", f"{daemon.url}/v1/templates/b"))[0] == 404
    # Deleting makes room again.
    assert (await _ask(http, "DELETE", f"{daemon.url}/v1/templates/a/versions/1"))[0] == 200
    await upload(http, daemon, "b", scenarios["grid3"])


async def test_storage_report(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "g", scenarios["grid3"])
    await upload(http, daemon, "g", scenarios["grid3"])
    size = sum(len(b) for b in scenarios["grid3"].files().values())
    small = await create_session(http, daemon, template="g", end=50)
    big = await create_session(
        http, daemon, template="g", end=300, record=["trajectories", "trips"]
    )
    for s in (small, big):
        await wait_status(http, daemon, s["id"], "completed")

    status, report = await _ask(http, "GET", f"{daemon.url}/v1/storage")
    assert status == 200, report
    assert report["templates"] == [{"name": "g", "versions": 2, "bytes": 2 * size}]
    assert report["template_bytes"] == 2 * size
    assert report["sessions_total"] == 2
    by_id = {s["id"]: s for s in report["sessions"]}
    assert [s["id"] for s in report["sessions"]] == [big["id"], small["id"]]  # biggest first
    samples = len(await _samples(http, daemon, big["id"]))
    trips = (await _ask(http, "GET", f"{daemon.url}/v1/sessions/{big['id']}/trips.csv"))[1]
    trajectories = (
        await _ask(http, "GET", f"{daemon.url}/v1/sessions/{big['id']}/trajectories.csv")
    )[1]
    assert by_id[big["id"]]["rows"] == {
        "samples": samples,
        "trajectories": trajectories.count("\n") - 1,
        "trips": trips.count("\n") - 1,
        "edges": 0,
    }
    assert by_id[big["id"]]["bytes"] > by_id[small["id"]]["bytes"] > 0
    assert by_id[small["id"]]["template"] == "g" and by_id[small["id"]]["status"] == "completed"

    status, page = await _ask(http, "GET", f"{daemon.url}/v1/storage?limit=1&offset=1")
    assert status == 200 and [s["id"] for s in page["sessions"]] == [small["id"]], page
    assert page["sessions_total"] == 2
    status, page = await _ask(http, "GET", f"{daemon.url}/v1/storage?limit=1&order=created")
    assert [s["id"] for s in page["sessions"]] == [big["id"]], page
    assert (await _ask(http, "GET", f"{daemon.url}/v1/storage?limit=0"))[0] == 400
    assert (await _ask(http, "GET", f"{daemon.url}/v1/storage?order=name"))[0] == 400


async def _samples(http: aiohttp.ClientSession, daemon: Any, session_id: str) -> list[Any]:
    rows: list[Any] = []
    while True:
        after = f"?after={rows[-1]['sim_time']}" if rows else ""
        status, page = await _ask(
            http, "GET", f"{daemon.url}/v1/sessions/{session_id}/samples{after}"
        )
        assert status == 200
        if not page["samples"]:
            return rows
        rows += page["samples"]


async def test_session_row_quota(daemons, db_url, http, scenarios):
    """A session that would store more rows than max_session_rows (samples and recorded rows
    together) fails `row_quota` and keeps exactly the quota's worth; another session under the
    quota completes."""
    daemon = await daemons.start(db_url, env={"SUMO_SUPERVISOR_MAX_SESSION_ROWS": "150"})
    await upload(http, daemon, "g", scenarios["grid3"])
    over = await create_session(http, daemon, template="g", end=300, record=["trajectories"])
    under = await create_session(http, daemon, template="g", end=300, sample_every=100)
    ended = await wait_status(http, daemon, over["id"], "failed")
    assert ended["cause"] == "row_quota", ended
    assert "max_session_rows" in ended["error"], ended
    await wait_status(http, daemon, under["id"], "completed")
    _, report = await _ask(http, "GET", f"{daemon.url}/v1/storage")
    rows = {s["id"]: s["rows"] for s in report["sessions"]}
    # What went in before the quota ran out is kept (which of the two filled it is a race).
    assert 0 < sum(rows[over["id"]].values()) <= 150, rows
    assert rows[over["id"]]["trajectories"] > 0, rows
