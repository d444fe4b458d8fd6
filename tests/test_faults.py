"""Faults a long-running service meets, each one real: the daemon SIGKILLed mid-run, a blocked
event loop, 200 sessions at once, an unwritable session dir; plus the systemd notify protocol on
a real datagram socket, the unit file, and /metrics."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.harness.daemon import next_port_range, pid_alive, sumo_children
from tests.harness.http import create_session, get_session, samples, upload, wait_status
from tests.harness.scenarios import bare_sumo_totals

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
async def test_sigkilled_daemon_reruns_its_sessions_to_identical_data(
    daemons, db_url, http, scenarios, tmp_path
):
    state, ports = tmp_path / "state", next_port_range()
    daemon = await daemons.start(db_url, state_dir=state, traci_ports=ports, max_running=4)
    await upload(http, daemon, "long", scenarios["long"])
    runs = [(seed, 6000.0) for seed in (1, 2, 3, 4)]
    ids = [
        (await create_session(http, daemon, template="long", seed=s, end=e, sample_every=20))["id"]
        for s, e in runs
    ]
    for i in ids:
        await wait_status(http, daemon, i, "running")
    orphans = [p.pid for p in sumo_children(daemon.proc.pid)]
    assert len(orphans) == 4
    daemon.signal(signal.SIGKILL)
    await daemon.wait_exit()

    again = await daemons.start(db_url, state_dir=state, traci_ports=ports, max_running=4)
    for (seed, end), session_id in zip(runs, ids, strict=True):
        done = await wait_status(http, again, session_id, {"completed", "failed"}, timeout=120)
        assert done["status"] == "completed", done
        rows = await samples(http, again, session_id)
        expected = bare_sumo_totals(scenarios["long"], seed=seed, end=end)
        assert sum(r["departed"] for r in rows) == expected["inserted"]
        assert sum(r["arrived"] for r in rows) == expected["arrived"]
        assert len(rows) == int(end / 20)  # one attempt's rows, not two attempts' mixed
        async with http.get(f"{again.url}/v1/sessions/{session_id}/events") as r:
            history = [(e["status"], e["reason"]) for e in (await r.json())["events"]]
        assert ("queued", "daemon restarted: rerun, attempt 2 of 3") in history
        assert history[-1][0] == "completed"
    for pid in orphans:
        assert not pid_alive(pid)
    assert list((state / "sessions").iterdir()) == []


async def test_interrupted_session_with_on_interrupt_fail_is_failed(
    daemons, db_url, http, scenarios, tmp_path
):
    state = tmp_path / "state"
    daemon = await daemons.start(db_url, state_dir=state)
    await upload(http, daemon, "long", scenarios["long"])
    s = await create_session(http, daemon, template="long", on_interrupt="fail")
    await wait_status(http, daemon, s["id"], "running")
    daemon.signal(signal.SIGKILL)
    await daemon.wait_exit()
    again = await daemons.start(db_url, state_dir=state)
    failed = await get_session(http, again, s["id"])
    assert (failed["status"], failed["cause"]) == ("failed", "daemon_restarted")


class NotifySocket:
    """A real NOTIFY_SOCKET, as systemd provides it. A thread reads it and stamps each message
    when it arrives: stamped when the test got round to reading, a ping sent during a blocked
    loop would look like one sent after it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic()
            with self._lock:
                self.messages.extend((at, line) for line in data.decode().splitlines())

    def drain(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()

    async def wait_for(self, line: str, *, after: float = 0.0, timeout: float = 30) -> float:
        """When `line` (or a line starting with it, if it ends in '=') came after `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for at, got in self.drain():
                if at > after and (got == line or (line.endswith("=") and got.startswith(line))):
                    return at
            assert time.monotonic() < deadline, f"no {line!r} in {self.messages}"
            await asyncio.sleep(0.02)


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


async def test_notify_ready_status_watchdog_and_stopping(daemons, db_url, http, notify):
    daemon = await daemons.start(
        db_url, env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "400000"}
    )
    await notify.wait_for("READY=1")
    await notify.wait_for("STATUS=")
    await notify.wait_for("WATCHDOG=1")
    # READY=1 came only once the API answered and the database was reachable.
    async with http.get(f"{daemon.url}/healthz") as r:
        assert r.status == 200
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit() == 0
    await notify.wait_for("STOPPING=1")
    lines = [m for _, m in notify.drain()]
    assert lines.index("READY=1") < lines.index("STOPPING=1")


async def test_blocked_event_loop_stops_watchdog_pings(daemons, db_url, http, notify):
    daemon = await daemons.start(
        db_url,
        env={
            "NOTIFY_SOCKET": str(notify.path),
            "WATCHDOG_USEC": "400000",
            "SUMO_SUPERVISOR_TEST_HOOKS": "1",
        },
    )
    await notify.wait_for("WATCHDOG=1")
    posted = time.monotonic()
    async with http.post(f"{daemon.url}/_test/block_loop", params={"seconds": "3"}) as r:
        blocked_until = time.monotonic()
        assert r.status == 200
    # The loop was blocked for 3 s somewhere between the POST and its answer.
    blocked_from = max(posted, blocked_until - 3)
    # Pings resume once the loop runs again.
    resumed = await notify.wait_for("WATCHDOG=1", after=blocked_until)
    await notify.wait_for("WATCHDOG=1", after=resumed)
    pings = [at for at, m in notify.drain() if m == "WATCHDOG=1"]
    # Before the block pings came every ~0.1 s; during it none came at all.
    during = [t for t in pings if blocked_from + 0.3 < t < blocked_until - 0.3]
    assert during == []
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) > 2.0  # far beyond WatchdogSec: systemd would restart the service


@pytest.mark.slow
async def test_two_hundred_sessions_fifo_none_lost_memory_bounded(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, max_running=4)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    rss_before = psutil.Process(daemon.proc.pid).memory_info().rss
    ids = await asyncio.gather(
        *(
            create_session(http, daemon, template="grid3", seed=i, end=30, sample_every=5)
            for i in range(200)
        )
    )
    ids = sorted(s["id"] for s in ids)  # the order the daemon accepted them in
    for session_id in ids:
        await wait_status(http, daemon, session_id, "completed", timeout=300)
    admitted = [e["session_id"] for e in daemon.events("session_admitted")]
    assert admitted == ids
    for session_id in ids[::20]:
        assert len(await samples(http, daemon, session_id)) == 6
    rss_after = psutil.Process(daemon.proc.pid).memory_info().rss
    assert rss_after - rss_before < 60_000_000, (rss_before, rss_after)
    assert sumo_children(daemon.proc.pid) == []


async def test_unwritable_session_dir_fails_the_session_clearly(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url)
    await upload(http, daemon, "grid3", scenarios["grid3"])
    sessions_dir = daemon.state_dir / "sessions"
    # A file where the session dirs go: creating one fails as on a broken or full disk (a chmod
    # would not stop root, which these tests may run as).
    shutil.rmtree(sessions_dir)
    sessions_dir.write_text("not a directory")
    s = await create_session(http, daemon, template="grid3", end=20)
    failed = await wait_status(http, daemon, s["id"], {"failed", "completed"})
    assert failed["status"] == "failed" and failed["cause"] == "io_error"
    assert "Not a directory" in failed["error"] and str(sessions_dir) in failed["error"]
    # The daemon goes on once the disk is fine again.
    sessions_dir.unlink()
    sessions_dir.mkdir()
    ok = await create_session(http, daemon, template="grid3", end=20)
    await wait_status(http, daemon, ok["id"], "completed")


async def test_metrics(daemons, db_url, http, scenarios):
    daemon = await daemons.start(db_url, traci_ports=(21700, 21709))
    await upload(http, daemon, "grid3", scenarios["grid3"])
    s = await create_session(http, daemon, template="grid3", end=50)
    await wait_status(http, daemon, s["id"], "completed")
    async with http.get(f"{daemon.url}/metrics") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values['sumo_sessions{status="completed"}'] == 1
    assert values["sumo_sessions_started_total"] == 1
    assert values['sumo_sessions_finished_total{status="completed"}'] == 1
    assert values["sumo_ports_free"] == 10 and values["sumo_ports_leased"] == 0
    assert values["sumo_queue_depth"] == 0
    assert values["sumo_writer_rows_total"] == 5
    assert values["sumo_writer_batch_seconds_count"] >= 1
    assert values["sumo_child_processes"] == 0
    assert "sumo_event_loop_lag_seconds" in values


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_unit_verifies(tmp_path):
    unit = (REPO / "systemd" / "sumo-supervisor.service").read_text()
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    # The unit names the installed path; point it at this checkout's script to verify it here.
    script = Path(sys.executable).parent / "sumo-supervisor"
    path = tmp_path / "sumo-supervisor.service"
    path.write_text(unit.replace("/opt/sumo-supervisor/.venv/bin/sumo-supervisor", str(script)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in out.stderr.splitlines() if "sumo-supervisor" in line]
    assert out.returncode == 0 and problems == [], out.stderr
