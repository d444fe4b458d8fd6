"""Database access for the API and the CLI: the pool, the schema, and one named function per
query. The actors' own queries are supervisor/pgstore.py's; the retry policy is
supervisor/pgretry.py's (its names are also here, for the API's users)."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import asyncpg
import orjson

from actors.lifecycle import FINAL, Status
from actors.scenario import TemplateFile
from actors.store import RECORD_TABLES, SAMPLE_COLUMNS, partition_name
from supervisor.pgretry import TRANSIENT_ERRORS as TRANSIENT_ERRORS
from supervisor.pgretry import is_transient as is_transient
from supervisor.pgretry import while_connected
from supervisor.pgretry import with_retry as with_retry

# A sample as the API shows it: the row without its session.
_SAMPLE_FIELDS = ", ".join(SAMPLE_COLUMNS[1:])

FINAL_STATUSES = tuple(s.value for s in Status if s in FINAL)


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


SCHEMA_LOCK_SQL = "SELECT pg_advisory_xact_lock(8750)"
SCHEMA_APPLIED_SQL = "SELECT to_regclass('schema_applied') IS NOT NULL"
SCHEMA_DONE_SQL = "SELECT EXISTS (SELECT 1 FROM schema_applied WHERE sha256 = $1)"
SCHEMA_MARK_SQL = "INSERT INTO schema_applied (sha256) VALUES ($1) ON CONFLICT DO NOTHING"
# A schema change (ALTER TABLE) waits for the running nodes' transactions on its tables, and may
# meet one in a deadlock, which PostgreSQL ends by failing one side: the change is tried again.
SCHEMA_ATTEMPTS = 5


async def apply_schema(pool: asyncpg.Pool) -> None:
    """schema.sql, unless this very text is applied already (then nothing is locked)."""
    sql = resources.files("supervisor").joinpath("schema.sql").read_text()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    async with pool.acquire() as conn:
        for attempt in range(1, SCHEMA_ATTEMPTS + 1):
            try:
                async with conn.transaction():
                    # Two daemons starting on one database apply it one after the other.
                    await conn.execute(SCHEMA_LOCK_SQL)
                    if await conn.fetchval(SCHEMA_APPLIED_SQL) and await conn.fetchval(
                        SCHEMA_DONE_SQL, digest
                    ):
                        return
                    await conn.execute(sql)
                    await conn.execute(SCHEMA_MARK_SQL, digest)
                return
            except asyncpg.DeadlockDetectedError:
                if attempt == SCHEMA_ATTEMPTS:
                    raise
                await asyncio.sleep(0.2 * attempt)


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


# ---- sessions ----------------------------------------------------------------------------------

_SESSION_FIELDS = """s.id, s.template_name, s.template_version, s.status, s.request, s.label,
    s.created_at, s.started_at, s.ended_at, s.end_time, s.port, s.pid, s.exit_code, s.cause,
    s.error, s.attempt, s.owner_node AS node, s.sweep_id,
    coalesce(s.sim_time, (SELECT max(sim_time) FROM samples WHERE session_id = s.id)) AS sim_time,
    (SELECT vehicles FROM samples WHERE session_id = s.id ORDER BY sim_time DESC LIMIT 1)
      AS vehicles"""


async def get_session(pool: asyncpg.Pool, session_id: str) -> dict[str, Any] | None:
    row = await pool.fetchrow(
        f"SELECT {_SESSION_FIELDS} FROM sessions s WHERE s.id = $1", session_id
    )
    return dict(row) if row else None


async def list_sessions(
    pool: asyncpg.Pool,
    status: str | None,
    label: str | None,
    limit: int,
    *,
    template: str | None = None,
    before: str | None = None,
) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        f"SELECT {_SESSION_FIELDS} FROM sessions s"
        " WHERE ($1::text IS NULL OR s.status = $1) AND ($2::text IS NULL OR s.label = $2)"
        " AND ($4::text IS NULL OR s.template_name = $4) AND ($5::text IS NULL OR s.id < $5)"
        " ORDER BY s.id DESC LIMIT $3",
        status,
        label,
        limit,
        template,
        before,
    )
    return [dict(r) for r in rows]


async def session_events(pool: asyncpg.Pool, session_id: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        "SELECT at, status, reason FROM session_events WHERE session_id = $1 ORDER BY id",
        session_id,
    )
    return [dict(r) for r in rows]


# ---- samples -----------------------------------------------------------------------------------


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


# A session's sample totals: what its summary adds up from its samples. `{id}` names the session;
# `{gate}` may skip the scan (a condition on the outer row, which PostgreSQL tests once).
SAMPLE_TOTALS = """
    SELECT coalesce(sum(departed), 0) AS inserted, coalesce(sum(arrived), 0) AS arrived,
           coalesce(sum(teleports), 0) AS teleports, max(sim_time) AS last_time,
           coalesce((SELECT vehicles FROM samples WHERE session_id = {id}{gate}
                      ORDER BY sim_time DESC LIMIT 1), 0) AS running
      FROM samples WHERE session_id = {id}{gate}
