"""expires=: options and their errors, the claim-time check and the sweep, with a real
Worker on a real file."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

import castor
from castor.context import current
from castor.errors import ConfigurationError
from castor.expiry import EXPIRED_TYPE
from tests.conftest import wait_until
from tests.integration.test_output_lines import lines, log_file  # noqa: F401 - fixture

PAST = datetime(2020, 1, 1, tzinfo=timezone.utc)


def test_expires_is_stored_as_an_absolute_time(manager):
    @manager.task(mode="thread", expires=60)
    def job():
        return 1

    before = time.time()
    default = job.delay()
    per_call = job.apply_async(expires=timedelta(seconds=5))
    fixed = job.apply_async(expires=datetime(2100, 1, 1, tzinfo=timezone.utc))
    after = time.time()
    assert before + 60 <= default.info().options["expires"] <= after + 60
    assert before + 5 <= per_call.info().options["expires"] <= after + 5
    assert fixed.info().options["expires"] == datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()


def test_a_task_claimed_after_its_expiry_ends_cancelled_without_running(manager, tmp_path):
    marker = tmp_path / "ran"

    @manager.task(mode="thread")
    def job():
        marker.write_text("ran")

    handle = job.apply_async(expires=PAST)
    assert castor.Worker(manager, mode="thread").step() is True  # the claim path, no sweep
    assert handle.status() == "cancelled"
    assert handle.info().error["type"] == EXPIRED_TYPE
    with pytest.raises(castor.TaskExpired, match="expired at 2020-01-01T00:00:00"):
        handle.join(timeout=5)
    assert not marker.exists()


def test_task_expired_is_a_task_cancelled(manager):
    @manager.task(mode="thread")
    def job():
        return 1

    handle = job.apply_async(expires=PAST)
    castor.Worker(manager, mode="thread").step()
    with pytest.raises(castor.TaskCancelled):
        handle.join(timeout=5)


def test_a_task_within_its_expiry_runs(manager):
    @manager.task(mode="thread", expires=3600)
    def job():
        return 7

    handle = job.delay()
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert handle.join(timeout=5) == 7


def test_a_retry_due_after_the_expiry_ends_expired(manager, tmp_path):
    """Every attempt must start by the expiry (as Celery checks it on each delivery):
    the first attempt runs, fails past the expiry, and the retry never starts."""
    attempts = tmp_path / "attempts"

    @manager.task(mode="thread", retries=3, retry_delay=0)
    def flaky():
        with attempts.open("a") as f:
            f.write("x")
        ctx = current()
        assert ctx is not None
        expiry = ctx.record.options["expires"]
        wait_until(lambda: time.time() > expiry, 10, "the expiry to pass")
        raise RuntimeError("fails after its expiry")

    handle = flaky.apply_async(expires=1)
    worker = castor.Worker(manager, mode="thread")
    assert worker.step() and worker.step()
    assert handle.status() == "cancelled"
    assert attempts.read_text() == "x"
    with pytest.raises(castor.TaskExpired):
        handle.join(timeout=5)


def test_the_workers_sweep_ends_an_expired_task_it_cannot_claim(manager):
    @manager.task(mode="thread", queue="held")
    def job():
        return 1

    manager.pause_queue("held")
    handle = job.apply_async(expires=PAST)
    worker = castor.Worker(manager, mode="thread")
    runner = threading.Thread(target=worker.run)
    runner.start()
    try:
        with pytest.raises(castor.TaskExpired):
            handle.join(timeout=20)
    finally:
        worker.stop()
        runner.join(timeout=20)


@pytest.mark.parametrize(("bad", "message"), [
    ("soon", "expires must be a number of seconds, a timedelta or a datetime, not str"),
    (0, "expires must be more than 0 seconds"),
    (-1, "expires must be zero or more seconds"),
    (float("nan"), "expires must be zero or more seconds"),
    (float("inf"), "expires must be a finite number of seconds"),
    (True, "expires must be a number of seconds, a timedelta or a datetime, not bool"),
    (datetime(1, 1, 1, tzinfo=timezone.utc), "expires must be between 1970 and the end of 9999"),
])
def test_a_bad_expires_is_refused_at_decoration_and_at_call(manager, bad, message):
    with pytest.raises(ConfigurationError, match=message):
        manager.task(mode="thread", name="bad", expires=bad)(lambda: None)

    @manager.task(mode="thread", name="good")
    def good():
        return 1

    with pytest.raises(ConfigurationError, match=message):
        good.apply_async(expires=bad)
    assert manager.count() == 0  # nothing was enqueued


def test_an_expiry_before_the_eta_is_refused(manager):
    @manager.task(mode="thread")
    def job():
        return 1

    with pytest.raises(ConfigurationError, match="falls before the task's eta"):
        job.apply_async(countdown=60, expires=30)
    assert job.apply_async(countdown=30, expires=60).status() == "pending"


def test_a_naive_datetime_is_local_time_as_for_eta(manager):
    @manager.task(mode="thread")
    def job():
        return 1

    naive = datetime(2100, 1, 1, 12, 0)
    assert job.apply_async(expires=naive).info().options["expires"] == naive.timestamp()


def test_the_end_line_of_a_task_found_expired_at_its_claim_says_expired(manager, log_file):  # noqa: F811
    @manager.task(mode="thread")
    def job():
        return 1

    handle = job.apply_async(expires=PAST)
    castor.Worker(manager, mode="thread").step()
    (line,) = [e for e in lines(log_file) if e.get("event") == "task.cancelled" and e.get("task_id") == handle.id]
    assert line["reason"] == "expired"
    assert line["exc_message"].startswith("expired at 2020-01-01T00:00:00")


def test_the_http_api_takes_expires_as_seconds_or_an_instant(db_path):
    from tests.integration.test_web import define_tasks, make_client

    m = castor.Manager(db_path)
    try:
        define_tasks(m)
        client = make_client(m)
        before = time.time()
        relative = client.post("/tasks", json={"name": "add", "args": [1, 2], "expires": 60})
        assert relative.status_code == 202, relative.text
        assert m.get(relative.json()["id"]).info().options["expires"] >= before + 60
        fixed = client.post("/tasks", json={"name": "add", "args": [1, 2], "expires": "2100-01-01T00:00:00Z"})
        assert fixed.status_code == 202, fixed.text
        assert m.get(fixed.json()["id"]).info().options["expires"] == datetime(2100, 1, 1, tzinfo=timezone.utc).timestamp()
        for bad in (0, -1, True, "5", "soon", "2100-01-01T00:00:00"):
            refused = client.post("/tasks", json={"name": "add", "args": [1, 2], "expires": bad})
            assert refused.status_code == 422, (bad, refused.text)
    finally:
        m.close()
