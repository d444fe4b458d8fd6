"""The ask pattern, written once: send a message carrying a reply future, await the answer.

Actors answer by resolving the future a message carries; `reply` and `reply_error` answer at
most once, so a message answered early (a session that ended) is never answered twice."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")
M = TypeVar("M")


async def ask(
    send: Callable[[M], Awaitable[None]],
    make: Callable[[asyncio.Future[T]], M],
    timeout_s: float,
) -> T:
    """Send `make(reply)` and wait up to `timeout_s` seconds for the reply; TimeoutError if none."""
    fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    await send(make(fut))
    return await asyncio.wait_for(fut, timeout_s)


def reply(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def reply_error(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
