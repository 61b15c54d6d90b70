"""Pausing a task name under a real castord, from the shell: `castord tasks pause|resume
APP --name NAME`. The same test runs on the beaver file and on PostgreSQL."""

from __future__ import annotations

import json

import pytest

from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

APP = "testapp:manager"


def _paused_name_waits_and_resume_runs_it(daemons, app_dir):  # noqa: F811
    import testapp

    paused = run_cli(app_dir, "tasks", "pause", APP, "--name", "add")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused task name add", paused.stderr
    again = run_cli(app_dir, "tasks", "pause", APP, "--name", "add")
    assert again.returncode == 0 and again.stdout.strip() == "task name add was paused already"

    pidfile = app_dir / "castord.pid"
    d = daemons().start("--workers", "1", "--threads", "0", "--pidfile", str(pidfile))
    d.wait_note("READY=1", timeout=30)
    # Same queue, same priority, `held` first: a claim that did not skip the paused
    # name would take it first. One child: its claims come one after another.
    held = testapp.add.delay(1, 1)
    assert testapp.slow.delay(0).join(timeout=30) == 0
    assert held.status() == "pending"

    report = json.loads(run_cli(app_dir, "status", "--pidfile", str(pidfile), "--json").stdout)
    assert report["paused_names"] == ["add"] and report["paused_queues"] == []
    status = run_cli(app_dir, "status", "--pidfile", str(pidfile))
    assert "paused task names (not claimed): add" in status.stdout, status.stdout
    stats = json.loads(run_cli(app_dir, "tasks", "stats", APP).stdout)
    assert stats["paused_names"] == ["add"]

    resumed = run_cli(app_dir, "tasks", "resume", APP, "--name", "add")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "resumed task name add", resumed.stderr
    assert held.join(timeout=30) == 2
    not_paused = run_cli(app_dir, "tasks", "resume", APP, "--name", "add")
    assert not_paused.returncode == 0 and not_paused.stdout.strip() == "task name add was not paused"


def test_a_paused_name_waits_and_resume_runs_it(daemons, app_dir):  # noqa: F811
    _paused_name_waits_and_resume_runs_it(daemons, app_dir)


def test_a_paused_name_waits_and_resume_runs_it_on_postgresql(pg_testapp, daemons, app_dir):  # noqa: F811
    _paused_name_waits_and_resume_runs_it(daemons, app_dir)


def test_name_pause_refuses_bad_input(app_dir):
    for command in ("pause", "resume"):
        both = run_cli(app_dir, "tasks", command, APP, "default", "--name", "add")
        assert both.returncode == 2 and "give a QUEUE or --name NAME, not both" in both.stderr
        empty = run_cli(app_dir, "tasks", command, APP, "--name", "")
        assert empty.returncode == 2 and "give a task name" in empty.stderr
        neither = run_cli(app_dir, "tasks", command, APP)
        assert neither.returncode == 2 and "Missing argument 'QUEUE'" in neither.stderr
        no_app = run_cli(app_dir, "tasks", command, "no_such_module:manager", "--name", "add")
        assert no_app.returncode == 3 and no_app.stderr.startswith("error: ")
