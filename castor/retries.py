"""Retry policy: which failures run again, and after how long (pure; no I/O)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from castor.durations import MAX_SECONDS
from castor.errors import ConfigurationError, Retry, TaskCancelled, UnknownTaskError
from castor.failures import class_path

DEFAULT_DELAY = 1.0
DEFAULT_BACKOFF = 2.0
DEFAULT_MAX_DELAY = 600.0
# A retry_backoff past this makes the second retry wait longer than any cap.
MAX_BACKOFF = 1000.0
# `raise castor.Retry()` in a task without retries= may retry this many times.
DEFAULT_EXPLICIT_RETRIES = 3

# Failures that another attempt cannot fix.
_NEVER_RETRIED = (TaskCancelled, UnknownTaskError)


def type_name(cls: type) -> str:
    return class_path(cls)  # never raises, whatever the class's __module__ or metaclass


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """retries: how many more attempts after the first may run.
    retry_on: exception type names that qualify (with their subclasses); empty
    means any Exception. The n-th retry waits delay * backoff**(n-1) seconds,
    capped at max_delay; with jitter, a random point in the upper half of that
    (so that tasks failing together do not retry together)."""

    retries: int = 0
    retry_on: tuple[str, ...] = ()
    delay: float = DEFAULT_DELAY
    backoff: float = DEFAULT_BACKOFF
    max_delay: float = DEFAULT_MAX_DELAY
    jitter: bool = True

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RetryPolicy:
        """From a stored task's options (as `to_options` wrote them)."""
        if "retries" not in options and "retry_delay" not in options:
            return _NO_RETRIES
        return cls(
            retries=options.get("retries", 0),
            retry_on=tuple(options.get("retry_on", ())),
            delay=options.get("retry_delay", DEFAULT_DELAY),
            backoff=options.get("retry_backoff", DEFAULT_BACKOFF),
            max_delay=options.get("retry_max_delay", DEFAULT_MAX_DELAY),
            jitter=options.get("retry_jitter", True),
        )

    def to_options(self) -> dict[str, Any]:
        """The non-default fields, as stored in a task's options."""
        out: dict[str, Any] = {}
        if self.retries:
            out["retries"] = self.retries
        if self.retry_on:
            out["retry_on"] = list(self.retry_on)
        for key, value, default in (("retry_delay", self.delay, DEFAULT_DELAY),
                                    ("retry_backoff", self.backoff, DEFAULT_BACKOFF),
                                    ("retry_max_delay", self.max_delay, DEFAULT_MAX_DELAY),
                                    ("retry_jitter", self.jitter, True)):
            if value != default:
                out[key] = value
        return out

    def retry_in(self, exc: BaseException, attempt: int,
                 rand: Callable[[], float] = random.random) -> float | None:
        """Seconds until the next attempt after `attempt` failed with `exc`; None: no retry."""
        # issubclass(type(exc)): isinstance would ask the exception for its __class__.
        cls = type(exc)
        if issubclass(cls, _NEVER_RETRIED) or not issubclass(cls, Exception):
            return None
        if issubclass(cls, Retry) and isinstance(exc, Retry):  # (isinstance for mypy: true by now)
            limit = exc.max_retries if exc.max_retries is not None else (
                self.retries or DEFAULT_EXPLICIT_RETRIES)
            if attempt > limit:
                return None
            if exc.delay is not None:  # (NaN -> 0; past a century -> a century)
                return min(max(0.0, float(exc.delay)), MAX_SECONDS)
        elif attempt > self.retries or not self._matches(exc):
            return None
        try:
            wait = min(self.max_delay, self.delay * self.backoff ** (attempt - 1))
        except OverflowError:  # backoff ** attempt past a float's range: the cap, as for any long wait
            wait = self.max_delay
        return wait * (0.5 + 0.5 * rand()) if self.jitter else wait

    def _matches(self, exc: BaseException) -> bool:
        if not self.retry_on:
            return True
        mro = type.__dict__["__mro__"].__get__(type(exc))  # past a metaclass that hides __mro__
        return any(type_name(cls) in self.retry_on for cls in mro)


_NO_RETRIES = RetryPolicy()


def build_policy(options: dict[str, Any], where: str) -> RetryPolicy:
    """Validate retries= and friends (decorator or apply_async) into a policy."""
    retries = options.get("retries", 0)
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ConfigurationError(f"{where}: retries must be an integer ≥ 0, not {retries!r}")
    retry_on = _exception_names(options.get("retry_on", ()), where)
    numbers = {}
    for key, default, minimum in (("retry_delay", DEFAULT_DELAY, 0.0), ("retry_backoff", DEFAULT_BACKOFF, 1.0),
                                  ("retry_max_delay", DEFAULT_MAX_DELAY, 0.0)):
        value = options.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
            raise ConfigurationError(f"{where}: {key} must be a number ≥ {minimum:g}, not {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        limit = MAX_BACKOFF if key == "retry_backoff" else MAX_SECONDS
        if number > limit:
            raise ConfigurationError(f"{where}: {key} must be at most {limit:.0f}, not {value!r}")
        numbers[key] = number
    jitter = options.get("retry_jitter", True)
    if not isinstance(jitter, bool):
        raise ConfigurationError(f"{where}: retry_jitter must be True or False, not {jitter!r}")
    return RetryPolicy(retries, retry_on, numbers["retry_delay"], numbers["retry_backoff"],
                       numbers["retry_max_delay"], jitter)


def _exception_names(value: Any, where: str) -> tuple[str, ...]:
    items: Iterable[Any] = value if isinstance(value, (tuple, list)) else (value,)
    names = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            names.append(type_name(item))
        else:
            raise ConfigurationError(
                f"{where}: retry_on takes exception classes, e.g. retry_on=(ConnectionError,), "
                f"not {item!r}")
    return tuple(names)


RETRY_OPTIONS = ("retries", "retry_on", "retry_delay", "retry_backoff", "retry_max_delay", "retry_jitter")
