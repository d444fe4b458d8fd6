"""SUMO's sandbox: whatever a scenario says, its SUMO touches nothing but its own session dir.

The kernel layer is driven directly, through the launcher as the daemon starts it, and through
the session actor with templates stored past the upload checks: those checks (a friendlier
first line, which refuses these scenarios first) cannot hide a hole in it. The caps, the TraCI
port range and what the daemon says at start run against the real daemon."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from actors import handover, sandbox, scenario
from actors.messages import SessionSpec
from actors.ports import PortPool
from actors.request import SessionRequest
from actors.settings import SessionSettings, SupervisorSettings
from actors.supervisor import SupervisorActor, new_session_id
from actors.writer import WriterActor
from supervisor import db
from supervisor.config import ConfigError, load_config
from supervisor.db import FINAL_STATUSES
from supervisor.pgstore import PgStore
from tests.harness.daemon import next_port_range
from tests.harness.http import create_session, get_session, template_form, upload, wait_status
from tests.harness.scenarios import SUMO_BIN, Scenario

SUMO = str(SUMO_BIN / "sumo")
CAPS = sandbox.Caps(memory_mb=4096, max_file_mb=2048, max_open_files=1024)
TRACI_PORT = 30000  # inside the launcher's own network namespace: any port will do
DENIED = "Permission denied"


# ---- the launcher, driven directly --------------------------------------------------------------


@pytest.fixture(scope="module")
def plan(sumo_bin: Path) -> sandbox.SandboxPlan:
    status = sandbox.probe(SUMO, CAPS)
    needed = {"fs_write", "fs_read", "no_outgoing_connections", "traci_private"}
    if missing := needed & set(status.missing):
        pytest.skip(f"this kernel does not enforce {sorted(missing)}: {status.missing}")
    assert status.plan is not None
    return status.plan


@dataclass
class Run:
    returncode: int
    output: str


def run_confined(
    plan: sandbox.SandboxPlan,
    workdir: Path,
    args: list[str],
    traci: Callable[[Any], None] | None = None,
    timeout: float = 60.0,
) -> Run:
    """SUMO started as the daemon starts it, with the sockets its launcher hands over: the
    summary stream drained, and `traci` given the TraCI connection (SUMO needs --remote-port)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    command = plan.command([SUMO, *args], traci_port=TRACI_PORT, handover_fd=theirs.fileno())
    proc = subprocess.Popen(
        command,
        cwd=workdir,
        pass_fds=(theirs.fileno(),),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    theirs.close()
    try:
        ours.settimeout(timeout)
        _message, fds, _flags, _addr = socket.recv_fds(ours, 16, 2)
        assert len(fds) == 2, proc.communicate(timeout=timeout)[0]
        listener, client = (socket.socket(fileno=fd) for fd in fds)
        drain = threading.Thread(target=_drain, args=(listener, proc, timeout), daemon=True)
        drain.start()
        if traci is not None:
            traci(_connect(client, timeout))
        output = proc.communicate(timeout=timeout)[0]
        drain.join(timeout)
    finally:
        ours.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout)
    return Run(proc.returncode, output)


def _drain(listener: socket.socket, proc: subprocess.Popen[str], timeout: float) -> None:
    """Read SUMO's summary rows (a full socket would stop it) until SUMO has ended."""
    deadline = time.monotonic() + timeout
    listener.settimeout(0.05)
    with listener:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                while conn.recv(1 << 16):
                    pass
            return


