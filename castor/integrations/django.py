"""A backend for Django's task framework (`django.tasks`, Django 6.0+): Django's
`@task` functions enqueue into castor, and castord runs them (docs/django.md).

    # settings.py
    TASKS = {
        "default": {
            "BACKEND": "castor.integrations.django.CastorBackend",
            "QUEUES": ["default", "emails"],    # Django's own setting; [] allows any name
            "OPTIONS": {"DATABASE": BASE_DIR / "tasks.db"},
        }
    }

    $ DJANGO_SETTINGS_MODULE=mysite.settings castord start castor.integrations.django:manager

Every Django task is stored as a castor task named after its backend
("django:default") whose arguments are the Django task's module path, its args
and its kwargs. In the worker, that castor task imports the Django task by its
path and calls it, with Django set up (`castor.integrations.django:manager`
runs `django.setup()` in each castord child as it loads). One castord runs the
tasks of every castor backend that shares a DATABASE, each in its backend's MODE.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

try:
    import django
    from django.conf import settings
    from django.core import checks
    from django.tasks import DEFAULT_TASK_BACKEND_ALIAS, Task, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import InvalidTask, InvalidTaskBackend, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
    from django.utils.module_loading import import_string
except ImportError as exc:  # no Django, or one older than 6.0 (no django.tasks)
    raise ImportError(
        f"castor.integrations.django needs Django 6.0 or later ({exc}); pip install 'castor[django]'"
    ) from exc

from castor import context
from castor.app import AppLoadError
from castor.durations import to_epoch
from castor.errors import CastorError, ConfigurationError, SerializationError, TaskCancelled, UnknownTaskError
from castor.manager import Manager
from castor.serialization import encode_call, get_serializer
from castor.states import TaskStatus
from castor.store import TaskRecord
from castor.task import MODES, STORED_OPTIONS, build_options

__all__ = ["CastorBackend", "get_manager", "task_name"]

# The castor tasks Django tasks are stored as: "django:" and the backend's alias.
TASK_PREFIX = "django:"
OPTION_KEYS = ("DATABASE", "MODE", "TASK_OPTIONS")
# castor options a backend may give the stored tasks (the rest come from Django:
# priority and queue per task, the mode from MODE).
TASK_OPTION_KEYS = ("daemon", *STORED_OPTIONS)

_CANCELLED = f"{TaskCancelled.__module__}.{TaskCancelled.__qualname__}"
_STATUSES = {
    TaskStatus.PENDING: TaskResultStatus.READY,  # also: waiting for a retry
    TaskStatus.RUNNING: TaskResultStatus.RUNNING,
    TaskStatus.SUCCESS: TaskResultStatus.SUCCESSFUL,
    TaskStatus.FAILED: TaskResultStatus.FAILED,
    TaskStatus.CANCELLED: TaskResultStatus.FAILED,  # Django has no "cancelled"; errors say TaskCancelled
    TaskStatus.WAITING: TaskResultStatus.READY,  # a workflow member whose turn has not come
}


@dataclass(frozen=True)
class BackendOptions:
    """A backend's OPTIONS, checked."""

    database: str  # absolute
    relative: bool  # DATABASE was given relative to the working directory
    mode: str
    task_options: dict[str, Any]


