"""The master's states, and what each signal means in each. Handlers only record;
the supervisor's loop acts.

The table is data, so the mapping is testable without sending a signal, and it
is total: every signal castord handles has an intent in every state.
"""

from __future__ import annotations

import enum
import signal
import socket
from collections import deque


class State(enum.Enum):
    RUNNING = "running"
    RELOADING = "reloading"  # after HUP: the old generation drains while the new one runs
    DRAINING = "draining"  # TERM/INT: no claims, no spawns; running critical tasks finish
    STOPPING = "stopping"  # fast stop: every child killed, its tasks requeued

    @property
    def accepting(self) -> bool:
        """Children are spawned and replaced, and periodic ticks fire, only in these."""
        return self in (State.RUNNING, State.RELOADING)


class Intent(enum.Enum):
    DRAIN = "drain"  # graceful: stop claiming, let critical tasks finish
    FAST_STOP = "fast_stop"  # kill every child now, requeue its tasks (again, if stopping)
    RELOAD = "reload"  # a new generation of children; drain the old one
    DEFER_RELOAD = "defer_reload"  # HUP while reloading: once more when this one ends
    REFUSE_RELOAD = "refuse_reload"  # HUP while draining or stopping: logged, nothing else
    GROW = "grow"  # one more process child
    SHRINK = "shrink"  # one fewer process child
    REFUSE_RESIZE = "refuse_resize"  # TTIN/TTOU while draining or stopping
    REOPEN_LOGS = "reopen_logs"  # after logrotate moved the file


_RUNNING: dict[int, Intent] = {
    signal.SIGTERM: Intent.DRAIN,
    signal.SIGINT: Intent.DRAIN,
    signal.SIGQUIT: Intent.FAST_STOP,
    signal.SIGHUP: Intent.RELOAD,
    signal.SIGTTIN: Intent.GROW,
    signal.SIGTTOU: Intent.SHRINK,
    signal.SIGUSR1: Intent.REOPEN_LOGS,
}
# Once stopping began, nothing may add children (a child spawned then was never
# told to drain, so castord never exited); a second TERM/INT goes fast.
_WINDING_DOWN: dict[int, Intent] = {
    signal.SIGTERM: Intent.FAST_STOP,
    signal.SIGINT: Intent.FAST_STOP,
    signal.SIGQUIT: Intent.FAST_STOP,
    signal.SIGHUP: Intent.REFUSE_RELOAD,
    signal.SIGTTIN: Intent.REFUSE_RESIZE,
    signal.SIGTTOU: Intent.REFUSE_RESIZE,
    signal.SIGUSR1: Intent.REOPEN_LOGS,
}
INTENTS: dict[State, dict[int, Intent]] = {
    State.RUNNING: _RUNNING,
    # TERM/INT drain both generations; a resize applies to the new one.
    State.RELOADING: {**_RUNNING, signal.SIGHUP: Intent.DEFER_RELOAD},
    State.DRAINING: _WINDING_DOWN,
    State.STOPPING: _WINDING_DOWN,
}
MASTER_SIGNALS: tuple[int, ...] = tuple(_RUNNING)


def intent_for(signum: int, state: State) -> Intent:
    return INTENTS[state][signum]


class SignalQueue:
    """Records signals and wakes the loop through a socketpair (set_wakeup_fd)."""

    def __init__(self) -> None:
        self.pending: deque[int] = deque()
        self._installed = False
        self._reader, self._writer = socket.socketpair()
        for sock in (self._reader, self._writer):
            sock.setblocking(False)

    def install(self) -> None:
        if self._installed:
            return
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        for signum in MASTER_SIGNALS:
            signal.signal(signum, self._record)
        self._installed = True

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
        """Supervision is over. From here a signal can change nothing, so it is ignored:
        Python would otherwise restore the default actions as the interpreter exits,
        and a TERM arriving then (after a QUIT, say) would kill castord mid-cleanup."""
        if self._installed:
            for signum in MASTER_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            signal.set_wakeup_fd(-1)
        self._reader.close()
        self._writer.close()
