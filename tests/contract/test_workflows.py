"""Workflows in the store (docs/workflows.md): every ending path moves the workflow of the
member it ends, in its own transaction, exactly once; a refused end moves nothing.

Each test builds a workflow from NewTasks and drives it through Store calls only, on
every backend. The failure table's rows for link/link_error and chains are here.
"""

from __future__ import annotations

import dataclasses

import pytest

from castor.states import TaskStatus, WorkflowStatus
from castor.store import Query, Store, TaskRecord
from castor.store.base import INPUT_ERROR, INPUT_RESULT, INPUT_RESULTS, NewTask, NewWorkflow, Settlement
from tests.contract.builders import Clocks, claim, claim_one, new, outcome

P, W, R, S, F, C = (TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.RUNNING, TaskStatus.SUCCESS,
                    TaskStatus.FAILED, TaskStatus.CANCELLED)
STOPPED = "castor.errors.WorkflowStopped"


def member(task_id: str, step: int, *, index: int = 0, wf_input: str | None = None, workflow: str = "wf",
           name: str = "t") -> NewTask:
    task = new(task_id, name=name)
    task.workflow_id, task.wf_step, task.wf_index, task.wf_input = workflow, step, index, wf_input
    return task


def linked(store: Store, clocks: Clocks, *, links: int = 1, handler: bool = True) -> None:
    """`a.apply_async(link=b (and b2...), link_error=e)`: steps [a] [b...], handler e."""
    tasks = [member("a", 0)] + [member(f"b{i}" if i else "b", 1, index=i, wf_input=INPUT_RESULT)
                                for i in range(links)]
    if handler:
        tasks.append(member("e", -1, wf_input=INPUT_ERROR))
    sizes = (1, links) if links else (1,)
    store.enqueue_workflow(NewWorkflow("wf", "link", sizes, clocks.wall, handler_id="e" if handler else None,
                                       handler_step=0 if handler else None), tasks)


def chained(store: Store, clocks: Clocks, ids: str = "abc") -> None:
    tasks = [member(task_id, k, wf_input=INPUT_RESULT if k else None) for k, task_id in enumerate(ids)]
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1,) * len(ids), clocks.wall), tasks)


def ended(rec: TaskRecord, status: TaskStatus, clocks: Clocks, **kwargs: object) -> Settlement:
    """The settle a worker sends for `rec` (carrying its workflow, as settlement_for does)."""
    return dataclasses.replace(outcome(rec, status, at=clocks.wall, **kwargs),  # type: ignore[arg-type]
                               workflow_id=rec.workflow_id)


def run(store: Store, clocks: Clocks, status: TaskStatus = S, **kwargs: object) -> TaskRecord:
    """Claim the one due task and settle it with `status`."""
    rec = claim_one(store, clocks)
    assert store.settle_one(ended(rec, status, clocks, **kwargs))
    return rec


def state(store: Store) -> tuple[WorkflowStatus, int, int]:
    record = store.workflow("wf")
    assert record is not None
    return record.state, record.step, record.remaining


def statuses(store: Store, *ids: str) -> list[TaskStatus | None]:
    return [store.status(i) for i in ids]


def stopped_reason(store: Store, task_id: str) -> str:
    record = store.get(task_id)
    assert record is not None and record.status == C and record.error is not None
    assert record.error["type"] == STOPPED
    return str(record.error["message"])


# -- enqueueing and reading ---------------------------------------------------------


def test_a_workflow_is_stored_whole_first_step_pending_the_rest_waiting(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    assert statuses(store, "a", "b", "e") == [P, W, W]
    record = store.workflow("wf")
    assert record is not None
    assert (record.kind, record.state, record.step, record.remaining, record.sizes) == (
        "link", WorkflowStatus.RUNNING, 0, 1, (1, 1))
    assert (record.handler_id, record.handler_step, record.first_bad) == ("e", 0, None)
    assert record.members == (("e", -1, 0), ("a", 0, 0), ("b", 1, 0))
    b = store.get("b")
    assert b is not None and (b.workflow_id, b.wf_step, b.wf_index, b.wf_input) == ("wf", 1, 0, INPUT_RESULT)
    assert store.workflow("nope") is None


def test_a_waiting_task_is_never_claimed(store: Store, clocks: Clocks) -> None:
    linked(store, clocks, links=3)
    assert [r.id for r in claim(store, clocks, limit=10)] == ["a"]
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)
    assert claim(store, clocks, limit=10) == []
    assert store.claim_task("b", "w", lease=10.0, now=clocks.wall) is None


