"""Live feeds for the SSE streams: pollers of the database, each shared by every stream that
watches the same thing, fanning events out to each watcher's bounded queue.

Two kinds, one hub:
- a session's feed (GET /v1/sessions/{id}/stream): its new samples and status changes. It starts
  at the session's latest sample: what came before is each watcher's backlog, read by its own
  handler.
- a session list's feed (GET /v1/sessions/stream): the page of sessions a filter selects, and
  every change to it (a session new, changed, or gone from the page). A watcher that joins gets
  the page the feed holds, without a query of its own.

Either reads the database once per poll, however many watchers it has. A watcher that falls a
whole queue behind is cut off (it can reconnect with Last-Event-ID) rather than ever holding up
the feed, the writer or the simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

import asyncpg
import structlog

from actors.errors import Busy
from supervisor import db

POLL_S = 0.2
# The list changes at the pace of people and samples: once a second is live enough for a table.
LIST_POLL_S = 1.0
WATCHER_QUEUE = 2000
BATCH = 5000
# The changes a list feed keeps for watchers resuming with Last-Event-ID; older ones get a page.
LIST_RECENT = 1000
# Distinct session-list filters watched at once: each costs one query a second.
MAX_LIST_FEEDS = 32
# The most sessions one list stream follows.
LIST_STREAM_LIMIT = 1000

# An attempt in these has no samples of its own yet (a rerun's rows there are the attempt
# before's, about to be cleared).
NOT_STARTED = frozenset({"queued", "starting"})

# Whether this node's run of a session is paused (None: it runs no such session).
PausedLookup = Callable[[str], bool | None]


@dataclass(frozen=True)
class SampleEvent:
    sample: dict[str, Any]


@dataclass(frozen=True)
class StatusEvent:
    """The session's status or its paused flag changed."""

    status: str
    session: dict[str, Any]


@dataclass(frozen=True)
class SessionChanged:
    """A session of the list is new to it or changed (status, sim time, vehicles, paused...)."""

    seq: int
    session: dict[str, Any]


@dataclass(frozen=True)
class SessionLeft:
    """A session left the list: deleted, or no longer matching the filter, or off its page."""

    seq: int
    session_id: str


@dataclass(frozen=True)
class EndEvent:
    """No more events: the session has ended and every sample was delivered (or the daemon is
    closing its streams)."""


@dataclass(frozen=True)
class LaggedEvent:
    """This watcher fell too far behind and was dropped."""


E = TypeVar("E")
Event = SampleEvent | StatusEvent | EndEvent | LaggedEvent
ListChange = SessionChanged | SessionLeft
ListEvent = ListChange | EndEvent | LaggedEvent


@dataclass(eq=False)
class Watcher(Generic[E]):
    queue: asyncio.Queue[E | EndEvent | LaggedEvent] = field(
        default_factory=lambda: asyncio.Queue(WATCHER_QUEUE)
    )

    def offer(self, event: E | EndEvent | LaggedEvent) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True


class _Fanout(Generic[E]):
    """A poller's watchers and task; `run` is the poller."""

    def __init__(self) -> None:
        self.watchers: set[Watcher[E]] = set()
        self.task: asyncio.Task[None] | None = None
        # Set once the feed knows where it starts (see each kind).
        self.ready = asyncio.Event()

    def _publish(self, event: E | EndEvent) -> None:
        for w in list(self.watchers):
            if not w.offer(event):
                self.watchers.discard(w)
                # Make room for the one event that tells it why it is being cut off.
                with contextlib.suppress(asyncio.QueueEmpty):
                    w.queue.get_nowait()
                w.queue.put_nowait(LaggedEvent())

    async def run(self) -> None:
        raise NotImplementedError


