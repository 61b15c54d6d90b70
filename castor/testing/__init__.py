"""Helpers for testing an application that uses castor (docs/testing-your-app.md).

    from castor.testing import drain, assert_enqueued

    def test_signup(castor_manager):          # a pytest fixture (castor.testing.plugin)
        signup("ada@example.com")             # code under test: enqueues a task
        assert_enqueued(castor_manager, send_welcome, ("ada@example.com",))
        drain(castor_manager)                 # runs it here, in this process
        assert ...                            # what the task did

Nothing here needs pytest: `drain`, `enqueued`, `assert_enqueued` and `isolated`
work in any test runner. The fixtures live in castor.testing.plugin, which pytest
loads by itself once castor is installed.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from castor.durations import from_epoch, to_seconds
from castor.errors import CastorError, ConfigurationError
from castor.handle import Task
from castor.manager import Manager
from castor.states import TaskStatus, parse_status
from castor.store import Query, TaskRecord, open_store
from castor.task import TaskFunction
from castor.worker import Worker

__all__ = [
    "DrainLimitReached",
    "Enqueued",
    "assert_enqueued",
    "assert_not_enqueued",
    "drain",
    "enqueued",
    "isolated",
]

# Most task attempts one drain() runs before it decides something loops (a task
# that enqueues itself, a chain with no end).
DEFAULT_MAX_TASKS = 10_000
# How many enqueued tasks an assertion's failure message lists.
_SHOWN = 20


class DrainLimitReached(CastorError):
    """drain() ran max_tasks attempts and tasks were still due."""


# -- running tasks -----------------------------------------------------------------


def drain(
    manager: Manager,
    *,
    queues: Sequence[str] | None = None,
    advance: float | timedelta = 0.0,
    fail_fast: bool = False,
    max_tasks: int = DEFAULT_MAX_TASKS,
) -> list[Task[Any]]:
    """Run every due task of `manager` here, in the calling thread, until none is due.

    Both modes run in this process ("process" tasks too), one task at a time, the
    way castord would pick them within a mode (priority, then ETA); process and
    thread tasks take turns, a process task first. Tasks enqueued by a task run in the same drain. A
    failed attempt with retries left runs again in this drain once its backoff
    has passed, so retries with a delay stay pending unless `advance` covers it.

    advance: run what is due up to this long from now (seconds or a timedelta):
    countdown=/eta= tasks and retries whose backoff ends within it. The task
    records keep the real times; nothing is slept. `math.inf` runs everything
    pending, whatever its ETA.

    fail_fast: raise the exception of the first task that fails for good (no
    retries left) and stop there; otherwise failures stay recorded on the tasks.

    Returns a handle on each task that ran, in the order they first ran.
    """
    if not isinstance(manager, Manager):
        raise ConfigurationError(f"drain() takes a castor.Manager, not {type(manager).__name__}")
    if isinstance(queues, str):
        raise ConfigurationError(f"drain(): queues takes a list of queue names, e.g. [{queues!r}]")
    ahead = _advance(advance)
    limit = _max_tasks(max_tasks)
    ran: dict[str, Task[Any]] = {}
    failed: list[str] = []

    def settled(_name: str, status: str, _seconds: float, task_id: str) -> None:
        ran.setdefault(task_id, Task(manager, task_id))
        if status == TaskStatus.FAILED:
            failed.append(task_id)

    workers = [Worker(manager, mode=mode, threads=1, queues=queues) for mode in ("process", "thread")]
    for worker in workers:
        worker.on_settled = settled
    attempts = 0
    try:
        progressed = True
        while progressed:
            progressed = False
            for worker in workers:
                now = _clock(ahead)
                if attempts >= limit and manager.store.has_due(mode=worker.mode, queues=worker.queues, now=now):
                    raise DrainLimitReached(
                        f"drain() ran {attempts} task attempts and more are due: does a task enqueue "
                        f"itself, or a chain never end? Pass max_tasks= to allow more")
                if worker.step(now):
                    attempts += 1
                    progressed = True
                if fail_fast and failed:
                    ran[failed[0]].join()  # raises the task's own exception
    finally:
        for worker in workers:
            _close(worker)
    return list(ran.values())


def _clock(ahead: float) -> float:
    return math.inf if ahead == math.inf else time.time() + ahead


def _advance(advance: float | timedelta) -> float:
    try:
        seconds = to_seconds(advance, "advance", limit=None)  # math.inf: everything pending
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"drain(): {exc}") from None
    return seconds or 0.0


def _max_tasks(value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"drain(): max_tasks must be a positive integer, not {value!r}")
    return value


def _close(worker: Worker) -> None:
    # A thread worker starts an event-loop thread for its first `async def` task;
    # Worker.run() closes it on the way out, step() leaves it to its caller.
    worker.close()


# -- what was enqueued -----------------------------------------------------------------


@dataclass(frozen=True)
class Enqueued:
    """One stored task as a test sees it: its call, where and when it runs, its status."""

    id: str
    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    status: TaskStatus
    enqueued_at: datetime
    eta: datetime
    attempts: int
    task: Task[Any] = field(repr=False, compare=False)

    @property
    def countdown(self) -> float:
        """Seconds between enqueueing and the earliest time it may run (0: at once)."""
        return (self.eta - self.enqueued_at).total_seconds()

    def call(self) -> str:
        """`name(args, key=value)`, as the task would be called."""
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.name}({', '.join(parts)})"

    def __str__(self) -> str:
        when = f", eta {self.eta.isoformat(timespec='seconds')}" if self.countdown > 0 else ""
        return f"{self.call()} [{self.status}, queue {self.queue!r}, priority {self.priority}{when}]"


def enqueued(
    manager: Manager,
    task: TaskFunction[..., Any] | str | None = None,
    *,
    status: str | None = None,
    queue: str | None = None,
) -> list[Enqueued]:
    """The stored tasks of `manager`, oldest first: of one task (the function or its
    name), in one status ("pending", ..., or any by default) and queue, if given."""
    query = Query(status=parse_status(status) if status is not None else None,
                  name=_task_name(task), queue=queue)
    records = manager.store.list(query, limit=None)
    return [_enqueued(manager, r) for r in reversed(records)]


def assert_enqueued(
    manager: Manager,
    task: TaskFunction[..., Any] | str,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    count: int | None = None,
    status: str | None = None,
    queue: str | None = None,
    priority: int | None = None,
) -> list[Enqueued]:
    """Assert that `task` was enqueued (with these arguments, if given): at least once,
    or exactly `count` times. Returns the matching tasks, oldest first.

    Arguments compare as the serializer stores them (with JSON, tuples as lists),
    so `args=(1, (2, 3))` matches a call `.delay(1, (2, 3))`. Every status counts
    (a task that already ran was enqueued too) unless `status=` narrows it.
    """
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise ConfigurationError(f"assert_enqueued(): count must be zero or a positive integer, not {count!r}")
    name = _task_name(task)
    assert name is not None  # task is required here
    everything = enqueued(manager)
    want_args = _stored_form(manager, list(args)) if args is not None else None
    want_kwargs = _stored_form(manager, dict(kwargs)) if kwargs is not None else None
    matches = [
        e for e in everything
        if e.name == name
        and (want_args is None or list(e.args) == want_args)
        and (want_kwargs is None or e.kwargs == want_kwargs)
        and (status is None or e.status == parse_status(status))
        and (queue is None or e.queue == queue)
        and (priority is None or e.priority == priority)
    ]
    if (len(matches) >= 1) if count is None else (len(matches) == count):
        return matches
    wanted = _describe_wanted(name, args, kwargs, status, queue, priority)
    times = "at least once" if count is None else f"{count} time{'s' * (count != 1)}"
    raise AssertionError(f"expected {wanted} enqueued {times}, found {len(matches)}\n"
                         f"{_listing(everything, matches)}")


def assert_not_enqueued(
    manager: Manager,
    task: TaskFunction[..., Any] | str,
    args: Sequence[Any] | None = None,
    kwargs: dict[str, Any] | None = None,
    **filters: Any,
) -> None:
    """Assert that no such task was enqueued (same filters as assert_enqueued)."""
    assert_enqueued(manager, task, args, kwargs, count=0, **filters)


def _task_name(task: TaskFunction[..., Any] | str | None) -> str | None:
    if task is None or isinstance(task, str):
        return task
    if isinstance(task, TaskFunction):
        return task.name
    raise ConfigurationError(
        f"expected a task (the function @manager.task returned) or its name, not {type(task).__name__}")


def _enqueued(manager: Manager, record: TaskRecord) -> Enqueued:
    from castor.serialization import get_serializer

    serializer = get_serializer(record.serializer)
    return Enqueued(
        id=record.id, name=record.name, args=tuple(serializer.loads(record.args)),
        kwargs=serializer.loads(record.kwargs), queue=record.queue, priority=record.priority,
        status=record.status, enqueued_at=from_epoch(record.enqueued_at),  # type: ignore[arg-type]
        eta=from_epoch(max(record.eta, record.enqueued_at)),  # type: ignore[arg-type]
        attempts=record.attempts, task=Task(manager, record.id),
    )


def _stored_form(manager: Manager, value: Any) -> Any:
    """`value` as it comes back from the Manager's serializer (JSON: tuples become lists)."""
    return manager.serializer.loads(manager.serializer.dumps(value))


