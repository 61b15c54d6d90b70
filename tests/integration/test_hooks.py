"""manager.on(event, fn): hooks fired by an in-process Worker and producer, on both stores."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import pytest

import castor
from castor.hooks import EVENTS, TaskEvent
from castor.worker import Worker
from tests.conftest import wait_until


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def location(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "hooks.db")
    return str(request.getfixturevalue("postgres_db_url"))


@pytest.fixture
def app(location: str) -> Iterator[Any]:
    """A Manager with a few tasks and a hook on every event that records (event, task id, status)."""
    manager = castor.Manager(location)
    seen: list[TaskEvent] = []
    for event in EVENTS:
        manager.on(event, seen.append)

    @manager.task(mode="process", name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @manager.task(mode="process", name="flaky", retries=1, retry_delay=0)
    def flaky(message: str) -> None:
        raise ValueError(message)

    @manager.task(mode="process", name="once", unique=True)
    def once(n: int) -> int:
        return n

    @manager.task(mode="process", name="cached", cache_ttl=60)
    def cached(n: int) -> int:
        return n * n

    class App:
        pass

    a = App()
    a.manager, a.seen, a.add, a.flaky, a.once, a.cached = manager, seen, add, flaky, once, cached  # type: ignore[attr-defined]
    a.worker = Worker(manager, mode="process")  # type: ignore[attr-defined]
    yield a
    manager.close()


def story(seen: list[TaskEvent]) -> list[tuple[str, str, str]]:
    return [(e.event, e.task_id, str(e.record.status)) for e in seen]


def test_a_success_fires_enqueued_started_succeeded_with_its_result(app: Any) -> None:
    task = app.add.delay(2, 3)
    assert story(app.seen) == [("task.enqueued", task.id, "pending")]
    assert app.worker.step()
    assert story(app.seen) == [("task.enqueued", task.id, "pending"), ("task.started", task.id, "running"),
                               ("task.succeeded", task.id, "success")]
    done = app.seen[-1]
    assert done.result() == 5 and done.error is None and done.record.finished_at is not None
    assert done.exception is None
    assert app.seen[0].result() is None  # not a success
    assert task.status() == "success"  # the hook ran after the commit, and changed nothing


def test_a_failed_attempt_fires_retried_then_the_last_fires_failed(app: Any) -> None:
    task = app.flaky.delay("card declined")
    while app.worker.step():
        pass
    assert [e.event for e in app.seen] == ["task.enqueued", "task.started", "task.retried",
                                           "task.started", "task.failed"]
    retried, failed = app.seen[2], app.seen[4]
    assert retried.record.status == castor.TaskStatus.PENDING and retried.record.attempts == 1
    assert failed.record.attempts == 2 and failed.task_id == task.id
    assert failed.error is not None and failed.error["type"].endswith("ValueError")
    assert failed.error["message"] == "card declined"
    # The live exception, in the worker that ran the attempt (for Sentry's stack frames).
    assert isinstance(retried.exception, ValueError) and isinstance(failed.exception, ValueError)
    assert failed.exception is not retried.exception and failed.exception.__traceback__ is not None


def test_a_batch_fires_one_enqueued_per_task_after_the_write(app: Any) -> None:
    tasks = app.manager.enqueue_many([app.add.s(1, 1), app.add.s(2, 2)]) + app.add.map([(3, 3)])
    assert story(app.seen) == [("task.enqueued", t.id, "pending") for t in tasks]
    for event in app.seen:  # committed: another connection would see it
        assert app.manager.store.status(event.task_id) == castor.TaskStatus.PENDING


def test_a_unique_twin_or_a_cached_answer_is_no_enqueue(app: Any) -> None:
    first = app.once.delay(7)
    assert app.once.delay(7).id == first.id
    assert [e.task_id for e in app.seen if e.event == "task.enqueued"] == [first.id]
    squared = app.cached.delay(4)
    while app.worker.step():
        pass
    del app.seen[:]
    assert app.cached.delay(4).id == squared.id  # answered by the cached success
    assert app.seen == []


def test_cancelling_a_pending_task_fires_cancelled_in_the_cancelling_process(app: Any) -> None:
    task = app.add.apply_async((1, 2), countdown=3600)
    assert task.cancel() == "cancelled"
    (event,) = [e for e in app.seen if e.event == "task.cancelled"]
    assert event.task_id == task.id and event.record.status == castor.TaskStatus.CANCELLED
    assert task.cancel() == "cancelled"  # already over: no second event
    assert len([e for e in app.seen if e.event == "task.cancelled"]) == 1


def test_a_task_claimed_after_its_expiry_is_cancelled_and_never_started(app: Any) -> None:
    task = app.add.apply_async((1, 1), expires=0.001)
    time.sleep(0.01)  # past its expiry (a wall-clock fact, not a wait for something)
    assert app.worker.step()
    assert story(app.seen) == [("task.enqueued", task.id, "pending"), ("task.cancelled", task.id, "cancelled")]


def test_a_pending_task_the_expiry_sweep_ends_fires_cancelled_in_the_sweeping_worker(app: Any) -> None:
    from castor.worker import LeaseKeeper

    task = app.add.apply_async((1, 1), expires=0.001)
    time.sleep(0.01)  # past its expiry
    LeaseKeeper(app.worker)._expire_pending()
    assert story(app.seen) == [("task.enqueued", task.id, "pending"), ("task.cancelled", task.id, "cancelled")]


def test_a_refused_settle_is_no_event(app: Any) -> None:
    """The lease went to another attempt before the outcome was written: that attempt's
    outcome is the task's, so this one fires nothing."""
    app.add.delay(1, 1)
    (record,) = app.worker._claim(1)
    app.manager.store.release_owner(app.worker.owner, count_attempt=False, max_lost=3)
    app.worker.run_claimed(record)
    assert [e.event for e in app.seen] == ["task.enqueued", "task.started"]


