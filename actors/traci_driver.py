"""Driving SUMO over TraCI: the blocking calls, run on the session's own single thread.

Every function here blocks on SUMO's socket, so the session actor calls them through its
executor, never on the event loop. A running session's jumps span several samples each (cut
from SUMO's summary stream, actors/summary.py), sized to take about JUMP_S."""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import traci.constants as tc
from traci.connection import Connection
from traci.exceptions import FatalTraCIError, TraCIException

from actors.outcome import Ending
from actors.summary import MAX_STEPS_UNREAD, Cut, SummaryFeed

# A running session's TraCI thread makes jump after jump for up to this long before it hands
# the samples back: one hand-over per slice rather than per sample, during which SUMO idles. A
# message for the session (stop, pause, commands) ends the slice at the next jump.
RUN_SLICE_S = 0.2
# How long one TraCI jump of a running session should take: long enough that the round trip
# between jumps, when SUMO waits, is a small share of it.
JUMP_S = 0.05


@dataclass
class Jump:
    sim_time: float
    min_expected: int


_SIM_VARS = [tc.VAR_TIME, tc.VAR_MIN_EXPECTED_VEHICLES]


@dataclass(frozen=True)
class Setup:
    sim_time: float
    delta_t: float
    end_time: float  # SUMO's own end (from the config); negative when it has none


def subscribe(conn: Connection) -> Setup:
    """Subscribe to what a jump needs to know, so each jump is a single round trip."""
    conn.simulation.subscribe(_SIM_VARS)
    return Setup(
        sim_time=float(conn.simulation.getTime()),
        delta_t=float(conn.simulation.getDeltaT()),
        end_time=float(conn.simulation.getEndTime()),
    )


