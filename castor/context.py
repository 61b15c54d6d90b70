"""What a running task can ask about itself: castor.progress(), castor.cancelled().

The worker sets a TaskContext around each task's function. Outside a task
(a plain call of the function, a test) these are harmless no-ops.
"""

from __future__ import annotations

import threading
import time
from contextvars import ContextVar, copy_context
from typing import TYPE_CHECKING, Any

from castor import interrupts
from castor.errors import ConfigurationError

if TYPE_CHECKING:
    from castor.store.base import Store, TaskRecord

# At most one progress write per task this often; the last one held back is
# written by the worker's housekeeping thread (see flush()).
PROGRESS_INTERVAL = 0.2


class TaskContext:
    """One running attempt: its record, the thread running it, its cancel flag."""

    def __init__(self, record: TaskRecord, store: Store, owner: str):
        self.record = record
        self.store = store
        self.owner = owner
        self.thread_id = threading.get_ident()
        # Made in the task's own thread: interruptions go through its guard, which
        # holds them back while the task is inside castor's code (castor/interrupts.py).
        self.guard = interrupts.guard()
        # Set (once, by the housekeeping thread) when someone cancels the task.
        self.cancel_requested = False
        self._lock = threading.Lock()
        self._armed = True  # False once the task's function has returned
        self._last_write = 0.0
        self._held: tuple[float | None, str | None] | None = None

    # -- progress ----------------------------------------------------------------

    def report(self, fraction: float | None, message: str | None) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_write < PROGRESS_INTERVAL and fraction != 1.0:
                self._held = (fraction, message)
                return
            self._held = None
            self._last_write = now
        self._write(fraction, message)

    def flush(self) -> None:
        """Write the progress report the throttle held back, if any."""
        if self._held is None:
            return
        with self._lock:
            held, self._held = self._held, None
            if held is not None:
                self._last_write = time.monotonic()
        if held is not None:
            self._write(*held)

    def _write(self, fraction: float | None, message: str | None) -> None:
        r = self.record
        self.store.set_progress(r.id, r.fence, fraction, message)

    # -- interrupting --------------------------------------------------------------

    @property
    def active(self) -> bool:
        """True until the task's function has returned."""
        return self._armed

    def interrupt(self, exc_class: type[BaseException]) -> bool:
        """Raise `exc_class` in the task's thread (at its next bytecode, or as it
        leaves castor's code), unless the function has already returned. Python
        cannot interrupt a long C call."""
        with self._lock:
            if not self._armed:
                return False
            self.guard.interrupt(exc_class)
            return True

    def disarm(self) -> None:
        """The function returned: drop any interruption not yet delivered."""
        with self._lock:
            self._armed = False
            self.guard.clear()


_current: ContextVar[TaskContext | None] = ContextVar("castor_task", default=None)


def current() -> TaskContext | None:
    return _current.get()


def progress(fraction: float | None = None, message: str | None = None) -> bool:
    """Report how far the running task is: `castor.progress(0.4, "resizing")`.

    fraction is between 0 and 1 (or None to send only a message). Shown by
    `task.progress` and `castord status`. Returns False outside a task.
    """
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigurationError(f"castor.progress: fraction must be between 0 and 1, not {fraction!r}")
        fraction = float(fraction)
    if message is not None and not isinstance(message, str):
        raise ConfigurationError(f"castor.progress: message must be a string, not {message!r}")
    ctx = _current.get()
    if ctx is None:
        return False
    ctx.report(fraction, message)
    return True


def cancelled() -> bool:
    """True once someone asked to cancel the running task: check it in long loops
    and return early. (Thread tasks also get TaskCancelled raised in them.)"""
    ctx = _current.get()
    return ctx is not None and ctx.cancel_requested


def baked(cls: type[BaseException], message: str) -> type[BaseException]:
    """An exception class that carries `message`: an asynchronous exception can only
    be a class, raised without arguments. It records itself under `cls`'s name."""

    def __init__(self: BaseException) -> None:
        cls.__init__(self, message)

    sub = type(cls.__name__, (cls,), {"__init__": __init__})
    sub.__module__, sub.__qualname__ = cls.__module__, cls.__qualname__
    return sub


def context_values() -> dict[Any, Any]:
    """This thread's context variables, to carry into an event loop's task."""
    return dict(copy_context().items())
