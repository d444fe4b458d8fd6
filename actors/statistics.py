"""SUMO's own end-of-run statistics (`--statistic-output`), read from the session dir.

The summary gives SUMO's figures, not a recomputation of them: SUMO's definitions (which trips
count, how unfinished and undeparted vehicles, persons and rides enter) hold on every scenario,
whatever it writes to its tripinfo and whether the session records trips at all. SUMO writes the
file when the simulation closes (end time, last vehicle, or the TraCI close of a stop).
`--duration-log.statistics` is what makes it include the trip averages (`vehicleTripStatistics`
and the person ones); it changes nothing in the simulation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import defusedxml.ElementTree as safe_et

STATISTICS_FILE = "_supervisor/statistics.xml"
SUMO_ARGS = ("--statistic-output", STATISTICS_FILE, "--duration-log.statistics", "true")
# Wall-clock figures of the machine, not of the simulation: left out.
_SKIPPED = {"performance"}
# SUMO's file is a few lines; anything much bigger is not SUMO's statistics.
MAX_BYTES = 1024 * 1024


def _number(text: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse(data: bytes) -> dict[str, dict[str, Any]]:
    """Each element of <statistics> with its attributes, as numbers where they are numbers."""
    root = safe_et.fromstring(data)
    if root.tag != "statistics":
        raise ValueError(f"not SUMO statistics: root element <{root.tag}>")
    return {
        child.tag: {name: _number(value) for name, value in child.attrib.items()}
        for child in root
        if child.tag not in _SKIPPED
    }


def read(workdir: Path) -> dict[str, dict[str, Any]] | None:
    """The session's statistics, or None when SUMO did not write them (blocking: run it in a
    thread)."""
    path = workdir / STATISTICS_FILE
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ValueError(f"{STATISTICS_FILE} is over {MAX_BYTES} bytes")
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return parse(data)


def discard(workdir: Path) -> None:
    (workdir / STATISTICS_FILE).unlink(missing_ok=True)
