"""Shared fixtures: a real PostgreSQL (DATABASE_URL, or an embedded pgserver), real SUMO scenarios
built with netgenerate and randomTrips.py, and real daemons started as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg
import pytest
import sumo

from supervisor.db import FINAL_STATUSES

SUMO_HOME = Path(sumo.SUMO_HOME)
SUMO_BIN = SUMO_HOME / "bin"
RANDOM_TRIPS = SUMO_HOME / "tools" / "randomTrips.py"
DEADLINE_S = 60.0
POLL_S = 0.05


# ---- database ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    import pgserver

    server = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture
async def db_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A fresh, empty database for one test."""
    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    yield _with_database(pg_admin_url, name)
    conn = await asyncpg.connect(pg_admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# ---- scenarios ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    root: Path
    config: str  # relative to root

    def files(self) -> dict[str, bytes]:
        return {
            p.relative_to(self.root).as_posix(): p.read_bytes()
            for p in sorted(self.root.rglob("*"))
            if p.is_file()
        }


def _run(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, capture_output=True, timeout=300)


def _netgenerate(out: Path, *args: str) -> None:
    _run(SUMO_BIN / "netgenerate", *args, "--seed", "1", "-o", out)


def _random_trips(net: Path, out: Path, *args: str) -> None:
    # randomTrips.py also writes files of its own (routes.rou.xml) into its working directory.
    with tempfile.TemporaryDirectory() as scratch:
        _run(sys.executable, RANDOM_TRIPS, "-n", net, "-o", out, *args, cwd=Path(scratch))


def _sumocfg(path: Path, net: str, routes: str, end: float, additional: str | None = None) -> None:
    extra = f'<additional-files value="{additional}"/>' if additional else ""
    path.write_text(
        "<configuration>\n"
        f'  <input><net-file value="{net}"/><route-files value="{routes}"/>{extra}</input>\n'
        f'  <time><end value="{end}"/></time>\n'
        '  <report><no-step-log value="true"/></report>\n'
        "</configuration>\n"
    )


@pytest.fixture(scope="session")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Scenario]:
    """Small real scenarios, built once per test run."""
    base = tmp_path_factory.mktemp("scenarios")
    out: dict[str, Scenario] = {}

    def grid(
        name: str, number: int, length: int, trips: list[str], end: float, *net_args: str
    ) -> Path:
        root = base / name
        root.mkdir()
        _netgenerate(
            root / "net.net.xml",
            "--grid",
            "--grid.number",
            str(number),
            "--grid.length",
            str(length),
            *net_args,
        )
        _random_trips(root / "net.net.xml", root / "routes.rou.xml", *trips)
        _sumocfg(root / f"{name}.sumocfg", "net.net.xml", "routes.rou.xml", end)
        out[name] = Scenario(root, f"{name}.sumocfg")
        return root

    grid("grid4", 4, 200, ["-e", "600", "-p", "1.5", "--seed", "7"], 900)
    grid3 = grid("grid3", 3, 150, ["-e", "400", "-p", "1.0", "--seed", "11"], 600)
    # Every edge gets a sidewalk as lane 0: a lane for pedestrians only.
    grid("sidewalks", 3, 150, ["-e", "400", "-p", "2.0", "--seed", "3"], 600, "--sidewalks.guess")

    # Subfolders, a gzipped net and an additional file with a detector writing its own output.
    nested = base / "nested"
    for sub in ("cfg", "net", "demand", "add"):
        (nested / sub).mkdir(parents=True)
    _netgenerate(
        nested / "net" / "spider.net.xml.gz",
        "--spider",
        "--spider.arm-number",
        "5",
        "--spider.circle-number",
        "3",
        "--spider.space-radius",
        "120",
    )
    _random_trips(
        nested / "net" / "spider.net.xml.gz",
        nested / "demand" / "routes.rou.xml",
        "-e",
        "400",
        "-p",
        "1.2",
        "--seed",
        "5",
    )
    lane = _first_lane(nested / "demand" / "routes.rou.xml")
    (nested / "add" / "detectors.add.xml").write_text(
        "<additional>\n"
        '  <vType id="slowcar" maxSpeed="10"/>\n'
        f'  <inductionLoop id="loop0" lane="{lane}" pos="5" period="60" file="loop0.out.xml"/>\n'
        "</additional>\n"
    )
    _sumocfg(
        nested / "cfg" / "scenario.sumocfg",
        "../net/spider.net.xml.gz",
        "../demand/routes.rou.xml",
        700,
        additional="../add/detectors.add.xml",
    )
    out["nested"] = Scenario(nested, "cfg/scenario.sumocfg")

    # Runs for a very long time: flows until 1e6 s, traffic lights at every junction. For stop,
    # timeout, kill, shutdown and control tests.
    long = base / "long"
    long.mkdir()
    _netgenerate(
        long / "net.net.xml",
        "--grid",
        "--grid.number",
        "4",
        "--grid.length",
        "200",
        "--default-junction-type",
        "traffic_light",
    )
    _random_trips(
        long / "net.net.xml",
        long / "flows.rou.xml",
        "-b",
        "0",
        "-e",
        "1000000",
        "-p",
        "2",
        "--flows",
        "8",
        "--seed",
        "3",
    )
    _sumocfg(long / "long.sumocfg", "net.net.xml", "flows.rou.xml", 1_000_000)
    out["long"] = Scenario(long, "long.sumocfg")

    # Well-formed and complete, but SUMO refuses it: a route on an edge the net does not have.
    broken = base / "broken"
    broken.mkdir()
    (broken / "net.net.xml").write_bytes((grid3 / "net.net.xml").read_bytes())
    (broken / "routes.rou.xml").write_text(
        '<routes>\n  <vehicle id="v0" depart="0"><route edges="no_such_edge"/></vehicle>\n'
        "</routes>\n"
    )
    _sumocfg(broken / "broken.sumocfg", "net.net.xml", "routes.rou.xml", 100)
    out["broken"] = Scenario(broken, "broken.sumocfg")
    return out


