"""`castord tasks …` for real: the CLI as a subprocess on a real database."""

from __future__ import annotations

import io
import json

import pytest

import castor
from castord import admin
from tests.process.test_castord import run_cli

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def stocked(app_dir):
    """A database with a success, a failure (with a traceback) and a pending task."""
    import testapp

    ok = testapp.add.delay(2, 3)
    bad = testapp.boom.delay("it broke")
    castor.Worker(testapp.manager, mode="process").run(until_idle=True)
    waiting = testapp.add.apply_async((1, 1), countdown=3600, queue="later")
    return testapp, ok, bad, waiting


def cli_json(app_dir, *args):
    out = run_cli(app_dir, "tasks", *args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_list_and_filters(app_dir, stocked):
    _, ok, bad, waiting = stocked
    rows = cli_json(app_dir, "list", "testapp:manager")  # not a terminal: JSON
    assert [r["id"] for r in rows] == [waiting.id, bad.id, ok.id]
    failed = cli_json(app_dir, "list", "testapp:manager", "--status", "failed")
    assert [(r["id"], r["error"]) for r in failed] == [(bad.id, "builtins.ValueError: it broke")]
    assert [r["id"] for r in cli_json(app_dir, "list", "testapp:manager", "--queue", "later")] == [waiting.id]
    assert cli_json(app_dir, "list", "testapp:manager", "--dirty") == []
    assert len(cli_json(app_dir, "list", "testapp:manager", "--limit", "1")) == 1
    wrong = run_cli(app_dir, "tasks", "list", "testapp:manager", "--status", "done")
    assert wrong.returncode == 2 and "'done' is not one of" in wrong.stderr


def test_show_and_unknown_ids(app_dir, stocked):
    _, ok, bad, _ = stocked
    shown = cli_json(app_dir, "show", "testapp:manager", bad.id)
    assert shown["args"] == ["it broke"] and shown["status"] == "failed" and shown["attempts"] == 1
    assert "ValueError: it broke" in shown["error"]["traceback"]
    assert cli_json(app_dir, "show", "testapp:manager", ok.id)["result"] == 5
    missing = run_cli(app_dir, "tasks", "show", "testapp:manager", "no-such-id")
    assert missing.returncode == 5 and "no task no-such-id" in missing.stderr


def test_retry_cancel_purge_stats(app_dir, stocked):
    testapp, ok, bad, waiting = stocked
    refused = run_cli(app_dir, "tasks", "retry", "testapp:manager", ok.id)
    assert refused.returncode == 6 and "only failed or cancelled" in refused.stderr
    assert run_cli(app_dir, "tasks", "retry", "testapp:manager").returncode == 2
    done = run_cli(app_dir, "tasks", "retry", "testapp:manager", bad.id)
    assert done.returncode == 0 and bad.status() == "pending"
    castor.Worker(testapp.manager, mode="process").run(until_idle=True)  # fails again
    assert run_cli(app_dir, "tasks", "retry", "testapp:manager", "--failed").stdout.strip() == \
        "retried 1 failed task"

    cancelled = run_cli(app_dir, "tasks", "cancel", "testapp:manager", waiting.id)
    assert cancelled.returncode == 0 and waiting.status() == "cancelled"
    again = run_cli(app_dir, "tasks", "cancel", "testapp:manager", waiting.id)
    assert again.returncode == 6 and "already finished" in again.stderr
    assert run_cli(app_dir, "tasks", "cancel", "testapp:manager", "nope").returncode == 5

    stats = cli_json(app_dir, "stats", "testapp:manager")
    assert stats["counts"]["success"] == 1 and stats["counts"]["cancelled"] == 1
    assert stats["counts"]["pending"] == 1 and stats["oldest_due_wait_s"] is not None

    bad_duration = run_cli(app_dir, "tasks", "purge", "testapp:manager", "--older-than", "soon")
    assert bad_duration.returncode == 2 and "is not a duration" in bad_duration.stderr
    kept = run_cli(app_dir, "tasks", "purge", "testapp:manager", "--older-than", "1h")
    assert kept.stdout.strip() == "purged 0 tasks"
    purged = run_cli(app_dir, "tasks", "purge", "testapp:manager", "--older-than", "0s", "--status", "success")
    assert purged.stdout.strip() == "purged 1 task" and testapp.manager.get(ok.id) is None
    assert bad.status() == "pending"  # never purged while unfinished


def test_bad_app_exits_3(app_dir):
    out = run_cli(app_dir, "tasks", "list", "nosuchmodule:manager")
    assert out.returncode == 3 and "nosuchmodule" in out.stderr


def test_tables_on_a_terminal(stocked):
    from rich.console import Console

    _, ok, bad, _ = stocked
    console = Console(file=io.StringIO(), width=200, force_terminal=False)
    console.print(admin.render_list([admin.summary(bad.info()), admin.summary(ok.info())]))
    console.print(admin.render_detail(admin.detail(bad.info())))
    text = console.file.getvalue()
    assert bad.id in text and "failed" in text and "builtins.ValueError: it broke" in text
    assert "Traceback (most recent call last)" in text


def test_parse_duration():
    assert [admin.parse_duration(t) for t in ("90", "90s", "15m", "12h", "7d", "2w", "1.5h")] == [
        90, 90, 900, 43200, 604800, 1209600, 5400]
    with pytest.raises(ValueError, match="not a duration"):
        admin.parse_duration("7 days")


def test_run_now_and_run_again(app_dir, stocked):
    testapp, ok, bad, waiting = stocked
    made_due = run_cli(app_dir, "tasks", "run-now", "testapp:manager", waiting.id)
    assert made_due.returncode == 0 and made_due.stdout.strip() == f"{waiting.id}: due now (pending)"
    again = run_cli(app_dir, "tasks", "run-now", "testapp:manager", waiting.id)
    assert again.returncode == 6 and "is due already" in again.stderr
    assert run_cli(app_dir, "tasks", "run-now", "testapp:manager", "nope").returncode == 5

    copied = run_cli(app_dir, "tasks", "run-again", "testapp:manager", ok.id)
    assert copied.returncode == 0, copied.stderr
    copy_id = copied.stdout.strip().rsplit(" ", 2)[-2]
    assert copied.stdout.strip() == f"ran {ok.id} again as {copy_id} (pending)"
    assert testapp.manager.store.get(copy_id).options["rerun_of"] == ok.id
    pending = run_cli(app_dir, "tasks", "run-again", "testapp:manager", copy_id)
    assert pending.returncode == 6 and "only a finished task" in pending.stderr
    assert run_cli(app_dir, "tasks", "run-again", "testapp:manager", "nope").returncode == 5