def test_counts_and_listing_show_waiting_tasks(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    store.enqueue([new("plain")])
    assert store.counts_by_status()[W] == 2
    assert store.counts_by_status()[P] == 2
    assert sorted(r.id for r in store.list(Query(status=W))) == ["b", "e"]
    assert store.count(Query(status=W)) == 2
    assert store.pending_by_queue() == {"default": 2}  # waiting is not queue depth


def test_step_results_come_in_step_order_with_their_serializers(store: Store, clocks: Clocks) -> None:
    tasks = [member("a", 0, index=1), member("a0", 0, index=0), member("c", 1, wf_input="results")]
    tasks[0].serializer = "pickle"
    store.enqueue_workflow(NewWorkflow("wf", "chain", (2, 1), clocks.wall), tasks)
    for rec in claim(store, clocks, limit=2):
        assert store.settle_one(ended(rec, S, clocks, result=b"\x80pickled" if rec.id == "a" else '"json"'))
    results = store.step_results("wf", 0)
    assert [(r.id, r.status, r.serializer, r.result) for r in results] == [
        ("a0", S, "json", '"json"'), ("a", S, "pickle", b"\x80pickled")]
    assert store.status("c") == P


# -- link / link_error ---------------------------------------------------------------


def test_link_success_releases_the_link_once_and_cancels_the_handler(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    run(store, clocks)
    assert statuses(store, "a", "b", "e") == [S, P, C]
    assert stopped_reason(store, "e").startswith("not needed")
    assert state(store) == (WorkflowStatus.RUNNING, 1, 1)
    assert [r.id for r in claim(store, clocks, limit=10)] == ["b"]  # released once
    assert claim(store, clocks, limit=10) == []


def test_link_workflow_succeeds_when_its_link_does(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    run(store, clocks)
    run(store, clocks)
    assert state(store) == (WorkflowStatus.SUCCESS, 1, 0)
    record = store.workflow("wf")
    assert record is not None and record.finished_at == clocks.wall


def test_a_failure_after_the_last_retry_releases_link_error(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    rec = run(store, clocks, P, eta=clocks.wall)  # a retried attempt: not an end
    assert rec.id == "a"
    assert statuses(store, "a", "b", "e") == [P, W, W]
    assert state(store) == (WorkflowStatus.RUNNING, 0, 1)
    run(store, clocks, F)
    assert statuses(store, "a", "b", "e") == [F, C, P]
    assert stopped_reason(store, "b") == "workflow wf stopped: member a ended failed"
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.FAILED, "a")
    assert [r.id for r in claim(store, clocks, limit=10)] == ["e"]


def test_the_handler_ending_moves_nothing(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    run(store, clocks, F)
    run(store, clocks, F)  # the handler fails too
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.FAILED, "a")


def test_a_link_failing_does_not_release_link_error(store: Store, clocks: Clocks) -> None:
    """Celery's: link_error is for the task's failure, not its link's."""
    linked(store, clocks)
    run(store, clocks)
    run(store, clocks, F)
    assert statuses(store, "a", "b", "e") == [S, F, C]
    assert state(store)[0] == WorkflowStatus.FAILED


def test_a_late_sibling_moves_nothing(store: Store, clocks: Clocks) -> None:
    linked(store, clocks, links=2)
    run(store, clocks)
    b, b1 = claim(store, clocks, limit=2)
    assert store.settle_one(ended(b, F, clocks))
    assert state(store) == (WorkflowStatus.FAILED, 1, 1)
    assert store.settle_one(ended(b1, S, clocks))
    record = store.workflow("wf")
    assert record is not None and (record.state, record.remaining, record.first_bad) == (
        WorkflowStatus.FAILED, 1, b.id)


def test_a_stale_settle_advances_nothing(store: Store, clocks: Clocks) -> None:
    chained(store, clocks)
    first = claim_one(store, clocks, lease=10.0)
    clocks.advance(60)
    assert [r.status for r in store.recover_expired(now=clocks.wall, max_lost=3)] == [P]
    second = claim_one(store, clocks, "w2")
    assert not store.settle_one(ended(first, S, clocks))  # the fence moved
    assert statuses(store, "a", "b", "c") == [R, W, W]
    assert state(store) == (WorkflowStatus.RUNNING, 0, 1)
    assert store.settle_one(ended(second, S, clocks))
    assert statuses(store, "a", "b", "c") == [S, P, W]


def test_a_second_settle_of_one_claim_advances_nothing(store: Store, clocks: Clocks) -> None:
    chained(store, clocks)
    rec = claim_one(store, clocks)
    assert store.settle_one(ended(rec, S, clocks))
    assert not store.settle_one(ended(rec, S, clocks))
    assert state(store) == (WorkflowStatus.RUNNING, 1, 1)
    assert statuses(store, "b", "c") == [P, W]


def test_one_claim_settled_twice_in_a_batch_advances_once(store: Store, clocks: Clocks) -> None:
    chained(store, clocks)
    rec = claim_one(store, clocks)
    settles = [ended(rec, S, clocks), ended(rec, S, clocks)]
    accepted, claimed = store.settle_and_claim(settles, "w1", mode="process", queues=None, limit=0, lease=10.0,
                                               now=clocks.wall)
    assert accepted == [True, False] and claimed == []
    assert state(store) == (WorkflowStatus.RUNNING, 1, 1)
    assert statuses(store, "b", "c") == [P, W]


def test_a_batch_settles_a_member_and_claims_its_successor_after(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "ab")
    rec = claim_one(store, clocks)
    store.enqueue([new("plain")])
    accepted, claimed = store.settle_and_claim([ended(rec, S, clocks)], "w1", mode="process", queues=None,
                                               limit=5, lease=10.0, now=clocks.wall)
    assert accepted == [True]
    assert "plain" in [r.id for r in claimed]
    assert store.status("b") in (P, R)  # released in the settle's transaction
    rest = [r.id for r in claim(store, clocks, limit=5)]
    assert sorted(rest + [r.id for r in claimed if r.id == "b"]) == ["b"]


@pytest.mark.parametrize("path", ["release_owner", "recover_expired"])
def test_worker_lost_releases_link_error(store: Store, clocks: Clocks, path: str) -> None:
    linked(store, clocks)
    claim_one(store, clocks, "w1", lease=10.0)
    if path == "release_owner":
        (lost,) = store.release_owner("w1", count_attempt=True, max_lost=1)
    else:
        clocks.advance(60)
        (lost,) = store.recover_expired(now=clocks.wall, max_lost=1)
    assert lost.status == F and lost.error is not None and lost.error["type"] == "castor.errors.WorkerLost"
    assert statuses(store, "a", "b", "e") == [F, C, P]
    assert state(store)[0] == WorkflowStatus.FAILED


@pytest.mark.parametrize("path", ["release_owner", "recover_expired"])
def test_a_lost_worker_with_losses_left_moves_nothing(store: Store, clocks: Clocks, path: str) -> None:
    linked(store, clocks)
    claim_one(store, clocks, "w1", lease=10.0)
    if path == "release_owner":
        store.release_owner("w1", count_attempt=True, max_lost=3)
    else:
        clocks.advance(60)
        store.recover_expired(now=clocks.wall, max_lost=3)
    assert statuses(store, "a", "b", "e") == [P, W, W]
    assert state(store) == (WorkflowStatus.RUNNING, 0, 1)


def test_cancelling_a_pending_member_cancels_its_link_and_handler(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    assert store.cancel("a", now=clocks.wall) == C
    assert statuses(store, "a", "b", "e") == [C, C, C]
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.CANCELLED, "a")
    assert stopped_reason(store, "e") == "workflow wf stopped: member a ended cancelled"


def test_cancelling_a_running_member_cancels_both_once_its_worker_stops(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    rec = claim_one(store, clocks)
    assert store.cancel("a", now=clocks.wall) == R
    assert statuses(store, "b", "e") == [W, W]
    assert store.settle_one(ended(rec, C, clocks))
    assert statuses(store, "a", "b", "e") == [C, C, C]
    assert state(store)[0] == WorkflowStatus.CANCELLED


@pytest.mark.parametrize("path", ["release_owner", "recover_expired", "requeue", "retry settle"])
def test_a_cancel_met_on_the_way_back_ends_the_member_and_its_workflow(store: Store, clocks: Clocks,
                                                                       path: str) -> None:
    linked(store, clocks)
    rec = claim_one(store, clocks, "w1", lease=10.0)
    store.cancel("a", now=clocks.wall)
    if path == "release_owner":
        store.release_owner("w1", count_attempt=False, max_lost=3)
    elif path == "recover_expired":
        clocks.advance(60)
        store.recover_expired(now=clocks.wall, max_lost=3)
    elif path == "requeue":
        assert store.requeue("a", rec.fence, count_attempt=False)
    else:
        assert store.settle_one(ended(rec, P, clocks, eta=clocks.wall))
    assert statuses(store, "a", "b", "e") == [C, C, C]
    assert state(store)[0] == WorkflowStatus.CANCELLED


def test_cancelling_a_waiting_member_cancels_its_workflow(store: Store, clocks: Clocks) -> None:
    chained(store, clocks)
    run(store, clocks)
    assert store.cancel("c", now=clocks.wall) == C
    assert state(store)[0] == WorkflowStatus.CANCELLED
    assert store.status("b") == P  # left to finish (design 4: only waiting rows are stopped)


def test_an_expired_member_ends_its_workflow(store: Store, clocks: Clocks) -> None:
    tasks = [member("a", 0), member("b", 1, wf_input=INPUT_RESULT)]
    tasks[0].options = {"expires": clocks.wall - 1}
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1, 1), clocks.wall), tasks)
    assert [r.id for r in store.expire_pending(now=clocks.wall)] == ["a"]
    assert statuses(store, "a", "b") == [C, C]
    assert state(store)[0] == WorkflowStatus.CANCELLED


# -- chains -----------------------------------------------------------------------------


def test_a_chain_runs_link_after_link(store: Store, clocks: Clocks) -> None:
    chained(store, clocks)
    for step, task_id in enumerate("abc"):
        assert state(store) == (WorkflowStatus.RUNNING, step, 1)
        assert run(store, clocks).id == task_id
    assert state(store) == (WorkflowStatus.SUCCESS, 2, 0)


def test_a_chain_stops_at_a_link_that_fails(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "abcd")
    run(store, clocks)
    run(store, clocks, F)
    assert statuses(store, "a", "b", "c", "d") == [S, F, C, C]
    assert stopped_reason(store, "d") == "workflow wf stopped: member b ended failed"
    record = store.workflow("wf")
    assert record is not None and (record.state, record.step, record.first_bad) == (WorkflowStatus.FAILED, 1, "b")


def test_a_chains_link_error_covers_every_link(store: Store, clocks: Clocks) -> None:
    tasks = [member("a", 0), member("b", 1, wf_input=INPUT_RESULT), member("e", -1, wf_input=INPUT_ERROR)]
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1, 1), clocks.wall, handler_id="e"), tasks)
    run(store, clocks)
    assert statuses(store, "b", "e") == [P, W]  # not past its steps: it waits
    run(store, clocks, F)
    assert statuses(store, "b", "e") == [F, P]


