"""Database access: the pool, the schema, and one named function per query."""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog

from actors.scenario import TemplateFile

log = structlog.get_logger(component="db")

T = TypeVar("T")

# Errors after which the same statement can succeed later: the server restarted or is unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)


def is_transient(exc: BaseException) -> bool:
    """True for errors after which the same statement can succeed later. A connection that
    closed under an open transaction surfaces as a plain InterfaceError from asyncpg (it has no
    class of its own), so that one is told by its message."""
    return isinstance(exc, TRANSIENT_ERRORS) or (
        isinstance(exc, asyncpg.exceptions.InterfaceError) and "connection is closed" in str(exc)
    )


SAMPLE_COLUMNS = (
    "session_id",
    "sim_time",
    "vehicles",
    "departed",
    "arrived",
    "mean_speed",
    "halting",
    "waiting_time",
    "teleports",
)
# A sample as the API shows it: the row without its session.
_SAMPLE_FIELDS = ", ".join(SAMPLE_COLUMNS[1:])

# Tables with one partition per recording session, and what `record` names them.
RECORD_TABLES = {"trajectories": "trajectories", "trips": "trips", "edges": "edge_data"}
_SAFE_ID = re.compile(r"^[0-9a-z][0-9a-z_-]{0,80}$")

ACTIVE_STATUSES = ("starting", "running")
FINAL_STATUSES = ("completed", "failed", "stopped", "timed_out")


def _jsonb_text(value: Any) -> str:
    return orjson.dumps(value).decode()


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=_jsonb_text, decoder=orjson.loads, schema="pg_catalog"
    )


async def create_pool(
    url: str, *, max_size: int = 10, command_timeout: float = 60.0
) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        init=_init_connection,
        command_timeout=command_timeout,
    )


async def apply_schema(pool: asyncpg.Pool) -> None:
    sql = resources.files("supervisor").joinpath("schema.sql").read_text()
    async with pool.acquire() as conn, conn.transaction():
        # Two daemons starting against one database must not race on CREATE ... IF NOT EXISTS.
        await conn.execute("SELECT pg_advisory_xact_lock(8750)")
        await conn.execute(sql)


# How long one step of a session (or of start-up) waits for the database before it fails.
RETRY_S = 120.0


async def with_retry(
    op: Callable[[], Awaitable[T]], *, what: str, deadline_s: float | None = None
) -> T:
    """Run `op`, retrying transient database errors with backoff until `deadline_s` (RETRY_S
    if not given) has passed; `math.inf` retries until the database answers."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + (RETRY_S if deadline_s is None else deadline_s)
    delay = 0.1
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc) or loop.time() + delay > give_up:
                raise
            log.warning("db_retry", what=what, error=repr(exc), delay_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


# Far above any one COPY the daemon makes (a writer batch, a template's files).
COPY_TIMEOUT_S = 300.0


@contextlib.asynccontextmanager
async def while_connected(
    conn: asyncpg.Connection, timeout_s: float = COPY_TIMEOUT_S
) -> AsyncIterator[None]:
    """End the work on `conn` as soon as the connection is lost, or after `timeout_s`, with an
    error `is_transient` knows. For COPY: asyncpg waits for the socket to drain with no timeout
    of its own, and a connection lost while the server was not reading (shutting down, say)
    never wakes that wait, so a COPY cut off by a database restart would wait forever. After a
    timeout the connection is closed: it may be mid-COPY, and must not go back to the pool."""
    loop = asyncio.get_running_loop()
    inside = True
    lost = False
    try:
        async with asyncio.timeout(timeout_s) as deadline:

            def on_lost(_conn: object) -> None:
                nonlocal lost
                lost = True
                if inside and not deadline.expired():
                    deadline.reschedule(loop.time())

            conn.add_termination_listener(on_lost)
            try:
                yield
            finally:
                inside = False
                # A lost connection has dropped its listeners already, and its pool proxy too.
                with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                    conn.remove_termination_listener(on_lost)
    except Exception as exc:
        if lost:
            # Whatever the unwinding raised (a transaction cannot roll back on a closed
            # connection), the cause is the lost connection.
            raise asyncpg.exceptions.ConnectionDoesNotExistError(
                "the connection was lost mid-operation"
            ) from exc
        if isinstance(exc, TimeoutError):
            with contextlib.suppress(asyncpg.exceptions.InterfaceError):
                conn.terminate()
        raise


async def ping(pool: asyncpg.Pool) -> None:
    async with pool.acquire(timeout=2) as conn:
        await conn.fetchval("SELECT 1", timeout=2)


# ---- templates ---------------------------------------------------------------------------------


# pg_advisory_xact_lock key serializing uploads while a template quota is checked.
TEMPLATE_QUOTA_LOCK = 0x53554D4F


class QuotaExceeded(Exception):
    """Storing `adding` more would take `quota`'s total past `limit` (`used` is taken)."""

    def __init__(self, quota: str, limit: int, used: int, adding: int) -> None:
        super().__init__(f"{quota}: {used} + {adding} > {limit}")
        self.quota, self.limit, self.used, self.adding = quota, limit, used, adding


