"""Fencing: only the claim that holds a task may settle, renew, report or hand it back.

A stale claim is one whose task was since claimed again (its lease expired, its owner was
drained or released it), finished, or handed back; a wrong fence never held it.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from castor.states import TaskStatus
from castor.store import Store, TaskRecord
from tests.contract.builders import claim, claim_one, new, outcome, snapshot


def assert_refused(store: Store, clocks, stale: TaskRecord) -> None:
    """Every write fenced by `stale` is refused and changes nothing."""
    before = snapshot(store)
    assert store.renew([stale.claim], lease=1000.0) == set()
    assert not store.set_progress(stale.id, stale.fence, 0.5, "stale")
    assert not store.requeue(stale.id, stale.fence, count_attempt=False)
    assert not store.requeue(stale.id, stale.fence, count_attempt=True)
    for status in (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED):
        assert not store.settle_one(outcome(stale, status, at=clocks.wall)), status
    assert not store.settle_one(outcome(stale, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
    assert not store.settle_one(outcome(stale, at=clocks.wall, drop=True))
    assert not store.settle(stale.id, stale.owner or "", stale.attempts, TaskStatus.SUCCESS, now=clocks.wall,
                            fence=stale.fence)
    assert store.settle_and_claim([outcome(stale, at=clocks.wall)], "w", mode="process", queues=None,
                                  limit=0, lease=10.0, now=clocks.wall) == ([False], [])
    assert snapshot(store) == before, "a refused write changed something"


@pytest.mark.parametrize("reclaimer", ["another", "w"], ids=["another worker", "the same owner"])
def test_an_expired_claim_is_fenced_once_the_task_is_claimed_again(store, clocks, reclaimer):
    # The same owner: a worker stalled past its lease, then claimed the task again itself.
    store.enqueue([new("a")])
    first = claim_one(store, clocks, "w", lease=5.0)
    clocks.advance(6)
    store.recover_expired(now=clocks.wall, max_lost=3)
    second = claim_one(store, clocks, reclaimer)
    assert second.fence > first.fence and (second.attempts, second.lost) == (2, 1)
    assert_refused(store, clocks, first)
    assert store.renew([second.claim], lease=10.0) == {second.claim}
    assert store.settle_one(outcome(second, at=clocks.wall, result="2"))
    assert store.get("a").result == "2"


def test_a_drained_then_reclaimed_attempt_is_fenced(store, clocks):
    # A drain hands the attempt back uncounted: the attempt number repeats, the fence does not.
    store.enqueue([new("a")])
    first = claim_one(store, clocks, "w")
    store.release_owner("w", count_attempt=False, max_lost=3)
    second = claim_one(store, clocks, "w")
    assert second.attempts == first.attempts and second.fence != first.fence
    assert_refused(store, clocks, first)
    assert store.settle_one(outcome(second, at=clocks.wall))


def test_a_requeued_attempt_is_fenced(store, clocks):
    store.enqueue([new("a")])
    first = claim_one(store, clocks, "w")
    assert store.requeue("a", first.fence, count_attempt=False)
    assert_refused(store, clocks, first)  # handed back, not claimed again yet
    claim_one(store, clocks, "w")
    assert_refused(store, clocks, first)


@pytest.mark.parametrize("end", [TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_a_settled_attempt_is_fenced(store, clocks, end):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    assert store.settle_one(outcome(rec, end, at=clocks.wall))
    assert_refused(store, clocks, rec)  # settling twice included


def test_a_wrong_fence_never_held_the_task(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    for fence in (rec.fence + 1, rec.fence - 1, 0):
        assert_refused(store, clocks, replace(rec, fence=fence))
    assert store.settle_one(outcome(rec, at=clocks.wall))


def test_a_claim_of_an_unknown_task_holds_nothing(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    assert_refused(store, clocks, replace(rec, id="nope"))


def test_the_fence_never_goes_down(store, clocks):
    store.enqueue([new("a")])
    fences = []
    for _ in range(3):
        rec = claim_one(store, clocks, lease=1.0)
        fences.append(rec.fence)
        store.requeue("a", rec.fence, count_attempt=False)
    rec = claim_one(store, clocks, lease=1.0)
    fences.append(rec.fence)
    clocks.advance(2)
    store.recover_expired(now=clocks.wall, max_lost=3)
    fences.append(claim_one(store, clocks).fence)
    assert fences == sorted(set(fences)), fences


class TestRenew:
    def test_extends_only_the_leases_named(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        a = claim_one(store, clocks, "w1", lease=5.0)
        b = claim_one(store, clocks, "w2", lease=5.0)
        clocks.advance(4)
        assert store.renew([a.claim], lease=5.0) == {a.claim}
        clocks.advance(2)  # b's lease ran out; a's was renewed until 9 s
        assert [r.id for r in store.recover_expired(now=clocks.wall, max_lost=3)] == [b.id]
        assert (store.get("a").status, store.get("a").owner) == (TaskStatus.RUNNING, "w1")

    def test_answers_the_claims_still_held(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        a, b = claim(store, clocks, "w", limit=2)
        store.settle_one(outcome(b, at=clocks.wall))
        assert store.renew([a.claim, b.claim, ("nope", 1)], lease=5.0) == {a.claim}

    def test_nothing_to_renew(self, store):
        assert store.renew([], lease=5.0) == set()

    def test_runs_on_the_stores_clock(self, store, clocks):
        store.enqueue([new("a")])
        a = claim_one(store, clocks, lease=5.0)
        clocks.lease_now += 100  # only the lease clock moves: the wall clock says nothing about leases
        assert store.renew([a.claim], lease=5.0) == {a.claim}
        clocks.lease_now += 4
        assert store.recover_expired(now=clocks.wall, max_lost=3) == []
        clocks.lease_now += 2
        assert [r.id for r in store.recover_expired(now=clocks.wall, max_lost=3)] == ["a"]


class TestProgress:
    def test_the_holder_reports_and_it_reads_back(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        assert store.set_progress("a", rec.fence, 0.25, "a quarter")
        assert (store.get("a").progress, store.get("a").progress_message) == (0.25, "a quarter")
        assert store.set_progress("a", rec.fence, None, None)
        assert (store.get("a").progress, store.get("a").progress_message) == (None, None)

    def test_a_pending_task_takes_no_progress(self, store):
        store.enqueue([new("a")])
        assert not store.set_progress("a", 0, 0.5, "no")
        assert store.get("a").progress is None

    def test_progress_is_cleared_when_the_task_goes_back_to_the_queue(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        store.set_progress("a", rec.fence, 0.5, "half")
        store.requeue("a", rec.fence, count_attempt=False)
        assert (store.get("a").progress, store.get("a").progress_message) == (None, None)
