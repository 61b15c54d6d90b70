"""Pausing a queue under a real castord, from the shell: `castord tasks pause|resume`.

The same test runs on the beaver file and on PostgreSQL (pg_testapp points testapp there).
"""

from __future__ import annotations

import json

import pytest

from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(90)

APP = "testapp:manager"


def _paused_queue_waits_and_resume_runs_it(daemons, app_dir):  # noqa: F811
    import testapp

    paused = run_cli(app_dir, "tasks", "pause", APP, "default")
    assert paused.returncode == 0 and paused.stdout.strip() == "paused queue default", paused.stderr
    again = run_cli(app_dir, "tasks", "pause", APP, "default")
    assert again.returncode == 0 and again.stdout.strip() == "queue default was paused already"

    pidfile = app_dir / "castord.pid"
    d = daemons().start("--workers", "1", "--threads", "0", "--pidfile", str(pidfile))
    d.wait_note("READY=1", timeout=30)
    held = testapp.quick.delay(1)
    # Enqueued after `held`, with the same priority: a claim that did not skip the paused
    # queue would take `held` first. One child: its claims come one after another.
    assert testapp.quick.apply_async((2,), queue="other").join(timeout=30) == 2
    assert held.status() == "pending"

    stats = json.loads(run_cli(app_dir, "tasks", "stats", APP).stdout)
    assert stats["paused_queues"] == ["default"] and stats["queue_depth"] == {"default": 1}
    status = run_cli(app_dir, "status", "--pidfile", str(pidfile))
    assert "paused queues (not claimed from): default" in status.stdout, status.stdout
    report = json.loads(run_cli(app_dir, "status", "--pidfile", str(pidfile), "--json").stdout)
    assert report["paused_queues"] == ["default"]

    resumed = run_cli(app_dir, "tasks", "resume", APP, "default")
    assert resumed.returncode == 0 and resumed.stdout.strip() == "resumed queue default", resumed.stderr
    assert held.join(timeout=30) == 1
    not_paused = run_cli(app_dir, "tasks", "resume", APP, "default")
    assert not_paused.returncode == 0 and not_paused.stdout.strip() == "queue default was not paused"
    assert json.loads(run_cli(app_dir, "tasks", "stats", APP).stdout)["paused_queues"] == []


def test_a_paused_queue_waits_and_resume_runs_it(daemons, app_dir):  # noqa: F811
    _paused_queue_waits_and_resume_runs_it(daemons, app_dir)


def test_a_paused_queue_waits_and_resume_runs_it_on_postgresql(pg_testapp, daemons, app_dir):  # noqa: F811
    _paused_queue_waits_and_resume_runs_it(daemons, app_dir)


def test_pause_and_resume_refuse_bad_input(app_dir):
    for command in ("pause", "resume"):
        empty = run_cli(app_dir, "tasks", command, APP, "")
        assert empty.returncode == 2 and "give a queue name" in empty.stderr
        missing = run_cli(app_dir, "tasks", command, APP)
        assert missing.returncode == 2 and "Missing argument 'QUEUE'" in missing.stderr
        no_app = run_cli(app_dir, "tasks", command, "no_such_module:manager", "default")
        assert no_app.returncode == 3 and no_app.stderr.startswith("error: ")
