"""Lost workers: lease expiry, release_owner's blame rules, requeue, WorkerLost."""

from __future__ import annotations

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim, claim_one, new, outcome, snapshot

WORKER_LOST = "castor.errors.WorkerLost"


class TestRecoverExpired:
    def test_nothing_expired_changes_nothing(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        claim_one(store, clocks, lease=5.0)
        before = snapshot(store)
        clocks.advance(4.9)
        assert store.recover_expired(now=clocks.wall, max_lost=3) == []
        assert snapshot(store) == before

    def test_an_expired_lease_goes_back_to_pending_blamed(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        a = claim_one(store, clocks, lease=5.0)
        store.set_progress("a", a.fence, 0.5, "half")
        clocks.advance(6)
        (back,) = store.recover_expired(now=clocks.wall, max_lost=3)
        assert (back.id, back.status, back.lost, back.attempts, back.lease_expires) == (
            "a", TaskStatus.PENDING, 1, 1, None)
        assert (back.progress, back.progress_message) == (None, None)
        assert store.recover_expired(now=clocks.wall, max_lost=3) == []  # twice: nothing more
        again = claim_one(store, clocks, "w2")
        assert (again.id, again.attempts, again.lost) == ("a", 2, 1)

    def test_leases_run_on_the_stores_clock_not_the_wall_clock(self, store, clocks):
        store.enqueue([new("a")])
        claim_one(store, clocks, lease=5.0)
        clocks.wall += 3600  # the wall clock stepped forward an hour: the lease is still good
        assert store.recover_expired(now=clocks.wall, max_lost=3) == []
        clocks.wall -= 7200
        clocks.lease_now += 6  # the lease clock ran past the lease
        assert [r.id for r in store.recover_expired(now=clocks.wall, max_lost=3)] == ["a"]

    def test_max_lost_fails_the_task_with_worker_lost(self, store, clocks):
        store.enqueue([new("a")])
        for i in range(3):
            claim_one(store, clocks, f"w{i}", lease=1.0)
            clocks.advance(2)
            (rec,) = store.recover_expired(now=clocks.wall, max_lost=3)
        assert (rec.status, rec.lost, rec.finished_at) == (TaskStatus.FAILED, 3, clocks.wall)
        assert rec.error["type"] == WORKER_LOST and "3 times" in rec.error["message"]
        assert store.get("a").error["type"] == WORKER_LOST
        assert claim(store, clocks) == []

    def test_max_lost_one_fails_at_the_first_loss(self, store, clocks):
        store.enqueue([new("a")])
        claim_one(store, clocks, lease=1.0)
        clocks.advance(2)
        (rec,) = store.recover_expired(now=clocks.wall, max_lost=1)
        assert (rec.status, rec.lost) == (TaskStatus.FAILED, 1)

    def test_a_cancel_requested_task_ends_cancelled(self, store, clocks):
        store.enqueue([new("a")])
        claim_one(store, clocks, lease=1.0)
        store.cancel("a", now=clocks.wall)
        clocks.advance(2)
        (rec,) = store.recover_expired(now=clocks.wall, max_lost=3)
        assert (rec.status, rec.finished_at) == (TaskStatus.CANCELLED, clocks.wall)

    def test_only_expired_leases_are_recovered(self, store, clocks):
        store.enqueue([new("short", priority=1), new("long")])
        claim_one(store, clocks, "w1", lease=1.0)
        claim_one(store, clocks, "w2", lease=100.0)
        clocks.advance(2)
        assert [r.id for r in store.recover_expired(now=clocks.wall, max_lost=3)] == ["short"]
        assert store.status("long") == TaskStatus.RUNNING


class TestReleaseOwner:
    def test_an_owner_holding_nothing(self, store, clocks):
        store.enqueue([new("a")])
        claim_one(store, clocks, "other")
        assert store.release_owner("w", count_attempt=True, max_lost=3) == []
        assert store.status("a") == TaskStatus.RUNNING

    def test_one_task_held_by_a_dead_owner_is_blamed(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        claim_one(store, clocks, "dead")
        claim_one(store, clocks, "alive")
        (rec,) = store.release_owner("dead", count_attempt=True, max_lost=3)
        assert (rec.id, rec.status, rec.lost, rec.attempts, rec.isolate, rec.lease_expires) == (
            "a", TaskStatus.PENDING, 1, 1, False, None)
        assert store.status("b") == TaskStatus.RUNNING  # another owner's task is not touched

    def test_one_task_blamed_max_lost_times_fails_with_worker_lost(self, store, clocks):
        store.enqueue([new("a")])
        for i in range(3):
            claim_one(store, clocks, f"w{i}")
            (rec,) = store.release_owner(f"w{i}", count_attempt=True, max_lost=3)
        assert (rec.status, rec.lost) == (TaskStatus.FAILED, 3)
        assert rec.error["type"] == WORKER_LOST

    def test_several_tasks_held_none_is_blamed_each_runs_alone_next(self, store, clocks):
        store.enqueue([new("a"), new("b"), new("c")])
        claim(store, clocks, "dead", limit=3)
        store.cancel("c", now=clocks.wall)
        released = {r.id: r for r in store.release_owner("dead", count_attempt=True, max_lost=1)}
        assert sorted(released) == ["a", "b", "c"]
        for task_id in ("a", "b"):
            rec = released[task_id]
            assert (rec.status, rec.lost, rec.attempts, rec.isolate) == (TaskStatus.PENDING, 0, 1, True)
        assert released["c"].status == TaskStatus.CANCELLED

    def test_a_drained_owners_tasks_go_back_uncounted(self, store, clocks):
        store.enqueue([new("a"), new("b"), new("c")])
        claim(store, clocks, "w", limit=3)
        store.cancel("c", now=clocks.wall)
        released = {r.id: r for r in store.release_owner("w", count_attempt=False, max_lost=3)}
        for task_id in ("a", "b"):
            rec = released[task_id]
            assert (rec.status, rec.lost, rec.attempts, rec.isolate) == (TaskStatus.PENDING, 0, 0, False)
        assert released["c"].status == TaskStatus.CANCELLED

    def test_a_released_task_keeps_no_progress(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks, "w")
        store.set_progress("a", rec.fence, 0.5, "half")
        store.release_owner("w", count_attempt=False, max_lost=3)
        assert (store.get("a").progress, store.get("a").progress_message) == (None, None)


class TestIsolated:
    def isolate(self, store, clocks, *ids):
        store.enqueue([new(i) for i in ids])
        claim(store, clocks, "dead", limit=len(ids))
        store.release_owner("dead", count_attempt=True, max_lost=3)

    def test_isolated_tasks_are_claimed_only_when_asked_for(self, store, clocks):
        self.isolate(store, clocks, "a", "b")
        store.enqueue([new("plain")])
        assert store.has_due(mode="process", queues=None, now=clocks.wall, isolated=True)
        assert [r.id for r in claim(store, clocks, limit=5)] == ["plain"]
        claimed = claim(store, clocks, "alone", isolated=True)
        assert [(r.id, r.isolate) for r in claimed] == [("a", True)]
        assert claim(store, clocks, limit=5) == []

    def test_an_isolated_task_that_crashes_alone_is_blamed(self, store, clocks):
        self.isolate(store, clocks, "a", "b")
        claim_one(store, clocks, "alone", isolated=True)
        (rec,) = store.release_owner("alone", count_attempt=True, max_lost=3)
        assert (rec.id, rec.lost) == ("a", 1)

    def test_dirty_lists_lost_and_isolated_tasks(self, store, clocks):
        self.isolate(store, clocks, "a", "b")
        store.enqueue([new("lost", priority=1), new("clean")])
        claim_one(store, clocks, "w", lease=1.0)
        clocks.advance(2)
        store.recover_expired(now=clocks.wall, max_lost=3)
        assert sorted(r.id for r in store.list(Query(dirty=True))) == ["a", "b", "lost"]
        assert [r.id for r in store.list(Query(dirty=False))] == ["clean"]
        assert store.count(Query(dirty=True)) == 3


class TestRequeue:
    def test_uncounted_gives_the_attempt_back(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        assert store.requeue("a", rec.fence, count_attempt=False)
        after = store.get("a")
        assert (after.status, after.attempts, after.lost, after.lease_expires) == (TaskStatus.PENDING, 0, 0, None)

    def test_counted_keeps_the_attempt(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        assert store.requeue("a", rec.fence, count_attempt=True)
        assert (store.status("a"), store.get("a").attempts) == (TaskStatus.PENDING, 1)
        assert not store.requeue("a", rec.fence, count_attempt=True)  # twice

    def test_a_cancel_requested_task_ends_cancelled(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        store.cancel("a", now=clocks.wall)
        assert store.requeue("a", rec.fence, count_attempt=False)
        assert store.status("a") == TaskStatus.CANCELLED
        assert store.get("a").finished_at is not None

    def test_a_requeued_task_is_claimed_again(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks, "w1")
        store.requeue("a", rec.fence, count_attempt=True)
        again = claim_one(store, clocks, "w2")
        assert (again.id, again.owner, again.attempts) == ("a", "w2", 2)


def test_a_retry_settlement_goes_back_at_its_eta_with_history(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    assert store.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall + 30))
    after = store.get("a")
    assert (after.status, after.eta, after.finished_at, after.lease_expires) == (
        TaskStatus.PENDING, clocks.wall + 30, None, None)
    assert [(h["attempt"], h["type"]) for h in after.history] == [(1, "builtins.ValueError")]
    assert claim(store, clocks) == []
    clocks.advance(30)
    assert claim_one(store, clocks).attempts == 2


def test_a_retry_settlement_of_a_cancel_requested_task_ends_it_cancelled(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    store.cancel("a", now=clocks.wall)
    assert store.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
    assert store.status("a") == TaskStatus.CANCELLED


def test_a_failed_attempt_is_kept_in_the_history(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks)
    store.settle_one(outcome(rec, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall))
    rec = claim_one(store, clocks)
    store.settle_one(outcome(rec, TaskStatus.FAILED, at=clocks.wall))
    after = store.get("a")
    assert [h["attempt"] for h in after.history] == [1, 2]
    assert (after.status, after.error["type"], after.finished_at) == (
        TaskStatus.FAILED, "builtins.ValueError", clocks.wall)
