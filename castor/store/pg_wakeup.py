"""Waking waiters on PostgreSQL: LISTEN on one connection per store (or per castord:
castor/store/pg_relay.py), topics in the payload.

Each notification names whom it is for (castor/store/base.py's topics):

* `work:<mode>`: a task of that mode became due: wakes that mode's idle workers only;
* `task:<id>`: a task someone joins ended (sent only for tasks in castor_watches: `watch_task`);
  after a success with a small result, the result follows (`told_result`);
* `''`: anything else that changed (a recovery, a cancel, a retry): wakes everyone.

A daemon thread holds the listening connection and stamps each notification with a
sequence number; a waiter's generation for its topic is the last stamp of that topic or
of an everyone-notification, so it moves only for what the waiter waits for. Waiters
block on a condition of their topic's (one lock for all) until their generation moves,
and only a notification that moves it wakes them: a worker waiting for work sleeps
through the settles of other tasks, a joiner through the work notifications (on 2
cores each needless wake-up is CPU taken from the one that matters).

A listener that loses its connection wakes everyone (a waiter then re-checks the
database, which is what a notification asks anyway) and connects again after a pause:
notifications sent meanwhile are lost, and the waiters' re-checks cover them.

Producers coalesce their work notifications (`WakeGate`): PostgreSQL serializes the
commits of notifying transactions (one lock on its notification queue, held through the
commit's WAL flush), so producer threads that each notified would lose group commit.
"""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from castor.interrupts import shielded
from castor.store.base import ToldResult

RECONNECT_SECONDS = 0.5
# How long the thread blocks on the socket before looking whether it should stop.
POLL_SECONDS = 1.0
TASK_PREFIX = "task:"
# Between a task topic and what it tells: serializer, "t" (text) or "b", base64 result.
TOLD = "\x1f"


def _told(extra: str) -> ToldResult | None:
    parts = extra.split(TOLD)
    if len(parts) != 3 or parts[1] not in ("t", "b"):
        return None
    try:
        raw = base64.b64decode(parts[2], validate=True)
        return ToldResult(parts[0], raw.decode("utf-8") if parts[1] == "t" else raw)
    except (ValueError, UnicodeDecodeError):
        return None  # not ours to trust: the joiner reads the row


