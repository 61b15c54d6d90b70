"""Manager.run_now (a scheduled task made due) and Manager.run_again (a finished task
copied), with a real Worker, on a SQLite file and on PostgreSQL; their refusals."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import castor
from castor.errors import ConfigurationError, UnknownTaskError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def mgr(request: pytest.FixtureRequest) -> Iterator[castor.Manager]:
    where = request.getfixturevalue("db_path" if request.param == "sqlite" else "postgres_db_url")
    manager = castor.Manager(where)
    yield manager
    manager.close()


def run_all(manager: castor.Manager) -> None:
    castor.Worker(manager, mode="thread").run(until_idle=True)


def test_run_now_runs_a_scheduled_task_at_once_under_its_own_id(mgr):
    @mgr.task(mode="thread")
    def add(a, b):
        return a + b

    later = add.apply_async((1, 2), countdown=3600)
    run_all(mgr)
    assert later.status() == "pending"
    assert mgr.run_now(later.id).id == later.id
    run_all(mgr)
    assert later.status() == "success" and later.join(timeout=5) == 3
    assert mgr.store.get(later.id).attempts == 1


def test_run_now_cuts_a_retry_backoff_short_and_keeps_the_attempts(mgr):
    calls = []

    @mgr.task(mode="thread", retries=3, retry_delay=3600)
    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first time")
        return "ok"

    task = flaky.delay()
    run_all(mgr)
    record = mgr.store.get(task.id)
    assert record.status == "pending" and record.attempts == 1 and len(record.history) == 1
    mgr.run_now(task.id)
    run_all(mgr)
    assert task.join(timeout=5) == "ok" and mgr.store.get(task.id).attempts == 2


def test_run_now_refuses_what_is_not_scheduled_for_later(mgr):
    @mgr.task(mode="thread")
    def echo(x):
        return x

    with pytest.raises(UnknownTaskError):
        mgr.run_now("no-such-task")
    due = echo.delay(1)
    with pytest.raises(ConfigurationError, match="is due already"):
        mgr.run_now(due.id)
    run_all(mgr)
    with pytest.raises(ConfigurationError, match="is success: run now takes a pending task scheduled for later"):
        mgr.run_now(due.id)


def test_run_again_copies_a_finished_task_and_links_the_two(mgr):
    @mgr.task(mode="thread", queue="maths", priority=3, timeout=30)
    def add(a, b):
        return a + b

    first = add.apply_async((2, 3), expires=3600)
    run_all(mgr)
    copy = mgr.run_again(first.id)
    assert copy.id != first.id
    source, again = mgr.store.get(first.id), mgr.store.get(copy.id)
    assert (again.name, again.queue, again.priority, again.args, again.kwargs, again.attempts) == \
           (source.name, "maths", 3, source.args, source.kwargs, 0)
    assert again.options["timeout"] == 30 and again.options["rerun_of"] == first.id
    assert "expires" not in again.options  # asked for now, as a retry by hand
    assert source.options["rerun_as"] == copy.id and source.status == "success"
    run_all(mgr)
    assert copy.join(timeout=5) == 5
    third = mgr.run_again(copy.id)  # a copy of a copy names its own source
    assert mgr.store.get(third.id).options["rerun_of"] == copy.id
    assert "rerun_as" not in mgr.store.get(third.id).options


def test_run_again_of_a_failure_leaves_the_failure_as_it_was(mgr):
    @mgr.task(mode="thread")
    def boom():
        raise ValueError("no")

    failed = boom.delay()
    run_all(mgr)
    copy = mgr.run_again(failed.id)
    assert failed.status() == "failed" and mgr.store.get(failed.id).attempts == 1
    assert copy.status() == "pending"
    run_all(mgr)
    assert copy.status() == "failed"


def test_run_again_refuses_an_unfinished_task_and_an_unknown_id(mgr):
    @mgr.task(mode="thread")
    def echo(x):
        return x

    with pytest.raises(UnknownTaskError):
        mgr.run_again("no-such-task")
    pending = echo.apply_async((1,), countdown=3600)
    with pytest.raises(ConfigurationError, match="only a finished task .* can be run again .*use run now"):
        mgr.run_again(pending.id)


def test_run_again_of_a_unique_task_respects_its_key(mgr):
    @mgr.task(mode="thread", unique=True)
    def sync(account):
        return account

    done = sync.delay("acme")
    run_all(mgr)
    holder = sync.apply_async(("acme",), countdown=3600)  # an unfinished twin holds the key
    with pytest.raises(ConfigurationError, match=f"unique key .* is held by unfinished task {holder.id}"):
        mgr.run_again(done.id)
    assert mgr.count() == 2 and "rerun_as" not in mgr.store.get(done.id).options
    mgr.cancel(holder.id)
    copy = mgr.run_again(done.id)  # the key is free again
    run_all(mgr)
    assert copy.join(timeout=5) == "acme"
