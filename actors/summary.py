"""A session's samples, from SUMO's own per-step summary output.

SUMO computes the summary in C++ every step (running, inserted, halting, mean speed,
teleports); reading the same figures over TraCI needs a context subscription over every vehicle,
which cost SUMO about as much again as the simulation itself. The summary is sent to a socket
the session listens on rather than to a file: SUMO sends a network output on every write,
while a file reaches the disk only when its buffer fills, hundreds of steps late.

Each TraCI jump to time T has SUMO write the rows of every step before T, and SUMO writes them
before it answers the jump, so after a jump `until(T - step)` returns as soon as those rows,
already in the socket, have been read; `cut(T)` then turns them into one sample row.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import structlog

# Generous: the rows are already in flight when the wait starts.
CATCH_UP_TIMEOUT_S = 30.0
# A step row is a few hundred bytes; anything longer is not SUMO's summary.
LINE_LIMIT = 64 * 1024
_EPS = 1e-6


class SummaryLost(Exception):
    """SUMO's summary stream ended or stalled before the rows a jump needs arrived."""


class SummaryFeed:
    """Listens for one SUMO's summary stream and folds its step rows into sample rows."""

    def __init__(self, session_id: str) -> None:
        self._session_id = session_id
        self._sock: socket.socket | None = None
        self._server: asyncio.Server | None = None
        self._conn: asyncio.Future[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self._progress = asyncio.Event()
        self._ended = False
        self._names: dict[str, int] = {}
        self._log = structlog.get_logger(component="summary").bind(session_id=session_id)
        # The latest step's figures, and the interval's running totals.
        self.last_time = float("-inf")
        self._running = 0
        self._inserted = 0
        self._teleports = 0
        self._halting = 0
        self._mean_speed = 0.0
        self._halting_seconds = 0.0
        self._prev_time: float | None = None
        # Cumulative counts at the previous cut, which make the per-interval differences.
        self._cut_inserted = 0
        self._cut_left = 0
        self._cut_teleports = 0

    async def open(self) -> int:
        """Listen on a free local port; returns it for SUMO's `--summary-output`."""
        loop = asyncio.get_running_loop()
        self._conn = loop.create_future()
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", 0, limit=LINE_LIMIT, backlog=1
        )
        self._sock = self._server.sockets[0]
        port: int = self._sock.getsockname()[1]
        return port

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Only the first connection is SUMO's; the owned follow() task reads it.
        assert self._conn is not None
        if self._conn.done():
            writer.close()
            return
        self._conn.set_result((reader, writer))

    async def follow(self, sumo_done: asyncio.Event) -> None:
        """Read the stream until SUMO closes it (it always does when it exits)."""
        assert self._conn is not None and self._server is not None
        waiter: asyncio.Future[Any] = asyncio.ensure_future(sumo_done.wait())
        conn: asyncio.Future[Any] = self._conn
        try:
            await asyncio.wait({conn, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            # One connection only: stop listening at once.
            self._server.close()
        if not self._conn.done():
            self._end()
            return
        reader, writer = self._conn.result()
        try:
            while line := await reader.readline():
                if b"<step " in line:
                    self._fold(line.decode())
                    self._progress.set()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError) as exc:
            self._log.warning("summary_stream_broken", error=repr(exc))
        finally:
            self._end()
            writer.close()

    def _end(self) -> None:
        self._ended = True
        self._progress.set()

    def _fold(self, line: str) -> None:
        # Attributes come in a fixed order: split on quotes rather than parse XML per step.
        parts = line.split('"')
        if not self._names:
            self._names = {
                parts[i].split()[-1].rstrip("="): i + 1 for i in range(0, len(parts) - 1, 2)
            }
        n = self._names

        def get(name: str) -> str:
            return parts[n[name]]

        time = float(get("time"))
        if self._prev_time is not None:
            # SUMO counts a halting vehicle as waiting: the interval's vehicle-seconds of waiting.
            self._halting_seconds += self._halting * (time - self._prev_time)
        self._prev_time = time
        self.last_time = time
        self._running = int(get("running"))
        self._inserted = int(get("inserted"))
        self._teleports = int(get("teleports"))
        self._halting = int(get("halting"))
        speed = float(get("meanSpeed"))
        # SUMO writes -1 when no vehicle is running.
        self._mean_speed = speed if speed >= 0 else 0.0

    async def until(self, time: float) -> None:
        """Wait until the row of step `time` has been read."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT_S
        while self.last_time < time - _EPS:
            if self._ended:
                raise SummaryLost(f"SUMO's summary stream ended at {self.last_time}")
            self._progress.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise SummaryLost(f"no summary row for step {time} in {CATCH_UP_TIMEOUT_S} s")
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                continue

    def cut(self, sim_time: float, step: float) -> tuple[Any, ...]:
        """The sample row labelled `sim_time`: the interval's steps up to `sim_time - step`."""
        # The last step's halting vehicles wait until sim_time too.
        waiting = self._halting_seconds + self._halting * step
        left = self._inserted - self._running
        row = (
            self._session_id,
            sim_time,
            self._running,
            self._inserted - self._cut_inserted,
            left - self._cut_left,
            self._mean_speed,
            self._halting,
            waiting,
            self._teleports - self._cut_teleports,
        )
        self._cut_inserted, self._cut_left = self._inserted, left
        self._cut_teleports = self._teleports
        self._halting_seconds = 0.0
        self._prev_time = None
        return row

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            if self._conn is not None and not self._conn.done():
                self._conn.cancel()
