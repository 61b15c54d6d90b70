"""Claims: which tasks, in what order, under what lease; claim_task; settle_and_claim."""

from __future__ import annotations

import pytest

from castor.states import TaskStatus
from castor.store import Query
from castor.store.base import Settlement
from tests.contract.builders import claim, claim_one, new, outcome


def test_claim_order_is_priority_then_eta_then_id(store, clocks):
    t = clocks.wall
    store.enqueue([new("a", now=t - 4), new("b", now=t - 3), new("c", priority=5, now=t - 2),
                   new("d", now=t - 4), new("e", priority=-1, now=t - 5)])
    assert [claim_one(store, clocks).id for _ in range(5)] == ["c", "a", "d", "b", "e"]
    assert claim(store, clocks) == []


def test_a_batch_claim_comes_best_first(store, clocks):
    t = clocks.wall
    store.enqueue([new("low", priority=-1, now=t - 9), new("late", now=t - 1), new("early", now=t - 2),
                   new("high", priority=2, now=t)])
    assert [r.id for r in claim(store, clocks, limit=10)] == ["high", "early", "late", "low"]


def test_claim_takes_at_most_limit(store, clocks):
    store.enqueue([new(f"t{i}") for i in range(10)])
    assert len(claim(store, clocks, limit=4)) == 4
    assert len(claim(store, clocks, limit=100)) == 6
    assert claim(store, clocks, limit=100) == []


def test_a_claim_leases_under_its_owner_with_a_new_fence(store, clocks):
    store.enqueue([new("a")])
    rec = claim_one(store, clocks, "w1", lease=10.0)
    assert (rec.status, rec.owner, rec.attempts, rec.started_at) == (TaskStatus.RUNNING, "w1", 1, clocks.wall)
    assert rec.lease_expires == pytest.approx(clocks.wall + 10.0)  # told as an epoch time
    assert rec.fence > 0
    stored = store.get("a")
    assert (stored.status, stored.owner, stored.attempts, stored.fence) == (TaskStatus.RUNNING, "w1", 1, rec.fence)
    assert claim(store, clocks, "w2") == []  # held


def test_an_eta_is_honoured(store, clocks):
    store.enqueue([new("later", eta=clocks.wall + 100)])
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)
    assert claim(store, clocks) == []
    assert store.next_due(mode="process", now=clocks.wall) == clocks.wall + 100
    clocks.advance(99.9)
    assert claim(store, clocks) == []
    clocks.advance(0.1)
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    assert claim_one(store, clocks).id == "later"


def test_a_task_without_an_eta_is_due_however_far_the_wall_clock_steps_back(store, clocks):
    store.enqueue([new("now", now=clocks.wall)])
    clocks.wall -= 3600  # an operator set the clock back an hour
    assert claim_one(store, clocks).id == "now"


def test_queues_filter_claims(store, clocks):
    store.enqueue([new("a", queue="mail"), new("b", queue="reports"), new("c", queue="mail")])
    assert claim(store, clocks, queues=["other"]) == []
    assert not store.has_due(mode="process", queues=["other"], now=clocks.wall)
    assert [r.id for r in claim(store, clocks, queues=["reports"], limit=5)] == ["b"]
    assert [r.id for r in claim(store, clocks, queues=["reports", "mail"], limit=5)] == ["a", "c"]


def test_no_queues_means_every_queue(store, clocks):
    store.enqueue([new("a", queue="x"), new("b", queue="y")])
    assert sorted(r.id for r in claim(store, clocks, queues=None, limit=5)) == ["a", "b"]


def test_modes_are_separate(store, clocks):
    store.enqueue([new("t", mode="thread")])
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)
    assert claim(store, clocks, mode="process") == []
    assert claim_one(store, clocks, mode="thread").id == "t"


def test_has_due_only_reads(store, clocks):
    store.enqueue([new("a")])
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    assert store.status("a") == TaskStatus.PENDING
    claim_one(store, clocks)
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)


