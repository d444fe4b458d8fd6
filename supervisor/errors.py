"""Typed errors a caller can cause. The API maps each to one HTTP status in one place."""

from __future__ import annotations

from typing import Any


class SupervisorError(Exception):
    """Base: `status` is the HTTP code, `detail` extra JSON fields for the error body."""

    status = 400

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class InvalidRequest(SupervisorError):
    status = 400


class InvalidTemplate(SupervisorError):
    status = 422


class TemplateNotFound(SupervisorError):
    status = 404


class SessionNotFound(SupervisorError):
    status = 404


class SweepNotFound(SupervisorError):
    status = 404


class SessionConflict(SupervisorError):
    """The session is in a state that does not allow the request (e.g. already ended)."""

    status = 409


class PayloadTooLarge(SupervisorError):
    status = 413


class QueueFull(SupervisorError):
    status = 503


class ShuttingDown(SupervisorError):
    status = 503


class Busy(SupervisorError):
    """As many of these requests are running as the daemon allows at once; try again later."""

    status = 503
