"""Task semantics through a real castord: retries, cancellation, progress from a
process child, ETA, purge while tasks run, unique tasks, result TTL."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.process.test_castord import daemons, marker_pids, run_cli  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)


def test_retry_exhaustion_and_retry_to_success(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start()
    d.wait_note("READY=1")
    failing = testapp.always_fails.delay("still broken")
    flaky = testapp.flaky.delay(str(app_dir / "flaky.marker"), 2)
    with pytest.raises(ValueError, match="still broken"):
        failing.join(timeout=30)
    assert failing.attempts == 3 and [h["attempt"] for h in failing.history] == [1, 2, 3]
    assert flaky.join(timeout=30) == "ok" and flaky.attempts == 3
    retries = d.wait_event("task.retrying", count=4)
    assert {e["task_id"] for e in retries} == {failing.id, flaky.id}
    assert all(e["exc_type"] in ("builtins.ValueError", "builtins.ConnectionError") for e in retries)


def test_cancel_a_running_process_task_replaces_its_child(daemons, app_dir):  # noqa: F811
    import testapp

    import castor

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "stubborn.marker"
    task = testapp.stubborn.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 20, "the task to start")
    victim = marker_pids(marker)[0]
    started = time.monotonic()
    assert task.cancel() == "running"
    with pytest.raises(castor.TaskCancelled):
        task.join(timeout=20)
    assert time.monotonic() - started < 10
    exited = d.wait_event("child.exited", child_pid=victim)[0]
    assert exited["exit_code"] == 6 and exited["expected"] is True
    assert testapp.add.delay(2, 2).join(timeout=20) == 4  # the replacement works
    assert task.attempts == 1 and task.status() == "cancelled"


def test_cancel_a_running_thread_task_keeps_the_thread_host(daemons, app_dir):  # noqa: F811
    import testapp

    import castor

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "tstubborn.marker"
    task = testapp.tstubborn.delay(str(marker))
    wait_until(lambda: marker_pids(marker), 20, "the task to start")
    host = marker_pids(marker)[0]
    task.cancel()
    with pytest.raises(castor.TaskCancelled):
        task.join(timeout=20)
    assert testapp.tadd.delay(1, 2).join(timeout=20) == 3
    assert not [e for e in d.events("child.exited") if e.get("child_pid") == host]
    d.wait_event("task.cancelled", task_id=task.id)


def test_cancel_racing_completion_ends_each_task_one_way(daemons, app_dir):  # noqa: F811
    import testapp

    import castor

    d = daemons().start()
    d.wait_note("READY=1")
    tasks = [testapp.quick.delay(i) for i in range(200)]
    answers = [t.cancel() for t in tasks]  # while castord is draining them
    outcomes = {"success": 0, "cancelled": 0}
    for task, answer in zip(tasks, answers, strict=True):
        try:
            task.join(timeout=30)
            outcomes["success"] += 1
            assert answer in ("running", "success")  # it was past pending when cancelled
        except castor.TaskCancelled:
            outcomes["cancelled"] += 1
    assert outcomes["success"] + outcomes["cancelled"] == 200
    assert outcomes["cancelled"] >= answers.count("cancelled")
    counts = testapp.manager.counts()
    assert counts["pending"] == counts["running"] == 0


def test_progress_from_a_process_child(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "1")
    d.wait_note("READY=1")
    marker = app_dir / "go.marker"
    task = testapp.reporter.delay(str(marker))
    wait_until(lambda: task.progress == (0.5, "halfway"), 20, "progress from the child")
    status = run_cli(app_dir, "status", "testapp:manager", "--json")
    running = json.loads(status.stdout)["running_tasks"]
    assert [(t["id"], t["progress"], t["progress_message"]) for t in running] == [(task.id, 0.5, "halfway")]
    marker.write_text("go")
    assert task.join(timeout=20) == "reported"
    assert task.progress == (1.0, "done")


def test_eta_in_the_past_runs_at_once_and_future_eta_is_honoured(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start()
    d.wait_note("READY=1")
    past = testapp.quick.apply_async((1,), eta=time.time() - 3600)
    future = testapp.quick.apply_async((2,), countdown=1.0)
    assert past.join(timeout=10) == 1
    assert future.join(timeout=10) == 2
    record = future.info()
    assert record.started_at >= record.eta  # never early
    assert record.started_at - record.eta < 1.0  # and prompt (figures: benchmarks/)


def test_purge_while_tasks_run_loses_nothing(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start()
    d.wait_note("READY=1")
    log = app_dir / "record.log"
    tasks = [testapp.note_down.delay(str(log), n) for n in range(300)]
    purged = 0
    stop = threading.Event()

    def purge_loop():
        nonlocal purged
        while not stop.is_set():
            purged += testapp.manager.purge(status="success")

    thread = threading.Thread(target=purge_loop)
    thread.start()
    try:
        wait_until(lambda: testapp.manager.count("pending") + testapp.manager.count("running") == 0,
                   60, "the queue to drain")
    finally:
        stop.set()
        thread.join(30)
    purged += testapp.manager.purge(status="success")
    assert purged == 300
    assert sorted(int(x) for x in log.read_text().split()) == list(range(300))
    assert all(testapp.manager.get(t.id) is None for t in tasks)


def test_unique_cached_and_ttl_tasks(daemons, app_dir):  # noqa: F811
    import testapp

    path = app_dir / "once.log"
    first = testapp.once.delay(str(path))
    assert all(testapp.once.delay(str(path)) == first for _ in range(5))  # pending twins
    short = testapp.ephemeral.delay(7)
    d = daemons().start()
    d.wait_note("READY=1")
    assert first.join(timeout=20) == "once"
    assert path.read_text() == "ran\n"
    assert short.join(timeout=20) == 7
    wait_until(lambda: testapp.manager.get(short.id) is None, 15, "the result to expire")
    square = testapp.cached_square.delay(12)
    assert square.join(timeout=20) == 144
    assert testapp.cached_square.delay(12) == square  # answered from the cache
    assert square.attempts == 1


def test_priorities_order_the_queue_and_queues_choose_what_runs(daemons, app_dir):  # noqa: F811
    import testapp

    low = [testapp.quick.apply_async((i,), priority=0) for i in range(5)]
    high = [testapp.quick.apply_async((i,), priority=9) for i in range(5)]
    elsewhere = testapp.quick.apply_async((99,), queue="reports")
    d = daemons().start("--workers", "1", "--threads", "0", "--queues", "default")
    d.wait_note("READY=1")
    for task in high + low:
        task.join(timeout=20)
    order = sorted(high + low, key=lambda t: t.info().started_at)
    assert order[:5] == high and order[5:] == low  # higher first; ties in enqueue order
    assert [t.id for t in order[:5]] == [t.id for t in high]
    # Claims after the 'reports' task was enqueued, so it was passed over, not unseen.
    assert testapp.quick.delay(100).join(timeout=20) == 100
    assert elsewhere.status() == "pending"


@pytest.mark.timeout(120)
def test_database_stops_growing_under_steady_load_with_a_ttl(daemons, app_dir):  # noqa: F811
    import os

    import testapp

    d = daemons().start()
    d.wait_note("READY=1")
    db = os.environ["CASTOR_TEST_DB"]
    sizes = []
    for _ in range(4):
        tasks = [testapp.ephemeral.delay(i) for i in range(1500)]  # result_ttl=0.5
        tasks[-1].join(timeout=60)
        wait_until(lambda: testapp.manager.count() == 0, 30, "every result to expire")
        sizes.append(os.path.getsize(db))
    # Freed pages are reused: after the first round the file does not grow.
    assert sizes[-1] <= sizes[0] * 1.05, sizes