class Driver:
    """Where the jumps of a running session go."""

    def __init__(
        self, conn: Connection, summary: SummaryFeed, setup: Setup, end: float | None, every: int
    ) -> None:
        self.conn = conn
        self.summary = summary
        self.setup = setup
        self.end = end
        self._jump_s = setup.delta_t * every
        self._k = 0
        # Unread summary rows must fit in the socket: at most MAX_STEPS_UNREAD steps per jump.
        self._max_samples = max(1, MAX_STEPS_UNREAD // every)
        self.samples_per_jump = 1
        # Sample times asked for whose rows are not in yet, ascending.
        self.pending: deque[float] = deque()

    def adapt(self, elapsed: float, samples: int) -> None:
        """Size the next jump to take about JUMP_S, from how long this one took."""
        if samples <= 0:
            return
        per_sample = max(elapsed / samples, 1e-6)
        self.samples_per_jump = max(1, min(self._max_samples, int(JUMP_S / per_sample)))

    def finished(self, jump: Jump) -> Ending | None:
        if self.end is not None and jump.sim_time >= self.end - 1e-9:
            return Ending("completed", "end time reached")
        if jump.min_expected == 0:
            return Ending("completed", "no vehicles left to simulate")
        return None

    def next_target(self) -> float:
        self._k += 1
        # Targets are computed from the start, not accumulated, so float error cannot drift.
        target = round(self.setup.sim_time + self._k * self._jump_s, 6)
        return target if self.end is None else min(target, self.end)


def advance(
    driver: Driver,
    start: float | None,
    target: float,
    cuts: deque[float] | None = None,
    interrupt: threading.Event | None = None,
) -> tuple[Jump, list[Cut]]:
    """Advance to `target`, reading SUMO's summary rows of every step on the way; the samples
    at `cuts` are cut as their rows come in. With `interrupt`, a message for the session ends
    the jump early, between two of its pieces: a jump of a sample far away (a long
    sample_every at a short step) must not keep a pause or a stop waiting for it."""
    step = driver.setup.delta_t
    now = driver.setup.sim_time if start is None else start
    cut: list[Cut] = []
    while True:
        # A float: traci warns of an old API on an int of 1000 or more (an `end` given as one).
        driver.conn.simulationStep(float(min(target, now + MAX_STEPS_UNREAD * step)))
        sim = driver.conn.simulation.getSubscriptionResults()
        now = float(sim[tc.VAR_TIME])
        # SUMO sent the rows of the steps before `now` before it answered.
        cut += driver.summary.read_until(driver.summary.due(now), cuts)
        if now >= target - 1e-9 or (interrupt is not None and interrupt.is_set()):
            return Jump(sim_time=now, min_expected=int(sim[tc.VAR_MIN_EXPECTED_VEHICLES])), cut


def run_slice(
    driver: Driver, start: float | None, limit: float | None, interrupt: threading.Event
) -> tuple[list[tuple[Any, ...]], Jump]:
    """Jumps over several samples each until the slice's time is up, a message waits, the run
    ends or sim time reaches `limit`; their sample rows and the last jump.

    The samples are cut from the summary stream, so a jump needs no stop at each one; it spans
    as many as take about JUMP_S, so that SUMO seldom waits for the daemon. A jump goes as far
    past its last sample as SUMO must go to write that sample's row (`SummaryFeed.lead`)."""
    deadline = time.monotonic() + RUN_SLICE_S
    rows: list[tuple[Any, ...]] = []
    pending = driver.pending
    while True:
        while len(pending) < driver.samples_per_jump and not (
            pending
            and (
                (driver.end is not None and pending[-1] >= driver.end - 1e-9)
                or (limit is not None and pending[-1] + driver.summary.lead >= limit - 1e-9)
            )
        ):
            pending.append(driver.next_target())
        target = pending[-1] + driver.summary.lead
        for bound in (driver.end, limit):
            if bound is not None:
                target = min(target, bound)
        began = time.monotonic()
        jump, cut = advance(driver, start, target, pending, interrupt)
        driver.adapt(time.monotonic() - began, len(cut))
        ended = jump.min_expected == 0 or driver.finished(jump) is not None
        if jump.min_expected == 0 and any(active == 0 for _row, active in cut):
            # The run ended somewhere in this jump: stop where a jump per sample would have, at
            # the first sample after which no vehicle was active any more.
            while len(cut) > 1 and cut[-2][1] == 0:
                cut.pop()
            pending.clear()
            jump = Jump(sim_time=cut[-1][0][1], min_expected=0)
        elif ended and pending:
            # The run ended before SUMO wrote the next sample's row: that last sample is the
            # network as the run left it.
            cut.append(driver.summary.final(driver.conn, pending[0]))
            jump = Jump(sim_time=pending.popleft(), min_expected=jump.min_expected)
            pending.clear()
        start = jump.sim_time
        rows.extend(row for row, _active in cut)
        if (
            driver.finished(jump) is not None
            or (limit is not None and jump.sim_time >= limit - 1e-9)
            or interrupt.is_set()
            or time.monotonic() >= deadline
        ):
            return rows, jump


def open_connection(port: int, handshake_timeout_s: float) -> Connection:
    """Connect and check that SUMO answers: a listener that is not SUMO would block forever."""
    conn = Connection("127.0.0.1", port, None, None, False, None)
    sock = conn._socket
    if sock.getsockname() == sock.getpeername():
        # Nothing listened, and the connect picked the port itself as its source port (it is in
        # the ephemeral range): TCP joined the socket to itself. Not SUMO, not there yet.
        sock.close()
        raise ConnectionRefusedError(f"port {port}: connected to itself")
    sock.settimeout(handshake_timeout_s)
    try:
        conn.getVersion()
    except BaseException:
        close_quietly(conn)
        raise
    # A jump of many steps may take as long as it takes; SUMO dying closes the socket anyway.
    conn._socket.settimeout(None)
    return conn


def close_quietly(conn: Connection) -> None:
    # SUMO may close its end first (it does at its end time): the close's answer is then short.
    with contextlib.suppress(FatalTraCIError, TraCIException, OSError, struct.error):
        conn.close(wait=False)
    # close() skips the socket when the command failed; make sure it is gone.
    sock = getattr(conn, "_socket", None)
    if sock is not None:
        sock.close()
