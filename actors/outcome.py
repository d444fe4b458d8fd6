"""How a session ended: the Ending of its SUMO run, and the Outcome that is recorded for it.

Pure: `classify` decides status, cause and message from what the session saw (its stop request,
its row quota, SUMO's exit status and last stderr lines), with no I/O, so every case has a unit
test (tests/unit/test_outcome.py)."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from actors.lifecycle import Cause, Status
from actors.messages import StopSession

_ADDRESS_IN_USE = re.compile(r"address already in use", re.IGNORECASE)
# What SUMO (or the loader) says when one of its caps (actors/sandbox.py) stops it.
_OVER_CAP = (
    (re.compile(r"std::bad_alloc|failed to map segment|cannot allocate memory", re.I), "memory"),
    (re.compile(r"too many open files", re.I), "open files"),
    (re.compile(r"file too large", re.I), "file size"),
)


@dataclass(frozen=True)
class Outcome:
    status: Status
    reason: str
    cause: Cause | None = None
    error: str | None = None
    exit_code: int | None = None
    sim_time: float | None = None


EndingKind = Literal[
    "completed",  # end time reached, or no vehicles left
    "stop",  # a stop request (or a wall-clock timeout) ended it
    "exited_early",  # SUMO exited before TraCI connected
    "traci_lost",  # the connection broke mid-run
    "connect_timeout",  # SUMO did not open its port in time
    "idle",  # a stepped session nobody stepped
    "row_quota",  # the session went over max_session_rows
    "pause_timeout",  # paused for longer than max_pause_s
]


@dataclass(frozen=True)
class Ending:
    """How driving one SUMO process ended, before its exit status is known."""

    kind: EndingKind
    detail: str = ""


@dataclass(frozen=True)
class Seen:
    """What the session saw of its run, besides the Ending: the input to `classify`."""

    returncode: int | None
    stderr_tail: Sequence[str]
    samples: int
    sim_time: float | None
    stop: StopSession | None = None
    # The row quota's limit, when the session went over it.
    quota_exceeded: int | None = None


def classify(ending: Ending, seen: Seen) -> Outcome:
    """The Outcome of a run that ended with `ending`."""
    stop, returncode, sim_time = seen.stop, seen.returncode, seen.sim_time
    # A stop request wins over whatever else ended the run short of its end: a SUMO killed by
    # the stop's escalation while it was still starting is seen as an early exit.
    if ending.kind == "stop" or (stop is not None and ending.kind != "completed"):
        assert stop is not None
        return Outcome(
            stop.status,
            stop.reason,
            cause=Cause.TIMEOUT if stop.status == Status.TIMED_OUT else None,
            exit_code=returncode,
            sim_time=sim_time,
        )
    if seen.quota_exceeded is not None:
        # Before "completed": rows past the quota were not stored, so the run is not whole
        # (the recorder's last rows may have gone over it after SUMO ended).
        return Outcome(
            Status.FAILED,
            "the session went over its row quota",
            cause=Cause.ROW_QUOTA,
            error=f"max_session_rows ({seen.quota_exceeded}) reached: the rows stored up to"
            " it are kept, none after",
            exit_code=returncode,
            sim_time=sim_time,
        )
    if ending.kind == "idle":
        return Outcome(
            Status.TIMED_OUT,
            "idle_timeout_s exceeded: nobody stepped the session",
            cause=Cause.IDLE_TIMEOUT,
            exit_code=returncode,
            sim_time=sim_time,
        )
    if ending.kind == "pause_timeout":
        return Outcome(
            Status.TIMED_OUT,
            "max_pause_s exceeded: paused for too long",
            cause=Cause.PAUSE_TIMEOUT,
            exit_code=returncode,
            sim_time=sim_time,
        )
    if ending.kind == "completed":
        return Outcome(Status.COMPLETED, ending.detail, exit_code=returncode, sim_time=sim_time)
    tail = "\n".join(seen.stderr_tail)
    errors = "\n".join(line for line in seen.stderr_tail if line.startswith("Error"))
    if (cap := over_cap(returncode, seen.stderr_tail)) is not None:
        # Checked first: a SUMO stopped by its cap while loading did not refuse the scenario.
        return Outcome(
            Status.FAILED,
            f"SUMO went over its {cap} cap",
            cause=Cause.RESOURCE_LIMIT,
            error="\n".join(filter(None, [errors or tail, f"SUMO {describe_exit(returncode)}"])),
            exit_code=returncode,
            sim_time=sim_time,
        )
    if any(line.startswith("Error: sandbox:") for line in seen.stderr_tail):
        return Outcome(
            Status.FAILED,
            "SUMO's sandbox could not be set up",
            cause=Cause.SANDBOX_FAILED,
            error=errors,
            exit_code=returncode,
        )
    if ending.kind == "exited_early" and _ADDRESS_IN_USE.search(tail):
        return Outcome(
            Status.FAILED,
            "TraCI port in use",
            cause=Cause.PORT_IN_USE,
            error=tail,
            exit_code=returncode,
        )
    # SUMO reads routes as the simulation runs, so a bad route file may only fail the first
    # step: an error exit before any step completed is still a scenario SUMO refused.
    refused = ending.kind == "traci_lost" and seen.samples == 0 and returncode == 1 and errors
    if ending.kind == "exited_early" or refused:
        return Outcome(
            Status.FAILED,
            "SUMO could not load the scenario",
            cause=Cause.CONFIG_INVALID,
            error=errors or tail or f"sumo exited with code {returncode}",
            exit_code=returncode,
        )
    if ending.kind == "connect_timeout":
        return Outcome(
            Status.FAILED,
            "SUMO did not open its TraCI port in time",
            cause=Cause.TIMEOUT,
            error=tail or None,
            exit_code=returncode,
        )
    # traci_lost: SUMO died or closed the connection mid-run.
    died = returncode is not None and returncode != 0
    how = describe_exit(returncode)
    return Outcome(
        Status.FAILED,
        f"SUMO {how} during the simulation" if died else "TraCI connection lost",
        cause=Cause.SUMO_EXITED if died else Cause.TRACI_CLOSED,
        error="\n".join(filter(None, [errors or tail, f"{ending.detail} ({how})"])),
        exit_code=returncode,
        sim_time=sim_time,
    )


def over_cap(returncode: int | None, stderr: Iterable[str]) -> str | None:
    """Which of SUMO's caps stopped it, if one did: SIGXFSZ is the kernel's answer to a write
    over the file-size cap; the others show in what SUMO or its loader said."""
    if returncode == -signal.SIGXFSZ:
        return "file size"
    for line in stderr:
        for pattern, cap in _OVER_CAP:
            if pattern.search(line):
                return cap
    return None


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
