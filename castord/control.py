"""The client side of `castord stop / status / reload`: find a castord, signal it, report.

A castord is found by its process first (its pidfile, or its title and open files
in /proc) and described from its database second: a master that is alive is
"running" even when its database was deleted, replaced or locked under it; what
the database cannot tell is said in `warnings`.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any

from castor.states import TaskStatus
from castor.store import Query, TaskRecord, display_url, is_server_url, open_store, scrub_secrets
from castor.views import DAEMON_STALE_SECONDS
from castord.children import PROCESS_WORKER, THREAD_HOST
from castord.errors import CastordError, ExitCode
from castord.files import UnsafePathError, read_regular, replace_atomically
from castord.pidfile import pid_alive, read_pid

# A master whose database heartbeat is older than this is considered gone (the HTTP
# API's health endpoint counts live castords by the same rule).
STALE_SECONDS = DAEMON_STALE_SECONDS
# `castord status` lists at most this many running tasks (newest first).
RUNNING_SHOWN = 50
# How long `castord status` waits for another program's write lock on the database.
STATUS_LOCK_SECONDS = 2.0


@dataclass
class Target:
    """A castord to talk to: its pid, and where its database is (if known)."""

    pid: int | None
    db_path: str | None
    app: str | None
    warnings: list[str] = field(default_factory=list)


def sidecar_path(pidfile: str) -> str:
    return pidfile + ".json"


def write_sidecar(pidfile: str, *, app: str, db_path: str) -> None:
    """Beside the pidfile: what `status --pidfile` needs to find the database. Written
    to a fresh randomly named file and renamed into place: a link planted at either
    name is replaced, never written through."""
    data = json.dumps({"pid": os.getpid(), "app": app, "db_path": db_path}).encode()
    replace_atomically(sidecar_path(pidfile), data)


def remove_sidecar(pidfile: str) -> None:
    try:
        os.unlink(sidecar_path(pidfile))
    except FileNotFoundError:
        pass


def _read_sidecar(pidfile: str) -> tuple[dict[str, Any], list[str]]:
    """The sidecar's content if it can be trusted as much as the pidfile, and why not."""
    path = sidecar_path(pidfile)
    try:
        text, st = read_regular(path, "pidfile sidecar")
        owner = os.lstat(pidfile).st_uid
    except FileNotFoundError:
        return {}, []
    except UnsafePathError as exc:
        return {}, [str(exc)]
    except OSError as exc:
        return {}, [f"cannot read {path}: {exc.strerror}"]
    if st.st_uid not in (0, os.geteuid(), owner):
        return {}, [f"ignoring {path}: it belongs to uid {st.st_uid}, not to the pidfile's owner (uid {owner})"]
    try:
        meta = json.loads(text)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        return {}, [f"ignoring {path}: it is not the JSON castord writes"]
    db_path = meta.get("db_path")
    if st.st_uid not in (0, os.geteuid()) and isinstance(db_path, str):
        # Opening a database migrates it: only one its writer could have written anyway.
        try:
            db_owner = os.stat(db_path).st_uid
        except OSError:
            db_owner = st.st_uid  # missing: status says so, and never creates it
        if db_owner != st.st_uid:
            return {**meta, "db_path": None}, [
                f"ignoring the database {path} names, {db_path}: the sidecar's owner (uid {st.st_uid}) "
                f"does not own it (uid {db_owner})"]
    return meta, []


def find(app: str | None, pidfile: str | None) -> Target:
    """Locate a running castord from a pidfile, or from APP: its database heartbeat
    rows, else a master for APP that holds APP's database open."""
    if pidfile:
        pid = read_pid(pidfile)
        meta, warnings = _read_sidecar(pidfile)
        alive = pid is not None and pid_alive(pid)
        return Target(pid if alive else None, meta.get("db_path"), meta.get("app") or app, warnings)
    if not app:
        raise CastordError("name the castord: give APP or --pidfile", ExitCode.USAGE)
    from castor.app import load_manager

    manager = load_manager(app)
    warnings = []
    try:
        rows = manager.store.daemons()
    except Exception as exc:  # noqa: BLE001 - a sick database must not hide a live master
        rows = []
        warnings.append(f"cannot read castord's heartbeat rows in {display_url(manager.path)}: "
                        f"{scrub_secrets(str(exc), manager.path)}")
    finally:
        manager.close()
    row = _live_row(rows, app)
    if row is not None:
        return Target(row["pid"], manager.path, app, warnings)
    # A server's URL is no file a process holds open.
    masters = [] if is_server_url(manager.path) else masters_using(manager.path, app)
    return Target(masters[0] if masters else None, manager.path, app, warnings)


