"""The PostgreSQL store's hot statements are planned once per connection (issue 14, section 4).

A prepared statement PostgreSQL plans anew at each execution (a "custom plan") costs the
server its planning every time: the statement that sends a settle's notifications took
0.25 ms of it per task, on the way from a task's end to its joiner. The server counts, per
prepared statement of a session, how often it planned it anew (pg_prepared_statements):
its first five executions are custom plans by design, later ones should reuse one plan.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from castor.states import TaskStatus
from castor.store import open_store
from castor.store.base import Settlement
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")

ROUNDS = 30
# PostgreSQL's plan cache tries five custom plans before it may settle on the generic one.
FIRST_CUSTOM_PLANS = 5


@pytest.fixture
def store(request: pytest.FixtureRequest, postgres_url: str) -> Any:
    opened = open_store(postgresql_location(request))  # prepared statements on, as by default
    yield opened
    opened.close()


def outcome(record: Any, n: int) -> Settlement:
    """Round n's settle: a success most of the time, a retry due at once, a failure."""
    base = {"task_id": record.id, "owner": record.owner, "attempt": record.attempts, "finished_at": time.time(),
            "fence": record.fence}
    if n % 3 == 1:
        return Settlement(status=TaskStatus.PENDING, eta=time.time(), error={"message": "again"}, **base)
    if n % 3 == 2:
        return Settlement(status=TaskStatus.FAILED, error={"message": "no"}, **base)
    return Settlement(status=TaskStatus.SUCCESS, result=str(n), **base)


def plans(store: Any) -> list[tuple[str, int, int]]:
    """(statement, custom plans, generic plans) of every prepared statement of the
    store's pooled connections."""
    found = []
    with store._session() as conn:  # noqa: SLF001 - the connection the store just used
        for statement, custom, generic in conn.execute(
                "SELECT statement, custom_plans, generic_plans FROM pg_prepared_statements"):
            found.append((" ".join(statement.split()), custom, generic))
    return found


def test_a_workers_exchanges_and_a_joiners_watch_reuse_their_plans(store):
    with store._session() as conn:  # noqa: SLF001
        if conn.info.server_version < 140000:
            pytest.skip("pg_prepared_statements counts plans from PostgreSQL 14")
    for n in range(ROUNDS):
        task_id = f"t{n}"
        store.enqueue([new(task_id, now=time.time())])  # the producer's INSERT and its notification
        with store.watch_task(task_id):  # a joiner's watch: settles then notify it
            (record,) = store.claim("w", mode="process", queues=None, limit=1, lease=30.0, now=time.time())
            accepted, again = store.settle_and_claim([outcome(record, n)], "w", mode="process", queues=None,
                                                     limit=1, lease=30.0, now=time.time())
            assert accepted == [True]
            assert [r.id for r in again] == ([task_id] if n % 3 == 1 else [])  # a retry due now: claimed back
            if again:
                assert store.settle_one(outcome(again[0], 0))
        store.next_due(mode="process", now=time.time())

    found = plans(store)
    notify = [p for p in found if "pg_notify" in p[0] and "castor_watches" in p[0]]
    assert notify, f"the settles' notification statement was not prepared: {found}"
    (statement, custom, generic), = notify
    assert custom + generic >= ROUNDS - FIRST_CUSTOM_PLANS, notify  # prepared after psycopg's threshold
    assert custom <= FIRST_CUSTOM_PLANS, f"planned anew at every execution: {notify}"
    # The others are PostgreSQL's own choice (a statistics update mid-test may change it):
    # said when the test fails, not asserted.
    print("custom, generic plans:", [(s[:60], c, g) for s, c, g in found])


def test_a_server_without_plan_cache_mode_is_not_asked_for_it(store):
    from castor.store.postgresql import PLAN_CACHE_MODE_SINCE, _notifying  # noqa: PLC0415 - the choice under test

    assert "plan_cache_mode" in _notifying(150004)
    older = _notifying(PLAN_CACHE_MODE_SINCE - 1)  # PostgreSQL 11 would refuse the setting's name
    assert "plan_cache_mode" not in older and "synchronous_commit" in older
    with store._session() as conn:  # noqa: SLF001 - the older statement still runs, and says what it must
        with conn.transaction():
            conn.execute(older)
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "off"


def _index_names(node: dict[str, Any]) -> set[str]:
    found = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        found |= _index_names(child)
    return found


def test_an_idle_workers_look_reads_the_head_of_the_scheduled_index_not_the_backlog(store):
    """The soonest ETA not reached yet is castor_tasks_scheduled's head: with thousands of
    tasks due (queued to run at once), the ready index would be read past every one of
    them first (10,000 due: 1.2 ms a look, and a look rides on every exchange that finds
    nothing)."""
    from castor.store.postgresql import _LOOK_ANY  # noqa: PLC0415 - the statement under test

    t = time.time()
    store.enqueue([new(f"due{i}", now=t) for i in range(3000)] + [new("later", eta=t + 60, now=t)])
    assert store.next_due(mode="process", now=t) == t + 60
    with store._session() as conn:  # noqa: SLF001
        conn.execute("ANALYZE castor_tasks")
        (plan,), = conn.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _LOOK_ANY.replace("%(clock)s", "NULL"),
                                {"mode": "process", "now": t}).fetchall()
    top = plan[0]["Plan"]
    assert "castor_tasks_scheduled" in _index_names(top), plan
    assert "castor_tasks_ready" not in _index_names(top), plan
    # A few pages (the index's root and leaf, the pauses), not the backlog's (~30 at 3,000).
    assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] < 15, plan
