"""What a session records beyond samples, taken from SUMO's own output writers.

SUMO writes FCD (trajectories), tripinfo (trips) and edgeData (edges) as ';'-separated CSV files
in the session dir. A recorder follows those files while SUMO runs and hands whole lines to the
writer: trajectories go to PostgreSQL's COPY as SUMO wrote them (no per-row Python), trips and
edge data are small and are picked apart here. Decoding every vehicle over TraCI instead would
cost far more than SUMO's writer does.

Owned by its session actor; file reads run in a thread.
"""

from __future__ import annotations

import asyncio
import csv
import io
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import unescape

import structlog

from actors import scenario
from actors.quota import RowQuota
from actors.request import SessionRequest
from actors.store import RECORD_TABLES, Mark, partition_name
from actors.writer import CsvChunk, WriterActor

OUT_DIR = scenario.RECORDING_DIR
POLL_S = 0.2
READ_CHUNK = 4 * 1024 * 1024
FCD_ATTRIBUTES = "x,y,speed,angle,lane"


def _float(v: str) -> float | None:
    return float(v) if v else None


def _int(v: str) -> int | None:
    return int(float(v)) if v else None


def _str(v: str) -> str | None:
    return v or None


# SUMO's CSV column -> (table column, converter).
_FCD = {
    "timestep_time": ("time", _float),
    "vehicle_id": ("vehicle", _str),
    "vehicle_x": ("x", _float),
    "vehicle_y": ("y", _float),
    "vehicle_angle": ("angle", _float),
    "vehicle_speed": ("speed", _float),
    "vehicle_lane": ("lane", _str),
    "vehicle_edge": ("lane", _str),
}
_TRIPS = {
    "tripinfo_id": ("vehicle", _str),
    "tripinfo_vType": ("vtype", _str),
    "tripinfo_depart": ("depart", _float),
    "tripinfo_arrival": ("arrival", _float),
    "tripinfo_duration": ("duration", _float),
    "tripinfo_routeLength": ("route_length", _float),
    "tripinfo_waitingTime": ("waiting_time", _float),
    "tripinfo_waitingCount": ("waiting_count", _int),
    "tripinfo_timeLoss": ("time_loss", _float),
    "tripinfo_departDelay": ("depart_delay", _float),
    "tripinfo_rerouteNo": ("reroutes", _int),
}
_EDGES = {
    "interval_begin": ("interval_begin", _float),
    "interval_end": ("interval_end", _float),
    "edge_id": ("edge", _str),
    "edge_entered": ("entered", _int),
    "edge_left": ("left_edge", _int),
    "edge_speed": ("mean_speed", _float),
    "edge_occupancy": ("occupancy", _float),
    "edge_density": ("density", _float),
    "edge_sampledSeconds": ("sampled_seconds", _float),
}
Mapping_ = Mapping[str, tuple[str, Callable[[str], Any]]]


