"""The session state machine: the whole transition table, on the in-memory store (no SUMO, no
PostgreSQL). The contract suite shows the PostgreSQL store refuses what this one does."""

from __future__ import annotations

import itertools

import pytest

from actors.lifecycle import (
    ACTIVE,
    FINAL,
    INITIAL,
    NOW,
    PREDECESSORS,
    TRANSITIONS,
    IllegalTransition,
    Status,
    requeue,
    transition,
)
from actors.memstore import MemStore
from actors.scenario import TemplateFile
from actors.store import NewSession

# A way into each status from INITIAL, by allowed transitions only.
PATHS = {
    Status.QUEUED: [],
    Status.STARTING: [Status.STARTING],
    Status.RUNNING: [Status.STARTING, Status.RUNNING],
    Status.COMPLETED: [Status.STARTING, Status.RUNNING, Status.COMPLETED],
    Status.FAILED: [Status.STARTING, Status.FAILED],
    Status.STOPPED: [Status.STOPPED],
    Status.TIMED_OUT: [Status.STARTING, Status.RUNNING, Status.TIMED_OUT],
}
_ids = itertools.count()


async def _session_in(store: MemStore, status: Status) -> str:
    session_id = f"s{next(_ids):04d}"
    if not await store.fetch_template_files("t", 1):
        store.add_template("t", "t.sumocfg", [TemplateFile("t.sumocfg", "0" * 64, b"<c/>")])
    await store.insert_sessions([NewSession(session_id, "t", 1, {}, None, None)])
    for step in PATHS[status]:
        await transition(store, session_id, step, f"to {step}")
    assert await store.get_status(session_id) == status
    return session_id


def test_the_table_names_every_status_and_its_shape_holds():
    assert set(TRANSITIONS) == set(Status) == set(PREDECESSORS)
    assert INITIAL == Status.QUEUED
    assert FINAL.isdisjoint(ACTIVE) and INITIAL not in FINAL | ACTIVE
    for status in FINAL:
        assert TRANSITIONS[status] == frozenset(), f"{status} is final but can be left"
    for status in Status:
        assert status not in TRANSITIONS[status], f"{status} -> itself"
    # Only a session that ran can complete.
    assert PREDECESSORS[Status.COMPLETED] == {Status.RUNNING}
    # What a restarted daemon does to a session it left active: rerun it or fail it.
    for status in ACTIVE:
        assert {Status.QUEUED, Status.FAILED} <= TRANSITIONS[status]


def test_every_status_is_reached_by_the_paths_used_below():
    for status, path in PATHS.items():
        here = INITIAL
        for step in path:
            assert step in TRANSITIONS[here]
            here = step
        assert here == status


@pytest.mark.parametrize(
    ("src", "to"),
    [(src, to) for src in Status for to in Status],
    ids=lambda s: str(s),
)
async def test_every_pair_of_statuses(src: Status, to: Status):
    """Every (from, to) pair: an allowed one is written with its event, any other raises
    IllegalTransition and writes nothing."""
    store = MemStore()
    session_id = await _session_in(store, src)
    before = store.events(session_id)
    if to in TRANSITIONS[src]:
        await transition(store, session_id, to, "because", ended_at=NOW)
        assert await store.get_status(session_id) == to
        assert store.events(session_id)[-1]["status"] == to
        assert store.events(session_id)[-1]["reason"] == "because"
        assert len(store.events(session_id)) == len(before) + 1
    else:
        with pytest.raises(IllegalTransition) as raised:
            await transition(store, session_id, to, "because", ended_at=NOW)
        assert raised.value.current == src and raised.value.to == to
        assert await store.get_status(session_id) == src
        assert store.events(session_id) == before
        assert (store.session(session_id) or {})["ended_at"] is None or src in FINAL


async def test_a_transition_of_an_unknown_session_is_illegal():
    with pytest.raises(IllegalTransition) as raised:
        await transition(MemStore(), "nope", Status.STARTING, "admitted")
    assert raised.value.current is None


async def test_only_known_fields_may_be_set():
    store = MemStore()
    session_id = await _session_in(store, Status.QUEUED)
    with pytest.raises(ValueError, match="status"):
        await transition(store, session_id, Status.STARTING, "admitted", status="running")
    assert await store.get_status(session_id) == Status.QUEUED


async def test_a_requeued_session_forgets_its_last_run():
    store = MemStore()
    session_id = await _session_in(store, Status.RUNNING)
    await store.set_process(session_id, 9000, 1234, 1.5)
    await requeue(store, session_id, 2, "daemon restarted: rerun, attempt 2 of 3")
    row = store.session(session_id)
    assert row is not None
    assert (row["status"], row["attempt"], row["port"], row["pid"]) == ("queued", 2, None, None)
    assert row["started_at"] is None and row["pid_started_at"] is None
    # A second requeue of a session that is queued already is not a transition.
    with pytest.raises(IllegalTransition):
        await requeue(store, session_id, 3, "again")
