"""The HTTP API (aiohttp). Handlers parse and check input into typed requests, then call the
service layer (`supervisor.service`) for what changes or computes something, or read the
database for what they show as it is; typed errors become JSON 4xx responses in one place,
`error_middleware`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import asyncpg
import structlog
from aiohttp import BodyPartReader, http_exceptions, web
from aiohttp_sse import EventSourceResponse, sse_response

from actors import scenario, traci_commands
from actors.errors import (
    Busy,
    InvalidRequest,
    InvalidTemplate,
    OwnedElsewhere,
    PayloadTooLarge,
    SessionConflict,
    SessionNotFound,
    SupervisorError,
    TemplateNotFound,
    TokenNotFound,
)
from actors.request import parse_session_request
from actors.store import is_session_id
from actors.supervisor import SupervisorActor
from actors.writer import WriterActor
from supervisor import (
    dashboard,
    db,
    docs,
    exports,
    forward,
    map_relay,
    netmap,
    openapi,
    plots,
    service,
    sweeps,
    text,
    tokens,
)
from supervisor.access import AUDIT, Access, Route, error_response
from supervisor.config import Config
from supervisor.feeds import (
    LIST_STREAM_LIMIT,
    NOT_STARTED,
    EndEvent,
    FeedHub,
    LaggedEvent,
    ListChange,
    ListFeed,
    ListQuery,
    SampleEvent,
    SessionChanged,
    SessionLeft,
    StatusEvent,
    Watcher,
)
from supervisor.jsonio import dumps as _dumps
from supervisor.jsonio import encode as _encode
from supervisor.jsonio import json_response as _json
from supervisor.logbuffer import SESSION_LOGS
from supervisor.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from supervisor.metrics import Metrics, count_sumo_children

log = structlog.get_logger(component="api")

MAX_JSON_BODY = 1024 * 1024
MAX_FORM_FIELD = 1024
CHUNK = 256 * 1024
ALL_STATUSES = ("queued", "starting", "running", *db.FINAL_STATUSES)
# A running export holds one of the pool's connections for as long as its client reads: the
# rest stay for the writer, the sessions and the other requests.
EXPORT_SLOTS = 4


@dataclass(frozen=True)
class Services:
    config: Config
    pool: asyncpg.Pool
    supervisor: SupervisorActor
    writer: WriterActor
    feeds: FeedHub
    metrics: Metrics
    tokens: tokens.TokenBook
    upload_checks: scenario.CheckSlots
    exports: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(EXPORT_SLOTS))


SERVICES = web.AppKey("services", Services)
ACCESS = web.AppKey("access", Access)
DASHBOARD = web.AppKey("dashboard", dashboard.StaticFiles)
NETMAPS = web.AppKey("netmaps", netmap.NetMaps)


def _created(request: web.Request, body: dict[str, Any], path: str) -> web.Response:
    """201 with the new thing's address, absolute when the daemon knows its public URL."""
    response = _json(body, status=201)
    base = request.app[SERVICES].config.public_url
    response.headers["Location"] = (base.rstrip("/") if base else "") + path
    return response


# ---- errors, in one place ----------------------------------------------------------------------


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await _read_again_once(request, handler)
        return response
    except SupervisorError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _json({"error": exc.reason, "path": request.path}, status=exc.status)
    except http_exceptions.BadHttpMessage as exc:
        # A body aiohttp parses as the handler reads it (a multipart part's headers) is the
        # client's to fix, as the request line and headers are.
        return _json({"error": f"malformed request body: {exc.message}"}, status=400)
    except Exception as exc:
        return _failure(request, exc)


async def _read_again_once(request: web.Request, handler: Any) -> web.StreamResponse:
    """A read that met a pooled connection the database had dropped (a restart, a terminated
    backend) is made once more, on a fresh one, before anything of it was sent."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except Exception as exc:
        if (
            request.method not in ("GET", "HEAD")
            or not db.is_transient(exc)
            or request.writer.output_size > 0
        ):
            raise
        log.info("api_read_retried", path=request.path, error=repr(exc))
        response = await handler(request)
        return response


def _failure(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The answer to a request that failed for a reason other than its own input."""
    transport = request.transport
    transient = db.is_transient(exc)
    if transient and (transport is None or transport.is_closing()):
        # The OSError is the client's, gone in the middle of a stream or an export, not the
        # database's: nobody to answer (aiohttp drops an answer to a closed connection).
        log.info("api_client_gone", path=request.path, error=repr(exc))
        return web.Response(status=499, reason="Client Closed Request")
    if isinstance(exc, exports.ExportStalled):
        log.info("api_client_stalled", path=request.path, error=str(exc))
    elif isinstance(exc, exports.ExportTooSlow):
        log.info("api_client_too_slow", path=request.path, error=str(exc))
    elif transient:
        log.warning("api_database_unavailable", path=request.path, error=repr(exc))
    else:
        log.exception("api_internal_error", path=request.path, method=request.method)
    if request.writer.output_size > 0:
        # A stream or an export had begun: no error status can follow its first bytes. Cutting
        # the connection leaves the body unfinished (no last chunk), which clients report.
        if transport is not None:
            transport.close()
        return web.Response(status=499, reason="Client Closed Request")
    if transient:
        return _json({"error": "database unavailable, try again"}, status=503)
    return _json({"error": "internal error"}, status=500)


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_JSON_BODY:
        raise PayloadTooLarge(f"JSON body larger than {MAX_JSON_BODY} bytes")
    # Read to the end: one read() returns only what has arrived so far (a body in two TCP
    # segments, or chunked), and the cap counts as it comes.
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(CHUNK):
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise PayloadTooLarge(f"JSON body larger than {MAX_JSON_BODY} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers bad JSON, bad UTF-8 and integers too long to convert.
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    # Every string of every body at once (commands, sessions, sweeps, tokens): none can carry
    # a NUL or a lone surrogate into PostgreSQL or SUMO.
    text.check_json(body)
    return body


def _no_constant(name: str) -> Any:
    # Python's json takes NaN and Infinity; JSON has neither, and jsonb refuses them.
    raise ValueError(f"{name} is not a JSON number")


def _query_int(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{key} must be an integer", field=key, value=raw) from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{key} must be in [{lo}, {hi}]", field=key, value=value)
    return value


def _query_float(request: web.Request, key: str) -> float | None:
    raw = request.query.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidRequest(f"{key} must be a number", field=key, value=raw) from None


# ---- health ------------------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    body: dict[str, Any] = {
        "running": s.supervisor.running_count,
        "queued": s.supervisor.queued_count,
        "ports_leased": s.supervisor.ports_leased,
        "writer_queue": s.writer.queued,
        "stream_feeds": s.feeds.live,
        # A draining node is on its way out: a load balancer may stop sending it clients.
        "draining": s.supervisor.draining,
    }
    try:
        await db.ping(s.pool)
    except (*db.TRANSIENT_ERRORS, asyncpg.PostgresError) as exc:
        return _json({"status": "unavailable", "error": f"database: {exc!r}", **body}, status=503)
    return _json({"status": "ok", **body})


