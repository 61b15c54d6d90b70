"""Every operation from every status: it moves a task only along castor.states.TRANSITIONS,
and exactly where the docs say (docs/design.md, States)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from castor.states import TaskStatus, can_transition
from castor.store import Query, Store, TaskRecord
from tests.contract.builders import Clocks, claim, claim_one, new, outcome, snapshot

P, R, S, F, C = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.SUCCESS, TaskStatus.FAILED,
                 TaskStatus.CANCELLED)
GONE = None  # the row was deleted


def make(store: Store, clocks: Clocks, state: str) -> TaskRecord:
    """Task "a" in `state`; returns the record of its last claim (or as enqueued)."""
    future = clocks.wall + 3600 if state == "scheduled" else None
    store.enqueue([new("a", eta=future)])
    rec = store.get("a")
    if state == "cancelled":
        store.cancel("a", now=clocks.wall)
    elif state in ("running", "success", "failed"):
        rec = claim_one(store, clocks, "w", lease=10.0)
        if state != "running":
            assert store.settle_one(outcome(rec, TaskStatus(state), at=clocks.wall))
    return rec


def expire(store: Store, clocks: Clocks, rec: TaskRecord) -> Any:
    clocks.advance(60)
    return store.recover_expired(now=clocks.wall, max_lost=3)


def settle(status: TaskStatus) -> Callable[[Store, Clocks, TaskRecord], Any]:
    def op(store: Store, clocks: Clocks, rec: TaskRecord) -> Any:
        eta = clocks.wall if status == P else None
        return store.settle_one(outcome(rec, status, at=clocks.wall, eta=eta, fence=rec.fence))
    return op


OPERATIONS: dict[str, Callable[[Store, Clocks, TaskRecord], Any]] = {
    "claim": lambda s, c, r: claim(s, c, "w2"),
    "claim_task": lambda s, c, r: s.claim_task("a", "w2", lease=10.0, now=c.wall),
    "settle success": settle(S),
    "settle failed": settle(F),
    "settle cancelled": settle(C),
    "settle retry": settle(P),
    "cancel": lambda s, c, r: s.cancel("a", now=c.wall),
    "retry": lambda s, c, r: s.retry(task_id="a", now=c.wall),
    "requeue": lambda s, c, r: s.requeue("a", r.fence, count_attempt=True),
    "release crashed": lambda s, c, r: s.release_owner("w", count_attempt=True, max_lost=3),
    "release drained": lambda s, c, r: s.release_owner("w", count_attempt=False, max_lost=3),
    "lease expiry": expire,
    "purge": lambda s, c, r: s.purge(Query(task_id="a")),
}

# (state, operation) -> the status after; any pair not listed leaves the status as it was.
MOVES: dict[tuple[str, str], TaskStatus | None] = {
    ("pending", "claim"): R,
    ("pending", "claim_task"): R,
    ("pending", "cancel"): C,
    ("scheduled", "claim_task"): R,  # eager mode names the task: no ETA to wait for
    ("scheduled", "cancel"): C,
    ("running", "settle success"): S,
    ("running", "settle failed"): F,
    ("running", "settle cancelled"): C,
    ("running", "settle retry"): P,
    ("running", "requeue"): P,
    ("running", "release crashed"): P,
    ("running", "release drained"): P,
    ("running", "lease expiry"): P,
    ("success", "purge"): GONE,
    ("failed", "retry"): P,
    ("failed", "purge"): GONE,
    ("cancelled", "retry"): P,
    ("cancelled", "purge"): GONE,
}
STATES = {"pending": P, "scheduled": P, "running": R, "success": S, "failed": F, "cancelled": C}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
@pytest.mark.parametrize("state", sorted(STATES))
def test_operation_from_status(store, clocks, state, operation):
    rec = make(store, clocks, state)
    before = snapshot(store)
    answer = OPERATIONS[operation](store, clocks, rec)
    expected = MOVES.get((state, operation), STATES[state])
    after = store.status("a")
    assert after == expected, f"{operation} from {state}: {after}, expected {expected}"
    if after is not None and after != STATES[state]:
        assert can_transition(STATES[state], after)
    if (state, operation) not in MOVES and operation != "cancel":
        # Refused: the answer says so, and the row is as it was.
        assert not answer, f"{operation} from {state} answered {answer!r} but changed nothing"
        assert snapshot(store) == before


def test_the_table_covers_every_allowed_transition_but_pending_to_failed():
    reached = {(STATES[state], after) for (state, _op), after in MOVES.items() if after is not None}
    allowed = {(old, new) for old in TaskStatus for new in TaskStatus if can_transition(old, new)}
    # pending -> failed is the worker's (a task it cannot run), through a claim first. A
    # waiting row is a workflow member's: its moves are tests/contract/test_workflows.py's.
    W = TaskStatus.WAITING
    assert allowed - reached == {(P, F), (W, P), (W, C)}
    assert reached <= allowed


def test_a_cancel_of_a_running_task_only_asks(store, clocks):
    rec = make(store, clocks, "running")
    assert store.cancel("a", now=clocks.wall) == R
    assert store.get("a").cancel_requested
    assert store.cancel_requests("w") == [rec.claim]
    assert store.cancel_requests("someone else") == []
    assert store.settle_one(outcome(rec, C, at=clocks.wall))
    assert store.cancel_requests("w") == []


@pytest.mark.parametrize("state", ["success", "failed", "cancelled"])
def test_a_cancel_of_a_finished_task_answers_its_status(store, clocks, state):
    make(store, clocks, state)
    assert store.cancel("a", now=clocks.wall) == STATES[state]
    assert not store.get("a").cancel_requested


def test_a_cancel_of_an_unknown_task_is_none(store, clocks):
    assert store.cancel("nope", now=clocks.wall) is None
