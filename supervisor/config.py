"""The daemon's configuration: one frozen object, built once from flags > env > TOML > defaults."""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.request import DefaultLimits

ENV_PREFIX = "SUMO_SUPERVISOR_"

# One source for the limits a request is checked against (actors/request.py).
_LIMITS = DefaultLimits()


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class PortRange:
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        try:
            first_s, _, last_s = text.partition("-")
            first = int(first_s)
            last = int(last_s) if last_s else first
        except ValueError:
            raise ConfigError(f"traci_ports: expected 'FIRST-LAST', got {text!r}") from None
        if not (1024 <= first <= last <= 65535):
            raise ConfigError(f"traci_ports: need 1024 <= FIRST <= LAST <= 65535, got {text!r}")
        return cls(first, last)

    def ports(self) -> range:
        return range(self.first, self.last + 1)

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8750
    state_dir: Path = Path("state")
    database_url: str | None = None
    traci_ports: PortRange = field(default_factory=lambda: PortRange(8813, 8912))
    max_running: int = field(default_factory=lambda: os.cpu_count() or 1)
    max_queued: int = 10_000
    log_level: str = "info"
    log_format: str = "json"
    # Uploads: the whole multipart body, and how many files one template may have.
    max_upload_bytes: int = 256 * 1024 * 1024
    max_template_files: int = 1000
    # Checking an upload: each file's size once inflated (counted while it inflates: SUMO inflates
    # gzip and zlib content whatever the file's name), how many uploads are checked at once, and
    # how long another waits for its turn before it gets 503.
    max_inflated_bytes: int = 256 * 1024 * 1024
    # Storage quotas (0: none): the files of all templates' versions together, and the rows one
    # session may store (samples and recorded rows together; over it, it fails `row_quota`).
    max_template_bytes: int = 10 * 1024**3
    max_session_rows: int = 100_000_000
    upload_checks: int = 2
    upload_check_wait_s: float = 2.0
    # How long a stopping session gets to end by itself before its process group is killed.
    stop_grace_s: float = 2.0
    # SUMO's CPU priority below the daemon's (a nice value, -20 to 19): when simulations fill
    # every core, the API, the writer and the sessions' TraCI threads still run at once. Below 0
    # (needs CAP_SYS_NICE) it puts SUMO ahead of other work on a shared machine.
    sumo_nice: int = 10
    # How long SUMO may take to open its TraCI port.
    connect_timeout_s: float = 60.0
    # SUMO's sandbox (actors/sandbox.py): false runs SUMO unconfined, as a baseline to measure
    # against. Its caps, per SUMO: address space (its binary and libraries take ~200 MB of
    # it), the largest file it may write, and how many files it may have open.
    sandbox: bool = True
    sumo_memory_mb: int = 4096
    sumo_max_file_mb: int = 2048
    sumo_max_open_files: int = 1024
    # Serve a non-loopback host even when the kernel cannot enforce all of the sandbox.
    allow_unconfined: bool = False
    # How long one database statement may take (an export: as long as its client needs).
    db_command_timeout_s: float = 60.0
    # How long an export waits for its client to take more data before cutting it off.
    export_stall_s: float = 60.0
    # An export's client must also take at least export_min_rate_bytes_s over every
    # export_rate_window_s (0: no minimum), else it is cut off: an idle or trickling client
    # would hold one of the daemon-wide export slots (and its database connection) for hours.
    export_min_rate_bytes_s: float = 16 * 1024
    export_rate_window_s: float = 15.0
    # How long an export waits for a daemon-wide slot before it gets 503: longer than it takes
    # to cut off an idle holder (two rate windows: the first can be filled by socket buffers).
    export_slot_wait_s: float = 40.0
    # How long a live stream (SSE) waits for its client to take an event before cutting it off,
    # and how many clients may watch one session at once.
    stream_send_timeout_s: float = 30.0
    max_watchers_per_session: int = 64
    # Whole-daemon shutdown deadline (sessions stopped, writer flushed).
    shutdown_timeout_s: float = 20.0
    writer_batch_rows: int = 5000
    writer_flush_s: float = 0.25
    writer_queue_rows: int = 20_000
    # Who may reach the API (see README "Security"). The daemon's own names (loopback names, the
    # bind address, IP literals) are always accepted as Host; these add names a proxy or DNS uses.
    allowed_hosts: tuple[str, ...] = ()
    # Origins whose pages may call the API (CORS); none by default.
    allowed_origins: tuple[str, ...] = ()
    # The URL clients reach the daemon at (behind a proxy, or with TLS); used for the links it
    # gives out, and its host is an allowed Host.
    public_url: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # A fair share for each client (each token, or each address when tokenless): a token bucket
    # of rate_limit_per_s requests a second with bursts of rate_burst, and caps on what one
    # client may hold open at once.
    rate_limit_per_s: float = 20.0
    rate_burst: int = 40
    max_streams_per_client: int = 4
    max_exports_per_client: int = 2
    # Limits on what a session may ask (README "Configuration"): none holds a run slot forever.
    # A session's wall-clock time (paused time counts unless it asks otherwise): its default
    # (never more than the limit: setting only the limit lowers both), and the most it may ask
    # for.
    max_wall_s_default: float = 86_400.0
    max_wall_s_limit: float = _LIMITS.max_wall_s_limit
    # How long a session may stay paused in one go: the default, and the most it may ask for.
    max_pause_s: float = _LIMITS.max_pause_s
    # The most a stepped session may wait to be stepped, the shortest trajectory period, the
    # largest `scale` option and the latest `end` (sim seconds) a session may ask for.
    idle_timeout_s_limit: float = _LIMITS.idle_timeout_s_limit
    trajectory_period_min: float = _LIMITS.trajectory_period_min
    scale_limit: float = _LIMITS.scale_limit
    end_limit: float = _LIMITS.end_limit
    # Several daemons on one database (README "Several machines"). `node_name` is for people
    # (default: the hostname); `advertise_url` is where other nodes reach this one's API to
    # forward control of the sessions it runs (default: public_url, else where it listens).
    node_name: str | None = None
    advertise_url: str | None = None
    # A node renews its sessions' leases every lease_renew_s; the database lets them lapse
    # lease_ttl_s after the last renewal, and then any node rescues them.
    lease_ttl_s: float = 10.0
    lease_renew_s: float = 3.0
    # On SIGTERM: stop at once (false), or drain: claim nothing more, let running sessions end
    # for up to drain_timeout_s, hand the rest back to the queue, then exit.
    drain_on_sigterm: bool = False
    drain_timeout_s: float = 300.0
    config_file: Path | None = None

    @property
    def temp_root(self) -> Path:
        return self.state_dir / "sessions"

    @property
    def pgdata(self) -> Path:
        return self.state_dir / "pgdata"