class TestNextDue:
    def test_nothing_stored(self, store, clocks):
        assert store.next_due(mode="process", now=clocks.wall) is None

    def test_the_earliest_future_eta_of_that_mode_and_queue(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("p", eta=t + 30), new("q", eta=t + 20, queue="other"),
                       new("th", eta=t + 10, mode="thread")])
        assert store.next_due(mode="process", now=t) == t + 20
        assert store.next_due(mode="process", now=t, queues=["default"]) == t + 30
        assert store.next_due(mode="thread", now=t) == t + 10

    def test_a_lease_that_expires_first(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("running"), new("later", eta=t + 60)])
        claim_one(store, clocks, lease=5.0)
        assert store.next_due(mode="process", now=t) == pytest.approx(t + 5.0)


class TestClaimTask:
    def test_claims_the_named_pending_task(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        rec = store.claim_task("b", "eager", lease=10.0, now=clocks.wall)
        assert (rec.id, rec.status, rec.owner, rec.attempts) == ("b", TaskStatus.RUNNING, "eager", 1)
        assert rec.fence > 0 and store.get("b").fence == rec.fence
        assert store.status("a") == TaskStatus.PENDING

    def test_not_pending_or_unknown_is_none(self, store, clocks):
        store.enqueue([new("a")])
        assert store.claim_task("a", "w", lease=10.0, now=clocks.wall) is not None
        assert store.claim_task("a", "w", lease=10.0, now=clocks.wall) is None  # twice
        assert store.claim_task("nope", "w", lease=10.0, now=clocks.wall) is None

    def test_its_claim_settles_like_any_other(self, store, clocks):
        store.enqueue([new("a")])
        rec = store.claim_task("a", "eager", lease=10.0, now=clocks.wall)
        assert store.settle_one(outcome(rec, at=clocks.wall))
        assert store.status("a") == TaskStatus.SUCCESS


class TestSettleAndClaim:
    def test_settles_then_claims_in_one_call(self, store, clocks):
        store.enqueue([new("a"), new("b"), new("c")])
        a = claim_one(store, clocks, "w")
        done = outcome(a, at=clocks.wall, result="1")
        stale = outcome(a, TaskStatus.FAILED, at=clocks.wall)
        accepted, claims = store.settle_and_claim(
            [done, stale], "w", mode="process", queues=None, limit=5, lease=10.0, now=clocks.wall)
        assert accepted == [True, False]  # the second write of the same attempt is refused
        assert [r.id for r in claims] == ["b", "c"]
        assert all(r.owner == "w" and r.status == TaskStatus.RUNNING for r in claims)
        assert (store.status("a"), store.get("a").result) == (TaskStatus.SUCCESS, "1")

    def test_a_mixed_batch_writes_each_outcome_as_it_would_be_alone(self, store, clocks):
        """A batch of every kind of outcome, some refused (the PostgreSQL store writes the
        plain ones in one statement, the others one by one): each ends as settle_one
        would have left it."""
        t = clocks.wall
        names = ["ok", "bytes", "ttl", "cancelled", "failed", "retry", "dropped", "fenced"]
        store.enqueue([new(n) for n in names])
        recs = {r.id: r for r in claim(store, clocks, "w", limit=len(names))}
        batch = [outcome(recs["ok"], at=t, result="1"), outcome(recs["bytes"], at=t, result=b"\x00\xff"),
                 outcome(recs["ttl"], at=t, result="2", expires_at=t + 60),
                 Settlement("cancelled", "w", 1, TaskStatus.CANCELLED, error={"type": "TaskCancelled",
                            "message": "asked"}, finished_at=t, fence=recs["cancelled"].fence),
                 outcome(recs["failed"], TaskStatus.FAILED, at=t),
                 outcome(recs["retry"], TaskStatus.PENDING, at=t, eta=t + 30),
                 outcome(recs["dropped"], at=t, drop=True),
                 outcome(recs["fenced"], at=t, fence=recs["fenced"].fence + 1)]  # not this claim's
        accepted, _ = store.settle_and_claim(batch, "w", mode="process", queues=None, limit=0, lease=10.0, now=t)
        assert accepted == [True] * 7 + [False]
        got = {n: store.get(n) for n in names}
        assert (got["ok"].status, got["ok"].result, got["ok"].finished_at) == (TaskStatus.SUCCESS, "1", t)
        assert (got["bytes"].result, got["ttl"].expires_at) == (b"\x00\xff", t + 60)
        assert got["ok"].expires_at is None and got["ok"].lease_expires is None
        assert (got["cancelled"].status, got["cancelled"].error["message"]) == (TaskStatus.CANCELLED, "asked")
        assert got["failed"].status == TaskStatus.FAILED and len(got["failed"].history) == 1
        assert (got["retry"].status, got["retry"].eta) == (TaskStatus.PENDING, t + 30)
        assert got["dropped"] is None
        assert got["fenced"].status == TaskStatus.RUNNING

    @pytest.mark.parametrize("second", [TaskStatus.SUCCESS, TaskStatus.FAILED])
    def test_one_attempt_settled_twice_in_a_batch_keeps_the_first(self, store, clocks, second):
        store.enqueue([new("a"), new("b")])
        a, b = claim(store, clocks, "w", limit=2)
        batch = [outcome(a, at=clocks.wall, result="1"), outcome(b, at=clocks.wall, result="2"),
                 outcome(a, second, at=clocks.wall, result="3" if second == TaskStatus.SUCCESS else None)]
        accepted, _ = store.settle_and_claim(batch, "w", mode="process", queues=None, limit=0, lease=10.0,
                                             now=clocks.wall)
        assert accepted == [True, True, False]
        assert (store.get("a").status, store.get("a").result) == (TaskStatus.SUCCESS, "1")

    def test_limit_zero_only_settles(self, store, clocks):
        store.enqueue([new("a"), new("b")])
        a = claim_one(store, clocks, "w")
        assert store.settle_and_claim([outcome(a, at=clocks.wall)], "w", mode="process", queues=None,
                                      limit=0, lease=10.0, now=clocks.wall) == ([True], [])
        assert store.status("b") == TaskStatus.PENDING

    def test_no_settlements_only_claims(self, store, clocks):
        store.enqueue([new("a")])
        accepted, claims = store.settle_and_claim([], "w", mode="process", queues=None, limit=5, lease=10.0,
                                                  now=clocks.wall)
        assert accepted == [] and [r.id for r in claims] == ["a"]

    def test_claims_honour_mode_queues_and_eta(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("thread", mode="thread"), new("other", queue="other"), new("later", eta=t + 9),
                       new("yes")])
        _, claims = store.settle_and_claim([], "w", mode="process", queues=["default"], limit=5,
                                           lease=10.0, now=t)
        assert [r.id for r in claims] == ["yes"]

    def test_a_task_it_just_settled_as_a_retry_is_claimed_again_if_due(self, store, clocks):
        store.enqueue([new("a")])
        a = claim_one(store, clocks, "w")
        retry = outcome(a, TaskStatus.PENDING, at=clocks.wall, eta=clocks.wall)
        accepted, claims = store.settle_and_claim([retry], "w", mode="process", queues=None, limit=1,
                                                  lease=10.0, now=clocks.wall)
        assert accepted == [True]
        assert [(r.id, r.attempts) for r in claims] == [("a", 2)]
        assert claims[0].fence > a.fence


