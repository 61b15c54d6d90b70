"""expires= under a real castord: a task nobody can claim in time ends expired (the
sweep), and one claimed after its expiry ends expired without running.

The same tests run on the beaver file and on PostgreSQL (pg_testapp points testapp there).
"""

from __future__ import annotations

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

APP = "testapp:manager"


def _unclaimed_task_expires(daemons, app_dir):  # noqa: F811
    import testapp

    assert run_cli(app_dir, "tasks", "pause", APP, "default").returncode == 0
    d = daemons().start("--workers", "1", "--threads", "0")
    d.wait_note("READY=1", timeout=30)
    marker = app_dir / "ran"
    handle = testapp.slow.apply_async((0, str(marker)), expires=1)
    with pytest.raises(castor.TaskExpired, match="expired at"):
        handle.join(timeout=30)
    assert handle.status() == "cancelled" and handle.attempts == 0
    (line,) = d.wait_event("task.cancelled", task_id=handle.id)
    assert line["reason"] == "expired"
    assert not marker.exists()


def _task_claimed_late_never_runs(daemons, app_dir):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "1", "--threads", "0")
    d.wait_note("READY=1", timeout=30)
    busy_marker, late_marker = app_dir / "busy", app_dir / "late"
    # The one process worker is held by `busy` until `late` has expired: `late`
    # either waits in its prefetch (found expired at its start) or in the queue
    # (found by the sweep); neither may run it.
    busy = testapp.slow.delay(4, str(busy_marker))
    wait_until(busy_marker.exists, 30, "the busy task to start")
    late = testapp.slow.apply_async((0, str(late_marker)), expires=1)
    with pytest.raises(castor.TaskExpired):
        late.join(timeout=30)
    assert busy.join(timeout=30) == 4
    assert not late_marker.exists()
    assert late.info().started_at is None


def test_a_task_nobody_claims_in_time_ends_expired(daemons, app_dir):  # noqa: F811
    _unclaimed_task_expires(daemons, app_dir)


def test_a_task_nobody_claims_in_time_ends_expired_on_postgresql(pg_testapp, daemons, app_dir):  # noqa: F811
    _unclaimed_task_expires(daemons, app_dir)


def test_a_task_claimed_after_its_expiry_never_runs(daemons, app_dir):  # noqa: F811
    _task_claimed_late_never_runs(daemons, app_dir)


def test_a_task_claimed_after_its_expiry_never_runs_on_postgresql(pg_testapp, daemons, app_dir):  # noqa: F811
    _task_claimed_late_never_runs(daemons, app_dir)
