"""`castord status` asks the process first and the database second.

While the master lives, status says "running" (exit 0), whatever happened to the
database: deleted or replaced under it, or locked by another program. What the
database cannot tell is said as a warning, and status never creates a database.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import time
from pathlib import Path

import pytest

import castor
from castor.clocks import boot_clock
from castord import control
from castord import errors as castord_errors
from tests.conftest import wait_until
from tests.process.test_bad_input import foreign_write_lock
from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture


def remove_database(db_path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(db_path + suffix).unlink(missing_ok=True)


def status(app_dir: Path, *target: str) -> tuple[int, dict, str]:
    machine = run_cli(app_dir, "status", *target, "--json", timeout=30)
    human = run_cli(app_dir, "status", *target, timeout=30)
    assert "Traceback" not in machine.stderr + human.stderr, machine.stderr + human.stderr
    assert machine.returncode == human.returncode, (machine, human)
    return machine.returncode, json.loads(machine.stdout), human.stdout


@pytest.mark.timeout(60)
def test_status_by_pidfile_says_running_after_the_database_was_deleted(daemons, app_dir, db_path):  # noqa: F811
    pidfile = str(app_dir / "castord.pid")
    d = daemons().start("--workers", "1", "--threads", "0", "--pidfile", pidfile)
    d.wait_note("READY=1")
    remove_database(db_path)
    code, report, human = status(app_dir, "--pidfile", pidfile)
    assert code == 0 and report["running"] and report["pid"] == d.pid
    assert human.startswith(f"castord is running: pid {d.pid}")
    # Missing, or already replaced by an empty file (a child's new connection makes one).
    (warning,) = report["warnings"]
    assert warning.startswith((f"database {db_path} is missing: ", f"no heartbeat row for castord pid {d.pid} "))
    assert f"warning: {warning}" in human
    d.signal(signal.SIGTERM)
    # Either our SIGTERM drains it, or it noticed the deletion first (two heartbeats
    # while the two status commands ran, on a slow machine) and left on its own.
    assert d.wait_exit(30) in (0, castord_errors.ExitCode.DATABASE_REPLACED)


def test_status_never_creates_the_missing_database(db_path):
    report = control.status_report(control.Target(os.getpid(), db_path, "testapp:manager"))
    assert report["running"] and report["warnings"] == [
        f"database {db_path} is missing: deleted or moved while castord pid {os.getpid()} runs, which still "
        "uses the file it opened (its tasks and heartbeats go there, out of reach); restart castord to use "
        "a new file"]
    assert f"warning: database {db_path} is missing" in control.render(report)
    assert not Path(db_path).exists()


@pytest.mark.timeout(60)
def test_status_by_app_finds_the_master_after_its_database_was_deleted(daemons, app_dir, db_path):  # noqa: F811
    d = daemons().start("--workers", "1", "--threads", "0")
    d.wait_note("READY=1")
    # Stopped, the master cannot notice the deletion and leave (exit 8) before status looks.
    d.signal(signal.SIGSTOP)
    try:
        remove_database(db_path)
        code, report, human = status(app_dir, "testapp:manager")
        assert code == 0 and report["running"] and report["pid"] == d.pid, report
        assert any(f"no heartbeat row for castord pid {d.pid}" in w for w in report["warnings"]), report
        assert human.startswith(f"castord is running: pid {d.pid}")
        reload = run_cli(app_dir, "reload", "testapp:manager")
        assert reload.returncode == 0 and f"castord pid {d.pid}" in reload.stdout
    finally:
        d.signal(signal.SIGCONT)
    d.wait_event("castord.signal", signal="SIGHUP")  # the reload reached it
    assert d.wait_exit(30) == 8  # and then it noticed its database had gone
    assert d.events("castord.database_replaced")


def heartbeat_age(db_path: str, pid: int) -> float:
    """Seconds since castord pid `pid` last wrote its heartbeat row (read-only, no lock)."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        (last,) = conn.execute("SELECT max(heartbeat_at) FROM castor_daemons WHERE pid = ?", (pid,)).fetchone()
    finally:
        conn.close()
    return time.time() - last


@pytest.mark.timeout(60)
def test_status_says_running_while_another_program_holds_the_database_locked(daemons, app_dir, db_path):  # noqa: F811
    pidfile = str(app_dir / "castord.pid")
    d = daemons().start("--workers", "1", "--threads", "0", "--pidfile", pidfile)
    d.wait_note("READY=1")
    with foreign_write_lock(app_dir, db_path):
        # The master cannot write its heartbeat row while the lock lasts; once the
        # row looks like a gone castord's, status must still find the live master.
        wait_until(lambda: heartbeat_age(db_path, d.pid) > control.STALE_SECONDS + 1, 40,
                   "castord's heartbeat row to go stale", interval=0.5)
        for target in (("testapp:manager",), ("--pidfile", pidfile)):
            code, report, human = status(app_dir, *target)
            assert code == 0 and report["running"] and report["pid"] == d.pid, (target, report)
            assert any(w.startswith(f"castord pid {d.pid} last wrote its heartbeat row in ")
                       for w in report["warnings"]), (target, report)
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0


def test_a_live_pid_without_a_heartbeat_row_is_running_with_a_warning(db_path):
    """The database was replaced under castord: a fresh file, no row for its pid."""
    castor.Manager(db_path).close()
    report = control.status_report(control.Target(os.getpid(), db_path, "testapp:manager"))
    assert report["running"] and report["pid"] == os.getpid()
    assert report["warnings"] == [
        f"no heartbeat row for castord pid {os.getpid()} in {db_path}: the file was replaced under it, "
        "or castord cannot write to it; what follows is the file's content, not necessarily castord's"]
    assert "warning: no heartbeat row" in control.render(report)


def test_a_stale_heartbeat_row_is_running_with_a_warning(db_path):
    manager = castor.Manager(db_path)
    try:
        old = time.time() - 600
        # Ten minutes ago on the boot clock too: staleness is measured on it.
        manager.store.clock = lambda: boot_clock() - 600
        manager.store.record_daemon("host:1:x", host=socket.gethostname(), pid=os.getpid(), app="a:m",
                                    started_at=old, info={"state": "running"}, now=old)
    finally:
        manager.close()
    report = control.status_report(control.Target(os.getpid(), db_path, "a:m"))
    assert report["running"] and report["state"] == "running"
    (warning,) = report["warnings"]
    assert warning.startswith(f"castord pid {os.getpid()} last wrote its heartbeat row in {db_path} 600")
