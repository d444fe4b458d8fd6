"""The TraCI port pool: which ports of the configured range are leased, free or quarantined.

Owned by the supervisor actor; plain synchronous state, so it is tested without any I/O.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def port_is_free(port: int) -> bool:
    """True when SUMO could listen on `port`.

    SUMO binds its TraCI server to every interface (0.0.0.0) with SO_REUSEADDR, so the probe does
    the same: a listener on any address makes it fail, a closed connection in TIME_WAIT does not.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def ephemeral_overlap(ports: range) -> range | None:
    """The part of `ports` the kernel may also give to outgoing connections as their source
    port (Linux's ip_local_port_range); None when they do not meet or the range is unknown."""
    try:
        low, high = map(int, EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    both = range(max(ports.start, low), min(ports.stop, high + 1))
    return both or None


class PortPool:
    def __init__(
        self,
        ports: Iterable[int],
        *,
        probe: Callable[[int], bool] = port_is_free,
        quarantine_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ports = list(ports)
        self._leased: set[int] = set()
        self._quarantined: dict[int, float] = {}
        self._probe = probe
        self._quarantine_s = quarantine_s
        self._clock = clock
        # Leases rotate through the range so a just-released port rests before it is reused.
        self._next = 0

    @property
    def size(self) -> int:
        return len(self._ports)

    @property
    def leased(self) -> int:
        return len(self._leased)

    def lease(self) -> int | None:
        """A free port, or None when every port is leased, quarantined or taken by others."""
        now = self._clock()
        n = len(self._ports)
        for i in range(n):
            port = self._ports[(self._next + i) % n]
            if port in self._leased or self._quarantined.get(port, 0.0) > now:
                continue
            if not self._probe(port):
                # Someone else holds it; look again later rather than probing it every time.
                self._quarantined[port] = now + self._quarantine_s
                continue
            self._quarantined.pop(port, None)
            self._leased.add(port)
            self._next = (self._next + i + 1) % n
            return port
        return None

    def release(self, port: int) -> None:
        self._leased.discard(port)

    def quarantine(self, port: int) -> None:
        """SUMO could not listen on a leased port: release it and leave it alone for a while."""
        self._leased.discard(port)
        self._quarantined[port] = self._clock() + self._quarantine_s
