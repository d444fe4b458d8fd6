"""What the CLI's client subcommands do: ask the daemon, print tables for people (rich) or JSON
for scripts (--json). A daemon error is one line on stderr and a non-zero exit, never a trace."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.errors import InvalidRequest
from actors.request import DefaultLimits, parse_session_request
from supervisor.client import Client
from supervisor.client_errors import (
    ApiError,
    ClientError,
    DaemonUnreachable,
    Forbidden,
    RequestTimeout,
    Unauthorized,
)
from supervisor.client_models import SampleEvent, Session, StatusEvent
from supervisor.client_scenario import scenario_files

# What the daemon says is printed as it is: an error text with [brackets] is not rich markup.
out = Console(highlight=False, markup=False)
# An error is one line however long: scripts and people grep it.
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CliError(Exception):
    """What went wrong, said in one line; the CLI prints it and exits non-zero."""


def run_command(args: argparse.Namespace) -> int:
    client = Client(args.url)
    name = args.command if args.command != "template" else f"template_{args.template_command}"
    try:
        return int(COMMANDS[name](client, args) or 0)
    except CliError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        return 1
    except ClientError as exc:
        err.print(f"[red]error:[/red] {escape(explain(exc, client))}")
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        client.close()


def explain(exc: ClientError, client: Client) -> str:
    """The client's error in one line, saying what to do about it where the CLI knows."""
    url = client.url
    if isinstance(exc, Unauthorized) and not client.has_token:
        return (
            f"the daemon at {url} needs a token: set SUMO_SUPERVISOR_TOKEN (make one with"
            " `sumo-supervisor token create NAME --role operator`)"
        )
    if isinstance(exc, Unauthorized):
        return f"the daemon at {url} refused SUMO_SUPERVISOR_TOKEN: {exc.message}"
    if isinstance(exc, Forbidden):
        return f"not allowed: {exc.message}"
    if isinstance(exc, ApiError):
        return f"{exc.message} (HTTP {exc.status})"
    if isinstance(exc, DaemonUnreachable):
        return f"no daemon answers at {url} (start it with `sumo-supervisor serve`, or give --url)"
    if isinstance(exc, RequestTimeout):
        return f"the daemon at {url} did not answer in time"
    return str(exc)  # ConnectionLost, ScenarioError, WaitTimeout... say it all


def _plain(value: Any) -> Any:
    """The client's typed rows as the daemon's JSON had them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=_plain))


def _table(rows: list[dict[str, Any]], columns: list[str], title: str | None = None) -> None:
    table = Table(title=title)
    for c in columns:
        table.add_column(c, no_wrap=c in ("id", "status"))
    for r in rows:
        table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in columns))
    out.print(table)


# ---- templates ---------------------------------------------------------------------------------


def template_add(client: Client, args: argparse.Namespace) -> int:
    config, files = scenario_files(args.config)  # ScenarioError: one line
    if not args.json:
        _table(
            [{"path": rel, "bytes": p.stat().st_size, "from": str(p)} for rel, p in files.items()],
            ["path", "bytes", "from"],
            title=f"{args.name}: config {config}",
        )
    if args.dry_run:
        return 0
    created = client.upload_template(args.name, config, files)
    if args.json:
        _json(created)
    else:
        out.print(f"uploaded {args.name} version {created.version} ({len(files)} files)")
    return 0


def template_list(client: Client, args: argparse.Namespace) -> int:
    templates = [dataclasses.asdict(t) for t in client.list_templates()]
    if args.json:
        _json(templates)
    else:
        _table(templates, ["name", "latest_version", "versions", "config_path", "updated_at"])
    return 0


def template_show(client: Client, args: argparse.Namespace) -> int:
    template = client.get_template(args.name)
    if args.json:
        _json(template)
        return 0
    for v in template.versions:
        files = [dataclasses.asdict(f) for f in v.files]
        _table(files, ["path", "size", "sha256"], title=f"{args.name} v{v.version}")
    return 0


# ---- sessions ----------------------------------------------------------------------------------

SESSION_COLUMNS = ["id", "template", "status", "label", "sim_time", "end", "progress", "error"]


# The daemon's limits are its settings, which the CLI cannot know: it checks a request's own
# rules only, and leaves those limits to the daemon.
_ANY_LIMITS = DefaultLimits(
    scale_limit=math.inf,
    trajectory_period_min=0.0,
    idle_timeout_s_limit=math.inf,
    max_pause_s=math.inf,
    max_wall_s_limit=math.inf,
    end_limit=math.inf,
)


def session_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of POST /v1/sessions for `run`, checked by the daemon's own parser first: a bad
    request is refused before any daemon is asked (or needed)."""
    body: dict[str, Any] = {"template": args.template}
    for key in ("end", "seed", "label", "sample_every", "sample_detail"):
        if (value := getattr(args, key, None)) is not None:
            body[key] = value
    if args.record:
        body["record"] = [r.strip() for r in args.record.split(",") if r.strip()]
    try:
        parse_session_request(body, _ANY_LIMITS)
    except InvalidRequest as exc:
        raise CliError(str(exc)) from None
    return body