def parse_options(alias: str, options: Any) -> BackendOptions:
    """Check TASKS[alias]["OPTIONS"]; InvalidTaskBackend says what to fix."""
    where = f"TASKS[{alias!r}]['OPTIONS']"
    if not isinstance(options, dict):
        raise InvalidTaskBackend(f"{where} must be a dict, not {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in OPTION_KEYS)
    if unknown:
        raise InvalidTaskBackend(f"{where}: unknown option {unknown[0]!r}; the options are {', '.join(OPTION_KEYS)}")
    database = options.get("DATABASE")
    if not isinstance(database, (str, os.PathLike)) or not os.fspath(database):
        raise InvalidTaskBackend(
            f"{where}['DATABASE'] must be the path of castor's database file, e.g. BASE_DIR / 'tasks.db', "
            f"not {database!r}")
    path = os.fspath(database)
    mode = options.get("MODE", "thread")
    if mode not in MODES:
        raise InvalidTaskBackend(
            f"{where}['MODE'] must be 'thread' (castord's thread host runs the tasks) or 'process' "
            f"(its process children do), not {mode!r}")
    task_options = options.get("TASK_OPTIONS", {})
    if not isinstance(task_options, dict):
        raise InvalidTaskBackend(f"{where}['TASK_OPTIONS'] must be a dict, not {type(task_options).__name__}")
    refused = sorted(str(k) for k in task_options if k not in TASK_OPTION_KEYS)
    if refused:
        raise InvalidTaskBackend(
            f"{where}['TASK_OPTIONS']: {refused[0]!r} is not one castor takes here; the options are "
            f"{', '.join(TASK_OPTION_KEYS)} (priority and queue come from each Django task, the mode from MODE)")
    try:
        build_options(run_django_task, {"mode": mode, "name": task_name(alias), **task_options})
    except ConfigurationError as exc:
        reason = str(exc).split(": ", 1)[-1]  # without castor's "@manager.task on ...:" prefix
        raise InvalidTaskBackend(f"{where}['TASK_OPTIONS']: {reason}") from None
    return BackendOptions(os.path.abspath(path), not os.path.isabs(path), mode, dict(task_options))


def _check_queues(alias: str, queues: Any) -> None:
    if isinstance(queues, (str, bytes)) or not isinstance(queues, Iterable):
        raise InvalidTaskBackend(f"TASKS[{alias!r}]['QUEUES'] must be a list of queue names, not {queues!r}")
    for name in queues:
        if not isinstance(name, str) or not name.strip():
            raise InvalidTaskBackend(
                f"TASKS[{alias!r}]['QUEUES'] holds {name!r}; a queue name is a non-empty string")


def task_name(alias: str) -> str:
    """The castor task name under which backend `alias` stores its Django tasks."""
    return f"{TASK_PREFIX}{alias}"


# One Manager per database file in a process, shared by every backend on it (Django
# makes a backend per thread; aliases may share a file) and by its threads, as
# castor's store allows. Each alias registers its own castor task on it.
_managers: dict[str, Manager] = {}
_managers_lock = threading.Lock()


def _manager_for(alias: str, options: BackendOptions) -> Manager:
    with _managers_lock:
        manager = _managers.get(options.database)
        if manager is None:
            manager = _managers[options.database] = Manager(options.database)
        if task_name(alias) not in manager.registry:
            manager.task(mode=options.mode, name=task_name(alias), **options.task_options)(run_django_task)
        return manager


class CastorBackend(BaseTaskBackend):
    """TASKS = {"default": {"BACKEND": "castor.integrations.django.CastorBackend", ...}}."""

    supports_defer = True  # run_after -> castor's eta
    supports_async_task = True  # Task.call runs a coroutine function to completion
    supports_get_result = True  # from any process: results live in castor's file
    supports_priority = True  # the same scale direction: higher runs first

    def __init__(self, alias: str, params: dict[str, Any]):
        _check_queues(alias, params.get("QUEUES", []))
        super().__init__(alias, params)
        self.castor_options = parse_options(alias, self.options)

    @property
    def manager(self) -> Manager:
        """The castor Manager on this backend's DATABASE (opened on first use)."""
        return _manager_for(self.alias, self.castor_options)

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        manager = self.manager
        # Checked here so that the message names the Django task and its argument.
        try:
            encode_call(manager.serializer, task.module_path, tuple(args), dict(kwargs))
        except SerializationError as exc:
            reason = str(exc).split(" Pass plain JSON types")[0]  # castor's hint names a Manager option
            raise SerializationError(f"{reason} Django task arguments must be JSON values: str, int, float, "
                                     "bool, None, and lists and dicts of them.") from None
        run_after = None if task.run_after is None else to_epoch(task.run_after, "run_after")
        handle = manager.registry[task_name(self.alias)].apply_async(
            (task.module_path, list(args), dict(kwargs)), {"backend": self.alias, "run_after": run_after},
            priority=task.priority, queue=task.queue_name, eta=run_after,
        )
        result = task_result(handle.info(), task)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        try:
            record = self.manager.AsyncResult(result_id).info()
        except UnknownTaskError:
            raise TaskResultDoesNotExist(result_id) from None
        if not record.name.startswith(TASK_PREFIX):  # a castor task of the application's own
            raise TaskResultDoesNotExist(result_id)
        return task_result(record)

    def check(self, **kwargs: Any) -> list[checks.CheckMessage]:
        messages = list(super().check(**kwargs))
        options = self.castor_options
        if options.relative:
            messages.append(checks.Warning(
                f"TASKS[{self.alias!r}]: castor's DATABASE is a relative path; it resolves to "
                f"{options.database} here, and to another file in a castord started from another directory",
                hint="Use an absolute path, e.g. BASE_DIR / 'tasks.db'.", id="castor.W001"))
        try:
            self.manager.count()  # opens the file and reads castor's tables
        except (CastorError, OSError) as exc:
            messages.append(checks.Error(
                f"TASKS[{self.alias!r}]: castor cannot use its DATABASE: {exc}",
                hint="Check that the directory exists and is writable by this user.", id="castor.E001"))
        return messages


# -- a castor record as a Django TaskResult -------------------------------------------------


def task_result(record: TaskRecord, task: Task | None = None) -> TaskResult:
    """Django's view of a stored "django:<alias>" record (`task`: the Task, if at hand)."""
    path, args, kwargs = get_serializer(record.serializer).loads(record.args)
    options = get_serializer(record.serializer).loads(record.kwargs)
    if task is None:
        run_after = options.get("run_after")
        task = _django_task(path).using(
            priority=record.priority, queue_name=record.queue, backend=options["backend"],
            run_after=None if run_after is None else _datetime(run_after))
    status = _STATUSES[record.status]
    result = TaskResult(
        task=task, id=record.id, status=status, enqueued_at=_datetime(record.enqueued_at),
        started_at=_datetime(record.started_at), last_attempted_at=_datetime(record.started_at),
        finished_at=_datetime(record.finished_at) if record.status.finished else None,
        args=args, kwargs=kwargs, backend=options["backend"], errors=_errors(record),
        worker_ids=_worker_ids(record),
    )
    if status == TaskResultStatus.SUCCESSFUL and record.result is not None:
        object.__setattr__(result, "_return_value", get_serializer(record.serializer).loads(record.result))
    return result


def _datetime(epoch: float | None) -> datetime | None:
    """A stored time as Django's timezone.now() gives it: aware UTC, or naive local time
    when USE_TZ is off."""
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=UTC) if settings.USE_TZ else datetime.fromtimestamp(epoch)