def masters_using(db_path: str, app: str | None) -> list[int]:
    """Live castord masters for `app` (None: any) on this host that hold `db_path` open,
    found in /proc by their process title and their open files: so also when the file
    was deleted or replaced under them, or their heartbeat rows are stale (a long
    foreign lock). Processes of other users are seen only by root."""
    real = os.path.realpath(db_path)
    wanted = {real, f"{real} (deleted)"}
    title = f"castord: master {app} [".encode() if app else b"castord: master "
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if not f.read().startswith(title):
                    continue
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(_readlink(f"/proc/{entry}/fd/{fd}") in wanted for fd in fds) and pid_alive(int(entry)):
                found.append(int(entry))
        except OSError:
            continue
    return sorted(found)


def _readlink(path: str) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _live_row(rows: list[dict[str, Any]], app: str | None) -> dict[str, Any] | None:
    host = socket.gethostname()
    for row in rows:
        # heartbeat_age is on the boot clock: a wall-clock step neither ages nor freshens it.
        if row["host"] != host or row["heartbeat_age"] > STALE_SECONDS:
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
    """Everything `castord status` shows, as data. `running` comes from the process
    alone; the database adds details, and `warnings` says what it could not add."""
    report: dict[str, Any] = {"running": target.pid is not None, "pid": target.pid, "app": target.app,
                              "warnings": list(target.warnings)}
    db_path = target.db_path
    if db_path is None:
        if target.pid is not None:
            report["warnings"].append(
                f"castord pid {target.pid} runs, but its pidfile's sidecar does not say which database "
                "it uses; give APP instead of --pidfile to see its tasks")
        return report
    report["database"] = shown = display_url(db_path)
    # (A server's URL, postgresql://...: no file to look for; the store says if it cannot answer.)
    if not is_server_url(db_path) and not os.path.exists(db_path):  # never create one: opening would
        if target.pid is not None:
            report["warnings"].append(
                f"database {shown} is missing: deleted or moved while castord pid {target.pid} runs, "
                "which still uses the file it opened (its tasks and heartbeats go there, out of reach); "
                "restart castord to use a new file")
        return report
    try:
        _add_database_details(report, target, db_path)
    except Exception as exc:  # noqa: BLE001 - status must answer even with a sick database
        report["warnings"].append(f"cannot read database {shown}: {scrub_secrets(str(exc), db_path)}")
    return report


def _add_database_details(report: dict[str, Any], target: Target, db_path: str) -> None:
    store = open_store(db_path, lock_timeout=STATUS_LOCK_SECONDS)
    shown = display_url(db_path)
    try:
        rows = store.daemons()
        report["fleet"] = fleet(rows)
        row = next((r for r in rows if r["pid"] == target.pid and r["host"] == socket.gethostname()), None)
        if row is not None and target.pid is not None:
            now = time.time()
            report["uptime_s"] = round(now - row["started_at"], 1)
            age = row["heartbeat_age"]
            report["heartbeat_age_s"] = round(age, 1)
            report.update({k: row["info"].get(k) for k in ("state", "workers", "threads", "queues", "children")})
            if age > STALE_SECONDS:
                report["warnings"].append(
                    f"castord pid {target.pid} last wrote its heartbeat row in {shown} "
                    f"{age:.0f} s ago: it cannot write to the file (locked by another "
                    "program, full, read-only?) or its main loop is stuck; the details shown are that old")
        elif target.pid is not None:
            report["warnings"].append(
                f"no heartbeat row for castord pid {target.pid} in {shown}: the file was replaced under it, "
                "or castord cannot write to it; what follows is the file's content, not necessarily castord's")
        report["schedules"] = _schedules(store.schedules(), (row or {}).get("info", {}).get("schedules") or {},
                                         store.disabled_schedules())
        report["running_tasks"] = [_running(r) for r in store.list(
            Query(status=TaskStatus.RUNNING), limit=RUNNING_SHOWN)]
        report["queue_depth"] = store.pending_by_queue()
        report["paused_queues"] = sorted(store.paused_queues())
        report["paused_names"] = sorted(store.paused_names())
        # Tasks held back by a limit are pending like any other: the buckets tell why.
        report["rate_limits"] = {f"{kind}:{name}": {**limit, "tokens": round(limit["tokens"], 3)}
                                 for (kind, name), limit in sorted(store.rate_limits().items())}
        report["concurrency_limits"] = store.concurrency_limits()
        report["counts"] = {str(k): v for k, v in store.counts_by_status().items()}
    finally:
        store.close()


def fleet(rows: list[dict[str, Any]], *, now: float | None = None) -> list[dict[str, Any]]:
    """Every castord heartbeat row on the store (every host, every app), by host then pid.
    A stale one (no heartbeat for STALE_SECONDS: stopped by SIGKILL, its host down or cut
    off, or unable to write) shows what it last said, and its uptime up to then."""
    now = time.time() if now is None else now
    out = []
    for row in sorted(rows, key=lambda r: (r["host"], r["pid"])):
        info = row["info"] or {}
        age = row["heartbeat_age"]
        stale = age > STALE_SECONDS
        out.append({
            "host": row["host"], "pid": row["pid"], "app": row["app"], "state": info.get("state"),
            "started_at": row["started_at"],
            "uptime_s": round((row["heartbeat_at"] if stale else now) - row["started_at"], 1),
            "heartbeat_age_s": round(age, 1), "stale": stale,
            "workers": info.get("workers"), "threads": info.get("threads"),
            "busy": sum(busy_slots(info.get("children") or [])), "queues": info.get("queues"),
        })
    return out