# ---- templates ---------------------------------------------------------------------------------


async def _read_part(part: BodyPartReader, budget: int) -> bytes:
    """A part's bytes, or PayloadTooLarge once more than `budget` bytes have come."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(CHUNK):
        size += len(chunk)
        if size > budget:
            raise PayloadTooLarge(f"upload larger than the limit of {budget} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def create_template(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    limit = s.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"upload larger than the limit of {limit} bytes", limit=limit)
    # The access middleware answered anything but multipart/form-data with 415 (Route.body).
    reader = await request.multipart()
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    used = 0
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise InvalidRequest("nested multipart bodies are not supported")
        if part.filename is not None:
            # RFC 7578 lets clients percent-encode file names (aiohttp's client does, '/' as %2F);
            # the path is checked after decoding, so an encoded '..' is refused like a plain one.
            path = scenario.check_relative_path(unquote(part.filename))
            if path in files:
                raise InvalidTemplate(f"file {path!r} appears twice in the upload", path=path)
            if len(files) >= s.config.max_template_files:
                raise PayloadTooLarge(
                    f"more than {s.config.max_template_files} files in one template"
                )
            data = await _read_part(part, limit - used)
            used += len(data)
            files[path] = data
        elif part.name in ("name", "config"):
            raw = await _read_part(part, MAX_FORM_FIELD)
            fields[part.name] = raw.decode(errors="replace").strip()
        else:
            raise InvalidRequest(
                f"unexpected form field {part.name!r}: send 'name', 'config' and file parts",
                field=part.name,
            )
    for key in ("name", "config"):
        if not fields.get(key):
            raise InvalidRequest(f"form field {key!r} is required", field=key)
    name = scenario.validate_name(fields["name"])

    def check() -> tuple[str, list[scenario.TemplateFile]]:
        # On the check's thread, once it holds a slot: the log says when checking began.
        log.info("template_checking", template=name, files=len(files), bytes=used)
        return scenario.check_upload(
            fields["config"], files, max_inflated_bytes=s.config.max_inflated_bytes
        )

    sha256, stored = await s.upload_checks.run(check)
    try:
        version = await db.insert_template_version(
            s.pool,
            name,
            fields["config"],
            sha256,
            stored,
            max_total_bytes=s.config.max_template_bytes,
        )
    except db.QuotaExceeded as exc:
        raise PayloadTooLarge(
            f"{exc.quota}: templates take {exc.used} bytes of {exc.limit}, and this upload"
            f" {exc.adding} more; delete templates or versions to make room",
            quota=exc.quota,
            limit=exc.limit,
            used=exc.used,
            upload=exc.adding,
        ) from None
    log.info("template_created", template=name, version=version, files=len(stored), bytes=used)
    return _json(
        {
            "name": name,
            "version": version,
            "sha256": sha256,
            "config": fields["config"],
            "files": [{"path": f.path, "sha256": f.sha256, "size": len(f.content)} for f in stored],
        },
        status=201,
    )


async def list_templates(request: web.Request) -> web.Response:
    return _json({"templates": await db.list_templates(request.app[SERVICES].pool)})


async def get_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    template = await db.get_template(request.app[SERVICES].pool, name)
    if template is None:
        raise TemplateNotFound(f"no template named {name!r}", template=name)
    return _json(template)


# ---- sessions ----------------------------------------------------------------------------------


def _session_json(row: dict[str, Any]) -> dict[str, Any]:
    end, sim_time = row["end_time"], row["sim_time"]
    if row["status"] == "completed":
        progress = 1.0
    elif end and sim_time is not None:
        progress = max(0.0, min(1.0, sim_time / end))
    else:
        progress = 0.0
    return {
        "id": row["id"],
        "template": row["template_name"],
        "version": row["template_version"],
        "status": row["status"],
        "label": row["label"],
        "created_at": row["created_at"],
        "started_at": row["started_at"],
        "ended_at": row["ended_at"],
        "sim_time": sim_time,
        "end": end,
        "progress": progress,
        "port": row["port"],
        "pid": row["pid"],
        "exit_code": row["exit_code"],
        "cause": row["cause"],
        "error": row["error"],
        "attempt": row["attempt"],
        # The id of the node that runs it (GET /v1/nodes), while one does.
        "node": row["node"],
        # The vehicles in the network at its latest sample, and the sweep it belongs to.
        "vehicles": row.get("vehicles"),
        "sweep": row.get("sweep_id"),
        # Whether a pause holds it now: true or false while this node runs it, else null
        # (not running, or run by another node).
        "paused": row.get("paused"),
        "request": row["request"],
    }


def _with_paused(s: Services, row: dict[str, Any]) -> dict[str, Any]:
    row["paused"] = s.supervisor.paused(row["id"])
    return row


async def _session_row(request: web.Request) -> dict[str, Any]:
    session_id = request.match_info["id"]
    row = await db.get_session(request.app[SERVICES].pool, session_id)
    if row is None:
        raise SessionNotFound(f"no session {session_id!r}", session=session_id)
    return row


async def create_session(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    body = await _json_body(request)
    if isinstance(body, dict) and isinstance(body.get("replay_of"), str):
        # The original's request is the base of the replay's: parsed once merged, in the service.
        row = await service.replay(s.pool, s.supervisor, s.config, body)
    else:
        req = parse_session_request(body, s.config)
        row = await service.create_session(s.pool, s.supervisor, req)
    request[AUDIT]["created"] = row["id"]
    return _created(request, _session_json(row), f"/v1/sessions/{row['id']}")


def _list_query(request: web.Request, *, default_limit: int, max_limit: int) -> ListQuery:
    """The filters of a session list: `status`, `label`, `template` (each empty for any) and
    `limit`."""
    status = request.query.get("status") or None
    if status is not None and status not in ALL_STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(ALL_STATUSES)}", field="status")
    template = request.query.get("template") or None
    if template is not None:
        scenario.validate_name(template)
    return ListQuery(
        status=status,
        label=request.query.get("label") or None,
        template=template,
        limit=_query_int(request, "limit", default_limit, 1, max_limit),
    )


async def list_sessions(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    q = _list_query(request, default_limit=100, max_limit=10_000)
    # The next page: sessions older than `before` (ids sort by creation), so a page never
    # repeats or skips one, whatever was created meanwhile.
    before = request.query.get("before") or None
    if before is not None and not is_session_id(before):
        raise InvalidRequest("before must be a session id", field="before")
    rows = await db.list_sessions(
        s.pool, q.status, q.label, q.limit, template=q.template, before=before
    )
    return _json({"sessions": [_session_json(_with_paused(s, r)) for r in rows]})


async def get_session(request: web.Request) -> web.Response:
    row = await _session_row(request)
    return _json(_session_json(_with_paused(request.app[SERVICES], row)))


async def session_events(request: web.Request) -> web.Response:
    row = await _session_row(request)
    events = await db.session_events(request.app[SERVICES].pool, row["id"])
    return _json({"id": row["id"], "events": events})


async def _or_forward(
    request: web.Request, act: Callable[[], Awaitable[web.Response]], body: Any = None
) -> web.Response:
    """Act on a session here, or, when another node runs it, have that node act."""
    try:
        return await act()
    except OwnedElsewhere:
        session_id = request.match_info["id"]
        owner = await db.session_owner(request.app[SERVICES].pool, session_id)
        return await forward.to_owner(request, owner, session_id, body)


async def stop_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]

    async def act() -> web.Response:
        was = await service.stop(request.app[SERVICES].supervisor, session_id)
        return _json({"id": session_id, "stopping": True, "was": was}, status=202)

    return await _or_forward(request, act)


# ---- sweeps ----------------------------------------------------------------------------------


async def create_sweep(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    sweep = sweeps.parse_sweep_request(await _json_body(request), s.config)
    created = await service.create_sweep(s.pool, s.supervisor, sweep)
    log.info("sweep_created", sweep_id=created.id, sessions=len(created.sessions))
    request[AUDIT]["created"] = created.id
    return _created(
        request,
        {"id": created.id, "count": len(created.sessions), "sessions": created.sessions},
        f"/v1/sweeps/{created.id}",
    )


async def get_sweep(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    return _json(await service.sweep_report(s.pool, request.match_info["id"]))


# ---- control ---------------------------------------------------------------------------------


async def pause_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]

    async def act() -> web.Response:
        await service.pause(request.app[SERVICES].supervisor, session_id)
        return _json({"id": session_id, "paused": True})

    return await _or_forward(request, act)


async def resume_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]

    async def act() -> web.Response:
        await service.resume(request.app[SERVICES].supervisor, session_id)
        return _json({"id": session_id, "paused": False})

    return await _or_forward(request, act)


def parse_step(body: Any) -> float:
    """The sim seconds a step request asks for."""
    seconds = body.get("seconds") if isinstance(body, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds <= 1e7:
        raise InvalidRequest('send {"seconds": s} with s > 0', field="seconds")
    return float(seconds)


async def step_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    body = await _json_body(request)
    seconds = parse_step(body)

    async def act() -> web.Response:
        sample = await service.step(request.app[SERVICES].supervisor, session_id, seconds)
        return _json({"id": session_id, "sample": sample})

    return await _or_forward(request, act, body)


async def session_commands_post(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    body = await _json_body(request)
    commands = traci_commands.parse(body)

    async def act() -> web.Response:
        answer = await service.apply_commands(
            request.app[SERVICES].supervisor, session_id, commands
        )
        return _json({"id": session_id, **answer})

    return await _or_forward(request, act, body)


async def session_logs(request: web.Request) -> web.Response:
    row = await _session_row(request)
    return _json({"id": row["id"], "logs": SESSION_LOGS.get(row["id"])})


async def session_commands_get(request: web.Request) -> web.Response:
    row = await _session_row(request)
    history = await db.session_commands(request.app[SERVICES].pool, row["id"])
    return _json({"id": row["id"], "commands": history})


async def session_samples(request: web.Request) -> web.StreamResponse:
    """The samples after `after`, at most `limit`: read in keyset pages and written piece by
    piece (chunked), so a million of them cost the daemon one page at a time."""
    s = request.app[SERVICES]
    row = await _session_row(request)
    after = _query_float(request, "after")
    limit = _query_int(request, "limit", 100_000, 1, 1_000_000)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    pace = exports.ExportPace(
        s.config.export_stall_s, s.config.export_min_rate_bytes_s, s.config.export_rate_window_s
    )
    writer = exports.PacedWriter(pace, response.write)
    await writer.write(b'{"id":' + _encode(row["id"]) + b',"samples":[')
    separator = b""
    async for page in db.sample_pages(s.pool, row["id"], after, limit):
        # A page's items without the list's brackets, encoded off the loop.
        items = (await asyncio.to_thread(_encode, page))[1:-1]
        await writer.write(separator + items)
        separator = b","
    await writer.write(b"]}")
    await response.write_eof()
    return response


async def delete_session(request: web.Request) -> web.Response:
    session_id = request.match_info["id"]
    await service.delete_session(request.app[SERVICES].pool, session_id)
    log.info("session_deleted", session_id=session_id)
    return _json({"id": session_id, "deleted": True})


# ---- analytics ---------------------------------------------------------------------------------


async def session_summary(request: web.Request) -> web.Response:
    pool = request.app[SERVICES].pool
    return _json(await service.session_summary(pool, request.match_info["id"]))


def parse_compare(query: Mapping[str, str]) -> list[str]:
    """The session ids of a compare request, in order (`?sessions=a,b,...`)."""
    ids = [i for i in query.get("sessions", "").split(",") if i]
    if not 2 <= len(ids) <= 50:
        raise InvalidRequest("sessions must list 2 to 50 session ids, comma-separated")
    return ids


async def compare_sessions(request: web.Request) -> web.Response:
    ids = parse_compare(request.query)
    return _json(await service.compare(request.app[SERVICES].pool, ids))


# About the chart's width in pixels (9 in at 100 dpi): more points than that draw nothing more.
PLOT_COLUMNS = 1000
PLOT_METRICS = ("vehicles", "mean_speed", "halting", "waiting_time", "departed", "arrived")


async def session_plot(request: web.Request) -> web.Response:
    row = await _session_row(request)
    metric = request.query.get("metric", "vehicles")
    if metric not in PLOT_METRICS:
        raise InvalidRequest(f"metric must be one of {', '.join(PLOT_METRICS)}", field="metric")
    # Downsampled in SQL: a chart's width in points, whatever the session's size.
    points = await db.sample_series(request.app[SERVICES].pool, row["id"], metric, PLOT_COLUMNS)
    svg = await asyncio.to_thread(
        plots.time_series,
        [t for t, _ in points],
        [v for _, v in points],
        title=f"{row['template_name']} {row['id']}",
        ylabel=metric.replace("_", " "),
    )
    return web.Response(body=svg, content_type="image/svg+xml")


# ---- live stream and exports -------------------------------------------------------------------


async def session_stream(request: web.Request) -> web.StreamResponse:
    s = request.app[SERVICES]
    row = await _session_row(request)
    last = _sample_cursor(request, row)
    async with (
        request.app[ACCESS].hold(request, "streams"),
        s.feeds.watch(row["id"], cap=s.config.max_watchers_per_session) as watcher,
        # An event or a ping that waits longer than this for the client aborts the connection.
        sse_response(
            request, send_timeout=s.config.stream_send_timeout_s, response_cls=_EventStream
        ) as stream,
    ):
        with _ends_if_stalled(request, stream, s.config.stream_send_timeout_s):
            await _stream_events(request, s, row, last, watcher, stream)
    return stream


@contextlib.contextmanager
def _ends_if_stalled(
    request: web.Request, stream: _EventStream, timeout_s: float
) -> Iterator[None]:
    """A stream whose client stopped reading for `timeout_s` ends quietly (logged)."""
    try:
        yield
    except (TimeoutError, ConnectionResetError):
        # A ping's timeout aborts the connection under a pending send (which then fails
        # with ConnectionResetError): either way, the client stopped reading.
        if not stream.timed_out:
            raise
        log.info("api_stream_send_timeout", path=request.path, timeout_s=timeout_s)


def _client_gone(request: web.Request) -> bool:
    # aiohttp does not cancel a handler whose client has gone, and the ping that finds it gone
    # only ends itself: a quiet stream looks for itself.
    transport = request.transport
    return transport is None or transport.is_closing()


# How often a stream with no events checks that its client is still there.
STREAM_CHECK_S = 1.0


async def _next_event(request: web.Request, watcher: Watcher[Any]) -> Any | None:
    """The watcher's next event; None once the stream's client has gone (looked for every
    STREAM_CHECK_S while nothing comes)."""
    while True:
        try:
            async with asyncio.timeout(STREAM_CHECK_S):
                return await watcher.queue.get()
        except TimeoutError:
            if _client_gone(request):
                return None


class _EventStream(EventSourceResponse):
    """An SSE response that remembers whether it was cut off for a send timeout."""

    timed_out = False

    def _abort_transport(self) -> None:
        # aiohttp_sse calls this only when a send or a ping outlived send_timeout.
        self.timed_out = True
        super()._abort_transport()

    def _set_tcp_user_timeout(self, request: web.BaseRequest) -> None:
        # A client gone before the stream starts (aiohttp_sse asserts it is there).
        if request.transport is None:
            raise ConnectionResetError("the client left before the stream started")
        super()._set_tcp_user_timeout(request)


def _sample_cursor(request: web.Request, row: dict[str, Any]) -> float | None:
    """Where a session stream resumes: after the sim time of its Last-Event-ID (or `after`),
    `<sim time>@<attempt>`. An id of an attempt before the session's current one resumes at the
    current attempt's start (a rerun begins again at sim time 0); a bare sim time is taken as
    one of the current attempt."""
    after = request.headers.get("Last-Event-ID") or request.query.get("after")
    if not after:
        return None
    time_text, at, attempt_text = after.partition("@")
    try:
        last = float(time_text)
        attempt = int(attempt_text) if at else row["attempt"]
    except ValueError:
        raise InvalidRequest(
            "Last-Event-ID/after must be a sim time, or an event id of this stream",
            value=after[:100],
        ) from None
    if not math.isfinite(last):
        raise InvalidRequest("Last-Event-ID/after must be a finite sim time", value=after[:100])
    return last if attempt == row["attempt"] else None


async def _stream_events(
    request: web.Request,
    s: Services,
    row: dict[str, Any],
    last: float | None,
    watcher: Watcher[SampleEvent | StatusEvent],
    stream: EventSourceResponse,
) -> None:
    # Subscribed first, then the backlog: together they miss nothing; repeats are skipped. The
    # backlog is read a page at a time (a slow client holds one page, and no connection). A
    # rerun not yet running has none (feeds.NOT_STARTED).
    attempt = row["attempt"]
    if attempt == 1 or row["status"] not in NOT_STARTED:
        async for page in db.sample_pages(s.pool, row["id"], last, None):
            for sample in page:
                t = sample["sim_time"]
                await stream.send(_dumps(sample), id=f"{t!r}@{attempt}", event="sample")
                last = t
    _with_paused(s, row)
    state = (row["status"], row["paused"], attempt)
    await stream.send(_dumps(_session_json(row)), event="status")
    while (event := await _next_event(request, watcher)) is not None:
        if isinstance(event, SampleEvent):
            t = event.sample["sim_time"]
            if last is None or t > last:
                await stream.send(_dumps(event.sample), id=f"{t!r}@{attempt}", event="sample")
                last = t
        elif isinstance(event, StatusEvent):
            new = (event.status, event.session["paused"], event.session["attempt"])
            if new != state:
                if new[2] != attempt:
                    # A rerun: its samples start again from sim time 0, after this status.
                    attempt, last = new[2], None
                state = new
                await stream.send(_dumps(_session_json(event.session)), event="status")
        elif isinstance(event, LaggedEvent):
            await stream.send(_dumps({"error": "watcher too slow; reconnect"}), event="error")
            break
        elif isinstance(event, EndEvent):
            break


# The session list a stream watches: its page is read once a second (feeds.LIST_POLL_S) by one
# poller per filter, however many streams share the filter.
_LIST_STREAM_PARAMS = frozenset({"status", "label", "template", "limit", "after"})


def _list_cursor(request: web.Request) -> str | None:
    raw = request.headers.get("Last-Event-ID") or request.query.get("after")
    if raw is None:
        return None
    epoch, _, seq = raw.partition("-")
    if len(epoch) != 8 or not seq.isdigit() or len(seq) > 18:
        raise InvalidRequest(
            "Last-Event-ID/after must be an event id of this stream", value=raw[:100]
        )
    return raw


async def sessions_stream(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `page` (the sessions the filters select, newest first), then
    `session` (one new or changed: status, sim time, progress, vehicles, paused...) and
    `removed` (one gone from the page). Each event's id resumes the stream where it was, while
    its feed lives; otherwise a reconnecting client gets a fresh page."""
    if unknown := sorted(set(request.query) - _LIST_STREAM_PARAMS):
        known = ", ".join(sorted(_LIST_STREAM_PARAMS))
        raise InvalidRequest(f"unknown parameter {unknown[0]!r}: use {known}", field=unknown[0])
    s = request.app[SERVICES]
    query = _list_query(request, default_limit=200, max_limit=LIST_STREAM_LIMIT)
    cursor = _list_cursor(request)
    async with (
        request.app[ACCESS].hold(request, "streams"),
        s.feeds.watch_list(query, cap=s.config.max_watchers_per_session) as (watcher, feed),
    ):
        if not feed.loaded:
            raise Busy(
                "the session list could not be read: try again", headers={"Retry-After": "1"}
            )
        async with sse_response(
            request, send_timeout=s.config.stream_send_timeout_s, response_cls=_EventStream
        ) as stream:
            with _ends_if_stalled(request, stream, s.config.stream_send_timeout_s):
                await _stream_list(request, feed, watcher, stream, cursor)
    return stream


