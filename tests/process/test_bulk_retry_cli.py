"""`castord tasks retry --failed` says how many workflow members it left, and why."""

from __future__ import annotations

import pytest

import castor
from tests.process.test_castord import run_cli

pytestmark = pytest.mark.timeout(60)


def test_a_bulk_retry_says_how_many_workflow_members_it_left(app_dir):
    import testapp

    workflow = castor.group(testapp.boom.s("a"), testapp.boom.s("b")).delay()
    plain = testapp.boom.delay("c")
    castor.Worker(testapp.manager, mode="process").run(until_idle=True)
    out = run_cli(app_dir, "tasks", "retry", "testapp:manager", "--failed")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (
        "retried 1 failed task; 2 workflow members left failed: a member is not retried by hand "
        "(it would run without the results before it); enqueue its workflow again")
    assert plain.status() == "pending" and {t.status() for t in workflow.tasks} == {"failed"}
