"""A session survives anything sent to it, and no session holds a run slot forever: text
PostgreSQL or SUMO cannot take is refused before anything is applied, a command's error stays
with the command, and every time limit has a daemon-wide default, a maximum and its own cause."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import aiohttp
import psutil

from tests.harness.http import create_session, get_session, upload, wait_status

# Text PostgreSQL cannot store (NUL in text and jsonb) or that is no UTF-8 at all (a lone
# surrogate, which Python's json accepts from "\ud800").
BAD_TEXT = ["a\x00b", "a\ud800b"]


async def post_raw(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    """POST JSON as Python's json writes it (a lone surrogate becomes the escape "\\ud800")."""
    import json

    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=data, headers=headers) as r:
        return r.status, await r.json()


async def test_bad_text_in_commands_is_refused_and_the_session_lives(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", mode="stepped", idle_timeout_s=60)
    await wait_status(http, daemon, s["id"], "running")
    commands = f"{daemon.url}/v1/sessions/{s['id']}/commands"
    net = (await post_raw(http, commands, {"commands": [{"type": "network"}]}))[1]
    tls = net["results"][0]["value"]["traffic_lights"][0]
    for text in BAD_TEXT:
        for command in (
            {"type": "tls.set_program", "id": tls, "program": text},
            {"type": "vehicle.add", "id": text, "edges": ["A0B0"]},
            {"type": "get", "domain": "tls", "id": tls, "var": text},
        ):
            # A hang bound, not a timing: the old daemon held such a request for 120 s.
            status, body = await asyncio.wait_for(
                post_raw(http, commands, {"commands": [command]}), 60
            )
            assert status == 400, (command, body)
    # NaN and Infinity are no JSON (Python's json takes them; jsonb does not).
    for number in ("NaN", "Infinity", "-Infinity"):
        raw = f'{{"commands": [{{"type": "tls.set_phase_duration", "id": "{tls}", "seconds": {number}}}]}}'
        async with http.post(commands, data=raw, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 400, await r.text()
    # Nothing was applied, nothing stored, and the session still answers.
    async with http.get(commands) as r:
        assert (await r.json())["commands"] == []
    status, body = await post_raw(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": 10})
    assert status == 200, body
    assert (await get_session(http, daemon, s["id"]))["status"] == "running"


async def test_bad_text_in_session_and_sweep_requests_is_refused(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    for text in BAD_TEXT:
        for body in (
            {"template": text},
            {"template": "grid3", "label": text},
            {"template": "grid3", "replay_of": text},
            {"template": "grid3", "sumo_options": {"collision.action": text}},
            {"template": "grid3", "sumo_options": {text: 1}},
            {"template": "grid3", text: 1},
        ):
            status, answer = await post_raw(http, f"{daemon.url}/v1/sessions", body)
            assert status == 400, (body, answer)
        for body in (
            {"template": text, "runs": 2},
            {"template": "grid3", "runs": 2, "label": text},
            {"template": "grid3", "runs": 2, "vary": {"scale": [1, text]}},
        ):
            status, answer = await post_raw(http, f"{daemon.url}/v1/sweeps", body)
            assert status == 400, (body, answer)
    async with http.get(f"{daemon.url}/v1/sessions") as r:
        assert (await r.json())["sessions"] == []


async def test_nul_in_a_url_is_a_400(daemons, db_url, http):
    daemon = await daemons.start(db_url)
    for path in (
        "/v1/sessions/%00",
        "/v1/sessions/a%00b/samples",
        "/v1/sessions?label=%00",
        "/v1/sessions?status=%00",
        "/v1/templates/%00",
        "/v1/sessions/x/samples.csv?after=%00",
    ):
        async with http.get(f"{daemon.url}{path}") as r:
            assert r.status == 400, (path, r.status, await r.text())
            assert "NUL" in (await r.json())["error"]
    # A lone surrogate, UTF-8 encoded, cannot be decoded: it stays text the database takes.
    async with http.get(f"{daemon.url}/v1/sessions/%ED%A0%80") as r:
        assert r.status == 404


async def test_a_session_that_dies_mid_step_answers_the_step_at_once(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", mode="stepped", idle_timeout_s=60)
    running = await wait_status(http, daemon, s["id"], "running")
    sumo = psutil.Process(running["pid"])
    before = sum(sumo.cpu_times()[:2])
    # A step of a very long time; SUMO dies while it is being taken.
    step = asyncio.ensure_future(
        post_raw(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": 900_000})
    )
    deadline = time.monotonic() + 30
    while sum(sumo.cpu_times()[:2]) < before + 0.2:  # the step is under way
        assert time.monotonic() < deadline and not step.done()
        await asyncio.sleep(0.02)
    os.kill(running["pid"], signal.SIGKILL)
    # A hang bound, not a timing: the old daemon answered only at its 120 s control timeout.
    status, body = await asyncio.wait_for(step, 60)
    assert status == 409, body
    ended = await wait_status(http, daemon, s["id"], {"failed"})
    assert ended["cause"] == "sumo_exited", ended


async def test_a_replayed_command_that_fails_fails_alone(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    original = await create_session(
        http, daemon, template="long", seed=7, mode="stepped", idle_timeout_s=60
    )
    await wait_status(http, daemon, original["id"], "running")
    step = f"{daemon.url}/v1/sessions/{original['id']}/step"
    commands = f"{daemon.url}/v1/sessions/{original['id']}/commands"
    vehicle = None
    for _ in range(60):
        await post_raw(http, step, {"seconds": 5})
        # The first vehicle of the first flow, once it is in: set its speed.
        command = {"type": "vehicle.set_speed", "id": "0.0", "speed": 1.0}
        status, _ = await post_raw(http, commands, {"commands": [command]})
        if status == 200:
            vehicle = "0.0"
            break
    assert vehicle is not None
    await post_raw(http, f"{daemon.url}/v1/sessions/{original['id']}/stop", None)
    await wait_status(http, daemon, original["id"], "stopped")
    # Without its vehicles (scale 0) the replay cannot set that vehicle's speed: the command
    # fails, the session runs on to its end.
    replay = await create_session(
        http, daemon, replay_of=original["id"], end=200, sumo_options={"scale": 0}
    )
    ended = await wait_status(http, daemon, replay["id"], {"completed", "failed"})
    assert ended["status"] == "completed", ended
    # Only what was applied is stored as the replay's own commands.
    async with http.get(f"{daemon.url}/v1/sessions/{replay['id']}/commands") as r:
        assert (await r.json())["commands"] == []


async def test_a_replay_that_cannot_apply_its_commands_is_refused(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    original = await create_session(
        http, daemon, template="long", seed=7, mode="stepped", idle_timeout_s=60
    )
    await wait_status(http, daemon, original["id"], "running")
    await post_raw(http, f"{daemon.url}/v1/sessions/{original['id']}/step", {"seconds": 30})
    status, body = await post_raw(
        http,
        f"{daemon.url}/v1/sessions/{original['id']}/commands",
        {"commands": [{"type": "edge.close", "id": "A0B0"}]},
    )
    assert status == 200, body
    status, body = await post_raw(
        http,
        f"{daemon.url}/v1/sessions",
        {"replay_of": original["id"], "sumo_options": {"begin": 100}},
    )
    assert status == 400, body
    assert "begin" in body["error"] and "30" in body["error"]
    # Beginning at or before the command is fine.
    replay = await create_session(
        http, daemon, replay_of=original["id"], end=60, sumo_options={"begin": 30}
    )
    await wait_status(http, daemon, replay["id"], "completed")


# ---- limits ----------------------------------------------------------------------------------


async def test_limits_are_settings_and_a_request_past_one_is_refused(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(
        db_url,
        env={
            "SUMO_SUPERVISOR_MAX_WALL_S_LIMIT": "100",
            "SUMO_SUPERVISOR_MAX_PAUSE_S": "50",
            "SUMO_SUPERVISOR_IDLE_TIMEOUT_S_LIMIT": "60",
            "SUMO_SUPERVISOR_TRAJECTORY_PERIOD_MIN": "0.5",
            "SUMO_SUPERVISOR_SCALE_LIMIT": "4",
            "SUMO_SUPERVISOR_END_LIMIT": "10000",
        },
    )
    await upload(http, daemon, "grid3", scenarios["grid3"])
    for body, setting in (
        ({"max_wall_s": 101}, "max_wall_s_limit"),
        ({"max_pause_s": 51}, "max_pause_s"),
        ({"mode": "stepped", "idle_timeout_s": 61}, "idle_timeout_s_limit"),
        ({"trajectory_period": 0.25, "record": ["trajectories"]}, "trajectory_period_min"),
        ({"sumo_options": {"scale": 5}}, "scale_limit"),
        ({"end": 10001}, "end_limit"),
    ):
        status, answer = await post_raw(
            http, f"{daemon.url}/v1/sessions", {"template": "grid3", **body}
        )
        assert status == 400, (body, answer)
        assert setting in answer["error"], answer
        status, answer = await post_raw(
            http, f"{daemon.url}/v1/sweeps", {"template": "grid3", "runs": 2, **body}
        )
        assert status == 400, (body, answer)
    s = await create_session(
        http, daemon, template="grid3", max_wall_s=100, max_pause_s=50, end=100,
        sumo_options={"scale": 4}, trajectory_period=0.5,
    )  # fmt: skip
    await wait_status(http, daemon, s["id"], "completed")


async def test_a_scenario_without_an_end_stops_at_end_limit(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, env={"SUMO_SUPERVISOR_END_LIMIT": "120"})
    await upload(http, daemon, "long", scenarios["long"])  # its config ends at 1e6 s
    s = await create_session(http, daemon, template="long")
    ended = await wait_status(http, daemon, s["id"], "completed", timeout=60)
    assert ended["sim_time"] == 120.0 and ended["end"] == 120.0, ended


async def test_a_forgotten_session_ends_by_the_daemon_wide_default_wall_time(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url, env={"SUMO_SUPERVISOR_MAX_WALL_S_DEFAULT": "2"})
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long")
    ended = await wait_status(http, daemon, s["id"], {"timed_out"}, timeout=60)
    assert ended["cause"] == "timeout"


async def test_a_forgotten_pause_ends_and_frees_the_slot(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=1, env={"SUMO_SUPERVISOR_MAX_PAUSE_S": "2"})
    await upload(http, daemon, "long", scenarios["long"])
    await upload(http, daemon, "grid3", scenarios["grid3"])
    # pause_counts false: only max_pause_s can end it.
    held = await create_session(http, daemon, template="long", pause_counts=False)
    await wait_status(http, daemon, held["id"], "running")
    status, body = await post_raw(http, f"{daemon.url}/v1/sessions/{held['id']}/pause", None)
    assert status == 200, body
    waiting = await create_session(http, daemon, template="grid3")
    ended = await wait_status(http, daemon, held["id"], {"timed_out"}, timeout=60)
    assert ended["cause"] == "pause_timeout", ended
    await wait_status(http, daemon, waiting["id"], "completed")
    # A session may ask for less than the daemon's maximum.
    mine = await create_session(http, daemon, template="long", max_pause_s=0.5)
    await wait_status(http, daemon, mine["id"], "running")
    await post_raw(http, f"{daemon.url}/v1/sessions/{mine['id']}/pause", None)
    ended = await wait_status(http, daemon, mine["id"], {"timed_out"}, timeout=30)
    assert ended["cause"] == "pause_timeout", ended
