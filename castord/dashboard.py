"""The `castor` command's live terminal dashboard, drawn by the master's loop.

It shows what the supervisor already knows (children's heartbeats, the tally of
finished tasks), asks the database for pending counts at a pace that adapts to
how long that query takes, and tails the JSON log file that the master and its
children write to while the dashboard owns the terminal. Drawing happens in the
master's one thread (Live with auto_refresh off), so nothing here races the loop.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from castor.logs import get_logger
from castor.store import display_url
from castord.children import THREAD_HOST
from castord.control import busy_slots

if TYPE_CHECKING:
    from castord.supervisor import Supervisor

log = get_logger("castord.dashboard")

REFRESH_SECONDS = 0.5
RATE_WINDOW_SECONDS = 10.0
LATEST_ROWS = 8
LOG_LINES_KEPT = 200
STATUS_STYLES = {
    "running": "bold cyan", "success": "green", "failed": "bold red", "cancelled": "magenta",
    "retry": "yellow", "pending": "dim",
}
LEVEL_STYLES = {"debug": "dim", "info": "blue", "warning": "yellow", "error": "bold red", "critical": "bold red"}
# Log fields the line's layout already shows, or that only add noise on a narrow screen.
_LOG_SKIP = {"event", "level", "timestamp", "logger", "role", "pid", "daemon_id", "message"}


@dataclass
class View:
    """Everything one frame shows; built by Dashboard.gather(), drawn by render()."""

    app: str
    pid: int
    state: str
    uptime_s: float
    database: str
    process_busy: int
    process_total: int
    thread_busy: int
    thread_total: int
    pending: dict[str, int]
    finished: dict[str, int]  # by status, since this castor started
    rate: float  # finished tasks per second over the last RATE_WINDOW_SECONDS
    latest: list[dict[str, Any]]  # running first, then the latest finished
    log_lines: list[Any] = field(default_factory=list)  # parsed JSON events or raw text
    restarts: int = 0


class LogTail:
    """New lines of a log file since the dashboard started (JSON events parsed)."""

    def __init__(self, path: str):
        self.path = path
        self.lines: deque[Any] = deque(maxlen=LOG_LINES_KEPT)
        self._offset = os.path.getsize(path) if os.path.exists(path) else 0
        self._partial = b""

    def poll(self) -> None:
        try:
            size = os.path.getsize(self.path)
        except OSError:
            return
        if size < self._offset:  # truncated or rotated: start again from the top
            self._offset, self._partial = 0, b""
        if size == self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read(size - self._offset)
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        for raw in complete:
            text = raw.decode("utf-8", "replace").rstrip()
            entry = _parse(text) if text else None
            # Successes are in the latest-tasks panel; here they would push everything else out.
            if entry and not (isinstance(entry, dict) and entry.get("event") == "task.succeeded"):
                self.lines.append(entry)


def _parse(text: str) -> Any:
    if text.startswith("{"):
        try:
            event = json.loads(text)
        except ValueError:
            return text
        if isinstance(event, dict):
            return event
    return text


class Dashboard:
    def __init__(self, supervisor: Supervisor, log_path: str, console: Console | None = None):
        self.supervisor = supervisor
        self.console = console or Console()
        self.tail = LogTail(log_path)
        self.live: Live | None = None
        self._next_frame = 0.0
        self._next_pending = 0.0
        self._pending: dict[str, int] = {}
        self._samples: deque[tuple[float, int]] = deque()
        self._started = time.monotonic()
        self.failed = False

    def start(self) -> None:
        self.live = Live(console=self.console, screen=True, auto_refresh=False, redirect_stdout=False,
                         redirect_stderr=False)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def summary(self, exit_code: int) -> str:
        """One line for the terminal once the dashboard is gone."""
        finished, _durations = self.supervisor.tally.snapshot()
        by_status: dict[str, int] = {}
        for (_name, status), count in finished.items():
            by_status[status] = by_status.get(status, 0) + count
        counts = ", ".join(f"{n:,} {s}" for s, n in sorted(by_status.items())) or "no tasks finished"
        return f"castor stopped (exit {exit_code}) after {_duration(time.monotonic() - self._started)}: " \
               f"{counts}. Full log: {self.tail.path}"

    def tick(self) -> None:
        """Called after each pass of the master's loop; draws at most every REFRESH_SECONDS."""
        now = time.monotonic()
        if self.failed or self.live is None or now < self._next_frame:
            return
        self._next_frame = now + REFRESH_SECONDS
        try:
            view = self.gather(now)
            self.live.update(render(view, self.console.size.height), refresh=True)
        except Exception:  # noqa: BLE001 - a drawing bug must never stop supervision
            self.failed = True
            self.stop()
            log.exception("dashboard.failed", message="the dashboard stopped; castor goes on running")

    def gather(self, now: float) -> View:
        sup = self.supervisor
        snap = sup.snapshot()
        children = snap["children"]
        running = [dict(task, child=c["role"]) for c in children for task in c["running"]]
        process_busy, thread_busy = busy_slots(children)
        finished_by_key, _durations = sup.tally.snapshot()
        finished: dict[str, int] = {}
        for (_name, status), count in finished_by_key.items():
            finished[status] = finished.get(status, 0) + count
        self._refresh_pending(now)
        self.tail.poll()
        return View(
            app=sup.config.app, pid=os.getpid(), state=sup.state.value, uptime_s=now - self._started,
            database=display_url(sup.manager.path), process_busy=process_busy, process_total=snap["workers"],
            thread_busy=thread_busy, thread_total=sup.config.threads if _has_thread_host(sup) else 0,
            pending=self._pending, finished=finished, rate=self._rate(now, sum(finished.values())),
            latest=_latest(running, sup.tally.latest()), log_lines=list(self.tail.lines),
            restarts=sum(sup.restarts.values()),
        )

    def _refresh_pending(self, now: float) -> None:
        # A GROUP BY over a million pending rows takes a while: ask less often when it does.
        if now < self._next_pending:
            return
        started = time.monotonic()
        try:
            self._pending = self.supervisor.manager.store.pending_by_queue()
        except Exception:  # noqa: BLE001 - a busy database: keep the last counts
            log.warning("dashboard.pending_failed", exc_info=True)
        took = time.monotonic() - started
        self._next_pending = now + max(1.0, 20 * took)

    def _rate(self, now: float, total: int) -> float:
        self._samples.append((now, total))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        (t0, n0), (t1, n1) = self._samples[0], self._samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _has_thread_host(sup: Supervisor) -> bool:
    return any(s.role == THREAD_HOST and not s.retired for s in sup.slots)


