"""structlog set-up: one JSON object per line on stdout (or a console format for people).

Libraries log through the standard library (asyncpg's pool while the database is away, asyncio
for a failed callback): their records go through the same renderer, as the event
`library_log` with the library's own text in `message`, so the stream stays one JSON event per
line with stable event names.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog
from structlog.typing import EventDict, WrappedLogger

from supervisor.logbuffer import SESSION_LOGS


def _library_event(_logger: WrappedLogger, _name: str, event_dict: EventDict) -> EventDict:
    event_dict["message"] = event_dict.pop("event")
    event_dict["event"] = "library_log"
    return event_dict


def configure(level: str = "info", fmt: str = "json", stream: TextIO = sys.stdout) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
    )
    stamp = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            stamp,
            structlog.processors.dict_tracebacks,
            SESSION_LOGS,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_logger_name,
                structlog.stdlib.add_log_level,
                stamp,
                _library_event,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # At the default level libraries' info lines are chatter: only their warnings and errors.
    wanted = getattr(logging, level.upper())
    root.setLevel(logging.WARNING if wanted == logging.INFO else wanted)
