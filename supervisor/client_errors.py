"""What the Python client raises: one base class, `ClientError`; the daemon's refusals as
`ApiError`, one subclass per common status, built from its JSON error body."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """Anything the client could not do: the base of every error it raises."""


class ApiError(ClientError):
    """The daemon answered with an error status. `message` is its `error` text, `body` the whole
    JSON body (its other fields name the culprit: `field`, `value`, `limit`...)."""

    status = 0

    def __init__(
        self,
        status: int,
        message: str,
        body: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.body: Mapping[str, Any] = body or {}
        self.headers: Mapping[str, str] = headers or {}

    @property
    def retry_after(self) -> float | None:
        """The seconds the daemon asked to wait before trying again (429, 503), if it said."""
        raw = self.headers.get("retry-after") or self.headers.get("Retry-After")
        try:
            return float(raw) if raw is not None else None
        except ValueError:
            return None


class BadRequest(ApiError):
    """400: the request is malformed or out of bounds; `body["field"]` often names what."""


class Unauthorized(ApiError):
    """401: no token, or one the daemon does not take (unknown, expired or revoked)."""


class Forbidden(ApiError):
    """403: the token's role is too small for the route, or the Origin is not allowed."""


class NotFound(ApiError):
    """404: no such template, session, sweep or token."""


class Conflict(ApiError):
    """409: the thing is in a state that does not allow the request (a running session cannot
    be deleted, an ended one cannot be paused...)."""


class PayloadTooLarge(ApiError):
    """413: an upload over the size cap or the template quota."""


class Unprocessable(ApiError):
    """422: a template the daemon refuses, or a batch of commands it could not apply."""


class TooManyRequests(ApiError):
    """429: over the client's fair share; `retry_after` says when to try again."""


class Unavailable(ApiError):
    """503: the queue is full, the daemon is shutting down, or its database is away."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: Unprocessable,
    429: TooManyRequests,
    503: Unavailable,
}


def api_error(status: int, body: Any, text: str, headers: Mapping[str, str]) -> ApiError:
    """The error for an answer with `status` ≥ 400: `body` is its decoded JSON (None when it was
    not JSON), `text` its raw text."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        message = body["error"]
    else:
        message = text.strip()[:200] or f"HTTP {status}"
        body = None
    return _BY_STATUS.get(status, ApiError)(status, message, body, headers)


class DaemonUnreachable(ClientError):
    """Nothing answers at the client's URL (no daemon there, or the network is down)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"no daemon answers at {url}: {reason}")
        self.url = url


class RequestTimeout(ClientError):
    """The daemon did not answer (or a stream sent nothing) within the client's timeout."""


class ConnectionLost(ClientError):
    """The connection broke in the middle of a request or a stream."""


class WaitTimeout(ClientError):
    """A wait's deadline passed; `last` is the last state seen (a Session or a Sweep)."""

    def __init__(self, message: str, last: Any) -> None:
        super().__init__(message)
        self.last = last


class StreamFailed(ClientError):
    """A live stream could not be resumed: the reconnections in a row allowed all failed."""


class ScenarioError(ClientError):
    """A .sumocfg that cannot be uploaded as it is: unreadable, or naming a file that is not
    there."""
