"""The schema on a database other nodes are using: a daemon that starts beside running ones
applies nothing that is applied already, so it takes no lock their writes wait on (a second
node once deadlocked on ALTER TABLE against a running node's claim)."""

from __future__ import annotations

import asyncio
import hashlib
from importlib import resources

import asyncpg

from supervisor import db


async def test_a_schema_applied_already_locks_nothing(db_url):
    pool = await db.create_pool(db_url)
    try:
        await db.apply_schema(pool)
        text = resources.files("supervisor").joinpath("schema.sql").read_text()
        conn = await asyncpg.connect(db_url)
        try:
            marks = await conn.fetch("SELECT sha256 FROM schema_applied")
            assert [m["sha256"] for m in marks] == [hashlib.sha256(text.encode()).hexdigest()]
            # A running node's transaction writing sessions, held open.
            async with conn.transaction():
                await conn.execute("LOCK TABLE sessions IN ROW EXCLUSIVE MODE")
                # Another node starts: its schema step ends without waiting on that writer. (A
                # hang bound, not a timing: ALTER TABLE would wait for the writer forever.)
                async with asyncio.timeout(60):
                    await db.apply_schema(pool)
        finally:
            await conn.close()
    finally:
        await pool.close()
