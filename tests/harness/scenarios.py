"""Real SUMO scenarios, built with SUMO's own tools (netgenerate, randomTrips.py).

`Scenarios` is the tests' set of named scenarios: each is built the first time it is asked for
and then shared, read-only, by every test and every xdist worker of the run (a lock file keeps
two workers from building the same one). A test that runs SUMO on one runs it on a copy
(`bare_sumo_totals` does), since SUMO writes its outputs beside its inputs."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import sumo

SUMO_HOME = Path(sumo.SUMO_HOME)
SUMO_BIN = SUMO_HOME / "bin"
RANDOM_TRIPS = SUMO_HOME / "tools" / "randomTrips.py"


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


def run(*cmd: str | Path, cwd: Path | None = None) -> None:
    subprocess.run([str(c) for c in cmd], cwd=cwd, check=True, capture_output=True, timeout=300)


def netgenerate(out: Path, *args: str) -> None:
    run(SUMO_BIN / "netgenerate", *args, "--seed", "1", "-o", out)


def random_trips(net: Path, out: Path, *args: str) -> None:
    # randomTrips.py also writes files of its own (routes.rou.xml) into its working directory.
    with tempfile.TemporaryDirectory() as scratch:
        run(sys.executable, RANDOM_TRIPS, "-n", net, "-o", out, *args, cwd=Path(scratch))


def write_sumocfg(
    path: Path, net: str, routes: str, end: float, additional: str | None = None
) -> None:
    extra = f'<additional-files value="{additional}"/>' if additional else ""
    path.write_text(
        "<configuration>\n"
        f'  <input><net-file value="{net}"/><route-files value="{routes}"/>{extra}</input>\n'
        f'  <time><end value="{end}"/></time>\n'
        '  <report><no-step-log value="true"/></report>\n'
        "</configuration>\n"
    )


def first_lane(routes: Path) -> str:
    for elem in ET.parse(routes).iter():
        if elem.tag == "trip":
            return elem.attrib["from"] + "_0"
    raise AssertionError("no trip in " + str(routes))


# ---- the benchmarks' scenario ------------------------------------------------------------------


def grid_scenario(
    root: Path,
    *,
    grid: int,
    length: float,
    end: int,
    period: float,
    min_distance: float,
    seed: int = 42,
) -> Scenario:
    """A grid with traffic lights and random trips, built once into `root`."""
    root.mkdir(parents=True, exist_ok=True)
    net, cfg = root / "net.net.xml", root / "scenario.sumocfg"
    if not cfg.exists():
        netgenerate(
            net,
            "--grid",
            "--grid.number",
            str(grid),
            "--grid.length",
            str(length),
            "--default-junction-type",
            "traffic_light",
        )
        random_trips(
            net,
            root / "routes.rou.xml",
            "-e",
            str(end),
            "-p",
            str(period),
            "--seed",
            str(seed),
            "--min-distance",
            str(min_distance),
        )
        write_sumocfg(cfg, "net.net.xml", "routes.rou.xml", end)
    return Scenario(root, cfg.name)


# ---- the tests' named scenarios ----------------------------------------------------------------


def _grid(root: Path, number: int, length: int, trips: list[str], end: float, *net: str) -> str:
    netgenerate(
        root / "net.net.xml",
        "--grid",
        "--grid.number",
        str(number),
        "--grid.length",
        str(length),
        *net,
    )
    random_trips(root / "net.net.xml", root / "routes.rou.xml", *trips)
    write_sumocfg(root / f"{root.name}.sumocfg", "net.net.xml", "routes.rou.xml", end)
    return f"{root.name}.sumocfg"


def _nested(root: Path, _: Scenarios) -> str:
    """Subfolders, a gzipped net and an additional file with a detector writing its own output."""
    for sub in ("cfg", "net", "demand", "add"):
        (root / sub).mkdir()
    netgenerate(
        root / "net" / "spider.net.xml.gz",
        "--spider",
        "--spider.arm-number",
        "5",
        "--spider.circle-number",
        "3",
        "--spider.space-radius",
        "120",
    )
    random_trips(
        root / "net" / "spider.net.xml.gz",
        root / "demand" / "routes.rou.xml",
        "-e",
        "400",
        "-p",
        "1.2",
        "--seed",
        "5",
    )
    lane = first_lane(root / "demand" / "routes.rou.xml")
    (root / "add" / "detectors.add.xml").write_text(
        "<additional>\n"
        '  <vType id="slowcar" maxSpeed="10"/>\n'
        f'  <inductionLoop id="loop0" lane="{lane}" pos="5" period="60" file="loop0.out.xml"/>\n'
        "</additional>\n"
    )
    write_sumocfg(
        root / "cfg" / "scenario.sumocfg",
        "../net/spider.net.xml.gz",
        "../demand/routes.rou.xml",
        700,
        additional="../add/detectors.add.xml",
    )
    return "cfg/scenario.sumocfg"


def _long(root: Path, _: Scenarios) -> str:
    """Runs for a very long time: flows until 1e6 s, traffic lights at every junction. For stop,
    timeout, kill, shutdown and control tests."""
    netgenerate(
        root / "net.net.xml",
        "--grid",
        "--grid.number",
        "4",
        "--grid.length",
        "200",
        "--default-junction-type",
        "traffic_light",
    )
    random_trips(
        root / "net.net.xml",
        root / "flows.rou.xml",
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
    write_sumocfg(root / "long.sumocfg", "net.net.xml", "flows.rou.xml", 1_000_000)
    return "long.sumocfg"


def _broken(root: Path, scenarios: Scenarios) -> str:
    """Well-formed and complete, but SUMO refuses it: a route on an edge the net does not have."""
    shutil.copyfile(scenarios["grid3"].root / "net.net.xml", root / "net.net.xml")
    (root / "routes.rou.xml").write_text(
        '<routes>\n  <vehicle id="v0" depart="0"><route edges="no_such_edge"/></vehicle>\n'
        "</routes>\n"
    )
    write_sumocfg(root / "broken.sumocfg", "net.net.xml", "routes.rou.xml", 100)
    return "broken.sumocfg"


def grid6(root: Path, end: float = 3600) -> str:
    """SUMO's own grid6 (shipped with it, in tools/game): a 6x6 grid with traffic lights, flows
    from every side and a step of 0.1 s. Its config there belongs to the game (a GUI, an
    additional file the game writes), so this one takes the net, the routes and the lights."""
    shipped = SUMO_HOME / "tools" / "game" / "grid6"
    for name in ("grid6.net.xml", "grid6.rou.xml", "grid6.tll.xml"):
        shutil.copy(shipped / name, root / name)
    (root / "grid6.sumocfg").write_text(
        "<configuration>\n"
        '  <input><net-file value="grid6.net.xml"/><route-files value="grid6.rou.xml"/>'
        '<additional-files value="grid6.tll.xml"/></input>\n'
        f'  <time><begin value="0"/><end value="{end:g}"/><step-length value="0.1"/></time>\n'
        '  <routing><weights.random-factor value="1.2"/></routing>\n'
        "</configuration>\n"
    )
    return "grid6.sumocfg"


BUILDERS: dict[str, Callable[[Path, Scenarios], str]] = {
    "grid4": lambda root, _: _grid(root, 4, 200, ["-e", "600", "-p", "1.5", "--seed", "7"], 900),
    "grid3": lambda root, _: _grid(root, 3, 150, ["-e", "400", "-p", "1.0", "--seed", "11"], 600),
    # Every edge gets a sidewalk as lane 0: a lane for pedestrians only.
    "sidewalks": lambda root, _: _grid(
        root, 3, 150, ["-e", "400", "-p", "2.0", "--seed", "3"], 600, "--sidewalks.guess"
    ),
    "nested": _nested,
    "long": _long,
    "broken": _broken,
    "grid6": lambda root, _: grid6(root, end=120),
}


class Scenarios(Mapping[str, Scenario]):
    """The named scenarios under `base`, each built on first use. `base` may be shared by
    several processes: a scenario is built under an exclusive lock and marked done last, so a
    reader never sees one half-built."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._built: dict[str, Scenario] = {}

    def __getitem__(self, name: str) -> Scenario:
        if name not in self._built:
            self._built[name] = self._build(name, BUILDERS[name])
        return self._built[name]

    def __iter__(self) -> Iterator[str]:
        return iter(BUILDERS)

    def __len__(self) -> int:
        return len(BUILDERS)

    def _build(self, name: str, builder: Callable[[Path, Scenarios], str]) -> Scenario:
        root = self._base / name
        return Scenario(root, build_once(root, lambda root: builder(root, self)))