def _describe_wanted(name: str, args: Sequence[Any] | None, kwargs: dict[str, Any] | None,
                     status: str | None, queue: str | None, priority: int | None) -> str:
    call = name
    if args is not None or kwargs is not None:
        parts = [repr(a) for a in args or ()] + [f"{k}={v!r}" for k, v in (kwargs or {}).items()]
        call = f"{name}({', '.join(parts)})"
    filters = [f"{label} {value!r}" for label, value in
               (("status", status), ("queue", queue), ("priority", priority)) if value is not None]
    return call + (f" ({', '.join(filters)})" if filters else "")


def _listing(everything: list[Enqueued], matches: list[Enqueued]) -> str:
    if not everything:
        return "nothing was enqueued"
    lines = [f"  {'*' if e in matches else ' '} {e}" for e in everything[:_SHOWN]]
    if len(everything) > _SHOWN:
        lines.append(f"    ... and {len(everything) - _SHOWN} more")
    return "enqueued (oldest first):\n" + "\n".join(lines)


# -- a temporary database for an application's Manager ------------------------------------


@contextmanager
def isolated(manager: Manager, path: str | os.PathLike[str]) -> Iterator[Manager]:
    """Point an existing Manager (your application's) at another database file for
    the duration, e.g. one in a test's tmp_path; its tasks enqueue there and
    drain() runs them from there. Restored (and the file closed) on exit.

    Only castor's tables move: a BeaverDB your application opened itself still
    writes where it did.
    """
    if not isinstance(manager, Manager):
        raise ConfigurationError(f"isolated() takes a castor.Manager, not {type(manager).__name__}")
    target = os.path.abspath(os.fspath(path))
    if target == manager.store.path:
        raise ConfigurationError(f"isolated(): {target} is the Manager's own database; give another file")
    saved = manager.store
    store = open_store(target)
    store.failure_ttl = manager.failure_ttl
    manager.store = store
    try:
        yield manager
    finally:
        manager.store = saved
        store.close()