async def _stream_list(
    request: web.Request,
    feed: ListFeed,
    watcher: Watcher[ListChange],
    stream: EventSourceResponse,
    cursor: str | None,
) -> None:
    # Subscribed first, then the page or the missed changes: together they miss nothing, and
    # changes the page (or the replay) already holds are skipped by their number.
    missed = feed.since(cursor) if cursor is not None else None
    if missed is None:
        seq, rows = feed.page()
        body = {"sessions": [_session_json(r) for r in rows], "cursor": feed.cursor(seq)}
        await stream.send(_dumps(body), id=feed.cursor(seq), event="page")
    else:
        seq = int(cursor.partition("-")[2]) if cursor else 0
    for change in missed or ():
        await _send_change(feed, stream, change)
        seq = change.seq
    while (event := await _next_event(request, watcher)) is not None:
        if isinstance(event, SessionChanged | SessionLeft):
            if event.seq > seq:
                await _send_change(feed, stream, event)
                seq = event.seq
        elif isinstance(event, LaggedEvent):
            await stream.send(_dumps({"error": "watcher too slow; reconnect"}), event="error")
            return
        else:
            await stream.send("{}", event="end")
            return


async def _send_change(feed: ListFeed, stream: EventSourceResponse, change: ListChange) -> None:
    if isinstance(change, SessionChanged):
        data, kind = _session_json(change.session), "session"
    else:
        data, kind = {"id": change.session_id}, "removed"
    await stream.send(_dumps(data), id=feed.cursor(change.seq), event=kind)


