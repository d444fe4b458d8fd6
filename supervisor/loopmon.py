"""The event loop's heartbeat: measures loop lag and, from the loop itself, pings systemd's
watchdog, so a blocked loop stops the pings and systemd restarts the service."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from supervisor.systemd import Notifier

TICK_S = 0.1


class LoopMonitor:
    def __init__(self, notifier: Notifier, status: Callable[[], str]) -> None:
        self._notifier = notifier
        self._status = status
        self.lags: deque[float] = deque(maxlen=600)
        self.max_lag = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        watchdog = self._notifier.watchdog_s
        # Ping at a quarter of the interval: two missed ticks still leave a margin.
        ping_every = watchdog / 4 if watchdog else None
        last_ping = last_status = 0.0
        status_every = 5.0
        while True:
            before = loop.time()
            await asyncio.sleep(TICK_S)
            now = loop.time()
            lag = max(0.0, now - before - TICK_S)
            self.lags.append(lag)
            self.max_lag = max(self.max_lag, lag)
            if ping_every is not None and now - last_ping >= ping_every:
                self._notifier.notify("WATCHDOG=1")
                last_ping = now
            if now - last_status >= status_every:
                self._notifier.notify(f"STATUS={self._status()}")
                last_status = now