def test_a_succeeded_chains_handler_ends_not_needed(store: Store, clocks: Clocks) -> None:
    tasks = [member("a", 0), member("e", -1, wf_input=INPUT_ERROR)]
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1,), clocks.wall, handler_id="e"), tasks)
    run(store, clocks)
    assert state(store)[0] == WorkflowStatus.SUCCESS
    assert stopped_reason(store, "e").startswith("not needed")


def test_cancelling_a_workflow_stops_what_has_not_ended(store: Store, clocks: Clocks) -> None:
    linked(store, clocks, links=2)
    rec = claim_one(store, clocks)
    assert store.cancel_workflow("wf", now=clocks.wall) == WorkflowStatus.CANCELLED
    assert statuses(store, "a", "b", "b1", "e") == [R, C, C, C]
    assert store.cancel_requests("w1") == [rec.claim]
    assert store.settle_one(ended(rec, S, clocks))  # finished first: its settle moves nothing
    assert state(store)[0] == WorkflowStatus.CANCELLED
    assert store.cancel_workflow("wf", now=clocks.wall) == WorkflowStatus.CANCELLED
    assert store.cancel_workflow("nope", now=clocks.wall) is None


def test_cancelling_a_finished_workflow_leaves_it(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "a")
    run(store, clocks)
    assert store.cancel_workflow("wf", now=clocks.wall) == WorkflowStatus.SUCCESS
    assert store.status("a") == S


