"""Compare and sweeps read every session's figures in one query: against a real daemon, their
answers are each session's own summary (read by its one-session query), whatever the session
went through."""

from __future__ import annotations

import asyncpg

from tests.harness.http import ask, create_session, upload, wait_status


async def test_compare_answers_each_sessions_own_summary(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=1)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    # SUMO's statistics and recorded trips; SUMO's statistics only, from a later begin.
    full = await create_session(http, daemon, template="grid3", end=200, seed=3, record=["trips"])
    late = await create_session(
        http, daemon, template="grid3", end=150, seed=4, sumo_options={"begin": 20}
    )
    for s in (full, late):
        await wait_status(http, daemon, s["id"], "completed")
    # Stopped while running (part of a run), and while queued (no rows at all).
    held = await create_session(http, daemon, template="grid3", mode="stepped", record=["trips"])
    await wait_status(http, daemon, held["id"], "running")
    status, _, _ = await ask(
        http, "POST", f"{daemon.url}/v1/sessions/{held['id']}/step", json={"seconds": 60}
    )
    assert status == 200
    queued = await create_session(http, daemon, template="grid3")
    for s in (queued, held):
        status, _, _ = await ask(http, "POST", f"{daemon.url}/v1/sessions/{s['id']}/stop")
        assert status == 202
        await wait_status(http, daemon, s["id"], "stopped")

    # As a session that ended before SUMO's statistics were kept: the figures of its own rows.
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("DELETE FROM session_statistics WHERE session_id = $1", held["id"])
    finally:
        await conn.close()

    ids = [full["id"], late["id"], held["id"], queued["id"], full["id"]]
    summaries = []
    for session_id in ids:
        status, body, _ = await ask(http, "GET", f"{daemon.url}/v1/sessions/{session_id}/summary")
        assert status == 200
        summaries.append(body)
    assert [s["source"] for s in summaries[:4]] == [
        "sumo_statistics", "sumo_statistics", "recorded", "recorded",
    ]  # fmt: skip
    status, compared, _ = await ask(
        http, "GET", f"{daemon.url}/v1/compare?sessions={','.join(ids)}"
    )
    assert status == 200
    assert compared["sessions"] == summaries
    assert [d["id"] for d in compared["differences"]] == ids[1:]
    assert compared["differences"][-1]["arrived"] == 0
