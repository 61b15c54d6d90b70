"""Waking waiters on PostgreSQL: LISTEN on one connection per store.

Writes that make a task due or end one NOTIFY the store's channel in their own
transaction (a constant payload: PostgreSQL folds identical notifications of a
transaction into one, and delivers them only once it commits). A daemon thread
holds the listening connection and moves a generation counter on each
notification; waiters block on a condition until the counter moves.

A listener that loses its connection moves the counter too (a waiter then
re-checks the database, which is what a notification asks anyway) and connects
again after a pause: notifications sent meanwhile are lost, and the waiters'
re-checks cover them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

RECONNECT_SECONDS = 0.5
# How long the thread blocks on the socket before looking whether it should stop.
POLL_SECONDS = 1.0


class Listener:
    """A LISTEN connection, a thread reading it, and a counter it moves."""

    def __init__(self, connect: Callable[[], Any], channel: str):
        self._connect = connect
        self._channel = channel
        self._cond = threading.Condition()
        self._generation = 0
        self._closed = False
        self._conn: Any = None
        self._watchers: set[AsyncWatch] = set()
        # LISTEN before the first generation is handed out: a commit after it wakes.
        self._conn = self._listen()
        self._thread = threading.Thread(target=self._run, name="castor-pg-listen", daemon=True)
        self._thread.start()

    def _listen(self) -> Any:
        from psycopg import sql

        conn = self._connect()
        conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        return conn

    @property
    def generation(self) -> int:
        return self._generation

    def _bump(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
            watchers = list(self._watchers)
        for watcher in watchers:
            watcher.wake()

    def _run(self) -> None:
        while not self._closed:
            conn = self._conn
            try:
                if conn is None:
                    conn = self._conn = self._listen()
                    self._bump()  # what was sent while we were away is unknown: look again
                for _ in conn.notifies(timeout=POLL_SECONDS, stop_after=1):
                    self._bump()
            except Exception:  # noqa: BLE001 - a lost connection (or a failed reconnect): try again
                if self._closed:
                    break
                self._drop()
                self._bump()
                time.sleep(RECONNECT_SECONDS)
        self._drop()  # the thread owns the connection: it closes it on its way out

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection: nothing more to do with it
                pass

    def wait(self, seen: int, timeout: float) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._generation == seen and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._generation

    def watch(self) -> AsyncWatch:
        watcher = AsyncWatch(self)
        with self._cond:
            self._watchers.add(watcher)
        return watcher

    def forget(self, watcher: AsyncWatch) -> None:
        with self._cond:
            self._watchers.discard(watcher)

    def close(self) -> None:
        """Stop listening: the thread ends (and closes its connection) within POLL_SECONDS;
        waiters return at once."""
        self._closed = True
        with self._cond:
            self._cond.notify_all()

    def abandon(self) -> None:
        """After a fork, in the child: the thread is gone; the parent's connection is
        dropped, never closed (closing would end the parent's session)."""
        self._closed = True
        self._conn = None


class AsyncWatch:
    """One asyncio waiter: woken (thread-safely) by the listener's next notification
    after it was opened."""

    def __init__(self, listener: Listener):
        self._listener = listener
        self._seen = listener.generation
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
            if self._listener.generation == self._seen:
                try:
                    await asyncio.wait_for(future, timeout)
                except TimeoutError:
                    pass
        finally:
            with self._lock:
                self._waiter = None
            self._seen = self._listener.generation

    def close(self) -> None:
        self._listener.forget(self)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
