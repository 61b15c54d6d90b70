"""JSON-ready views of stored tasks and registered task types.

One place that turns a TaskRecord into plain data, shared by `castord tasks`
(castord/admin.py) and the HTTP API (castor/web.py), so both show a task alike.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, NamedTuple

from castor.durations import from_epoch
from castor.failures import safe_text
from castor.serialization import get_serializer
from castor.store import Query, TaskRecord

if TYPE_CHECKING:
    from castor.manager import Manager
    from castor.task import TaskFunction

# A castord whose heartbeat row in the database is older than this is considered gone
# (it rewrites the row every few seconds while it runs).
DAEMON_STALE_SECONDS = 15.0
# A row this old belongs to a castord that died without removing it (SIGKILL, a host
# that never came back): listed as stale until then, removed by a live castord after.
DAEMON_FORGET_SECONDS = 3600.0


def when(epoch: float | None) -> str | None:
    """A stored Unix time as ISO-8601 UTC with milliseconds, or None."""
    moment = from_epoch(epoch)
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def json_exact(value: Any) -> bool:
    """True if strict JSON carries `value` unchanged: no NaN, no tuples, no int keys,
    no objects (what a JSON-serialized result always is, and a pickled one may not be)."""
    try:
        return bool(json.loads(json.dumps(value, allow_nan=False)) == value)
    except Exception:  # noqa: BLE001 - also a pickled object's own __eq__ or items() raising
        return False


class Decoded(NamedTuple):
    """A stored value (arguments or result) read back for display.

    `value` is the value itself when JSON carries it exactly (else None);
    `text` is its repr when JSON cannot, or why it could not be decoded.
    """

    value: Any
    text: str | None

    def shown(self) -> Any:
        """The value, or its text stand-in: one field for humans and the CLI."""
        return self.value if self.text is None else self.text


def decode(serializer: str, data: str | bytes | None) -> Decoded:
    if data is None:
        return Decoded(None, None)
    try:
        value = get_serializer(serializer).loads(data)
    except Exception as exc:  # noqa: BLE001 - show what we can
        return Decoded(None, f"<cannot decode: {safe_text(exc)}>")
    # A pickled value's repr is its own code: it may raise, or be enormous.
    return Decoded(value, None) if json_exact(value) else Decoded(None, safe_text(value, repr))


def summary(record: TaskRecord) -> dict[str, Any]:
    """A task in one line: `castord tasks list`, GET /tasks."""
    error = record.error or {}
    return {
        "id": record.id, "name": record.name, "queue": record.queue, "status": str(record.status),
        "priority": record.priority, "attempts": record.attempts, "lost": record.lost,
        "enqueued_at": when(record.enqueued_at), "eta": when(record.eta),
        "started_at": when(record.started_at), "finished_at": when(record.finished_at),
        "progress": record.progress, "error": f"{error.get('type')}: {error.get('message')}" if error else None,
    }


def detail(record: TaskRecord) -> dict[str, Any]:
    """Everything about a task (`castord tasks show`): the summary plus arguments,
    result, error with traceback, history, options and lease. Arguments and result
    are JSON values when JSON carries them exactly, else their repr."""
    return {
        **summary(record), "mode": record.mode, "daemon": record.daemon,
        "args": decode(record.serializer, record.args).shown(),
        "kwargs": decode(record.serializer, record.kwargs).shown(),
        "result": decode(record.serializer, record.result).shown(),
        "error": record.error, "history": record.history, "options": record.options,
        "owner": record.owner, "lease_expires": when(record.lease_expires),
        "progress_message": record.progress_message, "cancel_requested": record.cancel_requested,
        "expires_at": when(record.expires_at), "unique_key": record.unique_key,
    }


def stats(manager: Manager, *, exact_up_to: int | None = None) -> dict[str, Any]:
    """Counts per status, queue depth, the oldest due task's wait, failures by name.

    exact_up_to: a screen's leave to show a finished status past that many rows as the
    store's estimate (listed under "estimated"); None: every count exact."""
    store = manager.store
    now = time.time()
    queues = store.queue_stats(now=now)
    oldest = queues["oldest_due"]
    extra: dict[str, Any] = {}
    if exact_up_to is None:
        counts = store.counts_by_status()
    else:
        both = store.estimated_counts_by_status(exact_up_to=exact_up_to)
        counts = {status: n for status, (n, _) in both.items()}
        extra["estimated"] = [str(status) for status, (_, guess) in both.items() if guess]
    return {
        **extra,
        "counts": {str(k): v for k, v in counts.items()},
        "queue_depth": store.pending_by_queue(),
        "scheduled": queues["scheduled"],
        # Never negative: after a step back of the wall clock a due task's eta may be "ahead".
        "oldest_due_wait_s": None if oldest is None else round(max(0.0, now - oldest), 3),
        "failed_by_name": queues["failed_by_name"],
        "dirty": store.count(Query(dirty=True)),
        "paused_queues": sorted(store.paused_queues()),
        "paused_names": sorted(store.paused_names()),
    }


def live_daemons(manager: Manager, *, now: float | None = None) -> list[dict[str, Any]]:
    """The castords (any host) whose heartbeat row is fresh: running, or just stopped."""
    if now is None:  # the store's own measure: on the boot clock, so no wall-clock step fools it
        return [row for row in manager.store.daemons() if row["heartbeat_age"] <= DAEMON_STALE_SECONDS]
    return [row for row in manager.store.daemons() if now - row["heartbeat_at"] <= DAEMON_STALE_SECONDS]


def task_type(manager: Manager, fn: TaskFunction[..., Any]) -> dict[str, Any]:
    """A registered task and its defaults (what callers may submit by name)."""
    opts = fn.options
    schedule = manager.schedules.get(opts.name)
    doc = (fn.fn.__doc__ or "").strip()
    return {
        "name": opts.name, "mode": opts.mode, "daemon": opts.daemon, "queue": opts.queue,
        "priority": opts.priority, "timeout": opts.timeout, "retries": opts.stored.get("retries", 0),
        "unique": opts.unique if isinstance(opts.unique, bool) else True, "cache_ttl": opts.cache_ttl,
        "validate": opts.validator is not None,
        "schedule": None if schedule is None else schedule.describe(),
        "doc": doc.splitlines()[0] if doc else None,
    }
