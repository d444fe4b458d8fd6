"""Figure 5: the writer. The sample rows of 32 concurrent sessions (one sample per step) are
produced by a real daemon run first. Then, in this process and on the same database, the same
rows are committed twice over, alternately, into the (emptied) samples table:

- bare: asyncpg `copy_records_to_table` in batches of the writer's batch size;
- writer: the daemon's own WriterActor with its default settings, fed by 32 concurrent producer
  tasks that each hand over one row at a time, until every row is committed. That is how a
  stepped session hands over its rows, and the writer's worst case: a running session hands
  over each slice's rows at once.

Rows per second of each, median of `--runs`; the ratio is writer / bare. Replaying the rows
measures the writer itself: in the daemon run, 32 SUMO processes hold both cores and the writer's
rate is only the rate the sessions produce rows at.

    python -m bench.writer [--runs 5] [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from actors.store import SAMPLE_COLUMNS
from bench.common import start_daemon
from supervisor import db
from supervisor.app import make_writer
from supervisor.config import Config
from supervisor.pgstore import PgStore
from tests.harness.http import create_session, upload, wait_all
from tests.harness.scenarios import grid_scenario


async def bare_copy(pool: asyncpg.Pool, rows: list[tuple[Any, ...]], batch: int) -> float:
    start = time.perf_counter()
    async with pool.acquire() as conn:
        for i in range(0, len(rows), batch):
            await conn.copy_records_to_table(
                "samples", records=rows[i : i + batch], columns=list(SAMPLE_COLUMNS)
            )
    return time.perf_counter() - start


async def through_writer(pool: asyncpg.Pool, per_session: list[list[tuple[Any, ...]]]) -> float:
    writer = make_writer(Config(), PgStore(pool))

    async def produce(rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            await writer.write(row)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        run = tg.create_task(writer.run())
        async with asyncio.TaskGroup() as producers:
            for rows in per_session:
                producers.create_task(produce(rows))
        await writer.close()
        await run
    return time.perf_counter() - start


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    n = 4 if args.small else 32
    runs = 1 if args.small else args.runs
    work = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    end = 200 if args.small else 1200
    scn = grid_scenario(work / "scn", grid=4, length=200, end=end, period=1.0, min_distance=300)
    daemon = start_daemon(work / "state", "--max-running", "32")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon, "bench", scn)
            ids = [
                (await create_session(http, daemon, template="bench", seed=i, sample_every=1))["id"]
                for i in range(n)
            ]
            await wait_all(http, daemon.url, ids, {"completed"}, poll_s=0.2)
        url = os.environ.get("DATABASE_URL") or _embedded_url(work / "state")
        pool = await db.create_pool(url)
        try:
            cols = ", ".join(SAMPLE_COLUMNS)
            records = await pool.fetch(
                f"SELECT {cols} FROM samples WHERE session_id = ANY($1) ORDER BY sim_time", ids
            )
            rows = [tuple(r) for r in records]
            per_session = [[r for r in rows if r[0] == i] for i in ids]
            bare: list[float] = []
            ours: list[float] = []
            for _ in range(runs):
                for times, fn in (
                    (bare, lambda: bare_copy(pool, rows, Config().writer_batch_rows)),
                    (ours, lambda: through_writer(pool, per_session)),
                ):
                    await pool.execute("DELETE FROM samples WHERE session_id = ANY($1)", ids)
                    await pool.execute("VACUUM samples")
                    times.append(await fn())
                    stored = await pool.fetchval(
                        "SELECT count(*) FROM samples WHERE session_id = ANY($1)", ids
                    )
                    assert stored == len(rows), (stored, len(rows))
        finally:
            await pool.close()
    finally:
        daemon.stop()
    theirs = len(rows) / statistics.median(bare)
    mine = len(rows) / statistics.median(ours)
    print(f"writer: {len(rows):,} sample rows of {n} sessions, median of {runs}")
    print(
        f"bare asyncpg COPY {theirs:,.0f} rows/s; writer actor {mine:,.0f} rows/s; "
        f"ratio {mine / theirs:.2f} (target >= 0.8)"
    )


def _embedded_url(state: Path) -> str:
    # Join the daemon's embedded server; whichever of us ends last stops it.
    import pgserver

    return str(pgserver.get_server(state / "pgdata", cleanup_mode="stop").get_uri())


if __name__ == "__main__":
    asyncio.run(main())