def test_eager_mode_fires_every_event_in_order(location: str) -> None:
    manager = castor.Manager(location, eager=True)
    seen: list[str] = []

    @manager.on("task.enqueued")
    @manager.on("task.started")
    @manager.on("task.succeeded")
    def note(event: TaskEvent) -> None:
        seen.append(event.event)

    @manager.task(mode="thread")
    def double(n: int) -> int:
        return 2 * n

    try:
        assert double.delay(4).join(timeout=5) == 8
        assert seen == ["task.enqueued", "task.started", "task.succeeded"]
    finally:
        manager.close()


def test_a_raising_hook_is_logged_and_changes_nothing(app: Any, caplog: pytest.LogCaptureFixture) -> None:
    after: list[str] = []

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("hook bug")

    app.manager.on("task.succeeded", broken)
    app.manager.on("task.succeeded", lambda e: after.append(e.task_id))  # later hooks still run
    app.manager.on("task.enqueued", broken)
    caplog.set_level(logging.WARNING, logger="castor.hooks")
    task = app.add.delay(1, 2)  # the enqueue stands
    assert app.worker.step()
    assert task.join(timeout=5) == 3 and after == [task.id]
    failures = [r for r in caplog.records if "hook.failed" in r.getMessage()]
    assert len(failures) == 2  # one line per failed call
    text = failures[-1].getMessage()
    for part in ("task.succeeded", task.id, "broken", "RuntimeError", "hook bug"):
        assert part in text
    assert app.worker.step() is False  # the worker lives on


def test_off_removes_a_hook(app: Any) -> None:
    calls: list[str] = []
    hook = app.manager.on("task.enqueued", lambda e: calls.append(e.task_id))
    app.add.delay(1, 1)
    assert app.manager.off("task.enqueued", hook) is True
    assert app.manager.off("task.enqueued", hook) is False
    app.add.delay(2, 2)
    assert len(calls) == 1



def test_a_lease_that_ran_out_is_a_retry_then_a_failure_fired_by_the_worker_that_found_it(app: Any) -> None:
    """A worker that stalled or vanished fires nothing: the worker whose recovery takes
    the task back does (task.retried; task.failed with WorkerLost once out of chances)."""
    task = app.add.delay(1, 1)
    finder = Worker(app.manager, mode="process")
    ends: list[TaskEvent] = []
    for attempt in range(1, 4):  # castor.worker.MAX_WORKER_LOSSES
        stalled = Worker(app.manager, mode="process", lease=0.05)
        (record,) = stalled._claim(1)
        assert record.attempts == attempt

        def recovered(attempt: int = attempt) -> bool:
            finder._next_recovery = 0.0  # look now, as its loop does every second
            finder._exchange([], 0)
            ends[:] = [e for e in app.seen if e.event in ("task.retried", "task.failed")]
            return len(ends) == attempt

        wait_until(recovered, 10, f"the lease of attempt {attempt} to run out and be recovered")
    assert [e.event for e in ends] == ["task.retried", "task.retried", "task.failed"]
    assert ends[-1].task_id == task.id and ends[-1].record.status == castor.TaskStatus.FAILED
    assert ends[-1].error is not None and "WorkerLost" in ends[-1].error["type"]
    assert ends[-1].exception is None  # no attempt raised it here: only the stored error
    assert task.status() == "failed"


def test_a_periodic_tick_fires_enqueued_once_in_the_castord_that_won_it(app: Any) -> None:
    from castor.periodic import Scheduler

    app.manager.periodic(every=10, mode="thread", name="ping")(lambda: "pong")
    start = 1_900_000_000.0  # on a tick of every=10
    here, there = Scheduler(app.manager, now=start + 5), Scheduler(app.manager, now=start + 5)
    [task_id] = here.fire_due(start + 10)
    assert there.fire_due(start + 10) == []  # another castord on the same store: the tick is taken
    assert story(app.seen) == [("task.enqueued", task_id, "pending")]
    assert app.seen[0].record.name == "ping"