def _coerce(name: str, raw: Any, source: str) -> Any:
    """Turn a flag, env or TOML value into the field's type, or say which setting is wrong."""
    target = {f.name: f for f in dataclasses.fields(Config)}[name]
    kind = str(target.type)
    try:
        if name == "traci_ports":
            return raw if isinstance(raw, PortRange) else PortRange.parse(str(raw))
        if kind.startswith("tuple"):
            # A list in TOML; a comma-separated string in a flag or the environment.
            items = raw if isinstance(raw, list | tuple) else str(raw).split(",")
            return tuple(str(i).strip() for i in items if str(i).strip())
        if "Path" in kind:
            return Path(str(raw)) if raw not in (None, "") else None
        if kind.startswith("str | None"):
            return str(raw) if raw not in (None, "") else None
        if kind == "int":
            if isinstance(raw, bool):
                raise ValueError
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return _bool(raw)
        return str(raw)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {source})") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: invalid value {raw!r} (from {source})") from None


def _bool(raw: Any) -> bool:
    """A TOML boolean, or the words people write in a flag or the environment."""
    if isinstance(raw, bool):
        return raw
    word = str(raw).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return True
    if word in ("false", "0", "no", "off"):
        return False
    raise ValueError(word)


def _validate(cfg: Config) -> None:
    if not 0 <= cfg.port <= 65535:
        raise ConfigError(f"port: must be 0..65535 (0 = any free port), got {cfg.port}")
    if cfg.max_running < 1:
        raise ConfigError(f"max_running: must be at least 1, got {cfg.max_running}")
    if not -20 <= cfg.sumo_nice <= 19:
        raise ConfigError(f"sumo_nice: must be -20..19, got {cfg.sumo_nice}")
    # SUMO's own binary and libraries take ~200 MB of address space before it reads anything.
    if cfg.sumo_memory_mb < 256:
        raise ConfigError(f"sumo_memory_mb: must be at least 256, got {cfg.sumo_memory_mb}")
    if cfg.sumo_max_file_mb < 1:
        raise ConfigError(f"sumo_max_file_mb: must be at least 1, got {cfg.sumo_max_file_mb}")
    if cfg.sumo_max_open_files < 16:
        raise ConfigError(
            f"sumo_max_open_files: must be at least 16, got {cfg.sumo_max_open_files}"
        )
    if cfg.max_queued < 1:
        raise ConfigError(f"max_queued: must be at least 1, got {cfg.max_queued}")
    if cfg.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: one of debug, info, warning, error; got {cfg.log_level!r}")
    if cfg.log_format not in ("json", "console"):
        raise ConfigError(f"log_format: 'json' or 'console', got {cfg.log_format!r}")
    for name in (
        "max_upload_bytes",
        "max_template_files",
        "max_inflated_bytes",
        "upload_checks",
        "writer_batch_rows",
        "writer_queue_rows",
        "rate_burst",
        "max_streams_per_client",
        "max_exports_per_client",
        "max_watchers_per_session",
    ):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name}: must be positive, got {getattr(cfg, name)}")
    for name in ("max_template_bytes", "max_session_rows"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must be 0 (no quota) or positive, got {getattr(cfg, name)}")
    for name in (
        "stop_grace_s",
        "connect_timeout_s",
        "db_command_timeout_s",
        "export_stall_s",
        "export_rate_window_s",
        "stream_send_timeout_s",
        "shutdown_timeout_s",
        "writer_flush_s",
        "lease_renew_s",
        "drain_timeout_s",
    ):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(cfg, name)}")
    for name in ("export_min_rate_bytes_s", "export_slot_wait_s"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name}: must be 0 or more, got {getattr(cfg, name)}")
    if cfg.rate_limit_per_s <= 0:
        raise ConfigError(f"rate_limit_per_s: must be positive, got {cfg.rate_limit_per_s}")
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError("tls_cert and tls_key: give both, or neither")
    for name in ("public_url", "advertise_url"):
        url = getattr(cfg, name)
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name}: must start with http:// or https://, got {url!r}")
    if not cfg.lease_ttl_s >= 2 * cfg.lease_renew_s:
        # A node kills its SUMOs when it could not renew for lease_ttl_s - lease_renew_s: that
        # must leave it at least one more try.
        raise ConfigError(
            f"lease_ttl_s: must be at least twice lease_renew_s ({cfg.lease_renew_s}),"
            f" got {cfg.lease_ttl_s}"
        )
    for origin in cfg.allowed_origins:
        # No wildcard: a page allowed in must be named.
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ConfigError(
                f"allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
            )
    for name in (
        "max_wall_s_default",
        "max_wall_s_limit",
        "max_pause_s",
        "idle_timeout_s_limit",
        "trajectory_period_min",
        "scale_limit",
        "end_limit",
    ):
        if not 0 < getattr(cfg, name) < math.inf:
            raise ConfigError(f"{name}: must be a positive number, got {getattr(cfg, name)}")
    if cfg.upload_check_wait_s < 0:
        raise ConfigError(f"upload_check_wait_s: must be 0 or more, got {cfg.upload_check_wait_s}")
    if cfg.database_url is not None and not cfg.database_url.startswith(
        ("postgres://", "postgresql://")
    ):
        raise ConfigError("database_url: must start with postgresql:// or postgres://")