async def insert_template_version(
    pool: asyncpg.Pool,
    name: str,
    config_path: str,
    sha256: str,
    files: Sequence[TemplateFile],
    *,
    max_total_bytes: int = 0,
) -> int:
    """Store a new immutable version of `name`; returns its version number. Raises
    QuotaExceeded when all templates' files would take more than `max_total_bytes` (0: no
    quota)."""
    size = sum(len(f.content) for f in files)
    async with pool.acquire() as conn, while_connected(conn), conn.transaction():
        if max_total_bytes:
            # One upload at a time past this point, so two cannot both fit in the same room.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", TEMPLATE_QUOTA_LOCK)
            # total_bytes is each version's sum of template_files.size, kept beside it so this
            # reads one small row per version, not every file's row.
            used = await conn.fetchval(
                "SELECT coalesce(sum(total_bytes), 0) FROM template_versions"
            )
            if used + size > max_total_bytes:
                raise QuotaExceeded("max_template_bytes", max_total_bytes, int(used), size)
        await conn.execute(
            "INSERT INTO templates (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name
        )
        # Row lock: concurrent uploads of one name get consecutive versions, not a clash.
        await conn.execute("SELECT 1 FROM templates WHERE name = $1 FOR UPDATE", name)
        version: int = await conn.fetchval(
            "UPDATE templates SET last_version = 1 + greatest(last_version,"
            " (SELECT coalesce(max(version), 0) FROM template_versions WHERE name = $1))"
            " WHERE name = $1 RETURNING last_version",
            name,
        )
        await conn.execute(
            "INSERT INTO template_versions (name, version, config_path, sha256, total_bytes)"
            " VALUES ($1, $2, $3, $4, $5)",
            name,
            version,
            config_path,
            sha256,
            size,
        )
        await conn.copy_records_to_table(
            "template_files",
            records=[(name, version, f.path, f.sha256, len(f.content), f.content) for f in files],
            columns=("name", "version", "path", "sha256", "size", "content"),
        )
        return version


