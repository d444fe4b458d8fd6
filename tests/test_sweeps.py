"""Sweeps: one session per seed and parameter combination, statistics across the runs."""

from __future__ import annotations

import asyncio
import math
import statistics
import time

import pytest
from scipy import stats as st

from actors.request import SUMO_OPTIONS
from supervisor import db
from supervisor.sweeps import VARIABLE_FIELDS
from tests.harness.http import create_session, upload, wait_status

BIG_VARY = sorted([*VARIABLE_FIELDS, *SUMO_OPTIONS])[:24]


async def wait_sweep(http, daemon, sweep_id, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        async with http.get(f"{daemon.url}/v1/sweeps/{sweep_id}") as r:
            body = await r.json()
            assert r.status == 200, body
        if body["done"]:
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_sweep_of_ten_seeds(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=4)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    async with http.post(
        f"{daemon.url}/v1/sweeps", json={"template": "grid3", "runs": 10, "end": 200}
    ) as r:
        created = await r.json()
        assert r.status == 201, created
    assert created["count"] == 10
    sweep = await wait_sweep(http, daemon, created["id"])
    assert sweep["by_status"] == {"completed": 10} and sweep["progress"] == 1.0
    assert sorted(s["seed"] for s in sweep["sessions"]) == list(range(1, 11))
    (group,) = sweep["groups"]
    assert group["completed"] == 10
    arrived = []
    for s in sweep["sessions"]:
        async with http.get(f"{daemon.url}/v1/sessions/{s['id']}/summary") as r:
            arrived.append((await r.json())["arrived"])
    figure = group["figures"]["arrived"]
    assert figure["n"] == 10
    assert math.isclose(figure["mean"], statistics.fmean(arrived))
    assert math.isclose(figure["std"], statistics.stdev(arrived))
    half = st.t.ppf(0.975, 9) * statistics.stdev(arrived) / math.sqrt(10)
    assert math.isclose(figure["ci95"][0], figure["mean"] - half)
    assert math.isclose(figure["ci95"][1], figure["mean"] + half)
    assert len(set(arrived)) > 1  # different seeds really gave different runs


async def test_sweep_varies_parameters(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=4)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    body = {"template": "grid3", "seeds": [1, 2], "vary": {"scale": [0.5, 1.5]}, "end": 150}
    async with http.post(f"{daemon.url}/v1/sweeps", json=body) as r:
        created = await r.json()
        assert r.status == 201, created
    sweep = await wait_sweep(http, daemon, created["id"])
    assert sweep["total"] == 4
    groups = {g["params"]["scale"]: g for g in sweep["groups"]}
    assert set(groups) == {0.5, 1.5}
    low, high = (groups[k]["figures"]["inserted"]["mean"] for k in (0.5, 1.5))
    assert high > low  # scaling the demand up inserts more vehicles


async def test_a_sweep_is_queued_whole_or_not_at_all(daemons, db_url, http, scenarios):
    # One slot, held by a stepped session: every sweep session stays in the queue (4 places).
    daemon = await daemons.start(db_url, max_running=1, env={"SUMO_SUPERVISOR_MAX_QUEUED": "4"})
    await upload(http, daemon, "grid3", scenarios["grid3"])
    holder = await create_session(http, daemon, template="grid3", mode="stepped")
    await wait_status(http, daemon, holder["id"], "running")

    async def sweep() -> tuple[int, dict]:
        body = {"template": "grid3", "runs": 3, "end": 100}
        async with http.post(f"{daemon.url}/v1/sweeps", json=body) as r:
            return r.status, await r.json()

    # Two at once: there is room for one of them only, and nothing of the other may stay behind.
    answers = await asyncio.gather(sweep(), sweep())
    assert sorted(status for status, _ in answers) == [201, 503], answers
    refused = next(body for status, body in answers if status == 503)
    assert "queue is full" in refused["error"]
    async with http.get(f"{daemon.url}/v1/sessions", params={"status": "queued"}) as r:
        queued = (await r.json())["sessions"]
    accepted = next(body for status, body in answers if status == 201)
    assert sorted(s["id"] for s in queued) == sorted(accepted["sessions"])
    pool = await db.create_pool(db_url)
    try:
        assert await pool.fetchval("SELECT count(*) FROM sweeps") == 1
    finally:
        await pool.close()


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"template": "grid3"}, 400, "either 'seeds'"),
        ({"template": "grid3", "runs": 2, "seeds": [1]}, 400, "either 'seeds'"),
        ({"template": "grid3", "runs": 0}, 400, "runs must be"),
        ({"template": "grid3", "seeds": [1, 1]}, 400, "distinct"),
        ({"template": "grid3", "runs": 2, "seed": 3}, 400, "sets 'seed' itself"),
        ({"template": "grid3", "runs": 2, "vary": {"remote-port": [1]}}, 400, "cannot vary"),
        ({"template": "grid3", "runs": 2, "vary": {"scale": []}}, 400, "non-empty lists"),
        ({"template": "grid3", "runs": 2, "vary": {"scale": ["big"]}}, 400, "must be a number"),
        ({"template": "grid3", "runs": 600, "vary": {"scale": [1, 2]}}, 400, "at most 1000"),
        # 2**24 combinations: refused before any is built.
        ({"template": "grid3", "runs": 1, "vary": {o: [1, 2] for o in BIG_VARY}}, 400, "at most"),
        ({"template": "nope", "runs": 2}, 404, "no template 'nope'"),
    ],
)
async def test_bad_sweeps(shared_grid3_daemon, http, body, status, message):
    daemon = shared_grid3_daemon
    async with http.post(f"{daemon.url}/v1/sweeps", json=body) as r:
        got = await r.json()
        assert r.status == status, got
    assert message in got["error"]
    async with http.get(f"{daemon.url}/v1/sessions") as r:
        assert (await r.json())["sessions"] == []
    async with http.get(f"{daemon.url}/v1/sweeps/sweep-nope") as r:
        assert r.status == 404
