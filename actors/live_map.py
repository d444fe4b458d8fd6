"""What a live map of a running session shows: where its vehicles are and what its lights show,
read from SUMO only while someone watches.

A watcher subscribes (`watch`) and drops its subscription when it leaves. The session calls
`tick` between its slices, on the loop; while there are watchers and a frame is due (every
FRAME_S), the frame is read on the session's TraCI thread: one context subscription of every
vehicle around a junction with an unbounded range, made and dropped in the same breath (its
answer carries the values at once), so SUMO computes nothing for the map between frames and
nothing is left subscribed when the last watcher goes. The frame is encoded on that thread too,
once, whatever the number of watchers; each watcher keeps only the newest frame (a slow
watcher skips frames, it never holds up the session)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import traci.constants as tc
from traci.connection import Connection
from traci.exceptions import TraCIException

from actors.errors import Busy

FRAME_S = 0.5
# A context subscription reaches every vehicle within this many metres of its junction.
EVERYWHERE_M = 1e9
MAX_WATCHERS = 16
MAX_LIGHTS = 2000
_VARS = [tc.VAR_POSITION, tc.VAR_SPEED, tc.VAR_ANGLE]

InThread = Callable[..., Awaitable[Any]]


@dataclass(eq=False)
class MapWatcher:
    """One watcher: the newest frame not yet taken, and whether the map has ended."""

    frame: bytes | None = None
    ended: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def offer(self, frame: bytes | None) -> None:
        if frame is None:
            self.ended = True
        else:
            self.frame = frame
        self._wake.set()

    async def next(self, timeout_s: float) -> bytes | None:
        """The newest frame, or None when none came within `timeout_s` or the map ended."""
        if self.frame is None and not self.ended:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout_s)
        self._wake.clear()
        frame, self.frame = self.frame, None
        return frame


class LiveMap:
    """A session's map feed. Touched only on the loop; the TraCI reads go through `in_thread`."""

    def __init__(self) -> None:
        self._watchers: set[MapWatcher] = set()
        self._due = 0.0
        self._closed = False
        self._anchor: str | None = None
        self._lights: list[str] | None = None

    @property
    def watched(self) -> bool:
        return bool(self._watchers)

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @contextlib.contextmanager
    def watch(self) -> Iterator[MapWatcher]:
        if self._closed:
            raise Busy("the session's map has ended")
        if len(self._watchers) >= MAX_WATCHERS:
            raise Busy(f"{MAX_WATCHERS} maps of this session are open already: try again later")
        watcher = MapWatcher()
        self._watchers.add(watcher)
        # The next tick reads a frame at once for the newcomer.
        self._due = 0.0
        try:
            yield watcher
        finally:
            self._watchers.discard(watcher)

    async def tick(self, conn: Connection, in_thread: InThread, sim_time: float | None) -> None:
        """Read and hand out a frame if someone watches and one is due."""
        if not self._watchers:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._due:
            return
        self._due = loop.time() + FRAME_S
        if self._anchor is None:
            self._anchor, self._lights = await in_thread(_ids, conn)
        frame: bytes = await in_thread(_frame, conn, self._anchor, self._lights, sim_time)
        for watcher in list(self._watchers):
            watcher.offer(frame)

    def close(self) -> None:
        """The session's SUMO is gone: every watcher's stream ends."""
        self._closed = True
        for watcher in list(self._watchers):
            watcher.offer(None)


def _ids(conn: Connection) -> tuple[str, list[str]]:
    junctions = conn.junction.getIDList()
    lights = list(conn.trafficlight.getIDList())[:MAX_LIGHTS]
    return (junctions[0] if junctions else ""), lights


def _frame(conn: Connection, anchor: str, lights: list[str], sim_time: float | None) -> bytes:
    """One frame, encoded: vehicles as parallel arrays (ids, x y pairs, speeds, angles), so
    that 2,000 of them are one small object to parse and draw."""
    results: dict[str, dict[int, Any]] = {}
    if anchor:
        try:
            conn.junction.subscribeContext(anchor, tc.CMD_GET_VEHICLE_VARIABLE, EVERYWHERE_M, _VARS)
            results = dict(conn.junction.getContextSubscriptionResults(anchor) or {})
            conn.junction.unsubscribeContext(anchor, tc.CMD_GET_VEHICLE_VARIABLE, EVERYWHERE_M)
        except TraCIException:
            # A map without its vehicles this once; never a reason to end the session.
            results = {}
    ids: list[str] = []
    xy: list[float] = []
    speed: list[float] = []
    angle: list[float] = []
    for vid, values in results.items():
        x, y = values[tc.VAR_POSITION]
        ids.append(vid)
        xy += (round(x, 2), round(y, 2))
        speed.append(round(values[tc.VAR_SPEED], 2))
        angle.append(round(values[tc.VAR_ANGLE], 1))
    states = {t: conn.trafficlight.getRedYellowGreenState(t) for t in lights}
    return orjson.dumps(
        {
            "sim_time": sim_time,
            "ids": ids,
            "xy": xy,
            "speed": speed,
            "angle": angle,
            "tls": states,
        }
    )
