"""Waking waiters when the SQLite file changes, without polling it.

Every commit, by any process, appends to the `-wal` file, and inotify reports
that write. The write lands a few microseconds *before* the commit becomes
visible to readers (SQLite publishes it in the `-shm` index afterwards), so on
an event we watch `PRAGMA data_version` for up to `SETTLE_SECONDS` before
telling waiters: otherwise they could re-read too early and sleep through the
commit that woke them.

One thread at a time reads the inotify descriptor (the "leader"); the others
wait on a condition and are woken when the shared generation counter moves.
Where inotify is missing (not Linux) or refuses us, waiting falls back to a
short sleep: slower, still correct, since waiters always re-check the database.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time

try:  # Linux only; see pyproject.toml
    from inotify_simple import INotify, flags
except ImportError:  # pragma: no cover - non-Linux
    INotify = None  # type: ignore[assignment,misc]

SETTLE_SECONDS = 0.002
FALLBACK_POLL_SECONDS = 0.02


class VersionProbe:
    """A private connection whose `data_version` moves on every other connection's commit."""

    def __init__(self, path: str):
        self._conn = sqlite3.connect(path, timeout=5, isolation_level=None, check_same_thread=False)
        self._lock = threading.Lock()

    def read(self) -> int:
        with self._lock:
            return self._conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ChangeNotifier:
    """Per-process, per-file: lets any number of threads wait for the next commit."""

    def __init__(self, wal_path: str, probe: VersionProbe):
        self._wal_path = wal_path
        self._probe = probe
        self._cond = threading.Condition()
        self._generation = 0
        self._leader = False
        self._inotify: INotify | None = None
        self._inotify_failed = INotify is None
        self._version = probe.read()

    @property
    def generation(self) -> int:
        return self._generation

    def wait(self, seen: int, timeout: float) -> int:
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            while self._generation == seen:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self._leader:
                    self._cond.wait(remaining)
                    continue
                self._leader = True
                self._cond.release()
                try:
                    changed = self._watch(remaining)
                finally:
                    self._cond.acquire()
                    self._leader = False
                if changed:
                    self._generation += 1
                self._cond.notify_all()
            return self._generation

    def _watch(self, timeout: float) -> bool:
        """Block on the file for up to `timeout`; True once a new commit is visible."""
        fresh = self._inotify is None and not self._inotify_failed
        ino = self._ensure_inotify()
        if ino is None:
            time.sleep(min(timeout, FALLBACK_POLL_SECONDS))
            return self._version_moved()
        if fresh and self._version_moved():
            # A commit between our first version read and the new watch raised no
            # event we can see: without this check we would sleep through it.
            return True
        if not ino.read(timeout=max(1, int(timeout * 1000))):
            return self._version_moved()
        return self._settle(ino)

    def _settle(self, ino: INotify) -> bool:
        # Wait (briefly) for the commit behind the write to become visible, then
        # drop the events that same commit produced.
        deadline = time.monotonic() + SETTLE_SECONDS
        while not self._version_moved():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.00005)
        ino.read(timeout=0)
        return True

    def _version_moved(self) -> bool:
        version = self._probe.read()
        if version == self._version:
            return False
        self._version = version
        return True

    def _ensure_inotify(self) -> INotify | None:
        if self._inotify is not None or self._inotify_failed:
            return self._inotify
        try:
            ino = INotify()
            ino.add_watch(self._wal_path, flags.MODIFY)
        except OSError:
            # No WAL file (yet), too many inotify instances, or no inotify:
            # fall back to short sleeps rather than fail.
            self._inotify_failed = True
            return None
        self._inotify = ino
        return ino

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


class AsyncWatch:
    """One asyncio waiter's own inotify descriptor, watched by the event loop.

    Open it *before* checking the condition you wait for, so a commit that lands
    in between still wakes you.
    """

    def __init__(self, wal_path: str, probe: VersionProbe):
        self._probe = probe
        self._version = probe.read()
        self._inotify: INotify | None = None
        if INotify is not None:
            try:
                self._inotify = INotify()
                self._inotify.add_watch(wal_path, flags.MODIFY)
            except OSError:
                self.close()

    async def wait(self, timeout: float) -> None:
        if self._inotify is None:
            await asyncio.sleep(min(timeout, FALLBACK_POLL_SECONDS))
            return
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        fd = self._inotify.fileno()
        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(fd, wake)
        try:
            await asyncio.wait_for(ready, timeout)
        except TimeoutError:
            return
        finally:
            loop.remove_reader(fd)
        deadline = time.monotonic() + SETTLE_SECONDS
        while self._probe.read() == self._version and time.monotonic() < deadline:
            await asyncio.sleep(0.0001)
        self._version = self._probe.read()
        self._inotify.read(timeout=0)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


def wal_path(db_path: str) -> str:
    return os.fspath(db_path) + "-wal"
