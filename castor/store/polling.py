"""Waiting without notifications: a waiter nobody wakes early.

For a PostgreSQL store told not to LISTEN (`castor_listen=off`: only a pooler in
transaction mode is reachable). The generation never moves, so every wait runs
its whole timeout and the caller then re-checks the database, as it does after
any wake-up: waiting still works, at the callers' re-check pace (0.5 s at most)
instead of within milliseconds of a commit.
"""

from __future__ import annotations

import asyncio
import threading


class Polling:
    """The Listener's interface (castor/store/pg_wakeup.py), without a connection."""

    def __init__(self) -> None:
        self._closed = threading.Event()

    def generation(self, topic: str | None = None) -> int:
        return 0

    def track(self, topic: str) -> None:
        pass

    def untrack(self, topic: str) -> None:
        pass

    def told_result(self, topic: str) -> None:
        return None  # nothing is told: the waiter reads the task

    def more(self, topic: str) -> None:
        pass  # nobody is woken: every waiter polls

    def wait(self, seen: int, timeout: float, topic: str | None = None) -> int:
        self._closed.wait(max(0.0, timeout))
        return 0

    def watch(self, topic: str | None = None) -> PollingWatch:
        return PollingWatch()

    def forget(self, watcher: PollingWatch) -> None:
        pass

    def close(self) -> None:
        self._closed.set()

    def abandon(self) -> None:
        self._closed.set()


class PollingWatch:
    """An asyncio waiter that sleeps its timeout out."""

    async def wait(self, timeout: float) -> None:
        await asyncio.sleep(max(0.0, timeout))

    def close(self) -> None:
        pass
