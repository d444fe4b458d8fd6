"""The store at scale: the API's reads and a new session's admission on a database of 100,000
finished sessions and 50 million sample rows, against the same requests to the same daemon
build on a tiny database (1,000 sessions) in the same run; and the claim of 10,000 queued
sessions on that database, against the same claims on an otherwise empty one.

    python -m bench.store_scale [--sessions 100000] [--samples 500] [--requests 500]
                                [--admissions 200] [--queued 10000] [--batches 1,8,64]
                                [--keep DIR] [--claims-only] [--small]

The rows are made by PostgreSQL itself (INSERT ... SELECT over generate_series, the samples
without their foreign-key trigger): the same rows COPYed from Python take longer to make than
to store. The queued sessions of the claims are COPYed, as ids the daemon would give them.

Every request is timed by a real HTTP client, one at a time, alternating between the two
daemons (both up at once, on one PostgreSQL), after a warm-up that also lets PostgreSQL settle
on its generic plans for the prepared statements. A session's admission is its POST until
answered, and until a node claimed it (its `starting` event, from its `submitted` one, both by
the database's clock); each admitted session runs a 10 s grid to its end before the next POST,
so no SUMO runs while one is timed. The claims go through PgStore.claim as the supervisor's
`_admit` makes them, `--batches` sessions a claim, alternating between the databases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import asyncpg
import orjson

from actors.store import Node
from actors.supervisor import QUEUE_COUNT_S, new_node_id, new_session_id
from supervisor import db
from supervisor.pgstore import PgStore
from tests.harness.daemon import Daemon
from tests.harness.http import FINAL, create_session, upload
from tests.harness.pg import admin_url, fresh_database, with_database
from tests.harness.scenarios import grid_scenario

TARGET_MS = 20.0
TARGET_PER_S = 500.0
TINY_SESSIONS = 1000
TEMPLATES = ("city-a", "grid-b", "corridor-c", "ring-d")
VERSIONS = 3
SAMPLE_PERIOD = 10.0
# Sessions per samples statement: a few million rows each, so the build shows its progress.
CHUNK = 5000

# A session's request as the daemon stores it (SessionRequest.to_json); the template, version,
# seed and label are set per row.
REQUEST = {
    "end": None,
    "sample_every": 10,
    "max_wall_s": None,
    "sumo_options": {},
    "record": ["samples"],
    "on_interrupt": "rerun",
    "max_attempts": 3,
    "mode": "run",
    "idle_timeout_s": 300.0,
    "pause_counts": True,
    "max_pause_s": None,
    "replay_of": None,
    "trajectory_period": 1.0,
    "edge_period": 60.0,
}

# $1 sessions, $2 samples per session, $3 the request: ids as new_session_id makes them (UTC
# time first), one a minute up to an hour ago. 85% completed, 10% failed, 5% stopped; 80%
# labelled with one of 8 study labels, and the 10 oldest labelled "rare".
SESSIONS_SQL = """
INSERT INTO sessions (id, template_name, template_version, status, request, label, created_at,
                      started_at, ended_at, end_time, sim_time, port, pid, pid_started_at,
                      exit_code, cause, error, attempt, lease_epoch)
SELECT to_char(c AT TIME ZONE 'UTC', 'YYYYMMDD"t"HH24MISSUS"z"') || '-'
           || lpad(to_hex((g * 2654435761) % 4294967296), 8, '0'),
       t.name, v, st, $3::jsonb || jsonb_build_object('template', t.name, 'version', v,
           'seed', g, 'label', lab, 'end', $2::int * 10), lab, c,
       c + interval '2 seconds', c + interval '40 seconds', $2::int * 10.0, $2::int * 10.0,
       12000 + g % 1000, 10000 + g % 50000, extract(epoch FROM c) + 2,
       CASE st WHEN 'completed' THEN 0 WHEN 'failed' THEN 1 ELSE -15 END,
       CASE st WHEN 'failed' THEN 'sumo_exited' END,
       CASE st WHEN 'failed' THEN 'SUMO exited with code 1' END,
       1, 1
  FROM generate_series(1, $1::bigint) g
 CROSS JOIN LATERAL (SELECT now() - make_interval(mins => ($1 - g + 60)::int) AS c,
       CASE WHEN g % 20 < 2 THEN 'failed' WHEN g % 20 = 2 THEN 'stopped' ELSE 'completed' END
           AS st,
       CASE WHEN g <= 10 THEN 'rare' WHEN g % 5 = 0 THEN NULL ELSE 'study-' || g % 10 END AS lab,
       (g % 3 + 1)::int AS v,
       (g % 4 + 1)::int AS tn) x
  JOIN (SELECT name, row_number() OVER (ORDER BY name) AS n FROM templates) t ON t.n = x.tn
 ORDER BY g