async def list_templates(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT t.name, t.created_at, v.version AS latest_version, v.sha256, v.config_path,
                  v.created_at AS updated_at,
                  (SELECT count(*) FROM template_versions WHERE name = t.name) AS versions
             FROM templates t
             JOIN LATERAL (SELECT * FROM template_versions WHERE name = t.name
                            ORDER BY version DESC LIMIT 1) v ON true
            ORDER BY t.name"""
    )
    return [dict(r) for r in rows]


async def get_template(pool: asyncpg.Pool, name: str) -> dict[str, Any] | None:
    versions = await pool.fetch(
        "SELECT version, config_path, sha256, total_bytes, created_at FROM template_versions"
        " WHERE name = $1 ORDER BY version",
        name,
    )
    if not versions:
        return None
    files = await pool.fetch(
        "SELECT version, path, sha256, size FROM template_files WHERE name = $1"
        " ORDER BY version, path",
        name,
    )
    by_version: dict[int, list[dict[str, Any]]] = {}
    for f in files:
        by_version.setdefault(f["version"], []).append(
            {"path": f["path"], "sha256": f["sha256"], "size": f["size"]}
        )
    return {
        "name": name,
        "versions": [dict(v) | {"files": by_version.get(v["version"], [])} for v in versions],
    }


async def resolve_template_version(
    pool: asyncpg.Pool, name: str, version: int | None
) -> dict[str, Any] | None:
    """The requested version of a template (the latest when `version` is None), without files."""
    row = await pool.fetchrow(
        "SELECT name, version, config_path, sha256 FROM template_versions WHERE name = $1"
        " AND ($2::int IS NULL OR version = $2) ORDER BY version DESC LIMIT 1",
        name,
        version,
    )
    return dict(row) if row else None


async def fetch_template_files(pool: asyncpg.Pool, name: str, version: int) -> list[TemplateFile]:
    rows = await pool.fetch(
        "SELECT path, sha256, content FROM template_files WHERE name = $1 AND version = $2",
        name,
        version,
    )
    return [TemplateFile(r["path"], r["sha256"], bytes(r["content"])) for r in rows]


# ---- sessions ----------------------------------------------------------------------------------

_SESSION_FIELDS = """s.id, s.template_name, s.template_version, s.status, s.request, s.label,
    s.created_at, s.started_at, s.ended_at, s.end_time, s.port, s.pid, s.exit_code, s.cause,
    s.error,
    coalesce(s.sim_time, (SELECT max(sim_time) FROM samples WHERE session_id = s.id)) AS sim_time"""


@dataclass(frozen=True)
class NewSession:
    id: str
    template_name: str
    template_version: int
    request: dict[str, Any]
    label: str | None
    end_time: float | None
    sweep_id: str | None = None


async def insert_sessions(
    pool: asyncpg.Pool,
    sessions: Sequence[NewSession],
    sweep: tuple[str, dict[str, Any]] | None = None,
) -> None:
    """Queued sessions (and the sweep they make up): all of them, or none."""
    async with pool.acquire() as conn, conn.transaction():
        if sweep is not None:
            await conn.execute("INSERT INTO sweeps (id, request) VALUES ($1, $2)", *sweep)
        await conn.executemany(
            "INSERT INTO sessions (id, template_name, template_version, status, request, label,"
            " end_time, sweep_id) VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7)",
            [
                (s.id, s.template_name, s.template_version, s.request, s.label, s.end_time,
                 s.sweep_id)
                for s in sessions
            ],
        )  # fmt: skip
        await conn.executemany(
            "INSERT INTO session_events (session_id, status, reason) VALUES ($1, 'queued', $2)",
            [(s.id, "submitted") for s in sessions],
        )


# Columns a status change may set besides the status itself.
_UPDATABLE = frozenset(
    {
        "started_at",
        "ended_at",
        "end_time",
        "sim_time",
        "port",
        "pid",
        "pid_started_at",
        "exit_code",
        "cause",
        "error",
        "attempt",
    }
)


async def set_session_status(
    pool: asyncpg.Pool,
    session_id: str,
    status: str,
    reason: str,
    *,
    retry_s: float | None = None,
    **fields: Any,
) -> None:
    """Change a session's status, set `fields`, and record the change as an event, atomically.

    Timestamps named in `fields` with the value "now" are set by the database clock. Transient
    errors are retried for `retry_s` (see `with_retry`).
    """
    unknown = set(fields) - _UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    sets = ["status = $2"]
    args: list[Any] = [session_id, status]
    for key, value in fields.items():
        if value == "now":
            sets.append(f"{key} = clock_timestamp()")
        else:
            args.append(value)
            sets.append(f"{key} = ${len(args)}")

    async def op() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute(f"UPDATE sessions SET {', '.join(sets)} WHERE id = $1", *args)
            await conn.execute(
                "INSERT INTO session_events (session_id, status, reason) VALUES ($1, $2, $3)",
                session_id,
                status,
                reason,
            )

    await with_retry(op, what=f"session_status:{status}", deadline_s=retry_s)


async def set_session_process(
    pool: asyncpg.Pool, session_id: str, port: int, pid: int | None, pid_started_at: float | None
) -> None:
    async def op() -> None:
        await pool.execute(
            "UPDATE sessions SET port = $2, pid = $3, pid_started_at = $4 WHERE id = $1",
            session_id,
            port,
            pid,
            pid_started_at,
        )

    await with_retry(op, what="session_process")


async def get_session(pool: asyncpg.Pool, session_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {_SESSION_FIELDS} FROM sessions s WHERE s.id = $1", session_id
    )
    return dict(row) if row else None


async def list_sessions(
    pool: asyncpg.Pool, status: str | None, label: str | None, limit: int
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_SESSION_FIELDS} FROM sessions s"
        " WHERE ($1::text IS NULL OR s.status = $1) AND ($2::text IS NULL OR s.label = $2)"
        " ORDER BY s.id DESC LIMIT $3",
        status,
        label,
        limit,
    )
    return [dict(r) for r in rows]


async def session_events(pool: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT at, status, reason FROM session_events WHERE session_id = $1 ORDER BY id",
        session_id,
    )
    return [dict(r) for r in rows]


async def sessions_in_status(pool: asyncpg.Pool, statuses: Iterable[str]) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, status, request, template_name, template_version, end_time, pid,"
        " pid_started_at, attempt FROM sessions WHERE status = ANY($1::text[]) ORDER BY id",
        list(statuses),
    )
    return [dict(r) for r in rows]


# ---- samples -----------------------------------------------------------------------------------


async def insert_samples_skipping_duplicates(
    conn: asyncpg.Connection, rows: Sequence[tuple[Any, ...]]
) -> None:
    """Slow path when a COPY was refused: keep every row that can be kept."""
    await conn.executemany(
        f"INSERT INTO samples ({', '.join(SAMPLE_COLUMNS)})"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        rows,
    )


async def get_samples(
    pool: asyncpg.Pool, session_id: str, after: float | None, limit: int
) -> list[dict[str, Any]]:
    # `sim_time > -inf`, not `$2 IS NULL OR ...`: the prepared statement's generic plan could
    # not bound its index scan with the latter, and every page scanned from the first sample.
    rows = await pool.fetch(
        f"SELECT {_SAMPLE_FIELDS}"
        " FROM samples WHERE session_id = $1 AND sim_time > $2 ORDER BY sim_time LIMIT $3",
        session_id,
        -math.inf if after is None else after,
        limit,
    )
    return [dict(r) for r in rows]


# Readers take samples this many at a time (keyset on (session_id, sim_time), the primary key):
# a page is a few hundred kB in the daemon, whatever the session's size, and no connection is
# held between pages, so a slow reader holds nothing of the pool.
SAMPLE_PAGE = 2000


async def sample_pages(
    pool: asyncpg.Pool, session_id: str, after: float | None, limit: int | None
) -> AsyncIterator[list[dict[str, Any]]]:
    """The samples after `after` (all of them when None), at most `limit`, page by page."""
    left = limit
    while left is None or left > 0:
        want = SAMPLE_PAGE if left is None else min(SAMPLE_PAGE, left)
        rows = await get_samples(pool, session_id, after, want)
        if rows:
            yield rows
            after = rows[-1]["sim_time"]
        if len(rows) < want:
            return
        if left is not None:
            left -= len(rows)


async def sample_series(
    pool: asyncpg.Pool, session_id: str, metric: str, columns: int
) -> list[tuple[float, float]]:
    """One metric's (sim_time, value) points for a chart, at most 2 * `columns` of them: up to
    that many samples as they are, beyond it their minimum and maximum per column (the chart's
    envelope is exact; only points no pixel could show are left out). Computed in SQL."""
    if metric not in SAMPLE_COLUMNS[2:]:
        raise ValueError(f"no sample column {metric!r}")
    count = await pool.fetchval("SELECT count(*) FROM samples WHERE session_id = $1", session_id)
    if count <= 2 * columns:
        rows = await pool.fetch(
            f"SELECT sim_time, {metric} AS v FROM samples WHERE session_id = $1 ORDER BY sim_time",
            session_id,
        )
        return [(float(r["sim_time"]), float(r["v"])) for r in rows]
    rows = await pool.fetch(
        f"""
        WITH span AS (
            SELECT min(sim_time) AS lo, greatest(max(sim_time) - min(sim_time), 1e-9) AS width
              FROM samples WHERE session_id = $1
        ), binned AS (
            SELECT least(floor((s.sim_time - span.lo) / span.width * $2)::int, $2 - 1) AS col,
                   s.sim_time, s.{metric} AS v
              FROM samples s, span WHERE s.session_id = $1
        )
        SELECT col, min(sim_time) AS t0, max(sim_time) AS t1, min(v) AS vmin, max(v) AS vmax,
               (array_agg(sim_time ORDER BY v, sim_time))[1] AS tmin,
               (array_agg(sim_time ORDER BY v DESC, sim_time))[1] AS tmax
          FROM binned GROUP BY col ORDER BY col""",
        session_id,
        columns,
    )
    points: list[tuple[float, float]] = []
    for r in rows:
        low, high = (float(r["tmin"]), float(r["vmin"])), (float(r["tmax"]), float(r["vmax"]))
        points.extend(sorted({low, high}))
    return points


async def last_sample_time(pool: asyncpg.Pool, session_id: str) -> float | None:
    value = await pool.fetchval(
        "SELECT max(sim_time) FROM samples WHERE session_id = $1", session_id
    )
    return None if value is None else float(value)


# ---- recorded outputs (partitioned per session) -------------------------------------------------


def partition_name(table: str, session_id: str) -> str:
    """The partition of `table` that holds one session's rows; ids are checked, never quoted in."""
    if table not in RECORD_TABLES.values() or not _SAFE_ID.match(session_id):
        raise ValueError(f"bad partition {table}/{session_id}")
    return f"{table}__{session_id.replace('-', '_')}"


async def create_record_partitions(
    pool: asyncpg.Pool, session_id: str, tables: Iterable[str]
) -> None:
    async def op() -> None:
        async with pool.acquire() as conn, conn.transaction():
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
                        f'CREATE INDEX IF NOT EXISTS "{part}_time" ON "{part}" USING brin (time)'
                    )

    await with_retry(op, what="create_partitions")


