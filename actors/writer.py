"""The writer actor: the only owner of bulk writes. Sessions hand it sample rows; it batches them
by count and time and COPYs them into PostgreSQL.

Its inbox is bounded: when the database is slow or down, `write` blocks and so the sessions slow
down. Rows are retried, never dropped, and everything queued is written before `run` returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import structlog

from supervisor import db

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Flush:
    """Resolve `done` once every row queued before this message is committed."""

    done: asyncio.Future[None]


@dataclass(frozen=True)
class Close:
    """Write everything queued, then end `run`."""


@dataclass
class WriterStats:
    rows_written: int = 0
    batches_written: int = 0
    retries: int = 0


class WriterActor:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_rows: int,
        flush_s: float,
        queue_rows: int,
    ) -> None:
        self._pool = pool
        self._batch_rows = batch_rows
        self._flush_s = flush_s
        self._inbox: asyncio.Queue[Row | Flush | Close] = asyncio.Queue(maxsize=queue_rows)
        self._log = structlog.get_logger(component="writer")
        self.stats = WriterStats()

    @property
    def queued(self) -> int:
        return self._inbox.qsize()

    async def write(self, row: Row) -> None:
        await self._inbox.put(row)

    async def flush(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._inbox.put(Flush(done))
        await done

    async def close(self) -> None:
        await self._inbox.put(Close())

    async def run(self) -> None:
        batch: list[Row] = []
        waiting: list[asyncio.Future[None]] = []
        loop = asyncio.get_running_loop()
        closing = False
        while not closing:
            item = await self._inbox.get()
            batch_deadline = loop.time() + self._flush_s
            # Gather a batch: until it is full, its time is up, or someone waits for it.
            while True:
                if isinstance(item, Close):
                    closing = True
                elif isinstance(item, Flush):
                    waiting.append(item.done)
                else:
                    batch.append(item)
                if closing or waiting or len(batch) >= self._batch_rows:
                    break
                if self._inbox.empty():
                    remaining = batch_deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._inbox.get(), remaining)
                    except TimeoutError:
                        break
                else:
                    item = self._inbox.get_nowait()
            if batch:
                await self._commit(batch)
                batch = []
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
            waiting = []
        # Close came last, but rows may still be queued behind it by late sessions.
        while not self._inbox.empty():
            item = self._inbox.get_nowait()
            if isinstance(item, Flush):
                if not item.done.done():
                    item.done.set_result(None)
            elif not isinstance(item, Close):
                batch.append(item)
        if batch:
            await self._commit(batch)
        self._log.info("writer_closed", rows_written=self.stats.rows_written)

    async def _commit(self, rows: Sequence[Row]) -> None:
        delay = 0.1
        while True:
            try:
                async with self._pool.acquire(timeout=10) as conn:
                    try:
                        await db.copy_samples(conn, rows)
                    except asyncpg.exceptions.UniqueViolationError:
                        # A rerun wrote some of these before; keep the rest.
                        await db.insert_samples_skipping_duplicates(conn, rows)
                break
            except db.TRANSIENT_ERRORS as exc:
                self.stats.retries += 1
                self._log.warning("batch_retry", rows=len(rows), error=repr(exc), delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except asyncpg.exceptions.ForeignKeyViolationError:
                # The session was deleted while its rows were queued: nothing to keep them for.
                self._log.warning("batch_discarded_deleted_session", rows=len(rows))
                return
        self.stats.rows_written += len(rows)
        self.stats.batches_written += 1
        self._log.debug("batch_written", rows=len(rows))