"""

EVENTS_SQL = """
INSERT INTO session_events (session_id, at, status, reason)
SELECT s.id, s.created_at + e.dt, coalesce(e.status, s.status), coalesce(e.reason, s.cause,
       CASE s.status WHEN 'stopped' THEN 'stopped by request' ELSE 'sumo exited 0' END)
  FROM sessions s
 CROSS JOIN (VALUES (interval '0', 'queued', 'submitted'),
                    (interval '50 ms', 'starting', 'claimed by node 3f2a9c0d1e4b5a69 (attempt 1)'),
                    (interval '2 s', 'running', 'traci connected'),
                    (interval '40 s', NULL, NULL)) AS e (dt, status, reason)
 ORDER BY s.id, e.dt
"""

STATISTICS_SQL = """
INSERT INTO session_statistics (session_id, statistics)
SELECT id, jsonb_build_object(
    'vehicles', jsonb_build_object('loaded', 1200 + h % 300, 'inserted', 1180 + h % 300,
        'running', 0, 'waiting', 0),
    'teleports', jsonb_build_object('total', h % 7, 'jam', h % 5, 'yield', h % 2,
        'wrongLane', 0),
    'safety', jsonb_build_object('collisions', 0, 'emergencyStops', h % 3,
        'emergencyBraking', 0),
    'persons', jsonb_build_object('loaded', 0, 'running', 0, 'jammed', 0),
    'vehicleTripStatistics', jsonb_build_object('count', 1180 + h % 300,
        'routeLength', 900 + h % 400, 'speed', 8.5 + (h % 30) / 10.0, 'duration', 140 + h % 60,
        'waitingTime', 20 + h % 25, 'timeLoss', 45 + h % 30, 'departDelay', 1.5 + h % 4,
        'departDelayWaiting', -1, 'totalTravelTime', 170000 + h % 9000,
        'totalDepartDelay', 1800 + h % 500))
  FROM (SELECT id, abs(hashtext(id)) AS h FROM sessions WHERE status = 'completed') s
"""

# $1 the sessions' ids, $2 samples per session: one row every SAMPLE_PERIOD s of sim time, in
# the order the writer appends them (a session's rows together).
SAMPLES_SQL = f"""
INSERT INTO samples (session_id, sim_time, vehicles, departed, arrived, mean_speed, halting,
                     waiting_time, teleports)
SELECT s.id, k * {SAMPLE_PERIOD}, 40 + (k * 7 + s.n) % 300, (k + s.n) % 13,
       (k * 3 + s.n) % 12, 4.0 + ((k * 11 + s.n) % 90) / 10.0, (k + 2 * s.n) % 40,
       ((k * 17 + s.n) % 400) * 1.5, ((k + s.n) % 97 = 0)::int
  FROM unnest($1::text[]) WITH ORDINALITY AS s (id, n)
 CROSS JOIN generate_series(1, $2::int) k