@dataclass
class _Tail:
    """One output file being followed: where we are in it and how its columns map."""

    path: Path
    table: str
    mapping: Mapping_
    key: str  # the column a row must have to be kept (empty FCD time steps have no vehicle)
    offset: int = 0
    pending: bytes = b""
    header: list[str] | None = None
    lines: int = 0
    # True: COPY SUMO's lines as they are when every column maps (the big FCD output).
    fast: bool = False
    # The config's own XML output, followed in place of a CSV of the daemon's: its elements
    # of this name, one start tag a line as SUMO writes them, are the rows.
    element: str | None = None

    def read(self) -> bytes:
        """New whole lines since the last read (blocking: run in a thread)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(READ_CHUNK)
        except FileNotFoundError:
            return b""
        self.offset += len(data)
        data = self.pending + data
        cut = data.rfind(b"\n") + 1
        self.pending = data[cut:]
        data = data[:cut]
        if self.header is None and data and self.element is None:
            first, _, data = data.partition(b"\n")
            self.header = first.decode().strip().split(";")
        return data


class Recorder:
    def __init__(
        self,
        session_id: str,
        request: SessionRequest,
        workdir: Path,
        writer: WriterActor,
        quota: RowQuota | None = None,
    ) -> None:
        self._quota = quota or RowQuota(0)
        self._id = session_id
        self._request = request
        self._workdir = workdir
        self._writer = writer
        self._log = structlog.get_logger(component="recorder").bind(session_id=session_id)
        self._tails: list[_Tail] = []
        self._extra_args: list[str] = []
        # Numbers every chunk handed to the writer, so a retried commit is never applied twice.
        self._seq = 0

    @property
    def tables(self) -> list[str]:
        return [RECORD_TABLES[r] for r in self._request.record if r in RECORD_TABLES]

    @property
    def active(self) -> bool:
        return bool(self.tables)

    def sumo_args(self) -> list[str]:
        return list(self._extra_args)

    def prepare(self, config_path: str) -> None:
        """Lay out the output dir and the SUMO options that fill it (blocking)."""
        out = self._workdir / OUT_DIR
        out.mkdir(exist_ok=True)
        for old in out.glob("*.csv"):
            old.unlink()  # a retry on another port starts the files again
        record = self._request.record
        args: list[str] = []
        tails: list[_Tail] = []
        part = {t: partition_name(t, self._id) for t in self.tables}
        if "trajectories" in record:
            args += [
                "--fcd-output", f"{OUT_DIR}/fcd.csv",
                "--fcd-output.attributes", FCD_ATTRIBUTES,
                "--device.fcd.period", repr(self._request.trajectory_period),
            ]  # fmt: skip
            tails.append(_Tail(out / "fcd.csv", part["trajectories"], _FCD, "vehicle", fast=True))
        if "trips" in record:
            args += self._trips(config_path, part["trips"], tails)
        if "edges" in record:
            (out / "edges.add.xml").write_text(
                "<additional>\n"
                f'  <edgeData id="supervisor_edges" period="{self._request.edge_period!r}"'
                ' file="edges.csv"/>\n'
                "</additional>\n"
            )
            # On the command line this replaces the config's own additional files: keep them.
            config = self._workdir / config_path
            base = posixpath.dirname(config_path)
            own = [
                posixpath.normpath(posixpath.join(base, v.strip()))
                for _s, opt, value in scenario.sumocfg_options(config.read_bytes(), config_path)
                if opt == "additional-files"
                for v in value.split(",")
                if v.strip()
            ]
            args += ["--additional-files", ",".join([*own, f"{OUT_DIR}/edges.add.xml"])]
            tails.append(_Tail(out / "edges.csv", part["edge_data"], _EDGES, "edge"))
        self._extra_args = args
        self._tails = tails

    def _trips(self, config_path: str, partition: str, tails: list[_Tail]) -> list[str]:
        """SUMO writes one tripinfo output: the config's own when it names one SUMO writes as
        plain XML or CSV (the recorder follows it there, and the config keeps its file), else
        the daemon's CSV."""
        config = (self._workdir / config_path).read_bytes()
        own = scenario.config_output(config, config_path, ("tripinfo-output",))
        if own is not None and own.endswith((".xml", ".csv")):
            path = self._workdir / own
            if path.parent.is_dir():
                path.unlink(missing_ok=True)  # a retry on another port starts it again
                element = "tripinfo" if own.endswith(".xml") else None
                tails.append(_Tail(path, partition, _TRIPS, "vtype", element=element))
                return ["--tripinfo-output", own]
        # SUMO's CSV puts a person's personinfo (no vType) in the tripinfo columns: not a trip.
        tails.append(_Tail(self._workdir / OUT_DIR / "trips.csv", partition, _TRIPS, "vtype"))
        return ["--tripinfo-output", f"{OUT_DIR}/trips.csv"]

    async def follow(self, sumo_done: asyncio.Event) -> None:
        """Ingest the files while SUMO runs, then whatever it wrote last."""
        while not sumo_done.is_set():
            await self._ingest_all()
            try:
                await asyncio.wait_for(sumo_done.wait(), POLL_S)
            except TimeoutError:
                pass
        # SUMO has exited: its files are complete. Drain them (reads are capped per call).
        while await self._ingest_all():
            pass
        self._log.info("recorded", **{t.table.split("__")[0]: t.lines for t in self._tails})

    async def _ingest_all(self) -> bool:
        """One pass over every file; True when anything was read."""
        got = False
        for tail in self._tails:
            data = await asyncio.to_thread(tail.read)
            if data:
                got = True
                await self._ingest(tail, data)
        return got

    async def _ingest(self, tail: _Tail, data: bytes) -> None:
        mapping = tail.mapping
        if tail.element is not None:
            columns = tuple(dict.fromkeys(col for col, _ in mapping.values()))
            rows = await asyncio.to_thread(
                _project_xml, tail.element, mapping, tail.key, columns, data
            )
            tail.lines += len(rows)
            await self._writer.write_records(tail.table, columns, rows, self._mark())
            return
        assert tail.header is not None
        if tail.fast and all(h in mapping for h in tail.header):
            # The fast path: PostgreSQL parses SUMO's CSV itself, the partition adds session_id.
            columns = tuple(mapping[h][0] for h in tail.header)
            n = data.count(b"\n")
            allowed = self._quota.take(n)
            if allowed < n:
                data = data[: _after_lines(data, allowed)]
                n = allowed
            if not n:
                return
            tail.lines += n
            await self._writer.write_csv(
                CsvChunk(tail.table, columns, data, n, tail.key, self._mark())
            )
            return
        columns = tuple(dict.fromkeys(col for col, _ in mapping.values()))
        rows = await asyncio.to_thread(_project, tail.header, mapping, tail.key, columns, data)
        rows = rows[: self._quota.take(len(rows))]
        tail.lines += len(rows)
        await self._writer.write_records(tail.table, columns, rows, self._mark())

    def _mark(self) -> Mark:
        self._seq += 1
        return Mark(self._id, self._seq)


