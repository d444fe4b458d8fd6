"""The writer actor: the only owner of bulk writes. Sessions hand it sample rows and chunks of
SUMO's own CSV output; it batches them by count and time and COPYs them into the store.

Its inbox is bounded (in items, and CSV data also in bytes): when the database is slow or down,
`write`/`write_csv` block and so the sessions slow down. Batches are retried while the database
is away (by the store, which reports each retry here), and everything queued is written before
`run` returns. Rows the store refuses (RowsRefused) fail the session that owns them
(`take_failure`); a COPY that holds several sessions' rows is retried per session, so one
session's bad row never costs another its rows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import structlog

from actors.store import (
    SAMPLE_COLUMNS,
    LeaseLost,
    Mark,
    Row,
    RowsRefused,
    SessionGone,
    Store,
    StoreError,
)

# One of the store's bulk writes with everything bound but `on_retry` (and, for a recorded
# output, `mark`), both passed by keyword.
_Write = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Records:
    """Rows for `table`, converted in Python (samples, trips, edge data)."""

    table: str
    columns: tuple[str, ...]
    rows: list[Row]
    mark: Mark | None = None


@dataclass(frozen=True)
class CsvChunk:
    """Whole lines of SUMO's ';'-separated CSV output, COPYed as they are into `partition`; a
    line whose `required` column is empty is left out."""

    partition: str
    columns: tuple[str, ...]
    data: bytes
    lines: int
    required: str | None = None
    mark: Mark | None = None


@dataclass(frozen=True)
class Flush:
    """Resolve `done` once every item queued before this message is committed."""

    done: asyncio.Future[None]


@dataclass(frozen=True)
class Close:
    """Write everything queued, then end `run`."""


# A bare tuple is one sample row: the commonest item gets no wrapper to build and unwrap.
Item = Row | Records | CsvChunk | Flush | Close


@dataclass
class WriterStats:
    rows_written: int = 0
    retries: int = 0


class WriterActor:
    def __init__(
        self,
        store: Store,
        *,
        batch_rows: int,
        flush_s: float,
        queue_rows: int,
        queue_bytes: int = 64 * 1024 * 1024,
        on_batch: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._on_batch = on_batch
        self._store = store
        self._batch_rows = batch_rows
        self._flush_s = flush_s
        self._inbox: asyncio.Queue[Item] = asyncio.Queue(maxsize=queue_rows)
        self._queue_bytes = queue_bytes
        self._queued_bytes = 0
        self._space = asyncio.Condition()
        self._log = structlog.get_logger(component="writer")
        self.stats = WriterStats()
        # Per session, the first error that made the database refuse its rows.
        self._failures: dict[str, str] = {}
        self._committing = False

    @property
    def queued(self) -> int:
        return self._inbox.qsize()

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing being committed."""
        return not self._committing and self._inbox.empty()

    async def write(self, row: Row) -> None:
        """One sample row."""
        await self._inbox.put(row)

    async def write_records(
        self, table: str, columns: tuple[str, ...], rows: list[Row], mark: Mark | None = None
    ) -> None:
        if rows:
            await self._inbox.put(Records(table, columns, rows, mark))

    async def write_csv(self, chunk: CsvChunk) -> None:
        size = len(chunk.data)
        async with self._space:
            # A chunk bigger than the whole budget still goes alone, once the queue is empty.
            await self._space.wait_for(
                lambda: self._queued_bytes == 0 or self._queued_bytes + size <= self._queue_bytes
            )
            self._queued_bytes += size
        await self._inbox.put(chunk)

    async def flush(self) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._inbox.put(Flush(done))
        await done

    async def close(self) -> None:
        await self._inbox.put(Close())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        closing = False
        while not closing:
            batch: list[Records | CsvChunk] = []
            samples: list[Row] = []
            waiting: list[asyncio.Future[None]] = []
            rows = 0
            item = await self._inbox.get()
            batch_deadline = loop.time() + self._flush_s
            # Gather a batch: until it is full, its time is up, or someone waits for it.
            while True:
                if isinstance(item, tuple):
                    samples.append(item)
                    rows += 1
                elif isinstance(item, Close):
                    closing = True
                elif isinstance(item, Flush):
                    waiting.append(item.done)
                else:
                    batch.append(item)
                    rows += len(item.rows) if isinstance(item, Records) else item.lines
                if closing or waiting or rows >= self._batch_rows:
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
            if closing:
                # Close came last, but items may still be queued behind it by late sessions.
                while not self._inbox.empty():
                    late = self._inbox.get_nowait()
                    if isinstance(late, tuple):
                        samples.append(late)
                    elif isinstance(late, Flush):
                        waiting.append(late.done)
                    elif not isinstance(late, Close):
                        batch.append(late)
            if samples:
                batch.append(Records("samples", SAMPLE_COLUMNS, samples))
            self._committing = True
            try:
                await self._commit_batch(batch)
            finally:
                self._committing = False
            for fut in waiting:
                if not fut.done():
                    fut.set_result(None)
        self._log.info("writer_closed", rows_written=self.stats.rows_written)

    async def _commit_batch(self, batch: list[Records | CsvChunk]) -> None:
        # One COPY per destination: consecutive items for one table become one statement.
        groups: dict[tuple[str, tuple[str, ...], str | None], list[Records | CsvChunk]] = {}
        for item in batch:
            key: tuple[str, tuple[str, ...], str | None]
            if isinstance(item, Records):
                key = (item.table, item.columns, None)
            else:
                key = (item.partition, item.columns, item.required)
            groups.setdefault(key, []).append(item)
        for (target, columns, required), items in groups.items():
            started = time.perf_counter()
            freed = 0
            if isinstance(items[0], Records):
                records = [r for i in items if isinstance(i, Records) for r in i.rows]
                await self._commit_records(target, columns, records, items)
            else:
                chunks = [i for i in items if isinstance(i, CsvChunk)]
                data = b"".join(c.data for c in chunks)
                freed = len(data)
                csv = partial(self._store.copy_csv, target, columns, data, required=required)
                await self._commit_owned(target, csv, items, sum(c.lines for c in chunks))
            if freed:
                async with self._space:
                    self._queued_bytes -= freed
                    self._space.notify_all()
            self._on_batch(time.perf_counter() - started)

    async def _commit_records(
        self,
        target: str,
        columns: tuple[str, ...],
        records: list[Row],
        items: list[Records | CsvChunk],
    ) -> None:
        copy = partial(self._store.copy_rows, target, columns)
        if any(i.mark is not None for i in items):
            await self._commit_owned(target, partial(copy, records), items, len(records))
            return
        # Unmarked rows (samples) carry their session first, and one COPY holds many sessions'.
        error = await self._commit(target, partial(copy, records))
        if error is None:
            self.stats.rows_written += len(records)
            return
        by_session: dict[str, list[Row]] = {}
        for row in records:
            by_session.setdefault(str(row[0]), []).append(row)
        if len(by_session) == 1:
            self._refused(target, next(iter(by_session)), error)
            return
        # One session's refused row must not cost the others theirs: each on its own.
        for session_id, rows in by_session.items():
            error = await self._commit(target, partial(copy, rows))
            if error is None:
                self.stats.rows_written += len(rows)
            else:
                self._refused(target, session_id, error)

    async def _commit_owned(
        self, target: str, write: _Write, items: list[Records | CsvChunk], written: int
    ) -> None:
        """Commit one session's recorded chunks (a partition of its own), at most once."""
        marks = [i.mark for i in items if i.mark is not None]
        if not marks:
            error = await self._commit(target, write)
            if error is None:
                self.stats.rows_written += written
            else:
                self._log.error("batch_rejected", target=target, error=str(error))
            return
        # A target's chunks all come from one session's recorder, in order: the last mark
        # stands for them all.
        session_id = marks[0].session_id
        mark = Mark(session_id, max(m.seq for m in marks))
        error = await self._commit(target, partial(write, mark=mark))
        if error is None:
            self.stats.rows_written += written
        else:
            self._refused(target, session_id, error)

    def _refused(self, target: str, session_id: str, error: StoreError) -> None:
        if isinstance(error, SessionGone):
            # The session was deleted while its rows were queued: nothing to keep them for.
            self._log.warning("batch_discarded_deleted_session", target=target)
            return
        if isinstance(error, LeaseLost):
            # Another node runs the session now: these rows are of a run that no longer counts.
            self._log.warning("batch_discarded_lease_lost", target=target, session_id=session_id)
            return
        # Data the database (or the driver) refuses will be refused again: the session that
        # owns it fails with the error, and writing goes on for every other session.
        self._log.error("batch_rejected", target=target, session_id=session_id, error=str(error))
        self._failures.setdefault(session_id, str(error))

    def take_failure(self, session_id: str) -> str | None:
        """Why rows of this session were refused, if any were (and forget it): the session ends
        `failed` with it once everything it queued is flushed."""
        return self._failures.pop(session_id, None)

    async def _commit(self, target: str, write: _Write) -> StoreError | None:
        """Commit with `write`; the store retries while it is away, so what comes back is the
        refusal, if any."""

        def retried(exc: BaseException, delay: float) -> None:
            self.stats.retries += 1
            self._log.warning("batch_retry", target=target, error=repr(exc), delay_s=delay)

        try:
            await write(on_retry=retried)
        except StoreError as exc:
            return exc
        except Exception as exc:
            # A bug, not the data: still only this batch's owner pays for it, not the writer
            # every session shares.
            self._log.exception("batch_failed", target=target)
            return RowsRefused(f"{type(exc).__name__}: {exc}")
        return None
