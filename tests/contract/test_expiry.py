"""expire_pending: pending tasks past their expiry (options "expires") end cancelled
with castor.TaskExpired; nothing else is touched."""

from __future__ import annotations

from castor.expiry import EXPIRED_TYPE
from castor.states import TaskStatus
from tests.contract.builders import claim, claim_one, new, statuses


def test_a_pending_task_past_its_expiry_ends_cancelled_expired(store, clocks):
    at = clocks.wall - 1
    store.enqueue([new("late", options={"expires": at}), new("fresh", options={"expires": clocks.wall + 60}),
                   new("plain")])
    (ended,) = store.expire_pending(now=clocks.wall)
    assert ended.id == "late"
    assert ended.status == TaskStatus.CANCELLED
    assert ended.finished_at == clocks.wall
    assert ended.started_at is None and ended.attempts == 0  # it never ran
    assert ended.error is not None and ended.error["type"] == EXPIRED_TYPE
    assert "expired at" in ended.error["message"]
    assert statuses(store, "late", "fresh", "plain") == [TaskStatus.CANCELLED, TaskStatus.PENDING,
                                                         TaskStatus.PENDING]
    assert store.get("late").error["type"] == EXPIRED_TYPE


def test_an_expiry_equal_to_now_has_passed(store, clocks):
    store.enqueue([new("edge", options={"expires": clocks.wall})])
    assert [r.id for r in store.expire_pending(now=clocks.wall)] == ["edge"]


def test_nothing_expired_changes_nothing(store, clocks):
    store.enqueue([new("fresh", options={"expires": clocks.wall + 60}), new("plain")])
    assert store.expire_pending(now=clocks.wall) == []
    assert statuses(store, "fresh", "plain") == [TaskStatus.PENDING, TaskStatus.PENDING]


def test_a_running_task_is_never_expired_by_the_sweep(store, clocks):
    """Expiry is about starting: one already running finishes."""
    store.enqueue([new("running", options={"expires": clocks.wall + 1})])
    claim_one(store, clocks)
    assert store.expire_pending(now=clocks.wall + 10) == []
    assert store.status("running") == TaskStatus.RUNNING


def test_a_task_in_a_paused_queue_expires(store, clocks):
    store.enqueue([new("held", queue="mail", options={"expires": clocks.wall + 1})])
    store.pause_queue("mail")
    assert claim(store, clocks, limit=10) == []
    assert [r.id for r in store.expire_pending(now=clocks.wall + 2)] == ["held"]
    store.resume_queue("mail")
    assert claim(store, clocks, limit=10) == []  # cancelled: nothing left to claim


def test_the_limit_bounds_one_sweep_and_the_next_takes_the_rest(store, clocks):
    store.enqueue([new(f"t{i}", options={"expires": clocks.wall - 1}) for i in range(5)])
    assert len(store.expire_pending(now=clocks.wall, limit=3)) == 3
    assert len(store.expire_pending(now=clocks.wall, limit=3)) == 2
    assert set(statuses(store, *(f"t{i}" for i in range(5)))) == {TaskStatus.CANCELLED}


def test_an_expired_task_is_deleted_after_its_failure_ttl(store, clocks):
    store.enqueue([new("late", options={"expires": clocks.wall - 1, "failure_ttl": 5.0})])
    (ended,) = store.expire_pending(now=clocks.wall)
    assert ended.expires_at == clocks.wall + 5.0
    assert store.purge_expired(now=clocks.wall + 6) == 1
    assert store.get("late") is None


def test_a_retry_asked_by_hand_drops_the_expiry(store, clocks):
    """Task.retry() / `castord tasks retry` of an expired task means "run it now": it
    would otherwise end expired again at once."""
    store.enqueue([new("late", options={"expires": clocks.wall - 1, "timeout": 5.0})])
    store.expire_pending(now=clocks.wall)
    assert store.retry(task_id="late", now=clocks.wall) == ["late"]
    assert store.get("late").options == {"timeout": 5.0}
    assert store.expire_pending(now=clocks.wall + 1) == []
    assert claim_one(store, clocks).id == "late"