def _errors(record: TaskRecord) -> list[TaskError]:
    """One TaskError per failed attempt. castor keeps the whole traceback of the latest
    error only; earlier attempts have their type and message."""
    errors = [TaskError(exception_class_path=h.get("type") or "builtins.Exception",
                        traceback=f"{h.get('type')}: {h.get('message')}\n") for h in record.history]
    last = record.error
    if last:
        latest = TaskError(exception_class_path=last.get("type") or "builtins.Exception",
                           traceback=last.get("traceback") or f"{last.get('type')}: {last.get('message')}\n")
        same = record.history and (record.history[-1].get("type"), record.history[-1].get("message")) == \
            (last.get("type"), last.get("message"))
        if same:
            errors[-1] = latest
        else:  # an error without a history entry: a lost worker, a cancellation
            errors.append(latest)
    elif record.status == TaskStatus.CANCELLED:  # cancelled before it ever ran
        errors.append(TaskError(exception_class_path=_CANCELLED,
                                traceback=f"{_CANCELLED}: task {record.id} was cancelled before it ran\n"))
    return errors


def _worker_ids(record: TaskRecord) -> list[str]:
    """One entry per attempt (Django counts attempts by this list's length): the
    latest attempt's castor worker; "" for earlier ones, which castor does not record."""
    if not record.attempts:
        return []
    return [""] * (record.attempts - 1) + [record.owner or ""]


