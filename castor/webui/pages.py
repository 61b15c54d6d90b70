"""What each screen shows, read from the Manager's store: plain data for the templates.

Every function here reads only through the Store interface (castor/store/base.py),
so the dashboard works alike on SQLite and PostgreSQL. Counts and summaries come
from castor.views, as `castord tasks` and the HTTP API show them.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from castor import views
from castor.periodic import schedule_rows
from castor.rerun import RERUN_AS, RERUN_OF
from castor.states import TaskStatus
from castor.store import Query, TaskRecord
from castor.webui import charts
from castor.webui.filters import TaskFilter
from castor.webui.timeline import timeline
from castor.webui.values import show

if TYPE_CHECKING:
    from castor.manager import Manager

# The Failed screen groups the newest failures by exception type; past this many
# it says how many it looked at (the store counts by task name only). Each is a whole
# record with its traceback: 5,000 took 0.1-0.15 s on PostgreSQL, more than the page's
# share of its 200 ms.
FAILED_SCAN = 1000
# A queue with at most this many pending tasks gets its own due/scheduled/oldest
# figures, from its rows; a bigger one only its depth (the store has no per-queue
# ETA statistics yet).
QUEUE_SCAN = 1000
DIRTY_SHOWN = 50
# A task page lists this many members of the task's workflow (one status read each),
# and counts their statuses; a bigger workflow's counts say they are of these only.
MEMBERS_SHOWN = 100
# A queue's throughput counts the tasks that ended in the last minute, up to this many
# of each status (each counted row is read: at 1,000 a second a whole count would read
# 60,000 rows per queue, twice a page).
THROUGHPUT_CAP = 6_000
# The Tasks screen counts matches up to this many, then shows "10,000+".
COUNT_CAP = 10_000
# An argument search reads at most this many tasks per page (40-90 ms at a million rows
# on both stores; a whole million: 0.8-1.2 s), and pages on past them.
SEARCH_SCAN = 50_000


def overview(manager: Manager) -> dict[str, Any]:
    now = time.time()
    data = views.stats(manager, exact_up_to=COUNT_CAP)
    return {**data, "count_cap": COUNT_CAP, "daemons": [daemon(row, now) for row in manager.store.daemons()],
            "throughput": charts.last_hour(manager.store, now=now)}


def daemon(row: dict[str, Any], now: float) -> dict[str, Any]:
    """A castord's heartbeat row: who, where, how busy, how fresh."""
    info = row.get("info") or {}
    children = info.get("children") or []
    process = [c for c in children if c.get("role") == "process-worker"]
    threads = [c for c in children if c.get("role") == "thread-host"]
    return {
        "host": row["host"], "pid": row["pid"], "app": row["app"], "state": info.get("state", "?"),
        "uptime_s": max(0.0, now - row["started_at"]), "heartbeat_age_s": row["heartbeat_age"],
        "stale": row["heartbeat_age"] > views.DAEMON_STALE_SECONDS,
        "process_busy": sum(1 for c in process if c.get("running")), "process_total": info.get("workers", 0),
        "thread_busy": sum(len(c.get("running") or []) for c in threads), "thread_total": info.get("threads", 0),
        "queues": info.get("queues"),
    }


@dataclass(frozen=True, slots=True)
class QueueRow:
    name: str
    pending: int
    running: int
    due: int | None = None  # None: too many pending rows to look at (QUEUE_SCAN)
    scheduled: int | None = None
    oldest_due_wait_s: float | None = None
    paused: bool = False  # castords do not claim from it (castord tasks pause)
    # Tasks of this queue that ended in the last RATE_WINDOW seconds, per second; None
    # when more than THROUGHPUT_CAP did (the page says "more than").
    succeeded_per_s: float | None = 0.0
    failed_per_s: float | None = 0.0


