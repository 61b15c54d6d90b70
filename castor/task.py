"""What `@manager.task(...)` returns: the function, plus delay/apply_async/s."""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast

from castor.concurrency import ConcurrencyLimit, parse_concurrency
from castor.durations import to_seconds
from castor.errors import ConfigurationError
from castor.expiry import Expiry, parse_expires
from castor.handle import Task
from castor.interrupts import shielded
from castor.rate_limits import RateLimit, parse_rate_limit
from castor.retries import RETRY_OPTIONS, build_policy

if TYPE_CHECKING:
    from castor.canvas import Chain, Chord, Group
    from castor.manager import Manager

P = ParamSpec("P")
R = TypeVar("R")

MODES = ("thread", "process")


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """A task's defaults, validated once at decoration time."""

    name: str
    mode: str
    daemon: bool = False
    queue: str = "default"
    priority: int = 0
    timeout: float | None = None
    # unique=True (key from the arguments), or a function of the arguments returning the key.
    unique: bool | Callable[..., Any] = False
    cache_ttl: float | None = None
    # validate=True: checks .delay()'s arguments against the type hints (castor.validation).
    validator: Callable[[tuple[Any, ...], dict[str, Any]], None] | None = None
    # expires=: each call turns it into an absolute time in its record's options.
    expires: Expiry | None = None
    # rate_limit= (and rate_burst=): how fast the fleet starts this name's tasks; a
    # worker stores it as it starts (Store.sync_name_rate_limits).
    rate_limit: RateLimit | None = None
    # concurrency= (and concurrency_key=): how many of this name's tasks (per key) the
    # fleet runs at once; the producer stores each call's key, a worker the limit.
    concurrency: ConcurrencyLimit | None = None
    # What every task record of this function carries in its options column
    # (timeout, retry policy, TTLs), already validated; shared, never mutated.
    stored: dict[str, Any] = field(default_factory=dict)
    # The decorator's storable options as given, merged with per-call ones.
    raw: dict[str, Any] = field(default_factory=dict)


# Options that live in each task record (the worker reads them from there).
STORED_OPTIONS = ("timeout", *RETRY_OPTIONS, "result_ttl", "failure_ttl")
DECORATOR_OPTIONS = ("mode", "daemon", "name", "queue", "priority", *STORED_OPTIONS, "unique",
                     "cache_ttl", "validate", "expires", "rate_limit", "rate_burst", "concurrency", "concurrency_key")
CALL_OPTIONS = ("countdown", "eta", "priority", "queue", "task_id", *STORED_OPTIONS, "unique", "cache_ttl",
                "expires")


def build_options(fn: Callable[..., Any], options: dict[str, Any]) -> TaskOptions:
    unknown = [k for k in options if k not in DECORATOR_OPTIONS]
    if unknown:
        raise ConfigurationError(_unknown_message("@manager.task", unknown[0], DECORATOR_OPTIONS))
    mode = options.get("mode")
    where = f"@manager.task on {getattr(fn, '__qualname__', fn)!r}"
    if mode is None:
        raise ConfigurationError(
            f"{where}: mode is mandatory; write @manager.task(mode='thread') for I/O-bound "
            "work or @manager.task(mode='process') for CPU-bound work"
        )
    if mode not in MODES:
        raise ConfigurationError(f"{where}: mode must be 'thread' or 'process', not {mode!r}")
    daemon = options.get("daemon", False)
    if not isinstance(daemon, bool):
        raise ConfigurationError(f"{where}: daemon must be True or False, not {daemon!r}")
    name = options.get("name") or f"{fn.__module__}.{fn.__qualname__}"
    if not isinstance(name, str):
        raise ConfigurationError(f"{where}: name must be a string, not {name!r}")
    raw = {k: v for k, v in options.items() if k in STORED_OPTIONS}
    stored = stored_options(raw, where)
    validator = None
    if options.get("validate", False):
        from castor.validation import build_validator

        validator = build_validator(fn, where)
    elif not isinstance(options.get("validate", False), bool):
        raise ConfigurationError(f"{where}: validate must be True or False, not {options['validate']!r}")
    return TaskOptions(
        name=name, mode=mode, daemon=daemon,
        queue=validate_queue(options.get("queue", "default"), where),
        priority=validate_priority(options.get("priority", 0), where),
        timeout=stored.get("timeout"),
        unique=validate_unique(options.get("unique", False), where),
        cache_ttl=validate_ttl(options.get("cache_ttl"), "cache_ttl", where, allow_zero=False),
        validator=validator, expires=parse_expires(options.get("expires"), where),
        rate_limit=parse_rate_limit(options.get("rate_limit"), where, options.get("rate_burst")),
        concurrency=parse_concurrency(fn, options.get("concurrency"), options.get("concurrency_key"), where),
        stored=stored, raw=raw,
    )


