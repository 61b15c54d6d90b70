"""Task semantics (SPEC §6) in-process: retries, cancellation, progress, TTL and
purge, failed/dirty inspection, unique and cached tasks, validation, Celery
spellings. castord runs the same engine; tests/process/test_semantics_castord.py
repeats the edges through a real daemon."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta

import pytest

import castor
from castor import Worker
from castor.retries import RetryPolicy
from tests.conftest import wait_until


def drain(manager, mode="process", now=None):
    worker = Worker(manager, mode=mode)
    while worker.step(now):
        pass
    return worker


@pytest.fixture
def calls():
    return []


# -- retries ---------------------------------------------------------------------


def test_retries_until_success_keep_each_attempts_error(manager, calls):
    @manager.task(mode="process", retries=3, retry_delay=0)
    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)}")
        return "ok"

    task = flaky.delay()
    drain(manager)
    assert task.join(timeout=1) == "ok"
    assert task.attempts == 3
    assert [(h["attempt"], h["type"], h["message"]) for h in task.history] == [
        (1, "builtins.ConnectionError", "try 1"), (2, "builtins.ConnectionError", "try 2")]


def test_retry_exhaustion_fails_with_the_last_error(manager):
    @manager.task(mode="process", retries=2, retry_delay=0)
    def always():
        raise ValueError("nope")

    task = always.delay()
    drain(manager)
    assert task.status() == "failed" and task.attempts == 3
    assert len(task.history) == 3
    with pytest.raises(ValueError, match="nope"):
        task.join(timeout=1)


def test_retry_on_limits_which_errors_retry(manager):
    @manager.task(mode="process", retries=5, retry_delay=0, retry_on=(ConnectionError,))
    def picky(kind):
        raise {"conn": ConnectionResetError, "value": ValueError}[kind]("x")

    other = picky.delay("value")
    subclass = picky.delay("conn")
    drain(manager)
    assert other.status() == "failed" and other.attempts == 1
    assert subclass.status() == "failed" and subclass.attempts == 6  # a subclass qualifies


def test_a_retry_waits_for_its_backoff(manager):
    @manager.task(mode="process", retries=1, retry_delay=30, retry_jitter=False)
    def later():
        raise OSError("down")

    task = later.delay()
    drain(manager)
    record = task.info()
    assert record.status == "pending" and record.attempts == 1
    assert record.eta - record.enqueued_at >= 29
    assert drain(manager).done == 0  # not due yet
    drain(manager, now=record.eta + 0.001)
    assert task.status() == "failed" and task.attempts == 2


def test_explicit_retry_and_per_call_retries(manager, calls):
    @manager.task(mode="thread")
    def polite():
        calls.append(1)
        if len(calls) == 1:
            raise castor.Retry("not yet", delay=0)
        return len(calls)

    @manager.task(mode="process")
    def fails():
        raise RuntimeError("x")

    assert polite.delay().join  # handle
    drain(manager, "thread")
    assert manager.tasks(name=polite.name)[0].join(timeout=1) == 2
    task = fails.apply_async(retries=1, retry_delay=0)
    drain(manager)
    assert task.attempts == 2 and task.status() == "failed"


def test_explicit_retry_is_bounded(manager):
    @manager.task(mode="process")
    def forever():
        raise castor.Retry(delay=0)

    task = forever.delay()
    drain(manager)
    assert task.status() == "failed" and task.attempts == 4  # 1 + the default 3 retries
    assert task.error["type"] == "castor.errors.Retry"


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    policy = RetryPolicy(retries=10, delay=1, backoff=2, max_delay=5, jitter=False)
    assert [policy.retry_in(OSError(), n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert policy.retry_in(OSError(), 11) is None
    jittered = RetryPolicy(retries=10, delay=4, jitter=True)
    assert jittered.retry_in(OSError(), 1, rand=lambda: 0.0) == 2.0
    assert jittered.retry_in(OSError(), 1, rand=lambda: 1.0) == 4.0
    assert jittered.retry_in(castor.TaskCancelled(), 1) is None


@pytest.mark.parametrize("options, message", [
    ({"retries": -1}, "retries must be an integer"),
    ({"retry_on": "ValueError"}, "retry_on takes exception classes"),
    ({"retry_backoff": 0.5}, "retry_backoff must be a number"),
    ({"result_ttl": "soon"}, "result_ttl must be a number"),
    ({"unique": "yes"}, "unique must be True, False or a function"),
    ({"cache_ttl": 0}, "cache_ttl must be more than 0"),
    ({"retires": 3}, "Did you mean 'retries'"),
])
def test_bad_semantics_options_are_refused_at_decoration(manager, options, message):
    with pytest.raises(castor.ConfigurationError, match=message):
        manager.task(mode="thread", **options)(lambda: None)


def test_bad_per_call_options_are_refused(manager):
    @manager.task(mode="thread")
    def noop():
        return None

    with pytest.raises(castor.ConfigurationError, match="Did you mean 'countdown'"):
        noop.apply_async(countdwn=3)
    with pytest.raises(castor.ConfigurationError, match="retries must be"):
        noop.apply_async(retries="many")
    assert manager.count() == 0


# -- cancellation ----------------------------------------------------------------


def test_cancel_pending_task_never_runs(manager, calls):
    @manager.task(mode="process")
    def job():
        calls.append(1)

    task = job.delay()
    assert task.cancel() == "cancelled"
    drain(manager)
    assert calls == [] and task.status() == "cancelled" and task
    with pytest.raises(castor.TaskCancelled):
        task.join(timeout=1)
    assert task.state == "REVOKED"


def test_cancel_a_finished_task_changes_nothing(manager):
    @manager.task(mode="process")
    def job():
        return 1

    task = job.delay()
    drain(manager)
    assert task.cancel() == "success" and task.join(timeout=1) == 1
    with pytest.raises(castor.UnknownTaskError):
        manager.cancel("no-such-task")


def _run_in_background(worker):
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return thread


def test_cancel_running_thread_task_cooperative_and_forced(manager):
    seen = []

    @manager.task(mode="thread")
    def polite():
        while not castor.cancelled():
            time.sleep(0.001)
        seen.append("noticed")

    @manager.task(mode="thread")
    def busy():
        while True:  # never checks: TaskCancelled is raised in it
            pass

    worker = Worker(manager, mode="thread", threads=2)
    thread = _run_in_background(worker)
    try:
        tasks = [polite.delay(), busy.delay()]
        wait_until(lambda: all(t.status() == "running" for t in tasks), 10, "both running")
        assert [t.cancel() for t in tasks] == ["running", "running"]
        wait_until(lambda: all(t.status() == "cancelled" for t in tasks), 10, "both cancelled")
        with pytest.raises(castor.TaskCancelled):
            tasks[1].join(timeout=1)
    finally:
        worker.stop()
        thread.join(10)
    assert not thread.is_alive()


def test_a_task_raising_task_cancelled_itself_is_a_failure(manager):
    @manager.task(mode="process")
    def liar():
        raise castor.TaskCancelled("not really")

    task = liar.delay()
    drain(manager)
    assert task.status() == "failed"


# -- progress ----------------------------------------------------------------------


def test_progress_is_visible_while_running_and_throttled(manager):
    release = threading.Event()

    @manager.task(mode="thread")
    def report():
        for i in range(1, 101):
            castor.progress(i / 200, f"step {i}")  # 100 calls in a burst: throttled
        release.wait(10)
        return "done"

    assert castor.progress(0.5) is False  # outside a task: a no-op
    worker = Worker(manager, mode="thread", threads=1)
    thread = _run_in_background(worker)
    try:
        task = report.delay()
        # The last report, held back by the throttle, is written by housekeeping.
        wait_until(lambda: task.progress == (0.5, "step 100"), 10, "the last progress report")
        release.set()
        assert task.join(timeout=10) == "done"
    finally:
        worker.stop()
        thread.join(10)
    with pytest.raises(castor.ConfigurationError, match="between 0 and 1"):
        castor.progress(1.5)


def test_progress_from_an_async_task(manager):
    @manager.task(mode="thread")
    async def report():
        await asyncio.sleep(0)
        castor.progress(1.0, "all done")
        return "ok"

    worker = Worker(manager, mode="thread", threads=1)
    task = report.delay()
    worker.run(until_idle=True)
    assert task.join(timeout=1) == "ok"
    assert task.progress == (1.0, "all done")


# -- results: TTL and purge ----------------------------------------------------------


def test_drop_on_success_and_ttl_expiry(manager):
    @manager.task(mode="process", result_ttl=0)
    def fire_and_forget():
        return 1

    @manager.task(mode="process", result_ttl=timedelta(seconds=60))
    def short_lived():
        return 2

    dropped, kept = fire_and_forget.delay(), short_lived.delay()
    drain(manager)
    assert manager.get(dropped.id) is None
    assert kept.join(timeout=1) == 2
    assert manager.store.purge_expired(now=time.time()) == 0
    assert manager.store.purge_expired(now=time.time() + 61) == 1
    assert manager.get(kept.id) is None


def test_manager_default_ttl_and_failure_ttl(db_path):
    manager = castor.Manager(db_path, result_ttl=10, failure_ttl=100)
    try:
        @manager.task(mode="process")
        def ok():
            return 1

        @manager.task(mode="process")
        def bad():
            raise ValueError

        a, b = ok.delay(), bad.delay()
        drain(manager)
        assert 9 < a.info().expires_at - a.info().finished_at <= 10.001
        assert 99 < b.info().expires_at - b.info().finished_at <= 100.001
    finally:
        manager.close()


def test_purge_deletes_only_finished_tasks(manager):
    @manager.task(mode="process")
    def job(n):
        return n

    done = [job.delay(i) for i in range(5)]
    drain(manager)
    waiting = job.delay(99)
    assert manager.purge(older_than=3600) == 0  # all finished just now
    assert manager.purge(status="success") == 5
    assert all(manager.get(t.id) is None for t in done)
    assert waiting.status() == "pending"
    with pytest.raises(castor.ConfigurationError, match="finished tasks only"):
        manager.purge(status="pending")


def test_forget(manager):
    @manager.task(mode="process")
    def job():
        return 1

    task = job.delay()
    drain(manager)
    task.forget()
    assert manager.get(task.id) is None


# -- failed and dirty tasks ----------------------------------------------------------


def test_failed_tasks_listed_inspected_and_retried(manager, calls):
    @manager.task(mode="process")
    def fragile(n):
        calls.append(n)
        if len(calls) <= 2:
            raise ValueError(f"bad {n}")
        return n

    first, second = fragile.delay(1), fragile.delay(2)
    drain(manager)
    failed = manager.failed(name=fragile.name)
    assert {t.id for t in failed} == {first.id, second.id}
    assert "ValueError: bad 1" in first.error["traceback"]
    assert first.retry() is first and first.status() == "pending"
    retried = manager.retry_failed(name=fragile.name)
    assert [t.id for t in retried] == [second.id]
    drain(manager)
    assert first.join(timeout=1) == 1 and second.join(timeout=1) == 2
    assert first.attempts == 2 and len(first.history) == 1
    with pytest.raises(castor.ConfigurationError, match="only failed or cancelled"):
        manager.retry(first.id)


def test_dirty_tasks_are_those_whose_worker_vanished(manager):
    @manager.task(mode="process")
    def job():
        return 1

    clean, dirty = job.delay(), job.delay()
    manager.store.claim_task(dirty.id, "ghost", lease=30, now=time.time())
    manager.store.release_owner("ghost", count_attempt=True, max_lost=3)  # its worker died
    drain(manager)
    assert [t.id for t in manager.dirty()] == [dirty.id]
    assert dirty.lost == 1 and clean.lost == 0 and dirty.join(timeout=1) == 1


# -- unique and cached -----------------------------------------------------------------


def test_unique_returns_the_unfinished_twin(manager):
    @manager.task(mode="process", unique=True)
    def sync(account, full=False):
        return account

    a = sync.delay("x", full=True)
    assert sync.apply_async(("x",), {"full": True}) == a
    b = sync.delay("y")
    assert b != a
    assert [t.id for t in manager.enqueue_many([sync.s("x", full=True), sync.s("z")])][0] == a.id
    drain(manager)
    assert manager.count(name=sync.name) == 3
    assert sync.delay("x", full=True) != a  # the twin finished: a new task


def test_unique_key_function_and_per_call_key(manager):
    @manager.task(mode="process", unique=lambda user, text: user)
    def notify(user, text):
        return text

    first = notify.delay("ann", "hello")
    assert notify.delay("ann", "again") == first
    assert notify.apply_async(("ann", "x"), unique="other-key") != first


def test_cache_ttl_answers_from_a_recent_success(manager, calls):
    @manager.task(mode="process", cache_ttl=60)
    def expensive(n):
        calls.append(n)
        return n * 2

    first = expensive.delay(21)
    drain(manager)
    again = expensive.delay(21)
    assert again == first and again.join(timeout=1) == 42
    assert expensive.delay(22) != first
    drain(manager)
    assert calls == [21, 22]
    # Outside the window (a past success only): runs again.
    time.sleep(0.01)
    fresh = expensive.apply_async((21,), cache_ttl=0.001)
    assert fresh != first


# -- validation and Celery spellings ---------------------------------------------------


def test_validate_rejects_bad_arguments_at_delay(manager):
    @manager.task(mode="thread", validate=True)
    def resize(width: int, height: int, *, fmt: str = "png") -> str:
        return f"{width}x{height}.{fmt}"

    with pytest.raises(castor.InvalidArguments, match="width: Input should be a valid integer"):
        resize.delay("wide", 10)
    with pytest.raises(castor.InvalidArguments, match="Missing required argument"):
        resize.delay(10)
    with pytest.raises(castor.InvalidArguments):
        resize.apply_async((1, 2), {"fmt": 3})
    assert manager.count() == 0
    task = resize.delay(3, 4, fmt="jpg")
    drain(manager, "thread")
    assert task.get(timeout=1) == "3x4.jpg"


def test_validate_needs_readable_hints(manager):
    with pytest.raises(castor.ConfigurationError, match="validate=True cannot .* type hints: .*NoSuchType"):
        @manager.task(mode="thread", validate=True)
        def broken(x: "NoSuchType") -> None:  # noqa: F821
            return None


def test_celery_spellings(manager):
    @manager.task(mode="process")
    def add(a, b):
        return a + b

    task = add.s(1, 2).apply_async(countdown=0)
    same = manager.AsyncResult(task.id)
    assert same == task and same.state == "PENDING" and not same.ready()
    drain(manager)
    assert same.ready() and same.successful() and not same.failed() and same.get(timeout=1) == 3
    pending = add.delay(1, 1)
    assert manager.revoke(pending.id) == "cancelled" and pending.state == "REVOKED"


def test_eager_mode_runs_retries_inline(db_path, calls):
    manager = castor.Manager(db_path, eager=True)
    try:
        @manager.task(mode="thread", retries=2, retry_delay=60)
        def flaky():
            calls.append(1)
            if len(calls) < 3:
                raise ConnectionError("down")
            return "ok"

        task = flaky.delay()
        assert task.join(timeout=0.1) == "ok" and task.attempts == 3
    finally:
        manager.close()