# -- what keeps members while their workflow runs ---------------------------------------------


def test_purge_and_ttl_skip_members_of_a_running_workflow(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "ab")
    run(store, clocks, expires_at=clocks.wall - 10)
    store.enqueue([new("plain")])
    rec = claim_one(store, clocks, "w9")  # b and plain: take plain by name below if needed
    if rec.id == "b":
        rec, b = claim_one(store, clocks, "w9"), rec
    else:
        b = claim_one(store, clocks, "w9")
    assert store.settle_one(outcome(rec, S, at=clocks.wall, expires_at=clocks.wall - 10))
    assert store.purge_expired(now=clocks.wall) == 1  # plain only
    assert store.purge(Query(status=S)) == 0
    assert store.status("a") == S
    assert store.settle_one(ended(b, S, clocks, expires_at=clocks.wall - 10))
    assert store.purge_expired(now=clocks.wall) == 2  # the workflow ended: its TTLs apply


def test_retry_leaves_workflow_members(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "ab")
    run(store, clocks, F)
    store.enqueue([new("plain")])
    assert store.settle_one(outcome(claim_one(store, clocks), F, at=clocks.wall))
    assert store.retry(task_id="a", now=clocks.wall) == []
    assert store.retry(Query(status=F), now=clocks.wall) == ["plain"]
    assert store.retry(Query(status=C), now=clocks.wall) == []
    assert statuses(store, "a", "b") == [F, C]