def build_once(root: Path, build: Callable[[Path], str]) -> str:
    """`build(root)` into an empty `root`, unless a process of this run (an xdist worker) has
    done so already; either way, what it returned. Built under an exclusive lock and marked
    done last, so no process ever reads a half-built dir."""
    root.parent.mkdir(parents=True, exist_ok=True)
    done = root.with_name(root.name + ".done")
    with _locked(root.with_name(root.name + ".lock")):
        if not done.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            done.write_text(build(root))
    return done.read_text()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def bare_sumo_totals(
    scenario: Scenario, *, seed: int | None, end: float | None = None
) -> dict[str, int]:
    """What SUMO itself reports for the scenario, run alone with no TraCI (on a copy of it: the
    scenario's own outputs, such as a detector's file, would land beside its inputs)."""
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch) / "scenario"
        shutil.copytree(scenario.root, workdir)
        stats = Path(scratch) / "stats.xml"
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
        run(*cmd, cwd=workdir)
        root = ET.parse(stats).getroot()
    vehicles = root.find("vehicles")
    trips = root.find("vehicleTripStatistics")
    assert vehicles is not None and trips is not None
    return {
        "inserted": int(vehicles.attrib["inserted"]),
        "running": int(vehicles.attrib["running"]),
        "arrived": int(trips.attrib["count"]),
    }
