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

Work goes to one idle child, not to all. A `work:<mode>` notification means "a task of
that mode is due", and every idle child it woke claimed at once: on 2 cores the ones that
found nothing slowed the one that did (one delay().join() took ~0.7 ms longer with two
idle process children than with one). So each child says on its socket when its worker
begins and ends a wait for work (`idle <topic>`, `busy <topic>`), and the master sends a
work line to one child waiting for it (the latest to wait), taking it off the list. With
none waiting, the topic is owed: the next child to say `idle` is woken at once, so a
notification that came while every child was claiming is never dropped. A claim that took
all it asked for says `more <topic>` (more may wait): the master wakes the next idle child.

A task topic goes only to the children that track it: a child says `track task:<id>` when
its first joiner of that task starts to listen and `untrack task:<id>` when the last one
stops (every settle of a joined task woke every child, and each of their workers, on the
way to the one joiner that waited). A child says `track` before its watch commits, so
before any settle can notify it; the master reads what its children said before it
routes a task topic, so the line is never behind the notification. Everyone-lines still
go to every child. The master reads what the children say on a thread of its own; if that
thread is gone, work and task lines go to everyone again.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from castor.interrupts import shielded
from castor.logs import get_logger
from castor.store.base import work_topic
from castor.store.pg_wakeup import POLL_SECONDS, RECONNECT_SECONDS, TASK_PREFIX, TOLD, LedGenerations, Listener

# Bytes a child may leave unread before what it owes collapses into one wake-up.
OUTLET_LIMIT = 64 * 1024
_READ = 4096
# A child's end that is gone is an error to drop it for, never a SIGPIPE to the master.
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)
WORK_PREFIX = work_topic("")
# What a child says on its socket, a line each: "<verb> <work topic>".
IDLE, BUSY, MORE = "idle", "busy", "more"
# ... and "<verb> task:<id>": a child's joiners listen for that task's end, or no longer.
TRACK, UNTRACK = "track", "untrack"
# How long the master's reader blocks before it looks whether the hub closed.
READ_POLL_SECONDS = 1.0

log = get_logger("castor.store.relay")


