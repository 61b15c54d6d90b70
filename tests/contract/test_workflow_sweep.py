"""Store.sweep_workflows (docs/workflows.md, "The sweep"): a running workflow whose advance
was missed is set right, and one whose step lost member rows ends failed (MembersMissing).

The advance never misses on its own (test_workflows.py shows every ending path moves its
workflow), so these tests corrupt a workflow by hand, with SQL on the backend's own
database, the way a bug or a hand-deleted row would leave it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from castor.states import WorkflowStatus
from castor.store import Store
from castor.store.base import INPUT_RESULT, NewWorkflow, SweptWorkflow
from tests.contract.builders import Backend, Clocks, claim
from tests.contract.conftest import BACKENDS
from tests.contract.test_workflows import (
    C,
    F,
    P,
    R,
    S,
    W,
    chained,
    claim_all,
    ended,
    grouped,
    member,
    run,
    state,
    statuses,
    stopped_reason,
)

STALE = 60.0
RUNNING, FAILED = WorkflowStatus.RUNNING, WorkflowStatus.FAILED


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.postgres)])
def pg_backend(request: pytest.FixtureRequest, clocks: Clocks) -> Iterator[Backend]:
    """The contract suite's backend, PostgreSQL only (row locks)."""
    backend = Backend(request.param, BACKENDS[request.param](request), clocks)
    yield backend
    backend.close_all()


def corrupt(backend: Backend, statement: str, *params: Any) -> None:
    """One statement (`?` placeholders) on the backend's database, behind castor's back."""
    if backend.name == "sqlite":
        conn = sqlite3.connect(backend.location)
        try:
            with conn:
                conn.execute(statement, params)
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(backend.location, autocommit=True) as conn:
        conn.execute(statement.replace("?", "%s"), params)


def sweep(store: Store, clocks: Clocks, *, after: float = 2 * STALE, limit: int = 100) -> list[SweptWorkflow]:
    """The sweep as castord runs it, `after` seconds after the test's wall time."""
    return store.sweep_workflows(stale_after=STALE, now=clocks.wall + after, limit=limit)


def test_a_counter_that_disagrees_is_set_to_the_recount(store: Store, backend: Backend, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 3)
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    corrupt(backend, "UPDATE castor_workflows SET remaining = 7 WHERE id = 'wf'")
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chord", 0, RUNNING, 7, 2)]
    assert state(store) == (RUNNING, 0, 2)
    for task_id in ("m1", "m2"):  # the rest end as usual, and the callback comes after the last
        assert store.status("cb") == W
        assert store.settle_one(ended(claimed[task_id], S, clocks))
    assert store.status("cb") == P and state(store) == (RUNNING, 1, 1)


def test_a_chord_whose_counter_is_fixed_to_zero_releases_its_callback_once(
        store: Store, backend: Backend, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 3)
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    corrupt(backend, "UPDATE castor_workflows SET remaining = 5 WHERE id = 'wf'")
    for task_id in ("m1", "m2"):
        assert store.settle_one(ended(claimed[task_id], S, clocks))
    assert state(store) == (RUNNING, 0, 3) and store.status("cb") == W  # stuck: nothing would release it
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chord", 0, RUNNING, 3, 0)]
    assert store.status("cb") == P and state(store) == (RUNNING, 1, 1)
    assert [r.id for r in claim(store, clocks, limit=10)] == ["cb"]
    assert sweep(store, clocks, after=10 * STALE) == []  # healthy now: the callback runs
    assert claim(store, clocks, limit=10) == []  # released once
    callback = store.get("cb")
    assert callback is not None and callback.status == R and callback.attempts == 1
    assert store.settle_one(ended(callback, S, clocks))
    assert state(store) == (WorkflowStatus.SUCCESS, 1, 0)


def test_a_missed_chain_advance_releases_the_next_link(store: Store, backend: Backend, clocks: Clocks) -> None:
    chained(store, clocks)
    run(store, clocks)  # a ends; then the move it made is undone by hand
    corrupt(backend, "UPDATE castor_workflows SET step = 0, remaining = 1 WHERE id = 'wf'")
    corrupt(backend, "UPDATE castor_tasks SET status = 'waiting' WHERE id = 'b'")
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chain", 0, RUNNING, 1, 0)]
    assert state(store) == (RUNNING, 1, 1) and statuses(store, "a", "b", "c") == [S, P, W]
    run(store, clocks)
    run(store, clocks)
    assert state(store) == (WorkflowStatus.SUCCESS, 2, 0)


def test_a_missed_release_is_made(store: Store, backend: Backend, clocks: Clocks) -> None:
    """The workflow moved on to the next step, but its member stayed waiting."""
    chained(store, clocks)
    run(store, clocks)  # a ends: the chain moves to b, released
    corrupt(backend, "UPDATE castor_tasks SET status = 'waiting' WHERE id = 'b'")
    assert state(store) == (RUNNING, 1, 1) and claim(store, clocks, limit=10) == []  # stuck
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chain", 1, RUNNING, 1, 1, 0, 1)]
    assert statuses(store, "a", "b", "c") == [S, P, W]
    run(store, clocks)
    run(store, clocks)
    assert state(store) == (WorkflowStatus.SUCCESS, 2, 0)
    assert sweep(store, clocks, after=10 * STALE) == []