class TestExchange:
    """settle_and_claim and, asked to look, next_due's answer after a claim that took
    nothing: what a worker asks before it waits (one round trip on PostgreSQL)."""

    def exchange(self, store, clocks, settlements=(), *, look=True, limit=5, queues=None):
        return store.exchange(list(settlements), "w", mode="process", queues=queues, limit=limit, lease=10.0,
                              now=clocks.wall, look=look)

    def test_a_claim_that_takes_nothing_tells_when_to_look_again(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("a"), new("later", eta=t + 30), new("sooner", eta=t + 20, queue="other"),
                       new("th", eta=t + 5, mode="thread")])
        a = claim_one(store, clocks, "w")
        done = self.exchange(store, clocks, [outcome(a, at=t)])
        assert (done.accepted, done.claims, done.looked, done.next_due) == ([True], [], True, t + 20)
        done = self.exchange(store, clocks, queues=["default"])
        assert (done.looked, done.next_due) == (True, t + 30)
        assert done.next_due == store.next_due(mode="process", now=t, queues=["default"])

    def test_nothing_anywhere_is_a_look_that_says_none(self, store, clocks):
        done = self.exchange(store, clocks)
        assert (done.claims, done.looked, done.next_due) == ([], True, None)

    def test_the_look_sees_what_the_same_exchange_settled(self, store, clocks):
        """A retry written by the exchange is what the look finds (it reads after the settle)."""
        t = clocks.wall
        store.enqueue([new("a")])
        a = claim_one(store, clocks, "w")
        done = self.exchange(store, clocks, [outcome(a, TaskStatus.PENDING, at=t, eta=t + 40)])
        assert (done.accepted, done.claims, done.looked, done.next_due) == ([True], [], True, t + 40)

    def test_a_lease_that_expires_first_is_when_to_look(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("running"), new("later", eta=t + 60)])
        claim_one(store, clocks, "other", lease=5.0)
        done = self.exchange(store, clocks)
        assert done.looked and done.next_due == pytest.approx(t + 5.0)

    def test_a_claim_that_takes_a_task_does_not_look(self, store, clocks):
        store.enqueue([new("a"), new("later", eta=clocks.wall + 30)])
        done = self.exchange(store, clocks)
        assert ([r.id for r in done.claims], done.looked, done.next_due) == (["a"], False, None)

    def test_not_asked_it_does_not_look(self, store, clocks):
        store.enqueue([new("later", eta=clocks.wall + 30)])
        done = self.exchange(store, clocks, look=False)
        assert (done.claims, done.looked, done.next_due) == ([], False, None)

    def test_settles_only_and_looks(self, store, clocks):
        t = clocks.wall
        store.enqueue([new("a"), new("b"), new("later", eta=t + 30)])
        a = claim_one(store, clocks, "w")
        done = self.exchange(store, clocks, [outcome(a, at=t)], limit=0)
        assert (done.accepted, done.claims, done.looked, done.next_due) == ([True], [], True, t + 30)
        assert store.status("b") == TaskStatus.PENDING


def test_every_claimed_task_is_counted_once(store, clocks):
    store.enqueue([new(f"t{i}") for i in range(7)])
    first = claim(store, clocks, "w1", limit=3)
    second = claim(store, clocks, "w2", limit=3)
    third = claim(store, clocks, "w3", limit=3)
    ids = [r.id for r in first + second + third]
    assert sorted(ids) == sorted(f"t{i}" for i in range(7))
    assert store.count(Query(status=TaskStatus.RUNNING)) == 7


def test_a_start_is_never_before_the_enqueue(store, clocks):
    """A worker reads `now` before its claim takes the lock; a task due at once that is
    enqueued meanwhile (a later enqueued_at) is claimed with it. Its start is its
    enqueue then, not a moment before (the web timeline, queue-wait figures)."""
    store.enqueue([new("late", now=clocks.wall + 0.5)])  # enqueued after the worker read its clock
    (record,) = claim(store, clocks)
    assert record.started_at == clocks.wall + 0.5
    store.enqueue([new("by_id", now=clocks.wall + 0.7)])
    by_id = store.claim_task("by_id", "w2", lease=10.0, now=clocks.wall)
    assert by_id is not None and by_id.started_at == clocks.wall + 0.7