def load_config(
    flags: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Build the config. `flags` holds only options given on the command line (None = not given)."""
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    env = os.environ if env is None else env
    names = [f.name for f in dataclasses.fields(Config)]
    for key in flags:
        if key not in names:
            raise ConfigError(f"unknown setting {key!r}")

    config_file = flags.get("config_file") or env.get(ENV_PREFIX + "CONFIG")
    file_values: dict[str, Any] = {}
    if config_file:
        path = Path(config_file)
        try:
            file_values = tomllib.loads(path.read_text())
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
        file_values = {k.replace("-", "_"): v for k, v in file_values.items()}
        for key in file_values:
            if key not in names or key == "config_file":
                raise ConfigError(f"config file {path}: unknown setting {key!r}")

    values: dict[str, Any] = {}
    for name in names:
        if name in flags:
            values[name] = _coerce(name, flags[name], "command line")
        elif ENV_PREFIX + name.upper() in env:
            values[name] = _coerce(name, env[ENV_PREFIX + name.upper()], ENV_PREFIX + name.upper())
        elif name == "state_dir" and env.get("STATE_DIRECTORY"):
            # systemd's StateDirectory= sets this (possibly several, colon-separated).
            values[name] = Path(env["STATE_DIRECTORY"].split(":")[0])
        elif name in file_values:
            values[name] = _coerce(name, file_values[name], f"config file {config_file}")
    if config_file:
        values["config_file"] = Path(config_file)
    cfg = Config(**values)
    _validate(cfg)
    return cfg
