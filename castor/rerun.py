"""Running a task again: a pending one scheduled for later made due now, or a finished
one enqueued anew as a copy. Pure: what the copy is, and why a task cannot be either.

Run again differs from retry: retry sends the same task (same id, its attempts and
history going on) back to the queue; run again leaves the finished task as it is and
enqueues a new one with its name, arguments, queue, priority and options. The two are
linked through their options: the copy's "rerun_of" names its source, the source's
"rerun_as" its latest copy (no migration: options is a JSON object both stores keep).
"""

from __future__ import annotations

from castor.expiry import EXPIRES_KEY
from castor.ids import new_task_id
from castor.states import TaskStatus
from castor.store import NewTask, Store, TaskRecord

RERUN_OF = "rerun_of"
RERUN_AS = "rerun_as"


def concurrency_key(store: Store, task_id: str) -> str | None:
    """The task's stored concurrency key, for its copy (the record does not carry it)."""
    return store.concurrency_key_of(task_id)


def copy_of(record: TaskRecord, *, now: float, concurrency_key: str | None = None) -> NewTask:
    """A new task doing what `record` did, due now. Its arguments are copied as stored
    (never decoded: a pickled argument's code does not run here). Its expiry is dropped,
    as a retry by hand drops it: the copy is asked for now. It keeps the unique key, so
    the store refuses it while an unfinished twin holds that key; it has no cache key
    (the store does not keep the source's), so it is run, not answered from a cache. It
    keeps the concurrency key given (the source's, as stored): it is limited as the source was."""
    options = {k: v for k, v in record.options.items() if k not in (EXPIRES_KEY, RERUN_AS)}
    options[RERUN_OF] = record.id
    return NewTask(new_task_id(), record.name, record.mode, record.serializer, record.args, record.kwargs,
                   enqueued_at=now, eta=now, queue=record.queue, priority=record.priority, daemon=record.daemon,
                   options=options, unique_key=record.unique_key, concurrency_key=concurrency_key)


def why_not_run_now(record: TaskRecord) -> str:
    """Why run_now refuses `record` as it is now."""
    if record.status.finished:
        return (f"task {record.id} is {record.status}: run now takes a pending task scheduled for later; "
                "to run a finished task again, use run again (a new copy)")
    if record.status != TaskStatus.PENDING:
        return f"task {record.id} is {record.status}: it is being run already"
    return f"task {record.id} is due already (pending, not scheduled for later): castord takes it when it can"


def why_not_run_again(record: TaskRecord) -> str:
    """Why run_again refuses `record` (not finished)."""
    hint = " (to run a scheduled one sooner, use run now)" if record.status == TaskStatus.PENDING else ""
    return (f"task {record.id} is {record.status}: only a finished task (success, failed or cancelled) "
            f"can be run again{hint}")


def held_by_twin(record: TaskRecord, twin_id: str) -> str:
    """The refusal when an unfinished task holds the copy's unique key."""
    return (f"task {record.id} was not run again: its unique key {record.unique_key!r} is held by "
            f"unfinished task {twin_id} (a unique task has one pending or running copy at a time)")
