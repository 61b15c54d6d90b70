"""expires= on a waiting workflow member counts from its release (docs/flow-control.md):
the member carries the seconds (options "expires_after", castor/expiry.py), and the
release statement of each store turns them into its deadline ("expires"), counted
from the release; an absolute expiry stays as it was."""

from __future__ import annotations

from castor.expiry import EXPIRED_TYPE
from castor.states import WorkflowStatus
from castor.store import Store
from castor.store.base import INPUT_ERROR, INPUT_RESULT, NewWorkflow
from tests.contract.builders import Clocks, claim_one
from tests.contract.test_workflows import C, F, P, S, ended, member, run, state, statuses


def chain_of_two(store: Store, clocks: Clocks, options: dict) -> None:
    tasks = [member("a", 0), member("b", 1, wf_input=INPUT_RESULT)]
    tasks[1].options = options
    store.enqueue_workflow(NewWorkflow("wf", "chain", (1, 1), clocks.wall), tasks)


def test_a_waiting_member_runs_though_its_predecessor_took_longer_than_its_expiry(
        store: Store, clocks: Clocks) -> None:
    chain_of_two(store, clocks, {"expires_after": 10.0, "timeout": 3.0})
    claimed = claim_one(store, clocks)
    released_at = clocks.advance(60)  # a takes a minute; b's ten seconds have not begun
    assert store.expire_pending(now=released_at) == []
    assert store.settle_one(ended(claimed, S, clocks))
    b = store.get("b")
    assert b is not None and b.status == P
    assert b.options == {"expires": released_at + 10.0, "timeout": 3.0}  # counted from the release
    assert store.expire_pending(now=released_at + 5) == []
    assert claim_one(store, clocks).id == "b"  # it runs


def test_a_released_member_not_started_in_time_expires(store: Store, clocks: Clocks) -> None:
    chain_of_two(store, clocks, {"expires_after": 10.0})
    clocks.advance(60)
    run(store, clocks)
    (expired,) = store.expire_pending(now=clocks.wall + 10)
    assert expired.id == "b" and expired.error is not None and expired.error["type"] == EXPIRED_TYPE
    assert state(store)[0] == WorkflowStatus.CANCELLED


def test_an_absolute_expiry_stays_as_it_was(store: Store, clocks: Clocks) -> None:
    at = clocks.wall + 30
    chain_of_two(store, clocks, {"expires": at})
    clocks.advance(60)
    run(store, clocks)
    b = store.get("b")
    assert b is not None and b.status == P and b.options == {"expires": at}
    assert [r.id for r in store.expire_pending(now=clocks.wall)] == ["b"]  # past already: never runs


def test_the_link_error_handlers_expiry_counts_from_its_release(store: Store, clocks: Clocks) -> None:
    tasks = [member("a", 0), member("e", -1, wf_input=INPUT_ERROR)]
    tasks[1].options = {"expires_after": 5.0}
    store.enqueue_workflow(NewWorkflow("wf", "link", (1,), clocks.wall, handler_id="e", handler_step=0), tasks)
    clocks.advance(60)
    run(store, clocks, F)
    assert statuses(store, "a", "e") == [F, P]
    e = store.get("e")
    assert e is not None and e.options == {"expires": clocks.wall + 5.0}
    assert store.expire_pending(now=clocks.wall + 1) == []
    assert [r.id for r in store.expire_pending(now=clocks.wall + 5)] == ["e"]
    assert store.status("e") == C
