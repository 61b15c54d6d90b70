"""`castord move` for real: the command beside real castords, from a beaver-db file to a
real PostgreSQL (tests/postgres.py)."""

from __future__ import annotations

import json
import signal
import socket

import pytest

from castor.states import TaskStatus
from castor.store import Query, open_store
from tests.process.test_castord import Castord, run_cli
from tests.process.test_fleet_status import fleet_app  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_app  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(180)


def move(app_dir, *args: str):
    out = run_cli(app_dir, "move", *args)
    assert "Traceback" not in out.stderr, out.stderr
    return out


@pytest.mark.timeout(240)
def test_refused_while_castord_runs_then_moved_and_run_by_castord_on_postgresql(
        app_dir, db_path, postgres_db_url, fleet_app):  # noqa: F811
    import testapp  # on the file

    later = testapp.add.apply_async((1, 1), countdown=3600, queue="later", priority=3)
    later_eta = later.info().eta
    on_file = Castord(app_dir, "on-file")
    on_pg = Castord(app_dir, "on-pg")
    try:
        on_file.start("--workers", "1", "--threads", "0")
        on_file.wait_note("READY=1", timeout=30)
        refused = move(app_dir, "--from", db_path, "--to", postgres_db_url)
        assert refused.returncode == 6, refused
        assert refused.stderr.startswith(
            f"error: castord runs on {db_path}: pid {on_file.pid} on {socket.gethostname()} (app testapp:manager). "
            "Stop it first"), refused.stderr
        target = open_store(postgres_db_url)
        try:
            assert target.count(Query()) == 0
        finally:
            target.close()
        on_file.signal(signal.SIGTERM)
        assert on_file.wait_exit() == 0

        due = testapp.add.delay(2, 3)  # no castord on the file now: it waits there
        dry = move(app_dir, "--from", db_path, "--to", postgres_db_url, "--dry-run")
        assert dry.returncode == 0 and "would move 2 tasks" in dry.stdout, dry
        done = move(app_dir, "--from", db_path, "--to", postgres_db_url)
        assert done.returncode == 0, done
        assert "moved 2 tasks (default=1, later=1; 1 scheduled for later, 0 waiting to retry)" in done.stdout
        again = move(app_dir, "--from", db_path, "--to", postgres_db_url, "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["moved"] == 0, again
        assert testapp.manager.store.count(Query(status=TaskStatus.PENDING)) == 0

        on_pg.start("--workers", "1", "--threads", "0", app="fleetapp:manager")
        on_pg.wait_note("READY=1", timeout=30)
        handle = fleet_app.manager.get(due.id)
        assert handle is not None and handle.join(timeout=60) == 5
        waiting = fleet_app.manager.get(later.id).info()
        assert (waiting.status, waiting.queue, waiting.priority, waiting.eta) == (
            TaskStatus.PENDING, "later", 3, later_eta)
        on_pg.signal(signal.SIGTERM)
        assert on_pg.wait_exit() == 0
    finally:
        on_file.stop()
        on_pg.stop()


@pytest.mark.parametrize(("to", "code", "message"), [
    ("mysql://app:s3cret-to@db/tasks", 2,
     "error: --to must be a PostgreSQL URL (postgresql://user@host/dbname), not 'mysql://app:***@db/tasks'"),
    ("postgresql://app:s3cret%zz-to@db/tasks", 2,
     "error: cannot use postgresql://app:***@db/tasks: not a usable PostgreSQL URL (invalid percent-encoded "
     'token: "***"'),
    ("postgresql://app:s3cret-to@/tasks?host=/nonexistent-castor-dir", 3,
     "error: cannot use postgresql://app:***@/tasks?host=/nonexistent-castor-dir: cannot connect to PostgreSQL ("),
])
def test_a_bad_target_url_is_one_line_and_shows_no_password(app_dir, db_path, to, code, message):
    import testapp

    testapp.add.delay(1, 1)
    out = move(app_dir, "--from", db_path, "--to", to)
    assert out.returncode == code, out
    assert out.stderr.startswith(message), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "s3cret" not in out.stdout + out.stderr
    assert testapp.manager.store.count(Query()) == 1  # nothing left the file


def test_a_bad_source_is_one_line(app_dir, tmp_path, postgres_db_url):
    missing = move(app_dir, "--from", str(tmp_path / "nope.db"), "--to", postgres_db_url)
    assert (missing.returncode, missing.stderr.strip()) == (
        2, f"error: --from: there is no beaver-db file at {tmp_path / 'nope.db'}")
    assert not (tmp_path / "nope.db").exists()  # never created
    server = move(app_dir, "--from", "postgresql://castor:s3cret@/tasks", "--to", postgres_db_url)
    assert server.returncode == 2 and server.stderr.startswith(
        "error: --from must be a beaver-db file (a path or sqlite:///path), not postgresql://castor:***@")
    assert "s3cret" not in server.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    garbage = move(app_dir, "--from", str(text), "--to", postgres_db_url)
    assert garbage.returncode == 3 and garbage.stderr.startswith(f"error: cannot use {text}: "), garbage.stderr
    usage = move(app_dir, "--from", str(text))
    assert usage.returncode == 2 and "Missing option '--to'" in usage.stderr