class _Feed(_Fanout[SampleEvent | StatusEvent]):
    def __init__(self, session_id: str, pool: asyncpg.Pool, paused: PausedLookup) -> None:
        super().__init__()
        self.session_id = session_id
        self._pool = pool
        self._paused = paused
        self._log = structlog.get_logger(component="feeds").bind(session_id=session_id)
        # `ready`: the samples committed before then are each watcher's backlog, which it reads
        # itself (a burst of history would cut it off).

    async def run(self) -> None:
        # A rerun (attempt 2, 3...) starts again from sim time 0 once its SUMO runs; until then
        # the rows in the database are the attempt before's, about to be cleared. So samples are
        # read only while an attempt runs (or has ended), and from the start of each new one.
        attempt: int | None = None
        try:
            first = await db.get_session(self._pool, self.session_id)
            if first is not None:
                attempt = first["attempt"]
            last_time = (
                None
                if first is None or first["status"] in NOT_STARTED
                else await db.last_sample_time(self._pool, self.session_id)
            )
        finally:
            self.ready.set()
        last_state: tuple[str, bool | None, int] | None = None
        pause = POLL_S
        while self.watchers:
            try:
                # Status first: samples are committed before a final status, so reading them
                # after seeing it gets every one of them.
                session = await db.get_session(self._pool, self.session_id)
                if session is None:
                    break
                if session["attempt"] != attempt:
                    attempt, last_time = session["attempt"], None
                if session["status"] not in NOT_STARTED:
                    last_time = await self._publish_samples(last_time)
            except Exception as exc:
                if not db.is_transient(exc):
                    raise
                # The database is away: the watchers wait for it, as the session does.
                self._log.warning("feed_retry", error=repr(exc), delay_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = POLL_S
            session["paused"] = self._paused(self.session_id)
            if (session["status"], session["paused"], session["attempt"]) != last_state:
                last_state = (session["status"], session["paused"], session["attempt"])
                self._publish(StatusEvent(session["status"], session))
            if session["status"] in db.FINAL_STATUSES:
                break
            await asyncio.sleep(POLL_S)
        self._publish(EndEvent())

    async def _publish_samples(self, last_time: float | None) -> float | None:
        """Every sample stored after `last_time`, published; the last one's sim time."""
        while True:
            rows = await db.get_samples(self._pool, self.session_id, last_time, BATCH)
            for row in rows:
                self._publish(SampleEvent(row))
            if rows:
                last_time = rows[-1]["sim_time"]
            if len(rows) < BATCH:
                return last_time


@dataclass(frozen=True)
class ListQuery:
    """Which sessions a list shows: the newest `limit` that match every filter given."""

    status: str | None
    label: str | None
    template: str | None
    limit: int


class ListFeed(_Fanout[ListChange]):
    """One filter's page of sessions, polled once per LIST_POLL_S, and the changes to it.

    Each change has a number; a cursor (`epoch-seq`, the SSE event id) names a feed and a place
    in its changes, so a watcher that reconnects while the feed lives gets only what it missed."""

    def __init__(self, query: ListQuery, pool: asyncpg.Pool, paused: PausedLookup) -> None:
        super().__init__()
        self.query = query
        self._pool = pool
        self._paused = paused
        self._log = structlog.get_logger(component="feeds").bind(list=str(query))
        self.epoch = secrets.token_hex(4)
        self._seq = 0
        self._rows: dict[str, dict[str, Any]] = {}
        self._recent: deque[ListChange] = deque(maxlen=LIST_RECENT)
        # False until the first poll has read the page (`ready` is set either way).
        self.loaded = False

    def cursor(self, seq: int | None = None) -> str:
        return f"{self.epoch}-{self._seq if seq is None else seq}"

    def page(self) -> tuple[int, list[dict[str, Any]]]:
        """The page now, newest first, and the number of the last change it includes."""
        return self._seq, [self._rows[k] for k in sorted(self._rows, reverse=True)]

    def since(self, cursor: str) -> list[ListChange] | None:
        """The changes after `cursor`; None when they are not all here (another feed's cursor,
        or one too old), and the watcher needs the page instead."""
        epoch, _, raw = cursor.partition("-")
        if epoch != self.epoch or not raw.isdigit():
            return None
        seq = int(raw)
        if seq > self._seq or seq < self._seq - len(self._recent):
            return None
        return [c for c in self._recent if c.seq > seq]

    async def run(self) -> None:
        q = self.query
        try:
            # The first read is not retried: a watcher waiting for its page is told at once.
            rows = await db.list_sessions(
                self._pool, q.status, q.label, q.limit, template=q.template
            )
            self._rows = self._with_paused(rows)
            self.loaded = True
        finally:
            self.ready.set()
        pause = LIST_POLL_S
        while self.watchers:
            await asyncio.sleep(pause)
            try:
                rows = await db.list_sessions(
                    self._pool, q.status, q.label, q.limit, template=q.template
                )
            except Exception as exc:
                if not db.is_transient(exc):
                    raise
                self._log.warning("list_feed_retry", error=repr(exc), delay_s=pause)
                pause = min(pause * 2, 8.0)
                continue
            pause = LIST_POLL_S
            self._apply(self._with_paused(rows))
        self._publish(EndEvent())

    def _with_paused(self, rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for row in rows:
            row["paused"] = self._paused(row["id"])
        return {row["id"]: row for row in rows}

    def _apply(self, now: dict[str, dict[str, Any]]) -> None:
        for session_id in sorted(self._rows.keys() - now.keys()):
            self._emit(SessionLeft(self._seq + 1, session_id))
        for session_id, row in sorted(now.items()):
            if self._rows.get(session_id) != row:
                self._emit(SessionChanged(self._seq + 1, row))
        self._rows = now

    def _emit(self, change: ListChange) -> None:
        self._seq = change.seq
        self._recent.append(change)
        self._publish(change)


F = TypeVar("F", bound=_Fanout[Any])


class FeedHub:
    """Owns every feed task: started by the first watcher, ended with the session (a session's
    feed) or its last watcher, all cancelled by `close`."""

    def __init__(self, pool: asyncpg.Pool, paused: PausedLookup = lambda _: None) -> None:
        self._pool = pool
        self._paused = paused
        self._feeds: dict[Hashable, _Fanout[Any]] = {}
        self._log = structlog.get_logger(component="feeds")

    @property
    def live(self) -> int:
        """Feeds running now: one per watched session or session-list filter, however many
        watch it."""
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def watch(
        self, session_id: str, *, cap: int
    ) -> AsyncIterator[Watcher[SampleEvent | StatusEvent]]:
        """A new watcher of the session, refused (Busy) when it has `cap` watchers already:
        each holds a queue of events and a socket, and the feed serves them all."""
        make = lambda: _Feed(session_id, self._pool, self._paused)  # noqa: E731
        async with self._watch(session_id, make, cap, f"session {session_id}") as (watcher, _):
            # The backlog is read after this: it reaches at least where the feed starts.
            yield watcher

    @contextlib.asynccontextmanager
    async def watch_list(
        self, query: ListQuery, *, cap: int
    ) -> AsyncIterator[tuple[Watcher[ListChange], ListFeed]]:
        """A new watcher of a session list, and its feed (for the page, or the changes a
        reconnecting watcher missed). Refused (Busy) past `cap` watchers of one filter, or
        when MAX_LIST_FEEDS other filters are watched already."""
        if query not in self._feeds:
            lists = sum(isinstance(f, ListFeed) for f in self._feeds.values())
            if lists >= MAX_LIST_FEEDS:
                raise Busy(
                    f"{MAX_LIST_FEEDS} session lists with other filters are watched already:"
                    " try again later, or use a filter already watched",
                    headers={"Retry-After": "5"},
                    limit=MAX_LIST_FEEDS,
                )
        make = lambda: ListFeed(query, self._pool, self._paused)  # noqa: E731
        async with self._watch(query, make, cap, "this session list") as (watcher, feed):
            yield watcher, feed

    @contextlib.asynccontextmanager
    async def _watch(
        self, key: Hashable, make: Callable[[], F], cap: int, what: str
    ) -> AsyncIterator[tuple[Watcher[Any], F]]:
        watcher: Watcher[Any] = Watcher()
        feed = cast(F | None, self._feeds.get(key))
        if feed is not None and len(feed.watchers) >= cap:
            raise Busy(
                f"{cap} watchers of {what} already: try again later",
                headers={"Retry-After": "1"},
                limit=cap,
            )
        if feed is None:
            feed = make()
            self._feeds[key] = feed
        feed.watchers.add(watcher)
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(self._run(key, feed), name=f"feed-{key}")
        try:
            await asyncio.wait_for(feed.ready.wait(), 30)
            yield watcher, feed
        finally:
            feed.watchers.discard(watcher)

    async def _run(self, key: Hashable, feed: _Fanout[Any]) -> None:
        try:
            await feed.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("feed_failed", feed=str(key))
            feed._publish(EndEvent())
        finally:
            if self._feeds.get(key) is feed:
                del self._feeds[key]

    async def close(self) -> None:
        """End every stream (watchers get an end event) and every feed task."""
        for feed in self._feeds.values():
            feed._publish(EndEvent())
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
