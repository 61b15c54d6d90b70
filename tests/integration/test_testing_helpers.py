"""castor.testing in-process: drain(), enqueued(), assert_enqueued(), isolated().

The pytest plugin itself (fixtures loaded through the entry point) is run in a
pytest subprocess by tests/process/test_testing_plugin.py.
"""

from __future__ import annotations

import math
import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import castor
from castor.testing import (
    DrainLimitReached,
    assert_enqueued,
    assert_not_enqueued,
    drain,
    enqueued,
    isolated,
)

# -- drain --------------------------------------------------------------------------


def test_drain_runs_both_modes_here_in_the_calling_thread(manager):
    where = []

    @manager.task(mode="process")
    def crunch(n):
        where.append(("process", os.getpid(), threading.get_ident()))
        return n * n

    @manager.task(mode="thread")
    def fetch(url):
        where.append(("thread", os.getpid(), threading.get_ident()))
        return f"got {url}"

    a, b = crunch.delay(7), fetch.delay("/x")
    ran = drain(manager)
    assert ran == [a, b]
    assert a.result == 49 and b.result == "got /x"
    here = (os.getpid(), threading.get_ident())
    assert [w[1:] for w in where] == [here, here]  # not a child process, not a pool thread
    assert drain(manager) == []  # nothing left


def test_drain_runs_what_tasks_enqueue_in_the_same_drain(manager):
    @manager.task(mode="thread")
    def step(n):
        if n < 3:
            step.delay(n + 1)
        return n

    step.delay(0)
    ran = drain(manager)
    assert [t.result for t in ran] == [0, 1, 2, 3]


def test_drain_follows_priority_within_a_mode(manager):
    @manager.task(mode="process")
    def job(label):
        return label

    low = job.apply_async(("low",), priority=0)
    high = job.apply_async(("high",), priority=9)
    assert drain(manager) == [high, low]


def test_a_failure_stays_recorded_unless_fail_fast(manager):
    @manager.task(mode="process")
    def broken():
        raise KeyError("missing")

    @manager.task(mode="process")
    def fine():
        return "ok"

    first = broken.delay()
    drain(manager)
    assert first.status() == "failed" and first.error["type"] == "builtins.KeyError"

    broken.delay()
    later = fine.delay()
    with pytest.raises(KeyError, match="missing"):
        drain(manager, fail_fast=True)
    assert later.status() == "pending"  # drain stopped at the failure


def test_retries_without_delay_run_in_the_same_drain(manager):
    calls = []

    @manager.task(mode="process", retries=3, retry_delay=0)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("not yet")
        return "ok"

    task = flaky.delay()
    assert drain(manager) == [task]
    assert task.result == "ok" and task.attempts == 3


def test_a_retry_waits_for_its_backoff_unless_advance_covers_it(manager):
    calls = []

    @manager.task(mode="thread", retries=2, retry_delay=30, retry_jitter=False)
    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("not yet")
        return "ok"

    task = flaky.delay()
    drain(manager)
    assert task.status() == "pending" and task.attempts == 1  # the retry is due in 30 s
    drain(manager, advance=10)
    assert task.status() == "pending"
    drain(manager, advance=timedelta(seconds=31))
    assert task.result == "ok" and task.attempts == 2


def test_each_backoff_counts_from_its_own_failure(manager):
    """As docs/testing-your-app.md says: retries of 10, 20 and 40 s all fit advance=60."""
    @manager.task(mode="process", retries=3, retry_delay=10, retry_backoff=2, retry_jitter=False)
    def down():
        raise ConnectionError("still down")

    task = down.delay()
    drain(manager, advance=30)  # the 40 s wait does not fit
    assert task.status() == "pending" and task.attempts == 3
    drain(manager, advance=60)
    assert task.status() == "failed" and task.attempts == 4


def test_countdown_and_eta_tasks_wait_for_advance(manager):
    @manager.task(mode="process")
    def remind(who):
        return f"reminded {who}"

    soon = remind.apply_async(("ada",), countdown=60)
    later = remind.apply_async(("bob",), countdown=timedelta(days=30))
    assert drain(manager) == []
    assert drain(manager, advance=120) == [soon]
    assert later.status() == "pending"
    assert drain(manager, advance=math.inf) == [later]
    assert later.result == "reminded bob"


def test_drain_serves_only_the_queues_given(manager):
    @manager.task(mode="thread", queue="emails")
    def email():
        return "sent"

    @manager.task(mode="thread")
    def other():
        return "done"

    e, o = email.delay(), other.delay()
    assert drain(manager, queues=["emails"]) == [e]
    assert o.status() == "pending"


def test_async_tasks_run_and_leave_no_event_loop_thread(manager):
    import asyncio

    @manager.task(mode="thread")
    async def wait_and_add(a, b):
        await asyncio.sleep(0)
        return a + b

    task = wait_and_add.delay(1, 2)
    drain(manager)
    assert task.result == 3
    assert not [t for t in threading.enumerate() if t.name == "castor-asyncio"]


def test_a_task_that_enqueues_itself_forever_hits_max_tasks(manager):
    @manager.task(mode="thread")
    def again():
        again.delay()

    again.delay()
    with pytest.raises(DrainLimitReached, match=r"ran 50 task attempts and more are due.*max_tasks="):
        drain(manager, max_tasks=50)
    assert manager.count("success") == 50 and manager.count("pending") == 1


def test_timeouts_apply_in_drain(manager):
    @manager.task(mode="thread", timeout=0.2)
    def spin():
        while True:
            pass

    task = spin.delay()
    drain(manager)
    assert task.status() == "failed" and task.error["type"] == "castor.errors.TaskTimeout"


