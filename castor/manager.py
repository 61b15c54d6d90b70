"""Manager: holds the database, registers tasks, enqueues them, finds them again."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, ParamSpec, TypeVar, overload

from castor import rerun, task_log
from castor.bulk_retry import RetriedTasks, members_left
from castor.errors import ConfigurationError, DuplicateTaskError, UnknownTaskError, WorkflowMemberRetry
from castor.handle import Task
from castor.hooks import Hooks, check_event
from castor.instrumentation import Instruments
from castor.interrupts import shielded
from castor.producer import Producer
from castor.rate_limits import parse_rate_limit
from castor.retention import Retention
from castor.serialization import get_serializer
from castor.states import TaskStatus, WorkflowStatus, parse_status
from castor.store import NewTask, Query, Store, database_path, display_url, is_server_url, open_store
from castor.store.base import TaskRecord
from castor.task import (
    Signature,
    TaskFunction,
    build_options,
    validate_ttl,
)
from castor.workflow import Workflow

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
        store: Any = None,
        serializer: str = "json",
        eager: bool = False,
        lock_timeout: float = 30.0,
        durable: bool = False,
        include: Iterable[str] = (),
        result_ttl: float | timedelta | None = None,
        failure_ttl: float | timedelta | None = None,
    ):
        if not isinstance(lock_timeout, (int, float)) or isinstance(lock_timeout, bool) or not lock_timeout >= 0:
            raise ConfigurationError(
                f"lock_timeout must be zero or more seconds (how long a write waits for another "
                f"program's transaction), not {lock_timeout!r}")
        self._db = db if not isinstance(db, (str, os.PathLike)) else None
        # The file `db` names, opened as a BeaverDB on first use of .db (none for a
        # server's URL: Manager("postgresql://...") keeps no beaver-db file).
        self._db_path = database_path(db) if self._db is None and not is_server_url(db) else None
        self._owns_db = False  # True once `db` opened a BeaverDB for a path
        self._db_pid = 0  # the process that opened it
        self.serializer = get_serializer(serializer)
        # How long finished tasks stay, unless a task says otherwise (None: until
        # purged; result_ttl=0: a success is deleted as it finishes). Checked before
        # the store opens, so a bad value leaves no connection behind.
        self.retention = Retention(validate_ttl(result_ttl, "result_ttl", "Manager", allow_zero=True),
                                   validate_ttl(failure_ttl, "failure_ttl", "Manager", allow_zero=False))
        # Where the tasks live: beside the application's data in `db`, unless `store`
        # (a path, a sqlite:/// URL, a BeaverDB) names another place.
        self._store: Store = open_store(db if store is None else store, lock_timeout=lock_timeout,
                                        durable=durable)
        self.store.failure_ttl = self.failure_ttl  # for tasks the store itself ends (lost worker)
        self.registry: dict[str, TaskFunction[..., Any]] = {}
        # Modules that define tasks, imported by workers after loading APP
        # (Celery's `include`): lets APP be a main.py that never imports them.
        self.include = tuple(include)
        # Periodic schedules by task name (see castor.periodic); castord fires them.
        self.schedules: dict[str, Any] = {}
        # Calls of tasks become rows here (castor/producer.py); the engine (castor/worker.py)
        # takes the store, the registry and the retention policy.
        self.producer = Producer(self.store, self.serializer)
        self.eager = eager

    @property
    def hooks(self) -> Hooks:
        """The hooks registered with on() (castor/hooks.py), shared with the producer."""
        return self.producer.hooks

    @property
    def store(self) -> Store:
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        """Another store for this Manager's tasks (castor.testing.isolated does this)."""
        self._store = store
        self.producer.store = store

    @property
    def eager(self) -> bool:
        """Run each task inline at .delay() (for tests): the engine, wired in here."""
        return self.producer.eager_runner is not None

    @eager.setter
    def eager(self, value: bool) -> None:
        if value:
            from castor.worker import run_eagerly

            self.producer.eager_runner = lambda task_id: run_eagerly(self, task_id)
        else:
            self.producer.eager_runner = None

    @property
    def instruments(self) -> Instruments | None:
        """Tracing and error reporting around enqueues and runs, once an integration
        installs itself (castor/instrumentation.py); None costs the hot paths nothing."""
        return self.producer.instruments

    @instruments.setter
    def instruments(self, value: Instruments | None) -> None:
        self.producer.instruments = value

    @property
    def path(self) -> str:
        return self.store.path

    @property
    def db(self) -> Any:
        """The application's BeaverDB; opened on first use when Manager got a path."""
        if self._db is not None and self._owns_db and self._db_pid != os.getpid():
            # Opened before this process was forked (gunicorn --preload, a multiprocessing
            # child): its threads stayed behind and it would hang (BEAVER.md). Let it go
            # unclosed, and open this process's own.
            self._db = None
        if self._db is None:
            if self._db_path is None:
                raise ConfigurationError(
                    f"this Manager keeps its tasks at {display_url(self.store.url)} and has no beaver-db file "
                    "for .db; to keep one beside them: castor.Manager('app.db', store='postgresql://...')")
            from beaver import BeaverDB

            self._db = BeaverDB(self._db_path)
            self._owns_db = True
            self._db_pid = os.getpid()
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

    @property
    def result_ttl(self) -> float | None:
        return self.retention.result_ttl

    @property
    def failure_ttl(self) -> float | None:
        return self.retention.failure_ttl

    def expires_at(self, options: dict[str, Any], status: TaskStatus, finished_at: float) -> float | None:
        """When a task finished in `status` is deleted (castor/retention.py); None: kept."""
        return self.retention.expires_at(options, status, finished_at)

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

    def periodic(
        self, *, cron: str | None = None, every: Any = None, **options: Any
    ) -> Callable[[Callable[P, R]], TaskFunction[P, R]]:
        """Register a task that castord enqueues on a schedule:
        `@manager.periodic(cron="*/5 * * * *", mode="thread")` or `every=timedelta(minutes=5)`.

        Takes every @manager.task option too, and tz="Europe/Paris" for a cron
        read in that zone (default UTC). Each tick fires once, however many
        castords share the file; ticks missed while no castord ran are skipped.
        """
        from castor.periodic import register_periodic

        return lambda fn: register_periodic(self, fn, cron=cron, every=every, options=options)

    def import_tasks(self) -> None:
        """Import the `include=` modules so their tasks register (workers call this)."""
        for module in self.include:
            importlib.import_module(module)

    # -- hooks (castor/hooks.py) ----------------------------------------------

    def on(self, event: str, fn: Callable[..., Any] | None = None) -> Any:
        """Call `fn(event)` (a castor.hooks.TaskEvent) each time `event` happens, in
        the process where it happens: "task.enqueued" (the producer), "task.started",
        "task.succeeded", "task.failed", "task.retried", "task.cancelled" (the
        worker; see docs/hooks.md). Also a decorator: `@manager.on("task.failed")`.
        Register hooks in the APP module, so castord's children have them too."""
        if fn is None:
            check_event(event, "Manager.on")  # a wrong name fails at the decorator, not later

            def register(f: Callable[..., Any]) -> Callable[..., Any]:
                self.hooks.add(event, f)
                return f

            return register
        self.hooks.add(event, fn)
        return fn

    def off(self, event: str, fn: Callable[..., Any]) -> bool:
        """Stop calling `fn` for `event`; False if it was not registered for it."""
        return self.hooks.remove(event, fn)

    # -- enqueueing ----------------------------------------------------------

    def _submit(self, tasks: list[NewTask]) -> list[Task[Any]]:
        return [Task(self, task_id) for task_id in self.producer.submit(tasks)]

    def enqueue_many(self, signatures: Iterable[Signature]) -> list[Task[Any]]:
        """Enqueue many calls (`add.s(1, 2)`, ...) in one transaction: all or none."""
        with shielded():
            tasks = [s.task._new(s.args, s.kwargs, s.options) for s in signatures]
        return self._submit(tasks)

    # -- finding tasks -------------------------------------------------------

    def get(self, task_id: str) -> Task[Any] | Workflow | None:
        """A handle on a stored task, or on a workflow by its id (castor.chain(...).delay().id),
        or None if there is neither."""
        if self.store.status(task_id) is not None:
            return Task(self, task_id)
        record = self.store.workflow(task_id)
        return Workflow(self, task_id, record.kind) if record is not None else None

    get_task_by_id = get

    def AsyncResult(self, task_id: str) -> Task[Any]:  # noqa: N802 - Celery's spelling
        """A handle by id without checking that the task exists (Celery's habit)."""
        return Task(self, task_id)

    # -- acting on tasks -----------------------------------------------------

    def cancel(self, task_id: str) -> TaskStatus:
        """Cancel a task by id (see Task.cancel), or a workflow by its id (Workflow.cancel:
        the status returned is the workflow's state, spelled as a task's); raises
        UnknownTaskError if there is neither."""
        record = self.store.get(task_id)
        now = time.time()
        if record is None:
            state = self.cancel_workflow(task_id)
            if state is None:
                raise UnknownTaskError.missing(task_id)
            return TaskStatus(str(state))
        status = self.store.cancel(task_id, now=now,
                                   expires_at=self.expires_at(record.options, TaskStatus.CANCELLED, now))
        if status is None:
            raise UnknownTaskError.missing(task_id)
        if status == TaskStatus.CANCELLED and record.status in (TaskStatus.PENDING, TaskStatus.WAITING):
            task_log.cancelled_pending(record)  # its end: no worker will see it
            if self.hooks.listeners:
                self.hooks.cancelled_pending(record, now)
        return status

    revoke = cancel  # Celery's name

    def cancel_workflow(self, workflow_id: str) -> WorkflowStatus | None:
        """Workflow.cancel's store call, and the end lines and hooks of the members it
        ended (no worker sees them: they end here). None if there is no such workflow."""
        ended: list[TaskRecord] = []
        state = self.store.cancel_workflow(workflow_id, now=time.time(), ended=ended)
        for record in ended:
            task_log.cancelled_pending(record)
        if ended and self.hooks.listeners:
            self.hooks.released(ended, counted=False)
        return state

    def retry(self, task_id: str) -> Task[Any]:
        """Send one failed or cancelled task back to the queue, to run again now."""
        record = self.store.get(task_id)
        if record is None:
            raise UnknownTaskError.missing(task_id)
        status = record.status
        _refuse_member(record, "retried")
        if status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise ConfigurationError(f"task {task_id} is {status}; only failed or cancelled tasks can be retried")
        if not self.store.retry(task_id=task_id, now=time.time()):
            raise ConfigurationError(
                f"task {task_id} was not retried: an unfinished twin with the same unique key exists")
        return Task(self, task_id)

    def run_now(self, task_id: str) -> Task[Any]:
        """Make a pending task scheduled for later (an eta= or countdown=, or waiting
        out a retry's backoff) due now: the same task, id and attempts kept, taken by
        castord at once. Raises UnknownTaskError if there is none, ConfigurationError
        if it is not pending for later (due already, running, finished)."""
        record = self.store.get(task_id)
        if record is None:
            raise UnknownTaskError.missing(task_id)
        if not self.store.run_now(task_id, now=time.time()):
            record = self.store.get(task_id) or record  # as it is now: it may have changed meanwhile
            raise ConfigurationError(rerun.why_not_run_now(record))
        return Task(self, task_id)

    def run_again(self, task_id: str) -> Task[Any]:
        """Enqueue a new task doing what finished task `task_id` did: same name,
        arguments, queue, priority and options, a new id, due now (Sidekiq's and
        Oban's "run again"). The finished task stays as it is (retry() instead sends
        that same task back); the two are linked by their options rerun_of/rerun_as.
        A unique task's copy is refused (ConfigurationError) while an unfinished task
        holds its key; a task not finished is refused too."""
        record = self.store.get(task_id)
        if record is None:
            raise UnknownTaskError.missing(task_id)
        if not record.status.finished:
            raise ConfigurationError(rerun.why_not_run_again(record))
        _refuse_member(record, "run again")
        copy = rerun.copy_of(record, now=time.time(), concurrency_key=rerun.concurrency_key(self.store, task_id))
        (stored,) = self.producer.submit([copy])
        if stored != copy.id:
            raise ConfigurationError(rerun.held_by_twin(record, stored))
        # A second write, after the copy's: a failure here loses only the source's link.
        self.store.link_rerun(task_id, copy.id)
        return Task(self, copy.id)

    def retry_failed(self, *, name: str | None = None, queue: str | None = None,
                     status: str = "failed") -> RetriedTasks:
        """Send every failed (or cancelled) task, optionally of one name or queue, back to the
        queue. Returns their handles, a list whose `.skipped_members` counts the workflow
        members the filter matched and that stay as they are (not retried by hand)."""
        query = _query(status, name, queue)
        if query.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise ConfigurationError(f"retry_failed takes status 'failed' or 'cancelled', not {status!r}")
        retried: list[Task[Any]] = [Task(self, i) for i in self.store.retry(query, now=time.time())]
        return RetriedTasks(retried, skipped_members=members_left(self.store, query), status=str(query.status))

    def purge(self, *, older_than: float | timedelta | None = None, status: str | None = None,
              name: str | None = None, queue: str | None = None) -> int:
        """Delete finished tasks (success, failed, cancelled; never pending or running)
        that finished more than `older_than` ago. Returns how many went."""
        query = _query(status, name, queue)
        if query.status is not None and not query.status.finished:
            raise ConfigurationError(f"purge deletes finished tasks only, not {status} ones")
        seconds = validate_ttl(older_than, "older_than", "Manager.purge", allow_zero=True)
        before = None if seconds is None else time.time() - seconds
        return self.store.purge(Query(query.status, query.name, query.queue, finished_before=before))

    def failed(self, *, name: str | None = None, queue: str | None = None, limit: int | None = 100,
               offset: int = 0) -> list[Task[Any]]:
        """The failed tasks, newest first (inspect .error, .history, .attempts; .retry())."""
        return self.tasks("failed", name=name, queue=queue, limit=limit, offset=offset)

    def dirty(self, *, limit: int | None = 100) -> list[Task[Any]]:
        """Tasks whose worker vanished at least once while running them (killed
        process, lost machine), whatever their status now: worth a look, since a
        task may have done part of its work twice."""
        query = Query(dirty=True)
        return [Task(self, r.id) for r in self.store.list(query, limit=limit)]

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

    # -- pausing queues ------------------------------------------------------

    def pause_queue(self, name: str) -> bool:
        """Stop every castord on this store from claiming tasks of queue `name` (they
        stay pending; running ones finish). Persisted; any name may be paused, even one
        no task uses yet. Returns False if it was paused already."""
        return self.store.pause_queue(_queue_name(name, "pause_queue"))

    def resume_queue(self, name: str) -> bool:
        """Let castords claim from queue `name` again (they are woken at once).
        Returns False if it was not paused."""
        return self.store.resume_queue(_queue_name(name, "resume_queue"))

    def paused_queues(self) -> set[str]:
        """The queues paused now."""
        return self.store.paused_queues()

    # -- pausing task names (and queues, in one spelling) ----------------------

    def pause(self, *, name: str | None = None, queue: str | None = None) -> bool:
        """Stop every castord on this store from claiming the tasks of one task name
        (in every queue) or of one queue: `manager.pause(name="reports.build")`,
        `manager.pause(queue="mail")` (pause_queue's other spelling). They stay
        pending; running ones finish. Persisted. Returns False if it was paused already."""
        kind, value = _pause_target("pause", name, queue)
        return self.store.pause_name(value) if kind == "name" else self.store.pause_queue(value)

    def resume(self, *, name: str | None = None, queue: str | None = None) -> bool:
        """Undo pause(): castords claim that name's (or queue's) tasks again, woken at
        once. Returns False if it was not paused."""
        kind, value = _pause_target("resume", name, queue)
        return self.store.resume_name(value) if kind == "name" else self.store.resume_queue(value)

    def paused_names(self) -> set[str]:
        """The task names paused now."""
        return self.store.paused_names()

    # -- rate limits (castor/rate_limits.py) -----------------------------------

    def rate_limit(self, *, queue: str | None = None, limit: str | None, burst: int | None = None) -> bool:
        """Limit how fast every castord on this store starts the tasks of `queue`:
        `manager.rate_limit(queue="emails", limit="10/s", burst=5)` (burst: how many may
        start at once after an idle spell, default 1). Persisted. limit=None removes it
        (True if there was one). A task name's limit is the decorator's rate_limit=."""
        if not isinstance(queue, str) or not queue:
            raise ConfigurationError("Manager.rate_limit takes queue= (a queue name, a non-empty str), "
                                     f"not {queue!r}; e.g. manager.rate_limit(queue='emails', limit='10/s')")
        parsed = parse_rate_limit(limit, "Manager.rate_limit", burst, burst_name="burst", limit_name="limit")
        if parsed is None:
            return self.store.remove_rate_limit("queue", queue)
        self.store.set_rate_limit("queue", queue, rate=parsed.rate, burst=parsed.burst)
        return True

    def rate_limits(self) -> dict[str, dict[str, Any]]:
        """Every stored limit, as {"name:<task name>" or "queue:<queue>": {"rate" (tasks a
        second), "burst", "tokens" (as of now)}}."""
        return {f"{kind}:{name}": limit for (kind, name), limit in sorted(self.store.rate_limits().items())}

    def sync_rate_limits(self) -> None:
        """Store this app's task-name limits (rate_limit=) and drop those of its names
        declared without one: what a worker does as it starts."""
        limits = {name: (fn.options.rate_limit.rate, fn.options.rate_limit.burst)
                  for name, fn in self.registry.items() if fn.options.rate_limit is not None}
        self.store.sync_name_rate_limits(limits, unlimited=[n for n in self.registry if n not in limits])

    # -- concurrency limits (castor/concurrency.py) ------------------------------

    def concurrency_limits(self) -> dict[str, dict[str, Any]]:
        """Every stored limit, as {task name: {"limit", "per_key" (a limit per
        concurrency_key value), "running" (its limited tasks running now, every key)}}."""
        return self.store.concurrency_limits()

    def sync_concurrency_limits(self) -> None:
        """Store this app's concurrency= limits and drop those of its names declared
        without one: what a worker does as it starts."""
        limits = {name: (fn.options.concurrency.limit, fn.options.concurrency.per_key)
                  for name, fn in self.registry.items() if fn.options.concurrency is not None}
        self.store.sync_concurrency_limits(limits, unlimited=[n for n in self.registry if n not in limits])

    # -- periodic schedules (castor/periodic.py) ------------------------------

    def disable_schedule(self, name: str) -> bool:
        """Stop every castord on this store from firing periodic task `name`'s ticks
        (persisted; a tick already fired runs). Returns False if it was disabled
        already. An unknown name raises UnknownTaskError."""
        return self.store.disable_schedule(self._schedule_name(name))

    def enable_schedule(self, name: str) -> bool:
        """Let schedule `name` fire again, from its next tick: the ticks that passed
        while it was disabled are skipped, never fired in a burst. Returns False if
        it was not disabled."""
        return self.store.enable_schedule(self._schedule_name(name))

    def disabled_schedules(self) -> set[str]:
        """The schedules disabled now (names as stored, registered here or not)."""
        return self.store.disabled_schedules()

    def run_schedule_now(self, name: str) -> Task[Any]:
        """Enqueue periodic task `name` once, now, as a tick would (no arguments, the
        task's own options). Its regular ticks do not move; a disabled schedule can
        still be run by hand."""
        return self.registry[self._schedule_name(name)].delay()

    def _schedule_name(self, name: Any) -> str:
        self.import_tasks()  # schedules registered by the include= modules
        if isinstance(name, str) and name in self.schedules:
            return name
        known = ", ".join(sorted(self.schedules)) or "none"
        raise UnknownTaskError(f"no periodic task named {name!r} in this app (its schedules: {known})")

    def close(self) -> None:
        """Close castor's connections, and the BeaverDB if castor opened it (one you
        passed in stays yours to close)."""
        self.store.close()
        if self._owns_db and self._db is not None:
            if self._db_pid == os.getpid():  # a forked copy's would hang: see db
                self._db.close()
            self._db = None
            self._owns_db = False

    def __repr__(self) -> str:
        return f"<castor.Manager {display_url(self.store.url)} tasks={len(self.registry)}>"


