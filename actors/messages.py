"""The session actor's message protocol: what it is started with, and what it is sent.

A stop always gets through (it jumps the session's inbox); control messages (pause, resume,
step, commands) wait in the bounded inbox and are answered on their reply future."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from actors.lifecycle import Cause, Status
from actors.request import SessionRequest
from actors.store import NewSession


@dataclass(frozen=True)
class SessionSpec:
    id: str
    template_name: str
    template_version: int
    config_path: str
    request: SessionRequest
    attempt: int = 1
    sweep_id: str | None = None

    def db_row(self) -> NewSession:
        """The session as it is first stored, queued."""
        return NewSession(
            id=self.id,
            template_name=self.template_name,
            template_version=self.template_version,
            request=self.request.to_json(),
            label=self.request.label,
            end_time=self.request.end,
            sweep_id=self.sweep_id,
        )


@dataclass(frozen=True)
class StopSession:
    """End the session; it ends with `status` (stopped or timed_out). With `interrupt`, the
    run was cut off from outside (its node lost the lease, a drain handed it back): it is
    queued again or failed with that cause (lifecycle.interrupted), whatever SUMO did."""

    status: Status
    reason: str
    interrupt: Cause | None = None


@dataclass(frozen=True)
class Pause:
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Resume:
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Step:
    """Advance a stepped session by exactly `seconds` of sim time; the reply is the sample."""

    seconds: float
    reply: asyncio.Future[Any]


@dataclass(frozen=True)
class Commands:
    commands: list[dict[str, Any]]
    reply: asyncio.Future[Any]


Control = Pause | Resume | Step | Commands
Message = StopSession | Control
