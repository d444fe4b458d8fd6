"""What the API's requests do, under the HTTP layer: a handler parses its request into a typed
object, calls one function here, and turns the answer into JSON.

These functions own the domain side of a request: which template version a session runs, what
a replay inherits from its original, sessions and sweeps handed to the supervisor actor, the
control of running sessions, and the figures of summaries, comparisons and sweeps. They raise
the typed errors of `actors.errors` (mapped to HTTP in the API's one middleware), and reach the
supervisor actor only through its methods: the specs of new sessions are built here, never a
message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from actors.errors import (
    InvalidRequest,
    SessionConflict,
    SessionNotFound,
    SweepNotFound,
    TemplateNotFound,
)
from actors.messages import SessionSpec
from actors.request import Limits, SessionRequest, parse_session_request
from actors.supervisor import SupervisorActor, new_session_id
from supervisor import db, summary, sweeps

# ---- sessions and sweeps -----------------------------------------------------------------------


async def _template_version(pool: asyncpg.Pool, req: SessionRequest) -> dict[str, Any]:
    version = await db.resolve_template_version(pool, req.template, req.version)
    if version is None:
        which = f"{req.template!r}" + (f" version {req.version}" if req.version else "")
        raise TemplateNotFound(f"no template {which}", template=req.template, version=req.version)
    return version


def _new_spec(
    version: Mapping[str, Any], req: SessionRequest, sweep_id: str | None = None
) -> SessionSpec:
    return SessionSpec(
        id=new_session_id(),
        template_name=version["name"],
        template_version=version["version"],
        config_path=version["config_path"],
        request=req,
        sweep_id=sweep_id,
    )


async def _session(pool: asyncpg.Pool, session_id: str) -> dict[str, Any]:
    row = await db.get_session(pool, session_id)
    if row is None:
        raise SessionNotFound(f"no session {session_id!r}", session=session_id)
    return row


async def create_session(
    pool: asyncpg.Pool, supervisor: SupervisorActor, req: SessionRequest
) -> dict[str, Any]:
    """Queue a session of `req` (of the template version it names, else the latest); its row."""
    spec = _new_spec(await _template_version(pool, req), req)
    await supervisor.submit(spec)
    row = await db.get_session(pool, spec.id)
    assert row is not None
    return row


def replay_body(original: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """The request of a replay of `original` (a session's row): its original's request (same
    template version, seed and options, run by itself) with `changes` (the replay's body) on
    top."""
    base = {k: v for k, v in original["request"].items() if v is not None}
    base.update(mode="run", version=original["template_version"])
    return base | dict(changes)


def check_replayable(req: SessionRequest, history: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a replay whose options make a recorded command impossible: one recorded before
    the replay's `begin` (`history` is the original's commands, in order) could never be
    applied at its time."""
    begin = dict(req.sumo_options).get("begin")
    if history and begin is not None and begin > history[0]["sim_time"] + 1e-9:
        raise InvalidRequest(
            f"begin {begin} is after the replayed session's first command, applied at sim time "
            f"{history[0]['sim_time']}: a replay must begin at or before it",
            field="sumo_options",
        )


async def replay(
    pool: asyncpg.Pool, supervisor: SupervisorActor, limits: Limits, body: Mapping[str, Any]
) -> dict[str, Any]:
    """Queue a replay of the session `body["replay_of"]`: its commands are applied again at the
    same sim times. `body` changes what it may of the original's request. The new row."""
    original_id = body["replay_of"]
    original = await db.get_session(pool, original_id)
    if original is None:
        raise SessionNotFound(f"no session {original_id!r} to replay", field="replay_of")
    req = parse_session_request(replay_body(original, body), limits)
    check_replayable(req, await db.session_commands(pool, original_id))
    return await create_session(pool, supervisor, req)


@dataclass(frozen=True)
class NewSweep:
    id: str
    sessions: list[str]


async def create_sweep(
    pool: asyncpg.Pool, supervisor: SupervisorActor, sweep: sweeps.SweepRequest
) -> NewSweep:
    """Queue every run of `sweep`, all of one template version, together: all or none."""
    version = await _template_version(pool, sweep.runs[0][1])
    sweep_id = "sweep-" + new_session_id()
    specs = [_new_spec(version, req, sweep_id) for _params, req in sweep.runs]
    await supervisor.submit(*specs, sweep=(sweep_id, sweep.body))
    return NewSweep(sweep_id, [spec.id for spec in specs])


async def stop(supervisor: SupervisorActor, session_id: str) -> str:
    """Stop a queued or running session; the status it had when the stop was accepted."""
    return await supervisor.stop(session_id)


async def delete_session(pool: asyncpg.Pool, session_id: str) -> None:
    """Delete an ended session and all its rows."""
    row = await _session(pool, session_id)
    if row["status"] not in db.FINAL_STATUSES:
        raise SessionConflict(
            f"session {row['id']} is {row['status']}: stop it before deleting it",
            status=row["status"],
        )
    await db.delete_session(pool, row["id"])


async def delete_template(
    pool: asyncpg.Pool, name: str, version: int | None, *, with_sessions: bool
) -> db.Deleted:
    """Delete a template (`version` None) or one of its versions; their ended sessions too when
    `with_sessions`, else only when they have none."""
    what = repr(name) if version is None else f"version {version} of {name!r}"
    try:
        deleted = await db.delete_template(pool, name, version=version, with_sessions=with_sessions)
    except db.TemplateInUse as exc:
        if exc.active:
            message = f"{exc.active} sessions of {what} have not ended: stop them first"
        else:
            message = f"{exc.total} sessions use {what}: add ?sessions=delete to delete them too"
        raise SessionConflict(message, sessions=exc.total, active=exc.active) from None
    if deleted is None:
        raise TemplateNotFound(f"no template {what}", template=name)
    return deleted


# ---- control of a running session --------------------------------------------------------------


# No timeout of their own: the supervisor's methods bound the wait, and answer SessionConflict
# for a session that does not answer in time.


async def pause(supervisor: SupervisorActor, session_id: str) -> None:
    """Hold the session's SUMO still (no steps; its port and process are kept)."""
    await supervisor.pause(session_id)


async def resume(supervisor: SupervisorActor, session_id: str) -> None:
    await supervisor.resume(session_id)


async def step(supervisor: SupervisorActor, session_id: str, seconds: float) -> dict[str, Any]:
    """Advance a stepped session by exactly `seconds` of sim time; the sample it ends on."""
    return await supervisor.step(session_id, seconds)


async def apply_commands(
    supervisor: SupervisorActor, session_id: str, commands: list[dict[str, Any]]
) -> dict[str, Any]:
    """Apply `commands` (parsed by `traci_commands.parse`) together between two steps; the sim
    time they were applied at and each one's result."""
    return await supervisor.apply_commands(session_id, commands)


# ---- figures -----------------------------------------------------------------------------------


async def session_summary(pool: asyncpg.Pool, session_id: str) -> dict[str, Any]:
    row = await _session(pool, session_id)
    return summary.build(row, await db.session_summary(pool, row["id"]))


async def compare(pool: asyncpg.Pool, session_ids: Sequence[str]) -> dict[str, Any]:
    """The summaries of `session_ids` side by side, and their differences from the first: two
    queries, however many sessions."""
    rows = await db.get_sessions(pool, session_ids)
    for session_id in session_ids:
        if session_id not in rows:
            raise SessionNotFound(f"no session {session_id!r}", session=session_id)
    figures = await db.session_summaries(pool, session_ids)
    return summary.compare([summary.build(rows[i], figures[i]) for i in session_ids])


async def sweep_report(pool: asyncpg.Pool, sweep_id: str) -> dict[str, Any]:
    """A sweep's progress and its statistics across runs: at most three queries, however many
    runs."""
    sweep = await db.get_sweep(pool, sweep_id)
    if sweep is None:
        raise SweepNotFound(f"no sweep {sweep_id!r}", sweep=sweep_id)
    sessions = await db.sweep_sessions(pool, sweep_id)
    completed = [row for row in sessions if row["status"] == "completed"]
    figures = await db.session_summaries(pool, [row["id"] for row in completed])
    summaries = {row["id"]: summary.build(row, figures[row["id"]]) for row in completed}
    return sweeps.report(sweep, sessions, summaries)
