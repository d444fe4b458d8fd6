"""The API's JSON encoding, in one place (answers, errors, stream events)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

# orjson: encoding answers was the largest part of a busy API's time with the stdlib encoder.
# It writes datetimes as ISO 8601, like datetime.isoformat(); non-str keys become strings.
_OPTIONS = orjson.OPT_NON_STR_KEYS


def encode(data: Any) -> bytes:
    try:
        return orjson.dumps(data, option=_OPTIONS)
    except orjson.JSONEncodeError:
        # An integer beyond 64 bits, as a bad input quoted back in its error: the stdlib takes it.
        return json.dumps(data, default=_iso).encode()


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def dumps(data: Any) -> str:
    return encode(data).decode()


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=encode(data), status=status, content_type="application/json")
