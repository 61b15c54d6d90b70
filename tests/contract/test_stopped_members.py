"""Store.stopped_members: the members a workflow's stop ended, answered only for the
member whose end stopped it (so that one process writes their lines, once)."""

from __future__ import annotations

from castor.store import Store
from tests.contract.builders import Clocks
from tests.contract.test_workflows import F, S, chained, grouped, run


def test_the_stop_of_a_chain_names_the_links_after_the_failed_one(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "abcd")
    run(store, clocks)  # a succeeds
    run(store, clocks, F)  # b fails for good: c and d are stopped
    assert [r.id for r in store.stopped_members("wf", "b")] == ["c", "d"]
    assert store.stopped_members("wf", "a") == []  # not the member that stopped it
    assert store.stopped_members("other", "b") == []


def test_a_chord_stopped_by_a_member_names_its_callback(store: Store, clocks: Clocks) -> None:
    grouped(store, clocks, 2, callback=True)
    first = run(store, clocks, F)
    assert [r.id for r in store.stopped_members("wf", first.id)] == ["cb"]


def test_a_workflow_that_succeeded_has_none(store: Store, clocks: Clocks) -> None:
    chained(store, clocks, "ab")
    run(store, clocks, S)
    last = run(store, clocks, S)
    assert store.stopped_members("wf", last.id) == []