class _Outlet:
    """The master's end of one child's socket: written without blocking."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.sock.setblocking(False)
        self.pending = b""  # what did not fit yet (its head may be the rest of a line)
        self.said = b""  # what the child said, up to its last whole line
        self.mute = False  # the child's end closed its writing side: nothing more to read

    def heard(self, data: bytes) -> list[str]:
        """The whole lines in what the child said so far."""
        *lines, self.said = (self.said + data).split(b"\n")
        return [line.decode(errors="replace") for line in lines]

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
    """In castord's master: the children's sockets, fed by the store's listener; work
    lines routed to one idle child (the module's docstring says how)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._outlets: dict[int, _Outlet] = {}
        self._next = 0
        self._idle: dict[str, list[int]] = {}  # work topic -> children waiting for it, latest last
        self._owed: set[str] = set()  # work topics notified while no child waited for them
        self._tracking: dict[str, set[int]] = {}  # task topic -> the children whose joiners listen for it
        self._closed = False
        # Rung when the set of sockets to read changes, so the reader's select sees it.
        self._bell, self._bell_rope = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._bell.setblocking(False)
        self._reader = threading.Thread(target=self._read_children, name="castor-relay-hub", daemon=True)
        self._reader.start()

    def attach(self) -> tuple[int, socket.socket]:
        """A new child's socket: its key, and the end to hand to the child (close it
        here once the child is started). Fed from now on."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            self._next += 1
            self._outlets[self._next] = _Outlet(ours)
            key = self._next
        self._ring()
        return key, theirs

    def detach(self, key: int) -> None:
        with self._lock:
            outlet = self._outlets.pop(key, None)
            self._unlist(key)
        if outlet is not None:
            self._ring()
            outlet.close()

    def __call__(self, topic: str | None) -> None:
        """The listener's forward: a topic, or None (nothing new: flush what is owed)."""
        with self._lock:
            outlets = list(self._outlets.items())
            if topic is None:
                line = b""
            else:
                line = topic.encode() + b"\n"
                if self._reader.is_alive():  # else everyone hears everything, as before routing
                    if topic.startswith(WORK_PREFIX):
                        self._wake_one(topic)
                        return
                    if topic.startswith(TASK_PREFIX):
                        self._read_said()  # a child's `track`, sent before its watch committed
                        keys = self._tracking.get(topic.partition(TOLD)[0], set())
                        outlets = [(key, outlet) for key, outlet in outlets if key in keys]
            gone = [key for key, outlet in outlets if not outlet.push(line)]
            for key in gone:
                self._drop(key)

    def tracking(self, topic: str) -> int:
        """How many children's joiners listen for a task topic now (for tests)."""
        with self._lock:
            return len(self._tracking.get(topic, ()))

    def waiting(self, topic: str) -> int:
        """How many children wait for `topic` now (for tests and status)."""
        with self._lock:
            return len(self._idle.get(topic, ()))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            outlets, self._outlets = list(self._outlets.values()), {}
            self._idle.clear()
        self._ring()
        for outlet in outlets:
            outlet.close()

    # -- under self._lock ------------------------------------------------------------

    def _wake_one(self, topic: str) -> None:
        waiting = self._idle.get(topic, [])
        while waiting:
            if self._send(waiting.pop(), topic):  # the latest to wait: the others sleep on
                return
        self._owed.add(topic)  # the next child to wait for it is woken at once

    def _send(self, key: int, topic: str) -> bool:
        """`topic`'s line to one child; False (and the child dropped) if it is gone."""
        outlet = self._outlets.get(key)
        if outlet is not None and outlet.push(topic.encode() + b"\n"):
            return True
        self._drop(key)
        return False

    def _on_said(self, key: int, line: str) -> None:
        verb, _, topic = line.partition(" ")
        if topic.startswith(TASK_PREFIX):
            if verb == TRACK:
                self._tracking.setdefault(topic, set()).add(key)
            elif verb == UNTRACK and (keys := self._tracking.get(topic)) is not None:
                keys.discard(key)
                if not keys:
                    del self._tracking[topic]
            return
        if not topic.startswith(WORK_PREFIX):
            return  # not ours to act on
        waiting = self._idle.setdefault(topic, [])
        if key in waiting:
            waiting.remove(key)
        if verb == IDLE:
            if topic in self._owed:
                self._owed.discard(topic)
                self._send(key, topic)
            else:
                waiting.append(key)
        elif verb == MORE:
            self._wake_one(topic)

    def _unlist(self, key: int) -> None:
        for waiting in self._idle.values():
            if key in waiting:
                waiting.remove(key)
        for topic in [t for t, keys in self._tracking.items() if key in keys]:
            self._tracking[topic].discard(key)
            if not self._tracking[topic]:
                del self._tracking[topic]

    def _read_said(self) -> None:
        """Take in what every child said and has not been read yet (without blocking)."""
        for key, outlet in list(self._outlets.items()):
            if not outlet.mute:
                self._read_from(key, outlet)

    def _read_from(self, key: int, outlet: _Outlet) -> None:
        """What one child said, up to what it has sent (the socket does not block)."""
        while True:
            try:
                data = outlet.sock.recv(_READ)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                outlet.mute = True  # its writes may still go through
                self._unlist(key)
                return
            for line in outlet.heard(data):
                self._on_said(key, line)

    def _drop(self, key: int) -> None:
        outlet = self._outlets.pop(key, None)
        self._unlist(key)
        if outlet is not None:
            outlet.close()

    # -- the reader thread -----------------------------------------------------------

    def _ring(self) -> None:
        try:
            self._bell_rope.send(b"x", _SEND_FLAGS | socket.MSG_DONTWAIT)
        except OSError:
            pass  # rung already (its buffer is full), or closed

    def _read_children(self) -> None:
        try:
            self._read_until_closed()
        except Exception:  # noqa: BLE001 - work lines then go to every child, as before routing
            log.exception("wakeup.relay_reader_failed", fallback="work wake-ups go to every child")

    def _read_until_closed(self) -> None:
        while not self._closed:
            with self._lock:
                socks = {outlet.sock: key for key, outlet in self._outlets.items() if not outlet.mute}
            try:
                ready, _, _ = select.select([self._bell, *socks], [], [], READ_POLL_SECONDS)
            except (OSError, ValueError):  # a socket closed under the select: look again
                continue
            for sock in ready:
                if sock is self._bell:
                    try:
                        self._bell.recv(_READ)
                    except OSError:
                        pass
                    continue
                with self._lock:  # read under the lock: the listener's thread reads too (_read_said)
                    key = socks[sock]
                    outlet = self._outlets.get(key)
                    if outlet is not None and not outlet.mute:
                        self._read_from(key, outlet)
        for sock in (self._bell, self._bell_rope):
            sock.close()


class RelayedListener(LedGenerations):
    """In a castord child: the Listener's interface, fed by the master's relay (read by a
    thread of its own, or by the waiting worker itself: LedGenerations); on its own
    LISTEN connection (`connect`, `channel`) once the relay breaks."""

    def __init__(self, relay: socket.socket, connect: Callable[[], Any], channel: str):
        super().__init__()
        self._relay = relay
        self._relay.setblocking(True)
        self._connect = connect
        self._channel = channel
        self._own: Listener | None = None
        self.relayed = True  # False once it fell back to a LISTEN of its own
        self._send_lock = threading.Lock()
        self._waiters: dict[str, int] = {}  # work topic -> our threads waiting for it
        self._listed: set[str] = set()  # work topics the master has us waiting for
        self._buffer = b""  # what the relay sent after its last whole line (the reader's)
        self._relay_lost = False
        self._thread = threading.Thread(target=self._run, name="castor-pg-relay", daemon=True)
        self._thread.start()

    def _can_lead(self) -> bool:
        return not self._closed and self.relayed and not self._relay_lost

    def _read(self, timeout: float) -> bool:
        if self._relay_lost:
            return False
        try:
            ready, _, _ = select.select([self._relay, self._wake_r], [], [], max(0.0, timeout))
            if self._wake_r in ready:
                self._woken()
            if self._relay not in ready:
                return True
            with shielded():  # what is read is bumped, all of it (LedGenerations._read)
                chunk = self._relay.recv(_READ)
                if chunk:
                    *lines, self._buffer = (self._buffer + chunk).split(b"\n")
                    for line in lines:
                        self.bump(line.decode(errors="replace"))
        except (OSError, ValueError):  # closed under the select
            chunk = b""
        if not chunk:
            self._relay_lost = True  # the thread falls back to a LISTEN of our own
            return False
        return True

    def _run(self) -> None:
        while not self._closed:
            self._stand_aside()
            with self._reading:
                if self._closed or not self._read(POLL_SECONDS):
                    break
        if not self._closed:
            self._fall_back()
        self._close_wake()

    def wait(self, seen: int, timeout: float, topic: str | None = None) -> int:
        """As Generations.wait; a wait for work is said to the master (`idle`, and
        `busy` if it ends by itself), which sends a work line to one waiting child."""
        if topic is None or not topic.startswith(WORK_PREFIX) or not self.relayed:
            return super().wait(seen, timeout, topic)
        with self._cond:
            if self.generation(topic) != seen or self._closed:
                return self.generation(topic)
            count = self._waiters.get(topic, 0)
            self._waiters[topic] = count + 1
            say_idle = topic not in self._listed
            self._listed.add(topic)
        if say_idle:
            self._say(IDLE, topic)
        try:
            return super().wait(seen, timeout, topic)
        finally:
            with self._cond:
                left = self._waiters[topic] - 1
                if left:
                    self._waiters[topic] = left
                else:
                    del self._waiters[topic]
                # Still listed: the master did not wake us (a timeout, an everyone-line).
                say_busy = not left and topic in self._listed
                if say_busy:
                    self._listed.discard(topic)
            if say_busy:
                self._say(BUSY, topic)

    def _tracking(self, topic: str, tracked: bool) -> None:
        """Our first joiner of a task listens (or our last stopped): the master sends us
        that task's topic from now on (or no longer). Said under the lock, so that the
        master hears track and untrack in the order they happened here."""
        if self.relayed:
            self._say(TRACK if tracked else UNTRACK, topic)

    def more(self, topic: str) -> None:
        """Our claim took all it asked for: more may wait, wake the next idle child."""
        if self.relayed:
            self._say(MORE, topic)

    def bump(self, topic: str = "") -> None:
        if topic.startswith(WORK_PREFIX):
            with self._cond:
                self._listed.discard(topic)  # the master took us off its list to wake us
        super().bump(topic)

    def _say(self, verb: str, topic: str) -> None:
        """One line to the master, never blocking: one that does not fit is dropped
        (the master then wakes us less, and the 0.5 s re-check still looks). A line this
        short goes whole or not at all: Linux sends a stream socket's write of one buffer
        (an skb) entirely or fails it with EAGAIN."""
        with self._send_lock:
            try:
                self._relay.send(f"{verb} {topic}\n".encode(), _SEND_FLAGS | socket.MSG_DONTWAIT)
            except OSError:
                pass  # full, or gone: the reading thread falls back to a LISTEN of our own

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
            self._relay.shutdown(socket.SHUT_RDWR)  # the reader's select returns
        except OSError:
            pass
        with self._reading:  # closed once no one reads it
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
        self._close_wake()
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