def queues(manager: Manager, *, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    store = manager.store
    manager.import_tasks()  # the include= modules' tasks name queues too
    depth = store.pending_by_queue()
    paused = store.paused_queues()
    names = set(depth) | {fn.options.queue for fn in manager.registry.values()} | paused
    rows = [_queue_row(manager, name, depth.get(name, 0), now, name in paused) for name in sorted(names)]
    totals = store.queue_stats(now=now)
    oldest = totals["oldest_due"]
    return {"queues": rows, "scheduled": totals["scheduled"], "pending": sum(depth.values()),
            "oldest_due_wait_s": None if oldest is None else max(0.0, now - oldest), "scan_limit": QUEUE_SCAN,
            "cap": THROUGHPUT_CAP}


def _queue_row(manager: Manager, name: str, pending: int, now: float, paused: bool) -> QueueRow:
    running = manager.store.count(Query(status=TaskStatus.RUNNING, queue=name))
    succeeded, failed = (_rate(manager, name, status, now) for status in (TaskStatus.SUCCESS, TaskStatus.FAILED))
    if pending > QUEUE_SCAN:
        return QueueRow(name, pending, running, paused=paused, succeeded_per_s=succeeded, failed_per_s=failed)
    etas = [r.eta for r in manager.store.list(Query(status=TaskStatus.PENDING, queue=name), limit=QUEUE_SCAN)]
    due = [eta for eta in etas if eta <= now]
    return QueueRow(name, pending, running, due=len(due), scheduled=len(etas) - len(due),
                    oldest_due_wait_s=max(0.0, now - min(due)) if due else None, paused=paused,
                    succeeded_per_s=succeeded, failed_per_s=failed)


def _rate(manager: Manager, queue: str, status: TaskStatus, now: float) -> float | None:
    """Tasks of `queue` that ended in `status` in the last minute, per second, as the
    overview's "tasks per second now" counts them (stored rows: a success deleted at
    once, result_ttl=0, is not counted). None past THROUGHPUT_CAP."""
    ended = manager.store.count(Query(status=status, queue=queue, finished_after=now - charts.RATE_WINDOW),
                                limit=THROUGHPUT_CAP + 1)
    return None if ended > THROUGHPUT_CAP else ended / charts.RATE_WINDOW


def tasks(manager: Manager, task_filter: TaskFilter) -> dict[str, Any]:
    if task_filter.args is not None:
        return _search(manager, task_filter)
    query, limit = task_filter.query, task_filter.limit
    # One row more than shown: whether there is a page beyond this one, without counting.
    records = manager.store.list(query, limit=limit + 1, after=task_filter.after, before=task_filter.before)
    if task_filter.before is None:
        shown, more_older = records[:limit], len(records) > limit
        # Came by an older link: is anything newer than this page's first row? One row
        # read upwards from it (the listing index), not a count.
        more_newer = bool(shown) and task_filter.after is not None and bool(
            manager.store.list(query, limit=1, before=(shown[0].enqueued_at, shown[0].id)))
    else:  # read upwards from the key: the extra row is at the newest end
        shown, more_newer = records[-limit:], len(records) > limit
        more_older = True  # the key's own row is older
    older = (shown[-1].enqueued_at, shown[-1].id) if shown and more_older else None
    newer = (shown[0].enqueued_at, shown[0].id) if shown and more_newer else None
    # A bounded count: past COUNT_CAP the page says "10,000+" (an exact count reads every
    # matching row: 0.3 s and more at a million).
    total = manager.store.count(query, limit=COUNT_CAP + 1)
    return {"rows": [views.summary(r) for r in shown], "total": min(total, COUNT_CAP),
            "total_capped": total > COUNT_CAP, "searched": None, "filter": task_filter, "older": older,
            "newer": newer}


def _search(manager: Manager, task_filter: TaskFilter) -> dict[str, Any]:
    """A page of an argument search: the matches among the next SEARCH_SCAN tasks the
    other filters pick, from the page's key on (each read row is a whole row: a search
    of a million reads a million). The older (or newer) link goes on from the last
    match shown or, when this window had fewer, from the last row searched."""
    store, limit, after, before = manager.store, task_filter.limit, task_filter.after, task_filter.before
    query = replace(task_filter.query, scan_limit=SEARCH_SCAN)
    records = store.list(query, limit=limit + 1, after=after, before=before)
    upward = before is not None
    shown = records[-limit:] if upward else records[:limit]
    if len(records) > limit:
        far = shown[0] if upward else shown[-1]
        onward: tuple[float, str] | None = (far.enqueued_at, far.id)
    else:  # the window ran out first: go on past its last row, if the filter has more
        edge = store.list(replace(task_filter.query, args_contains=None), limit=1, offset=SEARCH_SCAN - 1,
                          after=after, before=before)
        onward = (edge[0].enqueued_at, edge[0].id) if edge else None
    back = before if upward else after  # came by a link: the way back is the key itself
    if shown:
        near = shown[-1] if upward else shown[0]
        back = (near.enqueued_at, near.id) if back is not None else None
    older, newer = (back, onward) if upward else (onward, back)
    return {"rows": [views.summary(r) for r in shown], "total": None, "total_capped": False,
            "searched": SEARCH_SCAN, "filter": task_filter, "older": older, "newer": newer}


def task(record: TaskRecord, *, now: float) -> dict[str, Any]:
    """Everything about one task, arguments and result shown without running stored code."""
    return {
        **views.summary(record), "mode": record.mode, "daemon": record.daemon, "serializer": record.serializer,
        "args": show(record.serializer, record.args), "kwargs": show(record.serializer, record.kwargs),
        "result": show(record.serializer, record.result), "error_detail": record.error,
        "progress_message": record.progress_message, "cancel_requested": record.cancel_requested,
        "owner": record.owner, "lease_expires": views.when(record.lease_expires),
        "expires_at": views.when(record.expires_at), "unique_key": record.unique_key,
        "options": record.options, "timeline": timeline(record), "actions": actions_for(record, now),
        "rerun_of": record.options.get(RERUN_OF), "rerun_as": record.options.get(RERUN_AS),
    }


def workflow(manager: Manager, record: TaskRecord) -> dict[str, Any] | None:
    """The workflow `record` is a member of, for its page (the dashboard has no workflow
    page): its kind and state, where it is, and its members (the first MEMBERS_SHOWN, with
    their statuses counted); None for a plain task, or a workflow deleted by hand."""
    if record.workflow_id is None:
        return None
    store = manager.store
    found = store.workflow(record.workflow_id)
    if found is None:
        return None
    ordered = sorted(found.members, key=lambda m: (m[1] < 0, m[1], m[2]))  # the handler last
    members = [{"id": task_id, "step": step, "status": store.status(task_id) or "deleted", "this": task_id == record.id}
               for task_id, step, _index in ordered[:MEMBERS_SHOWN]]
    counts = Counter(str(m["status"]) for m in members)
    return {"id": found.id, "kind": found.kind, "state": str(found.state), "step": found.step + 1,
            "steps": len(found.sizes), "size": len(found.members), "members": members,
            "counts": [(status, counts[status]) for status in (*(str(t) for t in TaskStatus), "deleted") if counts[status]],
            "more": max(0, len(found.members) - MEMBERS_SHOWN), "remaining": found.remaining}


LABELS = {"retry": "Retry", "cancel": "Cancel", "delete": "Delete", "run-now": "Run now", "run-again": "Run again"}


def actions_for(record: TaskRecord, now: float) -> list[tuple[str, str]]:
    """The actions (name, button label) a task in its state can take: run now for one
    pending but scheduled for later (an ETA, a retry's backoff), run again for a finished one."""
    status = record.status
    if status == TaskStatus.PENDING:
        names = ["run-now", "cancel"] if record.eta > now else ["cancel"]
    elif status in (TaskStatus.RUNNING, TaskStatus.WAITING):
        names = ["cancel"]
    elif status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
        # A workflow member is not retried or run again by hand (Manager.retry says why).
        names = ["retry", "run-again", "delete"] if record.workflow_id is None else ["delete"]
    else:
        names = ["run-again", "delete"] if record.workflow_id is None else ["delete"]
    return [(name, LABELS[name]) for name in names]


def failed(manager: Manager) -> dict[str, Any]:
    store = manager.store
    total = store.count(Query(status=TaskStatus.FAILED))
    records = store.list(Query(status=TaskStatus.FAILED), limit=FAILED_SCAN)
    groups: Counter[tuple[str, str]] = Counter()
    latest: dict[tuple[str, str], TaskRecord] = {}
    for record in records:  # newest first: the first one seen of a group is its latest
        key = (record.name, str((record.error or {}).get("type")))
        groups[key] += 1
        latest.setdefault(key, record)
    rows = [{"name": name, "type": exc_type, "count": n, "latest": views.summary(latest[(name, exc_type)]),
             "message": (latest[(name, exc_type)].error or {}).get("message")}
            for (name, exc_type), n in groups.most_common()]
    dirty = store.list(Query(dirty=True), limit=DIRTY_SHOWN)
    return {"groups": rows, "total": total, "scanned": len(records),
            "dirty": [views.summary(r) for r in dirty], "dirty_total": store.count(Query(dirty=True))}


def periodic(manager: Manager) -> dict[str, Any]:
    rows = [{**row, "last_tick": views.when(row["last_tick"]), "fired_at": views.when(row["fired_at"]),
             "next_tick": views.when(row["next_tick"])} for row in schedule_rows(manager)]
    # Ticks recorded for schedules this process does not register (another app, or removed).
    unknown = [{"name": name, "last_tick": views.when(row.get("last_tick")), "task_id": row.get("task_id")}
               for name, row in sorted(manager.store.schedules().items()) if name not in manager.schedules]
    return {"schedules": rows, "unknown": unknown}