@pytest.mark.parametrize("kwargs, message", [
    ({"advance": -1}, "advance must be zero or more seconds"),
    ({"advance": "1h"}, "advance must be a number of seconds or a timedelta"),
    ({"max_tasks": 0}, "max_tasks must be a positive integer"),
    ({"queues": "emails"}, r"queues takes a list of queue names, e.g. \['emails'\]"),
])
def test_drain_rejects_bad_options(manager, kwargs, message):
    with pytest.raises(castor.ConfigurationError, match=message):
        drain(manager, **kwargs)


def test_drain_wants_a_manager(db_path):
    with pytest.raises(castor.ConfigurationError, match="drain\\(\\) takes a castor.Manager, not str"):
        drain(db_path)


# -- enqueued and assertions ----------------------------------------------------------


def test_enqueued_lists_calls_oldest_first_with_their_options(manager):
    @manager.task(mode="thread")
    def send(to, *, subject="hi"):
        return to

    @manager.task(mode="process")
    def other():
        return None

    send.delay("ada@example.com")
    other.delay()
    send.apply_async(("bob@example.com",), {"subject": "later"}, countdown=3600, queue="slow", priority=5)
    items = enqueued(manager, send)
    assert [(e.args, e.kwargs, e.queue, e.priority) for e in items] == [
        (("ada@example.com",), {}, "default", 0), (("bob@example.com",), {"subject": "later"}, "slow", 5)]
    assert items[0].countdown == 0 and items[1].countdown == pytest.approx(3600, abs=1)
    assert str(items[1]).startswith(f"{send.name}('bob@example.com', subject='later') [pending, queue 'slow'")
    assert [e.name for e in enqueued(manager)] == [send.name, other.name, send.name]
    assert enqueued(manager, send.name, queue="slow") == [items[1]]
    drain(manager)
    assert [e.status for e in enqueued(manager)] == ["success", "success", "pending"]
    assert enqueued(manager, status="pending")[0].task.id == items[1].id


def test_assert_enqueued_matches_calls_as_stored(manager):
    @manager.task(mode="thread")
    def place(order, items):
        return order

    place.delay(1, (("apple", 2),))
    place.delay(2, [])
    [match] = assert_enqueued(manager, place, (1, (("apple", 2),)))  # tuples compare as JSON lists
    assert match.args == (1, [["apple", 2]])
    assert len(assert_enqueued(manager, place)) == 2
    assert_enqueued(manager, place, count=2, status="pending", queue="default", priority=0)
    assert_enqueued(manager, place.name, kwargs={})
    assert_not_enqueued(manager, place, (3, []))


def test_a_failed_assertion_says_what_was_enqueued(manager):
    @manager.task(mode="thread")
    def send(to):
        return to

    with pytest.raises(AssertionError) as empty:
        assert_enqueued(manager, send)
    assert str(empty.value) == f"expected {send.name} enqueued at least once, found 0\nnothing was enqueued"

    send.delay("ada@example.com")
    send.delay("bob@example.com")
    with pytest.raises(AssertionError) as wrong:
        assert_enqueued(manager, send, ("eve@example.com",), queue="default")
    message = str(wrong.value)
    assert message.startswith(f"expected {send.name}('eve@example.com') (queue 'default') enqueued at least "
                              "once, found 0\nenqueued (oldest first):\n")
    assert f"{send.name}('ada@example.com') [pending" in message and "bob@example.com" in message

    with pytest.raises(AssertionError, match="enqueued 1 time, found 2") as counted:
        assert_enqueued(manager, send, count=1)
    assert str(counted.value).count("  * ") == 2  # both matches are marked

    with pytest.raises(AssertionError, match="enqueued 0 times, found 1"):
        assert_not_enqueued(manager, send, ["ada@example.com"])


def test_assertions_reject_what_is_not_a_task(manager):
    with pytest.raises(castor.ConfigurationError, match="expected a task .* or its name, not int"):
        assert_enqueued(manager, 42)  # type: ignore[arg-type]
    with pytest.raises(castor.ConfigurationError, match="count must be zero or a positive integer"):
        assert_enqueued(manager, "x", count=-1)
    with pytest.raises(ValueError, match="unknown task status 'done'"):
        enqueued(manager, status="done")


# -- isolated ----------------------------------------------------------------------


def test_isolated_moves_an_app_manager_to_another_file_and_back(manager, tmp_path: Path):
    @manager.task(mode="process")
    def add(a, b):
        return a + b

    kept = add.delay(1, 1)
    with isolated(manager, tmp_path / "test.db") as same:
        assert same is manager and manager.path == str(tmp_path / "test.db")
        task = add.delay(2, 3)
        assert enqueued(manager) == enqueued(manager, add) and len(enqueued(manager)) == 1
        assert drain(manager) == [task] and task.result == 5
    assert manager.path != str(tmp_path / "test.db")
    assert [e.id for e in enqueued(manager)] == [kept.id] and kept.status() == "pending"
    assert manager.get(task.id) is None  # the isolated task stayed in the other file


def test_isolated_refuses_the_managers_own_file(manager):
    with pytest.raises(castor.ConfigurationError, match="is the Manager's own database"):
        with isolated(manager, manager.path):
            pass
    with pytest.raises(castor.ConfigurationError, match="isolated\\(\\) takes a castor.Manager"):
        with isolated("app.db", "other.db"):  # type: ignore[arg-type]
            pass
