"""The API's description: an OpenAPI 3.1 document built from the route table (`api.ROUTES`:
method, path, role) and the request types' own JSON Schemas (`actors.request.json_schema`,
`traci_commands.json_schema`, which tests check against their validators). What only prose could
say (summaries, answers, links) is in OPERATIONS, one entry per route: `build` refuses a route
without one, and tests/test_openapi.py refuses an entry without a route."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors import request, scenario, traci_commands
from actors.request import Limits
from actors.store import SESSION_ID_PATTERN
from supervisor import db, exports, sweeps, tokens
from supervisor.access import Route, canonical
from supervisor.feeds import LIST_STREAM_LIMIT

VERSION = "0.1.0"
JSON = "application/json"
ALL_STATUSES = ["queued", "starting", "running", *db.FINAL_STATUSES]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(required: Iterable[str] = (), **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": props}


def _null(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


STR = {"type": "string"}
INT = {"type": "integer"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
TIME = {"type": "string", "format": "date-time"}
ANY_OBJ: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class Op:
    """What the document says of one route besides its method, path and role."""

    id: str
    summary: str
    answer: dict[str, Any] | None = None  # the JSON body of the success answer
    status: int = 200
    media: str = JSON  # of the success answer
    body: str | None = None  # a request body schema's name in components
    params: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()  # beyond the ones every route of its kind can answer
    links: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    tag: str = "sessions"


def _schemas(limits: Limits) -> dict[str, Any]:
    sample = _obj(
        ["sim_time"],
        sim_time=NUM,
        vehicles=INT,
        departed=INT,
        arrived=INT,
        mean_speed=NUM,
        halting=INT,
        waiting_time=NUM,
        teleports=INT,
    )
    session = _obj(
        [
            "id",
            "template",
            "version",
            "status",
            "label",
            "created_at",
            "started_at",
            "ended_at",
            "sim_time",
            "end",
            "progress",
            "port",
            "pid",
            "exit_code",
            "cause",
            "error",
            "attempt",
            "node",
            "request",
        ],
        id=STR,
        template=STR,
        version=INT,
        status={"type": "string", "enum": ALL_STATUSES},
        label=_null(STR),
        created_at=TIME,
        started_at=_null(TIME),
        ended_at=_null(TIME),
        sim_time=_null(NUM),
        end=_null(NUM),
        progress={"type": "number", "minimum": 0, "maximum": 1},
        port=_null(INT),
        pid=_null(INT),
        exit_code=_null(INT),
        cause=_null(STR),
        error=_null(STR),
        attempt=INT,
        node=_null(STR),
        request=ANY_OBJ,
        vehicles={**_null(INT), "description": "vehicles in the network at the latest sample"},
        sweep={**_null(STR), "description": "the sweep it is a run of"},
        paused={**_null(BOOL), "description": "null when another node runs it"},
    )
    session_request = request.json_schema(limits)
    session_request["description"] = (
        "A new session. With `replay_of` (a session id) it replays that session instead: its "
        "request is the base, these fields change it, and `template` may be left out."
    )
    # A replay takes its template from the session it replays.
    session_request["required"] = []
    session_request["anyOf"] = [
        {"required": ["template"]},
        {"required": ["replay_of"], "properties": {"replay_of": STR}},
    ]
    sweep = {
        **{k: v for k, v in request.json_schema(limits).items() if k not in ("if", "then")},
        "description": "One session per seed (and per combination of `vary`); every other "
        "field is a session request's, the same for every run.",
    }
    sweep["properties"] = {
        k: v for k, v in sweep["properties"].items() if k not in ("seed", "replay_of")
    }
    sweep["properties"].update(
        seeds={
            "type": "array",
            "minItems": 1,
            "maxItems": sweeps.MAX_SESSIONS,
            "uniqueItems": True,
        },
        runs={"type": "integer", "minimum": 1, "maximum": sweeps.MAX_SESSIONS},
        vary={
            "type": "object",
            "propertyNames": {
                "enum": sorted([*sweeps.VARIABLE_FIELDS, *request.SUMO_OPTIONS]),
            },
            "additionalProperties": {"type": "array", "minItems": 1},
            "description": f"values to try for each parameter; at most {sweeps.MAX_SESSIONS} "
            "sessions in all",
        },
    )
    sweep["oneOf"] = [{"required": ["seeds"]}, {"required": ["runs"]}]
    stats = _obj(["n", "mean", "std", "ci95"], n=INT, mean=_null(NUM), std=_null(NUM))
    stats["properties"]["ci95"] = _null({"type": "array", "items": NUM})
    token = _obj(
        ["name", "role", "created_at"],
        name=STR,
        role={"type": "string", "enum": [r.name for r in tokens.Role]},
        created_at=TIME,
        last_used_at=_null(TIME),
        expires_at=_null(TIME),
        revoked_at=_null(TIME),
    )
    file = _obj(["path", "sha256", "size"], path=STR, sha256=STR, size=INT)
    return {
        "Error": {
            **_obj(["error"], error={"type": "string", "description": "what was wrong"}),
            "description": "Every refusal and failure: `error` says what, in a sentence; other "
            "fields name the culprit (`field`, `value`, `allowed`, `limit`...).",
            "additionalProperties": True,
        },
        "Sample": sample,
        "Session": session,
        "SessionRequest": session_request,
        "SweepRequest": sweep,
        "Commands": traci_commands.json_schema(),
        "Step": {
            **_obj(["seconds"], seconds={"type": "number", "exclusiveMinimum": 0, "maximum": 1e7}),
            "description": "sim seconds to advance a stepped session by",
        },
        "Drain": {
            **_obj(timeout_s={"type": "number", "minimum": 0, "maximum": 1e6}),
            "additionalProperties": False,
        },
        "TokenRequest": {
            **_obj(
                ["name", "role"],
                name={"type": "string", "pattern": tokens.NAME_RE.pattern},
                role={"type": "string", "enum": [r.name for r in tokens.Role]},
                expires=_null(
                    {
                        "type": "string",
                        "pattern": r"^\s*[0-9]{1,7}[smhdw]\s*$",
                        "description": "e.g. 30d, 12h, 90m, 3600s, 2w; at most 100 years",
                    }
                ),
            ),
        },
        "Token": token,
        "NewToken": {
            "allOf": [token, _obj(["token"], token={"type": "string", "description": "shown once"})]
        },
        "TemplateUpload": {
            **_obj(
                ["name", "config", "file"],
                name={"type": "string", "pattern": scenario.NAME_RE.pattern},
                config={"type": "string", "description": "the .sumocfg's path among the files"},
                file={
                    "type": "array",
                    "items": {"type": "string", "contentMediaType": "application/octet-stream"},
                    "description": "one part per file; its filename is its path in the scenario",
                },
            ),
        },
        "TemplateVersion": _obj(
            ["name", "version", "sha256", "config", "files"],
            name=STR,
            version=INT,
            sha256=STR,
            config=STR,
            files={"type": "array", "items": file},
        ),
        "Template": _obj(
            ["name", "versions"],
            name=STR,
            versions={
                "type": "array",
                "items": _obj(
                    ["version", "sha256", "files"],
                    version=INT,
                    config_path=STR,
                    sha256=STR,
                    total_bytes=INT,
                    created_at=TIME,
                    files={"type": "array", "items": file},
                ),
            },
        ),
        "TemplateListing": _obj(
            ["name", "latest_version", "versions"],
            name=STR,
            created_at=TIME,
            latest_version=INT,
            sha256=STR,
            config_path=STR,
            updated_at=TIME,
            versions=INT,
        ),
        "Sweep": _obj(
            ["id", "request", "total", "by_status", "done", "progress", "sessions", "groups"],
            id=STR,
            request=ANY_OBJ,
            created_at=TIME,
            total=INT,
            by_status={"type": "object", "additionalProperties": INT},
            done=BOOL,
            progress={"type": "number", "minimum": 0, "maximum": 1},
            sessions={
                "type": "array",
                "items": _obj(
                    ["id", "seed", "params", "status"],
                    id=STR,
                    seed=_null(INT),
                    params=ANY_OBJ,
                    status={"type": "string", "enum": ALL_STATUSES},
                ),
            },
            groups={
                "type": "array",
                "items": _obj(
                    ["params", "completed", "figures"],
                    params=ANY_OBJ,
                    completed=INT,
                    figures={
                        "type": "object",
                        "additionalProperties": stats,
                        "description": "per summary figure: its mean and 95% interval over "
                        "the completed runs",
                    },
                ),
            },
        ),
        "Summary": _obj(["id", "status", "source"], id=STR, status=STR, source=STR),
    }


def _list(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return _obj([key], **{key: {"type": "array", "items": item}})


def _with_id(**props: Any) -> dict[str, Any]:
    return _obj(["id", *props], id=STR, **props)


_SESSION_ID = Param("id", STR, "a session's id", where="path", required=True)
_SESSION_LINKS = {
    name: {"operationId": op, "parameters": {"id": "$response.body#/id"}}
    for name, op in [
        ("GetSession", "getSession"),
        ("StopSession", "stopSession"),
        ("PauseSession", "pauseSession"),
        ("ResumeSession", "resumeSession"),
        ("StepSession", "stepSession"),
        ("SendCommands", "sendCommands"),
        ("GetCommands", "getCommands"),
        ("GetSamples", "getSamples"),
        ("GetSummary", "getSummary"),
        ("GetEvents", "getEvents"),
        ("DeleteSession", "deleteSession"),
    ]
}
# Acting on a session may be forwarded to the node that runs it (502/504 when that goes wrong).
_CONTROL = (404, 409, 502, 504)

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", "/healthz"): Op(
        "health",
        "Whether the daemon and its database answer",
        _obj(["status"], status={"type": "string", "enum": ["ok", "unavailable"]}),
        tag="daemon",
        description="503 with `status: unavailable` when the database does not answer.",
    ),
    ("GET", "/openapi.json"): Op("openapi", "This document", ANY_OBJ, tag="daemon"),
    ("GET", "/docs"): Op(
        "docs", "This document, to read in a browser", None, media="text/html", tag="daemon"
    ),
    ("GET", "/docs/{file}"): Op(
        "docsAsset",
        "The documentation page's scripts and styles",
        None,
        media="application/octet-stream",
        params=(Param("file", STR, "a file of the page", where="path", required=True),),
        errors=(404,),
        tag="daemon",
    ),
    ("GET", "/"): Op(
        "dashboard",
        "The web dashboard (its data calls send the token typed into its login form)",
        None,
        media="text/html",
        tag="dashboard",
    ),
    ("GET", "/ui/{file}"): Op(
        "dashboardAsset",
        "The dashboard's scripts, styles and vendored libraries",
        None,
        media="application/octet-stream",
        params=(Param("file", STR, "a file of the dashboard", where="path", required=True),),
        errors=(404,),
        tag="dashboard",
    ),
    ("GET", "/v1/templates/{name}/versions/{version}/network"): Op(
        "getTemplateNetwork",
        "A template version's net as a map draws it: lane and junction shapes, traffic lights",
        ANY_OBJ,
        params=(
            Param("name", STR, "a template's name", where="path", required=True),
            Param("version", STR, "a version number", where="path", required=True),
        ),
        errors=(404, 413, 422),
        tag="templates",
    ),
    ("GET", "/v1/sessions/{id}/map"): Op(
        "streamSessionMap",
        "A running session's vehicles and light states, live (server-sent events)",
        None,
        media="text/event-stream",
        params=(_SESSION_ID,),
        errors=(404, 409, 502),
        description="`frame` events about twice a second while the stream is open (SUMO is "
        "read only while some map watches), then `end`. 409 when the session is not running. "
        "Any node answers: one that does not run the session relays the map of the node that "
        "does (named by the `X-Sumo-Supervisor-Node` header), with the caller's token, and "
        "passes its refusals on; 503 with Retry-After when that node cannot be reached.",
    ),
    ("GET", "/metrics"): Op(
        "metrics", "Prometheus metrics", None, media="text/plain", tag="daemon"
    ),
    ("POST", "/v1/templates"): Op(
        "createTemplate",
        "Upload a scenario: its .sumocfg and every file it names",
        _ref("TemplateVersion"),
        status=201,
        body="TemplateUpload",
        errors=(413, 422),
        tag="templates",
        description="A template name that exists gets a new version.",
        links={
            "GetTemplate": {
                "operationId": "getTemplate",
                "parameters": {"name": "$response.body#/name"},
            },
            "CreateSession": {
                "operationId": "createSession",
                "requestBody": {"template": "$response.body#/name", "mode": "stepped"},
            },
            "DeleteTemplate": {
                "operationId": "deleteTemplate",
                "parameters": {"name": "$response.body#/name"},
            },
        },
    ),
    ("GET", "/v1/templates"): Op(
        "listTemplates",
        "Every template",
        _list("templates", _ref("TemplateListing")),
        tag="templates",
    ),
    ("GET", "/v1/templates/{name}"): Op(
        "getTemplate",
        "A template's versions and files",
        _ref("Template"),
        params=(Param("name", STR, "a template's name", where="path", required=True),),
        errors=(404,),
        tag="templates",
    ),
    ("DELETE", "/v1/templates/{name}"): Op(
        "deleteTemplate",
        "Delete a template, every version",
        _obj(["name", "deleted"], name=STR, deleted=BOOL, sessions_deleted=INT),
        params=(
            Param("name", STR, "a template's name", where="path", required=True),
            Param("sessions", {"type": "string", "enum": ["delete"]}, "delete its sessions too"),
        ),
        errors=(404, 409),
        tag="templates",
        description="Refused (409) while sessions of it exist, unless `sessions=delete`.",
    ),
    ("DELETE", "/v1/templates/{name}/versions/{version}"): Op(
        "deleteTemplateVersion",
        "Delete one version of a template",
        _obj(
            ["name", "version", "deleted"],
            name=STR,
            version=INT,
            deleted=BOOL,
            sessions_deleted=INT,
            template_deleted=BOOL,
        ),
        params=(
            Param("name", STR, "a template's name", where="path", required=True),
            Param("version", STR, "a version number", where="path", required=True),
            Param("sessions", {"type": "string", "enum": ["delete"]}, "delete its sessions too"),
        ),
        errors=(404, 409),
        tag="templates",
    ),
    ("POST", "/v1/sessions"): Op(
        "createSession",
        "Start a session (or replay one)",
        _ref("Session"),
        status=201,
        body="SessionRequest",
        errors=(404, 409, 422),
        links=_SESSION_LINKS,
        description="Queued at once; 503 when the queue is full.",
    ),
    ("GET", "/v1/sessions"): Op(
        "listSessions",
        "Sessions, newest first",
        _list("sessions", _ref("Session")),
        params=(
            Param("status", {"type": "string", "enum": ["", *ALL_STATUSES]}, "empty for any"),
            Param("label", STR, "empty for any"),
            Param("template", STR, "a template's name; empty for any"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 10_000}),
            Param(
                "before",
                {"type": "string", "pattern": SESSION_ID_PATTERN},
                "the next page: sessions older than this one (the last id of a page); empty for"
                " the newest",
            ),
        ),
    ),
    ("GET", "/v1/sessions/stream"): Op(
        "streamSessions",
        "The session list, live (server-sent events)",
        None,
        media="text/event-stream",
        params=(
            Param("status", {"type": "string", "enum": ["", *ALL_STATUSES]}, "empty for any"),
            Param("label", STR, "empty for any"),
            Param("template", STR, "a template's name; empty for any"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": LIST_STREAM_LIMIT}),
            Param("after", STR, "resume after this event id (or send Last-Event-ID)"),
        ),
        errors=(503,),
        description="Events: `page` (the sessions the filters select, newest first), then "
        "`session` (one new or changed) and `removed` (one gone from the page). An event's id "
        "resumes the stream while its feed lives; otherwise a fresh `page` comes first.",
    ),
    ("GET", "/v1/sessions/{id}"): Op(
        "getSession", "A session", _ref("Session"), params=(_SESSION_ID,), errors=(404,)
    ),
    ("DELETE", "/v1/sessions/{id}"): Op(
        "deleteSession",
        "Delete an ended session and all it recorded",
        _with_id(deleted=BOOL),
        params=(_SESSION_ID,),
        errors=(404, 409),
    ),
    ("GET", "/v1/sessions/{id}/events"): Op(
        "getEvents",
        "A session's status changes",
        _with_id(
            events={
                "type": "array",
                "items": _obj(["at", "status"], at=TIME, status=STR, reason=_null(STR)),
            }
        ),
        params=(_SESSION_ID,),
        errors=(404,),
    ),
    ("POST", "/v1/sessions/{id}/stop"): Op(
        "stopSession",
        "Stop a queued or running session",
        _with_id(stopping=BOOL, was=STR),
        status=202,
        params=(_SESSION_ID,),
        errors=_CONTROL,
    ),
    ("POST", "/v1/sessions/{id}/pause"): Op(
        "pauseSession",
        "Pause a running session",
        _with_id(paused=BOOL),
        params=(_SESSION_ID,),
        errors=_CONTROL,
    ),
    ("POST", "/v1/sessions/{id}/resume"): Op(
        "resumeSession",
        "Resume a paused session",
        _with_id(paused=BOOL),
        params=(_SESSION_ID,),
        errors=_CONTROL,
    ),
    ("POST", "/v1/sessions/{id}/step"): Op(
        "stepSession",
        "Advance a stepped session",
        _with_id(sample=_null(_ref("Sample"))),
        body="Step",
        params=(_SESSION_ID,),
        errors=_CONTROL,
        description="Answers once the sample at the new sim time is stored.",
    ),
    ("POST", "/v1/sessions/{id}/commands"): Op(
        "sendCommands",
        "Apply a batch of TraCI commands between two steps",
        _with_id(sim_time=_null(NUM), results={"type": "array", "items": ANY_OBJ}),
        body="Commands",
        params=(_SESSION_ID,),
        errors=(*_CONTROL, 422),
        description="Every id is checked first (404 naming the first unknown one); then all "
        "are applied, in order.",
    ),
    ("GET", "/v1/sessions/{id}/commands"): Op(
        "getCommands",
        "The commands applied to a session",
        _with_id(commands={"type": "array", "items": ANY_OBJ}),
        params=(_SESSION_ID,),
        errors=(404,),
    ),
    ("GET", "/v1/sessions/{id}/logs"): Op(
        "getLogs",
        "A session's recent log lines (of this node)",
        _with_id(logs={"type": "array", "items": ANY_OBJ}),
        params=(_SESSION_ID,),
        errors=(404,),
    ),
    ("GET", "/v1/sessions/{id}/samples"): Op(
        "getSamples",
        "A session's samples, in sim-time order",
        _with_id(samples={"type": "array", "items": _ref("Sample")}),
        params=(
            _SESSION_ID,
            Param("after", NUM, "only samples after this sim time"),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 1_000_000}),
        ),
        errors=(404,),
    ),
    ("GET", "/v1/sessions/{id}/summary"): Op(
        "getSummary",
        "A session's summary figures",
        _ref("Summary"),
        params=(_SESSION_ID,),
        errors=(404,),
        tag="analytics",
    ),
    ("GET", "/v1/sessions/{id}/plot.svg"): Op(
        "getPlot",
        "A chart of one sample figure over sim time",
        None,
        media="image/svg+xml",
        params=(
            _SESSION_ID,
            Param(
                "metric",
                {
                    "type": "string",
                    "enum": [
                        "vehicles",
                        "mean_speed",
                        "halting",
                        "waiting_time",
                        "departed",
                        "arrived",
                    ],
                },
            ),
        ),
        errors=(404,),
        tag="analytics",
    ),
    ("GET", "/v1/sessions/{id}/stream"): Op(
        "streamSession",
        "A session's samples and status changes, live (server-sent events)",
        None,
        media="text/event-stream",
        params=(
            _SESSION_ID,
            Param(
                "after",
                STR,
                "resume after this event id, `<sim time>@<attempt>`, or a bare sim time of the "
                "current attempt (or send Last-Event-ID)",
            ),
        ),
        errors=(400, 404),
        description="Events: `sample` (its id is `<sim time>@<attempt>`: a reconnect with "
        "Last-Event-ID misses and repeats none), `status` (a change of status, `paused` or "
        "`attempt`: after a rerun's status its samples start again from sim time 0, and an id "
        "of an earlier attempt resumes at the start of the current one), and `error` (too "
        "slow: reconnect).",
    ),
    ("GET", "/v1/sessions/{id}/{kind}.csv"): Op(
        "exportCsv",
        "A session's recorded rows as CSV",
        None,
        media="text/csv",
        params=(
            _SESSION_ID,
            Param(
                "kind",
                {"type": "string", "enum": list(exports.EXPORTS)},
                where="path",
                required=True,
            ),
        ),
        errors=(404,),
    ),
    ("GET", "/v1/compare"): Op(
        "compareSessions",
        "Sessions' summaries side by side",
        ANY_OBJ,
        params=(
            Param(
                "sessions",
                {"type": "string", "pattern": "^[^,]+(,[^,]+)+$"},
                "2 to 50 session ids, comma-separated",
                required=True,
            ),
        ),
        errors=(404,),
        tag="analytics",
    ),
    ("GET", "/v1/storage"): Op(
        "storage",
        "What templates and sessions take on disk",
        _obj(
            ["template_bytes", "templates", "sessions_total", "sessions"],
            template_bytes=INT,
            templates={"type": "array", "items": ANY_OBJ},
            sessions_total=INT,
            sessions={"type": "array", "items": ANY_OBJ},
        ),
        params=(
            Param("order", {"type": "string", "enum": list(db.STORAGE_ORDERS)}),
            Param("limit", {"type": "integer", "minimum": 1, "maximum": 1000}),
            Param("offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}),
        ),
        tag="daemon",
    ),
    ("POST", "/v1/sweeps"): Op(
        "createSweep",
        "Start one session per seed and combination of parameters",
        _obj(
            ["id", "count", "sessions"], id=STR, count=INT, sessions={"type": "array", "items": STR}
        ),
        status=201,
        body="SweepRequest",
        errors=(404, 409),
        links={"GetSweep": {"operationId": "getSweep", "parameters": {"id": "$response.body#/id"}}},
        tag="sweeps",
    ),
    ("GET", "/v1/sweeps/{id}"): Op(
        "getSweep",
        "A sweep's progress, and each figure's mean and 95% interval per combination",
        _ref("Sweep"),
        params=(Param("id", STR, "a sweep's id", where="path", required=True),),
        errors=(404,),
        tag="sweeps",
    ),
    ("GET", "/v1/nodes"): Op(
        "listNodes", "The daemons sharing this database", _list("nodes", ANY_OBJ), tag="daemon"
    ),
    ("POST", "/v1/node/drain"): Op(
        "drainNode",
        "Let this node's sessions end, then hand the rest to other nodes",
        _obj(["node_id", "draining"], node_id=STR, draining=BOOL, running=INT, timeout_s=NUM),
        status=202,
        body="Drain",
        tag="daemon",
    ),
    ("POST", "/v1/tokens"): Op(
        "createToken",
        "Make an API token (shown once)",
        _ref("NewToken"),
        status=201,
        body="TokenRequest",
        errors=(409,),
        links={
            "RevokeToken": {
                "operationId": "revokeToken",
                "parameters": {"name": "$response.body#/name"},
            }
        },
        tag="tokens",
    ),
    ("GET", "/v1/tokens"): Op(
        "listTokens",
        "API tokens (never their secrets)",
        _list("tokens", _ref("Token")),
        params=(
            Param(
                "revoked",
                {"type": "string", "enum": ["1", "true", "0", "false"]},
                "include revoked tokens",
            ),
        ),
        tag="tokens",
    ),
    ("DELETE", "/v1/tokens/{name}"): Op(
        "revokeToken",
        "Revoke a token",
        _ref("Token"),
        params=(Param("name", STR, "a token's name", where="path", required=True),),
        errors=(404,),
        tag="tokens",
    ),
    ("POST", "/_test/block_loop"): Op(
        "blockLoop",
        "Test hook: block the event loop",
        ANY_OBJ,
        params=(Param("seconds", NUM),),
        tag="daemon",
    ),
}

_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    400: "The request is malformed or a value is out of range",
    401: "No token, or an unknown, expired or revoked one",
    403: "The token's role is too small, or the page's origin is not allowed",
    404: "No such thing",
    409: "The thing is in a state that does not allow this",
    413: "The body is larger than allowed",
    415: "The body is not of the media type this route takes",
    421: "The Host header is not one of the daemon's names",
    422: "The upload or the commands could not be used",
    429: "Over the caller's fair share; Retry-After says when to try again",
    502: "The node that runs the session answered something unusable",
    503: "The database, the queue or the node is unavailable; try again",
    504: "The node that runs the session got the request, but its answer was lost",
}


def _errors(route: Route, op: Op) -> list[int]:
    codes = {400, 421, 429, 503, 415, *op.errors}
    if route.role is not None:
        codes |= {401, 403}
    else:
        codes.add(403)  # a page from an origin not allowed
    if route.body == "json":
        codes.add(413)
    return sorted(codes)


def _operation(route: Route, op: Op) -> dict[str, Any]:
    role = route.role.name if route.role is not None else None
    who = f"Needs a token of role **{role}** or higher." if role else "Open to all: no token."
    out: dict[str, Any] = {
        "operationId": op.id,
        "summary": op.summary,
        "description": f"{op.description}\n\n{who}".strip(),
        "tags": [op.tag],
        "x-role": role,
        "security": [{"bearer": []}] if role else [],
    }
    params = [
        {
            "name": p.name,
            "in": p.where,
            "required": p.required or p.where == "path",
            "schema": p.schema,
            **({"description": p.description} if p.description else {}),
        }
        for p in op.params
    ]
    if params:
        out["parameters"] = params
    if op.body is not None:
        media = "multipart/form-data" if route.body == "multipart" else JSON
        content: dict[str, Any] = {"schema": _ref(op.body)}
        if media == "multipart/form-data":
            content["encoding"] = {"file": {"contentType": "application/octet-stream"}}
        out["requestBody"] = {"required": True, "content": {media: content}}
    success: dict[str, Any] = {"description": _STATUS_TEXT.get(op.status, "OK")}
    if op.answer is not None:
        success["content"] = {op.media: {"schema": op.answer}}
    else:
        success["content"] = {op.media: {"schema": STR}}
    if op.status == 201:
        success["headers"] = {"Location": {"schema": STR, "description": "the new thing"}}
    if op.links:
        success["links"] = op.links
    responses: dict[str, Any] = {str(op.status): success}
    for code in _errors(route, op):
        responses[str(code)] = {"$ref": f"#/components/responses/E{code}"}
    if op.id == "health":
        responses["503"] = {
            "description": "The database does not answer",
            "content": {JSON: {"schema": {**op.answer, "required": ["status"]}}}
            if op.answer
            else {},
        }
    out["responses"] = responses
    return out


def build(
    routes: Iterable[Route], limits: Limits, *, public_url: str | None = None
) -> dict[str, Any]:
    """The OpenAPI document of `routes`; KeyError for a route OPERATIONS does not describe."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        # `/ui/{file:.+}` is `/ui/{file}` to the document: the pattern is aiohttp's.
        path = canonical(route.path)
        op = OPERATIONS[(route.method, path)]
        paths.setdefault(path, {})[route.method.lower()] = _operation(route, op)
    codes = sorted(c for c in _STATUS_TEXT if c >= 400)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sumo-supervisor",
            "version": VERSION,
            "description": "Runs many Eclipse SUMO simulations at once. Every route but "
            "`/healthz`, `/openapi.json` and `/docs` needs a token (`Authorization: Bearer "
            "sst_...`) of the role each route names in `x-role` (reader < operator < admin); "
            "a daemon with no token that listens on loopback only serves loopback as admin. "
            "Every refusal is a JSON `Error`.",
        },
        "servers": [{"url": (public_url or "").rstrip("/") or "/"}],
        "paths": paths,
        "components": {
            "schemas": _schemas(limits),
            "responses": {
                f"E{code}": {
                    "description": _STATUS_TEXT[code],
                    "content": {JSON: {"schema": _ref("Error")}},
                }
                for code in codes
            },
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A token made with `sumo-supervisor token create` or "
                    "POST /v1/tokens; its role is reader, operator or admin.",
                }
            },
        },
        "security": [{"bearer": []}],
    }
