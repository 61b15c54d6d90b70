"""Asynchronous exceptions wait at castor's door.

A thread task is stopped by an exception raised into its thread (TaskTimeout,
TaskCancelled, a lost lease), and a program's main thread by Ctrl+C
(KeyboardInterrupt). Python delivers either at almost any bytecode. Landing
inside castor's store code (between BEGIN and COMMIT on the connection the
process's threads share) it left that connection inside a transaction: other
threads' `.delay()` calls then returned ids that were never committed.

So castor's store and serialization code runs shielded (`with shielded():`):
an interruption aimed at a shielded thread is held back and raised as the
thread leaves castor's code, or at a safe point inside it (between a store's
retries, where no transaction is open). The interrupter and the thread meet
under the thread's Guard lock, so an interruption is either delivered before
the thread goes in, or held for when it comes out, never in between.

The main thread's Ctrl+C: when the SIGINT handler is still Python's default,
castor puts in one that behaves the same but for holding KeyboardInterrupt back
while the main thread is shielded. A handler of the program's own is left alone.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Any

_local = threading.local()


class Guard:
    """One thread's shield, and the only way to interrupt that thread."""

    __slots__ = ("thread_id", "depth", "deferred", "armed", "_lock")

    def __init__(self, thread_id: int):
        self.thread_id = thread_id
        self.depth = 0  # nesting of shielded() in this thread
        self.deferred: type[BaseException] | None = None  # held back, raised on leaving
        self.armed: type[BaseException] | None = None  # raised into the thread, maybe not yet delivered
        self._lock = threading.Lock()

    def interrupt(self, exc: type[BaseException]) -> None:
        """Raise `exc` in the thread now, or as it leaves castor's code."""
        with self._lock:
            if self.depth:
                self.deferred = exc
            else:
                self.armed = exc
                raise_in_thread(self.thread_id, exc)

    def enter(self) -> None:
        with self._lock:
            if self.armed is not None:
                # An exception raised into us may not have landed yet: take it
                # back, and raise it on the way out instead. (If it had landed
                # already, the task is told once more: it was meant to stop.)
                raise_in_thread(self.thread_id, None)
                self.deferred, self.armed = self.armed, None
            self.depth += 1

    def leave(self) -> None:
        with self._lock:
            self.depth -= 1
            if self.depth or self.deferred is None:
                return
            exc, self.deferred = self.deferred, None
        raise exc()

    def take_deferred(self) -> type[BaseException] | None:
        with self._lock:
            exc, self.deferred = self.deferred, None
            return exc

    def clear(self) -> None:
        """The task's function returned: forget any interruption meant for it."""
        with self._lock:
            if self.armed is not None:
                raise_in_thread(self.thread_id, None)
            self.armed = self.deferred = None

    def _after_fork(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at the fork


def guard() -> Guard:
    """This thread's guard (made on first use)."""
    g: Guard | None = getattr(_local, "guard", None)
    if g is None:
        g = _local.guard = Guard(threading.get_ident())
        if threading.current_thread() is threading.main_thread():
            _install_sigint_handler()
    return g


class _Shield:
    """`with shielded():` — cheap enough for every store call."""

    __slots__ = ()

    def __enter__(self) -> None:
        g = getattr(_local, "guard", None)
        (g or guard()).enter()

    def __exit__(self, *exc_info: Any) -> None:
        _local.guard.leave()


_SHIELD = _Shield()


def shielded() -> _Shield:
    return _SHIELD


def raise_deferred() -> None:
    """At a safe point inside castor's code (no transaction open): raise what was held back."""
    g: Guard | None = getattr(_local, "guard", None)
    if g is not None and g.deferred is not None:
        exc = g.take_deferred()
        if exc is not None:
            raise exc()


def raise_in_thread(thread_id: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc) if exc is not None else None)


# -- the main thread's Ctrl+C ------------------------------------------------------

def _on_sigint(signum: int, frame: Any) -> None:
    # No lock here: this runs in the main thread, perhaps while it holds its own
    # guard's lock. A plain attribute write is atomic enough.
    g: Guard | None = getattr(_local, "guard", None)
    if g is not None and g.depth:
        g.deferred = KeyboardInterrupt
        return
    raise KeyboardInterrupt


def _install_sigint_handler() -> None:
    try:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    except (ValueError, OSError):  # not the main interpreter's main thread
        pass


def _after_fork_in_child() -> None:
    g: Guard | None = getattr(_local, "guard", None)
    if g is not None:
        g._after_fork()  # noqa: SLF001


os.register_at_fork(after_in_child=_after_fork_in_child)
