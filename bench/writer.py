"""Figure 5: the writer. Sample rows from 32 concurrent sessions (one sample per step), committed
by the writer: rows per second of the writer's own commit time, against a bare asyncpg COPY of
the same rows, in the same batch size, into a scratch table, in the same run.

    python bench/writer.py [--small]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from common import Daemon, build_scenario, create, metric, upload, wait_all

BATCH = 5000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--small", action="store_true")
    args = parser.parse_args()
    n = 4 if args.small else 32
    work = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    end = 200 if args.small else 1200
    cfg = build_scenario(work / "scn", grid=4, length=200, end=end, period=1.0, min_distance=300)
    daemon = Daemon(work / "state", "--max-running", "32")
    try:
        async with aiohttp.ClientSession() as http:
            await upload(http, daemon.url, cfg)
            ids = [
                await create(http, daemon.url, template="bench", seed=i, sample_every=1)
                for i in range(n)
            ]
            await wait_all(http, daemon.url, ids, {"completed"}, poll_s=0.2)
            rows = await metric(http, daemon.url, "sumo_writer_rows_total")
            busy = await metric(http, daemon.url, "sumo_writer_batch_seconds_sum")
        url = os.environ.get("DATABASE_URL") or _embedded_url(work / "state")
        conn = await asyncpg.connect(url)
        try:
            records = await conn.fetch("SELECT * FROM samples WHERE session_id = ANY($1)", ids)
            records = [tuple(r) for r in records]
            await conn.execute("CREATE TEMP TABLE scratch (LIKE samples INCLUDING ALL)")
            columns = list((await conn.fetchrow("SELECT * FROM samples LIMIT 1")).keys())
            start = time.perf_counter()
            for i in range(0, len(records), BATCH):
                await conn.copy_records_to_table(
                    "scratch", records=records[i : i + BATCH], columns=columns
                )
            bare = time.perf_counter() - start
        finally:
            await conn.close()
    finally:
        daemon.stop()
    ours = rows / busy
    theirs = len(records) / bare
    print(f"writer: {int(rows)} sample rows from {n} concurrent sessions")
    print(
        f"writer {ours:,.0f} rows/s of commit time; bare asyncpg COPY {theirs:,.0f} rows/s; "
        f"ratio {ours / theirs:.2f} (target >= 0.8)"
    )


def _embedded_url(state: Path) -> str:
    # Join the daemon's embedded server; whichever of us ends last stops it.
    import pgserver

    return str(pgserver.get_server(state / "pgdata", cleanup_mode="stop").get_uri())


if __name__ == "__main__":
    asyncio.run(main())
