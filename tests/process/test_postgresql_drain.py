"""Draining castord on PostgreSQL (issue 14 §3, SPEC §4's signal table), real processes.

test_castord.py's SIGTERM and second-SIGTERM tests, extended: tasks enqueued during a
drain, thread tasks. Its other stops (QUIT, --graceful-timeout) run unchanged in
test_postgresql_castord.py. The tasks are tests/conftest.py's testapp, on a database
of the test's own (`pg_testapp`).
"""

from __future__ import annotations

import signal

import pytest

from tests.conftest import wait_until
from tests.process.test_castord import daemons, marker_pids  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture


@pytest.mark.timeout(90)
def test_sigterm_finishes_critical_tasks_requeues_daemon_ones_and_claims_nothing_more(
        pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start("--workers", "2", "--threads", "1", app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    crit_marker, exp_marker = app_dir / "critical.marker", app_dir / "expendable.marker"
    critical = pg_testapp.critical.delay(2.0, str(crit_marker))
    expendable = pg_testapp.expendable.delay(str(exp_marker))
    wait_until(lambda: marker_pids(crit_marker) and marker_pids(exp_marker), 30, "both tasks to run")
    d.signal(signal.SIGTERM)
    # The idle thread host and the child that ran the daemon task leave at once; the
    # critical task's child keeps running it. Tasks enqueued now wake castord through a
    # NOTIFY, and no child may claim them.
    d.wait_event("child.exited", child="thread-host 0", reason="drained")
    d.wait_event("child.exited", child_pid=marker_pids(exp_marker)[0])
    later = pg_testapp.quick.map([(n,) for n in range(5)]) + pg_testapp.tadd.map([(n, n) for n in range(5)])
    assert d.wait_exit(30) == 0

    assert critical.status() == "success" and critical.join(timeout=1) == "finished"
    assert critical.attempts == 1 and len(marker_pids(crit_marker)) == 1
    info = expendable.info()
    assert info.status == "pending" and info.attempts == 0  # attempt not counted
    requeued = [e for e in d.events("task.requeued") if e["task_id"] == expendable.id]
    assert requeued and requeued[0]["reason"] == "drained"
    assert [(t.status(), t.attempts) for t in later] == [("pending", 0)] * len(later)

    second = daemons("second").start("--workers", "1", "--threads", "1", app="testapp:manager")
    assert expendable.join(timeout=30) == "rerun"
    assert expendable.attempts == 1 and len(marker_pids(exp_marker)) == 2
    assert [t.join(timeout=30) for t in later] == [0, 1, 2, 3, 4, 0, 2, 4, 6, 8]
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0


@pytest.mark.timeout(60)
def test_second_sigterm_stops_fast_and_requeues_without_counting(pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start("--workers", "1", "--threads", "1", app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    proc_marker, thread_marker = app_dir / "long.marker", app_dir / "tlong.marker"
    critical = pg_testapp.critical.delay(60, str(proc_marker))  # daemon=False: a drain would wait
    thread_task = pg_testapp.tstubborn.delay(str(thread_marker))  # daemon=False too, 120 s
    wait_until(lambda: marker_pids(proc_marker) and marker_pids(thread_marker), 30, "both tasks to start")
    d.signal(signal.SIGTERM)
    d.wait_event("castord.draining")
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0  # the tasks had ~60 s and ~120 s to go
    for task in (critical, thread_task):
        info = task.info()
        assert info.status == "pending" and info.attempts == 0, info
    assert {e["task_id"] for e in d.events("task.requeued")} == {critical.id, thread_task.id}