def _django_task(path: str) -> Task:
    task = import_string(path)
    if not isinstance(task, Task):
        raise InvalidTask(f"{path} is a {type(task).__name__}, not a django.tasks Task (made by @task)")
    return task


# -- the castor task that runs a Django task in a castord child ------------------------------


def run_django_task(path: str, args: list[Any], kwargs: dict[str, Any], *, backend: str,
                    run_after: float | None = None) -> Any:
    """Import the Django task at `path` and call it, as castor's "django:<alias>"."""
    from django.db import close_old_connections

    _setup_django()
    current = context.current()
    record = current.store.get(current.record.id) if current is not None else None
    result = task_result(record or current.record) if current is not None else None
    task = result.task if result is not None else _django_task(path).using(backend=backend)
    if result is not None:
        task_started.send(CastorBackend, task_result=result)
    close_old_connections()  # as Django does around a request: drop connections past CONN_MAX_AGE
    try:
        if task.takes_context:
            if result is None:
                raise InvalidTask(f"{path} takes a context, which only a castor worker can give it")
            value = task.call(TaskContext(task_result=result), *args, **kwargs)
        else:
            value = task.call(*args, **kwargs)
        value = normalize_json(value)
    except BaseException:
        if result is not None:
            task_finished.send(CastorBackend, task_result=dataclasses.replace(
                result, status=TaskResultStatus.FAILED, finished_at=_datetime(time.time())))
        raise
    finally:
        close_old_connections()
    if result is not None:
        done = dataclasses.replace(result, status=TaskResultStatus.SUCCESSFUL, finished_at=_datetime(time.time()))
        object.__setattr__(done, "_return_value", value)
        task_finished.send(CastorBackend, task_result=done)
    return value


def _setup_django() -> None:
    from django.apps import apps

    if not apps.ready:
        django.setup()


# -- the Manager castord loads ----------------------------------------------------------------


def get_manager(alias: str = DEFAULT_TASK_BACKEND_ALIAS) -> Manager:
    """The castor Manager of Django's TASKS[alias], with Django set up first: for
    castord's APP (`castor.integrations.django:manager` is the default alias's).
    It runs the tasks of every castor backend whose DATABASE is the same file."""
    try:
        _setup_django()
    except Exception as exc:  # noqa: BLE001 - settings missing, or failing to import
        raise AppLoadError(
            f"castor.integrations.django could not set Django up ({type(exc).__name__}: {exc}); "
            "set DJANGO_SETTINGS_MODULE to your settings module, e.g. "
            "DJANGO_SETTINGS_MODULE=mysite.settings castord start castor.integrations.django:manager"
        ) from exc
    from django.tasks import task_backends

    try:
        backend = task_backends[alias]
        if not isinstance(backend, CastorBackend):
            raise AppLoadError(
                f"TASKS[{alias!r}] uses {type(backend).__module__}.{type(backend).__qualname__}, not "
                "castor.integrations.django.CastorBackend: castord has nothing of it to run")
        manager = backend.manager
        # The other castor backends on this file register their castor tasks too,
        # so that a castord on this Manager runs all of them.
        for other in task_backends.settings:
            if other != alias and issubclass(import_string(task_backends.settings[other]["BACKEND"]), CastorBackend):
                sibling = task_backends[other]
                if sibling.castor_options.database == backend.castor_options.database:
                    sibling.manager  # noqa: B018 - registers its castor task on the shared Manager
    except (InvalidTaskBackend, ImportError) as exc:
        raise AppLoadError(f"Django's TASKS setting: {exc}") from exc
    return manager


def __getattr__(name: str) -> Any:
    # `castord start castor.integrations.django:manager`: resolved only when asked,
    # so that importing this module (as Django does for BACKEND) sets nothing up.
    if name == "manager":
        return get_manager()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
