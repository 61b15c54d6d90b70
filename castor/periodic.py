"""Periodic tasks: `@manager.periodic(cron=...)` or `every=...`, and the Scheduler that fires them.

A schedule is pure arithmetic (`Schedule.next_tick`). The Scheduler, run by castord's
master (and `python -m castor`), enqueues a task when a tick comes, through
`store.fire_schedule`: one transaction that records the tick in `castor_schedules`
only if no one recorded it (or a later one) yet, and enqueues the task only then. So
each tick fires once, however many castords share the file. Missed ticks are skipped:
a Scheduler starts at the first tick after now (and after the last one fired).
A disabled schedule (`Manager.disable_schedule`) is refused by that same transaction,
so every castord honours it at its next tick; its Scheduler keeps stepping through
the refused ticks, which is why enabling it fires the next tick, never the missed ones.
See docs/periodic.md.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from castor.durations import to_seconds
from castor.errors import ConfigurationError
from castor.logs import get_logger

if TYPE_CHECKING:
    from castor.manager import Manager
    from castor.task import TaskFunction

log = get_logger("castor.periodic")

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a periodic task fires: a cron expression, or a fixed interval.

    `every` ticks are multiples of the interval counted from the Unix epoch (so
    every=3600 fires on the hour, UTC), identical in every process. `cron` is read
    in UTC unless `tz` names a zone ("Europe/Paris").
    """

    name: str
    cron: str | None = None
    every: float | None = None
    tz: str | None = None

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after` (Unix seconds)."""
        if self.every is not None:
            tick = (math.floor(after / self.every) + 1) * self.every
            while tick <= after:  # float rounding at a multiple of `every`
                tick += self.every
            return tick
        assert self.cron is not None
        zone = ZoneInfo(self.tz) if self.tz else timezone.utc
        return next(CronSim(self.cron, datetime.fromtimestamp(after, tz=zone))).timestamp()

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every:g} s"
        return f"cron {self.cron!r} ({self.tz or 'UTC'})"


def register_periodic(
    manager: Manager, fn: Callable[P, R], *, cron: str | None, every: Any, options: dict[str, Any]
) -> TaskFunction[P, R]:
    """Register `fn` as a task (it can still be .delay()ed) and schedule it."""
    options = dict(options)
    tz = options.pop("tz", None)
    where = f"@manager.periodic on {getattr(fn, '__qualname__', fn)!r}"
    _check_no_arguments(fn, where)
    schedule = build_schedule("", cron=cron, every=every, tz=tz, where=where)  # named once registered
    task_fn = manager._register(fn, options)
    manager.schedules[task_fn.name] = replace(schedule, name=task_fn.name)
    return cast("TaskFunction[P, R]", task_fn)


def build_schedule(name: str, *, cron: Any, every: Any, tz: Any = None, where: str = "periodic") -> Schedule:
    """A validated Schedule, or a ConfigurationError that says how to fix the arguments."""
    if (cron is None) == (every is None):
        raise ConfigurationError(
            f"{where}: give exactly one of cron= (e.g. cron='*/5 * * * *') or every= "
            "(seconds or a timedelta, e.g. every=timedelta(minutes=5))")
    if every is not None:
        if tz is not None:
            raise ConfigurationError(f"{where}: tz= applies to cron= schedules only; every= ticks are "
                                     "counted from the Unix epoch")
        try:
            seconds = to_seconds(every, "every")
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(f"{where}: {exc}") from None
        if not seconds or math.isinf(seconds):
            raise ConfigurationError(f"{where}: every must be more than 0 seconds, not {every!r}")
        return Schedule(name, every=seconds)
    if not isinstance(cron, str):
        raise ConfigurationError(f"{where}: cron must be a string such as '*/5 * * * *', not {cron!r}")
    if tz is not None:
        if not isinstance(tz, str):
            raise ConfigurationError(f"{where}: tz must be a time zone name such as 'Europe/Paris', not {tz!r}")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ConfigurationError(f"{where}: unknown time zone {tz!r} (use an IANA name such as "
                                     "'Europe/Paris', or leave tz out for UTC)") from None
    schedule = Schedule(name, cron=cron, tz=tz)
    try:
        schedule.next_tick(time.time())
    except CronSimError as exc:
        raise ConfigurationError(
            f"{where}: bad cron expression {cron!r}: {exc} (five fields: minute hour day-of-month "
            "month day-of-week, e.g. '*/5 * * * *'; an optional sixth field first for seconds)") from None
    except StopIteration:
        raise ConfigurationError(f"{where}: cron expression {cron!r} never fires") from None
    return schedule


def _check_no_arguments(fn: Callable[..., Any], where: str) -> None:
    if not callable(fn):
        raise ConfigurationError(f"{where}: @manager.periodic must decorate a function, not {type(fn).__name__}")
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise ConfigurationError(
            f"{where}: a periodic task is called with no arguments; remove its parameters "
            "(or give them defaults)") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): let it fail at run time


def schedule_rows(manager: Manager, *, now: float | None = None) -> list[dict[str, Any]]:
    """Each registered schedule as the CLI and the web show it: enabled or not, the
    last tick fired (by any castord) and the next one (None while disabled)."""
    now = time.time() if now is None else now
    manager.import_tasks()  # schedules registered by the include= modules
    fired = manager.store.schedules()
    disabled = manager.store.disabled_schedules()
    rows = []
    for name, schedule in sorted(manager.schedules.items()):
        last = fired.get(name) or {}
        enabled = name not in disabled
        after = max(now, last.get("last_tick") or 0.0)
        rows.append({"name": name, "schedule": schedule.describe(), "enabled": enabled,
                     "last_tick": last.get("last_tick"), "fired_at": last.get("fired_at"),
                     "task_id": last.get("task_id"), "next_tick": schedule.next_tick(after) if enabled else None})
    return rows


class Scheduler:
    """Fires a Manager's schedules. Steppable: the caller owns the loop and the clock.

    On creation each schedule's first tick is the first one strictly after
    max(now, its last fired tick): ticks missed while nothing ran are skipped, and a
    restart within a tick does not fire it again. A tick that comes late (a busy or
    suspended loop) fires once when `fire_due` sees it; the ticks passed meanwhile
    are skipped.
    """

    def __init__(self, manager: Manager, *, now: float):
        self.manager = manager
        stored = manager.store.schedules()
        self._next: dict[str, float] = {}
        for name, schedule in manager.schedules.items():
            last = (stored.get(name) or {}).get("last_tick")
            self._next[name] = schedule.next_tick(max(now, last if last is not None else now))
            log.info("periodic.scheduled", schedule=name, every=schedule.every, cron=schedule.cron,
                     tz=schedule.tz, next_tick=self._next[name], last_tick=last)

    def due(self, now: float) -> list[str]:
        """Names of the schedules whose next tick has come."""
        return [name for name, tick in self._next.items() if tick <= now]

    def next_deadline(self) -> float | None:
        """When the earliest next tick comes (Unix seconds), or None with no schedules."""
        return min(self._next.values(), default=None)

    def next_ticks(self) -> dict[str, float]:
        """Each schedule's next tick (Unix seconds)."""
        return dict(self._next)

    def fire_due(self, now: float) -> list[str]:
        """Enqueue a task for each due tick that no one fired yet; the ids this call enqueued."""
        fired = []
        for name in self.due(now):
            tick = self._next[name]
            self._next[name] = self.manager.schedules[name].next_tick(max(now, tick))
            task_id = self._fire(name, tick, now)
            if task_id is not None:
                fired.append(task_id)
        return fired

    def _fire(self, name: str, tick: float, now: float) -> str | None:
        task_fn = self.manager.registry[name]
        try:
            task = task_fn._new((), {}, {})
            won = self.manager.store.fire_schedule(name, tick, task, now=now)
        except Exception:  # noqa: BLE001 - a busy database skips this tick; never crash the loop
            log.exception("periodic.fire_failed", schedule=name, tick=tick)
            return None
        if not won:
            # Fired by another castord, or the schedule is disabled (castord schedules).
            log.debug("periodic.already_fired", schedule=name, tick=tick)
            return None
        log.info("periodic.fired", schedule=name, tick=tick, task_id=task.id, task_name=task.name,
                 late_s=round(now - tick, 3))
        hooks = self.manager.hooks
        if hooks.listeners:
            hooks.enqueued([task], [task.id])
        return str(task.id)
