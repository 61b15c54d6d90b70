"""A thread pool's free threads, counted, for the worker's claimer (castor/worker.py).

A semaphore, plus one thing a semaphore cannot do: wake the claimer's wait without a
thread being freed. A pool thread nudges when it takes the first of a batch of held
tasks, so that the claimer claims the next batch (and writes the outcomes finished so
far) while the threads run this one, instead of after the last of them.
"""

from __future__ import annotations

import threading
import time


class PoolSlots:
    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._nudged = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def free(self) -> int:
        return self._free

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take a free thread, as Semaphore.acquire: False if none came within `timeout`
        (at once if not blocking), and at once while a nudge is pending (`nudged()` takes
        it). A free thread is taken whether or not a nudge is pending."""
        with self._cond:
            if blocking and not self._free:
                deadline = None if timeout is None else time.monotonic() + timeout
                while not self._free and not self._nudged:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        break
                    self._cond.wait(left)
            if self._free:
                self._free -= 1
                return True
            return False

    def release(self) -> None:
        with self._cond:
            if self._free >= self.size:
                raise ValueError("PoolSlots released more often than acquired")
            self._free += 1
            self._cond.notify()

    def nudge(self) -> None:
        """Wake the claimer's acquire (or its next one) without freeing a thread."""
        with self._cond:
            self._nudged = True
            self._cond.notify()

    def nudged(self) -> bool:
        """Whether a nudge came since the last call (and take it)."""
        with self._cond:
            nudged, self._nudged = self._nudged, False
            return nudged