def _first_lane(routes: Path) -> str:
    for elem in ET.parse(routes).iter():
        if elem.tag == "trip":
            return elem.attrib["from"] + "_0"
    raise AssertionError("no trip in " + str(routes))


def bare_sumo_totals(
    scenario: Scenario, *, seed: int | None, end: float | None = None
) -> dict[str, int]:
    """What SUMO itself reports for the scenario, run alone with no TraCI."""
    workdir = scenario.root
    stats = workdir / f"stats-{secrets.token_hex(4)}.xml"
    cmd: list[str | Path] = [
        SUMO_BIN / "sumo",
        "-c",
        scenario.config,
        "--statistic-output",
        stats,
        "--duration-log.statistics",
        "true",
    ]
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if end is not None:
        cmd += ["--end", str(end)]
    _run(*cmd, cwd=workdir)
    root = ET.parse(stats).getroot()
    stats.unlink()
    vehicles = root.find("vehicles")
    trips = root.find("vehicleTripStatistics")
    assert vehicles is not None and trips is not None
    return {
        "inserted": int(vehicles.attrib["inserted"]),
        "running": int(vehicles.attrib["running"]),
        "arrived": int(trips.attrib["count"]),
    }


# ---- daemons -----------------------------------------------------------------------------------

_port_blocks = itertools.count()


def next_port_range(size: int = 50) -> tuple[int, int]:
    """A TraCI port range no other daemon of this test run uses, below Linux's ephemeral ports
    (32768 and up), which outgoing connections may take at any time."""
    first = 12000 + (os.getpid() % 20) * 1000 + next(_port_blocks) * size % 1000
    return first, first + size - 1


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    traci_ports: tuple[int, int]
    lines: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    url: str = ""
    _ready: threading.Event = field(default_factory=threading.Event)

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


def sumo_children(daemon_pid: int) -> list[Any]:
    """SUMO processes the daemon started (they run in their own sessions, but stay its children)."""
    import psutil

    try:
        children = psutil.Process(daemon_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [c for c in children if c.name().startswith("sumo")]


class DaemonFactory:
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
        state_dir = state_dir or self._tmp / f"state{len(self.started)}"
        ports = traci_ports or next_port_range()
        cmd = [
            sys.executable, "-m", "supervisor", "serve",
            "--port", "0",
            "--state-dir", str(state_dir),
            "--traci-ports", f"{ports[0]}-{ports[1]}",
            "--max-running", str(max_running),
            *(args or []),
        ]  # fmt: skip
        if database_url is not None:
            cmd += ["--database-url", database_url]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SUMO_SUPERVISOR_")}
        # Tests poll as fast as they like (several sessions at 20 requests a second each): the
        # fair-share limit is out of their way unless a test sets its own (test_access does).
        full_env["SUMO_SUPERVISOR_RATE_LIMIT_PER_S"] = "100000"
        full_env["SUMO_SUPERVISOR_RATE_BURST"] = "100000"
        full_env.update(env or {})
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env)
        daemon = Daemon(proc, state_dir, ports)
        self.started.append(daemon)
        threading.Thread(target=daemon._pump, daemon=True).start()
        ready = await asyncio.to_thread(daemon._ready.wait, 120)
        if not ready or not daemon.url:
            proc.kill()
            raise AssertionError("daemon did not start:\n" + "\n".join(daemon.raw[-30:]))
        return daemon

    def kill_all(self) -> None:
        """After a test: no daemon and none of their SUMO processes outlive it, even when the
        test failed half-way (a SUMO still waiting for its TraCI client would wait forever)."""
        import psutil

        for d in self.started:
            if d.proc.poll() is None:
                try:
                    children = psutil.Process(d.proc.pid).children(recursive=True)
                except psutil.NoSuchProcess:
                    children = []
                d.proc.kill()
                d.proc.wait(30)
                for child in children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
