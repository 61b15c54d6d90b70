"""The §2 library API against a real beaver-db file, workers stepped in-process."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone

import pytest
from beaver import BeaverDB

import castor
from castor import Worker
from tests.conftest import REPO


@pytest.fixture
def beaver(db_path):
    db = BeaverDB(db_path)
    yield db
    db.close()


@pytest.fixture
def app(beaver):
    manager = castor.Manager(beaver)

    @manager.task(mode="process")
    def add(a, b):
        return a + b

    @manager.task(mode="thread", daemon=False)
    def echo(value):
        return value

    @manager.task(mode="process")
    def fail(message):
        raise KeyError(message)

    @manager.task(mode="process")
    def unserializable_result():
        return {1, 2, 3}

    yield manager, add, echo, fail, unserializable_result
    manager.close()


def drain(manager, mode="process"):
    worker = Worker(manager, mode=mode)
    while worker.step():
        pass


def test_seed_flow(app):
    manager, add, *_ = app
    task = add.delay(10, 20)
    assert isinstance(task.id, str) and len(task.id) == 36
    assert task.status() == "pending" and not task
    drain(manager)
    assert task and task.status() == "success"
    assert task.join(timeout=5) == 30
    assert task.result == 30 and task.error is None and task.attempts == 1
    assert task.enqueued_at <= task.started_at <= task.finished_at
    assert task.finished_at.tzinfo is timezone.utc
    assert manager.get(task.id) == task and manager.get_task_by_id(task.id) == task
    assert manager.get("no-such-id") is None
    assert add(1, 2) == 3  # the plain call runs inline, enqueues nothing
    assert manager.count() == 1


def test_task_names_default_to_module_qualname(app):
    manager, add, *_ = app
    assert add.name.endswith("test_api.app.<locals>.add")
    assert add.delay(1, 1).name == add.name


def test_join_raises_the_tasks_own_exception(app):
    manager, _, _, fail, _ = app
    task = fail.delay("gone")
    drain(manager)
    assert task.status() == "failed"
    with pytest.raises(KeyError) as info:
        task.join(timeout=1)
    assert info.value.args == ("gone",)
    assert "raise KeyError(message)" in info.value.__cause__.traceback
    assert task.error["type"] == "builtins.KeyError"


def test_join_times_out_with_timeout_error(app):
    _, add, *_ = app
    task = add.delay(1, 2)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="still pending after 0.2 s"):
        task.join(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.5


def test_join_wakes_promptly_when_another_thread_settles(app):
    manager, add, *_ = app
    task = add.delay(2, 3)
    worker = Worker(manager, mode="process")
    timer = threading.Timer(0.2, worker.step)
    timer.start()
    started = time.monotonic()
    assert task.join(timeout=5) == 5
    assert time.monotonic() - started < 0.45  # not the 0.5 s safety re-check
    timer.join()


def test_resolve_for_asyncio(app):
    manager, add, *_ = app
    task = add.delay(4, 5)

    async def main():
        loop = asyncio.get_running_loop()
        loop.call_later(0.1, Worker(manager, mode="process").step)
        ticks = 0

        async def ticker():  # proves the loop is not blocked while resolving
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        result = await task.resolve(timeout=5)
        tick_task.cancel()
        return result, ticks

    result, ticks = asyncio.run(main())
    assert result == 9 and ticks >= 5


def test_resolve_times_out(app):
    _, add, *_ = app
    task = add.delay(1, 1)
    with pytest.raises(castor.JoinTimeout):
        asyncio.run(task.resolve(timeout=0.1))


def test_unserializable_arguments_enqueue_nothing(app):
    manager, add, *_ = app
    with pytest.raises(TypeError, match=r"argument 1 \(set\) is not json-serializable"):
        add.delay(1, {2})
    assert manager.count() == 0


def test_unserializable_result_fails_the_task_and_the_worker_lives_on(app):
    manager, add, _, _, bad = app
    first, second = bad.delay(), add.delay(1, 1)
    drain(manager)
    with pytest.raises(castor.SerializationError, match="result of .*unserializable_result.*set"):
        first.join(timeout=1)
    assert second.join(timeout=1) == 2


def test_unknown_task_name_fails_clearly(app, db_path):
    manager, add, *_ = app
    task = add.delay(1, 2)
    other = castor.Manager(db_path)  # a worker that does not know `add`
    drain(other)
    with pytest.raises(castor.UnknownTaskError, match="no task named .*add.* is registered"):
        task.join(timeout=1)
    other.close()


def test_listing_and_counting(app):
    manager, add, echo, fail, _ = app
    add.delay(1, 1)
    fail.delay("x")
    echo.apply_async(("hi",), queue="mail")
    drain(manager)
    assert manager.count() == 3
    assert manager.count("pending") == 1 and manager.count("failed") == 1
    assert manager.count(queue="mail") == 1 and manager.count(name=fail.name) == 1
    assert manager.counts() == {"pending": 1, "running": 0, "success": 1, "failed": 1, "cancelled": 0, "waiting": 0}
    assert [t.status() for t in manager.tasks("failed")] == ["failed"]
    assert len(manager.tasks(limit=2)) == 2
    with pytest.raises(ValueError, match="unknown task status 'done'"):
        manager.count("done")


def test_apply_async_options(app):
    manager, add, *_ = app
    later = add.apply_async((1, 1), countdown=60)
    low = add.apply_async((1, 2), priority=-5)
    high = add.apply_async((1, 3), priority=5)
    named = add.apply_async((1, 4), task_id="my-own-id")
    assert named.id == "my-own-id"
    with pytest.raises(castor.TaskIdConflict):
        add.apply_async((1, 5), task_id="my-own-id")
    with pytest.raises(castor.ConfigurationError, match="eta or countdown"):
        add.apply_async((1, 1), countdown=1, eta=time.time())
    worker = Worker(manager, mode="process")
    order = []
    while worker.step():
        order.append(next(t for t in (low, high, named) if t and t.id not in order).id)
    assert order[0] == high.id and order[-1] == low.id
    assert later.status() == "pending"  # its ETA is a minute away
    assert worker.step(now=time.time() + 61) and later.join(timeout=1) == 2


def test_eta_datetime(app):
    manager, add, *_ = app
    task = add.apply_async((2, 2), eta=datetime.now(timezone.utc) + timedelta(hours=1))
    assert not Worker(manager, mode="process").step()
    assert task.info().eta > time.time() + 3500


def test_signatures_and_batches(app):
    manager, add, *_ = app
    tasks = manager.enqueue_many([add.s(i, i) for i in range(5)])
    mapped = add.map([(1, 0), (2, 0)])
    sig = add.s(7, 8).set(priority=3)
    single = sig.delay()
    drain(manager)
    assert [t.join(1) for t in tasks] == [0, 2, 4, 6, 8]
    assert [t.join(1) for t in mapped] == [1, 2]
    assert single.join(1) == 15 and single.info().priority == 3
    with pytest.raises(castor.ConfigurationError, match="unknown option 'prio'"):
        add.s(1, 2).set(prio=1)


def test_enqueue_many_is_all_or_nothing(app):
    manager, add, *_ = app
    with pytest.raises(TypeError):
        manager.enqueue_many([add.s(1, 2), add.s(1, object())])
    assert manager.count() == 0


def test_thread_and_process_tasks_go_to_their_own_workers(app):
    manager, add, echo, *_ = app
    p, t = add.delay(1, 1), echo.delay("x")
    assert Worker(manager, mode="thread").step()
    assert t.status() == "success" and p.status() == "pending"
    assert Worker(manager, mode="process").step()
    assert p.status() == "success"


def test_thread_pool_runs_many_tasks(app):
    manager, _, echo, *_ = app
    tasks = echo.map([(i,) for i in range(200)])
    Worker(manager, mode="thread", threads=8).run(until_idle=True)
    assert [t.join(timeout=1) for t in tasks] == list(range(200))


def test_pickle_serializer(db_path):
    manager = castor.Manager(db_path, serializer="pickle")

    @manager.task(mode="process")
    def span(a, b):
        return {b - a}

    task = span.delay(datetime(2020, 1, 1), datetime(2020, 1, 2))
    drain(manager)
    assert task.join(1) == {timedelta(days=1)}
    manager.close()


def test_eager_mode_runs_inline_and_stores(db_path):
    manager = castor.Manager(db_path, eager=True)

    @manager.task(mode="process")
    def double(x):
        if x < 0:
            raise ValueError("negative")
        return 2 * x

    task = double.delay(21)
    assert task.status() == "success" and task.join() == 42
    bad = double.delay(-1)
    with pytest.raises(ValueError, match="negative"):
        bad.join()
    manager.close()


class TestDecorationErrors:
    def test_missing_mode(self, manager):
        with pytest.raises(castor.ConfigurationError, match="mode is mandatory"):
            @manager.task
            def f():
                pass
        with pytest.raises(castor.ConfigurationError, match="mode is mandatory"):
            @manager.task()
            def g():
                pass

    def test_bad_mode(self, manager):
        with pytest.raises(castor.ConfigurationError, match="not 'async'"):
            @manager.task(mode="async")
            def f():
                pass

    def test_unknown_option(self, manager):
        with pytest.raises(castor.ConfigurationError, match="unknown option 'deamon'"):
            @manager.task(mode="thread", deamon=True)
            def f():
                pass

    def test_duplicate_name(self, manager):
        @manager.task(mode="thread", name="job")
        def first():
            pass

        with pytest.raises(castor.DuplicateTaskError, match="'job' is already registered.*name="):
            @manager.task(mode="thread", name="job")
            def second():
                pass


class TestBadDatabase:
    def test_not_sqlite(self, tmp_path):
        path = tmp_path / "notes.db"
        path.write_bytes(b"this is not a database, just text" * 100)
        with pytest.raises(castor.StoreError, match="not a usable SQLite database"):
            castor.Manager(str(path))
        assert path.read_bytes().startswith(b"this is not a database")  # untouched

    def test_corrupted_header(self, db_path):
        m = castor.Manager(db_path)
        m.close()
        with open(db_path, "r+b") as f:
            f.write(b"\x00" * 100)
        with pytest.raises(castor.StoreError, match="not a usable SQLite database"):
            castor.Manager(db_path)

    def test_missing_directory(self, tmp_path):
        with pytest.raises(castor.StoreError, match="does not exist"):
            castor.Manager(str(tmp_path / "nope" / "app.db"))

    def test_wrong_type(self):
        with pytest.raises(castor.ConfigurationError, match="BeaverDB or a path"):
            castor.Manager(42)

    def test_memory_database_refused(self):
        with pytest.raises(castor.ConfigurationError, match="':memory:' cannot be shared"):
            castor.Manager(":memory:")

    def test_locked_database_waits_then_says_so(self, db_path):
        manager = castor.Manager(db_path, lock_timeout=0.3)

        @manager.task(mode="thread")
        def f():
            pass

        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(castor.DatabaseLockedError, match="locked by another writer for more than 0.3 s"):
            f.delay()
        assert time.monotonic() - started >= 0.3
        blocker.execute("ROLLBACK")
        blocker.close()
        assert manager.count() == 0
        f.delay()
        assert manager.count() == 1
        manager.close()


def test_async_tasks_share_the_thread_workers_event_loop(db_path):
    manager = castor.Manager(db_path)

    @manager.task(mode="thread")
    async def fetch(delay, value):
        started = time.monotonic()
        await asyncio.sleep(delay)
        return [value, id(asyncio.get_running_loop()), started, time.monotonic()]

    tasks = fetch.map([(0.3, i) for i in range(4)])
    Worker(manager, mode="thread", threads=4).run(until_idle=True)
    results = [t.join(timeout=1) for t in tasks]
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert len({r[1] for r in results}) == 1  # one loop for all of them
    assert max(r[2] for r in results) < min(r[3] for r in results)  # all ran at once
    manager.close()


def test_async_task_timeout(db_path):
    manager = castor.Manager(db_path)

    @manager.task(mode="thread", timeout=0.2)
    async def hang():
        await asyncio.sleep(30)

    task = hang.delay()
    Worker(manager, mode="thread", threads=2).run(until_idle=True)
    with pytest.raises(castor.TaskTimeout):
        task.join(timeout=1)
    manager.close()


def test_async_task_raising_timeout_error_fails_with_it(db_path):
    manager = castor.Manager(db_path)

    @manager.task(mode="thread")
    async def slow_upstream():
        raise TimeoutError("upstream took too long")

    task = slow_upstream.delay()
    Worker(manager, mode="thread", threads=2).run(until_idle=True)
    with pytest.raises(TimeoutError, match="upstream took too long"):
        task.join(timeout=1)
    manager.close()


def test_manager_from_a_path_opens_and_closes_its_own_beaverdb(db_path):
    manager = castor.Manager(db_path)
    manager.db.dict("settings")["theme"] = "dark"
    assert manager.db.dict("settings")["theme"] == "dark"
    db = manager.db
    manager.close()
    assert db._closed  # castor opened it, castor closed it


def test_manager_leaves_a_passed_in_beaverdb_open(beaver):
    manager = castor.Manager(beaver)
    manager.close()
    beaver.dict("still")["open"] = True
    assert beaver.dict("still")["open"] is True


FORKED_DB = """
import os, sys, warnings
warnings.simplefilter("ignore", DeprecationWarning)  # fork() of a process with threads: the point
import castor
m = castor.Manager(sys.argv[1])
m.db.dict("app")["parent"] = 1  # the app's own data, opened before the fork (beaver's threads run)
pid = os.fork()
if pid == 0:
    m.db.dict("app")["child"] = 2  # this process's own BeaverDB, not the inherited one
    m.close()  # must not wait on the parent's threads
    os._exit(0)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), sorted(m.db.dict("app").keys()))