async def copy_csv(
    conn: asyncpg.Connection,
    partition: str,
    columns: Sequence[str],
    data: bytes,
    where: str | None,
) -> None:
    """COPY SUMO's own CSV output (';'-separated, no header) straight into a partition."""
    await conn.copy_to_table(
        partition,
        source=io.BytesIO(data),
        columns=list(columns),
        format="csv",
        delimiter=";",
        null="",
        where=where,
    )


async def copy_records(
    conn: asyncpg.Connection, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]
) -> None:
    await conn.copy_records_to_table(table, records=rows, columns=list(columns))


async def requeue_session(pool: asyncpg.Pool, session_id: str, attempt: int, reason: str) -> None:
    """An interrupted session goes back to the queue for another attempt."""
    await set_session_status(
        pool,
        session_id,
        "queued",
        reason,
        attempt=attempt,
        port=None,
        pid=None,
        pid_started_at=None,
        started_at=None,
        sim_time=None,
    )


async def clear_session_rows(pool: asyncpg.Pool, session_id: str) -> None:
    """Remove an earlier attempt's rows in one transaction: readers see the old rows or none,
    never a mix of attempts."""

    async def op() -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM samples WHERE session_id = $1", session_id)
            await conn.execute("DELETE FROM ingest_marks WHERE session_id = $1", session_id)
            await conn.execute("DELETE FROM session_statistics WHERE session_id = $1", session_id)
            for table in RECORD_TABLES.values():
                await conn.execute(f'DROP TABLE IF EXISTS "{partition_name(table, session_id)}"')

    await with_retry(op, what="clear_session_rows")


