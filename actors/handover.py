"""The daemon's end of a sandboxed SUMO's sockets.

A SUMO in a network namespace of its own cannot be reached from the daemon's, so its launcher
makes SUMO's summary listener and an unconnected TraCI client socket inside that namespace and
sends both over a Unix socket the daemon gave it (SCM_RIGHTS). The daemon accepts the summary
stream on the one and connects the other to SUMO's TraCI port: sockets keep the namespace they
were made in, whoever holds them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from dataclasses import dataclass

from traci.connection import Connection
from traci.domain import DOMAINS
from traci.step import StepManager

_MESSAGE = b"ready"


@dataclass
class Sockets:
    summary_listener: socket.socket
    traci: socket.socket

    def close(self) -> None:
        self.summary_listener.close()
        self.traci.close()


class LauncherGone(Exception):
    """The launcher ended without handing its sockets over (its stderr says why)."""


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """(ours, the launcher's): one message, with its two descriptors, goes from it to us."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    return ours, theirs


async def receive(sock: socket.socket, timeout_s: float) -> Sockets | None:
    """The launcher's sockets; None if they have not come within `timeout_s`."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def on_readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), on_readable)
    try:
        await asyncio.wait_for(ready, timeout_s)
    except TimeoutError:
        return None
    finally:
        loop.remove_reader(sock.fileno())
    try:
        message, fds, _flags, _addr = socket.recv_fds(sock, len(_MESSAGE), 2)
    except BlockingIOError:
        return None
    received = [socket.socket(fileno=fd) for fd in fds]
    if message != _MESSAGE or len(received) != 2:
        for s in received:
            s.close()
        raise LauncherGone("the launcher ended before handing over SUMO's sockets")
    listener, traci = received
    return Sockets(summary_listener=listener, traci=traci)


class AdoptedConnection(Connection):  # type: ignore[misc]
    """A TraCI connection over a socket that is connected already: traci's own __init__
    connects a new socket by host and port, which cannot reach into SUMO's namespace."""

    def __init__(self, sock: socket.socket) -> None:
        StepManager.__init__(self)
        self._socket = sock
        self._process = None
        self._string = b""
        self._queue: list[object] = []
        self._subscriptionMapping: dict[object, object] = {}
        self._lock = threading.Lock()
        for domain in DOMAINS:
            domain._register(self, self._subscriptionMapping)
        self._label = None


def connect(sock: socket.socket, port: int, handshake_timeout_s: float) -> AdoptedConnection:
    """Connect the handed-over socket to SUMO's TraCI port and check that SUMO answers
    (blocking: the session's TraCI thread). ConnectionRefusedError while SUMO is still loading.

    The connect itself blocks without a timeout: on loopback in the namespace it is answered at
    once, and a socket whose timed connect failed would refuse its next try (ECONNABORTED)."""
    sock.setblocking(True)
    sock.connect(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = AdoptedConnection(sock)
    sock.settimeout(handshake_timeout_s)
    try:
        conn.getVersion()
    except BaseException:
        with contextlib.suppress(OSError):
            sock.close()
        raise
    # A jump of many steps may take as long as it takes; SUMO dying closes the socket anyway.
    sock.settimeout(None)
    return conn