async def session_export(request: web.Request) -> web.StreamResponse:
    kind = request.match_info["kind"]
    if kind not in exports.EXPORTS:
        raise web.HTTPNotFound(reason=f"no export {kind!r}; choose {', '.join(exports.EXPORTS)}")
    row = await _session_row(request)
    services = request.app[SERVICES]
    cfg = services.config
    async with request.app[ACCESS].hold(request, "exports"), _export_slot(services):
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/csv; charset=utf-8",
                "Content-Disposition": f'attachment; filename="{row["id"]}-{kind}.csv"',
            }
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        # Rows go from the database to the client chunk by chunk; a slow client slows the COPY.
        pace = exports.ExportPace(
            cfg.export_stall_s, cfg.export_min_rate_bytes_s, cfg.export_rate_window_s
        )
        await exports.export_csv(services.pool, kind, row["id"], response.write, pace=pace)
        await response.write_eof()
        return response


@contextlib.asynccontextmanager
async def _export_slot(services: Services) -> AsyncIterator[None]:
    """One of the daemon-wide export slots, waited for up to export_slot_wait_s.

    The slots bound how many pool connections exports hold at once (a COPY holds its
    connection for as long as its client reads). They are not what makes exports fair: a
    client that goes idle or trickles is cut off within two rate windows (or the stall bound),
    which is less than the wait here, so idle clients can only delay another export, never
    lock it out; and one client cannot take every slot, as it holds at most
    max_exports_per_client (access.py) at once, waiting ones included."""
    wait_s = services.config.export_slot_wait_s
    try:
        async with asyncio.timeout(wait_s):
            await services.exports.acquire()
    except TimeoutError:
        raise Busy(
            f"{EXPORT_SLOTS} exports are running and none ended within {wait_s} s; try again"
        ) from None
    try:
        yield
    finally:
        services.exports.release()


