"""Copying pending tasks between stores (castord move): read them whole, store them as
they were, delete only what did not change meanwhile; schedules' last ticks merge."""

from __future__ import annotations

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim, claim_one, new, outcome, snapshot


def pending_rows(store):
    """Each pending row's stored state but its last owner (a copy leaves it behind)."""
    return [row[:2] + row[3:] for row in snapshot(store) if row[1] == TaskStatus.PENDING]


def some_unfinished(store, clocks):
    """Pending tasks of each kind: due, scheduled, retrying, set apart to run alone,
    with a unique and a cache key; plus a running and a finished one."""
    t = clocks.wall
    store.enqueue([new("a-due", queue="mail", priority=5, options={"timeout": 3.0}),
                   new("b-later", eta=t + 3600),
                   new("c-retry", options={"retries": 2}),
                   new("d-unique", unique_key="k1"),
                   new("e-cached", cache_key="c1"),
                   new("f-done"), new("g-running")])
    retried = next(r for r in claim(store, clocks, limit=7) if r.id == "c-retry")
    for rec in store.list(Query(status=TaskStatus.RUNNING)):
        if rec.id == "c-retry":
            store.settle_one(outcome(rec, TaskStatus.PENDING, at=t, eta=t + 60))
        elif rec.id == "f-done":
            store.settle_one(outcome(rec, at=t))
        elif rec.id != "g-running":
            store.requeue(rec.id, rec.fence, count_attempt=False)
    assert retried.attempts == 1
    assert store.status("g-running") == TaskStatus.RUNNING


def test_pending_copies_are_the_pending_tasks_whole_in_id_order(store, clocks):
    some_unfinished(store, clocks)
    copies = store.pending_copies()
    assert [c.id for c in copies] == ["a-due", "b-later", "c-retry", "d-unique", "e-cached"]
    by_id = {c.id: c for c in copies}
    assert by_id["a-due"].record.queue == "mail" and by_id["a-due"].record.priority == 5
    assert by_id["a-due"].record.options == {"timeout": 3.0} and by_id["a-due"].at_once
    assert not by_id["b-later"].at_once and by_id["b-later"].record.eta == clocks.wall + 3600
    retry = by_id["c-retry"].record
    assert (retry.attempts, retry.error["message"], len(retry.history)) == (1, "boom", 1)
    assert by_id["d-unique"].record.unique_key == "k1" and by_id["e-cached"].cache_key == "c1"
    assert by_id["a-due"].cache_key is None


def test_pending_copies_page_by_id(store, clocks):
    store.enqueue([new(f"t{i}") for i in range(5)])
    first = store.pending_copies(limit=2)
    assert [c.id for c in first] == ["t0", "t1"]
    assert [c.id for c in store.pending_copies(after="t1", limit=2)] == ["t2", "t3"]
    assert [c.id for c in store.pending_copies(after="t4")] == []


def test_copies_deleted_then_inserted_are_the_same_tasks(store, clocks):
    some_unfinished(store, clocks)
    before = pending_rows(store)
    copies = store.pending_copies()
    assert store.delete_copies(copies) == [c.id for c in copies]
    assert pending_rows(store) == []
    result = store.insert_copies(copies)
    assert (result.inserted, result.present, result.twins) == ([c.id for c in copies], [], {})
    assert pending_rows(store) == before
    again = store.pending_copies()
    assert [(c.id, c.at_once, c.cache_key, c.record.unique_key, c.record.options) for c in again] == [
        (c.id, c.at_once, c.cache_key, c.record.unique_key, c.record.options) for c in copies]


def test_an_inserted_copy_runs_and_keeps_its_keys(store, backend, clocks):
    store.enqueue([new("u1", unique_key="k", cache_key="c")])
    (copy,) = store.pending_copies()
    store.delete_copies([copy])
    other = backend.open()  # another connection, as the move's target would be
    other.insert_copies([copy])
    # The unique key holds: a twin enqueued now is the copy.
    assert store.enqueue([new("u2", unique_key="k")]) == ["u1"]
    rec = claim_one(store, clocks)
    assert (rec.id, rec.attempts, rec.fence) == ("u1", 1, copy.record.fence + 1)
    assert store.settle_one(outcome(rec, at=clocks.wall))
    assert store.find_cached("c", since=clocks.wall - 1) == "u1"


