"""Task semantics through a real castord on PostgreSQL, where the process level could
differ from the store contract (tests/contract): requests that reach a running task
through the store (cancel, progress), children replaced after a cancel (new
connections), retries and ETAs that come due with no NOTIFY, purges racing settles
from other processes, and tasks that enqueue from a child and from a fork of one.

test_semantics_castord.py's tests run here unchanged, on tests/conftest.py's testapp
pointed at a database of the test's own (`pg_testapp`).
"""

from __future__ import annotations

import signal

import pytest

from tests.process import test_semantics_castord as sqlite_semantics
from tests.process.test_castord import daemons  # noqa: F401 - fixture
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


# test_semantics_castord.py's tests, unchanged: each takes (daemons, app_dir) and imports
# testapp, which pg_testapp points at PostgreSQL.
ORIGINALS = [
    sqlite_semantics.test_retry_exhaustion_and_retry_to_success,
    sqlite_semantics.test_cancel_a_running_process_task_replaces_its_child,
    sqlite_semantics.test_cancel_a_running_thread_task_keeps_the_thread_host,
    sqlite_semantics.test_cancel_racing_completion_ends_each_task_one_way,
    sqlite_semantics.test_progress_from_a_process_child,
    sqlite_semantics.test_eta_in_the_past_runs_at_once_and_future_eta_is_honoured,
    sqlite_semantics.test_purge_while_tasks_run_loses_nothing,
    sqlite_semantics.test_unique_cached_and_ttl_tasks,
    # Once a non-strict xfail: join's watch locked a pending row for an instant, and a
    # claim passed over it (tests/integration/test_postgresql_wakeups.py pins the fix).
    sqlite_semantics.test_priorities_order_the_queue_and_queues_choose_what_runs,
]


@pytest.mark.parametrize("original", ORIGINALS,
                         ids=lambda f: f.__name__.removeprefix("test_") if callable(f) else None)
def test_the_sqlite_semantics_tests_on_postgresql(original, pg_testapp, daemons, app_dir):  # noqa: F811
    original(daemons, app_dir)


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
