"""Event hooks: `manager.on("task.failed", fn)` calls `fn(event)` where the event happens.

Hooks fire at the points where castor writes a task's log lines (castor/task_log.py),
so each path that ends a task fires exactly one end event: the worker that settled
it, the castord master or worker that took it back from a dead or stalled worker,
the process that cancelled it while pending. Each runs in that process, in the
thread that wrote the change, after the store committed it.

A hook that raises is logged (`hook.failed`) and dropped: it never changes what
happens to the task, and never stops a worker. A slow hook delays the thread
that fires it (a worker's next task): hand heavy work to a thread or a task.

With no hooks registered the hot paths pay one truth test of a dict.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from castor.errors import ConfigurationError
from castor.interrupts import shielded
from castor.logs import get_logger
from castor.serialization import get_serializer
from castor.states import TaskStatus
from castor.store.base import NewTask, Settlement, TaskRecord

EVENTS = ("task.enqueued", "task.started", "task.succeeded", "task.failed", "task.retried", "task.cancelled")

# The end event of each status a settle writes (PENDING: a retry).
_SETTLED_EVENTS = {
    TaskStatus.SUCCESS: "task.succeeded",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.PENDING: "task.retried",
    TaskStatus.CANCELLED: "task.cancelled",
}

log = get_logger("castor.hooks")

Hook = Callable[["TaskEvent"], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class TaskEvent:
    """What a hook gets: the event's name and the task's record as it is after the
    event (status, attempts, error, finished_at), as this process knows it."""

    event: str
    record: TaskRecord
    # For task.failed, task.retried and task.cancelled in the worker that ran the attempt: what the
    # function raised, with its traceback (Sentry wants the live exception). None
    # elsewhere: a task failed by castord's master for a lost worker has only `error`.
    exception: BaseException | None = None

    @property
    def task_id(self) -> str:
        return self.record.id

    @property
    def error(self) -> dict[str, Any] | None:
        """For task.failed, task.retried and task.cancelled: the stored error
        (type, message, traceback, ...); None otherwise."""
        return self.record.error

    def result(self) -> Any:
        """For task.succeeded: the task's return value, decoded on this call (a hook
        that does not ask pays nothing). None for the other events."""
        raw = self.record.result
        if raw is None or self.record.status != TaskStatus.SUCCESS:
            return None
        return get_serializer(self.record.serializer).loads(raw)


class Hooks:
    """One Manager's hooks, by event name. `listeners` is empty until one is added."""

    def __init__(self) -> None:
        self.listeners: dict[str, list[Hook]] = {}

    def add(self, event: str, fn: Any) -> None:
        check_event(event, "Manager.on")
        if not callable(fn):
            raise ConfigurationError(f"Manager.on({event!r}, fn): fn must be callable, not {type(fn).__name__}")
        # A new list each time: firing threads iterate the old one without a lock.
        self.listeners[event] = [*self.listeners.get(event, ()), fn]

    def remove(self, event: str, fn: Any) -> bool:
        """Remove `fn` from `event`; False if it was not there."""
        check_event(event, "Manager.off")
        current = self.listeners.get(event, [])
        if fn not in current:
            return False
        kept = [f for f in current if f is not fn]
        if kept:
            self.listeners[event] = kept
        else:
            del self.listeners[event]
        return True

    # -- the call points (each checked by its caller: `if hooks.listeners:`) --------

    def enqueued(self, tasks: list[NewTask], ids: list[str]) -> None:
        """After the write committed: once per task written (not for a unique twin's
        or a cached task's id returned in its place: nothing was enqueued)."""
        if "task.enqueued" not in self.listeners:
            return
        for task, task_id in zip(tasks, ids, strict=True):
            if task.id == task_id:
                self.fire("task.enqueued", _record_of(task))

    def started(self, record: TaskRecord) -> None:
        self.fire("task.started", record)

    def settled(self, settlement: Settlement, record: TaskRecord | None,
                exception: BaseException | None = None) -> None:
        """A worker's outcome, once the store accepted it."""
        event = _SETTLED_EVENTS.get(settlement.status)
        if event is None or record is None or event not in self.listeners:
            return
        after = dataclasses.replace(
            record, status=settlement.status, error=settlement.error, result=settlement.result,
            finished_at=None if settlement.status == TaskStatus.PENDING else settlement.finished_at,
            eta=settlement.eta if settlement.eta is not None else record.eta, owner=None)
        self.fire(event, after, exception if settlement.status != TaskStatus.SUCCESS else None)

    def released(self, records: list[TaskRecord], *, counted: bool) -> None:
        """Tasks taken back from a worker that is gone or stalled, as the store left
        them: failed (WorkerLost), cancelled, or back in the queue (a retry when the
        attempt counted; a task handed back by a draining worker is no event)."""
        for record in records:
            if record.status == TaskStatus.FAILED:
                self.fire("task.failed", record)
            elif record.status == TaskStatus.CANCELLED:
                self.fire("task.cancelled", record)
            elif counted:
                self.fire("task.retried", record)

    def cancelled_pending(self, record: TaskRecord, now: float) -> None:
        self.fire("task.cancelled", dataclasses.replace(record, status=TaskStatus.CANCELLED, finished_at=now))

    def fire(self, event: str, record: TaskRecord, exception: BaseException | None = None) -> None:
        fns = self.listeners.get(event)
        if not fns:
            return
        payload = TaskEvent(event, record, exception)
        # Shielded: a timeout or cancel aimed at this thread (a task that enqueues)
        # waits until the hooks are done, and is not swallowed by the except below.
        with shielded():
            for fn in fns:
                try:
                    fn(payload)
                except BaseException as exc:  # noqa: BLE001 - a hook's failure must not become the task's
                    log.warning("hook.failed", hook_event=event, task_id=record.id, task_name=record.name,
                                hook=_name(fn), exc_type=type(exc).__name__, exc_message=str(exc),
                                exc_info=True)


def check_event(event: Any, where: str) -> None:
    if event not in EVENTS:
        raise ConfigurationError(f"{where}: unknown event {event!r}; the events are {', '.join(EVENTS)}")


def _name(fn: Any) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}" if module else str(qualname)


def _record_of(task: NewTask) -> TaskRecord:
    """The record a just-written task has in the store (pending, or waiting: a workflow
    member whose step has not come; never run)."""
    return TaskRecord(
        id=task.id, name=task.name, queue=task.queue, mode=task.mode, daemon=task.daemon,
        status=TaskStatus.WAITING if task.waiting else TaskStatus.PENDING, priority=task.priority, serializer=task.serializer,
        args=task.args, kwargs=task.kwargs, enqueued_at=task.enqueued_at, eta=task.eta,
        started_at=None, finished_at=None, result=None, error=None, attempts=0, lost=0, owner=None,
        lease_expires=None, options=task.options, unique_key=task.unique_key, workflow_id=task.workflow_id,
        wf_step=task.wf_step, wf_index=task.wf_index, wf_input=task.wf_input)


__all__ = ["EVENTS", "Hooks", "TaskEvent"]