async def ingest_mark(conn: asyncpg.Connection, session_id: str, target: str) -> int:
    """The sequence number of the last chunk committed into `target`; -1 before the first."""
    seq = await conn.fetchval(
        "SELECT seq FROM ingest_marks WHERE session_id = $1 AND target = $2 FOR UPDATE",
        session_id,
        target,
    )
    return -1 if seq is None else int(seq)


async def set_ingest_mark(conn: asyncpg.Connection, session_id: str, target: str, seq: int) -> None:
    await conn.execute(
        "INSERT INTO ingest_marks (session_id, target, seq) VALUES ($1, $2, $3)"
        " ON CONFLICT (session_id, target) DO UPDATE SET seq = excluded.seq",
        session_id,
        target,
        seq,
    )


async def add_session_commands(
    pool: asyncpg.Pool, session_id: str, sim_time: float, commands: Sequence[dict[str, Any]]
) -> None:
    async def op() -> None:
        async with pool.acquire() as conn, conn.transaction():
            first = await conn.fetchval(
                "SELECT coalesce(max(seq), 0) + 1 FROM session_commands WHERE session_id = $1",
                session_id,
            )
            await conn.executemany(
                "INSERT INTO session_commands (session_id, seq, sim_time, command)"
                " VALUES ($1, $2, $3, $4)",
                [(session_id, first + i, sim_time, c) for i, c in enumerate(commands)],
            )

    await with_retry(op, what="session_commands")