def run(client: Client, args: argparse.Namespace) -> int:
    session = client.create_session(session_body(args))
    if not args.wait:
        if args.json:
            _json(session)
        else:
            out.print(session.id)
        return 0
    final = _follow_with_progress(client, session, quiet=args.json)
    if args.json:
        _json(final)
    if final.status != "completed":
        reason = escape(str(final.error or final.cause))
        err.print(f"[red]{final.status}[/red]: {reason}")
        return 1
    if not args.json:
        out.print(f"{final.id} completed at sim time {final.sim_time}")
    return 0


def _follow_with_progress(client: Client, session: Session, *, quiet: bool) -> Session:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total} s"),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    with progress:
        task = progress.add_task(session.id, total=session.end, info=session.status)
        for event in client.stream_session(session.id):
            if isinstance(event, SampleEvent):
                sample = event.sample
                info = f"{sample.vehicles} vehicles, {sample.mean_speed:.1f} m/s"
                progress.update(task, completed=sample.sim_time, info=info)
            else:
                progress.update(task, total=event.session.end, info=event.session.status)
    return client.get_session(session.id)


def ps(client: Client, args: argparse.Namespace) -> int:
    sessions = client.list_sessions(status=args.status, label=args.label, limit=args.limit)
    rows = [dataclasses.asdict(s) for s in sessions]
    if args.json:
        _json(rows)
    else:
        _table(rows, SESSION_COLUMNS)
    return 0


def show(client: Client, args: argparse.Namespace) -> int:
    session = client.get_session(args.id)
    if args.json:
        _json(session)
        return 0
    table = Table(show_header=False)
    for key, value in dataclasses.asdict(session).items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    out.print(table)
    return 0


def stop(client: Client, args: argparse.Namespace) -> int:
    answer = client.stop_session(args.id)
    if args.json:
        _json(answer)
    else:
        out.print(f"stopping {args.id}")
    return 0


def watch(client: Client, args: argparse.Namespace) -> int:
    status = None
    for event in client.stream_session(args.id):
        if isinstance(event, StatusEvent):
            status = event.session.status
        if args.json:
            name, data = (
                ("sample", event.sample)
                if isinstance(event, SampleEvent)
                else ("status", event.session)
            )
            print(json.dumps({"event": name, "data": data}, default=_plain), flush=True)
        elif isinstance(event, SampleEvent):
            s = event.sample
            print(
                f"t={s.sim_time:g} vehicles={s.vehicles} departed={s.departed}"
                f" arrived={s.arrived} speed={s.mean_speed:.2f}",
                flush=True,
            )
        else:
            error = event.session.error
            print(f"status {status}" + (f": {error}" if error else ""), flush=True)
    return 0 if status in (None, "completed", "running") else 1


def logs(client: Client, args: argparse.Namespace) -> int:
    events = client.session_logs(args.id)
    if args.json:
        _json(events)
        return 0
    for e in events:
        extra = {
            k: v
            for k, v in e.items()
            if k not in ("timestamp", "level", "event", "session_id", "component")
        }
        print(f"{e.get('timestamp', '')} {e.get('level', ''):7} {e['event']} {json.dumps(extra)}")
    return 0