async def metrics(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    children = await asyncio.to_thread(count_sumo_children)
    body = s.metrics.render(await db.count_sessions_by_status(s.pool), children)
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def block_loop(request: web.Request) -> web.Response:
    """Test hook: block the event loop, as a stuck call would."""
    seconds = float(request.query.get("seconds", "1"))
    time.sleep(min(seconds, 30))  # noqa: ASYNC251  (blocking is the point)
    return _json({"blocked_s": seconds})


# ---- nodes -------------------------------------------------------------------------------------


async def list_nodes(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    nodes = await db.list_nodes(s.pool, s.config.lease_ttl_s)
    for node in nodes:
        node["this"] = node["id"] == s.supervisor.node_id
    return _json({"nodes": nodes})


def parse_drain(body: Any, default_s: float) -> float:
    """The seconds a drain lets running sessions end before handing them back."""
    if not isinstance(body, dict) or set(body) - {"timeout_s"}:
        raise InvalidRequest('send {} or {"timeout_s": seconds}')
    timeout = body.get("timeout_s", default_s)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 <= timeout <= 1e6:
        raise InvalidRequest("timeout_s must be a number of seconds, 0 to 1e6", field="timeout_s")
    return float(timeout)


async def drain_node(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    raw = await _json_body(request)
    timeout_s = parse_drain(raw, s.config.drain_timeout_s)
    await s.supervisor.drain(timeout_s)
    request[AUDIT]["drain_s"] = timeout_s
    return _json(
        {
            "node_id": s.supervisor.node_id,
            "draining": True,
            "running": s.supervisor.running_count,
            "timeout_s": timeout_s,
        },
        status=202,
    )


# ---- tokens and template deletion (admin) ------------------------------------------------------


async def create_token(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest('send {"name": ..., "role": ..., "expires": "30d"}')
    try:
        name = tokens.parse_name(str(body.get("name", "")))
        role = tokens.parse_role(str(body.get("role", "")))
        expires = body.get("expires")
        expires_s = None if expires is None else tokens.parse_duration(str(expires))
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    secret = tokens.new_token()
    try:
        row = await db.insert_token(s.pool, name, role.name, tokens.digest(secret), expires_s)
    except db.TokenNameTaken:
        raise SessionConflict(
            f"a token named {name!r} exists: revoke it first", name=name
        ) from None
    await s.tokens.refresh()
    request[AUDIT]["token_made"] = name
    # The only time the token is shown.
    return _json({"token": secret, **row}, status=201)


async def list_tokens(request: web.Request) -> web.Response:
    revoked = request.query.get("revoked") in ("1", "true")
    rows = await db.list_tokens(request.app[SERVICES].pool, revoked=revoked)
    return _json({"tokens": rows})


async def revoke_token(request: web.Request) -> web.Response:
    s = request.app[SERVICES]
    name = request.match_info["name"]
    row = await db.revoke_token(s.pool, name)
    if row is None:
        raise TokenNotFound(f"no live token named {name!r}", name=name)
    s.tokens.forget(name)
    # A reload already under way may have read the token before the revocation: this one,
    # queued behind it, has the last word.
    await s.tokens.refresh()
    request[AUDIT]["token_revoked"] = name
    return _json(row)


async def delete_template(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    deleted = await _delete_template(request, name, None)
    log.info("template_deleted", template=name, sessions_deleted=deleted.sessions)
    return _json({"name": name, "deleted": True, "sessions_deleted": deleted.sessions})


async def delete_template_version(request: web.Request) -> web.Response:
    name, text = request.match_info["name"], request.match_info["version"]
    if not text.isdigit() or not 1 <= int(text) < 2**31:
        raise TemplateNotFound(f"no version {text!r} of {name!r}", template=name)
    version = int(text)
    deleted = await _delete_template(request, name, version)
    log.info(
        "template_version_deleted",
        template=name,
        version=version,
        sessions_deleted=deleted.sessions,
        template_deleted=deleted.template,
    )
    return _json(
        {
            "name": name,
            "version": version,
            "deleted": True,
            "sessions_deleted": deleted.sessions,
            "template_deleted": deleted.template,
        }
    )


async def _delete_template(request: web.Request, name: str, version: int | None) -> db.Deleted:
    with_sessions = request.query.get("sessions") == "delete"
    pool = request.app[SERVICES].pool
    return await service.delete_template(pool, name, version, with_sessions=with_sessions)


async def storage(request: web.Request) -> web.Response:
    order = request.query.get("order", "bytes")
    if order not in db.STORAGE_ORDERS:
        raise InvalidRequest(
            f"order must be one of {', '.join(db.STORAGE_ORDERS)}", field="order", value=order
        )
    report = await db.storage_report(
        request.app[SERVICES].pool,
        limit=_query_int(request, "limit", 100, 1, 1000),
        offset=_query_int(request, "offset", 0, 0, 2**31 - 1),
        order=order,
    )
    return _json(report)


# ---- the dashboard and its map -----------------------------------------------------------------


async def dashboard_index(request: web.Request) -> web.Response:
    return await request.app[DASHBOARD].index(request)


async def dashboard_asset(request: web.Request) -> web.Response:
    return await request.app[DASHBOARD].asset(request)


def _version(request: web.Request) -> int:
    raw = request.match_info["version"]
    if not raw.isdigit() or not 1 <= int(raw) < 2**31:
        raise InvalidRequest("version must be a positive integer", field="version", value=raw)
    return int(raw)


async def template_network(request: web.Request) -> web.Response:
    """The version's net as a map draws it: lane and junction shapes, traffic-light links."""
    name = scenario.validate_name(request.match_info["name"])
    body = await request.app[NETMAPS].geometry(name, _version(request))
    return web.Response(body=body, content_type="application/json")


# How long a map stream waits for a frame before it looks whether its client is still there.
MAP_CHECK_S = 1.0


async def session_map(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: `frame` events (vehicles, light states) about twice a second, while
    this stream is open; the session reads them from SUMO only while some map watches. The map
    of a session another node runs is that node's, relayed (supervisor/map_relay.py)."""
    s = request.app[SERVICES]
    row = await _session_row(request)
    live = s.supervisor.live_map(row["id"])
    if live is None:
        if row["status"] not in ("starting", "running"):
            raise SessionConflict(
                f"session {row['id']} is {row['status']}: a live map needs a running session",
                status=row["status"],
            )
        return await _relayed_map(request, s, row["id"])
    async with request.app[ACCESS].hold(request, "streams"):
        with live.watch() as watcher:
            async with sse_response(
                request, send_timeout=s.config.stream_send_timeout_s, response_cls=_EventStream
            ) as stream:
                while True:
                    frame = await watcher.next(MAP_CHECK_S)
                    if frame is not None:
                        await stream.send(frame.decode(), event="frame")
                    elif watcher.ended:
                        await stream.send("{}", event="end")
                        break
                    elif _client_gone(request):
                        break
    return stream


async def _relayed_map(request: web.Request, s: Services, session_id: str) -> web.StreamResponse:
    owner = await db.session_owner(s.pool, session_id)
    if owner is not None and owner["id"] == s.supervisor.node_id:
        # Ours, but its map is not open yet (starting) or no more (ending).
        raise Busy(
            f"session {session_id}'s map is not open: try again", headers={"Retry-After": "1"}
        )
    async with (
        request.app[ACCESS].hold(request, "streams"),
        map_relay.connect(request, owner, session_id) as upstream,
    ):
        if upstream.refusal is not None:
            return upstream.refusal
        with s.metrics.map_relays.track_inprogress():
            async with sse_response(
                request,
                headers={forward.NODE_HEADER: upstream.node},
                send_timeout=s.config.stream_send_timeout_s,
                response_cls=_EventStream,
            ) as stream:
                with _ends_if_stalled(request, stream, s.config.stream_send_timeout_s):
                    while event := await upstream.next_event(lambda: _client_gone(request)):
                        await stream.send(event.data, id=event.id, event=event.name)
                if stream.timed_out:
                    upstream.reason = "client_stalled"
    return stream


R = tokens.Role
# Every route, and the role it needs. The access middleware refuses a route missing here.
ROUTES: list[Route] = [
    Route("GET", "/healthz", healthz, None),
    # The API's description, open like /healthz (supervisor/docs.py says why).
    Route("GET", "/openapi.json", docs.openapi_json, None),
    Route("GET", "/docs", docs.page, None),
    Route("GET", "/docs/{file}", docs.asset, None),
    # The dashboard's own files: open to all, as they hold no data (supervisor/dashboard.py);
    # every call they make for data sends the user's token.
    Route("GET", "/", dashboard_index, None),
    Route("GET", "/ui/{file:.+}", dashboard_asset, None),
    Route("GET", "/metrics", metrics, R.reader),
    Route("POST", "/v1/templates", create_template, R.operator, "multipart"),
    Route("GET", "/v1/templates", list_templates, R.reader),
    Route("GET", "/v1/templates/{name}", get_template, R.reader),
    Route("DELETE", "/v1/templates/{name}", delete_template, R.admin),
    Route("DELETE", "/v1/templates/{name}/versions/{version}", delete_template_version, R.admin),
    Route("GET", "/v1/templates/{name}/versions/{version}/network", template_network, R.reader),
    Route("POST", "/v1/sessions", create_session, R.operator, "json"),
    Route("GET", "/v1/sessions", list_sessions, R.reader),
    # Before /v1/sessions/{id}, which would take "stream" for an id.
    Route("GET", "/v1/sessions/stream", sessions_stream, R.reader),
    Route("GET", "/v1/sessions/{id}", get_session, R.reader),
    Route("DELETE", "/v1/sessions/{id}", delete_session, R.operator),
    Route("GET", "/v1/sessions/{id}/events", session_events, R.reader),
    Route("POST", "/v1/sessions/{id}/stop", stop_session, R.operator),
    Route("POST", "/v1/sessions/{id}/pause", pause_session, R.operator),
    Route("POST", "/v1/sessions/{id}/resume", resume_session, R.operator),
    Route("POST", "/v1/sessions/{id}/step", step_session, R.operator, "json"),
    Route("POST", "/v1/sessions/{id}/commands", session_commands_post, R.operator, "json"),
    Route("GET", "/v1/sessions/{id}/commands", session_commands_get, R.reader),
    Route("GET", "/v1/sessions/{id}/logs", session_logs, R.reader),
    Route("GET", "/v1/sessions/{id}/samples", session_samples, R.reader),
    Route("GET", "/v1/sessions/{id}/summary", session_summary, R.reader),
    Route("GET", "/v1/sessions/{id}/plot.svg", session_plot, R.reader),
    Route("GET", "/v1/sessions/{id}/stream", session_stream, R.reader),
    Route("GET", "/v1/sessions/{id}/map", session_map, R.reader),
    Route("GET", "/v1/sessions/{id}/{kind}.csv", session_export, R.reader),
    Route("GET", "/v1/compare", compare_sessions, R.reader),
    Route("GET", "/v1/storage", storage, R.reader),
    Route("POST", "/v1/sweeps", create_sweep, R.operator, "json"),
    Route("GET", "/v1/sweeps/{id}", get_sweep, R.reader),
    Route("GET", "/v1/nodes", list_nodes, R.reader),
    Route("POST", "/v1/node/drain", drain_node, R.admin, "json"),
    Route("POST", "/v1/tokens", create_token, R.admin, "json"),
    Route("GET", "/v1/tokens", list_tokens, R.admin),
    Route("DELETE", "/v1/tokens/{name}", revoke_token, R.admin),
]
TEST_ROUTES = [Route("POST", "/_test/block_loop", block_loop, R.admin)]


def make_app(services: Services, *, test_hooks: bool = False) -> web.Application:
    routes = ROUTES + (TEST_ROUTES if test_hooks else [])
    access = Access(services.config, services.tokens, routes)
    # Bodies are streamed and capped by the handlers; aiohttp's own cap only covers request.post().
    app = web.Application(
        middlewares=[access.middleware, error_middleware], client_max_size=MAX_JSON_BODY
    )
    app[SERVICES] = services
    app[ACCESS] = access
    app[DASHBOARD] = dashboard.StaticFiles(dashboard.load())
    app[docs.PAGE] = docs.page_files()
    app[NETMAPS] = netmap.NetMaps(
        services.pool, services.upload_checks, services.config.max_inflated_bytes
    )
    document = openapi.build(routes, services.config, public_url=services.config.public_url)
    app[docs.DOCUMENT] = docs.document_bytes(document)
    app.cleanup_ctx.append(forward.client_ctx)
    app.on_response_prepare.append(access.on_prepare)
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    return app
