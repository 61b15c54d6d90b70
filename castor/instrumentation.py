"""The seam that integrations (castor.integrations.otel, .sentry) hook into.

Two moments: an enqueue (around the store's write of a batch of new tasks) and
a run (around one attempt of a task's function, in the thread that runs it).
A Manager has no instruments until one is installed, and then
`manager.instruments` is None: the hot paths pay one attribute test.

Internal on purpose: a public `manager.on(event, fn)` is to be built on it.

Hooks run shielded (castor/interrupts.py: a timeout or cancel aimed at the
task's thread waits until they are done), and whatever a hook raises is logged
and dropped: a broken tracing or error-reporting setup never changes what
happens to a task.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from castor.context import current as current_task
from castor.errors import ConfigurationError
from castor.execution import Outcome, failure_outcome
from castor.interrupts import shielded
from castor.logs import get_logger

if TYPE_CHECKING:
    from castor.manager import Manager
    from castor.store.base import NewTask, TaskRecord

log = get_logger("castor.instrumentation")


class Instrument:
    """Override the hooks you need. `name` keys it on a Manager: installing another
    instrument of the same name replaces it."""

    name = "instrument"

    def enqueuing(self, tasks: list[NewTask]) -> Any:
        """Before the tasks are written; may add to each task's `options` (a new
        dict: the one a task starts with is shared). Returns a state for enqueued()."""
        return None

    def enqueued(self, state: Any, tasks: list[NewTask], ids: list[str] | None,
                 error: BaseException | None) -> None:
        """After the write: the ids handed back (a unique twin's or a cached
        task's where it answered instead), or the error the write raised."""

    def running(self, record: TaskRecord) -> Any:
        """In the task's thread, before its function is called. Returns a state for ran()."""
        return None

    def ran(self, state: Any, record: TaskRecord, outcome: Outcome) -> None:
        """In the task's thread, once its function returned or raised
        (`outcome.exception`), before the outcome is written. Also called from
        another thread, once, when castord stops a process task from outside
        (see stopped())."""

    def flush(self, timeout: float) -> None:
        """Send what is buffered, waiting at most `timeout` seconds (before a
        castord child leaves with os._exit, which skips atexit handlers)."""


class Instruments:
    """The instruments installed on one Manager."""

    def __init__(self) -> None:
        self.by_name: dict[str, Instrument] = {}
        # Attempts running now, by claim, with their instruments' states: what
        # stopped() ends when castord stops a process task from outside.
        self._running: dict[tuple[str, int], list[tuple[Instrument, Any]]] = {}
        self._lock = threading.Lock()
        _everywhere.add(self)

    def enqueue(self, tasks: list[NewTask], write: Callable[[list[NewTask]], list[str]]) -> list[str]:
        """`write(tasks)` between the instruments' enqueuing and enqueued hooks."""
        instruments = list(self.by_name.values())
        with shielded():
            states = [(i, _call(i, "enqueuing", i.enqueuing, tasks)) for i in instruments]
        try:
            ids = write(tasks)
        except BaseException as exc:
            with shielded():
                for instrument, state in states:
                    _call(instrument, "enqueued", instrument.enqueued, state, tasks, None, exc)
            raise
        with shielded():
            for instrument, state in states:
                _call(instrument, "enqueued", instrument.enqueued, state, tasks, ids, None)
        return ids

    def run(self, record: TaskRecord, attempt: Callable[[], Outcome]) -> Outcome:
        """`attempt()` (the task's function, made an Outcome) between the
        instruments' running and ran hooks."""
        states: list[tuple[Instrument, Any]] = []
        pid = os.getpid()
        with self._lock:
            self._running[record.claim] = states
        try:
            with shielded():  # may raise, as it ends, a timeout that came meanwhile: the task's
                for instrument in list(self.by_name.values()):
                    states.append((instrument, _call(instrument, "running", instrument.running, record)))
            outcome = attempt()
        except BaseException as exc:  # recorded as the attempt's failure by the worker, then passed on
            if os.getpid() == pid:
                _function_returned()
                self._finish(record, failure_outcome(record, exc))
            raise
        # A fork the task made, returning from its function, is no worker and leaves at
        # once (castor/worker.py): it must not end (and export) the attempt a second time.
        if os.getpid() == pid:
            _function_returned()
            self._finish(record, outcome)
        return outcome

    def stopped(self, record: TaskRecord, outcome: Outcome) -> None:
        """castord stopped this running attempt from outside (a process task past
        its timeout, or cancelled): end what its running hooks began, from this
        thread, as the child is about to leave."""
        self._finish(record, outcome)

    def _finish(self, record: TaskRecord, outcome: Outcome) -> None:
        with shielded():
            with self._lock:
                states = self._running.pop(record.claim, None)
            for instrument, state in reversed(states or ()):  # the last begun ends first
                _call(instrument, "ran", instrument.ran, state, record, outcome)

    def flush(self, timeout: float) -> None:
        for instrument in list(self.by_name.values()):
            _call(instrument, "flush", instrument.flush, timeout)


# Every Instruments in this process, for flush_all() before an os._exit.
_everywhere: weakref.WeakSet[Instruments] = weakref.WeakSet()


def install(manager: Manager, instrument: Instrument, where: str) -> None:
    """Install `instrument` on `manager` (replacing one of the same name); `where`
    names the caller in the error a wrong `manager` gets."""
    from castor.manager import Manager

    if not isinstance(manager, Manager):
        raise ConfigurationError(f"{where} takes a castor.Manager, not {type(manager).__name__}")
    if manager.instruments is None:
        manager.instruments = Instruments()
    manager.instruments.by_name[instrument.name] = instrument


def uninstall(manager: Manager, name: str) -> Instrument | None:
    """Remove the instrument called `name`; the last one gone, the hot paths are bare again."""
    instruments = manager.instruments
    if instruments is None:
        return None
    removed = instruments.by_name.pop(name, None)
    if not instruments.by_name:
        manager.instruments = None
    return removed


def installed(manager: Manager, name: str) -> Instrument | None:
    instruments = manager.instruments
    return None if instruments is None else instruments.by_name.get(name)


def stopped(manager: Manager, record: TaskRecord, exc: BaseException) -> None:
    """castord stopped `record`'s running attempt from outside with `exc` (a
    process task past its timeout, or cancelled): its instruments end it."""
    instruments = manager.instruments
    if instruments is not None:
        instruments.stopped(record, failure_outcome(record, exc))


def flush_all(timeout: float = 2.0) -> None:
    """Flush every instrument of every Manager in this process (castord children
    call this before os._exit, which skips atexit handlers and so the SDKs' own)."""
    for instruments in list(_everywhere):
        instruments.flush(timeout)


def _function_returned() -> None:
    """Before the ran hooks: an interruption meant for the task's function (a timeout,
    a cancel) that has landed stays with it, and one still on its way is dropped, as
    the worker does once execute() returns; else the hooks' shield would raise it
    again as they end (castor/interrupts.py)."""
    ctx = current_task()
    if ctx is not None and ctx.thread_id == threading.get_ident():
        ctx.disarm()


def _call(instrument: Instrument, hook: str, fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except BaseException:  # noqa: BLE001 - an instrument's failure must not become the task's
        log.warning("instrument.failed", instrument=instrument.name, hook=hook, exc_info=True)
        return None
