"""A session's road network, read with sumolib: the ids that commands may name."""

from __future__ import annotations

from pathlib import Path

from actors import scenario, traci_commands


def read_network(workdir: Path, config_path: str) -> traci_commands.Network:
    """Edge, lane, junction and traffic-light ids of the session's net, read with sumolib."""
    import sumolib

    config = workdir / config_path
    net_file = next(
        v
        for _s, opt, v in scenario.sumocfg_options(config.read_bytes(), config_path)
        if opt == "net-file"
    )
    net = sumolib.net.readNet(str(config.parent / net_file.split(",")[0].strip()))
    edges = [e.getID() for e in net.getEdges()]
    return traci_commands.Network(
        edges=edges,
        lanes=[lane.getID() for e in net.getEdges() for lane in e.getLanes()],
        junctions=[n.getID() for n in net.getNodes()],
        tls=[t.getID() for t in net.getTrafficLights()],
    )
