"""The SQLite store: claim order, leases, fencing, schema, and living beside beaver-db."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest
from beaver import BeaverDB

import castor
from castor.states import TaskStatus
from castor.store import NewTask, Query, open_store
from castor.store.base import Settlement
from castor.store.schema import SCHEMA_VERSION


def new(task_id, *, mode="process", priority=0, eta=None, queue="default", now=1000.0):
    return NewTask(id=task_id, name="t", mode=mode, serializer="json", args="[]", kwargs="{}",
                   enqueued_at=now, eta=now if eta is None else eta, queue=queue, priority=priority)


@pytest.fixture
def store(db_path):
    s = open_store(db_path)
    yield s
    s.close()


def at(store, now):
    """Leases run on the store's clock (the boot clock); here it reads `now` too."""
    store.clock = lambda: now
    return store


def claim(store, owner="w1", *, now=1000.0, limit=1, lease=10.0, mode="process", queues=None):
    at(store, now).recover_expired(now=now, max_lost=3)  # as a worker does before claiming
    return store.claim(owner, mode=mode, queues=queues, limit=limit, lease=lease, now=now)


def test_claim_order_priority_then_eta_then_fifo(store):
    store.enqueue([new("a", now=1.0), new("b", now=2.0), new("c", priority=5, now=3.0),
                   new("d", now=1.0), new("e", priority=-1, now=0.5)])
    order = [claim(store)[0].id for _ in range(5)]
    assert order == ["c", "a", "d", "b", "e"]
    assert claim(store) == []


def test_eta_is_honoured(store):
    store.enqueue([new("later", eta=2000.0)])
    assert claim(store, now=1999.9) == []
    assert store.next_due(mode="process", now=1000.0) == 2000.0
    assert claim(store, now=2000.0)[0].id == "later"


def test_claim_sets_owner_lease_and_attempt_in_one_step(store):
    store.enqueue([new("a")])
    (rec,) = claim(store, "w1", now=1000.0, lease=10.0)
    assert (rec.status, rec.owner, rec.lease_expires, rec.attempts, rec.started_at) == (
        TaskStatus.RUNNING, "w1", 1010.0, 1, 1000.0)
    assert claim(store, "w2", now=1005.0) == []  # held


def test_settle_and_claim_is_one_transaction(store):
    store.enqueue([new("a"), new("b")])
    (a,) = claim(store, "w")
    finished = Settlement("a", "w", a.attempts, TaskStatus.SUCCESS, result="1", finished_at=1001.0, fence=a.fence)
    stale = Settlement("a", "w", a.attempts, TaskStatus.FAILED, finished_at=1001.0, fence=a.fence)
    accepted, claims = store.settle_and_claim(
        [finished, stale], "w", mode="process", queues=None, limit=5, lease=10.0, now=1001.0)
    assert accepted == [True, False]  # the second write of the same attempt is refused
    assert [r.id for r in claims] == ["b"]
    assert store.get("a").status == TaskStatus.SUCCESS and store.get("a").result == "1"


def test_recover_expired_reads_first(store):
    store.enqueue([new("a")])
    claim(store, "w", now=1000.0, lease=5.0)
    assert len(at(store, 1004.0).recover_expired(now=1004.0, max_lost=3)) == 0
    assert len(at(store, 1006.0).recover_expired(now=1006.0, max_lost=3)) == 1
    assert store.get("a").status == TaskStatus.PENDING


def test_batch_claim(store):
    store.enqueue([new(str(i)) for i in range(10)])
    assert len(claim(store, limit=4)) == 4
    assert len(claim(store, limit=100)) == 6


def test_queue_filter(store):
    store.enqueue([new("a", queue="mail"), new("b", queue="reports")])
    assert [r.id for r in claim(store, queues=["reports"], limit=5)] == ["b"]
    assert claim(store, queues=["other"]) == []


def test_modes_are_separate(store):
    store.enqueue([new("t", mode="thread")])
    assert claim(store, mode="process") == []
    assert claim(store, mode="thread")[0].id == "t"


