"""castord unchanged on PostgreSQL (issue 14): the same APP code with a postgresql:// URL,
real castord processes, the test's own throwaway server (tests/postgres.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import castor
from tests.conftest import REPO, wait_until
from tests.process import test_castord as sqlite_castord
from tests.process.test_castord import CASTORD, Castord, daemons  # noqa: F401 - fixture

PGAPP = """
import os, time
import castor

manager = castor.Manager(os.environ["PGAPP_URL"])


@manager.task(mode="process", name="add")
def add(a, b):
    return a + b


@manager.task(mode="thread", name="tadd")
def tadd(a, b):
    return a + b


@manager.task(mode="thread", name="boom", retries=0)
def boom():
    raise ValueError("boom on postgres")


@manager.task(mode="process", name="nap")
def nap(seconds, marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(seconds)
    return seconds
"""


@pytest.fixture
def pg_app(app_dir: Path, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch):
    (app_dir / "pgapp.py").write_text(textwrap.dedent(PGAPP))
    monkeypatch.setenv("PGAPP_URL", postgres_db_url)
    sys.modules.pop("pgapp", None)
    import pgapp

    yield pgapp
    pgapp.manager.close()
    sys.modules.pop("pgapp", None)


def import_testapp(url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """tests/conftest.py's `testapp` (all of its tasks) on `url`: its Manager reads
    CASTOR_TEST_DB, in the test and in the castords it starts."""
    monkeypatch.setenv("CASTOR_TEST_DB", url)
    sys.modules.pop("testapp", None)
    import testapp

    return testapp


@pytest.fixture
def pg_testapp(app_dir: Path, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch):
    """`testapp` on a PostgreSQL database of the test's own."""
    testapp = import_testapp(postgres_db_url, monkeypatch)
    yield testapp
    testapp.manager.close()  # before the database is dropped (app_dir closes it again: a no-op)


# The tests' server trusts its socket's owner and never asks for a password, so libpq
# never sends this one: it is there to be hidden.
PASSWORD = "hunter2-not-for-the-logs"


@pytest.fixture
def url_with_password(postgres_db_url: str) -> str:
    url = postgres_db_url.replace("postgresql://castor@", f"postgresql://castor:{PASSWORD}@", 1)
    assert PASSWORD in url
    return url


@pytest.fixture
def pg_testapp_with_password(app_dir: Path, url_with_password: str, monkeypatch: pytest.MonkeyPatch):
    testapp = import_testapp(url_with_password, monkeypatch)
    yield testapp
    testapp.manager.close()


def run(app_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CASTORD, *args], cwd=app_dir, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": f"{app_dir}{os.pathsep}{REPO}"})


@pytest.mark.timeout(120)
def test_castord_runs_an_app_on_postgresql_and_its_tools_see_it(pg_app, app_dir):
    d = Castord(app_dir)
    try:
        pidfile = app_dir / "castord.pid"
        d.start("--workers", "2", "--threads", "2", "--pidfile", str(pidfile), app="pgapp:manager")
        d.wait_note("READY=1", timeout=30)
        assert pg_app.add.delay(2, 3).join(timeout=30) == 5
        assert pg_app.tadd.delay(4, 5).join(timeout=30) == 9
        with pytest.raises(ValueError, match="boom on postgres"):
            pg_app.boom.delay().join(timeout=30)
        many = [pg_app.add.delay(i, i) for i in range(300)] + [pg_app.tadd.delay(i, 1) for i in range(300)]
        assert [t.join(timeout=60) for t in many] == [2 * i for i in range(300)] + [i + 1 for i in range(300)]

        status = run(app_dir, "status", "--pidfile", str(pidfile), "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)
        assert report["running"] is True and report["warnings"] == [], report
        assert report["database"].startswith("postgresql://")
        assert len(report["children"]) == 3 and report["counts"]["success"] == 602
        by_app = run(app_dir, "status", "pgapp:manager", "--json")
        assert by_app.returncode == 0 and json.loads(by_app.stdout)["pid"] == d.pid, by_app.stderr
        stats = run(app_dir, "tasks", "stats", "pgapp:manager", "--json")
        assert stats.returncode == 0 and json.loads(stats.stdout)["failed_by_name"] == {"boom": 1}

        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
        assert run(app_dir, "status", "--pidfile", str(pidfile)).returncode == 3
    finally:
        d.stop()


@pytest.mark.timeout(120)
def test_a_sigkilled_child_on_postgresql_loses_no_task(pg_app, app_dir):
    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "0", app="pgapp:manager")
        d.wait_note("READY=1", timeout=30)
        marker = app_dir / "nap.marker"
        task = pg_app.nap.delay(2, str(marker))
        wait_until(lambda: marker.exists() and marker.read_text().strip(), 30, "the task to start")
        os.kill(int(marker.read_text().split()[0]), signal.SIGKILL)
        assert task.join(timeout=60) == 2  # requeued by the master, run again by the new child
        record = task.info()
        assert record.status == castor.TaskStatus.SUCCESS and record.attempts == 2
        assert len(marker.read_text().split()) == 2
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()


@pytest.mark.timeout(120)
def test_the_metrics_endpoint_reads_the_postgresql_store(pg_app, app_dir):
    from tests.process.test_metrics import scrape

    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "1", "--metrics-port", "0", app="pgapp:manager")
        d.wait_note("READY=1", timeout=30)
        port = d.wait_event("metrics.serving")[0]["port"]
        assert pg_app.add.delay(1, 2).join(timeout=30) == 3
        with pytest.raises(ValueError):
            pg_app.boom.delay().join(timeout=30)
        pg_app.add.apply_async((0, 0), countdown=3600, queue="later")

        def counted() -> bool:
            m = scrape(port)
            return m.get(("castor_tasks_finished_total", (("name", "boom"), ("status", "failed")))) == 1
        wait_until(counted, 30, "the children's tallies to reach the master")
        m = scrape(port)
        assert m[("castor_database_up", ())] == 1
        assert m[("castor_tasks", (("status", "success"),))] == 1
        assert m[("castor_tasks", (("status", "failed"),))] == 1
        assert m[("castor_queue_depth", (("queue", "later"),))] == 1
        d.signal(signal.SIGTERM)
        assert d.wait_exit() == 0
    finally:
        d.stop()


# test_castord.py's tests of children, stops and castords side by side, unchanged: each
# takes (daemons, app_dir) and imports testapp, which pg_testapp points at PostgreSQL.
ORIGINALS = [
    sqlite_castord.test_graceful_timeout_kills_and_requeues_what_remains,
    sqlite_castord.test_quit_stops_fast,
    sqlite_castord.test_sigstopped_child_is_killed_and_replaced,
    sqlite_castord.test_process_task_past_its_timeout_fails_and_the_child_is_replaced,
    sqlite_castord.test_thread_task_past_its_timeout_gets_task_timeout,
    sqlite_castord.test_two_castords_on_one_database_share_the_work,
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("original", ORIGINALS, ids=lambda f: f.__name__.removeprefix("test_"))
def test_the_sqlite_castord_tests_on_postgresql(original, pg_testapp, daemons, app_dir):  # noqa: F811
    original(daemons, app_dir)