def get(client: Client, args: argparse.Namespace) -> int:
    if args.output is None:
        client.export_csv(args.id, args.what, sys.stdout.buffer)
        return 0
    partial = args.output.with_name(args.output.name + ".part")
    with open(partial, "wb") as fh:
        size = client.export_csv(args.id, args.what, fh)
    partial.replace(args.output)
    if args.json:
        _json({"file": str(args.output), "bytes": size})
    else:
        err.print(f"wrote {size} bytes to {escape(str(args.output))}")
    return 0


FIGURES = [
    "status", "source", "loaded", "inserted", "waiting", "arrived", "running", "teleports",
    "trips", "mean_duration", "p95_duration", "mean_waiting_time", "mean_time_loss",
    "mean_route_length", "mean_speed", "mean_depart_delay", "total_travel_time",
    "total_distance", "collisions", "persons_loaded", "persons_running", "throughput_per_hour",
    "sim_seconds",
]  # fmt: skip


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def summary(client: Client, args: argparse.Namespace) -> int:
    figures = client.summary(args.id)
    if args.json:
        _json(figures)
        return 0
    table = Table(title=args.id, show_header=False)
    for key in FIGURES:
        table.add_row(key, _fmt(getattr(figures, key)))
    out.print(table)
    return 0


def compare(client: Client, args: argparse.Namespace) -> int:
    result = client.compare(args.ids)
    if args.json:
        _json(result)
        return 0
    table = Table()
    table.add_column("figure")
    for s in result["sessions"]:
        table.add_column(s["id"])
    for d in result["differences"]:
        table.add_column(f"Δ {d['id'][-8:]}")
    for key in FIGURES:
        row = [_fmt(s.get(key)) for s in result["sessions"]]
        row += [_fmt(d.get(key)) for d in result["differences"]]
        table.add_row(key, *row)
    out.print(table)
    return 0


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def storage(client: Client, args: argparse.Namespace) -> int:
    report = client.storage(limit=args.limit, offset=args.offset, order=args.order)
    if args.json:
        _json(report)
        return 0
    _table(
        [t | {"size": _size(t["bytes"])} for t in report["templates"]],
        ["name", "versions", "size", "bytes"],
        title=f"templates: {_size(report['template_bytes'])}",
    )
    sessions = report["sessions"]
    _table(
        [s | {"size": _size(s["bytes"])} | {k: v for k, v in s["rows"].items()} for s in sessions],
        [
            "id",
            "template",
            "version",
            "status",
            "size",
            "samples",
            "trajectories",
            "trips",
            "edges",
        ],
        title=f"{len(sessions)} of {report['sessions_total']} sessions, by {args.order}",
    )
    return 0


def nodes(client: Client, args: argparse.Namespace) -> int:
    listed = client.nodes()
    if args.json:
        _json(listed)
        return 0
    rows = [
        n
        | {
            "this": "*" if n["this"] else "",
            "heartbeat": f"{n['heartbeat_age_s']:.0f} s ago",
            "draining": "yes" if n["draining"] else "",
        }
        for n in listed
    ]
    _table(
        rows,
        ["this", "name", "id", "state", "running", "capacity", "heartbeat", "draining", "api_url"],
    )
    return 0


def drain(client: Client, args: argparse.Namespace) -> int:
    answer = client.drain(args.timeout)
    if args.json:
        _json(answer)
    else:
        out.print(
            f"node {answer['node_id']} drains: {answer['running']} running sessions have"
            f" {answer['timeout_s']:g} s to end, then are handed back; then it exits"
        )
    return 0


COMMANDS: dict[str, Callable[[Client, argparse.Namespace], int]] = {
    "template_add": template_add,
    "template_list": template_list,
    "template_show": template_show,
    "run": run,
    "ps": ps,
    "show": show,
    "stop": stop,
    "watch": watch,
    "logs": logs,
    "get": get,
    "summary": summary,
    "compare": compare,
    "storage": storage,
    "nodes": nodes,
    "drain": drain,
}
