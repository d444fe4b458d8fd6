"""`sumo-supervisor token create|list|revoke`: token management straight in the database, with
the same --state-dir / --database-url / --config as `serve`, so the first admin token can be made
before the daemon has any (and before it runs). A running daemon sees the change at once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from supervisor import db, pgembed, tokens
from supervisor import logs as logsetup
from supervisor.config import Config, ConfigError, load_config


def add_parsers(sub: Any, database_flags: Any) -> None:
    token = sub.add_parser("token", help="make, list and revoke API tokens (in the database)")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    create = tsub.add_parser("create", help="make a token; it is printed once, never again")
    create.add_argument("name")
    create.add_argument("--role", required=True, choices=[r.name for r in tokens.Role])
    create.add_argument("--expires", help="lifetime, e.g. 30d, 12h, 90m (default: none)")
    listing = tsub.add_parser("list", help="list tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="revoked ones too")
    revoke = tsub.add_parser("revoke", help="revoke a token: it stops working at once")
    revoke.add_argument("name")
    for parser in (create, listing, revoke):
        database_flags(parser)
        parser.add_argument("--json", action="store_true", help="print JSON, for scripts")


def run(args: argparse.Namespace, env: dict[str, str]) -> int:
    # stdout is the token (or the listing) alone: scripts read it.
    logsetup.configure("warning", "console", stream=sys.stderr)
    flags = {k: getattr(args, k, None) for k in ("state_dir", "database_url", "config_file")}
    try:
        cfg = load_config(flags, env)
        if args.token_command == "create":
            tokens.parse_name(args.name)
            expires_s = tokens.parse_duration(args.expires) if args.expires else None
        return asyncio.run(_run(cfg, args, expires_s if args.token_command == "create" else None))
    except (ConfigError, ValueError) as exc:
        print(f"sumo-supervisor: {exc}", file=sys.stderr)
        return 2


@asynccontextmanager
async def _database(cfg: Config) -> AsyncIterator[asyncpg.Pool]:
    async with pgembed.database(cfg.database_url, cfg.pgdata, cfg.shutdown_timeout_s) as url:
        pool = await db.create_pool(url, max_size=1, command_timeout=30)
        try:
            await db.apply_schema(pool)
            yield pool
        finally:
            await pool.close()


async def _run(cfg: Config, args: argparse.Namespace, expires_s: float | None) -> int:
    async with _database(cfg) as pool:
        if args.token_command == "create":
            secret = tokens.new_token()
            try:
                row = await db.insert_token(
                    pool, args.name, args.role, tokens.digest(secret), expires_s
                )
            except db.TokenNameTaken:
                print(f"sumo-supervisor: a token named {args.name!r} exists", file=sys.stderr)
                return 1
            if args.json:
                print(json.dumps({"token": secret, **row}, default=str))
            else:
                print(secret)
                print(
                    f"token {args.name!r} ({args.role}) made: it is shown this once; give it to"
                    " clients as SUMO_SUPERVISOR_TOKEN",
                    file=sys.stderr,
                )
            return 0
        if args.token_command == "list":
            rows = await db.list_tokens(pool, revoked=args.all)
            if args.json:
                print(json.dumps(rows, default=str, indent=2))
            for r in [] if args.json else rows:
                state = "revoked" if r["revoked_at"] else "live"
                print(
                    f"{r['name']:24} {r['role']:8} {state:7} created {r['created_at']:%Y-%m-%d}"
                    f" last used {r['last_used_at'] or 'never'}"
                    f" expires {r['expires_at'] or 'never'}"
                )
            return 0
        revoked = await db.revoke_token(pool, args.name)
        if revoked is None:
            print(f"sumo-supervisor: no live token named {args.name!r}", file=sys.stderr)
            return 1
        print(json.dumps(revoked, default=str) if args.json else f"revoked {args.name!r}")
        return 0
