"""`sumo-supervisor serve` as a subprocess: started on a free HTTP port with a TraCI port range
of its own, its JSON log lines kept, and nothing of it (nor of its SUMO processes) left running
after a test. Also the token CLI, and the process checks the tests make."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.poll import DEADLINE_S

# Tests poll as fast as they like (several sessions at 20 requests a second each), and the
# benchmarks poll as fast as they measure: the fair-share limit is out of their way unless one
# sets its own (test_access, bench/api_load).
NO_RATE_LIMIT = {
    "SUMO_SUPERVISOR_RATE_LIMIT_PER_S": "1000000",
    "SUMO_SUPERVISOR_RATE_BURST": "1000000",
}

_PORT_SLOTS = 20
_port_blocks = itertools.count()


def _port_slot() -> int:
    """This process's slot of 1000 TraCI ports. The xdist workers of one run take consecutive
    slots (distinct for up to 20 workers); separate runs (other people's) land on a slot by their
    run id or pid, as before."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if run and worker.startswith("gw"):
        return (int(run[:8], 16) + int(worker[2:])) % _PORT_SLOTS
    return os.getpid() % _PORT_SLOTS


def next_port_range(size: int = 50) -> tuple[int, int]:
    """A TraCI port range no other daemon of this test run uses, below Linux's ephemeral ports
    (32768 and up), which outgoing connections may take at any time."""
    first = 12000 + _port_slot() * 1000 + next(_port_blocks) * size % 1000
    return first, first + size - 1


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    traci_ports: tuple[int, int] | None
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    url: str = ""
    _ready: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def spawn(
        cls,
        state_dir: Path,
        *args: str,
        database_url: str | None = None,
        traci_ports: tuple[int, int] | None = None,
        env: dict[str, str] | None = None,
        fair_share: bool = False,
        own_settings_only: bool = True,
    ) -> Daemon:
        """Start `sumo-supervisor serve` on port 0; `wait_ready` then gives its URL. Without a
        `database_url` it runs its embedded PostgreSQL in `state_dir`. `own_settings_only`
        drops the caller's SUMO_SUPERVISOR_* variables (tests); the benchmarks keep them."""
        cmd = [
            sys.executable, "-m", "supervisor", "serve",
            "--port", "0",
            "--state-dir", str(state_dir),
        ]  # fmt: skip
        if traci_ports is not None:
            cmd += ["--traci-ports", f"{traci_ports[0]}-{traci_ports[1]}"]
        cmd += args
        if database_url is not None:
            cmd += ["--database-url", database_url]
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not (own_settings_only and k.startswith("SUMO_SUPERVISOR_"))
        }
        full_env.update({} if fair_share else NO_RATE_LIMIT)
        full_env.update(env or {})
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
        daemon = cls(proc, state_dir, traci_ports)
        threading.Thread(target=daemon._pump, daemon=True).start()
        return daemon

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode(errors="replace").rstrip("\n")
            self.raw.append(text)
            try:
                event = json.loads(text)
            except json.JSONDecodeError:
                continue
            self.lines.append(event)
            if event.get("event") == "daemon_ready":
                self.url = event["url"]
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 120) -> Daemon:
        """Block until the daemon says it is ready; kill it and fail if it never does."""
        if not self._ready.wait(timeout) or not self.url:
            self.proc.kill()
            raise AssertionError("daemon did not start:\n" + "\n".join(self.raw[-30:]))
        return self

    def events(self, name: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in list(self.lines)
            if e.get("event") == name and all(e.get(k) == v for k, v in match.items())
        ]

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait_exit(self, timeout: float = DEADLINE_S) -> int:
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self, timeout: float = 60) -> None:
        """SIGTERM, and wait for the daemon's own shutdown."""
        self.proc.terminate()
        self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the daemon and every process under it, if it still runs (a SUMO still waiting
        for its TraCI client would wait forever)."""
        import psutil

        if self.proc.poll() is not None:
            return
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.proc.kill()
        self.proc.wait(30)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


# SUMO runs at the daemon's own priority in tests (unless a test sets its own, as test_sessions
# does to check the setting): at the default nice 10 its autogroup gets a tenth of a busy
# machine's share, and on a machine running other tests beside these a minute-long session took
# several minutes.
TEST_SETTINGS = {"SUMO_SUPERVISOR_SUMO_NICE": "0"}


class DaemonFactory:
    """The daemons of one test, each with its own state dir and TraCI port range."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self.started: list[Daemon] = []

    async def start(
        self,
        database_url: str | None,
        *,
        state_dir: Path | None = None,
        traci_ports: tuple[int, int] | None = None,
        max_running: int = 4,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
    ) -> Daemon:
        daemon = Daemon.spawn(
            state_dir or self._tmp / f"state{len(self.started)}",
            "--max-running", str(max_running),
            *(args or []),
            database_url=database_url,
            traci_ports=traci_ports or next_port_range(),
            env={**TEST_SETTINGS, **(env or {})},
        )  # fmt: skip
        self.started.append(daemon)
        return await asyncio.to_thread(daemon.wait_ready)

    def kill_all(self) -> None:
        """After a test: no daemon and none of their SUMO processes outlive it, even when the
        test failed half-way."""
        for d in self.started:
            d.kill()

    def last_words(self, lines: int = 40) -> str:
        """What each daemon said last, and every error it logged before that: shown with a
        failure, often the only clue to a hang or to a session's end."""
        out = []
        for i, d in enumerate(self.started):
            raw = list(d.raw)
            errors = [line for line in raw[:-lines] if '"level": "error"' in line]
            out.append(f"---- daemon {i} (pid {d.proc.pid}), errors, then last lines ----")
            out += [line[:600] for line in errors[-20:] + raw[-lines:]]
        return "\n".join(out)


class SharedDaemons(DaemonFactory):
    """Daemons that the tests of one module share, each on a fresh database of its own: for a
    table of requests the daemon refuses, where no case changes what the next one sees, a
    daemon per case was most of the table's time."""

    def __init__(self, tmp_path: Path, new_database: Callable[[], Awaitable[str]]) -> None:
        super().__init__(tmp_path)
        self._new_database = new_database

    async def start_fresh(self, **kw: Any) -> Daemon:
        return await self.start(await self._new_database(), **kw)


def token_cli(
    *args: str, database_url: str | None = None, state_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`sumo-supervisor token ...` on a database (`database_url`, else the embedded one in
    `state_dir`); the daemon need not run."""
    cmd = [sys.executable, "-m", "supervisor", "token", *args]
    if database_url is not None:
        cmd += ["--database-url", database_url]
    elif state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


async def make_token(database_url: str, name: str, role: str, *extra: str) -> str:
    """A token made with the CLI, straight in the database (the daemon need not run)."""
    made = await asyncio.to_thread(
        token_cli, "create", name, "--role", role, *extra, database_url=database_url
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sst_") and "\n" not in token, made.stdout
    return token


def sumo_children(daemon_pid: int) -> list[Any]:
    """SUMO processes the daemon started (they run in their own sessions, but stay its children)."""
    import psutil

    try:
        children = psutil.Process(daemon_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if c.name().startswith("sumo")]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes; psutil tells them apart.
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
