"""A task copied (castord move's pending_copies/insert_copies) or read for a copy ("Run
again") keeps its concurrency key: the copy is limited as the task was."""

from __future__ import annotations

from tests.contract.builders import claim, new


def test_a_moved_task_keeps_its_concurrency_key(store, clocks):
    store.set_concurrency_limit("scan", 1, per_key=True)
    store.enqueue([new("a1", name="scan", concurrency_key="alice"), new("a2", name="scan", concurrency_key="alice"),
                   new("b1", name="scan", concurrency_key="bob"), new("plain")])
    copies = store.pending_copies()
    assert {c.id: c.as_new().concurrency_key for c in copies} == {"a1": "alice", "a2": "alice", "b1": "bob",
                                                                  "plain": None}
    assert sorted(store.delete_copies(copies)) == ["a1", "a2", "b1", "plain"]
    assert sorted(store.insert_copies(copies).inserted) == ["a1", "a2", "b1", "plain"]
    assert sorted(r.id for r in claim(store, clocks, limit=10)) == ["a1", "b1", "plain"]  # one of alice's at a time


def test_a_tasks_concurrency_key_is_read_for_its_copy(store):
    store.enqueue([new("a1", name="scan", concurrency_key="alice"), new("whole", name="scan", concurrency_key=""),
                   new("plain")])
    assert [store.concurrency_key_of(i) for i in ("a1", "whole", "plain", "missing")] == ["alice", "", None, None]
