"""SQLite's plans for the dashboard's listings (schema v7): read by index, never sorted.

At a million rows a sort of every matching row cost 0.5-0.8 s per page
(benchmarks/web_pages.py); these pin the plans that keep a page to its own rows."""

from __future__ import annotations

import sqlite3

import pytest

from castor.store import Query, open_store

pytestmark = pytest.mark.timeout(60)


def plan(db_path: str, sql: str, params: tuple[object, ...] = ()) -> str:
    conn = sqlite3.connect(db_path)
    try:
        return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    finally:
        conn.close()


def test_a_page_of_the_task_list_reads_the_listing_index_without_sorting(db_path):
    open_store(db_path).close()  # migrated
    first = plan(db_path, "SELECT id FROM castor_tasks ORDER BY enqueued_at DESC, id DESC LIMIT 51")
    deep = plan(db_path, "SELECT id FROM castor_tasks WHERE (enqueued_at, id) < (?, ?) "
                         "ORDER BY enqueued_at DESC, id DESC LIMIT 51", (1.0, "x"))
    for text in (first, deep):
        assert "castor_tasks_listing" in text and "TEMP B-TREE" not in text, text


def test_the_charts_counts_read_a_range_of_the_finished_index(db_path):
    open_store(db_path).close()
    text = plan(db_path, "SELECT count(*) FROM castor_tasks WHERE status != 'pending' AND status = ? "
                         "AND finished_at >= ? AND finished_at < ?", ("success", 1.0, 2.0))
    assert "castor_tasks_finished" in text and "finished_at>? AND finished_at<?" in text, text


def test_the_store_answers_what_the_plans_say(db_path):
    store = open_store(db_path)
    try:
        assert store.list(Query(), limit=1) == [] and store.count(Query(finished_after=0.0), limit=10) == 0
    finally:
        store.close()


def test_a_listing_by_status_reads_the_status_index_in_order(db_path):
    open_store(db_path).close()
    text = plan(db_path, "SELECT id FROM castor_tasks WHERE status != 'pending' AND status = ? "
                         "ORDER BY enqueued_at DESC, id DESC LIMIT 51", ("failed",))
    assert "castor_tasks_status" in text and "TEMP B-TREE" not in text, text


def test_the_dirty_listing_reads_the_dirty_index(db_path, monkeypatch):
    store = open_store(db_path)
    seen: list[str] = []
    real = store._execute

    def spy(sql, *args, **kwargs):
        seen.append(sql)
        return real(sql, *args, **kwargs)

    monkeypatch.setattr(store, "_execute", spy)
    try:
        store.list(Query(dirty=True), limit=50)
    finally:
        store.close()
    assert any("INDEXED BY castor_tasks_dirty" in sql for sql in seen), seen


def test_failures_by_name_are_counted_on_their_own_index(db_path):
    """Not by the status index with a row lookup per failure for its name (0.1 s at 50,000)."""
    from castor.store.sqlite import _FAILED_BY_NAME

    open_store(db_path).close()
    text = plan(db_path, _FAILED_BY_NAME)
    assert "COVERING INDEX castor_tasks_failed_names" in text and "FOR GROUP BY" not in text, text
