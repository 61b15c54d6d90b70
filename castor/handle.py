"""The Task handle returned by `.delay()`: status, result, join, resolve."""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from castor.durations import from_epoch, to_seconds
from castor.errors import ConfigurationError, JoinTimeout, TaskCancelled, TaskExpired, UnknownTaskError
from castor.expiry import EXPIRED_TYPE
from castor.failures import rebuild
from castor.serialization import get_serializer
from castor.states import TaskStatus
from castor.store.base import Query, TaskRecord, ToldResult, task_topic

if TYPE_CHECKING:
    from castor.manager import Manager
    from castor.workflow import Workflow

R = TypeVar("R")

# join()/resolve() re-read the task at least this often even if no change
# notification arrives (a safety net; notifications normally wake them at once).
_RECHECK_SECONDS = 0.5


class Task(Generic[R]):
    """A handle on one stored task. Cheap to create; every read is fresh from the file."""

    __slots__ = ("id", "_manager")

    def __init__(self, manager: Manager, task_id: str):
        self.id = task_id
        self._manager = manager

    # -- state -----------------------------------------------------------------

    def info(self) -> TaskRecord:
        """The whole stored record, as of now."""
        record = self._manager.store.get(self.id)
        if record is None:
            raise UnknownTaskError.missing(self.id)
        return record

    def status(self) -> TaskStatus:
        """"pending" | "waiting" | "running" | "success" | "failed" | "cancelled" (a str enum);
        "waiting": a workflow member whose step has not come."""
        status = self._manager.store.status(self.id)
        if status is None:
            raise UnknownTaskError.missing(self.id)
        return status

    def __bool__(self) -> bool:
        """True once the task has finished: success, failed or cancelled."""
        return self.status().finished

    @property
    def name(self) -> str:
        return self.info().name

    @property
    def attempts(self) -> int:
        return self.info().attempts

    @property
    def enqueued_at(self) -> datetime:
        return from_epoch(self.info().enqueued_at)  # type: ignore[return-value]

    @property
    def started_at(self) -> datetime | None:
        return from_epoch(self.info().started_at)

    @property
    def finished_at(self) -> datetime | None:
        return from_epoch(self.info().finished_at)

    @property
    def result(self) -> R | None:
        """The result if the task succeeded, else None (use join() to wait or raise)."""
        record = self.info()
        if record.status != TaskStatus.SUCCESS:
            return None
        return self._decode_result(record)

    @property
    def error(self) -> dict[str, Any] | None:
        """For a failed task: {"type", "message", "traceback", "args"}; else None."""
        return self.info().error

    @property
    def history(self) -> list[dict[str, Any]]:
        """One entry per failed attempt so far: {"attempt", "type", "message", "at"}."""
        return self.info().history

    @property
    def lost(self) -> int:
        """How many times the worker running this task vanished (a "dirty" task if > 0)."""
        return self.info().lost

    @property
    def workflow(self) -> Workflow | None:
        """The workflow this task is a member of (a chain, or link=/link_error=), if any."""
        workflow_id = self.info().workflow_id
        if workflow_id is None:
            return None
        from castor.workflow import Workflow

        return Workflow(self._manager, workflow_id)

    @property
    def progress(self) -> Progress | None:
        """The latest `castor.progress(...)` report of the running attempt, if any."""
        record = self.info()
        if record.progress is None and record.progress_message is None:
            return None
        return Progress(record.progress, record.progress_message)

    # -- acting ----------------------------------------------------------------

    def cancel(self) -> TaskStatus:
        """Cancel the task. Pending: it never starts. Running: its worker stops it
        (a process task's child is replaced; a thread task sees castor.cancelled()
        and gets TaskCancelled raised in it). Returns the status after the call:
        "cancelled", "running" (the stop is under way), or a finished status
        unchanged if it finished first."""
        return self._manager.cancel(self.id)

    revoke = cancel  # Celery's name

    def retry(self) -> Task[R]:
        """Run a failed or cancelled task again (a new attempt; its history is kept)."""
        self._manager.retry(self.id)
        return self

    def forget(self) -> None:
        """Delete the finished task's record (Celery's AsyncResult.forget). A task gone
        already is left so; one not finished, or a member of a workflow still running
        (its successors read its result), is refused: castor.ConfigurationError says why."""
        store = self._manager.store
        for _ in range(2):  # once more if it changed between the purge and the look
            if store.purge(Query(task_id=self.id)):
                return
            record = store.get(self.id)
            if record is None:
                return
            if (why := _why_kept(self._manager, record)) is not None:
                raise ConfigurationError(why)

    # -- Celery's AsyncResult spellings ------------------------------------------

    def get(self, timeout: float | None = None) -> R:
        return self.join(timeout)

    def ready(self) -> bool:
        return bool(self)

    def successful(self) -> bool:
        return self.status() == TaskStatus.SUCCESS

    def failed(self) -> bool:
        return self.status() == TaskStatus.FAILED

    @property
    def state(self) -> str:
        """The status in Celery's spelling: PENDING, STARTED, SUCCESS, FAILURE, REVOKED."""
        return _CELERY_STATES[self.status()]

    # -- waiting ---------------------------------------------------------------

    def join(self, timeout: float | None = None) -> R:
        """Block until the task finishes; return its result or raise its exception.

        Raises `castor.JoinTimeout` (a TimeoutError) if `timeout` seconds pass first.
        """
        budget = _Budget(to_seconds(timeout, "timeout", limit=None))
        store = self._manager.store
        topic = task_topic(self.id)
        seen = store.generation(topic)  # before the watch's first look
        with store.watch_task(self.id) as first:
            record = first or self.info()
            while True:
                if record.status.finished:
                    return self._outcome(record)
                store.wait_for_change(seen, budget.next_wait(self, record), topic)
                seen = store.generation(topic)  # before the next look
                if (told := store.told_result(self.id)) is not None:
                    return self._decode_told(told)
                record = self.info()

    async def resolve(self, timeout: float | None = None) -> R:
        """`join` for asyncio: awaits without blocking the event loop."""
        budget = _Budget(to_seconds(timeout, "timeout", limit=None))
        store = self._manager.store
        watch = store.watch_async(task_topic(self.id))  # before the watch's first look
        try:
            with store.watch_task(self.id) as first:
                record = first or self.info()
                while True:
                    if record.status.finished:
                        return self._outcome(record)
                    await watch.wait(budget.next_wait(self, record))
                    if (told := store.told_result(self.id)) is not None:
                        return self._decode_told(told)
                    record = self.info()
        finally:
            watch.close()

    # -- helpers ---------------------------------------------------------------

    def _outcome(self, record: TaskRecord) -> R:
        if record.status == TaskStatus.SUCCESS:
            return self._decode_result(record)
        if record.status == TaskStatus.CANCELLED:
            error = record.error or {}
            if error.get("type") == EXPIRED_TYPE:
                raise TaskExpired(f"task {self.id} ({record.name}) {error.get('message') or 'expired'}")
            raise TaskCancelled(f"task {self.id} ({record.name}) was cancelled")
        raise rebuild(record.error or {}, self.id)

    def _decode_told(self, told: ToldResult) -> R:
        """A success's result as the store's wake-up told it (no read of the task)."""
        return get_serializer(told.serializer).loads(told.value)  # type: ignore[no-any-return]

    def _decode_result(self, record: TaskRecord) -> R:
        if record.result is None:
            return None  # type: ignore[return-value]
        return get_serializer(record.serializer).loads(record.result)

    def __repr__(self) -> str:
        return f"<castor.Task {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def _why_kept(manager: Manager, record: TaskRecord) -> str | None:
    """Why the store keeps `record` from a purge, as it is now (None: it would not)."""
    workflow = None if record.workflow_id is None else manager.store.workflow(record.workflow_id)
    if workflow is not None and not workflow.state.finished:
        return (f"task {record.id} ({record.name}) is {record.status}, a member of workflow {workflow.id}, which is "
                f"still running ({workflow.kind}): its record is kept until the workflow ends (the tasks after it "
                "read its result); cancel the workflow, or forget the task once it has ended")
    if not record.status.finished:
        return (f"task {record.id} is {record.status}: forget() deletes the record of a finished task; "
                "cancel it first, or wait for it to finish")
    return None


class Progress(NamedTuple):
    fraction: float | None
    message: str | None


_CELERY_STATES = {
    TaskStatus.PENDING: "PENDING", TaskStatus.RUNNING: "STARTED", TaskStatus.SUCCESS: "SUCCESS",
    TaskStatus.FAILED: "FAILURE", TaskStatus.CANCELLED: "REVOKED",
    TaskStatus.WAITING: "PENDING",  # Celery's chain links are PENDING until their turn too
}


class _Budget:
    """How long join/resolve may still wait: the next wait, or JoinTimeout when spent."""

    def __init__(self, limit: float | None):
        self.limit = limit
        self.deadline = None if limit is None else time.monotonic() + limit

    def next_wait(self, task: Task[Any], record: TaskRecord) -> float:
        if self.deadline is None:
            return _RECHECK_SECONDS
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise JoinTimeout(f"task {task.id} ({record.name}) is still {record.status} after {self.limit:g} s")
        return min(_RECHECK_SECONDS, remaining)