async def session_commands(pool: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT seq, sim_time, command, applied_at FROM session_commands WHERE session_id = $1"
        " ORDER BY seq",
        session_id,
    )
    return [dict(r) for r in rows]


async def get_sweep(pool: asyncpg.Pool, sweep_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow("SELECT id, request, created_at FROM sweeps WHERE id = $1", sweep_id)
    return dict(row) if row else None


async def sweep_sessions(pool: asyncpg.Pool, sweep_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT id, status, label, request FROM sessions WHERE sweep_id = $1 ORDER BY id",
        sweep_id,
    )
    return [dict(r) for r in rows]


async def count_sessions_by_status(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT status, count(*) AS n FROM sessions GROUP BY status")
    return {r["status"]: r["n"] for r in rows}


async def delete_session(pool: asyncpg.Pool, session_id: str) -> None:
    async with pool.acquire() as conn, conn.transaction():
        for table in RECORD_TABLES.values():
            await conn.execute(f'DROP TABLE IF EXISTS "{partition_name(table, session_id)}"')
        await conn.execute("DELETE FROM sessions WHERE id = $1", session_id)


async def session_summary(pool: asyncpg.Pool, session_id: str) -> dict[str, Any]:
    """The samples' and recorded trips' figures, and SUMO's own statistics (None when SUMO
    wrote none: a session killed, or ended before statistics were kept)."""
    return (await session_summaries(pool, [session_id]))[session_id]


async def store_session_statistics(
    pool: asyncpg.Pool, session_id: str, statistics: dict[str, Any]
) -> None:
    async def op() -> None:
        await pool.execute(
            "INSERT INTO session_statistics (session_id, statistics) VALUES ($1, $2)"
            " ON CONFLICT (session_id) DO UPDATE SET statistics = EXCLUDED.statistics",
            session_id,
            statistics,
        )

    await with_retry(op, what="store_session_statistics")


# ---- API tokens --------------------------------------------------------------------------------

TOKEN_CHANNEL = "api_tokens"
_TOKEN_FIELDS = "name, role, created_at, last_used_at, expires_at, revoked_at"


class TokenNameTaken(Exception):
    """A token that is not revoked already has this name."""


async def insert_token(
    pool: asyncpg.Pool, name: str, role: str, digest: bytes, expires_in_s: float | None
) -> dict[str, Any]:
    try:
        row = await pool.fetchrow(
            "INSERT INTO api_tokens (name, role, hash, expires_at) VALUES ($1, $2, $3,"
            " now() + make_interval(secs => $4::float8)) RETURNING " + _TOKEN_FIELDS,
            name,
            role,
            digest,
            expires_in_s,
        )
    except asyncpg.UniqueViolationError:
        raise TokenNameTaken(name) from None
    assert row is not None
    return dict(row)


async def list_tokens(pool: asyncpg.Pool, *, revoked: bool) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_TOKEN_FIELDS} FROM api_tokens WHERE $1 OR revoked_at IS NULL ORDER BY id",
        revoked,
    )
    return [dict(r) for r in rows]


async def revoke_token(pool: asyncpg.Pool, name: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        "UPDATE api_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL"
        " RETURNING " + _TOKEN_FIELDS,
        name,
    )
    return dict(row) if row else None


async def live_token_hashes(pool: asyncpg.Pool) -> list[dict[str, Any]]:
    """Every token not revoked, with its hash: what the daemon checks requests against.
    `expires_in_s` is measured on the database's clock (None: never expires)."""
    rows = await pool.fetch(
        "SELECT name, role, hash,"
        " extract(epoch FROM expires_at - now())::float8 AS expires_in_s"
        " FROM api_tokens WHERE revoked_at IS NULL"
    )
    return [dict(r) for r in rows]


async def touch_tokens(pool: asyncpg.Pool, last_used: dict[str, float]) -> None:
    """Write the tokens' last use (unix times), all in one statement."""
    names, times = list(last_used), list(last_used.values())
    await pool.execute(
        "UPDATE api_tokens t SET last_used_at = to_timestamp(u.at)"
        " FROM unnest($1::text[], $2::float8[]) AS u(name, at)"
        " WHERE t.name = u.name AND t.revoked_at IS NULL"
        " AND (t.last_used_at IS NULL OR t.last_used_at < to_timestamp(u.at))",
        names,
        times,
    )


