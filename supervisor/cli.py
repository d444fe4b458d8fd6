"""The `sumo-supervisor` command: `serve` runs the daemon; the other subcommands talk to one."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supervisor import tokens_cli
from supervisor.client import DEFAULT_URL
from supervisor.config import ConfigError, load_config


def _serve_parser(sub: Any) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. Every option can also be set as SUMO_SUPERVISOR_<NAME> "
        "in the environment or in the TOML file of --config; flags win over env over file.",
    )
    serve.add_argument(
        "--host",
        help="address to listen on (default 127.0.0.1; any other needs a token to exist)",
    )
    serve.add_argument("--port", help="HTTP port (default 8750; 0 picks a free one)")
    _database_flags(serve)
    serve.add_argument(
        "--public-url", dest="public_url", help="the URL clients use (a proxy's, or https)"
    )
    serve.add_argument(
        "--allowed-hosts", dest="allowed_hosts", help="more Host names to accept, comma-separated"
    )
    serve.add_argument(
        "--allowed-origins",
        dest="allowed_origins",
        help="web origins allowed to call the API (CORS), comma-separated",
    )
    serve.add_argument("--tls-cert", dest="tls_cert", help="serve HTTPS with this certificate")
    serve.add_argument("--tls-key", dest="tls_key", help="and this private key")
    serve.add_argument(
        "--rate-limit", dest="rate_limit_per_s", help="requests a second per client (default 20)"
    )
    serve.add_argument("--rate-burst", dest="rate_burst", help="burst per client (default 40)")
    serve.add_argument("--traci-ports", dest="traci_ports", help="TraCI port range (8813-8912)")
    serve.add_argument(
        "--max-running", dest="max_running", help="sessions running at once (default: CPUs)"
    )
    serve.add_argument("--max-queued", dest="max_queued", help="sessions waiting at most")
    serve.add_argument("--log-level", dest="log_level", help="debug|info|warning|error")
    serve.add_argument("--log-format", dest="log_format", help="json (default) or console")
    serve.add_argument(
        "--sumo-memory-mb", dest="sumo_memory_mb", help="each SUMO's address space (4096)"
    )
    serve.add_argument(
        "--sumo-max-file-mb", dest="sumo_max_file_mb", help="largest file a SUMO writes (2048)"
    )
    serve.add_argument(
        "--sumo-max-open-files", dest="sumo_max_open_files", help="open files per SUMO (1024)"
    )
    _switch(
        serve, "allow_unconfined", "serve a non-loopback host where SUMO is not fully sandboxed"
    )
    serve.add_argument("--node-name", dest="node_name", help="this node's name (the hostname)")
    serve.add_argument(
        "--advertise-url", dest="advertise_url", help="where other nodes reach this one's API"
    )
    _switch(serve, "drain_on_sigterm", "on SIGTERM let sessions end (drain_timeout_s), then exit")
    serve.add_argument("--drain-timeout-s", dest="drain_timeout_s", help="(default 300)")


def _switch(parser: Any, name: str, help: str) -> None:
    """An on/off setting: given, it is on; not given (None), the env, file or default decides."""
    flag = "--" + name.replace("_", "-")
    parser.add_argument(flag, dest=name, action="store_true", default=None, help=help)


def _database_flags(parser: Any) -> None:
    """Where the state and the database are: `serve` and `token` take the same."""
    parser.add_argument(
        "--state-dir",
        dest="state_dir",
        help="state directory (default ./state or $STATE_DIRECTORY)",
    )
    parser.add_argument(
        "--database-url",
        dest="database_url",
        help="PostgreSQL URL (default: an embedded server in the state dir)",
    )
    parser.add_argument("--config", dest="config_file", help="TOML config file")


def _command(sub: Any, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand that talks to a running daemon."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help)
    parser.add_argument("--url", help=f"the daemon (default $SUMO_SUPERVISOR_URL or {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return parser


def _client_parsers(sub: Any) -> None:
    template = sub.add_parser("template", help="add, list and show templates")
    tsub = template.add_subparsers(dest="template_command", required=True, metavar="COMMAND")
    add = _command(tsub, "add", "upload a scenario: its .sumocfg and every file it names")
    add.add_argument("name")
    add.add_argument("config", type=Path)
    add.add_argument("--dry-run", action="store_true", help="only show what would be uploaded")
    _command(tsub, "list", "list templates")
    _command(tsub, "show", "show a template's versions and files").add_argument("name")

    run = _command(sub, "run", "start a session")
    run.add_argument("template")
    run.add_argument("--end", type=float, help="sim seconds")
    run.add_argument("--seed", type=int)
    run.add_argument("--record", help="comma-separated: samples,trajectories,trips,edges")
    run.add_argument("--label")
    run.add_argument("--sample-every", type=int, dest="sample_every")
    run.add_argument(
        "--sample-detail",
        choices=("period", "exact"),
        dest="sample_detail",
        help="period (default): SUMO's summary once per sample; exact: every step",
    )
    run.add_argument("--wait", action="store_true", help="show progress; exit 0 only if completed")
    ps = _command(sub, "ps", "list sessions")
    ps.add_argument("--status")
    ps.add_argument("--label")
    ps.add_argument("--limit", type=int, default=50)
    for name, help in (
        ("show", "show one session"),
        ("stop", "stop a session"),
        ("watch", "follow a session's live stream, one line per event"),
        ("logs", "a session's log events, from the daemon"),
        ("summary", "a session's summary figures"),
    ):
        _command(sub, name, help).add_argument("id")
    get = _command(sub, "get", "export a session's rows as CSV")
    get.add_argument("id")
    get.add_argument("what", choices=["samples", "trips", "trajectories", "edges"])
    get.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    _command(sub, "compare", "summaries of sessions side by side").add_argument("ids", nargs="+")
    storage = _command(sub, "storage", "what templates and sessions take in the database")
    storage.add_argument("--limit", type=int, default=20, help="sessions shown (biggest first)")
    storage.add_argument("--offset", type=int, default=0)
    storage.add_argument("--order", choices=["bytes", "created"], default="bytes")
    _command(sub, "nodes", "the daemons that share this daemon's database")
    drain = _command(sub, "drain", "stop this daemon claiming sessions; it exits once drained")
    drain.add_argument(
        "--timeout", type=float, help="seconds running sessions may take to end (drain_timeout_s)"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sumo-supervisor",
        description="Run many SUMO simulations at once, with PostgreSQL as the source of truth.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    tokens_cli.add_parsers(sub, _database_flags)
    _client_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "token":
        return tokens_cli.run(args, dict(os.environ))
    if args.command != "serve":
        from supervisor.commands_cli import run_command

        return run_command(args)
    flags = {k: v for k, v in vars(args).items() if k != "command"}
    try:
        cfg = load_config(flags, os.environ)
    except ConfigError as exc:
        print(f"sumo-supervisor: configuration error: {exc}", file=sys.stderr)
        return 2
    from supervisor.app import serve  # the daemon's imports are only needed to serve

    try:
        return asyncio.run(serve(cfg))
    except ConfigError as exc:
        print(f"sumo-supervisor: configuration error: {exc}", file=sys.stderr)
        return 2
