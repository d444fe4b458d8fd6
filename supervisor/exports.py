"""CSV exports and paced writes: rows streamed from PostgreSQL to a client chunk by chunk, and
the pace a client must keep up so that a slow or idle one cannot hold a pool connection."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from actors.store import SAMPLE_COLUMNS

# A sample as the API shows it: the row without its session.
_SAMPLE_FIELDS = ", ".join(SAMPLE_COLUMNS[1:])

# What GET /v1/sessions/{id}/<kind>.csv exports, in order.
EXPORTS = {
    "samples": f"SELECT {_SAMPLE_FIELDS} FROM samples WHERE session_id = $1 ORDER BY sim_time",
    "trajectories": "SELECT time, vehicle, x, y, angle, speed, lane FROM trajectories"
    " WHERE session_id = $1 ORDER BY time, vehicle",
    "trips": "SELECT vehicle, vtype, depart, arrival, duration, route_length, waiting_time,"
    " waiting_count, time_loss, depart_delay, reroutes FROM trips WHERE session_id = $1"
    " ORDER BY arrival, vehicle",
    "edges": "SELECT interval_begin, interval_end, edge, entered, left_edge, mean_speed,"
    " occupancy, density, sampled_seconds FROM edge_data WHERE session_id = $1"
    " ORDER BY interval_begin, edge",
}


class ExportStalled(Exception):
    """The export's client made no room for another piece in `stall_s`."""


class ExportTooSlow(Exception):
    """The export's client took less than the minimum rate over a whole window."""


# asyncpg bounds a whole COPY by one timeout; an export's lasts as long as its client reads.
EXPORT_MAX_S = 24 * 3600.0
# The stall bound is per piece written, not per COPY chunk (which can be megabytes).
EXPORT_PIECE = 64 * 1024


@dataclass(frozen=True)
class ExportPace:
    """What an export's client must keep up: some room for the next piece within `stall_s`,
    and at least `min_rate` bytes a second over every `window_s` (0: no minimum rate)."""

    stall_s: float
    min_rate: float = 0.0
    window_s: float = 30.0


class PacedWriter:
    """Writes to a client piece by piece, cutting it off when it stalls or reads below the rate.

    The rate is counted over consecutive windows of `window_s`: each must see at least
    `min_rate * window_s` bytes taken. A piece must be taken by the end of the first window
    that has not had its due yet (the current one, or the next when the current one has), so
    an idle client is cut off within two windows, a trickling one within one. A write is never
    retried after a timeout (part of it may be on its way already): a timeout ends the export.
    """

    def __init__(self, pace: ExportPace, output: Callable[[memoryview], Awaitable[None]]) -> None:
        self._pace = pace
        self._output = output
        self._loop = asyncio.get_running_loop()
        self._window_end = self._loop.time() + pace.window_s
        self._taken = 0

    async def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), EXPORT_PIECE):
            await self._write_piece(view[start : start + EXPORT_PIECE])

    def _too_slow(self) -> ExportTooSlow:
        pace = self._pace
        return ExportTooSlow(
            f"the client took {self._taken} bytes in {pace.window_s} s,"
            f" below {pace.min_rate:.0f} bytes/s"
        )

    async def _write_piece(self, piece: memoryview) -> None:
        pace = self._pace
        stall_at = self._loop.time() + pace.stall_s
        rate_at = math.inf
        if pace.min_rate > 0:
            due = pace.min_rate * pace.window_s
            rate_at = self._window_end + (pace.window_s if self._taken >= due else 0.0)
        try:
            # A timeout scope, not wait_for: no task per piece of a large export.
            async with asyncio.timeout_at(min(stall_at, rate_at)):
                await self._output(piece)
        except TimeoutError:
            if rate_at < stall_at:
                if rate_at > self._window_end:  # the current window had its due; the next not
                    self._taken = 0
                raise self._too_slow() from None
            raise ExportStalled(f"the client took no more data for {pace.stall_s} s") from None
        if self._loop.time() < self._window_end:
            self._taken += len(piece)
            return
        # Taken in the next window (the current one had its due, or the timeout would have
        # ended the export): this piece opens its count.
        if pace.min_rate > 0 and self._taken < pace.min_rate * pace.window_s:
            raise self._too_slow()
        self._window_end += pace.window_s
        self._taken = len(piece)
        while self._loop.time() >= self._window_end:
            # Only without a minimum rate can a piece take more than a window.
            self._window_end += pace.window_s


async def export_csv(
    pool: asyncpg.Pool,
    kind: str,
    session_id: str,
    output: Callable[[memoryview], Awaitable[None]],
    *,
    pace: ExportPace,
) -> None:
    """Stream one of EXPORTS as CSV with a header, chunk by chunk, to `output`: COPY hands the
    rows over as the client takes them, so the daemon holds a chunk at a time, whatever the
    export's size. However long the whole takes, a client that makes no room for
    EXPORT_PIECE more bytes in `pace.stall_s`, or takes less than `pace.min_rate` over a
    window, ends it (ExportStalled, ExportTooSlow): it would hold a pool connection for as
    long as it liked."""
    writer = PacedWriter(pace, output)
    async with pool.acquire() as conn:
        await conn.copy_from_query(
            EXPORTS[kind],
            session_id,
            output=writer.write,
            format="csv",
            header=True,
            timeout=EXPORT_MAX_S,
        )
