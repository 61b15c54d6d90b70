"""systemd's notify protocol (sd_notify) without libsystemd: one datagram per message."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends `KEY=value` lines to $NOTIFY_SOCKET; does nothing when it is unset."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address: str | None = None
        self._sock: socket.socket | None = None
        if address:
            # A leading "@" names a socket in the abstract namespace.
            self.address = "\0" + address[1:] if address.startswith("@") else address
            # Non-blocking: when the reader lags (a full queue: Linux keeps only
            # net.unix.max_dgram_qlen = 10 unread datagrams), a blocking sendto
            # froze the master's loop, signals included. Dropped status is harmless.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: object) -> bool:
        """notify(READY=1, STATUS="...") -> True if sent."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{key}={value}" for key, value in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            return False  # systemd gone or socket full: never fatal for the daemon
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, if systemd asked this pid for keep-alives."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
