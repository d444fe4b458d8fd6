"""The live map of a session that another node runs: that node's map stream, relayed.

A map's frames come from the process that holds the session's SUMO, so a node that does not run
the session opens the owner's `GET /v1/sessions/{id}/map` with the caller's token (the rules of
supervisor/forward.py: once only, 409 `superseded` if it finds the session gone from there, 503
with Retry-After when the owner cannot be reached) and passes its events on whole. The owner's
refusal (401, 403, 404, 409...) is passed on as it is.

Bounded: the connection to the owner waits SOCK_CONNECT_S to be made and IDLE_S for anything to
read (the owner's stream pings every 15 s even when no frame comes: aiohttp_sse's default), one
event is at most MAX_EVENT_BYTES, and the relay ends when its own client has gone (looked for
every CHECK_S while the owner sends nothing), when the owner's stream ends, or when it is cut."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from actors.errors import OwnedElsewhere
from supervisor import forward
from supervisor.sse import Event, EventReader, EventTooLarge

log = structlog.get_logger(component="map_relay")

SOCK_CONNECT_S = 5.0
# Two of the owner's pings (every 15 s; frames come every second or faster while the session
# runs or is paused): a stream silent this long is taken for dead.
IDLE_S = 30.0
CHECK_S = 1.0
# A frame of 2,000 vehicles is about 160 kB.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class Upstream:
    """The owner's map stream, read event by event; `refusal` when the owner refused it."""

    def __init__(
        self, answer: aiohttp.ClientResponse, refusal: web.Response | None, node: str
    ) -> None:
        self._answer = answer
        self.refusal = refusal
        # The owner's name, for the caller to see where the map comes from.
        self.node = node
        self._reader = EventReader(MAX_EVENT_BYTES)
        self._pending: deque[Event] = deque()
        # Why the relay ended (logged): set where it ends.
        self.reason: str | None = None
        self.events = 0

    async def next_event(self, client_gone: Callable[[], bool]) -> Event | None:
        """The owner's next event; None once the relay is over (`reason` says why)."""
        while not self._pending:
            if self.reason is not None:
                return None
            chunk = await self._read(client_gone)
            if chunk is None:
                return None
            try:
                self._pending.extend(self._reader.feed(chunk))
            except EventTooLarge:
                self.reason = "event_too_large"
                return None
        event = self._pending.popleft()
        self.events += 1
        if event.name == "end":
            # The owner's map is over: this is the last event passed on.
            self.reason = "owner_ended"
            self._pending.clear()
        return event

    async def _read(self, client_gone: Callable[[], bool]) -> bytes | None:
        while True:
            try:
                # The owner's own silence is bounded by the connection's sock_read timeout.
                async with asyncio.timeout(CHECK_S):
                    chunk = await self._answer.content.readany()
            except aiohttp.ServerTimeoutError:
                self.reason = "owner_idle"
                return None
            except aiohttp.ClientError:
                self.reason = "owner_lost"
                return None
            except TimeoutError:
                if client_gone():
                    self.reason = "client_gone"
                    return None
                continue
            if not chunk:
                self.reason = "owner_closed"
                return None
            return chunk


@contextlib.asynccontextmanager
async def connect(
    request: web.Request, owner: dict[str, Any] | None, session_id: str
) -> AsyncIterator[Upstream]:
    """The owner's map stream of `session_id`, open for as long as the context is."""
    owner = forward.reachable(request, owner, session_id)
    url = owner["api_url"].rstrip("/") + request.rel_url.path_qs
    bound = log.bind(session_id=session_id, node=owner["name"], node_id=owner["id"])
    # No total: the stream is endless. `connect` bounds the wait for one of the relay client's
    # connections as well as the connecting; `sock_read`, the owner's silences.
    timeout = aiohttp.ClientTimeout(
        total=None, connect=SOCK_CONNECT_S, sock_connect=SOCK_CONNECT_S, sock_read=IDLE_S
    )
    headers = {**forward.headers_for(request), "Accept": "text/event-stream"}
    async with contextlib.AsyncExitStack() as stack:
        try:
            answer = await stack.enter_async_context(
                request.app[forward.RELAY_CLIENT].get(
                    url, headers=headers, timeout=timeout, allow_redirects=False
                )
            )
            refusal = None
            if answer.status != 200:
                data, whole = await forward.read_capped(answer)
                refusal = forward.passed_on(answer, data, whole, owner, session_id)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # A map is only read: asking again is always safe.
            bound.warning("map_relay_failed", error=repr(exc))
            raise OwnedElsewhere(
                f"session {session_id} runs on node {owner['name']}, whose map cannot be"
                " reached: try again (if the node is gone, the session is rescued within"
                " seconds)",
                headers={"Retry-After": "2"},
                node=owner["name"],
            ) from None
        upstream = Upstream(answer, refusal, owner["name"])
        if refusal is not None:
            bound.info("map_relay_refused", status=answer.status)
            yield upstream
            return
        bound.info("map_relay_started")
        try:
            yield upstream
        except BaseException as exc:
            upstream.reason = upstream.reason or _ended_by(exc)
            raise
        finally:
            bound.info("map_relay_ended", reason=upstream.reason, events=upstream.events)


def _ended_by(exc: BaseException) -> str:
    if isinstance(exc, ConnectionResetError):
        return "client_gone"
    if isinstance(exc, TimeoutError):
        return "client_stalled"
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return "error"
