"""One LISTEN connection per castord: its master listens, its children hear it from the master.

A LISTEN connection is a session: it cannot go through a pooler in transaction mode
(pgbouncer), and each castord child holding its own made N+1 of them per castord.
Instead the master's store listens (pg_wakeup.Listener) and forwards every
notification's topic to each child over a socket pair of the child's own, one line
per topic (`work:<mode>`, `task:<id>`, '' for everyone). A child's store waits on a
`RelayedListener` fed from that socket, with the Listener's interface.

Why a socket pair of its own, not the child's existing message pipe: the wake-ups
come from the master's listener thread, while the pipe is the main loop's (pickled
messages, one writer); sharing it would need a lock between the two, and a child
slow to read would block whichever of them wrote. Here the master never blocks: it
writes without waiting, keeps what did not fit, and if a child falls far behind
(OUTLET_LIMIT) what it owes collapses into one wake-up for everyone, which asks the
child to re-check the database, as any notification does.

No wake-up lost: the child's socket is made, and fed, before the child is started,
and the master's LISTEN is in place before the first child is: every notification
committed after the child's first look at the database reaches it. A reconnect of
the master's listener sends '' (everyone) to every child, as a lost connection wakes
everyone. If the relay breaks (the master's end closed), the child logs it once and
opens a LISTEN connection of its own; the 0.5 s re-check stays the safety net.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from castor.logs import get_logger
from castor.store.pg_wakeup import RECONNECT_SECONDS, Generations, Listener

# Bytes a child may leave unread before what it owes collapses into one wake-up.
OUTLET_LIMIT = 64 * 1024
_READ = 4096
# A child's end that is gone is an error to drop it for, never a SIGPIPE to the master.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

log = get_logger("castor.store.relay")


class _Outlet:
    """The master's end of one child's socket: written without blocking."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self.pending = b""  # what did not fit yet (its head may be the rest of a line)

    def push(self, line: bytes) -> bool:
        """Send `line` (b'' to only flush); False if the child's end is gone."""
        data = self.pending + line
        if not data:
            return True
        try:
            sent = self.sock.send(data, _SEND_FLAGS)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        self.pending = data[sent:]
        if len(self.pending) > OUTLET_LIMIT:
            # Finish the line in flight, then one wake-up for everyone stands for the rest.
            end = self.pending.find(b"\n")
            self.pending = self.pending[:end + 1] + b"\n"
        return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class RelayHub:
    """In castord's master: the children's sockets, fed by the store's listener."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outlets: dict[int, _Outlet] = {}
        self._next = 0

    def attach(self) -> tuple[int, socket.socket]:
        """A new child's socket: its key, and the end to hand to the child (close it
        here once the child is started). Fed from now on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._next += 1
            self._outlets[self._next] = _Outlet(ours)
            return self._next, theirs

    def detach(self, key: int) -> None:
        with self._lock:
            outlet = self._outlets.pop(key, None)
        if outlet is not None:
            outlet.close()

    def __call__(self, topic: str | None) -> None:
        """The listener's forward: a topic, or None (nothing new: flush what is owed)."""
        line = b"" if topic is None else topic.encode() + b"\n"
        with self._lock:
            gone = [key for key, outlet in self._outlets.items() if not outlet.push(line)]
            for key in gone:
                self._outlets.pop(key).close()

    def close(self) -> None:
        with self._lock:
            outlets, self._outlets = list(self._outlets.values()), {}
        for outlet in outlets:
            outlet.close()


class RelayedListener(Generations):
    """In a castord child: the Listener's interface, fed by the master's relay; on its
    own LISTEN connection (`connect`, `channel`) once the relay breaks."""

    def __init__(self, relay: socket.socket, connect: Callable[[], Any], channel: str):
        super().__init__()
        self._relay = relay
        self._relay.setblocking(True)
        self._connect = connect
        self._channel = channel
        self._own: Listener | None = None
        self.relayed = True  # False once it fell back to a LISTEN of its own
        self._thread = threading.Thread(target=self._run, name="castor-pg-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        while not self._closed:
            try:
                chunk = self._relay.recv(_READ)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                self.bump(line.decode(errors="replace"))
        if not self._closed:
            self._fall_back()

    def _fall_back(self) -> None:
        """The relay broke: say so once, wake everyone, then listen on our own."""
        self.relayed = False
        log.warning("wakeup.relay_lost", fallback="a LISTEN connection of this process's own")
        self.bump()  # what the relay would have sent from now until we listen is unknown
        while not self._closed:
            try:
                own = Listener(self._connect, self._channel)
            except Exception:  # noqa: BLE001 - the server is away: waiters re-check every pause
                self.bump()
                time.sleep(RECONNECT_SECONDS)
                continue
            own.forward(self._from_own)
            self._own = own
            self.bump()  # notifications between the relay's end and our LISTEN: look again
            if self._closed:
                own.close()
            return

    def _from_own(self, topic: str | None) -> None:
        if topic is not None:
            self.bump(topic)

    def close(self) -> None:
        super().close()
        try:
            self._relay.shutdown(socket.SHUT_RDWR)  # the thread's recv returns
        except OSError:
            pass
        self._relay.close()
        if self._own is not None:
            self._own.close()

    def abandon(self) -> None:
        """After a fork, in the child: the thread is gone; our copy of the socket is
        closed (the parent's stays open), the parent's connection dropped."""
        self._closed = True
        try:
            self._relay.close()
        except OSError:
            pass
        if self._own is not None:
            self._own.abandon()


class RelaySource(Protocol):
    def relay_wakeups(self, forward: Callable[[str | None], None]) -> bool: ...


class RelaySink(Protocol):
    def use_relayed_wakeups(self, relay: socket.socket) -> bool: ...


def start_hub(store: object) -> RelayHub | None:
    """In castord's master: a hub fed by the store's LISTEN, if the store has one to share
    (PostgreSQL with LISTEN on; not SQLite, which wakes by inotify)."""
    relay = getattr(store, "relay_wakeups", None)
    if relay is None:
        return None
    hub = RelayHub()
    if not relay(hub):
        return None
    return hub


def use_relay(store: object, relay: socket.socket) -> bool:
    """In a castord child: wait on the master's relay instead of a LISTEN of our own.
    False (and the socket closed) where the store does not take it."""
    install = getattr(store, "use_relayed_wakeups", None)
    if install is not None and install(relay):
        return True
    relay.close()
    return False
