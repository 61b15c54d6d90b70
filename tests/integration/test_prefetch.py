"""Prefetch: a process worker claims several short tasks per transaction.

The batch size follows the observed task durations (castor/worker.py); these
tests set the worker's running average directly, so that what they check never
depends on how fast this machine runs a task.
"""

from __future__ import annotations

import threading

import pytest

from castor import TaskStatus
from castor.errors import ConfigurationError
from castor.worker import PREFETCH_MAX, Worker
from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(60)

SHORT = 1e-5  # seconds: an average that asks for the largest batch


def fast_worker(manager, **kwargs) -> Worker:
    worker = Worker(manager, mode="process", **kwargs)
    worker._average_duration = SHORT  # noqa: SLF001 - as if it had run short tasks
    return worker


def test_short_tasks_are_claimed_in_batches_and_all_succeed(manager):
    @manager.task(mode="process")
    def noop(i):
        return i

    handles = noop.map([(i,) for i in range(100)])
    fast_worker(manager).run(until_idle=True)
    records = [manager.store.get(h.id) for h in handles]
    assert all(r.status == TaskStatus.SUCCESS and r.attempts == 1 for r in records)
    assert [h.join(timeout=5) for h in handles] == list(range(100))
    # One claim per batch: tasks claimed together share their claim time.
    claims = {r.started_at for r in records}
    assert len(claims) <= 100 // PREFETCH_MAX + 2, len(claims)


def test_the_batch_follows_task_durations(manager):
    worker = Worker(manager, mode="process", prefetch=8)
    assert worker._batch_size() == 1  # noqa: SLF001 - nothing known yet: one at a time
    worker._average_duration = SHORT  # noqa: SLF001
    assert worker._batch_size() == 8  # noqa: SLF001 - capped by prefetch=
    worker._average_duration = 1.0  # noqa: SLF001 - long tasks: one at a time
    assert worker._batch_size() == 1  # noqa: SLF001


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_a_bad_prefetch_is_refused(manager, bad):
    with pytest.raises(ConfigurationError, match="prefetch must be a positive integer"):
        Worker(manager, mode="process", prefetch=bad)


def test_tasks_claimed_behind_a_long_one_are_handed_back_to_another_worker(manager):
    release = threading.Event()

    @manager.task(mode="process", priority=10)
    def long_task():
        release.wait(30)
        return "long"

    @manager.task(mode="process")
    def short(i):
        return i

    long_handle = long_task.delay()
    shorts = short.map([(i,) for i in range(5)])
    first = fast_worker(manager)
    runner = threading.Thread(target=first.run, kwargs={"until_idle": True}, daemon=True)
    runner.start()
    try:
        # The first worker claimed the long task with the short ones behind it; it
        # gives those back, uncounted, and a second worker runs them meanwhile.
        wait_until(lambda: manager.store.status(long_handle.id) == TaskStatus.RUNNING, 10, "the long task to start")
        second = Worker(manager, mode="process")
        wait_until(lambda: (second.step() or True) and all(
            manager.store.status(h.id) == TaskStatus.SUCCESS for h in shorts), 20, "the short tasks to finish")
        assert manager.store.status(long_handle.id) == TaskStatus.RUNNING
        for h in shorts:
            record = manager.store.get(h.id)
            assert record.owner == second.owner and record.attempts == 1, record
    finally:
        release.set()
        runner.join(30)
    assert long_handle.join(timeout=10) == "long"


def test_stopping_mid_batch_hands_the_unstarted_tasks_back(manager):
    holder: dict[str, Worker] = {}

    @manager.task(mode="process")
    def stopper(i):
        holder["worker"].stop()  # the worker is asked to stop while it holds a batch
        return i

    handles = stopper.map([(i,) for i in range(10)])
    worker = holder["worker"] = fast_worker(manager)
    worker.run()
    records = [manager.store.get(h.id) for h in handles]
    assert [r.status for r in records].count(TaskStatus.SUCCESS) == 1
    for r in records[1:]:  # claimed once, never started: back in the queue, attempt not counted
        assert (r.status, r.attempts, r.fence, r.owner is None or r.lease_expires is None) == (
            TaskStatus.PENDING, 0, 1, True), r
    Worker(manager, mode="process").run(until_idle=True)
    assert [h.join(timeout=5) for h in handles] == list(range(10))


def test_max_tasks_is_exact_with_prefetch(manager):
    @manager.task(mode="process")
    def noop(i):
        return i

    handles = noop.map([(i,) for i in range(20)])
    fast_worker(manager).run(max_tasks=5)
    statuses = [manager.store.status(h.id) for h in handles]
    assert statuses.count(TaskStatus.SUCCESS) == 5
    assert statuses.count(TaskStatus.PENDING) == 15
    assert all(manager.store.get(h.id).attempts == 0 for h in handles if manager.store.status(h.id) == "pending")


def test_a_task_cancelled_while_waiting_in_a_batch_never_runs(manager):
    ran: list[int] = []
    started = threading.Event()
    release = threading.Event()

    @manager.task(mode="process", priority=10)
    def blocker():
        started.set()
        release.wait(30)

    @manager.task(mode="process")
    def victim(i):
        ran.append(i)

    b = blocker.delay()
    v = victim.delay(1)
    worker = fast_worker(manager)
    runner = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    runner.start()
    try:
        assert started.wait(10)
        v.cancel()  # it is claimed (running, to the database) but waits behind the blocker
        wait_until(lambda: v.status() == TaskStatus.CANCELLED, 10, "the waiting task to end cancelled")
    finally:
        release.set()
        runner.join(30)
    assert b.status() == TaskStatus.SUCCESS
    assert v.status() == TaskStatus.CANCELLED
    assert ran == []