"""


# The sample totals each session's end keeps (session_totals), for $1 the sessions' ids.
TOTALS_SQL = (
    "INSERT INTO session_totals (session_id, inserted, arrived, teleports, last_time, running)"
    " SELECT ids.id, t.* FROM unnest($1::text[]) AS ids (id) CROSS JOIN LATERAL ("
    + db.SAMPLE_TOTALS.format(id="ids.id", gate="")
    + ") t"
)


async def _connect(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url, command_timeout=3600)


async def build(url: str, sessions: int, per: int, say: Callable[[str], None]) -> None:
    """The schema, four templates of three versions, three stopped nodes, and `sessions`
    finished sessions with their events, SUMO's statistics (completed ones), `per` samples
    each and the sample totals their ends kept."""
    pool = await db.create_pool(url, max_size=2, command_timeout=3600)
    try:
        await db.apply_schema(pool)
    finally:
        await pool.close()
    conn = await _connect(url)
    try:
        for name in TEMPLATES:
            await conn.execute("INSERT INTO templates (name, last_version) VALUES ($1, $2)", name,
                               VERSIONS)  # fmt: skip
            for v in range(1, VERSIONS + 1):
                content = f"<configuration><!-- {name} v{v} --></configuration>".encode()
                await conn.execute(
                    "INSERT INTO template_versions (name, version, config_path, sha256,"
                    " total_bytes) VALUES ($1, $2, 'scenario.sumocfg', md5($1 || $2::int), $3)",
                    name,
                    v,
                    len(content),
                )
                await conn.execute(
                    "INSERT INTO template_files VALUES ($1, $2, 'scenario.sumocfg',"
                    " md5($3::bytea), $4, $3::bytea)",
                    name,
                    v,
                    content,
                    len(content),
                )
        await conn.execute(
            "INSERT INTO nodes (id, name, capacity, boot_id, pid, stopped_at)"
            " SELECT md5(g::text), 'node-' || g, 8, 'bench', 1000 + g, now() - interval '1 hour'"
            " FROM generate_series(1, 3) g"
        )
        if not sessions:
            return
        start = time.perf_counter()
        await conn.execute(SESSIONS_SQL, sessions, per, orjson.dumps(REQUEST).decode())
        await conn.execute(EVENTS_SQL)
        await conn.execute(STATISTICS_SQL)
        took = time.perf_counter() - start
        say(f"  {sessions} sessions, their events and statistics: {took:.1f} s")
        ids = [r["id"] for r in await conn.fetch("SELECT id FROM sessions ORDER BY id")]
        # Rows made for sessions that exist: their foreign key's trigger, one lookup a row,
        # would be most of the build. Only a superuser may skip it.
        with contextlib.suppress(asyncpg.InsufficientPrivilegeError):
            await conn.execute("SET session_replication_role = replica")
        start = time.perf_counter()
        for i in range(0, len(ids), CHUNK):
            await conn.execute(SAMPLES_SQL, ids[i : i + CHUNK], per)
            await conn.execute(TOTALS_SQL, ids[i : i + CHUNK])
            done = min(i + CHUNK, len(ids))
            if done % (CHUNK * 4) == 0 or done == len(ids):
                rate = done * per / (time.perf_counter() - start)
                say(f"  samples of {done} sessions ({rate:,.0f} rows/s)")
        await conn.execute("RESET session_replication_role")
        start = time.perf_counter()
        # What autovacuum would have done to a database this old: the visibility map set and
        # the statistics gathered.
        await conn.execute("VACUUM ANALYZE")
        say(f"  VACUUM ANALYZE: {time.perf_counter() - start:.1f} s")
    finally:
        await conn.close()


# ---- the API, timed ----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class Figure:
    name: str
    base: list[float]
    big: list[float]

    def line(self, target: str) -> str:
        b50, b99 = pct(self.base, 0.5), pct(self.base, 0.99)
        s50, s99 = pct(self.big, 0.5), pct(self.big, 0.99)
        return (
            f"{self.name} ({len(self.big)} each): baseline p50 {b50:.2f} ms p99 {b99:.2f} ms,"
            f" at scale p50 {s50:.2f} ms p99 {s99:.2f} ms, ratio p50 {s50 / b50:.2f}"
            f" p99 {s99 / b99:.2f}; p99 {s99 / TARGET_MS:.2f} of the {target}"
        )


async def _timed_get(http: aiohttp.ClientSession, url: str) -> float:
    start = time.perf_counter()
    async with http.get(url) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url}: {r.status} {await r.text()}")
    return (time.perf_counter() - start) * 1000


async def _session_ids(url: str, n: int) -> list[str]:
    conn = await _connect(url)
    try:
        rows = await conn.fetch(
            "SELECT id FROM sessions TABLESAMPLE BERNOULLI (50) WHERE status <> 'queued'"
            " ORDER BY random() LIMIT $1",
            n,
        )
        return [r["id"] for r in rows]
    finally:
        await conn.close()


async def measure_reads(
    http: aiohttp.ClientSession, daemons: dict[str, Daemon], ids: dict[str, list[str]],
    requests: int, warmup: int,
) -> list[Figure]:  # fmt: skip
    """Each case `requests` times on each daemon, alternating, after `warmup` untimed rounds."""
    one, few = random.choice, lambda some: random.choice(some[:20])
    cases: dict[str, Callable[[list[str]], str]] = {
        "GET /v1/sessions?limit=100": lambda _: "/v1/sessions?limit=100",
        "  ?status=failed (10%)": lambda _: "/v1/sessions?limit=100&status=failed",
        "  ?status=running (none)": lambda _: "/v1/sessions?limit=100&status=running",
        "  ?label=study-3 (8%)": lambda _: "/v1/sessions?limit=100&label=study-3",
        "  ?label=rare (10 oldest)": lambda _: "/v1/sessions?limit=100&label=rare",
        "GET /v1/sessions/{id}": lambda some: f"/v1/sessions/{one(some)}",
        "GET /v1/sessions/{id}/summary": lambda some: f"/v1/sessions/{one(some)}/summary",
        # The same 20 sessions again and again: their pages stay in memory.
        "  of 20 sessions (cached)": lambda some: f"/v1/sessions/{few(some)}/summary",
    }
    times: dict[str, dict[str, list[float]]] = {c: {k: [] for k in daemons} for c in cases}
    order = list(daemons)
    for round_ in range(warmup + requests):
        order.reverse()
        for case, path in cases.items():
            for key in order:
                ms = await _timed_get(http, daemons[key].url + path(ids[key]))
                if round_ >= warmup:
                    times[case][key].append(ms)
    return [Figure(c, t["base"], t["big"]) for c, t in times.items()]


async def _events(http: aiohttp.ClientSession, d: Daemon, session_id: str) -> dict[str, float]:
    async with http.get(f"{d.url}/v1/sessions/{session_id}/events") as r:
        events = (await r.json())["events"]
    return {e["status"]: datetime.fromisoformat(e["at"]).timestamp() for e in events}


async def _admit_one(http: aiohttp.ClientSession, d: Daemon) -> tuple[float, float]:
    """One session's POST until answered and until claimed (ms); it runs to its end here."""
    start = time.perf_counter()
    session = await create_session(http, d, template="bench", label="admitted")
    answered = (time.perf_counter() - start) * 1000
    deadline = time.monotonic() + 120
    while session["status"] not in FINAL:
        if time.monotonic() > deadline:
            raise RuntimeError(f"session never ended: {session}")
        await asyncio.sleep(0.02)
        async with http.get(f"{d.url}/v1/sessions/{session['id']}") as r:
            session = await r.json()
    if session["status"] != "completed":
        raise RuntimeError(f"admitted session ended {session['status']}: {session['error']}")
    at = await _events(http, d, session["id"])
    return answered, (at["starting"] - at["queued"]) * 1000


