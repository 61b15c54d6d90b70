"""Enqueue, unique keys, cached results, and reading a task back."""

from __future__ import annotations

import pytest

from castor.errors import TaskIdConflict
from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim, claim_one, new, outcome


def test_an_enqueued_task_reads_back_as_given(store, clocks):
    task = new("a", eta=clocks.wall + 5, queue="mail", priority=3, name="send",
               options={"timeout": 2.5, "retries": 1})
    assert store.enqueue([task]) == ["a"]
    rec = store.get("a")
    assert (rec.id, rec.name, rec.queue, rec.mode, rec.daemon, rec.status, rec.priority) == (
        "a", "send", "mail", "process", False, TaskStatus.PENDING, 3)
    assert (rec.serializer, rec.args, rec.kwargs, rec.enqueued_at, rec.eta) == (
        "json", "[1]", "{}", clocks.wall, clocks.wall + 5)
    assert rec.options == {"timeout": 2.5, "retries": 1}
    assert (rec.started_at, rec.finished_at, rec.result, rec.error, rec.owner, rec.lease_expires) == (
        None, None, None, None, None, None)
    assert (rec.attempts, rec.lost, rec.fence, rec.isolate, rec.cancel_requested, rec.history) == (
        0, 0, 0, False, False, [])
    assert store.status("a") == TaskStatus.PENDING


def test_arguments_and_results_keep_their_type_bytes_or_text(store, clocks):
    pickled = new("p")
    pickled.serializer, pickled.args, pickled.kwargs = "pickle", b"\x80\x05]\x94.", b"\x80\x05}\x94."
    store.enqueue([pickled])
    rec = store.get("p")
    assert (rec.args, rec.kwargs) == (b"\x80\x05]\x94.", b"\x80\x05}\x94.")
    running = claim_one(store, clocks)
    assert store.settle_one(outcome(running, at=clocks.wall, result=b"\x80\x05K\x01."))
    assert store.get("p").result == b"\x80\x05K\x01."


def test_every_field_of_a_batch_reads_back_as_given(store, clocks):
    """A batch takes another path than one task (PostgreSQL: COPY, not an INSERT)."""
    rich = new("a", eta=clocks.wall + 5, queue="mail", priority=-3, name="send",
               options={"timeout": 2.5, "tags": ["x", "ü"]}, cache_key="c1")
    rich.daemon, rich.mode = True, "thread"
    pickled = new("p")
    pickled.serializer, pickled.args, pickled.kwargs = "pickle", b"\x80\x05]\x94.", b"\x00\xff"
    assert store.enqueue([rich, pickled, new("due")]) == ["a", "p", "due"]
    rec = store.get("a")
    assert (rec.name, rec.queue, rec.mode, rec.daemon, rec.status, rec.priority, rec.eta, rec.enqueued_at) == (
        "send", "mail", "thread", True, TaskStatus.PENDING, -3, clocks.wall + 5, clocks.wall)
    assert (rec.serializer, rec.args, rec.kwargs, rec.options) == (
        "json", "[1]", "{}", {"timeout": 2.5, "tags": ["x", "ü"]})
    assert (rec.attempts, rec.fence, rec.history, rec.unique_key) == (0, 0, [], None)
    assert (store.get("p").serializer, store.get("p").args, store.get("p").kwargs) == (
        "pickle", b"\x80\x05]\x94.", b"\x00\xff")
    # Due at once or later, as a single enqueue would have it:
    assert [r.id for r in claim(store, clocks, limit=5)] == ["due", "p"]  # ties by id


def test_a_batch_is_stored_in_order_and_returns_every_id(store):
    ids = store.enqueue([new(f"t{i}") for i in range(50)])
    assert ids == [f"t{i}" for i in range(50)]
    assert store.count(Query(status=TaskStatus.PENDING)) == 50


def test_an_empty_batch_stores_nothing(store):
    assert store.enqueue([]) == []
    assert store.count(Query()) == 0


def test_a_duplicate_id_is_refused_and_its_batch_stores_nothing(store):
    store.enqueue([new("a")])
    with pytest.raises(TaskIdConflict):
        store.enqueue([new("a")])
    with pytest.raises(TaskIdConflict):
        store.enqueue([new("b"), new("c"), new("a")])
    with pytest.raises(TaskIdConflict):
        store.enqueue([new("d"), new("d")])
    assert [r.id for r in store.list(Query())] == ["a"]


