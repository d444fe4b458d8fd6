"""Typed errors a caller can cause. The API maps each to one HTTP status in one place."""

from __future__ import annotations

from typing import Any


class SupervisorError(Exception):
    """Base: `status` is the HTTP code, `detail` extra JSON fields for the error body."""

    status = 400

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **detail: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.headers = headers or {}


class InvalidRequest(SupervisorError):
    status = 400


class Unauthorized(SupervisorError):
    """No token, or one that is unknown, expired or revoked."""

    status = 401


class Forbidden(SupervisorError):
    """A token whose role is too small, or a request from a web page not allowed in."""

    status = 403


class MisdirectedRequest(SupervisorError):
    """A Host that is not one of the daemon's names (a DNS rebinding page, a wrong proxy)."""

    status = 421


class UnsupportedMediaType(SupervisorError):
    status = 415


class TooManyRequests(SupervisorError):
    status = 429


class InvalidTemplate(SupervisorError):
    status = 422


class TemplateNotFound(SupervisorError):
    status = 404


class SessionNotFound(SupervisorError):
    status = 404


class SweepNotFound(SupervisorError):
    status = 404


class TokenNotFound(SupervisorError):
    status = 404


class SessionConflict(SupervisorError):
    """The session is in a state that does not allow the request (e.g. already ended)."""

    status = 409


class CommandFailed(SupervisorError):
    """A batch of commands could not be applied (or stored); the session goes on."""

    status = 422


class PayloadTooLarge(SupervisorError):
    status = 413


class QueueFull(SupervisorError):
    status = 503


class ShuttingDown(SupervisorError):
    status = 503


class AnswerTooLarge(SupervisorError):
    """The node that runs the session answered more than a forwarded answer may carry."""

    status = 502


class OutcomeUnknown(SupervisorError):
    """A request forwarded to the node that runs the session got there, but its answer was
    lost: whether it acted is unknown."""

    status = 504


class OwnedElsewhere(SupervisorError):
    """The session runs on another node of the database: the API forwards the request to it
    (supervisor/forward.py); answered as is only when that node cannot be reached."""

    status = 503


class Busy(SupervisorError):
    """The daemon cannot serve this now, for a moment only (as many of these requests are
    running as it allows at once, a session's map is not open yet): try again later."""

    status = 503
