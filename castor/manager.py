"""Manager: holds the database, registers tasks, enqueues them, finds them again."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, TypeVar, overload

from castor.durations import to_epoch, to_seconds
from castor.errors import ConfigurationError, DuplicateTaskError
from castor.handle import Task
from castor.ids import new_task_id
from castor.serialization import encode_call, get_serializer
from castor.states import TaskStatus, parse_status
from castor.store import NewTask, Query, Store, open_store
from castor.task import (
    Signature,
    TaskFunction,
    build_options,
    validate_priority,
    validate_queue,
    validate_timeout,
)

P = ParamSpec("P")
R = TypeVar("R")


class Manager:
    """The entry point: `manager = castor.Manager(BeaverDB("app.db"))`.

    `db` is the application's own beaver-db database (or a path to its file);
    castor keeps its tables beside the application's data in that file.
    """

    def __init__(
        self,
        db: Any,
        *,
        serializer: str = "json",
        eager: bool = False,
        lock_timeout: float = 30.0,
        durable: bool = False,
        include: Iterable[str] = (),
    ):
        self._db = db if not isinstance(db, (str, os.PathLike)) else None
        self._owns_db = False  # True once `db` opened a BeaverDB for a path
        self.serializer = get_serializer(serializer)
        self.eager = eager
        self.store: Store = open_store(db, lock_timeout=lock_timeout, durable=durable)
        self.registry: dict[str, TaskFunction[..., Any]] = {}
        # Modules that define tasks, imported by workers after loading APP
        # (Celery's `include`): lets APP be a main.py that never imports them.
        self.include = tuple(include)

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def db(self) -> Any:
        """The application's BeaverDB; opened on first use when Manager got a path."""
        if self._db is None:
            from beaver import BeaverDB

            self._db = BeaverDB(self.store.path)
            self._owns_db = True
        return self._db

    # -- defining tasks ------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> TaskFunction[P, R]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[P, R]], TaskFunction[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: `@manager.task(mode="thread" | "process", daemon=False)`.

        Options: mode (required), daemon, name, queue, priority.
        """
        if fn is not None:
            # Bare @manager.task: mode is missing, and build_options says so.
            return self._register(fn, options)
        return lambda f: self._register(f, options)

    def _register(self, fn: Callable[..., Any], options: dict[str, Any]) -> TaskFunction[..., Any]:
        if not callable(fn):
            raise ConfigurationError(f"@manager.task must decorate a function, not {type(fn).__name__}")
        task_options = build_options(fn, options)
        existing = self.registry.get(task_options.name)
        if existing is not None and existing.fn is not fn:
            raise DuplicateTaskError(
                f"a task named {task_options.name!r} is already registered "
                f"(by {existing.fn.__module__}.{existing.fn.__qualname__}); "
                "give one of them another name with name=..."
            )
        task_fn: TaskFunction[..., Any] = TaskFunction(self, fn, task_options)
        self.registry[task_options.name] = task_fn
        return task_fn

    def import_tasks(self) -> None:
        """Import the `include=` modules so their tasks register (workers call this)."""
        for module in self.include:
            importlib.import_module(module)

    # -- enqueueing ----------------------------------------------------------

    def _new_task(
        self, fn: TaskFunction[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], call: dict[str, Any]
    ) -> NewTask:
        now = time.time()
        opts = fn.options
        encoded_args, encoded_kwargs = encode_call(self.serializer, fn.name, args, kwargs)
        if not call:  # .delay(): the task's defaults, nothing to validate
            return NewTask(
                new_task_id(), fn.name, opts.mode, self.serializer.name, encoded_args, encoded_kwargs,
                now, now, opts.queue, opts.priority, opts.daemon,
                {"timeout": opts.timeout} if opts.timeout is not None else {},
            )
        where = f"{fn.name}.apply_async"
        eta = now
        if call.get("eta") is not None:
            eta = to_epoch(call["eta"], "eta")
        if call.get("countdown") is not None:
            if call.get("eta") is not None:
                raise ConfigurationError(f"{where}: give eta or countdown, not both")
            eta = now + (to_seconds(call["countdown"], "countdown") or 0.0)
        queue = opts.queue if call.get("queue") is None else validate_queue(call["queue"], where)
        priority = opts.priority if call.get("priority") is None else validate_priority(call["priority"], where)
        task_id = call.get("task_id") or new_task_id()
        if not isinstance(task_id, str):
            raise ConfigurationError(f"{where}: task_id must be a string, not {task_id!r}")
        timeout = opts.timeout if call.get("timeout") is None else validate_timeout(call["timeout"], where)
        return NewTask(
            id=task_id, name=fn.name, mode=opts.mode, serializer=self.serializer.name,
            args=encoded_args, kwargs=encoded_kwargs, enqueued_at=now, eta=eta,
            queue=queue, priority=priority, daemon=opts.daemon,
            options={"timeout": timeout} if timeout is not None else {},
        )

    def _submit(self, tasks: list[NewTask]) -> list[Task[Any]]:
        self.store.enqueue(tasks)
        if self.eager:
            from castor.worker import run_eagerly

            for task in tasks:
                run_eagerly(self, task.id)
        return [Task(self, t.id) for t in tasks]

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[Task[Any]]:
        """Enqueue many calls (`add.s(1, 2)`, ...) in one transaction: all or none."""
        return self._submit([s.task._new(s.args, s.kwargs, s.options) for s in signatures])

    # -- finding tasks -------------------------------------------------------

    def get(self, task_id: str) -> Task[Any] | None:
        """A handle on a stored task, or None if there is no such task."""
        return Task(self, task_id) if self.store.status(task_id) is not None else None

    get_task_by_id = get

    def tasks(
        self,
        status: str | None = None,
        *,
        name: str | None = None,
        queue: str | None = None,
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[Task[Any]]:
        """Handles on stored tasks, newest first, filtered by status, name and queue."""
        query = _query(status, name, queue)
        return [Task(self, r.id) for r in self.store.list(query, limit=limit, offset=offset)]

    def count(self, status: str | None = None, *, name: str | None = None, queue: str | None = None) -> int:
        return self.store.count(_query(status, name, queue))

    def counts(self) -> dict[str, int]:
        """How many tasks are in each status."""
        return {str(k): v for k, v in self.store.counts_by_status().items()}

    def close(self) -> None:
        """Close castor's connections, and the BeaverDB if castor opened it (one you
        passed in stays yours to close)."""
        self.store.close()
        if self._owns_db and self._db is not None:
            self._db.close()
            self._db = None
            self._owns_db = False

    def __repr__(self) -> str:
        return f"<castor.Manager {self.store.path} tasks={len(self.registry)}>"


def _query(status: str | None, name: str | None, queue: str | None) -> Query:
    parsed: TaskStatus | None = parse_status(status) if status is not None else None
    return Query(status=parsed, name=name, queue=queue)
