"""The actors' store on PostgreSQL (actors/store.py's Store, over an asyncpg pool).

The named queries the actors need live here, one method each; the reads the API shares with
them stay in supervisor/db.py and are called from here. Retries follow supervisor/pgretry.py,
with this store's budget (`retry_s`) for the writes that wait for the database, and no end for
the writer's bulk writes. The database's own errors never reach the actors: a refused bulk
write is RowsRefused or SessionGone.
"""

from __future__ import annotations

import asyncio
import io
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from actors.lifecycle import ACTIVE, INITIAL, NOW, UPDATABLE, Status
from actors.scenario import TemplateFile
from actors.store import (
    RECORD_TABLES,
    Claimed,
    Lapsed,
    Lease,
    LeaseLost,
    Mark,
    NewSession,
    NewSweep,
    Node,
    RecordedCommand,
    RetryHook,
    Row,
    RowsRefused,
    SessionGone,
    SessionRecord,
    Store,
    partition_name,
)
from supervisor import db
from supervisor.pgretry import while_connected, with_retry

T = TypeVar("T")

# How long a write that waits for the database (a status, a session's setup) waits by default
# before it fails.
RETRY_S = 120.0
# How long the writer waits for a pool connection before that counts as the database away.
ACQUIRE_TIMEOUT_S = 10.0

_ACTIVE = sorted(str(s) for s in ACTIVE)
# Released leases remembered, the oldest forgotten first: far more than a writer's queue holds.
RELEASED_KEPT = 10_000
_SESSION_RECORD = (
    "s.id, s.status, s.request, s.template_name, s.template_version, s.pid, s.pid_started_at,"
    " s.attempt"
)
_COLUMN = re.compile(r"^[a-z_][a-z0-9_]*$")
# Refusals that mean the owning session was deleted while its rows were queued.
_SESSION_GONE = (
    asyncpg.exceptions.ForeignKeyViolationError,
    asyncpg.exceptions.UndefinedTableError,
)


class PgStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        retry_s: float = RETRY_S,
        lease_pool: asyncpg.Pool | None = None,
    ) -> None:
        self._pool = pool
        self._retry_s = retry_s
        # Renewals and the lapsed read on connections of their own: behind a busy pool (exports,
        # a claim's partition DDL) a healthy node would miss its renewals and fence itself.
        self._lease_pool = lease_pool or pool
        # The sessions this node claimed and still runs: every write for one is fenced by its
        # lease (actors/store.py). Those it ran and released are remembered a while: a late
        # write of theirs (a batch the writer still retries) is refused, not let through.
        self._leases: dict[str, Lease] = {}
        self._released: OrderedDict[str, Lease] = OrderedDict()

    async def _fence(self, conn: asyncpg.Connection, session_id: str) -> None:
        """Raise LeaseLost unless this node still holds the session (when it claimed it). The
        row is KEY SHARE locked to the transaction's end, so a rescuer, which locks it FOR
        UPDATE first, waits for the write or the write sees the rescue."""
        if session_id not in self._leases and session_id in self._released:
            raise LeaseLost(f"session {session_id}: its run here has ended")
        lease = self._leases.get(session_id)
        if lease is not None and not await conn.fetchval(
            "SELECT true FROM sessions WHERE id = $1 AND owner_node IS NOT DISTINCT FROM $2"
            " AND lease_epoch = $3 FOR KEY SHARE",
            session_id,
            lease.node_id,
            lease.epoch,
        ):
            raise LeaseLost(f"session {session_id}: lease {lease.epoch} is no longer held")

    async def _fenced_out(self, conn: asyncpg.Connection, session_ids: Iterable[str]) -> set[str]:
        """Of `session_ids`, those this node claimed but no longer holds (see _fence)."""
        ids = set(session_ids)
        ended = {i for i in ids if i not in self._leases and i in self._released}
        held = {i: self._leases[i] for i in ids if i in self._leases}
        if not held:
            return ended
        rows = await conn.fetch(
            "SELECT s.id FROM sessions s JOIN unnest($1::text[], $2::bigint[]) AS l(id, epoch)"
            " ON s.id = l.id AND s.lease_epoch = l.epoch"
            " WHERE s.owner_node IS NOT DISTINCT FROM $3 FOR KEY SHARE OF s",
            list(held),
            [lease.epoch for lease in held.values()],
            next(iter(held.values())).node_id,
        )
        return ended | (set(held) - {r["id"] for r in rows})

    async def _retrying(
        self, op: Callable[[], Awaitable[T]], what: str, retry_s: float | None = None
    ) -> T:
        return await with_retry(
            op, what=what, deadline_s=self._retry_s if retry_s is None else retry_s
        )

    # ---- templates -----------------------------------------------------------------------------

    async def fetch_template_files(self, name: str, version: int) -> list[TemplateFile]:
        rows = await self._retrying(
            lambda: self._pool.fetch(
                "SELECT path, sha256, content FROM template_files WHERE name = $1 AND version = $2",
                name,
                version,
            ),
            "template_files",
        )
        return [TemplateFile(r["path"], r["sha256"], bytes(r["content"])) for r in rows]

    # ---- sessions and their status -------------------------------------------------------------

    async def insert_sessions(
        self, sessions: Sequence[NewSession], sweep: NewSweep | None = None
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            if sweep is not None:
                await conn.execute(
                    "INSERT INTO sweeps (id, request) VALUES ($1, $2)", sweep.id, sweep.request
                )
            await conn.executemany(
                "INSERT INTO sessions (id, template_name, template_version, status, request,"
                " label, end_time, sweep_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (s.id, s.template_name, s.template_version, INITIAL, s.request, s.label,
                     s.end_time, s.sweep_id)
                    for s in sessions
                ],
            )  # fmt: skip
            await conn.executemany(
                "INSERT INTO session_events (session_id, status, reason) VALUES ($1, $2, $3)",
                [(s.id, INITIAL, "submitted") for s in sessions],
            )

    async def get_status(self, session_id: str) -> Status | None:
        status = await self._pool.fetchval("SELECT status FROM sessions WHERE id = $1", session_id)
        return None if status is None else Status(status)

    async def count_queued(self) -> int:
        return int(
            await self._pool.fetchval("SELECT count(*) FROM sessions WHERE status = 'queued'")
        )

    async def set_status(
        self,
        session_id: str,
        to: Status,
        reason: str,
        *,
        only_from: frozenset[Status],
        fields: Mapping[str, Any],
        retry_s: float | None = None,
        fence: Lease | None = None,
    ) -> bool:
        sets = ["status = $3"]
        args: list[Any] = [session_id, sorted(str(s) for s in only_from), str(to)]
        for key, value in fields.items():
            # Column names are written into the statement: only known ones.
            if key not in UPDATABLE:
                raise ValueError(f"not updatable: {key}")
            if value is NOW:
                sets.append(f"{key} = clock_timestamp()")
            else:
                args.append(value)
                sets.append(f"{key} = ${len(args)}")
        if to not in ACTIVE:
            sets.append("owner_node = NULL, lease_expires_at = NULL")
        own = fence is None
        lease = self._leases.get(session_id) if own else fence
        where = "id = $1 AND status = ANY($2::text[])"
        if lease is not None:
            args += [lease.node_id, lease.epoch]
            where += f" AND owner_node IS NOT DISTINCT FROM ${len(args) - 1}"
            where += f" AND lease_epoch = ${len(args)}"
        tries = 0

        async def op() -> bool:
            nonlocal tries
            tries += 1
            async with self._pool.acquire() as conn, conn.transaction():
                if not own:
                    # A rescuer: wait for the owner's writes in flight (they hold KEY SHARE).
                    await conn.execute(
                        "SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", session_id
                    )
                # The status in the WHERE is the transition check (lifecycle.transition), the
                # owner and epoch the fence.
                changed = await conn.fetchval(
                    f"UPDATE sessions SET {', '.join(sets)} WHERE {where} RETURNING true", *args
                )
                if not changed:
                    now = await conn.fetchrow(
                        "SELECT status, owner_node, lease_epoch FROM sessions WHERE id = $1",
                        session_id,
                    )
                    # A retry that finds the status already written: the earlier try committed
                    # it and only its answer was lost.
                    if now is not None and tries > 1 and now["status"] == to:
                        return True
                    if (
                        now is not None
                        and lease is not None
                        and now["status"] in only_from
                        and (now["owner_node"], now["lease_epoch"]) != (lease.node_id, lease.epoch)
                    ):
                        raise LeaseLost(f"session {session_id}: lease {lease.epoch} is lost")
                    return False
                await conn.execute(
                    "INSERT INTO session_events (session_id, status, reason) VALUES ($1, $2, $3)",
                    session_id,
                    str(to),
                    reason,
                )
                return True

        # A lost lease stays remembered (until `release`): every later write of that run is
        # fenced by it too.
        written = await self._retrying(op, f"session_status:{to}", retry_s)
        if written and own and to not in ACTIVE and session_id in self._leases:
            self.release(session_id)
        return written

    async def set_process(
        self, session_id: str, port: int, pid: int | None, pid_started_at: float | None
    ) -> None:
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                await conn.execute(
                    "UPDATE sessions SET port = $2, pid = $3, pid_started_at = $4 WHERE id = $1",
                    session_id,
                    port,
                    pid,
                    pid_started_at,
                )

        await self._retrying(op, "session_process")

    # ---- a session's rows ----------------------------------------------------------------------

    async def clear_session_rows(self, session_id: str) -> None:
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                await conn.execute("DELETE FROM samples WHERE session_id = $1", session_id)
                await conn.execute("DELETE FROM ingest_marks WHERE session_id = $1", session_id)
                await conn.execute(
                    "DELETE FROM session_statistics WHERE session_id = $1", session_id
                )
                await conn.execute("DELETE FROM session_totals WHERE session_id = $1", session_id)
                for table in RECORD_TABLES.values():
                    part = partition_name(table, session_id)
                    await conn.execute(f'DROP TABLE IF EXISTS "{part}"')

        await self._retrying(op, "clear_session_rows")

    async def create_record_partitions(self, session_id: str, tables: Iterable[str]) -> None:
        tables = list(tables)

        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                for table in tables:
                    part = partition_name(table, session_id)
                    await conn.execute(
                        f'CREATE TABLE IF NOT EXISTS "{part}" PARTITION OF {table}'
                        f" FOR VALUES IN ('{session_id}')"
                    )
                    # COPY into the partition leaves session_id out; the default fills it in.
                    await conn.execute(
                        f"ALTER TABLE \"{part}\" ALTER COLUMN session_id SET DEFAULT '{session_id}'"
                    )
                    if table == "trajectories":
                        # Rows arrive in time order: a BRIN index costs almost nothing to keep.
                        await conn.execute(
                            f'CREATE INDEX IF NOT EXISTS "{part}_time" ON "{part}"'
                            " USING brin (time)"
                        )

        await self._retrying(op, "create_partitions")

    async def store_statistics(self, session_id: str, statistics: dict[str, Any]) -> None:
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                await conn.execute(
                    "INSERT INTO session_statistics (session_id, statistics) VALUES ($1, $2)"
                    " ON CONFLICT (session_id) DO UPDATE SET statistics = EXCLUDED.statistics",
                    session_id,
                    statistics,
                )

        await self._retrying(op, "store_session_statistics")

    async def keep_totals(self, session_id: str) -> None:
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                await conn.execute(db.KEEP_TOTALS_SQL, session_id)

        await self._retrying(op, "keep_session_totals")

    async def add_commands(
        self, session_id: str, sim_time: float, commands: Sequence[dict[str, Any]]
    ) -> None:
        async def op() -> None:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, session_id)
                first = await conn.fetchval(
                    "SELECT coalesce(max(seq), 0) + 1 FROM session_commands WHERE session_id = $1",
                    session_id,
                )
                await conn.executemany(
                    "INSERT INTO session_commands (session_id, seq, sim_time, command)"
                    " VALUES ($1, $2, $3, $4)",
                    [(session_id, first + i, sim_time, c) for i, c in enumerate(commands)],
                )

        await self._retrying(op, "session_commands")

    async def session_commands(self, session_id: str) -> list[RecordedCommand]:
        return [
            RecordedCommand(r["seq"], r["sim_time"], r["command"])
            for r in await db.session_commands(self._pool, session_id)
        ]

    # ---- nodes, claims and leases --------------------------------------------------------------

    async def register_node(self, node: Node) -> None:
        await self._retrying(
            lambda: self._pool.execute(
                "WITH gone AS (DELETE FROM nodes WHERE stopped_at < now() - interval '7 days')"
                " INSERT INTO nodes (id, name, api_url, capacity, boot_id, pid)"
                " VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (id) DO UPDATE SET api_url = EXCLUDED.api_url,"
                " heartbeat_at = now()",
                node.id,
                node.name,
                node.api_url,
                node.capacity,
                node.boot_id,
                node.pid,
            ),
            "register_node",
        )

    async def node_stopped(self, node_id: str) -> None:
        await self._pool.execute(
            "UPDATE nodes SET stopped_at = now(), draining = false WHERE id = $1", node_id
        )

    async def set_draining(self, node_id: str) -> None:
        await self._pool.execute("UPDATE nodes SET draining = true WHERE id = $1", node_id)

    async def dead_nodes(self, boot_id: str, alive: Callable[[int], bool]) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT id, pid FROM nodes WHERE boot_id = $1 AND stopped_at IS NULL", boot_id
        )
        # `alive` reads /proc: off the event loop.
        dead = await asyncio.to_thread(lambda: [r["id"] for r in rows if not alive(r["pid"])])
        if dead:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE nodes SET stopped_at = now() WHERE id = ANY($1::text[])", dead
                )
                await conn.execute(
                    "UPDATE sessions SET lease_expires_at = now() - interval '1 second'"
                    " WHERE owner_node = ANY($1::text[]) AND status = ANY($2::text[])",
                    dead,
                    _ACTIVE,
                )
        return dead

    async def claim(
        self, node_id: str, limit: int, ttl_s: float, exclude: Collection[str] = ()
    ) -> list[Claimed]:
        if limit <= 0:
            return []
        # SKIP LOCKED: nodes claiming at the same moment each take other sessions, none waits.
        rows = await self._pool.fetch(
            "WITH picked AS ("
            "  SELECT id FROM sessions WHERE status = 'queued' AND NOT (id = ANY($4::text[]))"
            "  ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"
            "), claimed AS ("
            "  UPDATE sessions s SET status = 'starting', owner_node = $1,"
            "   lease_epoch = s.lease_epoch + 1, started_at = clock_timestamp(),"
            "   lease_expires_at = now() + make_interval(secs => $3)"
            "  FROM picked WHERE s.id = picked.id"
            f"  RETURNING {_SESSION_RECORD}, s.lease_epoch"
            "), events AS ("
            "  INSERT INTO session_events (session_id, status, reason)"
            "  SELECT id, 'starting', 'claimed by node ' || $1 || ' (attempt ' || attempt || ')'"
            "  FROM claimed"
            ")"
            " SELECT s.*, v.config_path FROM claimed s JOIN template_versions v"
            "  ON v.name = s.template_name AND v.version = s.template_version ORDER BY s.id",
            node_id,
            limit,
            ttl_s,
            list(exclude),
        )
        out = []
        for r in rows:
            lease = Lease(node_id, r["lease_epoch"])
            self._released.pop(r["id"], None)
            self._leases[r["id"]] = lease
            out.append(Claimed(SessionRecord.of(r), r["config_path"], lease))
        return out

    async def renew(self, node_id: str, ttl_s: float, held: Mapping[str, int]) -> set[str]:
        rows = await self._lease_pool.fetch(
            "WITH beat AS (UPDATE nodes SET heartbeat_at = now() WHERE id = $1)"
            " UPDATE sessions s SET lease_expires_at = now() + make_interval(secs => $2)"
            " FROM unnest($3::text[], $4::bigint[]) AS h(id, epoch)"
            " WHERE s.id = h.id AND s.owner_node = $1 AND s.lease_epoch = h.epoch"
            " AND s.status = ANY($5::text[]) RETURNING s.id",
            node_id,
            ttl_s,
            list(held),
            list(held.values()),
            _ACTIVE,
        )
        return {r["id"] for r in rows}

    async def lapsed(self, limit: int) -> list[Lapsed]:
        rows = await self._lease_pool.fetch(
            f"SELECT {_SESSION_RECORD}, s.owner_node, s.lease_epoch, n.name, n.boot_id"
            " FROM sessions s LEFT JOIN nodes n ON n.id = s.owner_node"
            " WHERE s.status = ANY($1::text[])"
            " AND (s.lease_expires_at IS NULL OR s.lease_expires_at < now())"
            " ORDER BY s.id LIMIT $2",
            _ACTIVE,
            limit,
        )
        return [
            Lapsed(
                SessionRecord.of(r),
                Lease(r["owner_node"], r["lease_epoch"]),
                r["name"],
                r["boot_id"],
            )
            for r in rows
        ]

    def release(self, session_id: str) -> None:
        lease = self._leases.pop(session_id, None)
        if lease is not None:
            self._released[session_id] = lease
            while len(self._released) > RELEASED_KEPT:
                self._released.popitem(last=False)

    def released(self) -> Collection[str]:
        return self._released.keys()

    # ---- bulk writes ---------------------------------------------------------------------------

    async def copy_rows(
        self,
        target: str,
        columns: Sequence[str],
        rows: Sequence[Row],
        mark: Mark | None = None,
        *,
        on_retry: RetryHook | None = None,
    ) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            todo = rows
            if target == "samples":
                # Rows of many sessions: those of a session this node lost are left out.
                if lost := await self._fenced_out(conn, {str(r[0]) for r in rows}):
                    todo = [r for r in rows if str(r[0]) not in lost]
            if todo:
                await _copy_records(conn, target, columns, todo)

        await self._bulk(target, op, mark, on_retry)

    async def copy_csv(
        self,
        target: str,
        columns: Sequence[str],
        data: bytes,
        *,
        required: str | None = None,
        mark: Mark | None = None,
        on_retry: RetryHook | None = None,
    ) -> None:

        if required is not None and not _COLUMN.match(required):
            raise ValueError(f"bad column name {required!r}")  # it is written into the WHERE

        async def op(conn: asyncpg.Connection) -> None:
            await conn.copy_to_table(
                target,
                source=io.BytesIO(data),
                columns=list(columns),
                format="csv",
                delimiter=";",
                null="",
                where=None if required is None else f"{required} IS NOT NULL",
            )

        await self._bulk(target, op, mark, on_retry)

    async def _bulk(
        self,
        target: str,
        op: Callable[[asyncpg.Connection], Awaitable[None]],
        mark: Mark | None,
        on_retry: RetryHook | None,
    ) -> None:
        """Commit `op` (at most once per `mark`), retrying for as long as the database is
        away: the writer never drops rows it could still write."""

        async def attempt() -> None:
            async with (
                self._pool.acquire(timeout=ACQUIRE_TIMEOUT_S) as conn,
                while_connected(conn),
                conn.transaction(),
            ):
                if mark is not None:
                    await self._fence(conn, mark.session_id)
                    if await _ingest_mark(conn, mark.session_id, target) >= mark.seq:
                        return  # an earlier try committed these; only its answer was lost
                    await op(conn)
                    await _set_ingest_mark(conn, mark.session_id, target, mark.seq)
                else:
                    await op(conn)

        try:
            await with_retry(attempt, what=f"copy:{target}", deadline_s=math.inf, on_retry=on_retry)
        except LeaseLost:
            raise
        except _SESSION_GONE as exc:
            raise SessionGone(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # Not transient (those are retried): the same rows would be refused again.
            raise RowsRefused(f"{type(exc).__name__}: {exc}") from exc


async def _copy_records(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: Sequence[Row]
) -> None:
    try:
        async with conn.transaction():  # a savepoint: the slow path below may follow it
            await conn.copy_records_to_table(table, records=rows, columns=list(columns))
    except asyncpg.exceptions.UniqueViolationError:
        if table != "samples":
            raise
        # A rerun wrote some of these before; keep the rest.
        values = ", ".join(f"${i + 1}" for i in range(len(columns)))
        await conn.executemany(
            f"INSERT INTO samples ({', '.join(columns)}) VALUES ({values}) ON CONFLICT DO NOTHING",
            rows,
        )


async def _ingest_mark(conn: asyncpg.Connection, session_id: str, target: str) -> int:
    """The sequence number of the last chunk committed into `target`; -1 before the first."""
    seq = await conn.fetchval(
        "SELECT seq FROM ingest_marks WHERE session_id = $1 AND target = $2 FOR UPDATE",
        session_id,
        target,
    )
    return -1 if seq is None else int(seq)


async def _set_ingest_mark(
    conn: asyncpg.Connection, session_id: str, target: str, seq: int
) -> None:
    await conn.execute(
        "INSERT INTO ingest_marks (session_id, target, seq) VALUES ($1, $2, $3)"
        " ON CONFLICT (session_id, target) DO UPDATE SET seq = excluded.seq",
        session_id,
        target,
        seq,
    )


if TYPE_CHECKING:
    # mypy holds the class to the protocol here, where no caller would.
    _conforms: Store = PgStore(None)