def test_expired_lease_is_claimed_again_and_old_owner_is_fenced(store):
    store.enqueue([new("a")])
    (first,) = claim(store, "dead", now=1000.0, lease=5.0)
    assert claim(store, "alive", now=1004.0) == []  # lease still valid
    (second,) = claim(store, "alive", now=1006.0, lease=5.0)
    assert second.id == "a" and second.attempts == 2 and second.lost == 1
    # The dead worker's late settle is rejected; the live one's is accepted.
    assert second.fence == first.fence + 1
    assert not store.settle("a", "dead", first.attempts, TaskStatus.SUCCESS, result="1", now=1007.0,
                            fence=first.fence)
    assert store.settle("a", "alive", second.attempts, TaskStatus.SUCCESS, result="2", now=1007.0,
                        fence=second.fence)
    assert store.get("a").result == "2"
    # Settling twice is rejected too.
    assert not store.settle("a", "alive", second.attempts, TaskStatus.FAILED, now=1008.0, fence=second.fence)


def test_same_owner_stale_attempt_is_fenced(store):
    store.enqueue([new("a")])
    (first,) = claim(store, "w", now=1000.0, lease=1.0)
    (second,) = claim(store, "w", now=1002.0, lease=10.0)
    assert not store.settle("a", "w", first.attempts, TaskStatus.SUCCESS, now=1003.0, fence=first.fence)
    assert store.settle("a", "w", second.attempts, TaskStatus.SUCCESS, now=1003.0, fence=second.fence)


def test_same_owner_drained_then_claiming_again_is_fenced(store):
    # A drain hands the attempt back uncounted (attempts - 1): the attempt number
    # repeats, the fencing token does not.
    store.enqueue([new("a")])
    (first,) = claim(store, "w", now=1000.0)
    store.release_owner("w", count_attempt=False, max_lost=3)
    (second,) = claim(store, "w", now=1001.0)
    assert second.attempts == first.attempts and second.fence != first.fence
    assert not store.renew([first.claim], lease=10.0)
    assert not store.set_progress("a", first.fence, 0.5, "old")
    assert not store.requeue("a", first.fence, count_attempt=True)
    assert not store.settle("a", "w", first.attempts, TaskStatus.FAILED, now=1002.0, fence=first.fence)
    assert store.renew([second.claim], lease=10.0) == {second.claim}
    assert store.settle("a", "w", second.attempts, TaskStatus.SUCCESS, now=1002.0, fence=second.fence)


def test_renew_extends_only_the_owners_leases(store):
    store.enqueue([new("a"), new("b")])
    (a,) = claim(store, "w1", now=1000.0, lease=5.0)
    (b,) = claim(store, "w2", now=1000.0, lease=5.0)
    assert at(store, 1004.0).renew([a.claim], lease=5.0) == {a.claim}
    assert [r.id for r in claim(store, "w3", now=1006.0, limit=5)] == [
        store.get("b").id]  # w2's lease expired, w1's was renewed
    assert store.get("a").owner == "w1"


def test_worker_lost_three_times_fails_the_task(store):
    store.enqueue([new("a")])
    now = 1000.0
    for _ in range(3):
        claim(store, f"w{now}", now=now, lease=1.0)
        now += 2.0
    assert claim(store, "w", now=now) == []
    rec = store.get("a")
    assert rec.status == TaskStatus.FAILED and rec.lost == 3
    assert rec.error["type"] == "castor.errors.WorkerLost"


def test_requeue_with_and_without_counting_the_attempt(store):
    store.enqueue([new("a")])
    (rec,) = claim(store, "w", now=1000.0)
    assert store.requeue("a", rec.fence, count_attempt=False)
    assert store.get("a").status == TaskStatus.PENDING and store.get("a").attempts == 0
    (rec,) = claim(store, "w", now=1001.0)
    assert store.requeue("a", rec.fence, count_attempt=True)
    assert store.get("a").attempts == 1
    assert not store.requeue("a", rec.fence, count_attempt=True)  # not running any more


def test_listing_is_newest_first_and_filtered(store):
    store.enqueue([new("a", now=1.0), new("b", now=2.0, queue="q")])
    assert [r.id for r in store.list(Query())] == ["b", "a"]
    assert [r.id for r in store.list(Query(queue="q"))] == ["b"]
    assert store.count(Query(status=TaskStatus.PENDING)) == 2


