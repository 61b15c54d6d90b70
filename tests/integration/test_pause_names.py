"""Pausing a task name: Manager.pause/resume/paused_names with a real Worker, and the
claim statements' plans on both stores (the filter must not cost the index)."""

from __future__ import annotations

import re
import sqlite3
import time

import pytest

import castor
from castor.errors import ConfigurationError
from castor.store import open_store
from tests.contract.builders import new
from tests.integration.test_postgresql_store import location, opened  # noqa: F401 - fixtures


def test_a_paused_name_is_skipped_until_resumed(manager):
    @manager.task(mode="thread", name="reports")
    def report(n):
        return n

    @manager.task(mode="thread", name="mail")
    def mail(n):
        return n

    assert manager.pause(name="reports") is True and manager.pause(name="reports") is False
    assert manager.paused_names() == {"reports"} and manager.paused_queues() == set()
    held, ran = report.delay(1), mail.delay(2)
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert (held.status(), ran.status()) == ("pending", "success")
    assert manager.resume(name="reports") is True and manager.resume(name="reports") is False
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert held.join(timeout=10) == 1 and manager.paused_names() == set()


def test_pause_queue_has_a_second_spelling(manager):
    assert manager.pause(queue="mail") is True
    assert manager.paused_queues() == {"mail"} and manager.paused_names() == set()
    assert manager.resume(queue="mail") is True and manager.paused_queues() == set()


@pytest.mark.parametrize("kwargs", [{}, {"name": "a", "queue": "b"}])
def test_pause_takes_exactly_one_of_name_and_queue(manager, kwargs):
    for method in (manager.pause, manager.resume):
        with pytest.raises(ConfigurationError, match="takes name= .* or queue= .*, exactly one"):
            method(**kwargs)


@pytest.mark.parametrize("bad", ["", 3])
def test_a_bad_name_is_refused(manager, bad):
    for method in (manager.pause, manager.resume):
        with pytest.raises(ConfigurationError, match="takes a task name"):
            method(name=bad)


def test_every_sqlite_plan_statement_still_seeks_the_ready_index_with_a_name_paused(db_path):
    store = open_store(db_path)
    try:
        now = time.time()
        store.enqueue([new("a1", name="reports", now=now), new("a2", name="mail", now=now, eta=now + 60),
                       new("b1", queue="b", now=now)])
        store.pause_name("reports")
        store.has_due(mode="process", queues=None, now=now)
        store.next_due(mode="process", queues=None, now=now)
        assert [r.id for r in store.claim("w", mode="process", queues=None, limit=5, lease=30.0, now=now)] == ["b1"]
        conn = sqlite3.connect(db_path)
        try:
            for plan in store._plans.values():  # noqa: SLF001 - the plans these calls made
                assert plan.paused_names == {"reports"}
                for name, sql, n in plan.statements():
                    lines = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (None,) * n)]
                    assert not [line for line in lines if line.startswith("SCAN castor_tasks")], (name, lines)
                    assert [line for line in lines if "castor_tasks_ready" in line], (name, lines)
        finally:
            conn.close()
    finally:
        store.close()


@pytest.mark.postgres
def test_a_postgresql_claim_skipping_a_paused_name_reads_it_in_an_initplan(opened, location):  # noqa: F811
    """The name filter, like the queue one, is an InitPlan over castor_pauses, and the
    claim's outer UPDATE still finds its rows by primary key only."""
    from tests.integration.test_postgresql_store import claim_plan

    store = opened()
    now = time.time()
    store.enqueue([new(f"t{i}", now=now, name=f"n{i % 4}") for i in range(200)])
    store.pause_name("n1")
    plan = claim_plan(location, now)
    assert "castor_tasks_ready" in plan, plan
    assert plan.count("InitPlan") >= 2 and "kind = 'name'" in plan, plan
    # The outer UPDATE: an index scan of the primary key, by id alone.
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(r"Scan on castor_tasks\s+\(", line))
    outer = "\n".join(lines[start:])  # the outer UPDATE's scan, after the InitPlans
    assert "castor_tasks_pkey" in outer and "status" not in outer and "ready" not in outer, plan
    claimed = store.claim("w", mode="process", queues=None, limit=200, lease=10.0, now=now)
    assert len(claimed) == 150 and {r.name for r in claimed} == {"n0", "n2", "n3"}
