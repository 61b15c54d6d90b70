"""Listing for the dashboard: pages back (before=), bounded counts, time ranges, and text
search in the arguments."""

from __future__ import annotations

import dataclasses

import pytest

from castor.states import TaskStatus
from castor.store import Query
from tests.contract.builders import new, outcome


def with_args(task_id: str, args: str | bytes, *, serializer: str = "json", **kwargs):
    return dataclasses.replace(new(task_id, **kwargs), args=args, serializer=serializer)


class TestPagesBack:
    """list(before=KEY): the page just newer than a row, still newest first."""

    def test_before_gives_the_page_the_after_link_came_from(self, store, clocks):
        t = clocks.wall
        store.enqueue([new(f"t{i:02d}", now=t - (i // 3)) for i in range(20)])  # ties across page ends
        first = store.list(Query(), limit=7)
        second = store.list(Query(), limit=7, after=(first[-1].enqueued_at, first[-1].id))
        back = store.list(Query(), limit=7, before=(second[0].enqueued_at, second[0].id))
        assert [r.id for r in back] == [r.id for r in first]

    def test_before_takes_the_rows_next_to_the_key_not_the_newest(self, store, clocks):
        t = clocks.wall
        store.enqueue([new(f"t{i:02d}", now=t - i) for i in range(10)])  # t00 newest
        key = store.get("t05")
        page = store.list(Query(), limit=2, before=(key.enqueued_at, key.id))
        assert [r.id for r in page] == ["t03", "t04"]

    def test_before_combines_with_the_filter(self, store, clocks):
        t = clocks.wall
        store.enqueue([new(f"a{i}", now=t - i, queue="a" if i % 2 else "b") for i in range(6)])
        oldest = store.get("a5")
        assert [r.id for r in store.list(Query(queue="a"), before=(oldest.enqueued_at, oldest.id))] == ["a1", "a3"]
        assert [r.id for r in store.list(Query(queue="a"), limit=2, before=(t - 100, ""))] == ["a3", "a5"]
        assert store.list(Query(queue="a"), before=(t + 100, "")) == []  # nothing newer

    def test_after_and_before_together_are_refused(self, store, clocks):
        with pytest.raises(ValueError, match="after or before"):
            store.list(Query(), after=(1.0, "a"), before=(2.0, "b"))


class TestBoundedCount:
    def test_a_limit_caps_the_count(self, store, clocks):
        store.enqueue([new(f"t{i}", now=clocks.wall - i) for i in range(12)])
        assert store.count(Query(), limit=5) == 5
        assert store.count(Query(), limit=12) == 12
        assert store.count(Query(), limit=100) == 12
        assert store.count(Query(queue="none"), limit=5) == 0
        assert store.count(Query()) == 12


class TestTimeRanges:
    def populate(self, store, clocks):
        t = clocks.wall
        store.enqueue([new(f"t{i}", now=t - 100 + 10 * i) for i in range(5)])  # t0 at t-100 ... t4 at t-60
        for i, at in ((1, t - 30), (2, t - 20), (3, t - 10)):
            rec = store.claim_task(f"t{i}", "w", lease=10.0, now=t)
            store.settle_one(outcome(rec, TaskStatus.SUCCESS, at=at))

    def ids(self, store, **fields):
        return sorted(r.id for r in store.list(Query(**fields)))

    def test_enqueued_between_includes_the_start_excludes_the_end(self, store, clocks):
        self.populate(store, clocks)
        t = clocks.wall
        assert self.ids(store, enqueued_after=t - 90, enqueued_before=t - 70) == ["t1", "t2"]
        assert self.ids(store, enqueued_after=t - 70) == ["t3", "t4"]
        assert self.ids(store, enqueued_before=t - 90) == ["t0"]

    def test_finished_between(self, store, clocks):
        self.populate(store, clocks)
        t = clocks.wall
        assert self.ids(store, finished_after=t - 20) == ["t2", "t3"]  # unfinished tasks never match
        assert self.ids(store, finished_after=t - 30, finished_before=t - 10) == ["t1", "t2"]

    def test_count_agrees(self, store, clocks):
        self.populate(store, clocks)
        t = clocks.wall
        for query in (Query(enqueued_after=t - 90), Query(finished_after=t - 25, status=TaskStatus.SUCCESS),
                      Query(enqueued_before=t - 75, finished_after=t - 100)):
            assert store.count(query) == len(store.list(query)), query


class TestArgumentSearch:
    def test_a_substring_of_args_or_kwargs_as_stored(self, store, clocks):
        t = clocks.wall
        store.enqueue([with_args("a", '["alice@example.com", 3]', now=t - 3),
                       with_args("b", '["bob"]', now=t - 2),
                       dataclasses.replace(new("c", now=t - 1), kwargs='{"to": "alice@example.com"}')])
        assert [r.id for r in store.list(Query(args_contains="alice@"))] == ["c", "a"]
        assert [r.id for r in store.list(Query(args_contains='"bob"'))] == ["b"]
        assert store.count(Query(args_contains="alice@")) == 2
        assert store.list(Query(args_contains="carol")) == []

    def test_the_search_is_case_sensitive_and_literal(self, store, clocks):
        store.enqueue([with_args("a", '["100%_done"]'), with_args("b", '["100xxdone"]')])
        assert [r.id for r in store.list(Query(args_contains="100%_"))] == ["a"]  # no LIKE wildcards
        assert store.list(Query(args_contains="100%_DONE")) == []

    def test_pickled_arguments_are_not_searched(self, store, clocks):
        import pickle

        store.enqueue([with_args("p", pickle.dumps(["alice"]), serializer="pickle"), with_args("j", '["alice"]')])
        assert [r.id for r in store.list(Query(args_contains="alice"))] == ["j"]

    def test_search_combines_with_other_filters(self, store, clocks):
        t = clocks.wall
        store.enqueue([with_args("a", '["x"]', now=t - 2, queue="q"), with_args("b", '["x"]', now=t - 1)])
        assert [r.id for r in store.list(Query(args_contains="x", queue="q"))] == ["a"]

    def test_a_bounded_search_reads_only_the_newest_rows_the_other_filters_pick(self, store, clocks):
        t = clocks.wall
        # Newest first: t9 .. t0; "hit" in t8, t5, t1; t7 is in another queue.
        store.enqueue([with_args(f"t{i}", '["hit"]' if i in (1, 5, 8) else '["miss"]', now=t - 10 + i,
                                 queue="other" if i == 7 else "default") for i in range(10)])
        hits = Query(args_contains="hit", scan_limit=3)
        assert [r.id for r in store.list(hits)] == ["t8"]  # t9, t8, t7 searched
        assert store.count(hits) == 1
        in_default = dataclasses.replace(hits, queue="default")
        assert [r.id for r in store.list(in_default)] == ["t8"]  # t9, t8, t6: t7 is not picked
        # Paging on from a key searches the next rows after it: t5, t4, t3.
        assert [r.id for r in store.list(hits, after=(t - 10 + 6, "t6"))] == ["t5"]
        # The last row searched, for the next page: the offset into the unsearched filter.
        (last,) = store.list(Query(), limit=1, offset=hits.scan_limit - 1)
        assert last.id == "t7"
        assert [r.id for r in store.list(dataclasses.replace(hits, scan_limit=100))] == ["t8", "t5", "t1"]
        assert [r.id for r in store.list(hits, limit=1, before=(t - 10 + 0, "t0"))] == ["t1"]  # upwards too

    def test_a_bounded_search_is_refused_where_every_row_matters(self, store, clocks):
        store.enqueue([with_args("a", '["hit"]')])
        bounded = Query(args_contains="hit", scan_limit=1)
        with pytest.raises(ValueError, match="scan_limit bounds list"):
            store.purge(bounded)
        with pytest.raises(ValueError, match="scan_limit bounds list"):
            store.retry(dataclasses.replace(bounded, status=TaskStatus.FAILED), now=clocks.wall)
        assert store.count(Query()) == 1
