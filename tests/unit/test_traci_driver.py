"""Where a running session's jumps go: step targets, their size, and when the run is over."""

from __future__ import annotations

from typing import Any

import pytest

from actors.summary import MAX_STEPS_UNREAD
from actors.traci_driver import JUMP_S, Driver, Jump, Setup

# next_target, adapt and finished never touch the TraCI connection or the summary feed: plain
# stand-ins take their place (a real one needs a running SUMO).
NO_CONN: Any = object()
NO_SUMMARY: Any = object()


def driver(
    *, start: float = 0.0, delta_t: float = 0.1, end: float | None = None, every: int = 1
) -> Driver:
    return Driver(NO_CONN, NO_SUMMARY, Setup(start, delta_t, end_time=-1.0), end, every)


def test_targets_stay_on_the_step_grid_over_a_hundred_thousand_steps():
    # Adding 0.1 a hundred thousand times drifts off the grid; each target is start + k jumps.
    d = driver(delta_t=0.1, every=1)
    targets = [d.next_target() for _ in range(100_000)]
    assert targets == [k / 10 for k in range(1, 100_001)]
    assert targets[-1] == 10_000.0


def test_targets_start_from_the_first_sim_time_and_jump_every_sample():
    # A scenario that begins at 3600 s, a step of 0.25 s, a sample every 8 steps (2 s).
    d = driver(start=3600.0, delta_t=0.25, every=8)
    assert [d.next_target() for _ in range(3)] == [3602.0, 3604.0, 3606.0]
    for _ in range(50_000 - 3):
        target = d.next_target()
    assert target == 3600.0 + 50_000 * 2.0


def test_targets_never_pass_the_end():
    d = driver(delta_t=0.1, every=2, end=1.05)
    targets = [d.next_target() for _ in range(7)]
    assert targets == [0.2, 0.4, 0.6, 0.8, 1.0, 1.05, 1.05]


def test_without_an_end_targets_go_on():
    d = driver(delta_t=1.0, every=10)
    assert [d.next_target() for _ in range(3)] == [10.0, 20.0, 30.0]


def test_jumps_start_at_one_sample():
    assert driver(every=10).samples_per_jump == 1


def test_a_jump_is_sized_to_take_about_jump_s():
    d = driver(every=1)
    # 4 samples took JUMP_S: each takes a quarter of it, so about 4 fit in the next jump.
    d.adapt(JUMP_S, 4)
    assert d.samples_per_jump == 4
    d.adapt(JUMP_S / 10, 1)
    assert d.samples_per_jump == 10


def test_a_slow_jump_still_takes_one_sample():
    d = driver(every=1)
    d.adapt(10.0, 1)
    assert d.samples_per_jump == 1


@pytest.mark.parametrize("every", [1, 10, 100, 256])
def test_a_fast_jump_never_leaves_more_steps_unread_than_the_socket_holds(every: int):
    # Unread summary rows must fit in the socket: at most MAX_STEPS_UNREAD steps per jump.
    d = driver(every=every)
    d.adapt(0.0, 1)
    assert d.samples_per_jump == MAX_STEPS_UNREAD // every
    assert d.samples_per_jump * every <= MAX_STEPS_UNREAD


def test_samples_further_apart_than_the_socket_holds_jump_one_at_a_time():
    d = driver(every=MAX_STEPS_UNREAD * 4)
    d.adapt(0.0, 1)
    assert d.samples_per_jump == 1


def test_a_jump_that_cut_no_sample_leaves_the_size_as_it_was():
    d = driver(every=1)
    d.adapt(JUMP_S, 5)
    d.adapt(100.0, 0)
    assert d.samples_per_jump == 5


def test_finished_at_the_end_time():
    d = driver(end=100.0)
    assert d.finished(Jump(sim_time=99.9, min_expected=5)) is None
    done = d.finished(Jump(sim_time=100.0, min_expected=5))
    assert done is not None and (done.kind, done.detail) == ("completed", "end time reached")
    # A sim time a hair under the end (float arithmetic in SUMO) is the end.
    done = d.finished(Jump(sim_time=100.0 - 1e-12, min_expected=5))
    assert done is not None and done.detail == "end time reached"


def test_finished_when_no_vehicle_is_left():
    for end in (None, 100.0):
        done = driver(end=end).finished(Jump(sim_time=42.0, min_expected=0))
        assert done is not None
        assert (done.kind, done.detail) == ("completed", "no vehicles left to simulate")


def test_not_finished_without_an_end_while_vehicles_are_left():
    assert driver(end=None).finished(Jump(sim_time=1e9, min_expected=1)) is None