def test_move_sees_unfinished_workflows_and_copies_no_member(store: Store, clocks: Clocks) -> None:
    linked(store, clocks)
    store.enqueue([new("plain")])
    assert store.unfinished_workflows() == 1
    assert [c.id for c in store.pending_copies()] == ["plain"]
    run(store, clocks, F)
    run(store, clocks)  # the handler (or plain) ...
    run(store, clocks)
    assert store.unfinished_workflows() == 0


def test_a_batch_of_plain_settles_moves_each_members_workflow(store: Store, clocks: Clocks) -> None:
    """Several successes in one batch (PostgreSQL writes them in one statement over arrays)."""
    for workflow in ("w1", "w2"):
        store.enqueue_workflow(NewWorkflow(workflow, "chain", (1, 1), clocks.wall), [
            member(f"{workflow}a", 0, workflow=workflow), member(f"{workflow}b", 1, workflow=workflow,
                                                                 wf_input=INPUT_RESULT)])
    store.enqueue([new("plain")])
    claimed = claim(store, clocks, limit=3)
    accepted, _ = store.settle_and_claim([ended(r, S, clocks) for r in claimed], "w1", mode="process",
                                         queues=None, limit=0, lease=10.0, now=clocks.wall)
    assert accepted == [True, True, True]
    assert statuses(store, "w1b", "w2b") == [P, P]
    assert [store.workflow(w).step for w in ("w1", "w2")] == [1, 1]  # type: ignore[union-attr]


def test_a_crashed_owner_holding_several_tasks_ends_a_cancelled_member(store: Store, clocks: Clocks) -> None:
    """Held beside another task: nobody is blamed, but a cancel asked meanwhile ends it."""
    linked(store, clocks)
    store.enqueue([new("plain")])
    assert len(claim(store, clocks, "w1", limit=2)) == 2
    store.cancel("a", now=clocks.wall)
    store.release_owner("w1", count_attempt=True, max_lost=3)
    assert statuses(store, "a", "b", "e", "plain") == [C, C, C, P]
    assert state(store)[0] == WorkflowStatus.CANCELLED


# -- groups and chords ------------------------------------------------------------------


def grouped(store: Store, clocks: Clocks, n: int = 3, *, callback: bool = False) -> list[str]:
    """`group(m0, m1, ...)`, or with `callback` `chord([m0, ...], cb)`: steps [m0 m1 ...] ([cb])."""
    ids = [f"m{i}" for i in range(n)]
    tasks = [member(task_id, 0, index=i, name=f"n{i}") for i, task_id in enumerate(ids)]
    if callback:
        tasks.append(member("cb", 1, wf_input=INPUT_RESULTS))
    store.enqueue_workflow(NewWorkflow("wf", "chord" if callback else "group", (n, 1) if callback else (n,),
                                       clocks.wall), tasks)
    return ids