class TestSchema:
    def test_version_lives_in_castors_own_table(self, store, db_path):
        conn = sqlite3.connect(db_path)
        assert conn.execute("SELECT value FROM castor_meta WHERE key='schema_version'").fetchone() == (
            str(SCHEMA_VERSION),)
        assert conn.execute("PRAGMA user_version").fetchone() == (0,)  # never touched by castor
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        conn.close()

    def test_reopening_is_idempotent(self, db_path):
        for _ in range(3):
            open_store(db_path).close()
        conn = sqlite3.connect(db_path)
        assert dict(conn.execute("SELECT key, value FROM castor_meta")).keys() == {"schema_version", "boot_id"}
        conn.close()

    def test_newer_schema_is_refused(self, store, db_path):
        conn = sqlite3.connect(db_path)
        conn.execute("UPDATE castor_meta SET value='999' WHERE key='schema_version'")
        conn.commit()
        conn.close()
        with pytest.raises(castor.StoreError, match="version 999, newer than this castor"):
            open_store(db_path)


class TestBeside_beaver:
    def test_castor_first_then_beaver(self, db_path):
        manager = castor.Manager(db_path)
        db = BeaverDB(db_path)
        db.dict("settings")["a"] = 1
        assert db.dict("settings")["a"] == 1
        db.close()
        manager.close()

    def test_beaver_first_then_castor_leaves_its_tables_alone(self, db_path):
        db = BeaverDB(db_path)
        db.dict("settings")["a"] = 1
        conn = sqlite3.connect(db_path)
        before_version = conn.execute("PRAGMA user_version").fetchone()
        beaver_tables = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'castor_%'"))
        manager = castor.Manager(db)
        assert conn.execute("PRAGMA user_version").fetchone() == before_version
        after = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'castor_%'"))
        assert after == beaver_tables
        assert db.dict("settings")["a"] == 1
        conn.close()
        manager.close()
        db.close()


def test_connection_is_reopened_after_fork(store):
    store.enqueue([new("a")])
    assert store.get("a") is not None  # parent's connection is open
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        try:
            store.enqueue([new("from-child")])
            ok = store.get("from-child") is not None and store.get("a") is not None
        except BaseException:  # noqa: BLE001
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert store.get("from-child") is not None and store.get("a") is not None


def test_change_wait_returns_promptly_on_commit_from_another_connection(store, db_path):
    seen = store.generation()
    other = open_store(db_path)
    import threading

    timer = threading.Timer(0.1, lambda: other.enqueue([new("x")]))
    started = time.monotonic()
    timer.start()
    store.wait_for_change(seen, 3.0)
    elapsed = time.monotonic() - started
    timer.join()
    other.close()
    assert 0.09 <= elapsed < 1.0


@pytest.mark.timeout(30)
def test_a_commit_before_the_first_wait_is_not_slept_through(db_path):
    store = open_store(db_path)
    try:
        seen = store.generation()  # the notifier exists; its inotify watch does not yet
        other = sqlite3.connect(db_path, isolation_level=None)
        other.execute("CREATE TABLE IF NOT EXISTS app_data (x)")
        other.execute("INSERT INTO app_data VALUES (1)")
        other.close()
        start = time.monotonic()
        assert store.wait_for_change(seen, 5.0) > seen
        assert time.monotonic() - start < 2.0  # woken by the commit, not by the 5 s timeout
    finally:
        store.close()


@pytest.mark.parametrize("first", ["castor", "beaver"])
def test_the_database_is_owner_only_even_under_a_permissive_umask(tmp_path, first):
    path = str(tmp_path / "private.db")
    old = os.umask(0o022)
    try:
        db = BeaverDB(path) if first == "beaver" else None
        manager = castor.Manager(db or path)
        manager.store.enqueue([new("a")])  # a write: the -wal and -shm exist now
        for name in (path, f"{path}-wal", f"{path}-shm"):
            assert os.stat(name).st_mode & 0o077 == 0, f"{name} is {oct(os.stat(name).st_mode)}"
        manager.close()
        if db is not None:
            db.close()
    finally:
        os.umask(old)


def test_a_database_deleted_under_the_store_is_not_recreated_empty(db_path):
    store = open_store(db_path)
    try:
        store.enqueue([new("a")])
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db_path + suffix):
                os.unlink(db_path + suffix)
        store._conn.close()  # noqa: SLF001 - as in a forked child: a new connection next
        store._forget_inherited()  # noqa: SLF001
        with pytest.raises(castor.StoreError, match="was deleted or moved while castor used it"):
            store.enqueue([new("b")])
        assert not os.path.exists(db_path)
    finally:
        store.close()