class Generations:
    """The topics' generations waiters wait on, moved by `bump` (from whatever hears
    the notifications: a LISTEN connection here, castord's relay in castor/store/pg_relay.py)."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()  # every condition's below
        self._cond = threading.Condition(self._mutex)  # waiters for any notification (topic None)
        # topic -> the condition its waiters block on (on the same lock), and how many wait
        self._waiting: dict[str, tuple[threading.Condition, int]] = {}
        self._seq = 0  # stamps every notification: generation(None) moves for each
        self._everyone = 0  # the stamp of the last notification for everyone
        self._topics: dict[str, int] = {}  # topic -> the stamp of its last notification
        self._tracked: dict[str, int] = {}  # task topics someone waits on -> how many wait
        self._told: dict[str, ToldResult] = {}  # tracked task topic -> the result its settle told
        self._closed = False
        self._watchers: set[AsyncWatch] = set()

    def generation(self, topic: str | None = None) -> int:
        """Moves for every notification (topic None), or for those of `topic` and for everyone."""
        if topic is None:
            return self._seq
        return max(self._everyone, self._topics.get(topic, 0))

    def track(self, topic: str) -> None:
        """Count notifications of a task topic from now on (they are dropped otherwise)."""
        with self._cond:
            count = self._tracked.get(topic, 0) + 1
            self._tracked[topic] = count
            if count == 1:
                self._tracking(topic, True)

    def untrack(self, topic: str) -> None:
        with self._cond:
            left = self._tracked.get(topic, 0) - 1
            if left > 0:
                self._tracked[topic] = left
            elif self._tracked.pop(topic, None) is not None:
                self._topics.pop(topic, None)
                self._told.pop(topic, None)
                self._tracking(topic, False)

    def _tracking(self, topic: str, tracked: bool) -> None:
        """Under the lock, when the first waiter tracks a task topic or the last stops:
        castord's children tell the master (pg_relay.py), which then sends them the
        topic's notifications; a Listener of its own hears every topic anyway."""

    def told_result(self, topic: str) -> ToldResult | None:
        """The result a tracked task's settle told, if it told one."""
        return self._told.get(topic)

    def more(self, topic: str) -> None:
        """A claim took all it asked for: more of `topic`'s work may wait. Only castord's
        relay acts on it (pg_relay.py: it wakes the next idle child); here every idle
        worker heard the notification already."""

    def bump(self, topic: str = "") -> None:
        """A notification of `topic` ('': for everyone) arrived."""
        topic, _, extra = topic.partition(TOLD)
        with self._cond:
            self._seq += 1
            moved: str | None = None  # the one topic whose generation moved ('': all of them)
            if not topic:
                self._everyone = self._seq
                moved = ""
                for cond, _ in self._waiting.values():
                    cond.notify_all()
            elif not topic.startswith(TASK_PREFIX) or topic in self._tracked:
                self._topics[topic] = self._seq
                moved = topic
                if extra and topic in self._tracked and (told := _told(extra)) is not None:
                    self._told[topic] = told
                if (waiting := self._waiting.get(topic)) is not None:
                    waiting[0].notify_all()
            self._cond.notify_all()  # generation(None) moves for every notification
            watchers = [w for w in self._watchers if w.topic is None or moved in ("", w.topic)]
        for watcher in watchers:
            watcher.wake()

    def wait(self, seen: int, timeout: float, topic: str | None = None) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            if topic is None:
                cond = self._cond
            else:
                cond, count = self._waiting.get(topic) or (threading.Condition(self._mutex), 0)
                self._waiting[topic] = (cond, count + 1)
            try:
                while self.generation(topic) == seen and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    cond.wait(remaining)
                return self.generation(topic)
            finally:
                if topic is not None:
                    count = self._waiting[topic][1] - 1
                    if count:
                        self._waiting[topic] = (cond, count)
                    else:
                        del self._waiting[topic]

    def watch(self, topic: str | None = None) -> AsyncWatch:
        watcher = AsyncWatch(self, topic)
        with self._cond:
            self._watchers.add(watcher)
        return watcher

    def forget(self, watcher: AsyncWatch) -> None:
        with self._cond:
            self._watchers.discard(watcher)

    def close(self) -> None:
        """Waiters return at once."""
        self._closed = True
        with self._cond:
            self._cond.notify_all()
            for cond, _ in self._waiting.values():
                cond.notify_all()


