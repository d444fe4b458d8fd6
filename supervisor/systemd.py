"""systemd's notify protocol: READY=1, STATUS=..., WATCHDOG=1 and STOPPING=1 as datagrams on
$NOTIFY_SOCKET. A few lines over a socket; no library needed. Does nothing outside systemd."""

from __future__ import annotations

import os
import socket

import structlog

log = structlog.get_logger(component="systemd")


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        # '@' names a socket in the abstract namespace.
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # The watchdog is ours only when systemd did not name another process.
        ours = not pid or pid == str(os.getpid())
        self.watchdog_s: float | None = int(usec) / 1e6 if usec.isdigit() and ours else None

    def notify(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:
            # systemd gone or the socket full: the service goes on; systemd will act on silence.
            log.warning("notify_failed", error=repr(exc))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
