"""The `castor` command's terminal dashboard on a PostgreSQL APP (issue 14 §2: "the
dashboard work unchanged"): test_dashboard.py's pseudo-terminal and terminal emulator,
tests/conftest.py's testapp on a database of the test's own."""

from __future__ import annotations

import re

import pytest

from tests.process.test_dashboard import terminal  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import (  # noqa: F401 - fixtures
    PASSWORD,
    pg_testapp,
    pg_testapp_with_password,
    url_with_password,
)


@pytest.mark.timeout(90)
def test_dashboard_on_postgresql_shows_the_store_runs_tasks_and_ctrl_c_drains(
        pg_testapp, terminal, app_dir, postgres_db_url):  # noqa: F811
    import dashapp  # terminal's app: testapp's Manager, one more task

    for n in range(6):
        pg_testapp.add.delay(n, n)
        pg_testapp.tadd.delay(n, n)
    dashapp.shout.delay("hello from inside a task")
    failures = [pg_testapp.boom.delay("on purpose") for _ in range(2)]
    critical = pg_testapp.critical.delay(4, str(app_dir / "critical.marker"))
    pg_testapp.add.apply_async((1, 2), countdown=3600, queue="later")
    pg_testapp.add.apply_async((2, 3), countdown=3600, queue="later")

    term = terminal("--workers", "2", "--threads", "2", "dashapp:manager")
    term.wait_for(r"castor dashapp:manager\s+pid \d+\s+running")
    assert "postgresql://" in term.screen()  # the header names the store
    term.wait_for(r"done 13\b")
    term.wait_for(r"failed 2\b")
    screen = term.wait_for(r"critical\s+running").string
    assert re.search(r"process slots\s+\S+\s+[12]/2 busy", screen), screen
    assert re.search(r"thread slots\s+\S+\s+0/2 busy", screen), screen
    assert re.search(r"later\s+2\b", screen), screen  # pending per queue, read from PostgreSQL
    assert failures[0].id[-12:] in screen or failures[1].id[-12:] in screen, screen
    term.wait_for("hello from inside a task")  # the task's print(), in the log panel

    # Enqueued while it runs: the wake-up reaches castor through LISTEN/NOTIFY.
    assert pg_testapp.tadd.delay(20, 22).join(timeout=30) == 42
    term.wait_for(r"done 14\b")
    term.ctrl_c()
    term.wait_for(r"pid \d+\s+draining")
    assert term.wait_exit(timeout=30) == 0
    term.wait_for(r"castor stopped \(exit 0\)")
    assert critical.status() == "success"  # the running non-daemon task was let finish
    counts = pg_testapp.manager.counts()
    assert (counts["success"], counts["failed"], counts["pending"]) == (15, 2, 2)


@pytest.mark.timeout(60)
def test_the_dashboard_names_the_store_without_its_password(pg_testapp_with_password, terminal):  # noqa: F811
    term = terminal("--workers", "1", "--threads", "1", "dashapp:manager")
    term.wait_for(r"castor dashapp:manager\s+pid \d+\s+running")
    assert pg_testapp_with_password.add.delay(1, 2).join(timeout=30) == 3
    term.wait_for(r"done 1\b")
    term.wait_for("castord.ready")  # the log panel's lines are drawn too
    screen = term.screen()
    assert "postgresql://castor:***@" in screen and PASSWORD not in screen, screen
    term.ctrl_c()
    assert term.wait_exit(timeout=30) == 0
