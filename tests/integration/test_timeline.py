"""The attempt timeline of the task-detail page, from records a real Worker and a real
store wrote (a beaver-db file): each start with its owner and host, each failure, a
lost worker, the retry, the end."""

from __future__ import annotations

import pytest

import castor
from castor import Worker
from castor.store.base import LOST_LEASE
from castor.webui.timeline import owner_host, timeline

pytestmark = pytest.mark.timeout(60)


def whats(record) -> list[str]:
    return [e["what"] for e in timeline(record)]


def test_a_task_that_failed_then_succeeded_shows_both_attempts(manager: castor.Manager):
    calls = []

    @manager.task(mode="thread", name="flaky", retries=1, retry_delay=0)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time")
        return "ok"

    task = flaky.delay()
    Worker(manager, mode="thread", owner="box-1:41:aa").run(until_idle=True)
    record = manager.store.get(task.id)
    assert record.status == "success"
    assert whats(record) == ["enqueued", "attempt 1 started", "attempt 1 failed", "attempt 2 started", "success"]
    events = timeline(record)
    assert events[1]["detail"] == "by box-1:41:aa on box-1"
    assert events[2]["detail"] == "builtins.ValueError: first time"
    assert events[1]["at"] <= events[2]["at"] <= events[3]["at"] <= events[4]["at"]


def test_a_task_waiting_for_its_retry_says_when(manager: castor.Manager):
    @manager.task(mode="thread", name="later", retries=1, retry_delay=3600)
    def later():
        raise KeyError("k")

    task = later.delay()
    Worker(manager, mode="thread", owner="box-2:7:bb").run(until_idle=True)
    record = manager.store.get(task.id)
    assert whats(record) == ["enqueued", "attempt 1 started", "attempt 1 failed", "retry due"]
    assert timeline(record)[-1]["at"] == record.eta


def test_a_failed_task_ends_once_without_repeating_its_error(manager: castor.Manager):
    @manager.task(mode="thread", name="boom")
    def boom():
        raise RuntimeError("no")

    task = boom.delay()
    Worker(manager, mode="thread", owner="box-3:8:cc").run(until_idle=True)
    events = timeline(manager.store.get(task.id))
    assert [e["what"] for e in events] == ["enqueued", "attempt 1 started", "attempt 1 failed", "failed"]
    assert events[-1]["detail"] is None


def test_a_lost_worker_shows_as_its_own_attempt(manager: castor.Manager):
    @manager.task(mode="thread", name="slow")
    def slow():
        return "done"

    task = slow.delay()
    store = manager.store
    (claimed,) = store.claim("gone-host:99:dd", mode="thread", queues=None, limit=1, lease=1.0,
                             now=store.clock() and __import__("time").time())
    store.clock = lambda: claimed.lease_expires + 10  # the lease ran out (the store's own clock moved on)
    try:
        assert [r.id for r in store.recover_expired(now=__import__("time").time(), max_lost=3)] == [task.id]
    finally:
        del store.clock
    Worker(manager, mode="thread", owner="box-4:9:ee").run(until_idle=True)
    events = timeline(manager.store.get(task.id))
    assert [e["what"] for e in events] == ["enqueued", "attempt 1 started", "attempt 1 lost its worker",
                                           "attempt 2 started", "success"]
    assert events[1]["detail"] == "by gone-host:99:dd on gone-host" and events[2]["detail"] == LOST_LEASE


def test_owner_host():
    assert owner_host("web-3:1234:abcd") == "web-3"
    assert owner_host("web-3:1234:abcdef:process-worker-0:12ab") == "web-3"
    assert owner_host("eager:1234") is None and owner_host(None) is None and owner_host("w1") is None
