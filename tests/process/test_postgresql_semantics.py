"""Task semantics through a real castord on PostgreSQL, where the process level could
differ from the store contract (tests/contract): requests that reach a running task
through the store (cancel, progress), children replaced after a timeout or a cancel
(new connections), retries and ETAs that come due with no NOTIFY, the TTL purge of
the master, tasks that enqueue from a child and from a fork of one.

The SQLite originals are test_semantics_castord.py's and test_castord.py's timeout
tests; the tasks are tests/conftest.py's testapp (`pg_testapp`).
"""

from __future__ import annotations

import json
import signal
import time

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import daemons, marker_pids, run_cli  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

NESTAPP = '''
import os
from testapp import manager, add, tadd


@manager.task(mode="process", name="enqueue_from_process")
def enqueue_from_process(n):
    return add.delay(n, n).id


@manager.task(mode="thread", name="enqueue_from_thread")
def enqueue_from_thread(n):
    return tadd.delay(n, 1).id


@manager.task(mode="process", name="enqueue_from_a_fork")
def enqueue_from_a_fork(n, id_file):
    # This child's connections are open (its claim came through them): the fork opens
    # its own, and the child's go on serving its settle and its next claims.
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            with open(id_file, "w") as f:
                f.write(add.delay(n, 100).id)
            code = 0
        finally:
            os._exit(code)  # as multiprocessing's fork children leave
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the fork exited {os.waitstatus_to_exitcode(status)}")
    with open(id_file) as f:
        return f.read()
'''


def test_retry_exhaustion_and_retry_to_success(pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start(app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    failing = pg_testapp.always_fails.delay("still broken")
    flaky = pg_testapp.flaky.delay(str(app_dir / "flaky.marker"), 2)
    with pytest.raises(ValueError, match="still broken"):
        failing.join(timeout=30)
    assert failing.attempts == 3 and [h["attempt"] for h in failing.history] == [1, 2, 3]
    assert flaky.join(timeout=30) == "ok" and flaky.attempts == 3
    assert len(marker_pids(app_dir / "flaky.marker")) == 3
    retries = d.wait_event("task.retrying", count=4)
    assert {e["task_id"] for e in retries} == {failing.id, flaky.id}


def test_cancel_running_process_and_thread_tasks(pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start("--workers", "1", "--threads", "2", app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    proc_marker, thread_marker = app_dir / "stubborn.marker", app_dir / "tstubborn.marker"
    in_process = pg_testapp.stubborn.delay(str(proc_marker))
    in_thread = pg_testapp.tstubborn.delay(str(thread_marker))
    wait_until(lambda: marker_pids(proc_marker) and marker_pids(thread_marker), 30, "both tasks to start")
    assert in_process.cancel() == "running" and in_thread.cancel() == "running"
    for task in (in_process, in_thread):
        with pytest.raises(castor.TaskCancelled):
            task.join(timeout=30)
        assert task.attempts == 1 and task.status() == "cancelled"
    exited = d.wait_event("child.exited", child_pid=marker_pids(proc_marker)[0])[0]
    assert exited["exit_code"] == 6 and exited["expected"] is True
    host = marker_pids(thread_marker)[0]
    assert not [e for e in d.events("child.exited") if e["child_pid"] == host]  # the thread host lives on
    # The replacement child connects afresh and works; so does the thread host.
    assert pg_testapp.add.delay(2, 2).join(timeout=30) == 4
    assert pg_testapp.tadd.delay(1, 2).join(timeout=30) == 3


def test_timeouts_in_a_process_child_and_in_the_thread_host(pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start("--workers", "1", "--threads", "2", app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    marker = app_dir / "timeout.marker"
    in_process = pg_testapp.critical.apply_async((30, str(marker)), timeout=1)
    in_thread = pg_testapp.spin.apply_async((30,), timeout=0.5)
    with pytest.raises(castor.TaskTimeout, match="ran past its timeout of 1 s"):
        in_process.join(timeout=30)
    with pytest.raises(castor.TaskTimeout):
        in_thread.join(timeout=30)
    exited = d.wait_event("child.exited", child_pid=marker_pids(marker)[0])[0]
    assert exited["exit_code"] == 5 and exited["expected"] is True
    assert pg_testapp.add.delay(1, 1).join(timeout=30) == 2  # the replacement works
    assert pg_testapp.version.delay().join(timeout=30) == 1  # the thread host lives on


def test_progress_from_a_process_child_and_etas(pg_testapp, daemons, app_dir):  # noqa: F811
    d = daemons().start("--workers", "1", app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    marker = app_dir / "go.marker"
    task = pg_testapp.reporter.delay(str(marker))
    wait_until(lambda: task.progress == (0.5, "halfway"), 30, "progress from the child")
    status = run_cli(app_dir, "status", "testapp:manager", "--json")
    assert status.returncode == 0, status.stderr
    running = json.loads(status.stdout)["running_tasks"]
    assert [(t["id"], t["progress"], t["progress_message"]) for t in running] == [(task.id, 0.5, "halfway")]
    marker.write_text("go")
    assert task.join(timeout=30) == "reported" and task.progress == (1.0, "done")

    past = pg_testapp.quick.apply_async((1,), eta=time.time() - 3600)
    future = pg_testapp.quick.apply_async((2,), countdown=1.0)  # due with no NOTIFY: castord's timer
    assert past.join(timeout=30) == 1
    assert future.join(timeout=30) == 2
    record = future.info()
    assert record.started_at >= record.eta  # never early, though leases follow the server's clock


def test_unique_cached_and_ttl_tasks(pg_testapp, daemons, app_dir):  # noqa: F811
    path = app_dir / "once.log"
    first = pg_testapp.once.delay(str(path))
    assert all(pg_testapp.once.delay(str(path)) == first for _ in range(5))  # pending twins
    short = pg_testapp.ephemeral.delay(7)
    d = daemons().start(app="testapp:manager")
    d.wait_note("READY=1", timeout=30)
    assert first.join(timeout=30) == "once"
    assert path.read_text() == "ran\n"
    assert short.join(timeout=30) == 7
    wait_until(lambda: pg_testapp.manager.get(short.id) is None, 30, "the result to expire and be purged")
    square = pg_testapp.cached_square.delay(12)
    assert square.join(timeout=30) == 144
    assert pg_testapp.cached_square.delay(12) == square  # answered from the cache
    assert square.attempts == 1


def test_tasks_enqueue_from_children_and_from_a_fork_of_one(pg_testapp, daemons, app_dir):  # noqa: F811
    (app_dir / "nestapp.py").write_text(NESTAPP)
    import nestapp

    d = daemons().start("--workers", "1", "--threads", "1", app="nestapp:manager")
    d.wait_note("READY=1", timeout=30)
    from_process = pg_testapp.manager.get(nestapp.enqueue_from_process.delay(3).join(timeout=30))
    from_thread = pg_testapp.manager.get(nestapp.enqueue_from_thread.delay(4).join(timeout=30))
    assert from_process.join(timeout=30) == 6 and from_thread.join(timeout=30) == 5
    for n in range(3):  # the same child each time: its connections outlive each fork
        inner_id = nestapp.enqueue_from_a_fork.delay(n, str(app_dir / f"fork{n}.id")).join(timeout=30)
        assert pg_testapp.manager.get(inner_id).join(timeout=30) == n + 100
    assert not d.events("child.exited")  # no child died of it
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0
