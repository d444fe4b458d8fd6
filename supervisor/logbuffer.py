"""The recent log events of each session, kept in memory (bounded) for `GET .../logs` and the
CLI's `logs` command. A structlog processor: every event with a session_id is copied here."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import MutableMapping
from typing import Any

EVENTS_PER_SESSION = 1000
SESSIONS = 500


class SessionLogs:
    def __init__(self) -> None:
        self._logs: OrderedDict[str, deque[dict[str, Any]]] = OrderedDict()

    def __call__(
        self, _logger: Any, _method: str, event: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        session_id = event.get("session_id")
        if isinstance(session_id, str):
            buf = self._logs.get(session_id)
            if buf is None:
                buf = self._logs[session_id] = deque(maxlen=EVENTS_PER_SESSION)
                while len(self._logs) > SESSIONS:
                    self._logs.popitem(last=False)
            buf.append(dict(event))
        return event

    def get(self, session_id: str) -> list[dict[str, Any]]:
        return list(self._logs.get(session_id, ()))


# One per process, like the logging configuration it is part of.
SESSION_LOGS = SessionLogs()
