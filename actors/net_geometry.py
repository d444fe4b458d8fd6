"""A template's road network as a map draws it: lane and junction shapes, and where each traffic
light's links are, read from the net file the way SUMO reads it (inflated when compressed).

The parse runs on a thread (the caller's job) and is bounded like the upload checks: expat with
no DTD or entity declarations, counted inflation, and caps on what it keeps, so a big or hostile
net costs at most a known amount of memory."""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from xml.parsers import expat

from actors import scenario
from actors.errors import InvalidTemplate, PayloadTooLarge

# What a map can draw in a browser; a net beyond these is refused with 413 rather than sent.
MAX_LANES = 200_000
MAX_JUNCTIONS = 100_000
MAX_LINKS = 400_000
MAX_POINTS = 4_000_000  # coordinates kept in all (x and y count one each)


@dataclass
class _Net:
    bounds: list[float] | None = None
    edges: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    lane_shapes: dict[str, list[float]] = field(default_factory=dict)
    junctions: list[dict[str, Any]] = field(default_factory=list)
    tls: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    points: int = 0
    links: int = 0


def _floats(text: str, what: str) -> list[float]:
    try:
        return [round(float(v), 2) for v in text.replace(" ", ",").split(",") if v]
    except ValueError:
        raise InvalidTemplate(f"the net has a bad {what}: {text[:80]!r}") from None


def _number(a: dict[str, str], key: str, default: float) -> float:
    try:
        value = float(a.get(key, default))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InvalidTemplate(f"the net has a bad {key}: {a[key][:80]!r}")
    return value


class _Reader:
    def __init__(self) -> None:
        self.net = _Net()
        self._edge: str | None = None
        self._parser = scenario.no_dtd_parser(self._refuse, self._start, self._end)
        self._fed = 0

    def feed(self, chunk: bytes, *, final: bool = False) -> None:
        try:
            self._parser.Parse(chunk, final)
        except expat.ExpatError as exc:
            raise InvalidTemplate(f"the net is not well-formed XML: {exc}") from None
        self._fed += len(chunk)
        if self._fed - max(self._parser.CurrentByteIndex, 0) > scenario.MAX_XML_TOKEN_BYTES:
            raise InvalidTemplate("the net has an XML tag longer than the parser takes")

    def _refuse(self, *_args: object) -> None:
        raise InvalidTemplate("XML entities and DTDs are not allowed in the net")

    def _shape(self, text: str, what: str) -> list[float]:
        shape = _floats(text, what)
        self.net.points += len(shape)
        if self.net.points > MAX_POINTS:
            raise PayloadTooLarge(f"the net has more than {MAX_POINTS} shape coordinates to draw")
        return shape

    def _start(self, tag: str, a: dict[str, str]) -> None:
        net = self.net
        if tag == "location" and "convBoundary" in a:
            net.bounds = _floats(a["convBoundary"], "convBoundary")[:4]
        elif tag == "edge":
            # Internal edges (inside junctions) are drawn as their junction's shape.
            internal = a.get("function") == "internal"
            self._edge = None if internal else a.get("id")
            if self._edge is not None:
                net.edges.setdefault(self._edge, [])
        elif tag == "lane" and self._edge is not None:
            if len(net.lane_shapes) >= MAX_LANES:
                raise PayloadTooLarge(f"the net has more than {MAX_LANES} lanes to draw")
            shape = self._shape(a.get("shape", ""), "lane shape")
            lane_id = a.get("id", "")
            lane: dict[str, Any] = {
                "id": lane_id,
                "shape": shape,
                "width": _number(a, "width", 3.2),
            }
            if a.get("allow") == "pedestrian":
                lane["kind"] = "sidewalk"
            net.edges[self._edge].append(lane)
            net.lane_shapes[lane_id] = shape
        elif tag == "junction" and a.get("type") != "internal":
            if len(net.junctions) >= MAX_JUNCTIONS:
                raise PayloadTooLarge(f"the net has more than {MAX_JUNCTIONS} junctions to draw")
            net.junctions.append(
                {
                    "id": a.get("id", ""),
                    "x": round(_number(a, "x", 0), 2),
                    "y": round(_number(a, "y", 0), 2),
                    "shape": self._shape(a.get("shape", ""), "junction shape"),
                }
            )
        elif tag == "tlLogic":
            net.tls.setdefault(a.get("id", ""), [])
        elif tag == "connection" and "tl" in a and "linkIndex" in a:
            net.links += 1
            if net.links > MAX_LINKS:
                raise PayloadTooLarge(f"the net has more than {MAX_LINKS} signal links")
            net.tls.setdefault(a["tl"], []).append(
                {
                    "index": int(_number(a, "linkIndex", 0)),
                    "from": f"{a.get('from', '')}_{a.get('fromLane', '0')}",
                    "to": f"{a.get('to', '')}_{a.get('toLane', '0')}",
                }
            )

    def _end(self, tag: str) -> None:
        if tag == "edge":
            self._edge = None


def net_path(config: bytes, config_path: str) -> str:
    """The path of the config's (first) net file, relative to the template's root."""
    nets = [v for _s, opt, v in scenario.sumocfg_options(config, config_path) if opt in _NET]
    if not nets:
        raise InvalidTemplate(f"{config_path} names no net-file")
    first = nets[-1].split(",")[0].strip()
    return posixpath.normpath(posixpath.join(posixpath.dirname(config_path), first))


_NET = frozenset({"net-file", "n", "net"})


def read_geometry(
    net_file: str, data: bytes, max_inflated_bytes: int = scenario.DEFAULT_MAX_INFLATED_BYTES
) -> dict[str, Any]:
    """The net's shapes as the map draws them (see the module's docstring for the bounds)."""
    reader = _Reader()
    for chunk in scenario._content(net_file, data, max_inflated_bytes):
        reader.feed(chunk)
    reader.feed(b"", final=True)
    net = reader.net
    lights = []
    for tls_id, links in net.tls.items():
        placed = []
        for link in sorted(links, key=lambda k: k["index"]):
            shape = net.lane_shapes.get(link["from"])
            if shape and len(shape) >= 2:
                # The light of a link stands where its incoming lane meets the junction.
                link = {**link, "x": shape[-2], "y": shape[-1]}
            placed.append(link)
        lights.append({"id": tls_id, "links": placed})
    return {
        "bounds": net.bounds or _bounds(net.lane_shapes),
        "edges": [{"id": e, "lanes": lanes} for e, lanes in net.edges.items()],
        "junctions": net.junctions,
        "tls": lights,
    }


def _bounds(shapes: Mapping[str, list[float]]) -> list[float]:
    xs = [v for s in shapes.values() for v in s[0::2]]
    ys = [v for s in shapes.values() for v in s[1::2]]
    return [min(xs), min(ys), max(xs), max(ys)] if xs else [0.0, 0.0, 1.0, 1.0]
