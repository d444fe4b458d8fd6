"""The SSE reader a map relay passes events on with: whole events, however the bytes were cut,
in each of the three line endings; comments dropped; an event past the cap refused."""

from __future__ import annotations

import pytest

from supervisor.sse import Event, EventReader, EventTooLarge

STREAM = (
    b": ping\r\n\r\n"
    b'event: frame\r\ndata: {"a": 1}\r\n\r\n'
    b"id: 7\nevent: sample\ndata: line one\ndata:line two\n\n"
    b": a comment between fields\revent: end\rdata: {}\r\r"
    b"data: \xc3\xa9t\xc3\xa9\n\n"
)
EVENTS = [
    Event("frame", '{"a": 1}'),
    Event("sample", "line one\nline two", "7"),
    Event("end", "{}"),
    Event("message", "été"),
]


def read_all(chunks: list[bytes], cap: int = 1 << 20) -> list[Event]:
    reader = EventReader(cap)
    return [event for chunk in chunks for event in reader.feed(chunk)]


def test_whole_stream_at_once() -> None:
    assert read_all([STREAM]) == EVENTS


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13])
def test_events_cut_anywhere_come_out_whole(size: int) -> None:
    # Every cut: inside a CRLF, inside a UTF-8 character, inside a field name.
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert read_all(chunks) == EVENTS


def test_an_event_comes_out_only_once_its_blank_line_is_in() -> None:
    reader = EventReader(1 << 20)
    assert reader.feed(b"event: frame\ndata: 1\n") == []
    assert reader.feed(b"\r") == []  # a CR alone may be the start of a CRLF
    assert reader.feed(b"\n") == [Event("frame", "1")]
    assert reader.feed(b"data: 2\r") == []
    # The CR was a line end of its own: the next chunk's CR ends the event.
    assert reader.feed(b"\r") == []
    assert reader.feed(b"data: 3\n\n") == [Event("message", "2"), Event("message", "3")]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert read_all([b"event: frame\n\n: ping\n\n"]) == []


def test_an_event_over_the_cap_is_refused() -> None:
    reader = EventReader(100)
    assert reader.feed(b"data: " + b"x" * 90 + b"\n\n") == [Event("message", "x" * 90)]
    # Over the cap in several lines, or in one line that never ends: refused before the end.
    with pytest.raises(EventTooLarge):
        EventReader(100).feed(b"data: " + b"x" * 60 + b"\ndata: " + b"x" * 60 + b"\n")
    reader = EventReader(100)
    reader.feed(b"data: " + b"x" * 50)
    with pytest.raises(EventTooLarge):
        reader.feed(b"x" * 50)


def test_comments_do_not_count_against_the_cap() -> None:
    reader = EventReader(100)
    for _ in range(10):
        assert reader.feed(b": " + b"p" * 90 + b"\n\n") == []
    assert reader.feed(b"data: ok\n\n") == [Event("message", "ok")]
