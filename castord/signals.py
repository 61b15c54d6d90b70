"""Signals to intents. Handlers only record; the supervisor's loop acts.

The table is data, so the mapping is testable without sending a signal.
"""

from __future__ import annotations

import enum
import signal
import socket
from collections import deque


class Intent(enum.Enum):
    DRAIN = "drain"  # first TERM/INT: graceful
    FAST_STOP = "fast_stop"  # second TERM/INT, or QUIT
    RELOAD = "reload"  # HUP
    GROW = "grow"  # TTIN
    SHRINK = "shrink"  # TTOU
    REOPEN_LOGS = "reopen_logs"  # USR1


def intent_for(signum: int, *, draining: bool) -> Intent:
    if signum in (signal.SIGTERM, signal.SIGINT):
        return Intent.FAST_STOP if draining else Intent.DRAIN
    return MASTER_SIGNALS[signum]


MASTER_SIGNALS: dict[int, Intent] = {
    signal.SIGTERM: Intent.DRAIN,
    signal.SIGINT: Intent.DRAIN,
    signal.SIGQUIT: Intent.FAST_STOP,
    signal.SIGHUP: Intent.RELOAD,
    signal.SIGTTIN: Intent.GROW,
    signal.SIGTTOU: Intent.SHRINK,
    signal.SIGUSR1: Intent.REOPEN_LOGS,
}


class SignalQueue:
    """Records signals and wakes the loop through a socketpair (set_wakeup_fd)."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in MASTER_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum: int, _frame: object) -> None:
        self.pending.append(signum)  # deque.append is atomic; nothing else here

    @property
    def wakeup(self) -> socket.socket:
        return self._reader

    def drain_wakeups(self) -> None:
        try:
            while self._reader.recv(4096):
                pass
        except BlockingIOError:
            pass

    def pop_all(self) -> list[int]:
        out = []
        while self.pending:
            out.append(self.pending.popleft())
        return out

    def close(self) -> None:
        signal.set_wakeup_fd(-1)
        self._reader.close()
        self._writer.close()
