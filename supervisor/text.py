"""Text the daemon can store and hand to SUMO: PostgreSQL takes no NUL in `text` or `jsonb`, and
nothing that is not UTF-8 (a lone surrogate, which JSON's "\\ud800" escape makes); TraCI sends
strings as UTF-8 too. Refused where it comes in, before anything is applied or stored."""

from __future__ import annotations

from typing import Any

from actors.errors import InvalidRequest


def why_unstorable(text: str) -> str | None:
    """What is wrong with `text`, or None when PostgreSQL and SUMO can take it."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (a lone surrogate)"
    return None


def check_json(value: Any, where: str = "body") -> None:
    """Refuse a JSON document with unstorable text anywhere in it, keys included; the error
    names where (e.g. `body.commands[0].id`)."""
    if isinstance(value, str):
        _refuse(value, where)
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse(key, f"{where} (a key)")
            check_json(item, f"{where}.{_printable(key)}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            check_json(item, f"{where}[{n}]")


def check_url(path: str, query: list[tuple[str, str]]) -> None:
    """Refuse a URL whose decoded path or query has text PostgreSQL cannot take (`%00`)."""
    _refuse(path, "URL path")
    for key, value in query:
        _refuse(key, "URL query")
        _refuse(value, f"URL query {_printable(key)!r}")


def _refuse(text: str, where: str) -> None:
    reason = why_unstorable(text)
    if reason is not None:
        raise InvalidRequest(f"{where} {reason}", field=where)


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
