"""Reading many tasks: list, count, queue depth, counts by status, queue stats."""

from __future__ import annotations

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import claim_one, new, outcome


def populate(store, clocks):
    """pending: p1 (mail), p2 (default, due in 60 s); running: r; success: s; failed: f1, f2
    (two names); cancelled: c."""
    t = clocks.wall
    store.enqueue([new("p1", queue="mail", now=t - 6), new("p2", eta=t + 60, now=t - 5),
                   new("r", name="job", now=t - 4), new("s", now=t - 3), new("f1", name="job", now=t - 2),
                   new("f2", name="other", now=t - 1), new("c", now=t)])
    for task_id, status in (("r", None), ("s", TaskStatus.SUCCESS), ("f1", TaskStatus.FAILED),
                            ("f2", TaskStatus.FAILED)):
        rec = store.claim_task(task_id, "w", lease=10.0, now=t)
        if status is not None:
            store.settle_one(outcome(rec, status, at=t))
    store.cancel("c", now=t)


def test_list_is_newest_first(store, clocks):
    populate(store, clocks)
    assert [r.id for r in store.list(Query())] == ["c", "f2", "f1", "s", "r", "p2", "p1"]


def test_list_limit_and_offset(store, clocks):
    populate(store, clocks)
    assert [r.id for r in store.list(Query(), limit=2)] == ["c", "f2"]
    assert [r.id for r in store.list(Query(), limit=2, offset=2)] == ["f1", "s"]
    assert [r.id for r in store.list(Query(), offset=6)] == ["p1"]
    assert store.list(Query(), limit=0) == []


def test_query_filters(store, clocks):
    populate(store, clocks)
    assert [r.id for r in store.list(Query(status=TaskStatus.PENDING))] == ["p2", "p1"]
    assert [r.id for r in store.list(Query(status=TaskStatus.FAILED))] == ["f2", "f1"]
    assert [r.id for r in store.list(Query(name="job"))] == ["f1", "r"]
    assert [r.id for r in store.list(Query(name="job", status=TaskStatus.RUNNING))] == ["r"]
    assert [r.id for r in store.list(Query(queue="mail"))] == ["p1"]
    assert [r.id for r in store.list(Query(task_id="s"))] == ["s"]
    assert store.list(Query(task_id="nope")) == []
    assert [r.id for r in store.list(Query(finished_before=clocks.wall + 1, name="job"))] == ["f1"]


def test_count_agrees_with_list(store, clocks):
    populate(store, clocks)
    for query in (Query(), Query(status=TaskStatus.PENDING), Query(status=TaskStatus.SUCCESS), Query(name="job"),
                  Query(queue="mail"), Query(name="none"), Query(dirty=False)):
        assert store.count(query) == len(store.list(query)), query


def test_counts_by_status_names_every_status(store, clocks):
    assert store.counts_by_status() == dict.fromkeys(TaskStatus, 0)
    populate(store, clocks)
    assert store.counts_by_status() == {TaskStatus.PENDING: 2, TaskStatus.RUNNING: 1, TaskStatus.SUCCESS: 1,
                                        TaskStatus.FAILED: 2, TaskStatus.CANCELLED: 1, TaskStatus.WAITING: 0}


def test_pending_by_queue(store, clocks):
    assert store.pending_by_queue() == {}
    populate(store, clocks)
    assert store.pending_by_queue() == {"mail": 1, "default": 1}


def test_queue_stats(store, clocks):
    assert store.queue_stats(now=clocks.wall) == {"scheduled": 0, "oldest_due": None, "failed_by_name": {}}
    populate(store, clocks)
    stats = store.queue_stats(now=clocks.wall)
    assert stats == {"scheduled": 1, "oldest_due": clocks.wall - 6, "failed_by_name": {"job": 1, "other": 1}}
    assert store.queue_stats(now=clocks.wall + 61)["scheduled"] == 0


def test_a_claimed_task_leaves_the_queue_depth(store, clocks):
    store.enqueue([new("a"), new("b")])
    claim_one(store, clocks)
    assert store.pending_by_queue() == {"default": 1}


class TestKeysetPages:
    """list(after=(enqueued_at, id)): the page after a row, newest first, ties by id."""

    def test_pages_by_the_last_rows_key_cover_every_task_once(self, store, clocks):
        t = clocks.wall
        # Ties on enqueued_at (ordered by id, descending) across page ends.
        store.enqueue([new(f"t{i:02d}", now=t - (i // 3)) for i in range(20)])
        everything = [r.id for r in store.list(Query())]
        pages, after = [], None
        while True:
            page = store.list(Query(), limit=7, after=after)
            if not page:
                break
            pages.append([r.id for r in page])
            after = (page[-1].enqueued_at, page[-1].id)
        assert [len(p) for p in pages] == [7, 7, 6]
        assert [i for p in pages for i in p] == everything
        assert everything[:3] == ["t02", "t01", "t00"]  # newest first; a tie by id, descending

    def test_after_combines_with_the_filter(self, store, clocks):
        t = clocks.wall
        store.enqueue([new(f"a{i}", now=t - i, queue="a" if i % 2 else "b") for i in range(6)])
        (first,) = store.list(Query(queue="a"), limit=1)
        rest = store.list(Query(queue="a"), after=(first.enqueued_at, first.id))
        assert [first.id] + [r.id for r in rest] == ["a1", "a3", "a5"]
        assert store.list(Query(queue="a"), after=(t - 100, "zzz")) == []


def test_estimated_counts_are_exact_where_they_say_so(store, clocks):
    """A screen's counts: pending and running always exact; a finished status past the
    limit may be the store's estimate, flagged; every unflagged count is exact."""
    populate(store, clocks)
    exact = store.counts_by_status()
    for limit in (0, 1, 10):
        counts = store.estimated_counts_by_status(exact_up_to=limit)
        assert set(counts) == set(TaskStatus)
        for status, (n, estimated) in counts.items():
            if not estimated:
                assert n == exact[status], (limit, status)
            else:
                assert status.finished and n > limit, (limit, status)
