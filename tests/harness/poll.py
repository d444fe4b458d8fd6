"""Waiting for something to become true: poll with a deadline, never sleep as synchronisation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE_S = 60.0
POLL_S = 0.05


async def wait_until(
    predicate: Callable[[], object], what: str, timeout: float = DEADLINE_S
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)