# ---- template deletion -------------------------------------------------------------------------


class TemplateInUse(Exception):
    """Sessions still use the template: `active` of them have not ended, `total` in all."""

    def __init__(self, total: int, active: int) -> None:
        super().__init__(f"{total} sessions ({active} not ended)")
        self.total, self.active = total, active


@dataclass(frozen=True)
class Deleted:
    sessions: int  # ended sessions deleted with it
    template: bool  # the template itself went (its last version was deleted)


async def delete_template(
    pool: asyncpg.Pool, name: str, *, version: int | None = None, with_sessions: bool
) -> Deleted | None:
    """Delete a template with its versions (or only `version`; the template goes with its last
    version), and with their ended sessions if `with_sessions`; None if there is no such
    template or version. Raises TemplateInUse while any of their sessions has not ended (or any
    exists, without `with_sessions`)."""
    async with pool.acquire() as conn, conn.transaction():
        # The row lock orders this against uploads; a session submitted meanwhile still makes
        # the final DELETE fail on the sessions' foreign key instead of vanishing.
        if await conn.fetchval("SELECT 1 FROM templates WHERE name = $1 FOR UPDATE", name) is None:
            return None
        if version is not None and not await conn.fetchval(
            "SELECT 1 FROM template_versions WHERE name = $1 AND version = $2", name, version
        ):
            return None
        # $2 NULL: every version.
        of_it = "template_name = $1 AND ($2::int IS NULL OR template_version = $2)"
        counts = await conn.fetchrow(
            "SELECT count(*) AS total, count(*) FILTER (WHERE status <> ALL($3::text[])) AS active"
            f" FROM sessions WHERE {of_it}",
            name,
            version,
            list(FINAL_STATUSES),
        )
        assert counts is not None
        total, active = int(counts["total"]), int(counts["active"])
        if active or (total and not with_sessions):
            raise TemplateInUse(total, active)
        ids = [
            r["id"]
            for r in await conn.fetch(f"SELECT id FROM sessions WHERE {of_it}", name, version)
        ]
        for session_id in ids:
            for table in RECORD_TABLES.values():
                await conn.execute(f'DROP TABLE IF EXISTS "{partition_name(table, session_id)}"')
        await conn.execute("DELETE FROM sessions WHERE id = ANY($1::text[])", ids)
        try:
            await conn.execute(
                "DELETE FROM template_versions"
                " WHERE name = $1 AND ($2::int IS NULL OR version = $2)",
                name,
                version,
            )
            left = await conn.fetchval(
                "SELECT count(*) FROM template_versions WHERE name = $1", name
            )
            if not left:
                await conn.execute("DELETE FROM templates WHERE name = $1", name)
        except asyncpg.ForeignKeyViolationError:
            raise TemplateInUse(total + 1, active + 1) from None
        return Deleted(len(ids), template=not left)


# What each session's rows take: its samples (their share of the samples table, which is not
# partitioned) and its partitions of the record tables (RECORD_TABLES; named as partition_name
# names them). Sizes come from the catalog, so ordering every session by size reads no rows.
STORAGE_SESSIONS_SQL = """
WITH samples_per AS (
    SELECT session_id, count(*) AS n FROM samples GROUP BY session_id
), sample_row AS (
    SELECT pg_total_relation_size('samples')::float8
           / greatest((SELECT sum(n) FROM samples_per), 1) AS bytes
), sized AS (
    SELECT s.id, s.template_name, s.template_version, s.status, s.created_at,
           coalesce(p.n, 0) AS samples,
           round(coalesce(p.n, 0) * (SELECT bytes FROM sample_row))::bigint
           + coalesce((SELECT sum(pg_total_relation_size(
                                      to_regclass(t || '__' || replace(s.id, '-', '_'))))
                       FROM unnest($3::text[]) AS t), 0)::bigint AS bytes
    FROM sessions s LEFT JOIN samples_per p ON p.session_id = s.id
)
SELECT * FROM sized ORDER BY {order} LIMIT $1 OFFSET $2
"""
STORAGE_ORDERS = {"bytes": "bytes DESC, id", "created": "id DESC"}