def claim_all(store: Store, clocks: Clocks, n: int) -> dict[str, TaskRecord]:
    claimed = {r.id: r for r in claim(store, clocks, limit=n)}
    assert len(claimed) == n
    return claimed


def test_a_group_ends_success_when_its_last_member_does_in_any_order(store: Store, clocks: Clocks) -> None:
    ids = grouped(store, clocks, 4)
    claimed = claim_all(store, clocks, 4)
    for count, task_id in enumerate(["m2", "m0", "m3", "m1"], start=1):
        assert state(store) == (WorkflowStatus.RUNNING, 0, 5 - count)
        assert store.settle_one(ended(claimed[task_id], S, clocks, result=f'"{task_id}!"'))
    assert state(store) == (WorkflowStatus.SUCCESS, 0, 0)
    assert [(r.id, r.result) for r in store.step_results("wf", 0)] == [(i, f'"{i}!"') for i in ids]


def test_a_groups_members_settled_in_one_batch_count_once_each(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3)
    claimed = claim_all(store, clocks, 3)
    accepted, _ = store.settle_and_claim([ended(r, S, clocks) for r in claimed.values()], "w1", mode="process",
                                         queues=None, limit=0, lease=10.0, now=clocks.wall)
    assert accepted == [True, True, True]
    assert state(store) == (WorkflowStatus.SUCCESS, 0, 0)


def test_a_group_fails_at_once_and_its_siblings_keep_running(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3)
    claimed = claim_all(store, clocks, 2)  # m0 and m1 running, m2 still pending
    assert store.settle_one(ended(claimed["m1"], F, clocks))
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.FAILED, "m1")
    assert record.finished_at == clocks.wall
    assert statuses(store, "m0", "m1", "m2") == [R, F, P]  # left to finish
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    assert run(store, clocks, F).id == "m2"  # a later failure moves nothing either
    record = store.workflow("wf")
    assert record is not None and (record.state, record.remaining, record.first_bad) == (
        WorkflowStatus.FAILED, 2, "m1")
    assert statuses(store, "m0", "m1", "m2") == [S, F, F]


def test_failed_members_names_every_failed_member_of_a_step_in_order(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 4)
    claimed = claim_all(store, clocks, 4)
    for task_id in ("m3", "m0", "m1"):
        assert store.settle_one(ended(claimed[task_id], F, clocks))
    assert store.settle_one(ended(claimed["m2"], S, clocks))
    failed, total = store.failed_members("wf", 0)
    assert total == 3
    assert [(m.id, m.name, m.status) for m in failed] == [("m0", "n0", F), ("m1", "n1", F), ("m3", "n3", F)]
    assert failed[0].error is not None and failed[0].error["type"] == "builtins.ValueError"
    first_two, total = store.failed_members("wf", 0, limit=2)
    assert [m.id for m in first_two] == ["m0", "m1"] and total == 3
    assert store.failed_members("wf", 1) == ([], 0)
    assert store.failed_members("nope", 0) == ([], 0)


def test_a_failure_and_a_success_in_one_batch_fail_the_group(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 2)
    claimed = claim_all(store, clocks, 2)
    accepted, _ = store.settle_and_claim([ended(claimed["m0"], S, clocks), ended(claimed["m1"], F, clocks)], "w1",
                                         mode="process", queues=None, limit=0, lease=10.0, now=clocks.wall)
    assert accepted == [True, True]
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.FAILED, "m1")


def test_a_cancelled_member_cancels_its_group_and_leaves_the_others(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3)
    assert store.cancel("m1", now=clocks.wall) == C
    record = store.workflow("wf")
    assert record is not None and (record.state, record.first_bad) == (WorkflowStatus.CANCELLED, "m1")
    assert statuses(store, "m0", "m1", "m2") == [P, C, P]


def test_a_chord_releases_its_callback_once_after_the_last_member(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 3)
    for task_id in ("m1", "m2"):
        assert store.settle_one(ended(claimed[task_id], S, clocks))
        assert store.status("cb") == W
    assert store.settle_one(ended(claimed["m0"], S, clocks))
    assert not store.settle_one(ended(claimed["m0"], S, clocks))  # a resend counts nothing
    assert store.status("cb") == P and state(store) == (WorkflowStatus.RUNNING, 1, 1)
    assert [r.id for r in claim(store, clocks, limit=10)] == ["cb"]
    assert claim(store, clocks, limit=10) == []
    callback = store.get("cb")
    assert callback is not None and callback.wf_input == INPUT_RESULTS
    assert store.settle_one(ended(callback, S, clocks))
    assert state(store) == (WorkflowStatus.SUCCESS, 1, 0)