def _refuse_member(record: TaskRecord, what: str) -> None:
    """A workflow member is not retried or run again by hand: without its predecessors'
    results it would run with the wrong arguments, and its workflow has ended."""
    if record.workflow_id is not None:
        raise WorkflowMemberRetry(
            f"task {record.id} is a member of workflow {record.workflow_id}, and a member is not {what} by "
            "hand: it would run without the results of the tasks before it, and its workflow has ended. "
            "Enqueue the workflow again instead")


def _query(status: str | None, name: str | None, queue: str | None) -> Query:
    parsed: TaskStatus | None = parse_status(status) if status is not None else None
    return Query(status=parsed, name=name, queue=queue)


def _pause_target(where: str, name: Any, queue: Any) -> tuple[str, str]:
    """("name" or "queue", the value) from pause()/resume()'s keywords: exactly one."""
    if (name is None) == (queue is None):
        raise ConfigurationError(f"Manager.{where} takes name= (a task name) or queue= (a queue), exactly one; "
                                 f"e.g. manager.{where}(name='reports.build')")
    value = name if name is not None else queue
    kind = "name" if name is not None else "queue"
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"Manager.{where} takes a {'task' if kind == 'name' else 'queue'} name "
                                 f"(a non-empty str) as {kind}=, not {value!r}")
    return kind, value


def _queue_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"Manager.{where} takes a queue name (a non-empty str), not {name!r}")
    return name