async def measure_admissions(
    http: aiohttp.ClientSession, daemons: dict[str, Daemon], n: int, warmup: int
) -> list[Figure]:
    answered: dict[str, list[float]] = {k: [] for k in daemons}
    claimed: dict[str, list[float]] = {k: [] for k in daemons}
    order = list(daemons)
    for round_ in range(warmup + n):
        order.reverse()
        for key in order:
            a, c = await _admit_one(http, daemons[key])
            if round_ >= warmup:
                answered[key].append(a)
                claimed[key].append(c)
    return [
        Figure("POST /v1/sessions until answered", answered["base"], answered["big"]),
        Figure("  until claimed (starting)", claimed["base"], claimed["big"]),
    ]


# ---- claims, through the store -----------------------------------------------------------------


async def _queue(url: str, n: int) -> list[str]:
    """`n` new queued sessions, as a submission stores them (with their `submitted` events)."""
    conn = await _connect(url)
    # COPY is binary: jsonb's binary form is a version byte and the text.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )
    try:
        return await _copy_queued(conn, n)
    finally:
        await conn.close()


async def _copy_queued(conn: asyncpg.Connection, n: int) -> list[str]:
    ids = sorted(new_session_id() for _ in range(n))
    request = REQUEST | {"template": TEMPLATES[0], "version": 1, "label": "queued", "end": 3600}
    await conn.copy_records_to_table(
        "sessions",
        records=[(i, TEMPLATES[0], 1, "queued", request, "queued", 3600.0) for i in ids],
        columns=("id", "template_name", "template_version", "status", "request", "label",
                 "end_time"),
    )  # fmt: skip
    await conn.copy_records_to_table(
        "session_events",
        records=[(i, "queued", "submitted") for i in ids],
        columns=("session_id", "status", "reason"),
    )
    return ids


