"""`castord tasks …`: look at and act on stored tasks from the shell.

The data side only (records → JSON-ready dicts, the stats) and the rich
rendering; cli.py parses and maps errors to exit codes.
"""

from __future__ import annotations

import re
import time
from typing import Any

from castor.durations import from_epoch
from castor.manager import Manager
from castor.serialization import get_serializer
from castor.store import Query, TaskRecord

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """"90", "90s", "15m", "12h", "7d", "2w" → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 15m, 12h, 7d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _when(epoch: float | None) -> str | None:
    moment = from_epoch(epoch)
    return None if moment is None else moment.isoformat(timespec="milliseconds")


def summary(record: TaskRecord) -> dict[str, Any]:
    """One row of `tasks list`."""
    error = record.error or {}
    return {
        "id": record.id, "name": record.name, "queue": record.queue, "status": str(record.status),
        "priority": record.priority, "attempts": record.attempts, "lost": record.lost,
        "enqueued_at": _when(record.enqueued_at), "eta": _when(record.eta),
        "started_at": _when(record.started_at), "finished_at": _when(record.finished_at),
        "progress": record.progress, "error": f"{error.get('type')}: {error.get('message')}" if error else None,
    }


def detail(record: TaskRecord) -> dict[str, Any]:
    """Everything `tasks show` prints: the summary plus arguments, result, error, history."""
    serializer = get_serializer(record.serializer)

    def decode(data: str | bytes | None) -> Any:
        if data is None:
            return None
        try:
            value = serializer.loads(data)
        except Exception as exc:  # noqa: BLE001 - show what we can
            return f"<cannot decode: {exc}>"
        return value if record.serializer == "json" else repr(value)

    return {
        **summary(record), "mode": record.mode, "daemon": record.daemon,
        "args": decode(record.args), "kwargs": decode(record.kwargs), "result": decode(record.result),
        "error": record.error, "history": record.history, "options": record.options,
        "owner": record.owner, "lease_expires": _when(record.lease_expires),
        "progress_message": record.progress_message, "cancel_requested": record.cancel_requested,
        "expires_at": _when(record.expires_at), "unique_key": record.unique_key,
    }


def stats(manager: Manager) -> dict[str, Any]:
    """Counts per status, queue depth, the oldest due task's wait, failures by name."""
    store = manager.store
    now = time.time()
    queues = store.queue_stats(now=now)
    oldest = queues["oldest_due"]
    return {
        "counts": {str(k): v for k, v in store.counts_by_status().items()},
        "queue_depth": store.pending_by_queue(),
        "scheduled": queues["scheduled"],
        "oldest_due_wait_s": None if oldest is None else round(now - oldest, 3),
        "failed_by_name": queues["failed_by_name"],
        "dirty": store.count(Query(dirty=True)),
    }


# -- rendering ---------------------------------------------------------------------

_STATUS_STYLE = {"pending": "yellow", "running": "cyan", "success": "green", "failed": "red",
                 "cancelled": "magenta"}


def render_list(rows: list[dict[str, Any]]) -> Any:
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "name", "queue", "status", "attempts", "enqueued", "finished", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = _STATUS_STYLE.get(row["status"], "")
        table.add_row(row["id"], row["name"], row["queue"], f"[{style}]{row['status']}[/]",
                      str(row["attempts"]), _short(row["enqueued_at"]), _short(row["finished_at"]),
                      row["error"] or "")
    return table


def render_detail(task: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in task.items():
        if key == "error" and value:
            value = f"{value.get('type')}: {value.get('message')}\n{value.get('traceback') or ''}".rstrip()
        elif key == "status":
            value = f"[{_STATUS_STYLE.get(value, '')}]{value}[/]"
        table.add_row(key, "" if value is None else str(value))
    return table


def render_stats(data: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for status, n in data["counts"].items():
        table.add_row(status, f"[{_STATUS_STYLE.get(status, '')}]{n}[/]")
    depth = ", ".join(f"{q}={n}" for q, n in sorted(data["queue_depth"].items())) or "empty"
    table.add_row("queues", depth)
    table.add_row("scheduled (future ETA)", str(data["scheduled"]))
    wait = data["oldest_due_wait_s"]
    table.add_row("oldest due task waiting", "none" if wait is None else f"{wait:.1f} s")
    table.add_row("dirty (worker lost)", str(data["dirty"]))
    for name, n in list(data["failed_by_name"].items())[:10]:
        table.add_row(f"failed: {name}", str(n))
    return table


def _short(iso: str | None) -> str:
    return "" if iso is None else iso[:19].replace("T", " ")