class LedGenerations(Generations):
    """Generations moved by whoever reads their source: a thread of their own, or, while
    it waits, the first waiting thread (the leader; others follow on their topics'
    conditions). A notification then reaches the thread that waits for it without a
    hand-over between threads (each one cost a wake-up, ~0.1-0.3 ms on a busy 2-core
    machine).

    Whoever holds `_reading` reads (`_read`). The thread calls `_stand_aside` before it
    takes the lock, and reads in slices its select leaves early when a waiter asks to
    lead (a byte on `_wake`). A leader whose source fails says so and follows instead.
    """

    def __init__(self) -> None:
        super().__init__()
        self._reading = threading.Lock()  # held by whoever reads the source
        self._leader: int | None = None  # the waiting thread that reads now (under the mutex)
        self._led = threading.Condition(self._mutex)  # the thread waits here while a waiter leads
        # A byte: leave the select, a waiter wants to read (sockets, not a pipe's fds: one
        # written to after the thread closed it fails, never reaches a reused fd).
        self._wake_r, self._wake_w = socket.socketpair()
        for end in (self._wake_r, self._wake_w):
            end.setblocking(False)

    # -- for subclasses -------------------------------------------------------------------

    def _read(self, timeout: float) -> bool:
        """Under `_reading`: wait up to `timeout` for the source (or `_wake_r`: call
        `_woken` when select says so), bump what came; False if the source is lost.
        Only the select may be interrupted: what is taken from the source is bumped
        shielded, all of it (an exception raised into a leading thread task between the
        two would lose the rest)."""
        raise NotImplementedError

    def _can_lead(self) -> bool:
        """Under the mutex: whether a waiter may read the source now."""
        return not self._closed

    def _woken(self) -> None:
        try:
            self._wake_r.recv(64)
        except OSError:
            pass

    def _stand_aside(self) -> None:
        """The thread's, before it takes `_reading`: wait while a waiter leads."""
        with self._cond:
            while self._leader is not None and not self._closed:
                self._led.wait(POLL_SECONDS)

    # -- waiting --------------------------------------------------------------------------

    def wait(self, seen: int, timeout: float, topic: str | None = None) -> int:
        """As Generations.wait; the first waiter reads the source itself meanwhile.

        Taking the lead and giving it back are shielded (castor/interrupts.py): an
        exception raised into this thread (a thread task's timeout or cancel) lands in the
        select or the follower's wait, never between the two, where it would leave the
        lead taken and nobody reading."""
        deadline = time.monotonic() + max(0.0, timeout)
        led = lost = False
        try:
            with shielded():
                led = self._lead()
            if not led:
                return super().wait(seen, timeout, topic)
            while self.generation(topic) == seen and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if not self._read(remaining):
                    lost = True  # the thread deals with it; meanwhile follow
                    break
        finally:
            if led:
                with shielded():
                    self._step_down()
        remaining = deadline - time.monotonic()
        if lost and remaining > 0:
            return super().wait(seen, remaining, topic)
        return self.generation(topic)

    def _lead(self) -> bool:
        with self._cond:
            if self._leader is not None or not self._can_lead():
                return False
            self._leader = threading.get_ident()
        try:
            self._wake_w.send(b"x")  # the thread leaves its select, and the lock
        except OSError:
            pass  # full: bytes it has not read yet wake it as well
        self._reading.acquire()
        return True

    def _step_down(self) -> None:
        self._reading.release()
        with self._cond:
            self._leader = None
            self._led.notify()

    def _wake_reader(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass  # full (it wakes anyway), or closed already

    def close(self) -> None:
        super().close()
        with self._cond:
            self._led.notify_all()
        self._wake_reader()  # a reader in its select returns

    def _close_wake(self) -> None:
        """The thread's, on its way out (after a fork: the child's copies)."""
        self._wake_r.close()
        self._wake_w.close()


class Listener(LedGenerations):
    """A LISTEN connection, a thread reading it (or a waiter: LedGenerations), and the
    topics' generations it moves.

    `forward(to)` hands every notification's topic to `to` as well, from the reading
    thread, before any filtering ('' after a lost connection too), and None every
    POLL_SECONDS: castord's master relays them so (castor/store/pg_relay.py).
    """

    def __init__(self, connect: Callable[[], Any], channel: str):
        super().__init__()
        self._connect = connect
        self._channel = channel
        self._forwards: list[Callable[[str | None], None]] = []
        self._conn: Any = None
        self._broken = False  # a reader found the connection lost: the thread reconnects
        import psycopg

        # What a lost connection raises while it is read (anything else, a thread task's
        # timeout raised into a leader among them, is not ours to catch).
        self._lost = (psycopg.Error, OSError, ValueError)
        # LISTEN before the first generation is handed out: a commit after it wakes.
        try:
            self._conn = self._listen()
        except BaseException:
            self._close_wake()
            raise
        self._thread = threading.Thread(target=self._run, name="castor-pg-listen", daemon=True)
        self._thread.start()

    def _listen(self) -> Any:
        from psycopg import sql

        conn = self._connect()
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        for notice in conn.notifies(timeout=0):  # any that came with the LISTEN's answer
            self.bump(notice.payload)
        return conn

    def forward(self, to: Callable[[str | None], None]) -> None:
        with self._cond:
            self._forwards = [*self._forwards, to]

    def bump(self, topic: str = "") -> None:
        for to in self._forwards:
            to(topic)
        super().bump(topic)

    def _can_lead(self) -> bool:
        return not self._closed and not self._broken and self._conn is not None

    def _read(self, timeout: float) -> bool:
        conn = self._conn
        if conn is None or self._broken:
            return False
        try:
            pgconn = conn.pgconn
            ready, _, _ = select.select([pgconn.socket, self._wake_r], [], [], max(0.0, timeout))
            if self._wake_r in ready:
                self._woken()
            if pgconn.socket in ready:
                with shielded():
                    pgconn.consume_input()  # raises OperationalError on a lost connection
                    encoding = conn.info.encoding
                    while (notice := pgconn.notifies()) is not None:
                        self.bump(notice.extra.decode(encoding, errors="replace"))
        except self._lost:  # the thread reconnects; everyone looks again
            self._broken = True
            self.bump()
            return False
        return True

    def _run(self) -> None:
        polled = time.monotonic()
        while not self._closed:
            self._stand_aside()
            try:
                with self._reading:
                    if self._closed:
                        break
                    if self._conn is None or self._broken:
                        self._drop()
                        self._conn = self._listen()
                        self._broken = False
                        self.bump()  # what was sent while we were away is unknown: look again
                    read = self._read(max(0.0, polled + POLL_SECONDS - time.monotonic()))
                if not read:
                    raise OSError("the LISTEN connection was lost")
                if time.monotonic() >= polled + POLL_SECONDS:
                    polled = time.monotonic()
                    for to in self._forwards:
                        to(None)
            except Exception:  # noqa: BLE001 - a lost connection (or a failed reconnect): try again
                if self._closed:
                    break
                with self._reading:
                    self._broken = True  # no waiter leads until the thread listens again
                    self._drop()
                self.bump()
                time.sleep(RECONNECT_SECONDS)
        with self._reading:
            self._drop()  # the thread owns the connection: it closes it on its way out
        self._close_wake()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing more to do with it
                pass

    def close(self) -> None:
        """Stop listening: the thread ends (and closes its connection) within POLL_SECONDS;
        waiters return at once."""
        super().close()

    def abandon(self) -> None:
        """After a fork, in the child: the thread is gone; the parent's connection is
        dropped, never closed (closing would end the parent's session)."""
        self._closed = True
        self._conn = None
        self._forwards = []
        self._close_wake()  # our copies: the parent's stay open


class AsyncWatch:
    """One asyncio waiter: woken (thread-safely) by the listener's next notification of
    its topic after it was opened."""

    def __init__(self, listener: Generations, topic: str | None = None):
        self._listener = listener
        self.topic = topic
        self._seen = listener.generation(topic)
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def wake(self) -> None:
        with self._lock:
            waiter = self._waiter
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future)

    async def wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            self._waiter = (loop, future)
        try:
            if self._listener.generation(self.topic) == self._seen:
                try:
                    await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                self._waiter = None
            self._seen = self._listener.generation(self.topic)

    def close(self) -> None:
        self._listener.forget(self)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class WakeGate:
    """Coalesces one producer's work notifications, one gate per topic.

    A producer whose notifying write is in flight lets the writes beside it go without
    a notification; then one trailing notification follows, sent by a thread of the
    gate's own once the last of them committed, so every row is followed by a
    notification the workers see after it. A producer writing one task at a time
    notifies with each (no wait added to its tasks); eight at once send about one
    notification per round trip instead of eight, and keep PostgreSQL's group commit.
    """

    def __init__(self, send: Callable[[str], None]):
        self._send = send  # send(topic): one notification, committed on its own
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._owed: set[str] = set()  # topics written without a notification since the last sent
        self._kick = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    def begin(self, topic: str) -> bool:
        """Before a write: True if it should notify itself (then call `end`)."""
        with self._lock:
            if topic in self._in_flight:
                return False
            self._in_flight.add(topic)
            return True

    def end(self, topic: str) -> None:
        """After a notifying write returned (committed or not)."""
        with self._lock:
            self._in_flight.discard(topic)
            if topic in self._owed:
                self._start_sender()

    def skipped(self, topic: str) -> None:
        """After a write that did not notify committed: a notification is owed."""
        with self._lock:
            self._owed.add(topic)
            if topic not in self._in_flight:
                self._start_sender()

    def _start_sender(self) -> None:
        self._kick.set()
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._run, name="castor-pg-wake", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed:
            self._kick.wait()
            self._kick.clear()
            with self._lock:
                owed, self._owed = self._owed, set()
            for topic in sorted(owed):
                try:
                    self._send(topic)
                except Exception:  # noqa: BLE001 - the workers' re-check (0.5 s) finds the rows
                    pass

    def close(self) -> None:
        self._closed = True
        self._kick.set()

    def abandon(self) -> None:
        """After a fork, in the child: the parent's thread is not here."""
        self._closed = True