def stored_options(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """Validate the options a task record carries; JSON-ready, defaults left out."""
    stored: dict[str, Any] = {}
    timeout = validate_timeout(raw.get("timeout"), where)
    if timeout is not None:
        stored["timeout"] = timeout
    stored.update(build_policy(raw, where).to_options())
    for key in ("result_ttl", "failure_ttl"):
        ttl = validate_ttl(raw.get(key), key, where, allow_zero=key == "result_ttl")
        if ttl is not None:
            stored[key] = ttl
    return stored


def validate_ttl(value: Any, what: str, where: str, *, allow_zero: bool) -> float | None:
    try:
        seconds = to_seconds(value, what)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if seconds is not None and seconds == 0 and not allow_zero:
        raise ConfigurationError(f"{where}: {what} must be more than 0 seconds")
    return seconds


def validate_unique(value: Any, where: str) -> bool | Callable[..., Any]:
    if isinstance(value, bool) or callable(value):
        return value
    raise ConfigurationError(
        f"{where}: unique must be True, False or a function of the task's arguments that returns "
        f"the key, not {value!r}")


def validate_timeout(timeout: Any, where: str) -> float | None:
    try:
        seconds = to_seconds(timeout, "timeout")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{where}: {exc}") from None
    if seconds is not None and seconds <= 0:
        raise ConfigurationError(f"{where}: timeout must be more than 0 seconds, not {timeout!r}")
    return seconds


def validate_queue(queue: Any, where: str) -> str:
    if not isinstance(queue, str) or not queue.strip():
        raise ConfigurationError(f"{where}: queue must be a non-empty string, not {queue!r}")
    return queue


# The range SQLite stores in an INTEGER column (a larger int would fail at the INSERT).
PRIORITY_RANGE = (-(2**63), 2**63 - 1)


def validate_priority(priority: Any, where: str) -> int:
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise ConfigurationError(f"{where}: priority must be an integer (higher runs first), not {priority!r}")
    if not PRIORITY_RANGE[0] <= priority <= PRIORITY_RANGE[1]:
        raise ConfigurationError(
            f"{where}: priority {priority} is out of range; use a 64-bit integer (e.g. 0 to 9, higher runs first)")
    return priority


def check_call_options(where: str, options: dict[str, Any]) -> None:
    unknown = [k for k in options if k not in CALL_OPTIONS]
    if unknown:
        raise ConfigurationError(_unknown_message(where, unknown[0], CALL_OPTIONS))


def _unknown_message(where: str, option: str, valid: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(option, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown option {option!r}.{hint} Valid options: {', '.join(valid)}"


class TaskFunction(Generic[P, R]):
    """A registered task. Calling it runs the function inline; `.delay()` enqueues it."""

    def __init__(self, manager: Manager, fn: Callable[P, R], options: TaskOptions):
        self.manager = manager
        self.fn = fn
        self.options = options
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    @property
    def name(self) -> str:
        return self.options.name

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> Task[R]:
        """Enqueue with the task's defaults; durable once it returns."""
        with shielded():  # serialization, like the store, is never interrupted halfway
            new = self._new(args, kwargs, {})
        return self.manager._submit([new])[0]

    def apply_async(
        self, args: Iterable[Any] = (), kwargs: dict[str, Any] | None = None, *,
        link: Signature | Sequence[Signature] | None = None, link_error: Signature | None = None,
        **options: Any,
    ) -> Task[R]:
        """Enqueue with per-call options (Celery's spelling): countdown, eta, priority,
        queue, task_id, timeout, retries (and retry_*), result_ttl, failure_ttl, unique,
        cache_ttl, expires.

        link=: signature(s) enqueued waiting, run with this task's result as their first
        argument once it succeeds; link_error=: one run with (task id, error dict) if it
        fails for good. Both make a workflow of it (docs/workflows.md): `.workflow`."""
        check_call_options(f"{self.name}.apply_async", options)
        if link is not None or link_error is not None:
            from castor.canvas import enqueue_link

            return cast("Task[R]", enqueue_link(Signature(self, tuple(args), dict(kwargs or {}), options),
                                                link, link_error))
        with shielded():
            new = self._new(tuple(args), dict(kwargs or {}), options)
        return self.manager._submit([new])[0]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A frozen call, to enqueue later or in a batch with manager.enqueue_many(). In a
        chain (or as a link) it gets the previous step's result before these arguments."""
        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable frozen call: in a chain (or as a link) it gets only these arguments."""
        return Signature(self, args, kwargs, immutable=True)

    def map(self, calls: Iterable[Iterable[Any]]) -> list[Task[R]]:
        """Enqueue one task per argument tuple, in one transaction."""
        with shielded():
            tasks = [self._new(tuple(a), {}, {}) for a in calls]
        return self.manager._submit(tasks)

    def _new(self, args: tuple[Any, ...], kwargs: dict[str, Any], options: dict[str, Any]) -> Any:
        return self.manager.producer.new_task(self, args, kwargs, options)

    def __repr__(self) -> str:
        return f"<castor task {self.name} mode={self.options.mode}>"


@dataclass(frozen=True)
class Signature:
    """A task with its arguments (and per-call options) bound, not yet enqueued."""

    task: TaskFunction[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    # .si(): a workflow member that gets nothing from the step before it.
    immutable: bool = False

    def set(self, **options: Any) -> Signature:
        check_call_options("Signature.set", options)
        return Signature(self.task, self.args, self.kwargs, {**self.options, **options}, self.immutable)

    def delay(self) -> Task[Any]:
        return self.apply_async()

    def apply_async(self, *, link: Signature | Sequence[Signature] | None = None,
                    link_error: Signature | None = None, **options: Any) -> Task[Any]:
        merged = self.set(**options) if options else self
        return merged.task.apply_async(merged.args, merged.kwargs, link=link, link_error=link_error,
                                       **merged.options)

    def __or__(self, other: Signature | Chain | Group | Chord) -> Chain:
        """`a.s(1) | b.s()`: the chain of the two (castor.chain)."""
        from castor.canvas import chain

        return chain(self, other)
