"""The map's net geometry: read as SUMO reads the net (inflated when compressed), bounded, and
refused with a 4xx error (never a crash) when it holds a DTD, bad numbers or more than a map
can draw."""

from __future__ import annotations

import gzip

import pytest

from actors import net_geometry
from actors.errors import InvalidTemplate, PayloadTooLarge

NET = b"""<?xml version="1.0"?>
<net version="1.20">
  <location convBoundary="0.00,0.00,100.00,50.00"/>
  <edge id=":J1_0" function="internal"><lane id=":J1_0_0" index="0" shape="1,1 2,2"/></edge>
  <edge id="a" from="J0" to="J1">
    <lane id="a_0" index="0" speed="13.9" length="100" shape="0.00,0.00 100.00,0.00"/>
    <lane id="a_1" index="1" allow="pedestrian" width="2" shape="0.00,3.20 100.00,3.20"/>
  </edge>
  <tlLogic id="J1" type="static" programID="0" offset="0"><phase duration="30" state="Gr"/></tlLogic>
  <junction id="J1" type="traffic_light" x="100.00" y="0.00" shape="98,-2 102,-2 102,2 98,2"/>
  <junction id=":J1_0_0" type="internal" x="100" y="0"/>
  <connection from="a" to="b" fromLane="0" toLane="0" tl="J1" linkIndex="1"/>
  <connection from="a" to="c" fromLane="0" toLane="0" tl="J1" linkIndex="0"/>
</net>
"""


def test_shapes_lights_and_bounds():
    g = net_geometry.read_geometry("n.net.xml", NET)
    assert g["bounds"] == [0.0, 0.0, 100.0, 50.0]
    assert [e["id"] for e in g["edges"]] == ["a"]  # internal edges are drawn as junctions
    lanes = g["edges"][0]["lanes"]
    assert lanes[0] == {"id": "a_0", "shape": [0.0, 0.0, 100.0, 0.0], "width": 3.2}
    assert lanes[1]["kind"] == "sidewalk"
    assert [j["id"] for j in g["junctions"]] == ["J1"]
    (light,) = g["tls"]
    # In link order; each where its incoming lane ends.
    assert [(k["index"], k["to"], k["x"], k["y"]) for k in light["links"]] == [
        (0, "c_0", 100.0, 0.0),
        (1, "b_0", 100.0, 0.0),
    ]


def test_a_compressed_net_reads_the_same():
    assert net_geometry.read_geometry("n.net.xml.gz", gzip.compress(NET)) == (
        net_geometry.read_geometry("n.net.xml", NET)
    )


@pytest.mark.parametrize(
    "net, error",
    [
        (b'<!DOCTYPE net [<!ENTITY x "y">]><net/>', InvalidTemplate),
        (b"<net><edge id='a'><lane id='a_0' shape='0,0 x,1'/></edge></net>", InvalidTemplate),
        (b"<net><junction id='j' x='nan' y='0'/></net>", InvalidTemplate),
        (b"<net><connection tl='t' linkIndex='1e400'/></net>", InvalidTemplate),
        (b"<net><edge id='a'>", InvalidTemplate),
    ],
)
def test_bad_nets_are_refused(net, error):
    with pytest.raises(error):
        net_geometry.read_geometry("n.net.xml", net)


def test_a_net_bigger_than_a_map_draws_is_refused(monkeypatch):
    monkeypatch.setattr(net_geometry, "MAX_LANES", 1)
    with pytest.raises(PayloadTooLarge):
        net_geometry.read_geometry("n.net.xml", NET)


def test_a_bomb_is_cut_off_while_it_inflates():
    bomb = gzip.compress(b"<net>" + b" " * 10_000_000 + b"</net>")
    with pytest.raises(PayloadTooLarge):
        net_geometry.read_geometry("n.net.xml.gz", bomb, max_inflated_bytes=1_000_000)


def test_the_net_named_by_the_config():
    cfg = b'<configuration><input><net-file value="../net/a.net.xml.gz"/></input></configuration>'
    assert net_geometry.net_path(cfg, "cfg/s.sumocfg") == "net/a.net.xml.gz"
    with pytest.raises(InvalidTemplate):
        net_geometry.net_path(b"<configuration/>", "s.sumocfg")
