"""Configuration: flag > env > TOML file > default, and clear errors for bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.config import ConfigError, PortRange, load_config


def test_defaults():
    cfg = load_config({}, {})
    assert cfg.host == "127.0.0.1"
    assert cfg.port == 8750
    assert cfg.state_dir == Path("state")
    assert cfg.database_url is None
    assert cfg.traci_ports == PortRange(8813, 8912)
    assert cfg.max_running >= 1


def test_precedence_flag_over_env_over_file(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text('port = 9001\nmax-running = 3\nhost = "127.0.0.2"\ntraci_ports = "9000-9010"\n')
    env = {"SUMO_SUPERVISOR_PORT": "9002", "SUMO_SUPERVISOR_MAX_RUNNING": "5"}
    cfg = load_config({"config_file": str(toml), "port": "9003"}, env)
    assert cfg.port == 9003  # flag
    assert cfg.max_running == 5  # env
    assert cfg.host == "127.0.0.2"  # file
    assert cfg.traci_ports == PortRange(9000, 9010)
    assert cfg.config_file == toml


def test_state_directory_from_systemd():
    cfg = load_config({}, {"STATE_DIRECTORY": "/var/lib/sumo-supervisor:/other"})
    assert cfg.state_dir == Path("/var/lib/sumo-supervisor")
    assert load_config({"state_dir": "here"}, {"STATE_DIRECTORY": "/x"}).state_dir == Path("here")


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        load_config({}, {}).port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"port": "http"}, {}, "port: invalid value 'http' (from command line)"),
        ({"port": "70000"}, {}, "port: must be 0..65535"),
        ({}, {"SUMO_SUPERVISOR_MAX_RUNNING": "0"}, "max_running: must be at least 1"),
        ({}, {"SUMO_SUPERVISOR_MAX_RUNNING": "x"}, "from SUMO_SUPERVISOR_MAX_RUNNING"),
        ({"traci_ports": "9000"}, {}, None),
        ({"traci_ports": "9010-9000"}, {}, "traci_ports: need 1024 <= FIRST <= LAST"),
        ({"traci_ports": "a-b"}, {}, "traci_ports: expected 'FIRST-LAST'"),
        ({"log_format": "xml"}, {}, "log_format"),
        ({}, {"SUMO_SUPERVISOR_SUMO_NICE": "20"}, "sumo_nice: must be -20..19"),
        ({}, {"SUMO_SUPERVISOR_EXPORT_STALL_S": "0"}, "export_stall_s: must be positive"),
        ({}, {"SUMO_SUPERVISOR_DB_COMMAND_TIMEOUT_S": "-1"}, "db_command_timeout_s: must be"),
        ({}, {"SUMO_SUPERVISOR_MAX_SESSION_ROWS": "-1"}, "max_session_rows: must be 0 (no quota)"),
        ({}, {"SUMO_SUPERVISOR_MAX_TEMPLATE_BYTES": "-5"}, "max_template_bytes: must be 0"),
        ({}, {"SUMO_SUPERVISOR_EXPORT_MIN_RATE_BYTES_S": "-1"}, "export_min_rate_bytes_s: must"),
        ({}, {"SUMO_SUPERVISOR_EXPORT_RATE_WINDOW_S": "0"}, "export_rate_window_s: must be"),
        ({}, {"SUMO_SUPERVISOR_EXPORT_SLOT_WAIT_S": "-1"}, "export_slot_wait_s: must be 0"),
        ({}, {"SUMO_SUPERVISOR_STREAM_SEND_TIMEOUT_S": "0"}, "stream_send_timeout_s: must be"),
        ({}, {"SUMO_SUPERVISOR_MAX_WATCHERS_PER_SESSION": "0"}, "max_watchers_per_session"),
        ({"database_url": "mysql://x"}, {}, "database_url: must start with postgresql://"),
        ({"config_file": "/nonexistent.toml"}, {}, "config file /nonexistent.toml"),
    ],
)
def test_bad_values_are_named(flags, env, message):
    if message is None:
        assert load_config(flags, env).traci_ports == PortRange(9000, 9000)
        return
    with pytest.raises(ConfigError) as err:
        load_config(flags, env)
    assert message in str(err.value)


def test_unknown_setting_in_file(tmp_path: Path):
    toml = tmp_path / "c.toml"
    toml.write_text("colour = 1\n")
    with pytest.raises(ConfigError, match="unknown setting 'colour'"):
        load_config({"config_file": str(toml)}, {})
    toml.write_text("port = \n")
    with pytest.raises(ConfigError, match="config file"):
        load_config({"config_file": str(toml)}, {})


def test_cli_reports_config_errors_in_one_line():
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "--traci-ports", "5-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().startswith("sumo-supervisor: configuration error: traci_ports")
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    "name",
    [
        "max_wall_s_default",
        "max_wall_s_limit",
        "max_pause_s",
        "idle_timeout_s_limit",
        "trajectory_period_min",
        "scale_limit",
        "end_limit",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_session_limits_must_be_positive_and_finite(name: str, value: str):
    with pytest.raises(ConfigError, match=name):
        load_config({}, {"SUMO_SUPERVISOR_" + name.upper(): value})


def test_session_limits_bound_requests():
    from actors.errors import InvalidRequest
    from actors.request import parse_session_request

    cfg = load_config({}, {"SUMO_SUPERVISOR_MAX_PAUSE_S": "10", "SUMO_SUPERVISOR_END_LIMIT": "50"})
    assert parse_session_request({"template": "t", "max_pause_s": 10}, cfg).max_pause_s == 10
    with pytest.raises(InvalidRequest, match="max_pause_s"):
        parse_session_request({"template": "t", "max_pause_s": 11}, cfg)
    with pytest.raises(InvalidRequest, match="end_limit"):
        parse_session_request({"template": "t", "end": 51}, cfg)
    # The default idle timeout is never past the limit.
    low = load_config({}, {"SUMO_SUPERVISOR_IDLE_TIMEOUT_S_LIMIT": "30"})
    assert parse_session_request({"template": "t", "mode": "stepped"}, low).idle_timeout_s == 30
