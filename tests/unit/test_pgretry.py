"""Which database errors a retry waits out: the restart cases, and nothing else."""

from __future__ import annotations

import asyncpg
import pytest

from supervisor.pgretry import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        FileNotFoundError(2, "No such file or directory"),  # the socket, while it restarts
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.InterfaceError("cannot call Connection.fetch(): connection is closed"),
        # A connection whose query the shutdown cut off mid-operation.
        asyncpg.exceptions.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        # The next call on that connection.
        asyncpg.exceptions.InterfaceError(
            "cannot perform operation: another operation is in progress"
        ),
    ],
)
def test_what_a_database_restart_raises_is_retried(exc: BaseException):
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.CheckViolationError("violates check constraint"),
        asyncpg.exceptions.InterfaceError("the server expects 2 arguments, 1 was passed"),
        asyncpg.exceptions.InternalClientError("unexpected codec"),
        ValueError("bad row"),
    ],
)
def test_what_the_data_causes_is_not_retried(exc: BaseException):
    assert not is_transient(exc)
