"""What only the SQLite store does: its schema in the beaver-db file, living beside beaver,
connections across fork, inotify wake-ups, the boot clock, lock timeouts, file identity.

Everything a store of any backend must do is in tests/contract/, which runs on SQLite too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest
from beaver import BeaverDB

import castor
from castor.errors import DatabaseLockedError
from castor.states import TaskStatus
from castor.store import NewTask, open_store
from castor.store.schema import SCHEMA_VERSION


def new(task_id, *, mode="process", priority=0, eta=None, queue="default", now=1000.0):
    return NewTask(id=task_id, name="t", mode=mode, serializer="json", args="[]", kwargs="{}",
                   enqueued_at=now, eta=now if eta is None else eta, queue=queue, priority=priority)


@pytest.fixture
def store(db_path):
    s = open_store(db_path)
    yield s
    s.close()


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


class TestBootClock:
    def test_leases_are_stored_on_the_stores_clock(self, store, db_path):
        store.clock = lambda: 50.0
        store.enqueue([new("a")])
        (rec,) = store.claim("w", mode="process", queues=None, limit=1, lease=10.0, now=1000.0)
        assert rec.lease_expires == 1010.0  # told as an epoch time: the `now` given + the lease
        conn = sqlite3.connect(db_path)
        assert conn.execute("SELECT lease_expires FROM castor_tasks WHERE id = 'a'").fetchone() == (60.0,)
        conn.close()

    def test_a_new_boot_expires_every_lease_written_before_it(self, store, db_path):
        store.enqueue([new("a")])
        store.claim("w", mode="process", queues=None, limit=1, lease=3600.0, now=time.time())
        assert store.recover_expired(now=time.time(), max_lost=3) == []
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("UPDATE castor_meta SET value = 'an earlier boot' WHERE key = 'boot_id'")
        conn.close()
        rebooted = open_store(db_path)  # the first open after the boot notices
        try:
            assert [r.id for r in rebooted.recover_expired(now=time.time(), max_lost=3)] == ["a"]
            assert rebooted.status("a") == TaskStatus.PENDING
        finally:
            rebooted.close()


class TestLockTimeout:
    @pytest.fixture
    def writer(self, db_path, store):
        """Another program holding the write lock."""
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        yield conn
        conn.execute("ROLLBACK")
        conn.close()

    @pytest.mark.timeout(30)
    def test_a_write_waits_lock_timeout_then_says_who_holds_it(self, db_path, writer):
        store = open_store(db_path, lock_timeout=0.2)  # opening an up-to-date file needs no write lock
        try:
            started = time.monotonic()
            with pytest.raises(DatabaseLockedError, match="stayed locked by another writer for more than 0.2 s"):
                store.enqueue([new("a")])
            assert time.monotonic() - started >= 0.2
            assert store.get("a") is None  # reads go on
        finally:
            store.close()

    @pytest.mark.timeout(30)
    def test_a_heartbeat_waits_only_its_own_lock_timeout(self, store, writer):
        with pytest.raises(DatabaseLockedError, match="more than 0.1 s"):
            store.record_daemon("d", host="h", pid=1, app="a", started_at=0.0, info={}, now=0.0,
                                lock_timeout=0.1)

    @pytest.mark.timeout(30)
    def test_a_write_goes_through_once_the_lock_is_let_go(self, db_path, store):
        conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        conn.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.2, lambda: conn.execute("COMMIT"))
        release.start()
        try:
            store.enqueue([new("a")])  # waits (lock_timeout 30 s), then commits
            assert store.status("a") == TaskStatus.PENDING
        finally:
            release.join()
            conn.close()


def test_an_exchange_whose_look_cannot_be_read_keeps_what_it_wrote(store, monkeypatch):
    """The settles committed before the look (Store.exchange's default) failed: the
    exchange still says they were accepted, and that it did not look (the worker then
    looks on its own). Raised instead, the worker would write them again, refused."""
    from castor.store.base import Settlement

    store.enqueue([new("a")])
    (rec,) = store.claim("w", mode="process", queues=None, limit=1, lease=30.0, now=1000.0)

    def locked(**_: object) -> None:
        raise DatabaseLockedError("database is locked")

    monkeypatch.setattr(store, "next_due", locked)
    done = store.exchange([Settlement("a", "w", rec.attempts, TaskStatus.SUCCESS, result="1", finished_at=1000.0,
                                      fence=rec.fence)], "w", mode="process", queues=None, limit=5, lease=30.0,
                          now=1000.0, look=True)
    assert (done.accepted, done.claims, done.looked) == ([True], [], False)
    assert store.status("a") == TaskStatus.SUCCESS
