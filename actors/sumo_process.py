"""SUMO processes: the one place they are started, killed and reaped.

A session actor spawns its SUMO here and reaps it here; the supervisor's escalation (a stop
SUMO ignores) kills it through the session's handle, and restart recovery kills a previous
daemon's SUMO with `kill_orphan`. Each SUMO runs in its own process group, so a kill takes
whatever SUMO spawned with it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import deque
from pathlib import Path
from typing import Any, Literal

import psutil

# Two process start times (psutil) of one process agree to well within this.
START_TIME_TOLERANCE_S = 0.05
# After SIGKILL a process is gone at once; this only bounds a wait that cannot hang.
REAP_TIMEOUT_S = 10.0


class SumoProcess:
    def __init__(self, proc: asyncio.subprocess.Process, started_at: float | None) -> None:
        self._proc = proc
        # The process's start time, which tells it from a later process with the same pid.
        self.started_at = started_at

    @classmethod
    async def spawn(
        cls, command: list[str], *, cwd: Path, pass_fds: tuple[int, ...], nice: int
    ) -> SumoProcess:
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            # Its own process group, so the whole group can be killed whatever SUMO spawned.
            # A sandbox launcher execs SUMO: the process is SUMO's, pid and all.
            start_new_session=True,
            pass_fds=pass_fds,
        )
        return cls(proc, await asyncio.to_thread(_settle_process, proc.pid, nice))

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait_exit(self, within_s: float) -> None:
        """Wait up to `within_s` for SUMO to exit (TimeoutError if it has not)."""
        await asyncio.wait_for(asyncio.shield(self._proc.wait()), within_s)

    async def relog(
        self, name: Literal["stdout", "stderr"], log: Any, tail: deque[str] | None = None
    ) -> None:
        """Re-log what SUMO writes on one of its streams, under its session."""
        stream = self._proc.stdout if name == "stdout" else self._proc.stderr
        assert stream is not None
        async for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            if tail is not None:
                tail.append(line)
            log.info("sumo_output", stream=name, line=line)

    def kill(self) -> None:
        """SIGKILL SUMO's whole process group: a jump of many steps ends at once."""
        _killpg(self._proc.pid)

    async def reap(self, grace_s: float, log: Any) -> None:
        """Let SUMO exit by itself for `grace_s`, then kill its whole process group."""
        try:
            await asyncio.wait_for(self._proc.wait(), timeout=grace_s)
        except TimeoutError:
            log.warning("sumo_kill", reason="did not exit after TraCI closed")
        # Also catches anything SUMO left behind in its group.
        _killpg(self._proc.pid)
        await asyncio.wait_for(self._proc.wait(), timeout=REAP_TIMEOUT_S)
        log.info("sumo_exited", exit_code=self._proc.returncode)


ORPHAN_KILL_WAIT_S = 2.0


def kill_orphan(pid: int | None, started_at: float | None) -> bool:
    """Kill a SUMO a previous daemon recorded, only if that pid still is the process that was
    started then (blocking: psutil). Whether it was killed."""
    if pid is None or started_at is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - started_at) > START_TIME_TOLERANCE_S:
            return False
        _killpg(pid)
        proc.kill()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    # Dead once it is a zombie: its parent (a frozen daemon, say) may never reap it.
    deadline = time.monotonic() + ORPHAN_KILL_WAIT_S
    with contextlib.suppress(psutil.NoSuchProcess):
        while proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.01)
    return True


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs (a zombie does not count). Blocking: /proc."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _settle_process(pid: int, nice: int) -> float | None:
    """Run a new SUMO below the daemon's priority; its start time, or None if it is gone
    already. Blocking: /proc."""
    if nice:
        # Set from here, not in the child (a preexec_fn is unsafe in a threaded process):
        # SUMO spends its first tenth of a second loading anyway.
        # Below 0 needs CAP_SYS_NICE: without it, SUMO keeps the daemon's priority.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        # Linux's autogroups schedule each session (SUMO has its own, to be killed as a group)
        # as one unit, whatever its processes' nice values: beside 8 SUMO sessions the daemon
        # got 1/9 of the CPU and answered requests 10 to 40 ms late. The group's nice counts.
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/autogroup").write_text(f"{nice}\n")
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
