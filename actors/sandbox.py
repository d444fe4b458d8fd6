"""SUMO's sandbox, from the daemon's side: what this kernel enforces (probed once at start), and
the command that starts a confined SUMO. The launcher that does the confining, between the
daemon and SUMO's exec, is actors/sandbox_exec.py; receiving its sockets is actors/handover.py.

Whatever a scenario asks of SUMO, the kernel holds it to: writing only in its session dir;
reading only that, its installation and the system's libraries; no network but a private
loopback, where only the daemon's sockets reach it; and caps on memory, file size and open files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from actors import sandbox_exec

LAUNCHER = Path(sandbox_exec.__file__).resolve()
# The launcher runs as a module from its own folder (appended: the standard library comes
# first), so its compiled code is cached; a script is compiled anew at every start.
_BOOT = (
    f"import sys; sys.path.append({str(LAUNCHER.parent)!r}); "
    "from sandbox_exec import main; sys.exit(main(sys.argv[1:]))"
)
# What SUMO reads besides its own installation, measured with strace on a run with outputs:
# the dynamic loader's cache and system libraries, glibc's locale and gconv files (under /usr),
# the local time zone (a link into /usr/share/zoneinfo), and /dev/urandom for --random.
SYSTEM_READ = ("/usr", "/lib", "/lib64", "/lib32", "/libx32", "/etc/ld.so.cache", "/dev/urandom")
# An output set to /dev/null is a way to switch it off.
SYSTEM_WRITE = ("/dev/null",)
PROBE_TIMEOUT_S = 30.0
# Any port will do for the probe: it runs in a namespace of its own, or binds nothing.
_PROBE_PORT = 40000
_LIBRARY = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")

# What the sandbox promises, each named as the `sandbox_status` log line names it.
PROTECTIONS = {
    "fs_write": "SUMO writes only inside its session directory",
    "fs_read": "SUMO reads only its session directory, its installation and system libraries",
    "no_outgoing_connections": "SUMO opens no outgoing connection",
    "traci_private": "no TraCI connection but the daemon's reaches SUMO",
    "caps": "SUMO's memory, file sizes and open files are capped",
    "signal_scope": "SUMO cannot signal or reach abstract sockets of processes outside it",
}


@dataclass(frozen=True)
class Caps:
    memory_mb: int
    max_file_mb: int
    max_open_files: int


@dataclass(frozen=True)
class SandboxPlan:
    """How every SUMO of this daemon is started: what its launcher applies."""

    netns: bool
    landlock: bool
    read: tuple[str, ...]
    caps: Caps
    write: tuple[str, ...] = SYSTEM_WRITE
    python: str = sys.executable

    def launcher(self, traci_port: int, **extra: int | None) -> list[str]:
        """The launcher's command line up to SUMO's: its `key=value` arguments."""
        values: dict[str, int | None] = {
            "netns": int(self.netns),
            "landlock": int(self.landlock),
            "memory_mb": self.caps.memory_mb,
            "max_file_mb": self.caps.max_file_mb,
            "max_open_files": self.caps.max_open_files,
            "traci_port": traci_port,
            **extra,
        }
        return [
            *(self.python, "-I", "-S", "-c", _BOOT),
            *(f"read={path}" for path in self.read),
            *(f"write={path}" for path in self.write),
            *(f"{key}={value}" for key, value in values.items() if value is not None),
            "--",
        ]

    def command(
        self,
        sumo_argv: Sequence[str],
        *,
        traci_port: int,
        summary_port: int | None = None,
        handover_fd: int | None = None,
    ) -> list[str]:
        """The launcher's command line. In a private network namespace the launcher makes the
        summary listener itself (and adds SUMO's --summary-output) and hands the daemon its
        sockets over `handover_fd`; otherwise SUMO connects to the daemon's `summary_port`."""
        launcher = self.launcher(traci_port, summary_port=summary_port, handover_fd=handover_fd)
        return [*launcher, *sumo_argv]


@dataclass(frozen=True)
class SandboxStatus:
    """What is enforced on every SUMO of this daemon, and what is not, with the reason."""

    plan: SandboxPlan | None  # None: SUMO runs unconfined, as it did before the sandbox
    landlock_abi: int
    enforced: tuple[str, ...]
    missing: dict[str, str] = field(default_factory=dict)

    def log_fields(self) -> dict[str, Any]:
        return {
            "mode": "off" if self.plan is None else ("netns" if self.plan.netns else "host_net"),
            "landlock_abi": self.landlock_abi,
            "enforced": list(self.enforced),
            "not_enforced": self.missing,
            "caps": None if self.plan is None else asdict(self.plan.caps),
        }

    def refusal(self, host: str, loopback: bool, allow_unconfined: bool) -> str | None:
        """Why the daemon must not start: something is not enforced, its API is reachable from
        other hosts (`host` is not `loopback`), and nobody said that risk is accepted."""
        if not self.missing or allow_unconfined or loopback:
            return None
        return (
            f"host {host} is not loopback and the sandbox does not enforce "
            f"{', '.join(sorted(self.missing))} (see the sandbox_status log line); "
            "set allow_unconfined = true (--allow-unconfined) to accept the risk"
        )


def status_at_start(sumo_binary: str, caps: Caps, enabled: bool) -> SandboxStatus:
    """What every SUMO of this daemon will run under (blocking: probes the kernel)."""
    if not enabled:
        return SandboxStatus(None, 0, (), {name: "sandbox = false" for name in PROTECTIONS})
    return probe(sumo_binary, caps)


def readable_paths(sumo_binary: str) -> tuple[str, ...]:
    """SUMO's installation (its data and binaries), the directories of every library it loads
    (a wheel bundles its own beside the package), and the system files it reads."""
    binary = Path(sumo_binary).resolve()
    paths = {str(binary.parent.parent), *SYSTEM_READ}
    if sumo_home := os.environ.get("SUMO_HOME"):
        paths.add(str(Path(sumo_home).resolve()))
    paths.update(_library_dirs(str(binary)))
    return _outermost(p for p in paths if os.path.exists(p))


def _library_dirs(binary: str) -> set[str]:
    # What `ldd` does, without needing it: glibc's loader lists the libraries and stops.
    try:
        out = subprocess.run(
            [binary],
            env={"LD_TRACE_LOADED_OBJECTS": "1"},
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return set()
    found = (_LIBRARY.search(line) for line in out.splitlines())
    return {os.path.dirname(os.path.realpath(m.group(1))) for m in found if m}


def _outermost(paths: Any) -> tuple[str, ...]:
    """Paths not beneath another one of them (a rule on a dir covers all beneath it)."""
    kept: list[str] = []
    for path in sorted(set(paths)):
        if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(path)
    return tuple(kept)


def probe(sumo_binary: str, caps: Caps) -> SandboxStatus:
    """Try each part of the sandbox for real (blocking: runs the launcher's probe, ~0.1 s).

    A part the kernel lacks is left out and named; the rest is kept. SUMO must run under what
    is kept: if it cannot, SandboxUnusable says why rather than running it unconfined."""
    abi = sandbox_exec.landlock_abi()
    plan = SandboxPlan(netns=True, landlock=abi >= 1, read=readable_paths(sumo_binary), caps=caps)
    report = _run_probe(plan, sumo_binary)
    if "confine" in report["errors"] and plan.landlock:
        # Landlock is there but cannot be used (e.g. a seccomp filter refuses it): do without.
        landlock_error = report["errors"]["confine"]
        plan = SandboxPlan(netns=True, landlock=False, read=plan.read, caps=caps)
        report = _run_probe(plan, sumo_binary)
        report["errors"]["landlock"] = landlock_error
    if not report["sumo_runs"]:
        raise SandboxUnusable(
            "SUMO does not run in its sandbox: "
            + "; ".join(f"{k}: {v}" for k, v in report["errors"].items())
            + " (sandbox = false runs it unconfined)"
        )
    plan = SandboxPlan(
        netns=bool(report["netns"]), landlock=plan.landlock, read=plan.read, caps=caps
    )
    return status_from_report(plan, report)


class SandboxUnusable(Exception):
    """SUMO cannot run under the sandbox this kernel offers (a cap too small, a path missing)."""


def _run_probe(plan: SandboxPlan, sumo_binary: str) -> dict[str, Any]:
    command = [*plan.launcher(_PROBE_PORT, probe=1), sumo_binary]
    with tempfile.TemporaryDirectory(prefix="sumo-sandbox-probe-") as cwd:
        try:
            out = subprocess.run(
                [*command, "--version"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
            report: dict[str, Any] = json.loads(out.stdout)
        except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
            raise SandboxUnusable(f"the sandbox probe failed: {exc}") from None
    return report


def status_from_report(plan: SandboxPlan, report: dict[str, Any]) -> SandboxStatus:
    """What the probe's report means for each protection (pure: tested with made-up reports)."""
    errors: dict[str, str] = report["errors"]
    abi = int(report["landlock_abi"])
    no_landlock = errors.get("landlock") or (
        "this kernel has no Landlock" if abi < 1 else "Landlock did not deny what it should"
    )
    fs: bool | str = report["fs"] or no_landlock
    got: dict[str, bool | str] = {
        # Before ABI 3, Landlock could not stop truncate(2) of a file it may not write.
        "fs_write": "truncate(2) needs Landlock ABI 3 (Linux 6.2)"
        if fs is True and abi < 3
        else fs,
        "fs_read": fs,
        "no_outgoing_connections": report["netns"]
        or report["net"]
        or f"no private network namespace ({errors.get('netns')}) and no Landlock network "
        "rules (Linux 6.7, Landlock ABI 4)",
        "traci_private": report["netns"] or f"no private network namespace: {errors.get('netns')}",
        "caps": report["rlimits"] or errors.get("confine", "rlimits refused"),
        "signal_scope": report["scopes"] or "needs Landlock ABI 6 (Linux 6.12)",
    }
    return SandboxStatus(
        plan=plan,
        landlock_abi=abi,
        enforced=tuple(name for name, ok in got.items() if ok is True),
        missing={name: str(why) for name, why in got.items() if why is not True},
    )
