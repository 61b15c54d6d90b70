"""PostgreSQL-only: what a limited claim locks. A claim locks only the buckets and the
concurrency groups of the tasks it picked, so a claimer stuck holding an unrelated
name's bucket (or group) never stalls a claim of another name; and its transaction is
committed without waiting for the WAL flush, like every worker-side claim.

Another session stands in for the stuck claimer: it takes the lock a claim of its name
would take and holds it, its transaction open."""

from __future__ import annotations

import threading
import time

import pytest

from castor.concurrency import lock_key
from castor.store import open_store
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")
pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def location(request: pytest.FixtureRequest, postgres_url: str) -> str:
    return postgresql_location(request)


@pytest.fixture
def store(location):
    opened = open_store(location)
    yield opened
    opened.close()


def _claim_in_a_thread(store, limit=10):
    """Claim from a thread; (the thread, what it claimed once it is done)."""
    got: list[str] = []

    def run() -> None:
        got.extend(r.id for r in store.claim("w1", mode="process", queues=None, limit=limit, lease=30.0,
                                             now=time.time()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def _stuck(location: str, statement: str, params: tuple) -> psycopg.Connection:
    """A session that runs `statement` in a transaction it leaves open."""
    conn = psycopg.connect(location)
    conn.execute(statement, params)
    return conn


def test_a_bucket_locked_by_another_claimer_of_another_name_does_not_stall_a_claim(store, location):
    store.set_rate_limit("name", "other", rate=1.0, burst=5)
    store.set_rate_limit("name", "mail", rate=1.0, burst=5)
    store.enqueue([new(f"m{i}", name="mail", now=time.time()) for i in range(3)])
    stuck = _stuck(location, "SELECT 1 FROM castor_rate_limits WHERE kind = 'name' AND name = %s FOR UPDATE",
                   ("other",))
    try:
        thread, got = _claim_in_a_thread(store)
        thread.join(timeout=30)  # a claim that locked every bucket waits for `stuck` forever
        assert not thread.is_alive() and sorted(got) == ["m0", "m1", "m2"]
    finally:
        stuck.close()


def test_a_group_locked_by_another_claimer_stalls_only_its_own_name(store, location):
    store.set_concurrency_limit("scan", 2)
    store.set_concurrency_limit("mail", 2)
    store.enqueue([new(f"m{i}", name="mail", concurrency_key="", now=time.time()) for i in range(3)])
    stuck = _stuck(location, "SELECT pg_advisory_xact_lock(%s)", (lock_key(("scan", "")),))
    try:
        thread, got = _claim_in_a_thread(store)
        thread.join(timeout=30)
        assert not thread.is_alive() and sorted(got) == ["m0", "m1"]
        # A claim of the stuck claimer's name waits for it (it must count after it),
        # then takes its slots.
        store.enqueue([new(f"s{i}", name="scan", concurrency_key="", now=time.time()) for i in range(3)])
        thread, got = _claim_in_a_thread(store)
        thread.join(timeout=0.5)
        assert thread.is_alive() and got == []
        stuck.commit()
        thread.join(timeout=30)
        assert not thread.is_alive() and sorted(got) == ["s0", "s1"]
    finally:
        stuck.close()


def test_a_claim_holding_a_lock_only_tries_the_next_and_leaves_a_busy_group_for_later(store, location):
    """Its first pick locks group a and finds a full after one task; its second finds b,
    whose lock another claimer holds: it does not wait while holding a (two claimers
    each waiting for the other's would deadlock), it leaves b's task to a later claim."""
    store.set_concurrency_limit("scan", 1, per_key=True)
    store.enqueue([new(f"a{i}", name="scan", concurrency_key="a", priority=5, now=time.time()) for i in range(2)]
                  + [new("b0", name="scan", concurrency_key="b", now=time.time())])
    stuck = _stuck(location, "SELECT pg_advisory_xact_lock(%s)", (lock_key(("scan", "b")),))
    try:
        thread, got = _claim_in_a_thread(store, limit=2)
        thread.join(timeout=30)
        assert not thread.is_alive() and got == ["a0"]
    finally:
        stuck.close()
    thread, got = _claim_in_a_thread(store, limit=2)
    thread.join(timeout=30)
    assert got == ["b0"]