def test_a_chord_member_failing_cancels_the_callback_at_once(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 3, callback=True)
    claimed = claim_all(store, clocks, 3)
    assert store.settle_one(ended(claimed["m2"], F, clocks))
    assert statuses(store, "m0", "m1", "m2", "cb") == [R, R, F, C]
    assert stopped_reason(store, "cb") == "workflow wf stopped: member m2 ended failed"
    assert store.settle_one(ended(claimed["m0"], F, clocks))  # a sibling fails later: named too
    assert store.settle_one(ended(claimed["m1"], S, clocks))
    record = store.workflow("wf")
    assert record is not None and (record.state, record.step, record.first_bad) == (WorkflowStatus.FAILED, 0, "m2")
    assert [m.id for m in store.failed_members("wf", 0)[0]] == ["m0", "m2"]
    assert claim(store, clocks, limit=10) == []  # the callback never runs


def test_a_chord_member_cancelled_cancels_the_chord_and_its_callback(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 2, callback=True)
    assert store.cancel("m0", now=clocks.wall) == C
    assert statuses(store, "m0", "m1", "cb") == [C, P, C]
    assert state(store)[0] == WorkflowStatus.CANCELLED


def test_a_chord_whose_callback_fails_fails(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 2, callback=True)
    run(store, clocks)
    run(store, clocks)
    assert run(store, clocks, F).id == "cb"
    record = store.workflow("wf")
    assert record is not None and (record.state, record.step, record.first_bad) == (WorkflowStatus.FAILED, 1, "cb")


def test_a_member_lost_for_good_fails_the_chord(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 2, callback=True)
    claim_one(store, clocks, "w1", lease=10.0)
    (lost,) = store.release_owner("w1", count_attempt=True, max_lost=1)
    assert lost.status == F
    assert state(store)[0] == WorkflowStatus.FAILED
    assert store.status("cb") == C


def test_a_group_inside_a_chain_feeds_the_next_link_its_results(store: Store, clocks: Clocks) -> None:
    """chain(a, group(b, c), d): steps [a] [b c] [d]."""
    tasks = [member("a", 0), member("b", 1, wf_input=INPUT_RESULT), member("c", 1, index=1, wf_input=INPUT_RESULT),
             member("d", 2, wf_input=INPUT_RESULTS)]
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1, 2, 1), clocks.wall), tasks)
    run(store, clocks)
    assert statuses(store, "b", "c", "d") == [P, P, W]
    claimed = claim_all(store, clocks, 2)
    assert store.settle_one(ended(claimed["c"], S, clocks))
    assert store.status("d") == W
    assert store.settle_one(ended(claimed["b"], S, clocks))
    assert store.status("d") == P and state(store) == (WorkflowStatus.RUNNING, 2, 1)
    run(store, clocks)
    assert state(store) == (WorkflowStatus.SUCCESS, 2, 0)


def test_cancelling_ten_thousand_members_is_one_call(store: Store, clocks: Clocks) -> None:
    n = 10_000
    tasks = [member(f"m{i:05}", 0, index=i) for i in range(n)] + [member("cb", 1, wf_input=INPUT_RESULTS)]
    store.enqueue_workflow(NewWorkflow("wf", "chord", (n, 1), clocks.wall), tasks)
    assert store.counts_by_status()[P] == n
    running = claim_all(store, clocks, 3)
    assert store.cancel_workflow("wf", now=clocks.wall) == WorkflowStatus.CANCELLED
    counts = store.counts_by_status()
    assert (counts[C], counts[R], counts[P], counts[W]) == (n - 3 + 1, 3, 0, 0)
    assert sorted(store.cancel_requests("w1")) == sorted(r.claim for r in running.values())
    for rec in running.values():  # stopped, they end cancelled and move nothing
        assert store.settle_one(ended(rec, C, clocks))
    assert store.counts_by_status()[C] == n + 1
    assert state(store) == (WorkflowStatus.CANCELLED, 0, n)
