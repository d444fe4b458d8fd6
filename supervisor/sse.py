"""Reading a Server-Sent Events stream: bytes as they arrive in, whole events out.

A relay passes on events, never raw chunks: a chunk may end in the middle of an event, and what
the relay adds (its own pings) must fall between events. Lines end in CRLF, LF or CR (the SSE
standard's three); comment lines (`: ping`) are dropped; one event's size is capped, so that a
peer that never ends an event cannot make the reader buffer without bound."""

from __future__ import annotations

import re
from dataclasses import dataclass

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    name: str
    data: str
    id: str | None = None


class EventTooLarge(Exception):
    """An event (or a line not yet ended) is over the reader's cap."""


class EventReader:
    """Whole events of a stream fed chunk by chunk."""

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes
        self._buf = bytearray()
        # Where to look for the next line end: the rest of the buffer was looked at already.
        self._scan = 0
        self._name: str | None = None
        self._data: list[str] = []
        self._id: str | None = None
        self._size = 0

    def feed(self, chunk: bytes) -> list[Event]:
        """The events `chunk` completes, in order; EventTooLarge past the cap."""
        buf = self._buf
        buf += chunk
        events: list[Event] = []
        start = 0
        for m in _EOL.finditer(buf, self._scan):
            if m.end() == len(buf) and buf[-1:] == b"\r":
                break  # maybe the first half of a CRLF: wait for the next chunk
            if (event := self._line(bytes(buf[start : m.start()]))) is not None:
                events.append(event)
            start = m.end()
        del buf[:start]
        self._scan = max(0, len(buf) - 1) if buf.endswith(b"\r") else len(buf)
        if self._size + len(buf) > self._max:
            raise EventTooLarge(f"an event is over {self._max} bytes")
        return events

    def _line(self, line: bytes) -> Event | None:
        if not line:
            event = None
            if self._data:
                event = Event(self._name or "message", "\n".join(self._data), self._id)
            self._name, self._data, self._id, self._size = None, [], None, 0
            return event
        if line.startswith(b":"):
            return None
        self._size += len(line)
        if self._size > self._max:
            raise EventTooLarge(f"an event is over {self._max} bytes")
        field, _, value = line.decode(errors="replace").partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None