def _after_lines(data: bytes, n: int) -> int:
    """The offset just past the first `n` lines of `data`."""
    cut = 0
    for _ in range(n):
        cut = data.index(b"\n", cut) + 1
    return cut


def _project(
    header: list[str], mapping: Mapping_, key: str, columns: tuple[str, ...], data: bytes
) -> list[tuple[Any, ...]]:
    """The mapped columns of CSV lines, converted, in `columns` order; rows without `key` go
    (before any conversion: their other columns may hold anything)."""
    picks = [(i, *mapping[h]) for i, h in enumerate(header) if h in mapping]
    keys = [i for i, col, _conv in picks if col == key]
    out = []
    for fields in csv.reader(io.StringIO(data.decode(errors="replace")), delimiter=";"):
        if not any(i < len(fields) and fields[i] for i in keys):
            continue
        row = {col: conv(fields[i]) if i < len(fields) else None for i, col, conv in picks}
        if row.get(key) is not None:
            out.append(tuple(row.get(c) for c in columns))
    return out


_ATTRIBUTE_RE = re.compile(r'([\w:.-]+)="([^"]*)"')


def _project_xml(
    element: str, mapping: Mapping_, key: str, columns: tuple[str, ...], data: bytes
) -> list[tuple[Any, ...]]:
    """Like `_project`, from SUMO's XML: each `<element ...>` start tag (SUMO writes one a line)
    is a row, its attributes named as SUMO's CSV names them (`tripinfo_duration`)."""
    start = f"<{element} "
    out = []
    for line in data.decode(errors="replace").splitlines():
        line = line.lstrip()
        if not line.startswith(start):
            continue
        attrs = {f"{element}_{k}": unescape(v, {"&quot;": '"', "&apos;": "'"})
                 for k, v in _ATTRIBUTE_RE.findall(line)}  # fmt: skip
        row = {col: conv(attrs.get(name, "")) for name, (col, conv) in mapping.items()}
        if row.get(key) is not None:
            out.append(tuple(row.get(c) for c in columns))
    return out
