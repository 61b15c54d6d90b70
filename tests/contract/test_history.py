"""A task's history: one entry per attempt that did not succeed, each with its start and
owner, whether it failed (the worker's settle) or lost its worker (the store's recovery).
The attempt timeline of the dashboard is built from it (castor/views.py)."""

from __future__ import annotations

from castor.states import TaskStatus
from castor.store.base import LOST_BESIDE, LOST_DIED, LOST_LEASE
from tests.contract.builders import claim, claim_one, new, outcome

WORKER_LOST = "castor.errors.WorkerLost"


def brief(entry: dict) -> tuple:
    return (entry["attempt"], entry["type"], entry["owner"], entry["started_at"], entry["at"], entry.get("lost", False))


def test_each_failed_attempt_keeps_its_start_and_owner(store, clocks):
    store.enqueue([new("a")])
    first_start = clocks.advance(0.1234567)  # an epoch time with all its digits: read back exactly
    rec = claim_one(store, clocks, "host-a:1:w1")
    first_end = clocks.advance(2)
    store.settle_one(outcome(rec, TaskStatus.PENDING, at=first_end, eta=first_end))
    second_start = clocks.advance(1)
    rec = claim_one(store, clocks, "host-b:2:w2")
    second_end = clocks.advance(3)
    store.settle_one(outcome(rec, TaskStatus.FAILED, at=second_end))
    after = store.get("a")
    assert [brief(h) for h in after.history] == [
        (1, "builtins.ValueError", "host-a:1:w1", first_start, first_end, False),
        (2, "builtins.ValueError", "host-b:2:w2", second_start, second_end, False)]
    assert after.history[0]["message"] == "boom"


def test_a_success_adds_no_entry_the_record_keeps_the_last_attempt(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks, "w1")
    store.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
    start = clocks.advance(1)
    rec = claim_one(store, clocks, "w2")
    store.settle_one(outcome(rec, at=clocks.advance(1)))
    after = store.get("a")
    assert [h["owner"] for h in after.history] == ["w1"]
    assert (after.owner, after.started_at, after.attempts) == ("w2", start, 2)


def test_an_expired_lease_is_an_entry_with_the_lost_attempt(store, clocks):
    store.enqueue([new("a")])
    clocks.advance(0.7654321)  # times with all their digits: read back exactly
    starts = []
    for i in range(2):
        starts.append(clocks.wall)
        claim_one(store, clocks, f"w{i}", lease=1.0)
        clocks.advance(2)
        store.recover_expired(now=clocks.wall, max_lost=2)
    after = store.get("a")
    assert after.status == TaskStatus.FAILED and after.error["type"] == WORKER_LOST
    assert [brief(h) for h in after.history] == [
        (1, WORKER_LOST, "w0", starts[0], starts[0] + 2, True),
        (2, WORKER_LOST, "w1", starts[1], starts[1] + 2, True)]
    assert {h["message"] for h in after.history} == {LOST_LEASE}


def test_a_dead_process_is_an_entry_and_so_is_a_crash_beside_others(store, clocks):
    store.enqueue([new("x"), new("y")])
    assert sorted(r.id for r in claim(store, clocks, "pair", limit=2)) == ["x", "y"]
    store.release_owner("pair", count_attempt=True, max_lost=3)
    for task_id in ("x", "y"):
        assert [(h["owner"], h["message"]) for h in store.get(task_id).history] == [("pair", LOST_BESIDE)]
    store.enqueue([new("alone", priority=9)])
    assert claim_one(store, clocks, "solo").id == "alone"
    store.release_owner("solo", count_attempt=True, max_lost=3)
    assert [(h["owner"], h["message"], h["lost"]) for h in store.get("alone").history] == [("solo", LOST_DIED, True)]


def test_a_clean_release_is_no_attempt_and_no_entry(store, clocks):
    store.enqueue([new("a")])
    claim_one(store, clocks, "leaving")
    store.release_owner("leaving", count_attempt=False, max_lost=3)
    after = store.get("a")
    assert (after.status, after.attempts, after.history) == (TaskStatus.PENDING, 0, [])