def test_an_enqueue_is_durable_once_it_returns(backend, store):
    store.enqueue([new("a")])
    store.close()
    again = backend.open()
    assert again.status("a") == TaskStatus.PENDING


def test_another_instance_sees_the_task_at_once(backend, store):
    other = backend.open()
    store.enqueue([new("a")])
    assert other.status("a") == TaskStatus.PENDING


def test_unknown_ids_read_as_none(store):
    assert store.get("nope") is None
    assert store.status("nope") is None


class TestUnique:
    def test_a_pending_twin_answers_instead(self, store):
        assert store.enqueue([new("a", unique_key="k")]) == ["a"]
        assert store.enqueue([new("b", unique_key="k")]) == ["a"]
        assert store.get("b") is None

    def test_a_running_twin_answers_instead(self, store, clocks):
        store.enqueue([new("a", unique_key="k")])
        claim_one(store, clocks)
        assert store.enqueue([new("b", unique_key="k")]) == ["a"]

    @pytest.mark.parametrize("end", [TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED])
    def test_a_finished_twin_does_not(self, store, clocks, end):
        store.enqueue([new("a", unique_key="k")])
        if end == TaskStatus.CANCELLED:
            store.cancel("a", now=clocks.wall)
        else:
            store.settle_one(outcome(claim_one(store, clocks), end, at=clocks.wall))
        assert store.enqueue([new("b", unique_key="k")]) == ["b"]
        assert store.status("b") == TaskStatus.PENDING

    def test_twins_in_one_batch_store_one_and_others_alongside(self, store):
        ids = store.enqueue([new("a", unique_key="k"), new("x"), new("b", unique_key="k"),
                             new("c", unique_key="other")])
        assert ids == ["a", "x", "a", "c"]
        assert sorted(r.id for r in store.list(Query())) == ["a", "c", "x"]

    def test_the_key_is_kept_on_the_record(self, store):
        store.enqueue([new("a", unique_key="k")])
        assert store.get("a").unique_key == "k"

    def test_a_retry_does_not_make_a_second_unfinished_twin(self, store, clocks):
        store.enqueue([new("a", unique_key="k")])
        store.settle_one(outcome(claim_one(store, clocks), TaskStatus.FAILED, at=clocks.wall))
        store.enqueue([new("b", unique_key="k")])  # the new pending twin
        assert store.retry(task_id="a", now=clocks.wall) == []
        assert store.status("a") == TaskStatus.FAILED
        assert store.enqueue([new("c", unique_key="k")]) == ["b"]

    def test_a_retry_of_failed_twins_brings_back_one(self, store, clocks):
        for task_id in ("a", "b"):
            store.enqueue([new(task_id, unique_key="k")])
            store.settle_one(outcome(claim_one(store, clocks), TaskStatus.FAILED, at=clocks.wall))
        retried = store.retry(Query(status=TaskStatus.FAILED), now=clocks.wall)
        assert len(retried) == 1
        assert store.count(Query(status=TaskStatus.PENDING)) == 1


class TestCache:
    def succeed(self, store, clocks, task_id, key="k"):
        store.enqueue([new(task_id, cache_key=key)])
        rec = claim_one(store, clocks)
        assert store.settle_one(outcome(rec, at=clocks.wall))
        return clocks.wall

    def test_a_success_within_since_answers(self, store, clocks):
        finished = self.succeed(store, clocks, "a")
        assert store.find_cached("k", since=finished) == "a"
        assert store.find_cached("k", since=finished - 60) == "a"
        assert store.find_cached("k", since=finished + 0.001) is None

    def test_the_newest_success_answers(self, store, clocks):
        self.succeed(store, clocks, "old")
        clocks.advance(5)
        self.succeed(store, clocks, "new")
        assert store.find_cached("k", since=clocks.wall - 60) == "new"

    def test_only_a_success_with_the_same_key_answers(self, store, clocks):
        store.enqueue([new("pending", cache_key="k")])
        assert store.find_cached("k", since=0) is None
        rec = claim_one(store, clocks)
        assert store.find_cached("k", since=0) is None  # running
        store.settle_one(outcome(rec, TaskStatus.FAILED, at=clocks.wall))
        assert store.find_cached("k", since=0) is None  # failed
        self.succeed(store, clocks, "other", key="k2")
        assert store.find_cached("k", since=0) is None
        assert store.find_cached("unknown", since=0) is None