def _connect(client: socket.socket, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return handover.connect(client, TRACI_PORT, 5.0)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "SUMO never opened its TraCI port"
            time.sleep(0.005)


@pytest.fixture
def session_dir(tmp_path: Path, scenarios: dict[str, Scenario]) -> Path:
    """A session dir as the daemon lays it out: the long scenario's net (it has traffic
    lights) and flows, with a config that ends at 60 s."""
    root = tmp_path / "session"
    root.mkdir()
    long = scenarios["long"].root
    (root / "net.net.xml").write_bytes((long / "net.net.xml").read_bytes())
    (root / "flows.rou.xml").write_bytes((long / "flows.rou.xml").read_bytes())
    return root


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """Where a hostile scenario aims: writable by the daemon's user, outside the session."""
    path = tmp_path / "outside"
    path.mkdir()
    yield path
    assert sorted(path.iterdir()) == [], "SUMO wrote outside its session dir"


def _config(root: Path, *, output: str = "", additional: str | None = None) -> str:
    extra = f'<additional-files value="{additional}"/>' if additional else ""
    (root / "run.sumocfg").write_text(
        "<configuration>\n"
        f'  <input><net-file value="net.net.xml"/><route-files value="flows.rou.xml"/>{extra}'
        "</input>\n"
        f"  <output>{output}</output>\n"
        '  <time><end value="60"/></time>\n'
        "</configuration>\n"
    )
    return "run.sumocfg"


def _lane_and_tls(root: Path) -> tuple[str, str]:
    text = (root / "net.net.xml").read_text()
    lane = re.search(r'<lane id="([^"]+)"', text)
    tls = re.search(r'<tlLogic id="([^"]+)"', text)
    assert lane and tls
    return lane.group(1), tls.group(1)


def _refused(run: Run, target: Path) -> None:
    """SUMO did try the path, and the kernel said no."""
    assert run.returncode != 0, run.output
    assert str(target) in run.output and DENIED in run.output, run.output


def test_an_option_in_a_v_attribute_writes_nothing_outside(plan, session_dir, outside):
    target = outside / "netstate.xml"
    cfg = _config(session_dir, output=f'<netstate-dump v="{target}"/>')
    _refused(run_confined(plan, session_dir, ["-c", cfg]), target)


def test_an_output_option_no_pattern_knows_writes_nothing_outside(plan, session_dir, outside):
    target = outside / "state.xml"
    cfg = _config(
        session_dir, output=f'<save-state.times value="5"/><save-state.files value="{target}"/>'
    )
    _refused(run_confined(plan, session_dir, ["-c", cfg]), target)


def test_a_nested_option_element_writes_nothing_outside(plan, session_dir, outside):
    target = outside / "nested.xml"
    cfg = _config(session_dir, output=f'<deeper><netstate-dump value="{target}"/></deeper>')
    _refused(run_confined(plan, session_dir, ["-c", cfg]), target)


def test_a_detector_in_a_non_xml_additional_file_writes_nothing_outside(plan, session_dir, outside):
    lane, _tls = _lane_and_tls(session_dir)
    target = outside / "loop.xml"
    (session_dir / "det.add").write_text(
        f'<additional><inductionLoop id="l0" lane="{lane}" pos="5" period="10" file="{target}"/>'
        "</additional>\n"
    )
    cfg = _config(session_dir, additional="det.add")
    _refused(run_confined(plan, session_dir, ["-c", cfg]), target)


def test_a_timed_event_dest_writes_nothing_outside(plan, session_dir, outside):
    _lane, tls = _lane_and_tls(session_dir)
    target = outside / "tls.xml"
    (session_dir / "events.add").write_text(
        f'<additional><timedEvent type="SaveTLSStates" source="{tls}" dest="{target}"/>'
        "</additional>\n"
    )
    cfg = _config(session_dir, additional="events.add")
    _refused(run_confined(plan, session_dir, ["-c", cfg]), target)


def test_save_state_over_traci_writes_nothing_outside(plan, session_dir, outside):
    from traci.exceptions import FatalTraCIError, TraCIException

    target = outside / "traci-state.xml"
    answers: list[str] = []

    def save(conn: Any) -> None:
        conn.simulationStep(5)
        conn.simulation.saveState("inside-state.xml")
        answers.append("inside saved")
        try:
            conn.simulation.saveState(str(target))
            answers.append("outside saved")
        except (FatalTraCIError, TraCIException) as exc:
            answers.append(f"outside refused: {exc}")

    cfg = _config(session_dir)
    run = run_confined(plan, session_dir, ["-c", cfg, "--remote-port", str(TRACI_PORT)], save)
    assert answers[0] == "inside saved" and answers[1].startswith("outside refused"), answers
    _refused(run, target)
    assert (session_dir / "inside-state.xml").stat().st_size > 0


def test_legitimate_outputs_land_in_the_session_dir(plan, session_dir, outside):
    lane, _tls = _lane_and_tls(session_dir)
    (session_dir / "det.add").write_text(
        f'<additional><inductionLoop id="l0" lane="{lane}" pos="5" period="10" file="loop.xml"/>'
        "</additional>\n"
    )
    cfg = _config(
        session_dir,
        output='<tripinfo-output value="out/trips.xml"/>'
        '<tripinfo-output.write-unfinished value="true"/>',
        additional="det.add",
    )
    (session_dir / "out").mkdir()
    run = run_confined(plan, session_dir, ["-c", cfg])
    assert run.returncode == 0, run.output
    assert "<tripinfo " in (session_dir / "out" / "trips.xml").read_text()
    assert "<interval " in (session_dir / "loop.xml").read_text()


@pytest.mark.slow
def test_sumo_opens_no_outgoing_connection(plan, session_dir):
    """Not even to a listener on this host's loopback. (SUMO retries a network output for 36 s
    before it gives up: this test takes that long.)"""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        cfg = _config(session_dir, output=f'<tripinfo-output value="127.0.0.1:{port}"/>')
        run = run_confined(plan, session_dir, ["-c", cfg])
        assert run.returncode == 1, run.output
        assert f"{DENIED} (host: 127.0.0.1, port: {port})" in run.output, run.output
        listener.settimeout(0)
        with pytest.raises(BlockingIOError):
            listener.accept()


def test_a_file_over_the_size_cap_stops_sumo_with_sigxfsz(plan, session_dir, outside):
    capped = dataclasses.replace(plan, caps=dataclasses.replace(CAPS, max_file_mb=1))
    cfg = _config(session_dir, output='<fcd-output value="fcd.xml"/>')
    run = run_confined(capped, session_dir, ["-c", cfg, "--end", "3600"])
    assert run.returncode == -25, run.output  # SIGXFSZ
    assert (session_dir / "fcd.xml").stat().st_size == 1024 * 1024


# ---- the session actor, in-process ----------------------------------------------------------------


def _template_files(root: Path) -> list[scenario.TemplateFile]:
    return [
        scenario.TemplateFile(p.name, hashlib.sha256(p.read_bytes()).hexdigest(), p.read_bytes())
        for p in sorted(root.iterdir())
    ]


async def _store(pool: asyncpg.Pool, name: str, root: Path, config: str) -> SessionSpec:
    """A template stored as it is, past the upload checks: what the kernel alone must hold."""
    files = _template_files(root)
    version = await db.insert_template_version(pool, name, config, name * 8, files)
    return SessionSpec(new_session_id(), name, version, config, SessionRequest(name))


async def _final(pool: asyncpg.Pool, session_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while True:
        row = await db.get_session(pool, session_id)
        if row is not None and row["status"] in FINAL_STATUSES:
            return dict(row)
        assert time.monotonic() < deadline, row
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["netns", "host_net"])
async def test_the_session_actor_runs_sumo_confined_in_either_mode(
    plan, mode, db_url, scenarios, tmp_path, session_dir, outside
):
    """Where no network namespace can be made (host_net), SUMO still runs under Landlock and
    its caps, and the daemon connects to it as it did unconfined. A hostile template stored
    past the upload checks fails its session; a plain one completes."""
    confined = dataclasses.replace(plan, netns=mode == "netns")
    cfg = _config(session_dir, output=f'<netstate-dump v="{outside}/n.xml"/>')
    pool = await db.create_pool(db_url)
    try:
        await db.apply_schema(pool)
        store = PgStore(pool)
        writer = WriterActor(store, batch_rows=100, flush_s=0.05, queue_rows=1000)
        first, last = next_port_range(10)
        supervisor = SupervisorActor(
            SupervisorSettings(
                temp_root=tmp_path / "sessions",
                max_running=2,
                max_queued=10,
                session=SessionSettings(
                    sumo_binary=SUMO, stop_grace_s=1.0, connect_timeout_s=30.0, sandbox=confined
                ),
            ),
            store=store,
            writer=writer,
            ports=PortPool(range(first, last + 1)),
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(writer.run())
            tg.create_task(supervisor.run())
            hostile = await _store(pool, "hostile", session_dir, cfg)
            grid3 = scenarios["grid3"]
            plain = await _store(pool, "grid3", grid3.root, grid3.config)
            await supervisor.submit(hostile, plain)
            rows = [await _final(pool, spec.id) for spec in (hostile, plain)]
            await supervisor.shutdown("test over")
            await writer.close()
    finally:
        await pool.close()
    assert rows[0]["status"] == "failed" and rows[0]["cause"] == "config_invalid", rows[0]
    assert DENIED in rows[0]["error"] and str(outside) in rows[0]["error"], rows[0]
    assert rows[1]["status"] == "completed", rows[1]


# ---- the daemon ---------------------------------------------------------------------------------


def _escapes(root: Path, outside: Path) -> dict[str, dict[str, str]]:
    """Each escape class of issue 13 as an upload: its files, by path."""
    lane, tls = _lane_and_tls(root)

    def config(output: str = "", additional: str | None = None) -> str:
        _config(root, output=output, additional=additional)
        return (root / "run.sumocfg").read_text()

    return {
        "v_attribute": {"run.sumocfg": config(f'<netstate-dump v="{outside}/a.xml"/>')},
        "unlisted_option": {
            "run.sumocfg": config(
                f'<save-state.times value="5"/><save-state.files value="{outside}/b.xml"/>'
            )
        },
        "nested_option": {
            "run.sumocfg": config(f'<deeper><netstate-dump value="{outside}/c.xml"/></deeper>')
        },
        "non_xml_additional": {
            "run.sumocfg": config(additional="det.add"),
            "det.add": f'<additional><inductionLoop id="l0" lane="{lane}" pos="5" period="10"'
            f' file="{outside}/d.xml"/></additional>',
        },
        "dest": {
            "run.sumocfg": config(additional="events.add.xml"),
            "events.add.xml": f'<additional><timedEvent type="SaveTLSStates" source="{tls}"'
            f' dest="{outside}/e.xml"/></additional>',
        },
    }


async def test_no_escape_through_the_daemon_whether_refused_or_confined(
    daemons, db_url, http, session_dir, outside
):
    """The upload checks may refuse each of these first; if one gets through, the kernel holds
    its SUMO. Either way nothing appears outside."""
    daemon = await daemons.start(db_url)
    base = {p: (session_dir / p).read_bytes() for p in ("net.net.xml", "flows.rou.xml")}
    ways: dict[str, str] = {}
    for name, files in _escapes(session_dir, outside).items():
        upload_files = {**base, **{p: text.encode() for p, text in files.items()}}
        form = template_form(name, Scenario(session_dir, "run.sumocfg"), upload_files)
        async with http.post(f"{daemon.url}/v1/templates", data=form) as r:
            if r.status != 201:
                assert 400 <= r.status < 500, await r.text()
                ways[name] = f"refused {r.status}"
                continue
        s = await create_session(http, daemon, template=name)
        ended = await wait_status(http, daemon, s["id"], FINAL_STATUSES, timeout=120)
        ways[name] = f"{ended['status']} ({ended['cause']})"
    assert sorted(outside.iterdir()) == [], ways


def _getversion() -> bytes:
    # A TraCI message: its length, then one command (length 2, CMD_GETVERSION 0x00).
    return b"\x00\x00\x00\x06\x02\x00"


def _hammer(first: int, last: int, stop: threading.Event, answers: list[int]) -> None:
    """Connect to every port of the range over and over; ask whatever accepts for TraCI's
    version. Bounded by `stop` and by one minute."""
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        for port in range(first, last + 1):
            with socket.socket() as sock:
                sock.settimeout(0.2)
                try:
                    sock.connect(("127.0.0.1", port))
                    sock.sendall(_getversion())
                    if sock.recv(64):
                        answers.append(port)
                except OSError:
                    continue
        time.sleep(0.001)


async def test_a_process_hammering_the_traci_ports_never_reaches_a_sumo(
    daemons, db_url, http, scenarios
):
    first, last = next_port_range(10)
    daemon = await daemons.start(db_url, traci_ports=(first, last), max_running=2)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    stop, answers = threading.Event(), []
    hammer = threading.Thread(target=_hammer, args=(first, last, stop, answers), daemon=True)
    hammer.start()
    try:
        sessions = [
            await create_session(http, daemon, template="grid3", seed=i, end=120) for i in range(4)
        ]
        for s in sessions:
            await wait_status(http, daemon, s["id"], "completed", timeout=120)
    finally:
        stop.set()
        await asyncio.to_thread(hammer.join, 10)
    assert answers == []
    assert {e["mode"] for e in daemon.events("sandbox_status")} == {"netns"}


def _bomb(root: Path, grid3: Scenario) -> Scenario:
    """A tiny scenario that makes SUMO allocate gigabytes: three million vehicles to insert."""
    root.mkdir()
    (root / "net.net.xml").write_bytes((grid3.root / "net.net.xml").read_bytes())
    edge = re.search(r'<edge id="([^":]+)" from=', (root / "net.net.xml").read_text())
    assert edge
    (root / "bomb.rou.xml").write_text(
        f'<routes><flow id="f" begin="0" end="1" number="3000000" from="{edge.group(1)}"'
        f' to="{edge.group(1)}"/></routes>\n'
    )
    (root / "bomb.sumocfg").write_text(
        '<configuration><input><net-file value="net.net.xml"/>'
        '<route-files value="bomb.rou.xml"/></input></configuration>\n'
    )
    return Scenario(root, "bomb.sumocfg")


async def test_sumo_over_its_memory_cap_fails_its_own_session_only(
    daemons, db_url, http, scenarios, tmp_path
):
    daemon = await daemons.start(db_url, max_running=2, args=["--sumo-memory-mb", "320"])
    await upload(http, daemon, "bomb", _bomb(tmp_path / "bomb", scenarios["grid3"]))
    await upload(http, daemon, "grid3", scenarios["grid3"])
    bomb = await create_session(http, daemon, template="bomb")
    fine = await create_session(http, daemon, template="grid3", seed=3)
    failed = await wait_status(http, daemon, bomb["id"], "failed", timeout=120)
    assert failed["cause"] == "resource_limit", failed
    assert "memory" in failed["error"] or "bad_alloc" in failed["error"], failed
    await wait_status(http, daemon, fine["id"], "completed", timeout=120)
    async with http.get(f"{daemon.url}/healthz") as r:
        assert r.status == 200
    assert daemon.proc.poll() is None
    assert (await get_session(http, daemon, fine["id"]))["exit_code"] == 0


async def test_sumo_over_its_file_size_cap_fails_with_resource_limit(
    daemons, db_url, http, scenarios
):
    daemon = await daemons.start(db_url, args=["--sumo-max-file-mb", "1"])
    await upload(http, daemon, "grid4", scenarios["grid4"])
    s = await create_session(http, daemon, template="grid4", record=["trajectories"])
    failed = await wait_status(http, daemon, s["id"], "failed", timeout=120)
    assert failed["cause"] == "resource_limit", failed
    assert failed["exit_code"] == -25 and "SIGXFSZ" in failed["error"], failed


async def test_the_daemon_says_at_start_what_the_sandbox_enforces(daemons, db_url):
    daemon = await daemons.start(db_url)
    [status] = daemon.events("sandbox_status")
    named = set(status["enforced"]) | set(status["not_enforced"])
    assert named == set(sandbox.PROTECTIONS)
    assert status["caps"] == dataclasses.asdict(CAPS)
    off = await daemons.start(db_url, env={"SUMO_SUPERVISOR_SANDBOX": "false"})
    [status] = off.events("sandbox_status")
    assert status["mode"] == "off" and status["enforced"] == []
    assert status["level"] == "warning"


@pytest.mark.e2e  # starts the daemon as a subprocess itself, with no fixture
def test_a_reachable_daemon_without_the_sandbox_refuses_to_start(tmp_path):
    """Nothing is enforced (sandbox = false) and the host is not loopback: one clear line."""
    out = subprocess.run(
        [sys.executable, "-m", "supervisor", "serve", "--host", "0.0.0.0", "--port", "0",
         "--state-dir", str(tmp_path / "state")],
        env={"SUMO_SUPERVISOR_SANDBOX": "false", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stdout + out.stderr
    [line] = out.stderr.strip().splitlines()
    assert "not loopback" in line and "allow_unconfined" in line, line
    assert not (tmp_path / "state" / "pgdata").exists()  # refused before anything started


def test_sandbox_settings_are_read_and_checked():
    cfg = load_config(
        {}, {"SUMO_SUPERVISOR_SANDBOX": "off", "SUMO_SUPERVISOR_SUMO_MEMORY_MB": "512"}
    )
    assert cfg.sandbox is False and cfg.sumo_memory_mb == 512 and cfg.allow_unconfined is False
    assert load_config({"allow_unconfined": True}, {}).allow_unconfined is True
    for env, message in (
        ({"SUMO_SUPERVISOR_SANDBOX": "maybe"}, "sandbox: invalid value"),
        ({"SUMO_SUPERVISOR_SUMO_MEMORY_MB": "100"}, "sumo_memory_mb: must be at least 256"),
        ({"SUMO_SUPERVISOR_SUMO_MAX_OPEN_FILES": "3"}, "sumo_max_open_files"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config({}, env)


def test_what_a_lesser_kernel_lacks_is_named_and_a_reachable_daemon_refused():
    """Linux 6.1 in a container without user namespaces: Landlock ABI 2, no network namespace."""
    plan = sandbox.SandboxPlan(netns=False, landlock=True, read=(), caps=CAPS)
    report = {
        "landlock_abi": 2,
        "netns": False,
        "fs": True,
        "net": False,
        "scopes": False,
        "rlimits": True,
        "errors": {"netns": "unshare: Operation not permitted"},
    }
    status = sandbox.status_from_report(plan, report)
    assert status.enforced == ("fs_read", "caps")
    assert set(status.missing) == {
        "fs_write",
        "no_outgoing_connections",
        "traci_private",
        "signal_scope",
    }
    assert "Operation not permitted" in status.missing["traci_private"]
    assert status.log_fields()["mode"] == "host_net"
    assert status.refusal("127.0.0.1", loopback=True, allow_unconfined=False) is None
    refusal = status.refusal("0.0.0.0", loopback=False, allow_unconfined=False)
    assert refusal is not None and "allow_unconfined" in refusal and "traci_private" in refusal
    assert status.refusal("0.0.0.0", loopback=False, allow_unconfined=True) is None
