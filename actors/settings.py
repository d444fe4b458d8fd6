"""The actors' settings: one object each, built once from the daemon's Config (supervisor/app.py).

A session actor gets its SessionSettings whole; the supervisor actor holds them inside its own."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from actors.sandbox import SandboxPlan


@dataclass(frozen=True)
class SessionSettings:
    sumo_binary: str
    # How long SUMO may take to exit once asked, before its process group is killed.
    stop_grace_s: float
    # How long SUMO may take to open its TraCI port.
    connect_timeout_s: float
    sumo_nice: int = 0
    # How each SUMO is confined (actors/sandbox.py); None runs it unconfined.
    sandbox: SandboxPlan | None = None
    # Rows one session may store (samples and recorded rows); 0: no quota.
    max_session_rows: int = 0
    # How long a session may stay paused when it asks for no max_pause_s.
    max_pause_s: float = math.inf
    # The latest sim time a session runs to, whatever its scenario says.
    end_limit: float = math.inf


@dataclass(frozen=True)
class SupervisorSettings:
    # Each session's directory is made under it; leftovers are removed at start.
    temp_root: Path
    max_running: int
    max_queued: int
    session: SessionSettings
    # A session's max_wall_s when it asks for none.
    max_wall_s_default: float | None = None
    # This node among the daemons of one database: its name (for people), how long its leases
    # last and how often it renews them (and looks for lapsed ones to rescue), and how often it
    # looks for queued sessions when nothing woke it.
    node_name: str = "node"
    lease_ttl_s: float = 10.0
    lease_renew_s: float = 3.0
    claim_poll_s: float = 1.0