def test_a_copy_leaves_its_owner_and_lease_behind(store, clocks):
    store.enqueue([new("x"), new("y")])
    held = claim(store, clocks, "crashed", limit=2)
    assert len(held) == 2
    store.release_owner("crashed", count_attempt=True, max_lost=3)  # two held: both set apart
    copies = store.pending_copies()
    store.delete_copies(copies)
    store.insert_copies(copies)
    for rec in store.list(Query()):
        assert (rec.status, rec.owner, rec.lease_expires, rec.isolate) == (TaskStatus.PENDING, None, None, True)
    assert claim(store, clocks) == []  # set apart: only an isolated claim takes them
    assert claim_one(store, clocks, isolated=True).isolate


def test_a_copy_of_a_stored_id_leaves_the_stored_task_alone(store, clocks):
    store.enqueue([new("t1")])
    (copy,) = store.pending_copies()
    store.settle_one(outcome(claim_one(store, clocks), at=clocks.wall))  # it ran meanwhile
    result = store.insert_copies([copy])
    assert (result.inserted, result.present) == ([], ["t1"])
    assert store.status("t1") == TaskStatus.SUCCESS


def test_a_copy_whose_unique_key_is_held_is_not_stored(store, clocks):
    store.enqueue([new("old", unique_key="k"), new("done", unique_key="j")])
    copies = {c.id: c for c in store.pending_copies()}
    store.delete_copies(list(copies.values()))
    store.enqueue([new("held", unique_key="k")])
    store.enqueue([new("finished", unique_key="j")])
    store.settle_one(outcome(claim_one(store, clocks), at=clocks.wall))  # "finished" ran: j is free
    result = store.insert_copies([copies["old"], copies["done"]])
    assert (result.inserted, result.twins) == (["done"], {"old": "held"})
    assert store.status("old") is None


def test_only_tasks_still_as_copied_are_deleted(store, clocks):
    store.enqueue([new("same"), new("claimed"), new("cancelled"), new("handed-back")])
    copies = store.pending_copies()
    for rec in claim(store, clocks, limit=4):
        if rec.id == "claimed":
            continue
        store.requeue(rec.id, rec.fence, count_attempt=False)  # same attempts, a new token
    store.cancel("cancelled", now=clocks.wall)
    fresh = {c.id: c for c in store.pending_copies()}
    assert store.delete_copies(copies) == []  # every copy is older than a claim since
    assert sorted(fresh) == ["handed-back", "same"]
    assert store.delete_copies([fresh["same"]]) == ["same"]
    assert sorted(r.id for r in store.list(Query())) == ["cancelled", "claimed", "handed-back"]


def test_schedules_merge_keeping_the_later_tick(store, clocks):
    t = clocks.wall
    store.fire_schedule("kept", t + 60, new("k"), now=t + 60)
    store.fire_schedule("older", t, new("o"), now=t)
    written = store.merge_schedules({
        "kept": {"last_tick": t, "fired_at": t, "task_id": "elsewhere-1"},
        "older": {"last_tick": t + 30, "fired_at": t + 31, "task_id": "elsewhere-2"},
        "new": {"last_tick": t + 5, "fired_at": t + 6, "task_id": None},
    })
    assert sorted(written) == ["new", "older"]
    assert store.schedules() == {
        "kept": {"last_tick": t + 60, "fired_at": t + 60, "task_id": "k"},
        "older": {"last_tick": t + 30, "fired_at": t + 31, "task_id": "elsewhere-2"},
        "new": {"last_tick": t + 5, "fired_at": t + 6, "task_id": None},
    }
    assert len(store.list(Query())) == 2  # merging fires nothing
    # A tick already merged does not fire again.
    assert not store.fire_schedule("older", t + 30, new("again"), now=t + 40)