@dataclass
class Claims:
    batch: int
    base_s: float
    big_s: float
    base_count_s: float
    big_count_s: float


async def _claim_all(url: str, n: int, batch: int) -> tuple[float, float]:
    """Seconds for one node to claim `n` queued sessions `batch` at a time, as the supervisor
    does (`_admit`): each claim excludes the sessions it runs, and a full claim is followed by
    a count of what is left; and the seconds of those counts. The sessions are deleted
    afterwards."""
    pool = await db.create_pool(url)
    try:
        await db.apply_schema(pool)  # as a daemon starting on it would
        ids = await _queue(url, n)
        await pool.execute("ANALYZE sessions")
        store = PgStore(pool)
        node = Node(new_node_id(), "bench", None, batch, "bench", 1)
        await store.register_node(node)
        running: list[str] = []
        claimed, counting, last_count = 0, 0.0, -math.inf
        start = time.perf_counter()
        while True:
            got = await store.claim(node.id, batch, 10.0, exclude=running)
            claimed += len(got)
            running = [c.record.id for c in got]
            if len(got) < batch:
                break
            counted = time.perf_counter()
            if counted >= last_count + QUEUE_COUNT_S:  # as the supervisor's _admit counts
                await store.count_queued()
                last_count = counted
            counting += time.perf_counter() - counted
        elapsed = time.perf_counter() - start
        if claimed != n:
            raise RuntimeError(f"claimed {claimed} of {n}")
        async with pool.acquire() as conn:
            await conn.execute("DELETE FROM sessions WHERE id = ANY($1::text[])", ids)
            await conn.execute("VACUUM sessions, session_events")
        return elapsed, counting
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def _databases(admin: str, keep: bool) -> AsyncIterator[dict[str, tuple[str, bool]]]:
    """The tiny, big and empty databases, each with whether it is new (to be built): fresh
    ones dropped at the end, or with `keep` named ones, made once and kept."""
    names = ("base", "big", "empty")
    if not keep:
        async with contextlib.AsyncExitStack() as stack:
            yield {n: (await stack.enter_async_context(fresh_database(admin)), True) for n in names}
        return
    out = {}
    conn = await _connect(admin)
    try:
        for n in names:
            exists = await conn.fetchval(
                "SELECT 1 FROM pg_database WHERE datname = $1", f"scale_{n}"
            )
            if not exists:
                await conn.execute(f"CREATE DATABASE scale_{n}")
            out[n] = (with_database(admin, f"scale_{n}"), not exists)
    finally:
        await conn.close()
    yield out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--samples", type=int, default=500, help="per session")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--admissions", type=int, default=200)
    parser.add_argument("--queued", type=int, default=10_000)
    parser.add_argument("--batches", default="1,8,64", help="claim sizes")
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--claims-only", action="store_true", help="skip the daemons' figures")
    parser.add_argument(
        "--keep",
        type=Path,
        help="run PostgreSQL in this dir and keep its databases, built once, for the next run"
        " (delete it when done)",
    )
    args = parser.parse_args()
    if args.small:
        args.sessions, args.samples, args.requests = 300, 20, 10
        args.admissions, args.queued, args.batches = 2, 200, "1,8"
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        await _run(args, work, args.keep or work, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)