async def _count_rows(conn: asyncpg.Connection, table: str, session_id: str) -> int:
    name = partition_name(table, session_id)
    if await conn.fetchval("SELECT to_regclass($1)", name) is None:
        return 0
    return int(await conn.fetchval(f'SELECT count(*) FROM "{name}"'))


async def storage_report(
    pool: asyncpg.Pool, *, limit: int, offset: int, order: str
) -> dict[str, Any]:
    """Bytes per template (the sizes of its versions' files) and bytes and rows per session, a
    page of `limit` sessions ordered by `order` (a key of STORAGE_ORDERS)."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        templates = await conn.fetch(
            "SELECT name, count(*) AS versions, sum(total_bytes)::bigint AS bytes"
            " FROM template_versions GROUP BY name ORDER BY bytes DESC, name"
        )
        total = await conn.fetchval("SELECT count(*) FROM sessions")
        rows = await conn.fetch(
            STORAGE_SESSIONS_SQL.format(order=STORAGE_ORDERS[order]),
            limit,
            offset,
            list(RECORD_TABLES.values()),
        )
        sessions = []
        for r in rows:
            counts = {"samples": int(r["samples"])}
            for kind, table in RECORD_TABLES.items():
                counts[kind] = await _count_rows(conn, table, r["id"])
            sessions.append(
                {
                    "id": r["id"],
                    "template": r["template_name"],
                    "version": r["template_version"],
                    "status": r["status"],
                    "bytes": int(r["bytes"]),
                    "rows": counts,
                }
            )
    return {
        "template_bytes": sum(int(t["bytes"]) for t in templates),
        "templates": [dict(t) for t in templates],
        "sessions_total": int(total),
        "sessions": sessions,
    }


# ---- several sessions at once (compare, sweeps) ------------------------------------------------


async def get_sessions(pool: asyncpg.Pool, session_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The sessions of `session_ids` that exist, by id, each as `get_session` gives it."""
    rows = await pool.fetch(
        f"SELECT {_SESSION_FIELDS} FROM sessions s WHERE s.id = ANY($1::text[])",
        list(dict.fromkeys(session_ids)),
    )
    return {r["id"]: dict(r) for r in rows}


# The summary figures of sessions, in one statement: a session with no samples or trips gets
# zeros and nulls. The trips SUMO's own averages take are of vehicles that departed (with
# write-unfinished, also those still running at the end); a row of write-undeparted has depart -1.
SUMMARIES_SQL = """
SELECT ids.id AS session_id,
       s.inserted, s.arrived, coalesce(last.vehicles, 0) AS running, s.teleports, s.last_time,
       t.*, st.statistics
  FROM unnest($1::text[]) AS ids (id)
 CROSS JOIN LATERAL (
    SELECT coalesce(sum(departed), 0) AS inserted, coalesce(sum(arrived), 0) AS arrived,
           coalesce(sum(teleports), 0) AS teleports, max(sim_time) AS last_time
      FROM samples WHERE session_id = ids.id
 ) s
  LEFT JOIN LATERAL (
    SELECT vehicles FROM samples WHERE session_id = ids.id ORDER BY sim_time DESC LIMIT 1
 ) last ON true
 CROSS JOIN LATERAL (
    SELECT count(*) AS trips,
           avg(duration) AS mean_duration,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY duration) AS p95_duration,
           avg(waiting_time) AS mean_waiting_time,
           avg(time_loss) AS mean_time_loss,
           avg(route_length) AS mean_route_length,
           sum(route_length) AS total_distance,
           avg(route_length / nullif(duration, 0)) AS mean_speed,
           avg(depart_delay) AS mean_depart_delay
      FROM trips WHERE session_id = ids.id AND depart >= 0
 ) t
  LEFT JOIN session_statistics st ON st.session_id = ids.id
"""


async def session_summaries(
    pool: asyncpg.Pool, session_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`session_summary` of each of `session_ids`, by id, in one query."""
    if not session_ids:
        return {}
    rows = await pool.fetch(SUMMARIES_SQL, list(dict.fromkeys(session_ids)))
    out = {}
    for r in rows:
        figures = dict(r)
        out[figures.pop("session_id")] = figures
    return out
