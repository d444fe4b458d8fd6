"""A session's samples, from SUMO's own summary output.

SUMO computes the summary in C++ every step (running, inserted, halting, mean speed,
teleports); reading the same figures over TraCI needs a context subscription over every vehicle,
which cost SUMO about as much again as the simulation itself. The summary is sent to a socket
the session listens on rather than to a file: SUMO sends a network output on every write,
while a file reaches the disk only when its buffer fills, hundreds of steps late.

The feed is read on the session's TraCI thread, right after each jump: SUMO writes a step's row
before it answers the jump, so the rows are already in the socket. Nobody reads between jumps,
so SUMO's per-step sends wake no one; a jump is cut into pieces of at most MAX_STEPS_UNREAD
steps so that the unread rows always fit in the socket's buffer (a full buffer would block
SUMO's send while the session waits for SUMO's answer).

How often SUMO writes a row is the request's `sample_detail`:
- "exact": every step. The sample at T is SUMO's row of step T - step (the network as it is when
  the clock reads T), and `waiting_time` adds up every step's halting count. SUMO walks every
  vehicle each step for it: about a fifth of a simulation's own time.
- "period" (the default of a running session): one row per sample (`--summary-output.period`),
  which costs SUMO next to nothing. SUMO writes those rows at the sample times themselves, so the
  sample at T is SUMO's row of step T (the network one step after the clock read T), and
  `waiting_time` is estimated as the halting count times the sample's interval. SUMO writes no
  row at a run's end that falls on the period: that last sample is read over TraCI (`final`).
"""

from __future__ import annotations

import math
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any

from traci.connection import Connection

# A step row is ~300 bytes: 256 of them fit easily in a loopback socket's default buffers.
MAX_STEPS_UNREAD = 256
RECV_BUFFER = 1024 * 1024
# Generous: the rows are already in flight when a read starts.
READ_TIMEOUT_S = 30.0
ACCEPT_TIMEOUT_S = 10.0
# SUMO's speed under which a vehicle counts as halting (SUMO_const_haltingSpeed).
HALTING_SPEED = 0.1


# A cut sample row, with the number of vehicles still active at its last step (loaded, not ended).
Cut = tuple[tuple[Any, ...], int]


class SummaryLost(Exception):
    """SUMO's summary stream ended or stalled before the rows a jump needs arrived."""