def test_a_member_that_failed_unseen_stops_the_workflow(store: Store, backend: Backend, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claim_all(store, clocks, 3)
    corrupt(backend, "UPDATE castor_tasks SET status = 'failed', finished_at = ? WHERE id = 'm1'", clocks.wall)
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chord", 0, FAILED, 3, 2)]
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad, record.missing) == (FAILED, "m1", 0)
    assert statuses(store, "m0", "m1", "m2", "cb") == [R, F, R, C]
    assert stopped_reason(store, "cb") == "workflow wf stopped: member m1 ended failed"


def test_a_deleted_member_ends_the_workflow_failed(store: Store, backend: Backend, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 3)
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    corrupt(backend, "DELETE FROM castor_tasks WHERE id = 'm1'")
    assert sweep(store, clocks) == [SweptWorkflow("wf", "chord", 0, FAILED, 2, None, 1)]
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad, record.missing) == (FAILED, None, 1)
    assert record.finished_at == clocks.wall + 2 * STALE
    assert statuses(store, "m0", "m2", "cb") == [S, R, C]  # a running member is left to finish
    assert "1 of the 3 members of its step 0 are missing" in stopped_reason(store, "cb")
    assert store.settle_one(ended(claimed["m2"], S, clocks))  # moves nothing: the workflow has ended
    assert store.status("cb") == C and store.workflow("wf").state == FAILED  # type: ignore[union-attr]
    assert sweep(store, clocks, after=10 * STALE) == []  # ended: never looked at again


def test_a_healthy_running_workflow_is_left_alone(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 2)  # m2 still pending
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    before = statuses(store, "m0", "m1", "m2", "cb")
    assert sweep(store, clocks) == []
    assert state(store) == (RUNNING, 0, 2)
    assert statuses(store, "m0", "m1", "m2", "cb") == before == [S, R, P, W]


def test_a_workflow_that_moved_lately_is_not_looked_at(store: Store, backend: Backend, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    corrupt(backend, "UPDATE castor_workflows SET remaining = 9 WHERE id = 'wf'")
    assert sweep(store, clocks, after=STALE / 2) == []
    assert state(store) == (RUNNING, 0, 9)
    assert [fix.remaining_now for fix in sweep(store, clocks, after=STALE + 1)] == [3]


def test_each_call_does_at_most_limit_workflows(store: Store, backend: Backend, clocks: Clocks) -> None:
    for n in range(3):
        workflow = f"wf{n}"
        store.enqueue_workflow(NewWorkflow(workflow, "chain", (1, 1), clocks.wall + n), [
            member(f"a{n}", 0, workflow=workflow), member(f"b{n}", 1, workflow=workflow, wf_input=INPUT_RESULT)])
    corrupt(backend, "UPDATE castor_workflows SET remaining = 4")
    assert [fix.workflow_id for fix in sweep(store, clocks, limit=2)] == ["wf0", "wf1"]  # oldest first
    assert [fix.workflow_id for fix in sweep(store, clocks, limit=2)] == ["wf2"]
    assert sweep(store, clocks, limit=2) == []


def test_a_long_healthy_workflow_does_not_hide_the_others(store: Store, backend: Backend, clocks: Clocks) -> None:
    """A healthy one counts as looked at (moved_at), so the next round reaches the next."""
    for n in range(2):
        workflow = f"wf{n}"
        store.enqueue_workflow(NewWorkflow(workflow, "group", (2,), clocks.wall + n), [
            member(f"m{n}{i}", 0, index=i, workflow=workflow)
            for i in range(2)])
    corrupt(backend, "UPDATE castor_workflows SET remaining = 5 WHERE id = 'wf1'")
    assert sweep(store, clocks, limit=1) == []  # wf0, the oldest, is healthy
    assert [fix.workflow_id for fix in sweep(store, clocks, limit=1)] == ["wf1"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("held", ["the workflow's row", "a waiting member"])
def test_postgresql_skips_what_another_transaction_holds(pg_backend: Backend, clocks: Clocks, held: str) -> None:
    """Several castords sweep at once: one never waits on a row another holds (the row's
    lock: SKIP LOCKED; a waiting member's, which a cancel takes before the row: NOWAIT).
    PostgreSQL's alone: SQLite has one writer."""
    import psycopg

    backend, store = pg_backend, pg_backend.open()

    grouped(store, clocks, 3, callback=True)
    corrupt(backend, "UPDATE castor_workflows SET remaining = 9 WHERE id = 'wf'")
    lock = ("SELECT 1 FROM castor_workflows WHERE id = 'wf' FOR UPDATE" if held == "the workflow's row"
            else "SELECT 1 FROM castor_tasks WHERE id = 'cb' FOR UPDATE")
    with psycopg.connect(backend.location) as other:
        other.execute(lock)  # its transaction stays open until the block ends
        assert sweep(store, clocks) == []
        other.rollback()
    assert state(store) == (RUNNING, 0, 9)
    assert [fix.remaining_now for fix in sweep(store, clocks)] == [3]
