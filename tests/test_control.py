"""Controlling running sessions: pause/resume, stepped sessions, typed commands, replay."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from tests.harness.http import create_session, get_session, samples, upload, wait_status


async def post(http: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with http.post(url, json=body) as r:
        return r.status, await r.json()


async def run(
    http: aiohttp.ClientSession, daemon: Any, session_id: str, *cmds: dict[str, Any]
) -> Any:
    status, body = await post(
        http, f"{daemon.url}/v1/sessions/{session_id}/commands", {"commands": list(cmds)}
    )
    assert status == 200, body
    return body


async def test_pause_holds_sumo_still_and_resume_continues(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", sample_every=10)
    await wait_status(http, daemon, s["id"], "running")
    status, _ = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/pause")
    assert status == 200
    held = len(await samples(http, daemon, s["id"]))
    # A window to see that nothing moves (a measurement, not a synchronisation).
    await asyncio.sleep(1.0)
    assert len(await samples(http, daemon, s["id"])) == held
    paused = await get_session(http, daemon, s["id"])
    assert paused["status"] == "running" and paused["pid"] is not None  # keeps port and process
    status, _ = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/resume")
    assert status == 200
    deadline = time.monotonic() + 30
    while len(await samples(http, daemon, s["id"])) <= held:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_stepped_session_advances_exactly_and_idles_out(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    s = await create_session(
        http, daemon, template="grid4", seed=7, mode="stepped", idle_timeout_s=2
    )
    await wait_status(http, daemon, s["id"], "running")
    times = []
    for seconds in (10, 25, 1, 64):
        status, body = await post(
            http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": seconds}
        )
        assert status == 200, body
        times.append(body["sample"]["sim_time"])
    assert times == [10.0, 35.0, 36.0, 100.0]
    assert [r["sim_time"] for r in await samples(http, daemon, s["id"])] == times
    # Nobody steps it any more: it ends after its idle timeout.
    ended = await wait_status(http, daemon, s["id"], {"timed_out", "completed", "failed"})
    assert (ended["status"], ended["cause"]) == ("timed_out", "idle_timeout")
    # A session that runs by itself cannot be stepped.
    free = await create_session(http, daemon, template="grid4", seed=7)
    await wait_status(http, daemon, free["id"], {"running", "completed"})
    status, body = await post(http, f"{daemon.url}/v1/sessions/{free['id']}/step", {"seconds": 5})
    assert status == 409


async def test_a_pause_stops_the_wall_clock_and_steps(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid4", scenarios["grid4"])
    s = await create_session(
        http, daemon, template="grid4", mode="stepped", idle_timeout_s=120, max_wall_s=6,
        pause_counts=False,
    )  # fmt: skip
    await wait_status(http, daemon, s["id"], "running")
    running_at = time.monotonic()
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/pause")
    assert status == 200, body
    # Paused, SUMO is held still: a step would run it with its wall clock stopped.
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": 5})
    assert status == 409 and "paused" in body["error"], body
    # Held past its max_wall_s (a window to see that nothing ends it, not a synchronisation).
    while time.monotonic() < running_at + 8:
        assert (await get_session(http, daemon, s["id"]))["status"] == "running"
        await asyncio.sleep(0.25)
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/resume")
    assert status == 200, body
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": 5})
    assert status == 200 and body["sample"]["sim_time"] == 5.0, body
    # Resumed, its clock runs again: it ends on max_wall_s, not on its idle timeout.
    ended = await wait_status(http, daemon, s["id"], {"timed_out", "completed", "failed"})
    assert (ended["status"], ended["cause"]) == ("timed_out", "timeout"), ended


async def test_commands_change_what_sumo_reports(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", mode="stepped", idle_timeout_s=60)
    await wait_status(http, daemon, s["id"], "running")
    step = f"{daemon.url}/v1/sessions/{s['id']}/step"
    await post(http, step, {"seconds": 30})
    net = (await run(http, daemon, s["id"], {"type": "network"}))["results"][0]["value"]
    tls, edge = net["traffic_lights"][0], "B1C1"
    assert edge in net["edges"] and f"{edge}_0" in net["lanes"] and net["junctions"]

    answer = await run(
        http,
        daemon,
        s["id"],
        {"type": "tls.set_phase", "id": tls, "phase": 2},
        {"type": "get", "domain": "tls", "id": tls, "var": "phase"},
        {"type": "edge.close", "id": edge},
        {"type": "vehicle.add", "id": "probe", "edges": ["A0B0", "B0C0"]},
        {"type": "edge.set_max_speed", "id": "A0B0", "speed": 5.0},
    )
    assert answer["sim_time"] == 30.0
    results = answer["results"]
    assert all(r["ok"] for r in results), results
    assert results[1]["value"] == 2  # the phase set is read back
    # Inserted as soon as there is room on its first edge: step until it is in the network.
    for _ in range(120):
        await post(http, step, {"seconds": 1})
        status, _ = await post(
            http,
            f"{daemon.url}/v1/sessions/{s['id']}/commands",
            {"commands": [{"type": "get", "domain": "vehicle", "id": "probe", "var": "road"}]},
        )
        if status == 200:
            break
    probe = await run(
        http,
        daemon,
        s["id"],
        {"type": "get", "domain": "vehicle", "id": "probe", "var": "road"},
        {"type": "vehicle.set_max_speed", "id": "probe", "speed": 3.0},
        {"type": "get", "domain": "vehicle", "id": "probe", "var": "max_speed"},
        {"type": "get", "domain": "lane", "id": f"{edge}_0", "var": "allowed"},
    )
    values = [r["value"] for r in probe["results"]]
    assert values[0] in ("A0B0", "B0C0") or values[0].startswith(":")
    assert values[2] == 3.0
    assert values[3] == ["authority"]
    await run(http, daemon, s["id"], {"type": "vehicle.remove", "id": "probe"})
    status, body = await post(
        http,
        f"{daemon.url}/v1/sessions/{s['id']}/commands",
        {"commands": [{"type": "get", "domain": "vehicle", "id": "probe", "var": "speed"}]},
    )
    assert status == 404 and "'probe'" in body["error"]
    # Vehicles already on the closed edge leave it; no new one enters.
    await post(http, step, {"seconds": 120})
    for _ in range(10):
        await post(http, step, {"seconds": 10})
        count = await run(
            http,
            daemon,
            s["id"],
            {"type": "get", "domain": "edge", "id": edge, "var": "vehicle_count"},
        )
        assert count["results"][0]["value"] == 0
    # The history holds what changed the simulation, with when.
    async with http.get(f"{daemon.url}/v1/sessions/{s['id']}/commands") as r:
        history = (await r.json())["commands"]
    assert [h["command"]["type"] for h in history] == [
        "tls.set_phase", "edge.close", "vehicle.add", "edge.set_max_speed",
        "vehicle.set_max_speed", "vehicle.remove",
    ]  # fmt: skip
    assert history[0]["sim_time"] == 30.0


async def test_reopened_edge_gets_back_the_classes_each_lane_allowed(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "sidewalks", scenarios["sidewalks"])
    s = await create_session(http, daemon, template="sidewalks", mode="stepped", idle_timeout_s=60)
    await wait_status(http, daemon, s["id"], "running")
    net = (await run(http, daemon, s["id"], {"type": "network"}))["results"][0]["value"]
    edge, other = net["edges"][0], net["edges"][1]

    async def allowed(edge: str) -> list[list[str]]:
        lanes = [lane for lane in net["lanes"] if lane.rsplit("_", 1)[0] == edge]
        gets = [{"type": "get", "domain": "lane", "id": lane, "var": "allowed"} for lane in lanes]
        return [r["value"] for r in (await run(http, daemon, s["id"], *gets))["results"]]

    before, other_before = await allowed(edge), await allowed(other)
    assert before[0] == ["pedestrian"] and len(before) == 2  # a sidewalk and a road lane
    assert "passenger" in before[1]
    await run(http, daemon, s["id"], {"type": "edge.close", "id": edge})
    await run(http, daemon, s["id"], {"type": "edge.close", "id": edge})  # twice: still closed
    assert await allowed(edge) == [["authority"], ["authority"]]
    await run(
        http,
        daemon,
        s["id"],
        {"type": "edge.reopen", "id": edge},
        {"type": "edge.reopen", "id": other},  # never closed: left as it is
    )
    assert await allowed(edge) == before
    assert await allowed(other) == other_before


async def test_invalid_commands_are_refused_and_session_runs_on(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", mode="stepped", idle_timeout_s=60)
    await wait_status(http, daemon, s["id"], "running")
    url = f"{daemon.url}/v1/sessions/{s['id']}/commands"
    cases = [
        ({"commands": [{"type": "tls.set_phase", "id": "nope", "phase": 1}]}, 404, "'nope'"),
        ({"commands": [{"type": "vehicle.set_speed", "id": "ghost", "speed": 3}]}, 404, "'ghost'"),
        ({"commands": [{"type": "edge.close", "id": "no_edge"}]}, 404, "'no_edge'"),
        ({"commands": [{"type": "os.system", "id": "x"}]}, 400, "type must be one of"),
        ({"commands": [{"type": "vehicle.set_speed", "id": "v", "speed": "fast"}]}, 400, "bad 'speed'"),
        ({"commands": [{"type": "get", "domain": "vehicle", "id": "v", "var": "__dict__"}]}, 400, "cannot get"),
        ({"commands": [{"type": "tls.set_phase", "id": "x"}]}, 400, "'phase' is required"),
        ({"commands": [{"type": "tls.set_phase", "id": "x", "phase": 2**40}]}, 400, "bad 'phase'"),
        ({"commands": [{"type": "edge.set_max_speed", "id": "x", "speed": 10**400}]}, 400, "bad 'speed'"),
        ({"commands": []}, 400, "at least one command"),
        ({"commands": [{"type": "network", "extra": 1}]}, 400, "unknown field"),
    ]  # fmt: skip
    for body, status, message in cases:
        got_status, got = await post(http, url, body)
        assert got_status == status, (body, got)
        assert message in got["error"], (body, got)
    # A batch with one unknown id applies nothing.
    net = (await run(http, daemon, s["id"], {"type": "network"}))["results"][0]["value"]
    tls = net["traffic_lights"][0]
    got_status, _ = await post(
        http,
        url,
        {
            "commands": [
                {"type": "tls.set_phase", "id": tls, "phase": 2},
                {"type": "edge.close", "id": "zz"},
            ]
        },
    )
    assert got_status == 404
    async with http.get(f"{daemon.url}/v1/sessions/{s['id']}/commands") as r:
        assert (await r.json())["commands"] == []
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": 10})
    assert status == 200 and body["sample"]["sim_time"] == 10.0
    # Control of sessions that are not running.
    status, body = await post(http, f"{daemon.url}/v1/sessions/nope/pause")
    assert status == 404
    status, body = await post(http, f"{daemon.url}/v1/sessions/{s['id']}/step", {"seconds": -1})
    assert status == 400


async def test_replay_gives_the_same_samples(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "long", scenarios["long"])
    scale = {"scale": 0.5}  # SUMO options are replayed as well
    original = await create_session(
        http, daemon, template="long", seed=7, mode="stepped", idle_timeout_s=60,
        sample_every=10, sumo_options=scale,
    )  # fmt: skip
    await wait_status(http, daemon, original["id"], "running")
    step = f"{daemon.url}/v1/sessions/{original['id']}/step"
    for _ in range(10):
        await post(http, step, {"seconds": 10})
    net = (await run(http, daemon, original["id"], {"type": "network"}))["results"][0]["value"]
    await run(
        http,
        daemon,
        original["id"],
        {"type": "edge.close", "id": "B1C1"},
        {"type": "tls.set_phase", "id": net["traffic_lights"][0], "phase": 1},
        {"type": "edge.set_max_speed", "id": "A1B1", "speed": 4.0},
    )
    for _ in range(30):
        await post(http, step, {"seconds": 10})
    await post(http, f"{daemon.url}/v1/sessions/{original['id']}/stop")
    await wait_status(http, daemon, original["id"], "stopped")
    first = await samples(http, daemon, original["id"])
    assert first[-1]["sim_time"] == 400.0

    replay = await create_session(http, daemon, replay_of=original["id"], end=400)
    assert replay["template"] == "long" and replay["request"]["seed"] == 7
    assert replay["request"]["sumo_options"] == scale
    await wait_status(http, daemon, replay["id"], "completed")
    assert await samples(http, daemon, replay["id"]) == first
    # Without the commands the run differs: the replay really applied them.
    plain = await create_session(http, daemon, template="long", seed=7, end=400, sumo_options=scale)
    await wait_status(http, daemon, plain["id"], "completed")
    assert await samples(http, daemon, plain["id"]) != first
