"""run_now makes a pending task scheduled for later due now (same id, same attempts);
link_rerun records on a task the id of its latest copy (Manager.run_again)."""

from __future__ import annotations

import pytest

from castor.states import TaskStatus
from castor.store.base import work_topic
from tests.contract.builders import claim, claim_one, new, outcome

LONG = 30.0


def test_a_scheduled_task_is_made_due_now_and_claimed(store, clocks):
    store.enqueue([new("later", eta=clocks.wall + 3600)])
    assert claim(store, clocks) == []
    assert store.run_now("later", now=clocks.wall) is True
    record = store.get("later")
    assert record.status == TaskStatus.PENDING and record.eta == clocks.wall and record.attempts == 0
    assert claim_one(store, clocks).id == "later"


def test_a_task_waiting_on_its_retry_backoff_keeps_its_attempts_and_history(store, clocks):
    store.enqueue([new("flaky")])
    rec = claim_one(store, clocks)
    store.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall + 600))
    assert claim(store, clocks) == []
    assert store.run_now("flaky", now=clocks.wall) is True
    again = claim_one(store, clocks)
    assert again.id == "flaky" and again.attempts == 2
    assert len(store.get("flaky").history) == 1


@pytest.mark.parametrize("state", ["due", "running", "success", "missing"])
def test_only_a_pending_task_not_yet_due_is_changed(store, clocks, state):
    store.enqueue([new("t")])
    if state in ("running", "success"):
        rec = claim_one(store, clocks)
        if state == "success":
            store.settle_one(outcome(rec, at=clocks.wall))
    before = store.get("t")
    task_id = "nope" if state == "missing" else "t"
    assert store.run_now(task_id, now=clocks.wall + 1) is False
    after = store.get("t")
    assert (after.status, after.eta, after.attempts) == (before.status, before.eta, before.attempts)


@pytest.mark.timeout(60)
def test_run_now_wakes_the_workers(backend, store, clocks):
    other = backend.open()
    other.enqueue([new("later", eta=clocks.wall + 3600)])
    topic = work_topic("process")
    seen = store.generation(topic)
    assert other.run_now("later", now=clocks.wall)
    assert store.wait_for_change(seen, LONG, topic) != seen


def test_link_rerun_records_the_latest_copy_and_keeps_the_other_options(store, clocks):
    store.enqueue([new("source", options={"timeout": 5.0})])
    rec = claim_one(store, clocks)
    store.settle_one(outcome(rec, at=clocks.wall))
    assert store.link_rerun("source", "copy-1") is True
    assert store.link_rerun("source", "copy-2") is True
    assert store.get("source").options == {"timeout": 5.0, "rerun_as": "copy-2"}
    assert store.get("source").status == TaskStatus.SUCCESS
    assert store.link_rerun("nope", "copy-3") is False


def test_link_rerun_on_a_task_without_options(store, clocks):
    store.enqueue([new("bare")])
    assert store.link_rerun("bare", "copy") is True
    assert store.get("bare").options == {"rerun_as": "copy"}
