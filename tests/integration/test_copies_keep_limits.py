"""'Run again' keeps the task's concurrency key: the copy is limited as its source was
(castord move's copies: tests/contract/test_copies_keep_limits.py), on both stores."""

from __future__ import annotations

import time

import pytest

import castor
from castor import Worker

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_path: str) -> str:
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("postgres_db_url"))


def test_a_run_again_copy_keeps_the_concurrency_key(url: str) -> None:
    manager = castor.Manager(url)
    try:
        @manager.task(mode="thread", name="charge", concurrency=1, concurrency_key="customer")
        def charge(customer, cents):
            return cents

        done = charge.delay("alice", 5)
        Worker(manager, mode="thread").run(until_idle=True)
        assert done.join(timeout=5) == 5
        copy = manager.run_again(done.id)
        assert manager.store.concurrency_key_of(copy.id) == "alice"
        other = charge.delay("alice", 7)
        manager.sync_concurrency_limits()
        claimed = manager.store.claim("test", mode="thread", queues=None, limit=10, lease=30.0, now=time.time())
        assert [r.id for r in claimed] == [copy.id]  # alice's other charge waits for the copy's slot
        assert other.status() == "pending"
    finally:
        manager.close()


@pytest.mark.postgres
def test_castord_move_keeps_the_concurrency_key(db_path: str, postgres_db_url: str) -> None:
    from castord import move as moving

    manager = castor.Manager(db_path)
    try:
        @manager.task(mode="thread", name="charge", concurrency=1, concurrency_key="customer")
        def charge(customer, cents):
            return cents

        first, second = charge.delay("alice", 1), charge.delay("alice", 2)
    finally:
        manager.close()
    assert moving.move(db_path, postgres_db_url).moved == 2
    target = castor.Manager(postgres_db_url)
    try:
        assert [target.store.concurrency_key_of(t.id) for t in (first, second)] == ["alice", "alice"]
        target.store.set_concurrency_limit("charge", 1, per_key=True)
        claimed = target.store.claim("test", mode="thread", queues=None, limit=10, lease=30.0, now=time.time())
        assert len(claimed) == 1  # the two are limited as they were in the file
    finally:
        target.close()
