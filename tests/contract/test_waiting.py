"""Waiting for a change (another instance's commit), and closing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from castor.errors import StoreError
from castor.states import TaskStatus
from castor.store.base import task_topic, work_topic
from tests.contract.builders import claim, claim_one, new, outcome

LONG = 30.0  # a wait that ends before this was woken, not timed out


@pytest.mark.timeout(60)
def test_a_commit_after_seen_wakes_a_waiter_even_before_it_waits(backend, store):
    other = backend.open()
    seen = store.generation()
    other.enqueue([new("a")])
    started = time.monotonic()
    assert store.wait_for_change(seen, LONG) > seen
    assert time.monotonic() - started < LONG


@pytest.mark.timeout(60)
def test_a_commit_while_waiting_wakes_the_waiter(backend, store):
    other = backend.open()
    seen = store.generation()
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_change(seen, LONG)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)  # most likely inside its wait by now; either way it must wake
    other.enqueue([new("a")])
    waiter.join(LONG + 5)
    assert woke and woke[0] > seen
    assert time.monotonic() - started < LONG


@pytest.mark.timeout(60)
def test_without_a_change_the_wait_times_out(store):
    seen = store.generation()
    started = time.monotonic()
    assert store.wait_for_change(seen, 0.2) == seen
    assert time.monotonic() - started >= 0.2


def test_generation_moves_forward_only(backend, store):
    other = backend.open()
    first = store.generation()
    other.enqueue([new("a")])
    second = store.wait_for_change(first, LONG)
    assert second > first and store.generation() >= second


@pytest.mark.timeout(60)
def test_an_async_watcher_opened_before_a_commit_wakes(backend, store):
    other = backend.open()

    async def main() -> float:
        watcher = store.watch_async()
        try:
            other.enqueue([new("a")])
            started = time.monotonic()
            await watcher.wait(LONG)
            return time.monotonic() - started
        finally:
            watcher.close()

    assert asyncio.run(main()) < LONG


class TestClose:
    def test_a_closed_store_refuses_work(self, backend, store):
        store.enqueue([new("a")])
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.enqueue([new("b")])
        with pytest.raises(StoreError, match="closed"):
            store.get("a")
        assert backend.open().get("b") is None

    def test_closing_twice_is_harmless(self, store):
        store.close()
        store.close()

    def test_closing_one_instance_leaves_the_others_working(self, backend, store):
        other = backend.open()
        store.close()
        other.enqueue([new("a")])
        assert other.get("a") is not None


class TestTopics:
    """A waiter may name what it waits for (work_topic, task_topic): every write that
    makes it true must wake it. (A store may also wake it for other changes.)"""

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
    def test_a_due_task_wakes_its_modes_workers(self, backend, store, batch):
        other = backend.open()
        topic = work_topic("thread")
        seen = store.generation(topic)
        tasks = [new("a", mode="thread")] + ([new("b", mode="process")] if batch else [])
        other.enqueue(tasks)
        assert store.wait_for_change(seen, LONG, topic) != seen

    @pytest.mark.timeout(60)
    @pytest.mark.parametrize("end", ["success", "failed", "retry", "dropped", "batch"])
    def test_the_end_of_a_watched_task_wakes_its_joiner(self, backend, store, clocks, end):
        other = backend.open()
        other.enqueue([new("a"), new("b")])
        rec = claim_one(other, clocks)
        topic = task_topic(rec.id)
        with store.watch_task(rec.id):
            seen = store.generation(topic)
            if end == "batch":
                other.settle_and_claim([outcome(rec, at=clocks.wall)], "w1", mode="process", queues=None,
                                       limit=0, lease=10.0, now=clocks.wall)
            elif end == "retry":
                other.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
            else:
                status = TaskStatus.FAILED if end == "failed" else TaskStatus.SUCCESS
                other.settle_one(outcome(rec, status, at=clocks.wall, drop=end == "dropped"))
            assert store.wait_for_change(seen, LONG, topic) != seen

    @pytest.mark.timeout(60)
    def test_a_retry_due_now_wakes_the_workers(self, backend, store, clocks):
        other = backend.open()
        other.enqueue([new("a")])
        rec = claim_one(other, clocks)
        topic = work_topic("process")
        seen = store.generation(topic)
        other.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
        assert store.wait_for_change(seen, LONG, topic) != seen

    @pytest.mark.timeout(60)
    def test_a_cancelled_pending_task_wakes_its_joiner(self, backend, store, clocks):
        other = backend.open()
        other.enqueue([new("a")])
        with store.watch_task("a"):
            seen = store.generation(task_topic("a"))
            assert other.cancel("a", now=clocks.wall) == TaskStatus.CANCELLED
            assert store.wait_for_change(seen, LONG, task_topic("a")) != seen

    @pytest.mark.timeout(60)
    def test_a_periodic_firing_wakes_the_workers(self, backend, store, clocks):
        other = backend.open()
        topic = work_topic("thread")
        seen = store.generation(topic)
        assert other.fire_schedule("every", 100.0, new("tick-1", mode="thread"), now=clocks.wall)
        assert store.wait_for_change(seen, LONG, topic) != seen

    @pytest.mark.timeout(120)
    def test_producers_writing_at_once_never_leave_a_task_unannounced(self, backend, store, clocks):
        """Eight threads enqueue one task at a time through one store (a producer may
        coalesce their notifications); a worker that sleeps whenever it finds nothing is
        woken after every row: it never waits out its timeout. (Whether the coalescing's
        trailing notification is what wakes it depends on timing here: the deterministic
        test of that is tests/integration/test_postgresql_wakeups.py.)"""
        producer = backend.open()
        threads, each = 8, 50
        workers = [threading.Thread(target=lambda k=k: [producer.enqueue([new(f"t{k}-{i}", mode="thread")])
                                                        for i in range(each)]) for k in range(threads)]
        topic = work_topic("thread")
        for w in workers:
            w.start()
        claimed = 0
        while claimed < threads * each:
            seen = store.generation(topic)
            got = claim(store, clocks, limit=100, mode="thread")
            claimed += len(got)
            if not got:
                started = time.monotonic()
                store.wait_for_change(seen, LONG, topic)
                assert time.monotonic() - started < LONG, f"not woken with {threads * each - claimed} rows left"
        for w in workers:
            w.join()
        assert claimed == threads * each