"""

# Kept once, when a session's end is written (PgStore.keep_totals).
KEEP_TOTALS_SQL = (
    "INSERT INTO session_totals (session_id, inserted, arrived, teleports, last_time, running)"
    " SELECT $1, * FROM ("
    + SAMPLE_TOTALS.format(id="$1", gate="")
    + ") t ON CONFLICT (session_id) DO UPDATE SET inserted = EXCLUDED.inserted,"
    " arrived = EXCLUDED.arrived, teleports = EXCLUDED.teleports,"
    " last_time = EXCLUDED.last_time, running = EXCLUDED.running"
)

# The summary figures of sessions, in one statement: a session with no samples or trips gets
# zeros and nulls. A finished session's sample totals are its kept ones; only a session without
# (running, or ended before they were kept) sums its samples. The trips SUMO's own averages take
# are of vehicles that departed (with write-unfinished, also those still running at the end); a
# row of write-undeparted has depart -1.
SUMMARIES_SQL = f"""
SELECT ids.id AS session_id,
       coalesce(k.inserted, s.inserted) AS inserted, coalesce(k.arrived, s.arrived) AS arrived,
       coalesce(k.running, s.running) AS running, coalesce(k.teleports, s.teleports) AS teleports,
       CASE WHEN k.session_id IS NULL THEN s.last_time ELSE k.last_time END AS last_time,
       t.*, st.statistics
  FROM unnest($1::text[]) AS ids (id)
  LEFT JOIN session_totals k ON k.session_id = ids.id
 CROSS JOIN LATERAL ({SAMPLE_TOTALS.format(id="ids.id", gate=" AND k.session_id IS NULL")}) s
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


# ---- nodes -------------------------------------------------------------------------------------


async def list_nodes(pool: asyncpg.Pool, ttl_s: float, limit: int = 200) -> list[dict[str, Any]]:
    """Nodes, live ones first, then the most recently started. `state`: alive (heartbeat within
    the lease TTL), lost (silent longer, never said it stopped) or stopped."""
    rows = await pool.fetch(
        "SELECT n.id, n.name, n.api_url, n.capacity, n.started_at, n.heartbeat_at, n.draining,"
        " n.stopped_at, extract(epoch FROM now() - n.heartbeat_at)::float8 AS heartbeat_age_s,"
        " CASE WHEN n.stopped_at IS NOT NULL THEN 'stopped'"
        "  WHEN n.heartbeat_at > now() - make_interval(secs => $1) THEN 'alive' ELSE 'lost' END"
        " AS state,"
        " (SELECT count(*) FROM sessions s WHERE s.owner_node = n.id"
        "  AND s.status IN ('starting', 'running')) AS running"
        " FROM nodes n ORDER BY (n.stopped_at IS NULL) DESC, n.started_at DESC LIMIT $2",
        ttl_s,
        limit,
    )
    return [dict(r) for r in rows]


async def session_owner(pool: asyncpg.Pool, session_id: str) -> dict[str, Any] | None:
    """The node that holds a session's lease (id, name, api_url), if one does."""
    row = await pool.fetchrow(
        "SELECT n.id, n.name, n.api_url FROM sessions s JOIN nodes n ON n.id = s.owner_node"
        " WHERE s.id = $1 AND s.status IN ('starting', 'running')",
        session_id,
    )
    return dict(row) if row else None


async def template_file(pool: asyncpg.Pool, name: str, version: int, path: str) -> bytes | None:
    """One file of a template version, or None when it has no such file."""
    content = await pool.fetchval(
        "SELECT content FROM template_files WHERE name = $1 AND version = $2 AND path = $3",
        name,
        version,
        path,
    )
    return bytes(content) if content is not None else None