def busy_slots(children: list[dict[str, Any]]) -> tuple[int, int]:
    """(process children running a task, thread-host threads running one), from the
    children a castord reports: the slots of its pools that are busy."""
    process = sum(1 for c in children if c.get("role") == PROCESS_WORKER and c.get("running"))
    threads = sum(len(c.get("running") or []) for c in children if c.get("role") == THREAD_HOST)
    return process, threads


def _running(record: TaskRecord) -> dict[str, Any]:
    return {"id": record.id, "name": record.name, "queue": record.queue, "attempt": record.attempts,
            "owner": record.owner, "started_at": record.started_at, "progress": record.progress,
            "progress_message": record.progress_message, "cancel_requested": record.cancel_requested}


def _schedules(fired: dict[str, dict[str, Any]], next_ticks: dict[str, float],
               disabled: set[str] | frozenset[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """Periodic schedules: the last tick fired (from the database, by any castord),
    whether it is enabled (castord schedules disable) and, when this castord reported
    it, the next tick (unless that report is older than the last firing; none while
    disabled)."""
    report = {}
    for name in sorted(set(fired) | set(next_ticks)):
        row = fired.get(name) or {"last_tick": None, "fired_at": None, "task_id": None}
        next_tick = next_ticks.get(name)
        if next_tick is not None and row["last_tick"] is not None and next_tick <= row["last_tick"]:
            next_tick = None
        enabled = name not in disabled
        report[name] = {**row, "next_tick": next_tick if enabled else None, "enabled": enabled}
    return report


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def render(report: dict[str, Any]) -> str:
    """The human form of status_report()."""
    lines = []
    if report["running"]:
        head = f"castord is running: pid {report['pid']}, app {report.get('app')}"
        if report.get("state") is not None:
            head += f", state {report['state']}, up {report.get('uptime_s', '?')} s"
        lines.append(head)
    else:
        elsewhere = sum(1 for d in report.get("fleet") or [] if not d["stale"])
        lines.append("castord is not running" + (
            f" on this host ({elsewhere} castord{'s' if elsewhere != 1 else ''} of the fleet "
            f"{'run' if elsewhere != 1 else 'runs'} elsewhere)" if elsewhere else ""))
    lines.extend(f"warning: {w}" for w in report.get("warnings") or [])
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
        if report.get("paused_queues"):
            lines.append("paused queues (not claimed from): " + ", ".join(report["paused_queues"]))
        if report.get("paused_names"):
            lines.append("paused task names (not claimed): " + ", ".join(report["paused_names"]))
        if report.get("rate_limits"):
            lines.append("rate limits: " + ", ".join(
                f"{key} {limit['rate']:g}/s burst {limit['burst']} ({limit['tokens']:g} tokens now)"
                for key, limit in report["rate_limits"].items()))
        if report.get("concurrency_limits"):
            lines.append("concurrency limits: " + ", ".join(
                f"{name} {limit['running']} running (at most {limit['limit']} per key)" if limit["per_key"]
                else f"{name} {limit['running']}/{limit['limit']} running"
                for name, limit in report["concurrency_limits"].items()))
        lines.append("tasks: " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()))
    for name, sched in (report.get("schedules") or {}).items():
        next_tick = f", next {_when(sched['next_tick'])}" if sched.get("next_tick") is not None else ""
        state = "" if sched.get("enabled", True) else " (disabled: castord schedules enable)"
        lines.append(f"schedule {name}{state}: last fired {_when(sched['fired_at'])}{next_tick}")
    lines.extend(_render_fleet(report.get("fleet") or []))
    return "\n".join(lines)


def _render_fleet(entries: list[dict[str, Any]]) -> list[str]:
    """One line per castord on the store: where, what, how busy, how fresh."""
    if not entries:
        return []
    lines = [f"fleet: {len(entries)} castord{'s' if len(entries) != 1 else ''} on this store"]
    for d in entries:
        slots = (d["workers"] or 0) + (d["threads"] or 0)
        lines.append(
            f"  {d['host']} pid {d['pid']} {d['app']}: {d['state'] or '?'}, busy {d['busy']}/{slots} "
            f"({d['workers'] or 0} proc, {d['threads'] or 0} thr), heartbeat {d['heartbeat_age_s']} s ago"
            + (f"  STALE (no heartbeat for over {STALE_SECONDS:g} s)" if d["stale"] else ""))
    return lines
