"""The client side of `castord stop / status / reload`: find a castord, signal it, report."""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from castor.states import TaskStatus
from castor.store import Query, TaskRecord, open_store
from castor.views import DAEMON_STALE_SECONDS
from castord.errors import CastordError, ExitCode
from castord.pidfile import pid_alive, read_pid

# A master whose database heartbeat is older than this is considered gone (the HTTP
# API's health endpoint counts live castords by the same rule).
STALE_SECONDS = DAEMON_STALE_SECONDS
# `castord status` lists at most this many running tasks (newest first).
RUNNING_SHOWN = 50


@dataclass
class Target:
    """A castord to talk to: its pid, and where its database is (if known)."""

    pid: int | None
    db_path: str | None
    app: str | None


def sidecar_path(pidfile: str) -> str:
    return pidfile + ".json"


def write_sidecar(pidfile: str, *, app: str, db_path: str) -> None:
    """Beside the pidfile: what `status --pidfile` needs to find the database."""
    tmp = sidecar_path(pidfile) + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "app": app, "db_path": db_path}, f)
    os.replace(tmp, sidecar_path(pidfile))


def remove_sidecar(pidfile: str) -> None:
    try:
        os.unlink(sidecar_path(pidfile))
    except FileNotFoundError:
        pass


def find(app: str | None, pidfile: str | None) -> Target:
    """Locate a running castord from a pidfile, or from APP's database heartbeat rows."""
    if pidfile:
        pid = read_pid(pidfile)
        meta: dict[str, Any] = {}
        try:
            with open(sidecar_path(pidfile)) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            pass
        alive = pid is not None and pid_alive(pid)
        return Target(pid if alive else None, meta.get("db_path"), meta.get("app") or app)
    if not app:
        raise CastordError("name the castord: give APP or --pidfile", ExitCode.USAGE)
    from castor.app import load_manager

    manager = load_manager(app)
    try:
        row = _live_row(manager.store.daemons(), app)
    finally:
        manager.close()
    return Target(row["pid"] if row else None, manager.path, app)


def _live_row(rows: list[dict[str, Any]], app: str | None) -> dict[str, Any] | None:
    host = socket.gethostname()
    now = time.time()
    for row in rows:
        if row["host"] != host or now - row["heartbeat_at"] > STALE_SECONDS:
            continue
        if app and row["app"] != app:
            continue
        if pid_alive(row["pid"]):
            return row
    return None


def signal_and_wait(pid: int, signum: int, timeout: float) -> bool:
    """Send `signum` and wait up to `timeout` for the process to go; True if it went."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def status_report(target: Target) -> dict[str, Any]:
    """Everything `castord status` shows, as data."""
    report: dict[str, Any] = {"running": target.pid is not None, "pid": target.pid, "app": target.app}
    if target.db_path is None:
        return report
    store = open_store(target.db_path)
    try:
        rows = store.daemons()
        row = next((r for r in rows if r["pid"] == target.pid and r["host"] == socket.gethostname()), None)
        if row is not None and target.pid is not None:
            report["uptime_s"] = round(time.time() - row["started_at"], 1)
            report["heartbeat_age_s"] = round(time.time() - row["heartbeat_at"], 1)
            report.update({k: row["info"].get(k) for k in ("state", "workers", "threads", "queues", "children")})
        report["schedules"] = _schedules(store.schedules(), (row or {}).get("info", {}).get("schedules") or {})
        report["running_tasks"] = [_running(r) for r in store.list(
            Query(status=TaskStatus.RUNNING), limit=RUNNING_SHOWN)]
        report["queue_depth"] = store.pending_by_queue()
        report["counts"] = {str(k): v for k, v in store.counts_by_status().items()}
        report["database"] = target.db_path
    finally:
        store.close()
    return report


def _running(record: TaskRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "queue": record.queue, "attempt": record.attempts,
            "owner": record.owner, "started_at": record.started_at, "progress": record.progress,
            "progress_message": record.progress_message, "cancel_requested": record.cancel_requested}


def _schedules(fired: dict[str, dict[str, Any]], next_ticks: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Periodic schedules: the last tick fired (from the database, by any castord)
    and, when this castord reported it, the next tick (unless that report is older
    than the last firing)."""
    report = {}
    for name in sorted(set(fired) | set(next_ticks)):
        row = fired.get(name) or {"last_tick": None, "fired_at": None, "task_id": None}
        next_tick = next_ticks.get(name)
        if next_tick is not None and row["last_tick"] is not None and next_tick <= row["last_tick"]:
            next_tick = None
        report[name] = {**row, "next_tick": next_tick}
    return report


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def render(report: dict[str, Any]) -> str:
    """The human form of status_report()."""
    lines = []
    if report["running"]:
        lines.append(f"castord is running: pid {report['pid']}, app {report.get('app')}, "
                     f"state {report.get('state', '?')}, up {report.get('uptime_s', '?')} s")
    else:
        lines.append("castord is not running")
    for child in report.get("children") or []:
        running = child.get("running") or []
        doing = ", ".join(f"{t['name']} {t['id'][-8:]}" for t in running) or "idle"
        lines.append(
            f"  {child['role']} {child['index']}: pid {child['pid']}, {child['state']}, {doing}; "
            f"heartbeat {child['heartbeat_age_s']} s ago, {child['done']} done, "
            f"RSS {child['rss_kb'] // 1024} MB")
    for task in report.get("running_tasks") or []:
        done = "" if task["progress"] is None else f" {task['progress']:.0%}"
        note = f" {task['progress_message']}" if task["progress_message"] else ""
        cancelling = " (cancelling)" if task["cancel_requested"] else ""
        lines.append(f"  running {task['name']} {task['id'][-8:]} attempt {task['attempt']}"
                     f"{done}{note}{cancelling}")
    if "counts" in report:
        depth = ", ".join(f"{q}={n}" for q, n in sorted(report["queue_depth"].items())) or "empty"
        lines.append(f"queues: {depth}")
        lines.append("tasks: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()))
    for name, sched in (report.get("schedules") or {}).items():
        next_tick = f", next {_when(sched['next_tick'])}" if sched.get("next_tick") is not None else ""
        lines.append(f"schedule {name}: last fired {_when(sched['fired_at'])}{next_tick}")
    return "\n".join(lines)