class SummaryFeed:
    """One SUMO's summary stream, folded into sample rows. All but `open` and `close` block:
    they run on the session's TraCI thread."""

    def __init__(
        self, session_id: str, copy_to: Path | None = None, period: float | None = None
    ) -> None:
        self._session_id = session_id
        # SUMO's --summary-output.period; None: a row every step.
        self.period = period
        # The config's own summary-output: SUMO's stream goes to the daemon, which writes the
        # config's file from the same bytes (SUMO can send the summary to one place only).
        self._copy_to = copy_to
        self._copy: int | None = None
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._pending = b""
        self._names: dict[str, int] = {}
        self.last_time = float("-inf")
        # The latest step's figures, and the interval's running totals.
        self._running = 0
        self._active = 0
        self._inserted = 0
        self._teleports = 0
        self._halting = 0
        self._mean_speed = 0.0
        self._halting_seconds = 0.0
        self._step = 0.0
        self._origin = 0.0
        self._tolerance = 0.0
        self._last_cut = 0.0
        # Cumulative counts at the previous cut, which make the per-interval differences.
        self._cut_inserted = 0
        self._cut_left = 0
        self._cut_teleports = 0

    def open(self) -> int:
        """Listen on a free local port; returns it for SUMO's `--summary-output`."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        self._listener = sock
        port: int = sock.getsockname()[1]
        return port

    def adopt(self, listener: socket.socket) -> None:
        """Listen on a socket made elsewhere: a sandboxed SUMO's, in its network namespace."""
        self._listener = listener

    def accept(self, step: float, origin: float = 0.0) -> None:
        """Take SUMO's connection (made while loading, before TraCI opens); `step` is SUMO's
        step length, the time each row stands for, and `origin` the run's first sim time, from
        which SUMO counts its periods."""
        self._step = step
        self._origin = self._last_cut = origin
        # SUMO writes times with two decimals.
        self._tolerance = min(step / 2, 0.004)
        assert self._listener is not None
        self._listener.settimeout(ACCEPT_TIMEOUT_S)
        try:
            conn, _ = self._listener.accept()
        except TimeoutError:
            raise SummaryLost("SUMO did not connect its summary output") from None
        finally:
            self._listener.close()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        conn.settimeout(READ_TIMEOUT_S)
        self._conn = conn
        if self._copy_to is not None:
            try:
                # SUMO writes only inside the session dir, but never through a link it made.
                self._copy = os.open(
                    self._copy_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o640
                )
            except OSError:
                self._copy = None  # where SUMO itself could not have written it either

    @property
    def lead(self) -> float:
        """How far past a sample time the clock must go for its row to be written."""
        return self._step if self.period is not None else 0.0

    def due(self, now: float) -> float:
        """The step of the last row SUMO has written once its clock reads `now`."""
        last = now - self._step
        if self.period is None:
            return last
        periods = math.floor((last - self._origin + self._tolerance) / self.period)
        return self._origin + periods * self.period

    def covers(self, sim_time: float) -> bool:
        """Whether the row the sample at `sim_time` is cut from is in."""
        return self.last_time >= sim_time - self._step + self.lead - self._tolerance

    def read_until(self, time: float, cuts: deque[float] | None = None) -> list[Cut]:
        """Read rows until the one of step `time` has been folded in. Each of `cuts` (sample
        times, ascending, taken off the deque) is cut as soon as its row is in."""
        assert self._conn is not None
        out: list[Cut] = []
        while self.last_time < time - self._tolerance:
            try:
                data = self._conn.recv(RECV_BUFFER)
            except TimeoutError:
                raise SummaryLost(f"no summary row for step {time} in {READ_TIMEOUT_S} s") from None
            if not data:
                raise SummaryLost(f"SUMO's summary stream ended at step {self.last_time}")
            if self._copy is not None:
                _write_all(self._copy, data)
            data = self._pending + data
            cut = data.rfind(b"\n") + 1
            self._pending = data[cut:]
            for line in data[:cut].decode().splitlines():
                if "<step " in line:
                    self._fold(line)
                    while cuts and self.covers(cuts[0]):
                        out.append((self.cut(cuts.popleft()), self._active))
        return out

    def _fold(self, line: str) -> None:
        # Attributes come in a fixed order: split on quotes rather than parse XML per step.
        parts = line.split('"')
        if not self._names:
            self._names = {
                parts[i].split()[-1].rstrip("="): i + 1 for i in range(0, len(parts) - 1, 2)
            }
        n = self._names
        self.last_time = float(parts[n["time"]])
        self._running = int(parts[n["running"]])
        self._active = int(parts[n["loaded"]]) - int(parts[n["ended"]])
        self._inserted = int(parts[n["inserted"]])
        self._teleports = int(parts[n["teleports"]])
        self._halting = int(parts[n["halting"]])
        if self.period is None:
            # SUMO counts a halting vehicle as waiting: each halts for the whole step.
            self._halting_seconds += self._halting * self._step
        speed = float(parts[n["meanSpeed"]])
        # SUMO writes -1 when no vehicle is running.
        self._mean_speed = speed if speed >= 0 else 0.0

    def cut(self, sim_time: float) -> tuple[Any, ...]:
        """The sample row labelled `sim_time`, from the latest row folded in."""
        if self.period is not None:
            self._halting_seconds = self._halting * (sim_time - self._last_cut)
        self._last_cut = sim_time
        left = self._inserted - self._running
        row = (
            self._session_id,
            sim_time,
            self._running,
            self._inserted - self._cut_inserted,
            left - self._cut_left,
            self._mean_speed,
            self._halting,
            self._halting_seconds,
            self._teleports - self._cut_teleports,
        )
        self._cut_inserted, self._cut_left = self._inserted, left
        self._cut_teleports = self._teleports
        self._halting_seconds = 0.0
        return row

    def final(self, conn: Connection, sim_time: float) -> Cut:
        """The sample labelled `sim_time` from the network as it is now, read over TraCI: the
        end of a run whose last row SUMO does not write. SUMO keeps the counts; the speeds take
        one walk over the vehicles, once per run."""
        stats = conn.simulation.getParameter
        self._running = int(stats("", "stats.vehicles.running"))
        self._inserted = int(stats("", "stats.vehicles.inserted"))
        self._teleports = int(stats("", "stats.teleports.total"))
        self._active = self._running + int(stats("", "stats.vehicles.waiting"))
        speeds = [float(conn.vehicle.getSpeed(v)) for v in conn.vehicle.getIDList()]
        self._halting = sum(1 for v in speeds if v < HALTING_SPEED)
        self._mean_speed = sum(speeds) / len(speeds) if speeds else 0.0
        self.last_time = max(self.last_time, sim_time - self._step + self.lead)
        return self.cut(sim_time), self._active

    def close(self) -> None:
        for sock in (self._listener, self._conn):
            if sock is not None:
                sock.close()
        if self._copy is not None:
            os.close(self._copy)
            self._copy = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