def _latest(running: list[dict[str, Any]], finished: list[list[Any]]) -> list[dict[str, Any]]:
    now = time.time()
    rows = [
        {"id": t["id"], "name": t["name"], "status": "running",
         "seconds": now - t["started_at"] if t.get("started_at") else None}
        for t in sorted(running, key=lambda t: t.get("started_at") or 0, reverse=True)
    ]
    rows += [{"id": task_id, "name": name, "status": status, "seconds": seconds}
             for task_id, name, status, seconds, _at in finished]
    return rows[:LATEST_ROWS]


# -- drawing (pure: a View in, rich renderables out) ------------------------------


def render(view: View, height: int) -> Layout:
    """One frame, fitted to `height` rows: the log panel gets whatever is left."""
    workers = _workers_grid(view)
    top_height = max(len(workers.rows) + 2, len(view.pending) + 3)
    spare = height - 2 - top_height  # less the header and footer rows
    latest_rows = min(LATEST_ROWS, max(1, len(view.latest)), max(1, (spare - 6) // 2))
    latest_height = latest_rows + 3  # borders and column headings
    logs_height = max(3, spare - latest_height)
    layout = Layout()
    layout.split_column(
        Layout(_header(view), name="header", size=1),
        Layout(name="top", size=top_height),
        Layout(_latest_panel(view, latest_rows), name="latest", size=latest_height),
        Layout(_log_panel(view, logs_height - 2), name="logs", size=logs_height),
        Layout(_footer(view), name="footer", size=1),
    )
    layout["top"].split_row(Layout(Panel(workers, title="workers", title_align="left", box=box.ROUNDED), ratio=3),
                            Layout(_queues_panel(view), ratio=2))
    return layout


def _header(view: View) -> Text:
    state_style = {"running": "bold green", "reloading": "bold green", "draining": "bold yellow",
                   "stopping": "bold red"}.get(view.state, "")
    text = Text.assemble(("castor ", "bold"), (view.app, "bold cyan"), f"  pid {view.pid}  ",
                         (view.state, state_style), f"  up {_duration(view.uptime_s)}  ",
                         (view.database, "dim"))
    text.no_wrap = True
    text.overflow = "ellipsis"
    return text


def _workers_grid(view: View) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("process slots", _slots(view.process_busy, view.process_total))
    grid.add_row("thread slots", _slots(view.thread_busy, view.thread_total))
    done = view.finished.get("success", 0)
    failed = view.finished.get("failed", 0)
    counts = Text.assemble(("done ", "bold"), (f"{done:,}", "green"), "   ", ("failed ", "bold"),
                           (f"{failed:,}", "bold red" if failed else ""))
    grid.add_row("finished", counts)
    others = Text()
    for status, label in (("retry", "retried"), ("cancelled", "cancelled")):
        if view.finished.get(status):
            others.append(f"{label} ", style="bold")
            others.append(f"{view.finished[status]:,}   ", style=STATUS_STYLES[status])
    if others:
        grid.add_row("", others)
    grid.add_row("throughput", f"{view.rate:,.1f} tasks/s (last {RATE_WINDOW_SECONDS:g} s)")
    if view.restarts:
        grid.add_row("restarts", Text(f"{view.restarts} child restarts", style="yellow"))
    return grid


def _slots(busy: int, total: int) -> Text:
    if total == 0:
        return Text("none", style="dim")
    width = min(total, 20)
    filled = round(width * busy / total)
    return Text.assemble(("█" * filled, "cyan"), ("░" * (width - filled), "dim"), f"  {busy}/{total} busy")


def _queues_panel(view: View) -> Panel:
    table = Table(box=None, show_header=True, header_style="bold", expand=True, padding=(0, 1))
    table.add_column("queue")
    table.add_column("pending", justify="right")
    for queue, count in sorted(view.pending.items()):
        table.add_row(queue, f"{count:,}")
    if not view.pending:
        table.add_row(Text("nothing pending", style="dim"), "0")
    return Panel(table, title="queues", title_align="left", box=box.ROUNDED)


def _latest_panel(view: View, rows: int) -> Panel:
    table = Table(box=None, show_header=True, header_style="bold", expand=True, padding=(0, 1))
    table.add_column("id", no_wrap=True)
    table.add_column("task", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("status", no_wrap=True)
    table.add_column("time", justify="right", no_wrap=True)
    for row in view.latest[:rows]:
        seconds = row["seconds"]
        table.add_row((row["id"] or "?")[-12:], row["name"], Text(row["status"], style=STATUS_STYLES.get(
            row["status"], "")), "" if seconds is None else _seconds(seconds))
    if not view.latest:
        table.add_row("", Text("no tasks yet", style="dim"), "", "")
    return Panel(table, title="latest tasks", title_align="left", box=box.ROUNDED)


def _log_panel(view: View, rows: int) -> Panel:
    lines = [_log_line(entry) for entry in view.log_lines[-rows:]] if rows > 0 else []
    body: RenderableType = Group(*lines) if lines else Text("no log lines yet", style="dim")
    return Panel(body, title="log", title_align="left", box=box.ROUNDED)


def _log_line(entry: Any) -> Text:
    if not isinstance(entry, dict):
        line = Text(str(entry), style="dim")
    else:
        stamp = str(entry.get("timestamp", ""))
        clock = stamp[11:19] if len(stamp) >= 19 else stamp
        level = str(entry.get("level", ""))
        line = Text.assemble((clock, "dim"), " ", (f"{level:<7}", LEVEL_STYLES.get(level, "")), " ",
                             (str(entry.get("event", "")), "bold"))
        if "message" in entry:  # a task's output, a stdlib log record: its text first
            line.append(" " + _short(entry["message"]))
        extras = " ".join(f"{k}={_short(v)}" for k, v in entry.items() if k not in _LOG_SKIP)
        if extras:
            line.append(" " + extras)
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def _footer(view: View) -> Text:
    if view.state in ("running", "reloading"):
        return Text("Ctrl+C: drain (running tasks finish, then castor exits)", style="dim")
    if view.state == "draining":
        return Text("draining: waiting for running tasks. Ctrl+C again: stop now (they are requeued)",
                    style="bold yellow")
    return Text("stopping", style="bold red")


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _seconds(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return _duration(seconds)


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"
