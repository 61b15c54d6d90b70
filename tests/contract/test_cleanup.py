"""Retry by hand, purge, and expiry: result TTLs, failure TTLs, purge_expired."""

from __future__ import annotations

import pytest

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim_one, new, outcome


def finish(store, clocks, task_id, status, *, name="t", expires_at=None):
    store.enqueue([new(task_id, name=name)])
    if status == TaskStatus.CANCELLED:
        store.cancel(task_id, now=clocks.wall, expires_at=expires_at)
        return
    rec = store.claim_task(task_id, "w", lease=10.0, now=clocks.wall)
    assert store.settle_one(outcome(rec, status, at=clocks.wall, expires_at=expires_at))


class TestRetry:
    def test_a_failed_task_goes_back_as_new(self, store, clocks):
        finish(store, clocks, "a", TaskStatus.FAILED)
        clocks.advance(10)
        assert store.retry(task_id="a", now=clocks.wall) == ["a"]
        rec = store.get("a")
        assert (rec.status, rec.eta, rec.error, rec.result, rec.finished_at, rec.started_at, rec.lost,
                rec.isolate, rec.cancel_requested, rec.expires_at) == (
            TaskStatus.PENDING, clocks.wall, None, None, None, None, 0, False, False, None)
        assert claim_one(store, clocks).id == "a"

    def test_by_query_takes_every_match(self, store, clocks):
        finish(store, clocks, "f1", TaskStatus.FAILED, name="x")
        finish(store, clocks, "f2", TaskStatus.FAILED, name="y")
        finish(store, clocks, "c", TaskStatus.CANCELLED, name="x")
        finish(store, clocks, "s", TaskStatus.SUCCESS, name="x")
        assert store.retry(Query(status=TaskStatus.FAILED, name="x"), now=clocks.wall) == ["f1"]
        assert store.retry(Query(status=TaskStatus.CANCELLED), now=clocks.wall) == ["c"]
        assert sorted(store.retry(now=clocks.wall)) == ["f2"]  # default: every failed task
        assert store.status("s") == TaskStatus.SUCCESS

    @pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS, None])
    def test_a_query_for_other_statuses_is_refused(self, store, clocks, status):
        with pytest.raises(ValueError, match="failed or cancelled"):
            store.retry(Query(status=status), now=clocks.wall)

    def test_unknown_or_unfinished_ids_are_left_alone(self, store, clocks):
        store.enqueue([new("p")])
        assert store.retry(task_id="p", now=clocks.wall) == []
        assert store.retry(task_id="nope", now=clocks.wall) == []


class TestPurge:
    def test_deletes_finished_tasks_only(self, store, clocks):
        for status in (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED):
            finish(store, clocks, str(status), status)
        store.enqueue([new("pending"), new("running")])
        store.claim_task("running", "w", lease=10.0, now=clocks.wall)
        assert store.purge(Query()) == 3
        assert sorted(r.id for r in store.list(Query())) == ["pending", "running"]
        assert store.purge(Query()) == 0

    def test_filters(self, store, clocks):
        finish(store, clocks, "old", TaskStatus.SUCCESS, name="x")
        clocks.advance(100)
        finish(store, clocks, "new", TaskStatus.SUCCESS, name="x")
        finish(store, clocks, "other", TaskStatus.FAILED, name="y")
        assert store.purge(Query(finished_before=clocks.wall - 50)) == 1
        assert store.purge(Query(status=TaskStatus.FAILED, name="x")) == 0
        assert store.purge(Query(name="y")) == 1
        assert [r.id for r in store.list(Query())] == ["new"]

    @pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING])
    def test_unfinished_statuses_are_refused(self, store, status):
        store.enqueue([new("a")])
        with pytest.raises(ValueError, match="finished tasks only"):
            store.purge(Query(status=status))
        assert store.status("a") == TaskStatus.PENDING

    def test_a_large_purge_deletes_everything_asked(self, store, clocks):
        store.enqueue([new(f"t{i}") for i in range(2500)])
        for i in range(2500):
            store.cancel(f"t{i}", now=clocks.wall)
        assert store.purge(Query(status=TaskStatus.CANCELLED)) == 2500
        assert store.count(Query()) == 0


class TestExpiry:
    def test_a_result_ttl_expires_the_finished_row(self, store, clocks):
        finish(store, clocks, "a", TaskStatus.SUCCESS, expires_at=clocks.wall + 60)
        finish(store, clocks, "keep", TaskStatus.SUCCESS)
        assert store.get("a").expires_at == clocks.wall + 60
        assert store.purge_expired(now=clocks.wall + 59) == 0
        assert store.purge_expired(now=clocks.wall + 61) == 1
        assert store.get("a") is None and store.status("keep") == TaskStatus.SUCCESS

    def test_a_dropped_success_is_deleted_as_it_settles(self, store, clocks):
        store.enqueue([new("a")])
        rec = claim_one(store, clocks)
        assert store.settle_one(outcome(rec, at=clocks.wall, drop=True))
        assert store.get("a") is None

    def test_a_cancel_carries_its_expiry(self, store, clocks):
        finish(store, clocks, "a", TaskStatus.CANCELLED, expires_at=clocks.wall + 5)
        assert store.purge_expired(now=clocks.wall + 6) == 1

    def test_purge_expired_takes_at_most_limit(self, store, clocks):
        for i in range(5):
            finish(store, clocks, f"t{i}", TaskStatus.SUCCESS, expires_at=clocks.wall)
        assert store.purge_expired(now=clocks.wall + 1, limit=2) == 2
        assert store.purge_expired(now=clocks.wall + 1, limit=10) == 3
        assert store.purge_expired(now=clocks.wall + 1) == 0

    def test_an_unfinished_task_never_expires(self, store, clocks):
        store.enqueue([new("a")])
        assert store.purge_expired(now=clocks.wall + 10**9) == 0

    def lose(self, store, clocks, task_id, options=None):
        store.enqueue([new(task_id, options=options)])
        claim_one(store, clocks, "w", lease=1.0)
        clocks.advance(2)
        (rec,) = store.recover_expired(now=clocks.wall, max_lost=1)
        assert rec.status == TaskStatus.FAILED
        return rec

    def test_a_task_the_store_fails_keeps_by_default(self, store, clocks):
        assert self.lose(store, clocks, "a").expires_at is None

    def test_the_stores_failure_ttl_expires_what_it_fails(self, store, clocks):
        store.failure_ttl = 30.0
        rec = self.lose(store, clocks, "a")
        assert rec.expires_at == pytest.approx(clocks.wall + 30)

    def test_a_tasks_own_failure_ttl_comes_first(self, store, clocks):
        store.failure_ttl = 30.0
        rec = self.lose(store, clocks, "a", options={"failure_ttl": 5.0})
        assert rec.expires_at == pytest.approx(clocks.wall + 5)
        assert store.purge_expired(now=clocks.wall + 6) == 1

    def test_a_task_the_store_cancels_expires_by_the_failure_ttl(self, store, clocks):
        store.failure_ttl = 30.0
        store.enqueue([new("a")])
        rec = claim_one(store, clocks, "w")
        store.cancel("a", now=clocks.wall)
        store.requeue("a", rec.fence, count_attempt=False)  # a worker gives it back: it ends cancelled
        after = store.get("a")
        assert after.status == TaskStatus.CANCELLED and after.expires_at is not None
