"""Which of the PostgreSQL store's commits wait for the WAL flush (issue 14, section 2).

A worker's writes (claims, settles, lease renewals, hand-backs, recovery, progress) commit
with `synchronous_commit` off: a server crash may lose the last of them, and at-least-once
delivery with the fence turns that into a re-run. A producer's (`.delay()`, a cancel, a
retry) must stay durable on return. Each test records what the store sends, from libpq's
own trace of every connection it opens, and reads the transactions out of it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from castor.states import TaskStatus
from castor.store import open_store
from castor.store.base import Settlement
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location
from tests.pg_trace import TracedStore, unprepared

psycopg = pytest.importorskip("psycopg")

NOT_DURABLE = "SET LOCAL synchronous_commit TO OFF"
# The same, said inside a statement of the transaction (set_config(..., true) is local to it).
NOT_DURABLE_IN = "set_config('synchronous_commit', 'off', true)"


def durable(transaction: list[str]) -> bool:
    """Whether the transaction's commit waits for the WAL flush: nothing in it said otherwise."""
    return NOT_DURABLE not in transaction and not any(NOT_DURABLE_IN in sql for sql in transaction)
WRITES = re.compile(r"\b(INSERT|UPDATE|DELETE)\b|pg_notify", re.IGNORECASE)
def writes(transactions: list[list[str]]) -> list[list[str]]:
    return [t for t in transactions if any(WRITES.search(sql) for sql in t)]


@pytest.fixture
def traced(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> Iterator[TracedStore]:
    store = TracedStore(open_store(unprepared(postgresql_location(request))), tmp_path)
    yield store
    store.close()


def claimed(store: Any, task_id: str, owner: str = "w") -> Any:
    store.enqueue([new(task_id, now=time.time())])
    (record,) = store.claim(owner, mode="process", queues=None, limit=1, lease=30.0, now=time.time())
    assert record.id == task_id
    return record


def success(record: Any) -> Settlement:
    return Settlement(task_id=record.id, owner=record.owner, attempt=record.attempts, status=TaskStatus.SUCCESS,
                      result="1", finished_at=time.time(), fence=record.fence)


def test_the_trace_sees_a_durable_write_as_such(traced: TracedStore) -> None:
    """The reader itself: an enqueue is seen, as one write without the setting."""
    found = writes(traced.transactions(lambda: traced.store.enqueue([new("a", now=time.time())])))
    assert len(found) == 1 and "INSERT INTO castor_tasks" in found[0][0], found
    assert durable(found[0])


def test_every_write_of_a_worker_skips_the_wal_flush(traced: TracedStore) -> None:
    store = traced.store
    now = time.time
    record = claimed(store, "held")
    gone = claimed(store, "gone", owner="dead")
    lapsed = claimed(store, "lapsed", owner="slow")
    store.renew([lapsed.claim], lease=0.01)
    store.enqueue([new("by-id", now=now())])
    store.enqueue([new(f"next{i}", now=now()) for i in range(2)])
    store.enqueue([new("paced", now=now(), name="paced", mode="thread")])

    def limited_claim() -> Any:
        (got,) = store.claim("w", mode="thread", queues=None, limit=1, lease=30.0, now=now())
        return got

    def watch() -> None:
        with store.watch_task("held"):  # a joiner's watch row: gone with its connection anyway
            pass

    operations: dict[str, Callable[[], Any]] = {
        "a joiner's watch": watch,
        "a joiner's watch, deleting the ended ones": watch,
        "claim": lambda: store.claim("w", mode="process", queues=None, limit=1, lease=30.0, now=now()),
        "claim_task": lambda: store.claim_task("by-id", "w", lease=30.0, now=now()),
        "renew": lambda: store.renew([record.claim], lease=30.0),
        "set_progress": lambda: store.set_progress(record.id, record.fence, 0.5, "half"),
        "settle_and_claim": lambda: store.settle_and_claim(
            [success(record)], "w", mode="process", queues=None, limit=1, lease=30.0, now=now()),
        "requeue": lambda: store.requeue("next1", store.get("next1").fence, count_attempt=False),
        "release_owner": lambda: store.release_owner("dead", count_attempt=True, max_lost=3),
        "recover_expired": lambda: store.recover_expired(now=now() + 60, max_lost=3),
        "a rate-limited claim": limited_claim,
    }
    time.sleep(0.02)  # "lapsed"'s lease is over by the server's clock
    waiting = {}
    for name, operation in operations.items():
        if operation is limited_claim:  # last: the claims before it take the plain path
            store.set_rate_limit("name", "paced", rate=100.0, burst=1)  # an operator's write: durable
        found = writes(traced.transactions(operation))
        assert found, f"{name} wrote nothing: the test proves nothing"
        if any(durable(t) for t in found):
            waiting[name] = found
    assert not waiting, f"these wait for the WAL flush: {sorted(waiting)}"
    assert store.get(gone.id).status == TaskStatus.PENDING and store.get(lapsed.id).lost == 1


def test_a_producers_writes_stay_durable(traced: TracedStore) -> None:
    store = traced.store
    failed = claimed(store, "failed")
    store.settle_one(Settlement(task_id=failed.id, owner="w", attempt=1, status=TaskStatus.FAILED,
                                error={"type": "E", "message": "m"}, finished_at=time.time(), fence=failed.fence))
    operations: dict[str, Callable[[], Any]] = {
        "enqueue one": lambda: store.enqueue([new("one", now=time.time())]),
        "enqueue many": lambda: store.enqueue([new(f"many{i}", now=time.time()) for i in range(3)]),
        "cancel": lambda: store.cancel("one", now=time.time()),
        "retry": lambda: store.retry(task_id="failed", now=time.time()),
    }
    for name, operation in operations.items():
        found = writes(traced.transactions(operation))
        assert found, f"{name} wrote nothing: the test proves nothing"
        for transaction in found:
            assert durable(transaction), f"{name} returns before its commit is durable: {transaction}"


def test_a_workers_setting_ends_with_its_transaction(traced: TracedStore) -> None:
    """The worker's claim says synchronous_commit off inside the pipeline's implicit
    transaction (no BEGIN): it holds there, and the pooled session a producer's durable
    write uses next is back to on."""
    from castor.store.postgresql import _ANY_LIMIT_NOT_DURABLE  # noqa: PLC0415 - the statement under test

    store = traced.store
    claimed(store, "first")
    with store._session() as conn:  # noqa: SLF001 - the connection the store pools
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
        with conn.pipeline():
            conn.execute(_ANY_LIMIT_NOT_DURABLE)
            inside = conn.execute("SELECT current_setting('synchronous_commit')")
        assert inside.fetchone()[0] == "off"
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"


def test_a_settles_generic_plan_setting_ends_with_its_transaction(traced: TracedStore) -> None:
    """plan_cache_mode is forced for the settle's notification statement only: the claim
    after it in the same pipeline, and the pooled session after, are back to auto."""
    store = traced.store
    record = claimed(store, "settled")
    store.enqueue([new("next", now=time.time())])
    accepted, claimed_next = store.settle_and_claim([success(record)], "w", mode="process", queues=None, limit=1,
                                                    lease=30.0, now=time.time())
    assert accepted == [True] and [r.id for r in claimed_next] == ["next"]
    with store._session() as conn:  # noqa: SLF001 - the connection the store pools
        assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "auto"
    assert store.settle_one(success(claimed_next[0]))  # a lone settle: the pipeline's implicit transaction
    with store._session() as conn:  # noqa: SLF001
        assert conn.execute("SHOW plan_cache_mode").fetchone()[0] == "auto"
        assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
