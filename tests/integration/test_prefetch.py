"""Prefetch: a worker claims more short tasks per transaction than it runs at once.

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


def fast_worker(manager, mode: str = "process", **kwargs) -> Worker:
    worker = Worker(manager, mode=mode, **kwargs)
    worker._average_duration = SHORT  # noqa: SLF001 - as if it had run short tasks
    return worker


@pytest.mark.parametrize("mode,threads", [("process", 1), ("thread", 4)])
def test_short_tasks_are_claimed_in_batches_and_all_succeed(manager, mode, threads):
    @manager.task(mode=mode)
    def noop(i):
        return i

    handles = noop.map([(i,) for i in range(100)])
    fast_worker(manager, mode, threads=threads).run(until_idle=True)
    records = [manager.store.get(h.id) for h in handles]
    assert all(r.status == TaskStatus.SUCCESS and r.attempts == 1 for r in records)
    assert [h.join(timeout=5) for h in handles] == list(range(100))
    # One claim per batch: tasks claimed together share their claim time.
    claims = {r.started_at for r in records}
    assert len(claims) <= 100 // PREFETCH_MAX + threads + 1, len(claims)


def test_a_pool_claims_the_next_batch_while_it_runs_this_one(manager, monkeypatch):
    """Short tasks: the claimer does not wait for the held tasks to run out. The first
    thread to take a held task nudges it (castor/pool_slots.py), and it claims the next
    batch while the threads run this one. Here every held task waits for that claim
    before it returns (one per thread), so the held ones cannot run out first (on code
    without the nudge, it waits 10 s in vain). The first two tasks, handed to the two threads
    straight from the claim, do not wait: they are not taken from the held ones."""
    refilled = threading.Event()
    waited: list[bool] = []

    @manager.task(mode="thread")
    def noop(i):
        if i >= 2 and not refilled.is_set() and len(waited) < 2:  # one wait per thread
            waited.append(refilled.wait(10))
        return i

    handles = noop.map([(i,) for i in range(40)])
    worker = fast_worker(manager, "thread", threads=2, prefetch=8)
    exchange = manager.store.exchange

    def spied(settlements, owner, **kwargs):
        if kwargs.get("limit", 0) > 0 and worker.waiting:
            refilled.set()  # a claim while tasks are still held
        return exchange(settlements, owner, **kwargs)

    monkeypatch.setattr(manager.store, "exchange", spied)
    worker.run(until_idle=True)
    assert waited and all(waited), waited
    assert [h.join(timeout=5) for h in handles] == list(range(40))
    assert all(manager.store.get(h.id).attempts == 1 for h in handles)


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

@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True, None])
def test_a_bad_max_lost_is_refused(manager, bad):
    with pytest.raises(ConfigurationError, match="max_lost must be a positive integer"):
        Worker(manager, max_lost=bad)


@pytest.mark.parametrize("mode,threads", [("process", 1), ("thread", 2)])
def test_tasks_claimed_behind_a_long_one_are_handed_back_to_another_worker(manager, mode, threads):
    release = threading.Event()

    @manager.task(mode=mode, priority=10)
    def long_task():
        release.wait(30)
        return "long"

    @manager.task(mode=mode)
    def short(i):
        return i

    longs = [long_task.delay() for _ in range(threads)]  # one per thread: all busy
    shorts = short.map([(i,) for i in range(5)])
    first = fast_worker(manager, mode, threads=threads)
    runner = threading.Thread(target=first.run, kwargs={"until_idle": True}, daemon=True)
    runner.start()
    try:
        # The first worker claimed the long tasks with the short ones behind them; it
        # gives those back, uncounted, and a second worker runs them meanwhile.
        wait_until(lambda: all(manager.store.status(h.id) == TaskStatus.RUNNING for h in longs), 10,
                   "the long tasks to start")
        second = Worker(manager, mode=mode, threads=1)
        wait_until(lambda: (second.step() or True) and all(
            manager.store.status(h.id) == TaskStatus.SUCCESS for h in shorts), 20, "the short tasks to finish")
        assert all(manager.store.status(h.id) == TaskStatus.RUNNING for h in longs)
        for h in shorts:
            record = manager.store.get(h.id)
            assert record.owner == second.owner and record.attempts == 1, record
    finally:
        release.set()
        runner.join(30)
    assert [h.join(timeout=10) for h in longs] == ["long"] * threads


@pytest.mark.parametrize("mode,threads", [("process", 1), ("thread", 2)])
def test_stopping_mid_batch_hands_the_unstarted_tasks_back(manager, mode, threads):
    holder: dict[str, Worker] = {}

    @manager.task(mode=mode)
    def stopper(i):
        if holder:
            holder["worker"].stop()  # the worker is asked to stop while it holds a batch
        return i

    handles = stopper.map([(i,) for i in range(10)])
    worker = holder["worker"] = fast_worker(manager, mode, threads=threads)
    worker.run()
    records = [manager.store.get(h.id) for h in handles]
    ran = [r for r in records if r.status == TaskStatus.SUCCESS]
    assert 1 <= len(ran) <= threads
    for r in records:
        if r.status != TaskStatus.SUCCESS:  # claimed once, never started: back, attempt not counted
            assert (r.status, r.attempts, r.fence, r.lease_expires) == (TaskStatus.PENDING, 0, 1, None), r
    holder.clear()  # no more stopping: the tasks handed back run to the end
    Worker(manager, mode=mode, threads=threads).run(until_idle=True)
    assert [h.join(timeout=5) for h in handles] == list(range(10))


@pytest.mark.parametrize("mode,threads", [("process", 1), ("thread", 2)])
def test_max_tasks_is_exact_with_prefetch(manager, mode, threads):
    @manager.task(mode=mode)
    def noop(i):
        return i

    handles = noop.map([(i,) for i in range(20)])
    fast_worker(manager, mode, threads=threads).run(max_tasks=5)
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


@pytest.mark.parametrize("mode,threads", [("process", 1), ("thread", 2)])
def test_a_short_tasks_result_is_written_while_a_long_task_of_its_batch_runs(manager, mode, threads):
    # Found by the dashboard test: the outcomes of a batch were written with the next
    # claim, so a long task at the end of a batch held its neighbours' results back.
    release = threading.Event()

    @manager.task(mode=mode, priority=10)
    def short():
        return "short"

    @manager.task(mode=mode)
    def long_task():
        release.wait(30)
        return "long"

    quick = short.delay()
    longs = [long_task.delay() for _ in range(threads)]
    worker = fast_worker(manager, mode, threads=threads)
    runner = threading.Thread(target=worker.run, kwargs={"until_idle": True}, daemon=True)
    runner.start()
    try:
        assert quick.join(timeout=20) == "short"
        assert all(h.status() == TaskStatus.RUNNING for h in longs)
    finally:
        release.set()
        runner.join(30)
    assert [h.join(timeout=10) for h in longs] == ["long"] * threads
