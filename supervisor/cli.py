"""The `sumo-supervisor` command."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence

from supervisor.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sumo-supervisor",
        description="Run many SUMO simulations at once, with PostgreSQL as the source of truth.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Run the daemon. Every option can also be set as SUMO_SUPERVISOR_<NAME> "
        "in the environment or in the TOML file of --config; flags win over env over file.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", help="HTTP port (default 8750; 0 picks a free one)")
    serve.add_argument(
        "--state-dir",
        dest="state_dir",
        help="state directory (default ./state or $STATE_DIRECTORY)",
    )
    serve.add_argument(
        "--database-url",
        dest="database_url",
        help="PostgreSQL URL (default: an embedded server in the state dir)",
    )
    serve.add_argument("--traci-ports", dest="traci_ports", help="TraCI port range (8813-8912)")
    serve.add_argument(
        "--max-running", dest="max_running", help="sessions running at once (default: CPUs)"
    )
    serve.add_argument("--max-queued", dest="max_queued", help="sessions waiting at most")
    serve.add_argument("--log-level", dest="log_level", help="debug|info|warning|error")
    serve.add_argument("--log-format", dest="log_format", help="json (default) or console")
    serve.add_argument("--config", dest="config_file", help="TOML config file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
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
    return 2