async def _daemon_figures(
    args: argparse.Namespace, work: Path, urls: dict[str, str], say: Callable[[str], None]
) -> tuple[list[Figure], list[Figure]]:
    """The reads and admissions, timed on a daemon on each database, both up at once."""
    warmup = max(5, args.requests // 10)
    scn = grid_scenario(work / "scn", grid=2, length=100, end=10, period=2.0, min_distance=100)
    daemons = {
        k: Daemon.spawn(work / k, database_url=u, own_settings_only=False) for k, u in urls.items()
    }
    try:
        for d in daemons.values():
            d.wait_ready()
        ids = {k: await _session_ids(u, 2000) for k, u in urls.items()}
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            for d in daemons.values():
                await upload(http, d, "bench", scn)
            say(f"timing the reads: {args.requests} of each, on each daemon")
            reads = await measure_reads(http, daemons, ids, args.requests, warmup)
            say(f"timing {args.admissions} admissions on each daemon")
            admissions = await measure_admissions(
                http, daemons, args.admissions, max(1, args.admissions // 20)
            )
    finally:
        for d in daemons.values():
            d.stop()
    return reads, admissions


async def _run(
    args: argparse.Namespace, work: Path, pg_dir: Path, say: Callable[[str], None]
) -> None:
    tiny = min(TINY_SESSIONS, args.sessions)
    await asyncio.to_thread(pg_dir.mkdir, parents=True, exist_ok=True)
    with admin_url(pg_dir / "pg") as admin:
        async with _databases(admin, args.keep is not None) as dbs:
            (base_url, base_new), (big_url, big_new), (empty_url, empty_new) = dbs.values()
            if base_new:
                say(f"building the tiny database: {tiny} sessions x {args.samples} samples")
                await build(base_url, tiny, args.samples, say)
            if big_new:
                say(f"building the big one: {args.sessions} sessions x {args.samples} samples")
                start = time.perf_counter()
                await build(big_url, args.sessions, args.samples, say)
                say(f"  built in {time.perf_counter() - start:.0f} s")
            if empty_new:
                await build(empty_url, 0, 0, say)

            reads: list[Figure] = []
            admissions: list[Figure] = []
            if not args.claims_only:
                reads, admissions = await _daemon_figures(
                    args, work, {"base": base_url, "big": big_url}, say
                )

            say(f"timing the claims of {args.queued} queued sessions")
            claims = []
            for batch in (int(b) for b in args.batches.split(",")):
                # Alternating, base big big base: the machine's load moves between runs.
                a1 = await _claim_all(empty_url, args.queued, batch)
                b1 = await _claim_all(big_url, args.queued, batch)
                b2 = await _claim_all(big_url, args.queued, batch)
                a2 = await _claim_all(empty_url, args.queued, batch)
                claims.append(
                    Claims(batch, a1[0] + a2[0], b1[0] + b2[0], a1[1] + a2[1], b1[1] + b2[1])
                )
    say("")
    say(
        f"the store at scale: {args.sessions} finished sessions, {args.sessions * args.samples}"
        f" samples; baseline a tiny database ({tiny} sessions), same daemon build, same run"
    )
    for f in reads + admissions:
        say(f.line(f"{TARGET_MS:.0f} ms target"))
    for c in claims:
        base_rate, big_rate = 2 * args.queued / c.base_s, 2 * args.queued / c.big_s
        say(
            f"claim of {args.queued} queued sessions (twice), {c.batch} a claim: baseline (empty"
            f" database) {base_rate:,.0f}/s, at scale {big_rate:,.0f}/s, ratio"
            f" {big_rate / base_rate:.2f}; {big_rate / TARGET_PER_S:.2f} of the"
            f" {TARGET_PER_S:.0f}/s target (counting the queue, at most once a second:"
            f" {c.base_count_s / c.base_s:.0%} and {c.big_count_s / c.big_s:.0%} of the time)"
        )


if __name__ == "__main__":
    asyncio.run(main())
