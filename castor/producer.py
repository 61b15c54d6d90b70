"""The producer side: a call of a task becomes a NewTask, and new tasks are written.

What `.delay()`, `.apply_async()`, `.map()` and `manager.enqueue_many()` share, apart
from the Manager (which composes it with the store) and from the engine: nothing here
imports the worker. Manager(eager=True) hands in a runner for just-enqueued tasks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from castor.durations import from_epoch, to_epoch, to_seconds
from castor.errors import ConfigurationError
from castor.expiry import EXPIRES_KEY, parse_expires
from castor.hooks import Hooks
from castor.ids import new_task_id
from castor.keys import call_key
from castor.serialization import Serializer, encode_call
from castor.states import TaskStatus
from castor.store import NewTask, Store
from castor.store.base import NewWorkflow
from castor.task import STORED_OPTIONS, stored_options, validate_priority, validate_queue, validate_ttl

if TYPE_CHECKING:
    from castor.instrumentation import Instruments
    from castor.task import TaskFunction


class Producer:
    def __init__(self, store: Store, serializer: Serializer):
        self.store = store
        self.serializer = serializer
        # Tracing and error reporting around enqueues, once an integration installs
        # itself (castor/instrumentation.py); None costs the hot path nothing.
        self.instruments: Instruments | None = None
        # Manager(eager=True): runs a just-enqueued task inline (the engine's, wired by the Manager).
        self.eager_runner: Callable[[str], Any] | None = None
        self.hooks = Hooks()  # manager.on(...): "task.enqueued" fires here, after the write

    def new_task(
        self, fn: TaskFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: dict[str, Any]
    ) -> NewTask:
        """The row a call of `fn` becomes: encoded, validated, with its ETA and keys."""
        now = time.time()
        opts = fn.options
        if opts.validator is not None:
            opts.validator(args, kwargs)
        encoded_args, encoded_kwargs = encode_call(self.serializer, fn.name, args, kwargs)
        if (not call and opts.unique is False and opts.cache_ttl is None and opts.expires is None
                and opts.concurrency is None):
            # .delay() of a plain task: the task's defaults, nothing to validate.
            return NewTask(
                new_task_id(), fn.name, opts.mode, self.serializer.name, encoded_args, encoded_kwargs,
                now, now, opts.queue, opts.priority, opts.daemon, opts.stored,
            )
        where = f"{fn.name}.apply_async"
        call = {k: v for k, v in call.items() if v is not None}  # None: the task's default
        eta = now
        if "eta" in call and "countdown" in call:
            raise ConfigurationError(f"{where}: give eta or countdown, not both")
        try:
            if "eta" in call:
                eta = to_epoch(call["eta"], "eta")
            if "countdown" in call:
                eta = now + (to_seconds(call["countdown"], "countdown") or 0.0)
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        queue = validate_queue(call["queue"], where) if "queue" in call else opts.queue
        priority = validate_priority(call["priority"], where) if "priority" in call else opts.priority
        task_id = call.get("task_id") or new_task_id()
        if not isinstance(task_id, str):
            raise ConfigurationError(f"{where}: task_id must be a string, not {task_id!r}")
        stored = opts.stored
        per_call = {k: v for k, v in call.items() if k in STORED_OPTIONS}
        if per_call:
            stored = stored_options({**opts.raw, **per_call}, where)
        expiry = parse_expires(call["expires"], where) if "expires" in call else opts.expires
        if expiry is not None:
            stored = {**stored, EXPIRES_KEY: _deadline(expiry.deadline(now), eta, now, where)}
        unique = call.get("unique", opts.unique)
        cache_ttl = validate_ttl(call["cache_ttl"], "cache_ttl", where, allow_zero=False) \
            if "cache_ttl" in call else opts.cache_ttl
        return NewTask(
            id=task_id, name=fn.name, mode=opts.mode, serializer=self.serializer.name,
            args=encoded_args, kwargs=encoded_kwargs, enqueued_at=now, eta=eta,
            queue=queue, priority=priority, daemon=opts.daemon, options=stored,
            unique_key=_unique_key(fn.name, unique, args, kwargs, where),
            cache_key=call_key(fn.name, args, kwargs) if cache_ttl is not None else None,
            cache_ttl=cache_ttl,
            concurrency_key=None if opts.concurrency is None else opts.concurrency.key_of(args, kwargs, where),
        )

    def submit(self, tasks: list[NewTask]) -> list[str]:
        """Write new tasks (all or none); their ids, a unique twin's or a cached
        task's where one answered instead."""
        instruments = self.instruments  # tracing, error reporting (castor.integrations)
        ids = self._write(tasks) if instruments is None else instruments.enqueue(tasks, self._write)
        if self.hooks.listeners:
            self.hooks.enqueued(tasks, ids)
        if self.eager_runner is not None:
            for task, task_id in zip(tasks, ids, strict=True):
                if task.id == task_id:  # not a unique twin's or a cached task's id
                    self.eager_runner(task.id)
        return ids

    def submit_workflow(self, workflow: NewWorkflow, tasks: list[NewTask]) -> None:
        """Write a workflow and its members (all or none), through the same instruments
        and task.enqueued hooks as submit(): each member is an enqueued task."""

        def write(members: list[NewTask]) -> list[str]:
            self.store.enqueue_workflow(workflow, members)
            return [t.id for t in members]

        instruments = self.instruments
        ids = write(tasks) if instruments is None else instruments.enqueue(tasks, write)
        if self.hooks.listeners:
            self.hooks.enqueued(tasks, ids)
        runner = self.eager_runner
        while runner is not None:  # eager mode: each member as it becomes pending, through the same store calls
            record = self.store.workflow(workflow.id)
            due = [task_id for task_id, _step, _index in (record.members if record else ())
                   if self.store.status(task_id) == TaskStatus.PENDING]
            if not due:
                break
            for task_id in due:
                runner(task_id)

    def _write(self, tasks: list[NewTask]) -> list[str]:
        if len(tasks) == 1 and tasks[0].cache_ttl is None:
            return self.store.enqueue(tasks)  # the hot path
        return self._enqueue_uncached(tasks)

    def _enqueue_uncached(self, tasks: list[NewTask]) -> list[str]:
        """Enqueue the tasks that no recent cached success answers (cache_ttl=)."""
        ids: list[str | None] = [None] * len(tasks)
        fresh: list[tuple[int, NewTask]] = []
        for i, task in enumerate(tasks):
            if task.cache_key is not None and task.cache_ttl is not None:
                ids[i] = self.store.find_cached(task.cache_key, since=task.enqueued_at - task.cache_ttl)
            if ids[i] is None:
                fresh.append((i, task))
        stored = self.store.enqueue([t for _, t in fresh])
        for (i, _), task_id in zip(fresh, stored, strict=True):
            ids[i] = task_id
        return [i for i in ids if i is not None]


def _deadline(expires: float, eta: float, now: float, where: str) -> float:
    """The expiry time, refused when it falls before a countdown=/eta= the call gave:
    such a task could never start. One already past without an ETA is taken (as
    Celery does: a caller's clock a little ahead should not fail the call) and ends
    expired at its first claim."""
    if eta > now and expires < eta:
        raise ConfigurationError(
            f"{where}: expires ({from_epoch(expires)}) falls before the task's eta ({from_epoch(eta)}), "
            "so it could never start; give a later expires, or a shorter countdown")
    return expires


def _unique_key(name: str, unique: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                where: str) -> str | None:
    """unique=True: a key from the arguments; a function: its return value; a
    string (per call): that key. Keys are per task name."""
    if unique is False:
        return None
    if unique is True:
        return call_key(name, args, kwargs)
    if isinstance(unique, str):
        return f"{name}:{unique}"
    if callable(unique):
        return f"{name}:{unique(*args, **kwargs)}"
    raise ConfigurationError(f"{where}: unique must be True, False, a key string or a function, not {unique!r}")
