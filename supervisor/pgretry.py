"""The one retry policy for PostgreSQL: which errors pass, how long to wait for the database,
and the workaround that makes asyncpg notice a connection lost mid-COPY (without it such a
COPY waits forever, and a retry never comes)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog

log = structlog.get_logger(component="db")

T = TypeVar("T")

# Errors after which the same statement can succeed later: the server restarted or is unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same statement can succeed later. A connection that
    closed under an open transaction surfaces as a plain InterfaceError from asyncpg (it has no
    class of its own), so that one is told by its message."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    message = str(exc)
    # A server shutting down under a running query can leave asyncpg's protocol mid-operation:
    # the next use of that connection fails with this InternalClientError (seen ending a live
    # stream and failing a session's rows during a restart). The pool drops the connection on
    # release; a retry gets a new one.
    # The same cut-off operation, met by the next call on that connection, is an InterfaceError.
    return (
        isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in message
    ) or (
        isinstance(exc, asyncpg.exceptions.InternalClientError | asyncpg.exceptions.InterfaceError)
        and "another operation" in message
        and "is in progress" in message
    )


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    deadline_s: float,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """Run `op`, retrying transient database errors with backoff until `deadline_s` has passed
    (`math.inf`: until the database answers). Each retry is logged, or reported to `on_retry`
    (the error and the wait) instead."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + deadline_s
    delay = 0.1
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc) or loop.time() + delay > give_up:
                raise
            if on_retry is None:
                log.warning("db_retry", what=what, error=repr(exc), delay_s=delay)
            else:
                on_retry(exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# Far above any one COPY the daemon makes (a writer batch, a template's files).
COPY_TIMEOUT_S = 300.0


@contextlib.asynccontextmanager
async def while_connected(
    conn: asyncpg.Connection, timeout_s: float = COPY_TIMEOUT_S
) -> AsyncIterator[None]:
    """End the work on `conn` as soon as the connection is lost, or after `timeout_s`, with an
    error `is_transient` knows. For COPY: asyncpg waits for the socket to drain with no timeout
    of its own, and a connection lost while the server was not reading (shutting down, say)
    never wakes that wait, so a COPY cut off by a database restart would wait forever. After a
    timeout the connection is closed: it may be mid-COPY, and must not go back to the pool."""
    loop = asyncio.get_running_loop()
    inside = True
    lost = False
    try:
        async with asyncio.timeout(timeout_s) as deadline:

            def on_lost(_conn: object) -> None:
                nonlocal lost
                lost = True
                if inside and not deadline.expired():
                    deadline.reschedule(loop.time())

            conn.add_termination_listener(on_lost)
            try:
                yield
            finally:
                inside = False
                # A lost connection has dropped its listeners already, and its pool proxy too.
                with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                    conn.remove_termination_listener(on_lost)
    except Exception as exc:
        if lost:
            # Whatever the unwinding raised (a transaction cannot roll back on a closed
            # connection), the cause is the lost connection.
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "the connection was lost mid-operation"
            ) from exc
        if isinstance(exc, TimeoutError):
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                conn.terminate()
        raise
