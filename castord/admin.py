"""`castord tasks …`: look at and act on stored tasks from the shell.

Durations and the rich rendering; the records → JSON-ready dicts and the stats
live in castor.views (the HTTP API shows tasks the same way); cli.py parses and
maps errors to exit codes.
"""

from __future__ import annotations

import re
from typing import Any

from castor.views import detail, stats, summary

__all__ = ["detail", "parse_duration", "render_detail", "render_list", "render_stats", "stats", "summary"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """"90", "90s", "15m", "12h", "7d", "2w" → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration; write e.g. 90s, 15m, 12h, 7d or 2w")
    return float(match.group(1)) * _UNITS[match.group(2)]


# -- rendering ---------------------------------------------------------------------

_STATUS_STYLE = {"pending": "yellow", "running": "cyan", "success": "green", "failed": "red",
                 "cancelled": "magenta"}


def render_list(rows: list[dict[str, Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    for column in ("id", "name", "queue", "status", "attempts", "enqueued", "finished", "error"):
        table.add_column(column, overflow="fold")
    for row in rows:
        style = _STATUS_STYLE.get(row["status"], "")
        # Names and error messages are the application's text: "[/]" in them is not markup.
        table.add_row(escape(row["id"]), escape(row["name"]), escape(row["queue"]), f"[{style}]{row['status']}[/]",
                      str(row["attempts"]), _short(row["enqueued_at"]), _short(row["finished_at"]),
                      escape(row["error"] or ""))
    return table


def render_detail(task: dict[str, Any]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(show_header=False, show_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for key, value in task.items():
        if key == "status":
            table.add_row(key, f"[{_STATUS_STYLE.get(value, '')}]{value}[/]")
            continue
        if key == "error" and value:
            value = f"{value.get('type')}: {value.get('message')}\n{value.get('traceback') or ''}".rstrip()
        # The task's own text (arguments, result, error): "[/]" in it is not markup.
        table.add_row(key, "" if value is None else escape(str(value)))
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
    table.add_row("paused queues", ", ".join(data["paused_queues"]) or "none")
    table.add_row("paused task names", ", ".join(data.get("paused_names", [])) or "none")
    table.add_row("scheduled (future ETA)", str(data["scheduled"]))
    wait = data["oldest_due_wait_s"]
    table.add_row("oldest due task waiting", "none" if wait is None else f"{wait:.1f} s")
    table.add_row("dirty (worker lost)", str(data["dirty"]))
    for name, n in list(data["failed_by_name"].items())[:10]:
        table.add_row(f"failed: {name}", str(n))
    return table


def _short(iso: str | None) -> str:
    return "" if iso is None else iso[:19].replace("T", " ")
