"""The embedded PostgreSQL: a killed daemon's server is found and stopped by the next start, and
a daemon that ends leaves no postgres process behind."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.harness.daemon import pid_alive
from tests.harness.poll import wait_until

# A bound on a hang, not a timing: the daemon bounds each stage of its stop by its shutdown
# timeout (20 s), and the embedded server's stop too.
EMBEDDED_STOP_S = 120.0


def postgres_of(pgdata: Path) -> list[psutil.Process]:
    """The postmasters serving `pgdata` (named with -D on their command line). A child the
    postmaster has just forked shows the same command line until it renames itself: it is not
    one more server."""
    found = {}
    for proc in psutil.process_iter(attrs=["name", "cmdline", "ppid"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and str(pgdata) in cmdline:
            found[proc.pid] = proc
    return [p for p in found.values() if p.info["ppid"] not in found]


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


@pytest.fixture
def leftover_postgres(tmp_path: Path) -> Iterator[None]:
    """Whatever a failed test leaves running of its data dirs is killed after it."""
    yield
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if proc.info["name"] == "postgres" and str(tmp_path) in cmdline:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


async def test_kill_9_then_restart_stops_the_orphaned_server(daemons, http, leftover_postgres):
    first = await daemons.start(None)
    pgdata = (first.state_dir / "pgdata").resolve()
    old = postgres_of(pgdata)
    assert len(old) == 1
    old_pid = old[0].pid

    first.signal(signal.SIGKILL)
    await first.wait_exit(EMBEDDED_STOP_S)
    # kill -9 gives the daemon no chance to stop its server: it still runs.
    assert pid_alive(old_pid)

    second = await daemons.start(None, state_dir=first.state_dir)
    async with http.get(f"{second.url}/healthz") as r:
        assert r.status == 200
    await wait_until(lambda: not pid_alive(old_pid), "the orphaned postgres to be gone")
    new = postgres_of(pgdata)
    assert [p.pid for p in new] == [postmaster_pid(pgdata)]
    assert new[0].pid != old_pid
    assert second.events("embedded_postgres_orphan_stopped", pid=old_pid)

    second.signal(signal.SIGTERM)
    assert await second.wait_exit(EMBEDDED_STOP_S) == 0
    assert postgres_of(pgdata) == []
    assert not (pgdata / "postmaster.pid").exists()


async def test_sigterm_leaves_no_postgres(daemons, http, scenarios, leftover_postgres):
    daemon = await daemons.start(None)
    pgdata = (daemon.state_dir / "pgdata").resolve()
    assert len(postgres_of(pgdata)) == 1
    daemon.signal(signal.SIGTERM)
    assert await daemon.wait_exit(EMBEDDED_STOP_S) == 0
    assert postgres_of(pgdata) == []


async def test_sigterm_with_the_data_dir_lock_held_elsewhere_still_stops(
    daemons, http, leftover_postgres
):
    """pgserver's own stop waits for the data dir's lock without a bound: a process that holds
    it (here the test) must not keep the daemon from exiting, nor leave its server running."""
    import fasteners

    daemon = await daemons.start(None, env={"SUMO_SUPERVISOR_SHUTDOWN_TIMEOUT_S": "3"})
    pgdata = (daemon.state_dir / "pgdata").resolve()
    assert len(postgres_of(pgdata)) == 1
    lock = fasteners.InterProcessLock(pgdata.with_name("pgdata.lock"))
    assert lock.acquire(timeout=30)
    try:
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(EMBEDDED_STOP_S) == 0
        assert daemon.events("embedded_postgres_stop_stuck")
        assert postgres_of(pgdata) == []
    finally:
        lock.release()


def _stale_postmaster_pid(pgdata: Path, pid: int) -> None:
    """Rewrite postmaster.pid as a server that died without removing it would have left it,
    naming `pid`."""
    lines = (pgdata / "postmaster.pid").read_text().splitlines()
    lines[0] = str(pid)
    (pgdata / "postmaster.pid").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("whose", ["dead", "reused"])
async def test_stale_postmaster_pid(daemons, http, whose, leftover_postgres):
    """A postmaster.pid whose pid is dead, or now another process's, does not stop the start."""
    first = await daemons.start(None)
    pgdata = (first.state_dir / "pgdata").resolve()
    saved = (pgdata / "postmaster.pid").read_text()
    first.signal(signal.SIGTERM)
    assert await first.wait_exit(EMBEDDED_STOP_S) == 0
    assert postgres_of(pgdata) == []

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        if whose == "dead":
            dead = subprocess.Popen(["true"])
            dead.wait()
            pid = dead.pid
        else:
            pid = other.pid  # alive, but not a postgres: a pid the kernel handed out again
        (pgdata / "postmaster.pid").write_text(saved)
        _stale_postmaster_pid(pgdata, pid)

        second = await daemons.start(None, state_dir=first.state_dir)
        async with http.get(f"{second.url}/healthz") as r:
            assert r.status == 200
            assert (await r.json())["status"] == "ok"
        assert [p.pid for p in postgres_of(pgdata)] == [postmaster_pid(pgdata)]
        assert other.poll() is None  # the process that reuses the pid is left alone
        second.signal(signal.SIGTERM)
        assert await second.wait_exit(EMBEDDED_STOP_S) == 0
        assert postgres_of(pgdata) == []
    finally:
        other.kill()
        other.wait()
