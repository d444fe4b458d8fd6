"""Live feeds for the SSE stream: one poller per watched session, fanned out to every watcher.

A feed reads a session's new samples and status from the database (what is committed, in order)
once per poll, however many watchers it has, and puts events on each watcher's bounded queue.
It starts at the session's latest sample: what came before is each watcher's backlog, read by
its own handler. A
watcher that falls a whole queue behind is cut off (it can reconnect with Last-Event-ID) rather
than ever holding up the feed, the writer or the simulation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import structlog

from actors.errors import Busy
from supervisor import db

POLL_S = 0.2
WATCHER_QUEUE = 2000
BATCH = 5000


@dataclass(frozen=True)
class SampleEvent:
    sample: dict[str, Any]


@dataclass(frozen=True)
class StatusEvent:
    status: str
    session: dict[str, Any]


@dataclass(frozen=True)
class EndEvent:
    """No more events: the session has ended and every sample was delivered."""


@dataclass(frozen=True)
class LaggedEvent:
    """This watcher fell too far behind and was dropped."""


Event = SampleEvent | StatusEvent | EndEvent | LaggedEvent


@dataclass(eq=False)
class Watcher:
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(WATCHER_QUEUE))

    def offer(self, event: Event) -> bool:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            return False
        return True


class _Feed:
    def __init__(self, session_id: str, pool: asyncpg.Pool) -> None:
        self.session_id = session_id
        self._pool = pool
        self._log = structlog.get_logger(component="feeds").bind(session_id=session_id)
        self.watchers: set[Watcher] = set()
        self.task: asyncio.Task[None] | None = None
        # Set once the feed knows where it starts: the samples committed before then are each
        # watcher's backlog, which it reads itself (a burst of history would cut it off).
        self.ready = asyncio.Event()

    def _publish(self, event: Event) -> None:
        for w in list(self.watchers):
            if not w.offer(event):
                self.watchers.discard(w)
                # Make room for the one event that tells it why it is being cut off.
                with contextlib.suppress(asyncio.QueueEmpty):
                    w.queue.get_nowait()
                w.queue.put_nowait(LaggedEvent())

    async def run(self) -> None:
        try:
            last_time = await db.last_sample_time(self._pool, self.session_id)
        finally:
            self.ready.set()
        last_status: str | None = None
        pause = POLL_S
        while self.watchers:
            try:
                # Status first: samples are committed before a final status, so reading them
                # after seeing it gets every one of them.
                session = await db.get_session(self._pool, self.session_id)
                if session is None:
                    break
                while True:
                    rows = await db.get_samples(self._pool, self.session_id, last_time, BATCH)
                    for row in rows:
                        self._publish(SampleEvent(row))
                    if rows:
                        last_time = rows[-1]["sim_time"]
                    if len(rows) < BATCH:
                        break
            except Exception as exc:
                if not db.is_transient(exc):
                    raise
                # The database is away: the watchers wait for it, as the session does.
                self._log.warning("feed_retry", error=repr(exc), delay_s=pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)
                continue
            pause = POLL_S
            if session["status"] != last_status:
                last_status = session["status"]
                self._publish(StatusEvent(session["status"], session))
            if session["status"] in db.FINAL_STATUSES:
                break
            await asyncio.sleep(POLL_S)
        self._publish(EndEvent())


class FeedHub:
    """Owns every feed task: started by the first watcher, ended with the session or its last
    watcher, all cancelled by `close`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._feeds: dict[str, _Feed] = {}
        self._log = structlog.get_logger(component="feeds")

    @property
    def live(self) -> int:
        """Feeds running now: one per watched session, however many watch it."""
        return len(self._feeds)

    @contextlib.asynccontextmanager
    async def watch(self, session_id: str, *, cap: int) -> AsyncIterator[Watcher]:
        """A new watcher of the session, refused (Busy) when it has `cap` watchers already:
        each holds a queue of events and a socket, and the feed serves them all."""
        watcher = Watcher()
        feed = self._feeds.get(session_id)
        if feed is not None and len(feed.watchers) >= cap:
            raise Busy(
                f"{cap} watchers of session {session_id} already: try again later",
                headers={"Retry-After": "1"},
                limit=cap,
            )
        if feed is None:
            feed = self._feeds[session_id] = _Feed(session_id, self._pool)
        feed.watchers.add(watcher)
        if feed.task is None or feed.task.done():
            feed.task = asyncio.create_task(self._run(feed), name=f"feed-{session_id}")
        try:
            # The backlog is read after this: it reaches at least where the feed starts.
            await asyncio.wait_for(feed.ready.wait(), 30)
            yield watcher
        finally:
            feed.watchers.discard(watcher)

    async def _run(self, feed: _Feed) -> None:
        try:
            await feed.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            self._log.exception("feed_failed", session_id=feed.session_id)
            feed._publish(EndEvent())
        finally:
            if self._feeds.get(feed.session_id) is feed:
                del self._feeds[feed.session_id]

    async def close(self) -> None:
        """End every stream (watchers get an end event) and every feed task."""
        for feed in self._feeds.values():
            feed._publish(EndEvent())
        tasks = [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
