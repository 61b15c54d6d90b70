"""Running one claimed task's function and turning what happened into an Outcome."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from castor.context import context_values
from castor.errors import SerializationError, TaskCancelled, UnknownTaskError
from castor.failures import class_name, describe, describe_message, safe_text
from castor.retries import RetryPolicy
from castor.serialization import get_serializer
from castor.states import TaskStatus
from castor.store.base import Settlement, TaskRecord

if TYPE_CHECKING:
    from castor.instrumentation import Instruments
    from castor.retention import Retention
    from castor.task import TaskFunction


@dataclass(frozen=True, slots=True)
class Outcome:
    status: TaskStatus
    result: str | bytes | None = None
    error: dict[str, Any] | None = None
    duration: float = 0.0
    # status PENDING: the attempt failed and the task runs again after this many seconds.
    retry_in: float | None = None
    # What the attempt raised, for the instruments (castor/instrumentation.py); never stored.
    exception: BaseException | None = field(default=None, compare=False, repr=False)


class EventLoopThread:
    """One asyncio loop in its own thread, shared by a worker's `async def` tasks.

    A pool thread submits the coroutine and waits for it, so M pool threads bound
    how many async tasks run at once, as for plain thread tasks.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="castor-asyncio", daemon=True)
        self._thread.start()

    def run(self, awaitable: Any) -> Any:
        # The loop's task gets this thread's context variables (the running task's
        # castor context, the log fields), as asyncio.run would have given it.
        future = asyncio.run_coroutine_threadsafe(_await(awaitable, context_values()), self.loop)
        try:
            while True:
                # Short waits, so an asynchronous TaskTimeout reaches this thread.
                try:
                    return future.result(timeout=0.05)
                except concurrent.futures.TimeoutError:
                    if future.done():
                        raise  # the task's own TimeoutError, not our wait's
        except BaseException:
            future.cancel()  # e.g. TaskTimeout raised in the waiting thread
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


def execute(
    registry: Mapping[str, TaskFunction[..., Any]], record: TaskRecord,
    get_loop: Callable[[], EventLoopThread] | None = None, instruments: Instruments | None = None,
    inputs: tuple[Any, ...] = (),
) -> Outcome:
    """Run the task's function (looked up in `registry`); never raises for anything
    the task itself did.

    `async def` tasks run on the loop `get_loop()` returns (a thread worker's
    shared loop), else on a fresh loop of their own. `instruments`: tracing, error
    reporting around the attempt (castor/instrumentation.py). `inputs`: what a workflow
    member gets before its own arguments (castor/workflow_inputs.py).
    """
    if instruments is not None:
        return instruments.run(record, lambda: _attempt(registry, record, get_loop, inputs))
    return _attempt(registry, record, get_loop, inputs)


def _attempt(registry: Mapping[str, TaskFunction[..., Any]], record: TaskRecord,
             get_loop: Callable[[], EventLoopThread] | None, inputs: tuple[Any, ...] = ()) -> Outcome:
    started = time.perf_counter()
    task_fn = registry.get(record.name)
    if task_fn is None:
        known = ", ".join(sorted(registry)) or "none"
        message = (
            f"no task named {record.name!r} is registered in this worker (known: {known}); "
            "is the worker running the same code as the application, and does APP import the "
            "module that defines it (or list it in Manager(..., include=[...]))?")
        return Outcome(TaskStatus.FAILED, error=describe_message(
            f"{UnknownTaskError.__module__}.{UnknownTaskError.__qualname__}", message),
            exception=UnknownTaskError(message))
    serializer = get_serializer(record.serializer)
    try:
        args = (*inputs, *serializer.loads(record.args)) if inputs else serializer.loads(record.args)
        kwargs = serializer.loads(record.kwargs)
        value = task_fn.fn(*args, **kwargs)
        if inspect.isawaitable(value):
            value = get_loop().run(value) if get_loop is not None else asyncio.run(_await(value))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the task's failure is data
        return failure_outcome(record, exc, time.perf_counter() - started)
    duration = time.perf_counter() - started
    try:
        encoded = serializer.dumps(value)
    except Exception as exc:  # noqa: BLE001
        # The result's own code (items(), its class's name) ran in the encoder: it may
        # have raised anything, and may raise again if asked to describe itself.
        error = SerializationError(
            f"the result of {record.name} ({class_name(type(value))}) is not "
            f"{serializer.name}-serializable: {safe_text(exc)}"
        )
        return Outcome(TaskStatus.FAILED, error=describe(error), duration=duration, exception=error)
    return Outcome(TaskStatus.SUCCESS, result=encoded, duration=duration)


def failure_outcome(record: TaskRecord, exc: BaseException, duration: float = 0.0) -> Outcome:
    """What a task's exception means: cancelled, retried later, or failed for good."""
    error = describe(exc)
    # issubclass(type(...)), not isinstance: isinstance asks the object for its
    # __class__, and a task's exception may refuse (or lie).
    if issubclass(type(exc), TaskCancelled):
        return Outcome(TaskStatus.CANCELLED, error=error, duration=duration, exception=exc)
    retry_in = RetryPolicy.from_options(record.options).retry_in(exc, record.attempts)
    if retry_in is not None:
        return Outcome(TaskStatus.PENDING, error=error, duration=duration, retry_in=retry_in, exception=exc)
    return Outcome(TaskStatus.FAILED, error=error, duration=duration, exception=exc)


def settlement_for(retention: Retention, record: TaskRecord, outcome: Outcome, owner: str,
                   now: float) -> Settlement:
    """The write that records an outcome, with its retry time and result TTL."""
    status = outcome.status
    if status == TaskStatus.PENDING:
        return Settlement(record.id, owner, record.attempts, status, error=outcome.error,
                          finished_at=now, eta=now + (outcome.retry_in or 0.0), fence=record.fence,
                          workflow_id=record.workflow_id)
    expires_at = retention.expires_at(record.options, status, now)
    return Settlement(
        record.id, owner, record.attempts, status, result=outcome.result, error=outcome.error,
        finished_at=now, expires_at=expires_at,
        # result_ttl=0; never a workflow member's row, which its successor reads (its
        # expires_at deletes it later, once its workflow has ended: the purge skips it before)
        drop=expires_at == now and status == TaskStatus.SUCCESS and record.workflow_id is None,
        fence=record.fence, workflow_id=record.workflow_id,
    )


async def _await(value: Any, context: dict[Any, Any] | None = None) -> Any:
    for var, item in (context or {}).items():
        var.set(item)  # in this asyncio task's own copy of the context
    return await value
