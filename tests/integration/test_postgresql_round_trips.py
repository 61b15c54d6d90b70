"""How many round trips a worker's calls to the PostgreSQL store cost (issue 14: the
hot path and the idle path each one exchange with the server). Counted from libpq's own
trace of every connection the store opens (tests/pg_trace.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from castor.store import open_store
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location
from tests.integration.test_postgresql_durability import claimed, success
from tests.pg_trace import TracedStore, unprepared

psycopg = pytest.importorskip("psycopg")


@pytest.fixture
def traced(request: pytest.FixtureRequest, postgres_url: str, tmp_path: Path) -> Iterator[TracedStore]:
    store = TracedStore(open_store(unprepared(postgresql_location(request))), tmp_path)
    store.store.claim("warm", mode="process", queues=None, limit=1, lease=30.0, now=time.time())  # connect first
    yield store
    store.close()


def claim(store: TracedStore, limit: int = 10) -> list:
    return store.store.claim("w", mode="process", queues=None, limit=limit, lease=30.0, now=time.time())


def test_a_claim_that_finds_nothing_is_one_round_trip(traced: TracedStore) -> None:
    """Whether rate or concurrency limits are stored (then a plain claim's nothing may
    be a limited claim's something) comes back in the same exchange."""
    found: list = []
    assert traced.round_trips(lambda: found.extend(claim(traced))) == 1
    assert found == []


def test_a_settle_that_claims_nothing_is_one_round_trip(traced: TracedStore) -> None:
    record = claimed(traced.store, "a")
    result: list = []

    def settle() -> None:
        result.append(traced.store.settle_and_claim([success(record)], "w", mode="process", queues=None, limit=10,
                                                    lease=30.0, now=time.time()))

    assert traced.round_trips(settle) == 1
    assert result == [([True], [])]


def test_a_claim_that_finds_work_is_one_round_trip(traced: TracedStore) -> None:
    traced.store.enqueue([new("b", now=time.time())])
    found: list = []
    assert traced.round_trips(lambda: found.extend(claim(traced))) == 1
    assert [r.id for r in found] == ["b"]


def test_with_a_limit_stored_an_empty_plain_claim_goes_on_to_the_limited_one(traced: TracedStore) -> None:
    """The plain claim leaves a limited name's task; the same exchange says limits are
    stored, so the limited claim runs and takes it."""
    store = traced.store
    store.set_rate_limit("name", "limited", rate=10.0, burst=1)
    store.enqueue([new("c", now=time.time(), name="limited")])
    assert [r.id for r in claim(traced)] == ["c"]


def test_a_settle_that_claims_nothing_and_looks_when_to_look_again_is_one_round_trip(traced: TracedStore) -> None:
    """An idle worker's look (next_due) rides on the exchange that found nothing: before,
    it cost a round trip of its own, beside the joiner's wake-up (issue 14)."""
    later = time.time() + 60
    traced.store.enqueue([new("later", eta=later)])
    record = claimed(traced.store, "a")
    result: list = []

    def settle() -> None:
        result.append(traced.store.exchange([success(record)], "w", mode="process", queues=None, limit=10,
                                            lease=30.0, now=time.time(), look=True))

    assert traced.round_trips(settle) == 1
    (done,) = result
    assert (done.accepted, done.claims, done.looked, done.next_due) == ([True], [], True, later)


def test_a_worker_that_finds_nothing_waits_on_its_exchanges_look(traced: TracedStore,
                                                                 request: pytest.FixtureRequest) -> None:
    """The worker's last exchange looked: its wait asks the store nothing more, and waits
    until the soonest ETA the look found."""
    import castor
    from castor.worker import Worker

    manager = castor.Manager(postgresql_location(request))
    try:
        later = time.time() + 60
        traced.store.enqueue([new("later", eta=later)])
        record = claimed(traced.store, "a")
        worker = Worker(manager, mode="process")
        worker.store = traced.store  # the same database, through the traced connections
        waits: list[float] = []
        traced.store.wait_for_change = lambda seen, timeout, topic=None: waits.append(timeout) or seen  # type: ignore[method-assign]

        worker._sync_rate_limits()  # noqa: SLF001 - its first exchange's writes, done before counting
        worker._next_recovery = time.monotonic() + 3600  # noqa: SLF001 - nor a recovery round
        seen = traced.store.generation()  # the LISTEN connection opened before counting

        def round_() -> None:
            assert worker._exchange([success(record)], 10) == []  # noqa: SLF001 - the loop's own steps
            worker._wait_for_work(seen)  # noqa: SLF001

        assert traced.round_trips(round_) == 1
        assert waits and 0 < waits[0] <= 0.5  # IDLE_RECHECK_SECONDS: the ETA is further off
    finally:
        manager.close()