async def daemons(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path)
    yield factory
    factory.kill_all()
    if request.node.stash.get(_FAILED, False):
        # What each daemon said last: shown with the failure, often the only clue to a hang.
        for i, d in enumerate(factory.started):
            print(f"---- daemon {i} (pid {d.proc.pid}), last lines ----")
            for line in d.raw[-40:]:
                print(line[:400])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as client:
        yield client


async def make_token(database_url: str, name: str, role: str, *extra: str) -> str:
    """A token made with the CLI, straight in the database (the daemon need not run)."""
    made = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "supervisor", "token", "create", name, "--role", role,
         "--database-url", database_url, *extra],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("sst_") and "\n" not in token, made.stdout
    return token


# ---- API helpers -------------------------------------------------------------------------------


def template_form(
    name: str,
    scenario: Scenario,
    files: dict[str, bytes] | None = None,
    config: str | None = None,
    *,
    quote: bool = True,
) -> aiohttp.FormData:
    """The upload of a scenario; `quote=False` sends file names exactly as given, like curl."""
    form = aiohttp.FormData(quote_fields=quote)
    form.add_field("name", name)
    form.add_field("config", config if config is not None else scenario.config)
    for path, data in (files if files is not None else scenario.files()).items():
        form.add_field("file", data, filename=path, content_type="application/octet-stream")
    return form


async def upload(
    http: aiohttp.ClientSession, daemon: Daemon, name: str, scenario: Scenario
) -> dict[str, Any]:
    async with http.post(f"{daemon.url}/v1/templates", data=template_form(name, scenario)) as r:
        body = await r.json()
        assert r.status == 201, body
        return body  # type: ignore[no-any-return]


async def create_session(
    http: aiohttp.ClientSession, daemon: Daemon, **request: Any
) -> dict[str, Any]:
    async with http.post(f"{daemon.url}/v1/sessions", json=request) as r:
        body = await r.json()
        assert r.status == 201, body
        return body  # type: ignore[no-any-return]


async def get_session(
    http: aiohttp.ClientSession, daemon: Daemon, session_id: str
) -> dict[str, Any]:
    async with http.get(f"{daemon.url}/v1/sessions/{session_id}") as r:
        assert r.status == 200
        return await r.json()  # type: ignore[no-any-return]


async def wait_status(
    http: aiohttp.ClientSession,
    daemon: Daemon,
    session_id: str,
    statuses: set[str] | str,
    timeout: float = DEADLINE_S,
) -> dict[str, Any]:
    """Poll until the session is in one of `statuses`; fail with its last state at the deadline,
    or at once when it has ended in another (an end is final)."""
    wanted = {statuses} if isinstance(statuses, str) else statuses
    deadline = time.monotonic() + timeout
    while True:
        session = await get_session(http, daemon, session_id)
        if session["status"] in wanted:
            return session
        if session["status"] in FINAL_STATUSES:
            raise AssertionError(f"session ended {session['status']}, not {wanted}: {session}")
        if time.monotonic() > deadline:
            raise AssertionError(f"session never reached {wanted}: {session}")
        await asyncio.sleep(POLL_S)


async def read_stream(http: aiohttp.ClientSession, url: str) -> list[tuple[str, Any]]:
    """Every (event name, data) of a session's SSE stream, until the daemon ends it."""
    events: list[tuple[str, Any]] = []
    async with http.get(url) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        name = None
        async for raw in r.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((name or "message", json.loads(line.split(":", 1)[1])))
    return events


async def ask(
    http: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, Any, Any]:
    """(status, body as JSON or text, headers) of one request."""
    async with http.request(method, url, **kw) as r:
        text = await r.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return r.status, body, r.headers


async def recorded_session(
    http: aiohttp.ClientSession,
    daemon: Daemon,
    db_url: str,
    scenarios: dict[str, Scenario],
    rows: int,
) -> dict[str, Any]:
    """A completed session with `rows` trajectory rows, made in the database directly (a real
    run this size takes long)."""
    from supervisor import db
    from supervisor.pgstore import PgStore

    await upload(http, daemon, "grid3", scenarios["grid3"])
    session = await create_session(http, daemon, template="grid3", end=10)
    await wait_status(http, daemon, session["id"], "completed")
    pool = await db.create_pool(db_url)
    try:
        await PgStore(pool).create_record_partitions(session["id"], ["trajectories"])
        await pool.execute(
            "INSERT INTO trajectories (session_id, time, vehicle, x, y, angle, speed, lane)"
            " SELECT $1, g / 100, 'veh' || (g % 100), g * 0.5, g * 0.25, 90, 13.5, 'edge_0'"
            " FROM generate_series(0, $2 - 1) g",
            session["id"],
            rows,
        )
    finally:
        await pool.close()
    return session


async def samples(
    http: aiohttp.ClientSession, daemon: Daemon, session_id: str
) -> list[dict[str, Any]]:
    async with http.get(f"{daemon.url}/v1/sessions/{session_id}/samples") as r:
        assert r.status == 200
        return (await r.json())["samples"]  # type: ignore[no-any-return]


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


async def wait_until(predicate: Any, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)