m.close()
"""


@pytest.mark.timeout(60)
def test_manager_db_after_a_fork_is_the_childs_own(tmp_path):
    """gunicorn --preload, multiprocessing: a BeaverDB inherited through fork hangs
    (BEAVER.md); Manager.db opens the child's own and close() leaves the parent's alone."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_DB)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "app.db")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        out, err = proc.communicate(timeout=40)
    finally:  # a hung fork must not outlive the test: the script's whole session goes
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, err
    assert out.split("\n")[0] == "0 ['child', 'parent']"


class TestStoreLocation:
    """Where tasks live: beside the app's data by default, or where store= says."""

    def test_a_sqlite_url_opens_the_same_file_as_its_path(self, tmp_path):
        path = tmp_path / "app.db"
        first = castor.Manager(str(path))
        try:
            assert first.store.url == f"sqlite://{path}"
            again = castor.Manager(first.store.url)  # what castord's tools pass around
            try:
                assert again.path == str(path)
                relative = castor.Manager(f"sqlite:{os.path.relpath(path)}")
                assert relative.path == str(path)
                relative.close()
            finally:
                again.close()
        finally:
            first.close()

    def test_store_puts_tasks_elsewhere_and_db_stays_the_apps(self, tmp_path):
        app_file, tasks_file = tmp_path / "app.db", tmp_path / "tasks.db"
        m = castor.Manager(str(app_file), store=f"sqlite://{tasks_file}")
        try:
            @m.task(mode="thread")
            def hello():
                return "hi"

            hello.delay()
            m.db.dict("settings")["theme"] = "dark"  # the app's own data, in its own file
            assert m.path == str(tasks_file) and m.count() == 1
        finally:
            m.close()
        with closing(sqlite3.connect(app_file)) as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert not any(t.startswith("castor_") for t in tables)
        with closing(sqlite3.connect(tasks_file)) as conn:
            assert conn.execute("SELECT count(*) FROM castor_tasks").fetchone() == (1,)

    @pytest.mark.parametrize("url, message", [
        ("redis://localhost", "castor has no store for redis: URLs"),
        ("sqlite://db-host/app.db", "names a host; a SQLite store is a local file"),
        ("sqlite:", "names no file"),
    ])
    def test_a_url_castor_cannot_open_is_refused_by_name(self, url, message):
        with pytest.raises(castor.ConfigurationError, match=message):
            castor.Manager(url)
