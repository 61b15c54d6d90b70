"""Workflows under a real castord (docs/workflows.md): a chain of process and thread tasks,
with a JSON link feeding a pickle link, run to its end; a chain that fails raises its
failing link's own exception; a chord of process and thread members calls back with their
results in order, and one with failing members raises ChordFailed naming them; and the
commands that refuse workflow members.

The chain and chord tests run on the beaver file and on PostgreSQL (pg_testapp points
testapp there).
"""

from __future__ import annotations

import os

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import daemons, run_cli  # noqa: F401 - fixture
from tests.process.test_postgresql_castord import pg_testapp  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(120)

APP = "testapp:manager"


def _pickled_tadd() -> tuple[castor.Manager, castor.TaskFunction]:
    """testapp's thread task `tadd`, called through a Manager that pickles: castord's
    worker runs testapp's own function, decoding this call with the serializer it names."""
    manager = castor.Manager(os.environ["CASTOR_TEST_DB"], serializer="pickle")

    @manager.task(mode="thread", name="tadd")
    def tadd(a, b):  # only its name and mode count here: castord runs testapp's
        return a + b

    return manager, tadd


def _a_mixed_chain_runs_to_its_end(daemons):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "1", "--threads", "2")
    d.wait_note("READY=1", timeout=30)
    pickled, ptadd = _pickled_tadd()
    try:
        # process (json) | thread (json) | thread (pickle) | process (json)
        workflow = (testapp.add.s([1], [2]) | testapp.tadd.s([10]) | ptadd.s([100])
                    | testapp.add.s([1000])).delay()
        assert [t.info().serializer for t in workflow.tasks] == ["json", "json", "pickle", "json"]
        assert workflow.join(timeout=60) == [1, 2, 10, 100, 1000]
        pickled_link = workflow.tasks[2].info()
        assert isinstance(pickled_link.result, bytes)  # stored pickled, read back by the JSON link after it
        assert workflow.tasks[2].join(0) == [1, 2, 10, 100]
        assert workflow.status() == "success"
        assert [t.info().mode for t in workflow.tasks] == ["process", "thread", "thread", "process"]
    finally:
        pickled.close()


def _join_raises_the_failing_links_exception(daemons):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "1", "--threads", "1")
    d.wait_note("READY=1", timeout=30)
    workflow = castor.chain(testapp.tadd.s(1, 2), testapp.boom.si("the second link broke"),
                            testapp.add.s(1)).delay()
    with pytest.raises(ValueError, match="the second link broke"):
        workflow.join(timeout=60)
    first, failing, last = workflow.tasks
    assert (first.status(), failing.status(), last.status()) == ("success", "failed", "cancelled")
    assert last.error["type"] == "castor.errors.WorkflowStopped" and failing.id in last.error["message"]
    assert last.info().started_at is None  # never ran
    linked = testapp.add.apply_async((2, 3), link=testapp.tadd.s(10))
    assert linked.join(timeout=60) == 5
    assert linked.workflow is not None and linked.workflow.join(timeout=60) == 15


def _a_mixed_chord_calls_back(daemons):  # noqa: F811
    import testapp

    d = daemons().start("--workers", "2", "--threads", "2")
    d.wait_note("READY=1", timeout=30)
    # members: process, thread, process, thread; the callback a thread task: tadd(results, [99])
    header = [testapp.add.s([i], [i]) if i % 2 == 0 else testapp.tadd.s([i], [i]) for i in range(20)]
    workflow = castor.chord(header, testapp.tadd.s([99])).delay()
    assert workflow.join(timeout=90) == [[i, i] for i in range(20)] + [99]
    assert {t.info().mode for t in workflow.steps[0]} == {"process", "thread"}
    assert workflow.last.info().attempts == 1 and workflow.status() == "success"
    grouped = castor.group(testapp.add.s(1, 2), testapp.tadd.s(3, 4)).delay()
    assert grouped.join(timeout=60) == [3, 7]

    failing = castor.chord([testapp.boom.s("first"), testapp.tadd.s(1, 2), testapp.boom.s("second")],
                           testapp.tadd.s([0])).delay()
    wait_until(lambda: failing.tasks[0].status() == failing.tasks[2].status() == "failed", 60,
               "both failing members to fail")
    with pytest.raises(castor.ChordFailed) as failed:
        failing.join(timeout=60)
    assert [(m.id, m.name, m.error_type) for m in failed.value.failed] == [
        (failing.tasks[0].id, "boom", "builtins.ValueError"), (failing.tasks[2].id, "boom", "builtins.ValueError")]
    assert failing.last.status() == "cancelled" and failing.last.info().started_at is None
    assert failing.tasks[1].join(timeout=60) == 3  # a sibling keeps running


def test_a_chord_of_process_and_thread_tasks_runs_under_castord(daemons):  # noqa: F811
    _a_mixed_chord_calls_back(daemons)


def test_a_chord_of_process_and_thread_tasks_runs_under_castord_on_postgresql(pg_testapp, daemons):  # noqa: F811
    _a_mixed_chord_calls_back(daemons)


def test_a_chain_of_process_and_thread_tasks_runs_under_castord(daemons):  # noqa: F811
    _a_mixed_chain_runs_to_its_end(daemons)


def test_a_chain_of_process_and_thread_tasks_runs_under_castord_on_postgresql(pg_testapp, daemons):  # noqa: F811
    _a_mixed_chain_runs_to_its_end(daemons)


def test_a_failing_link_raises_its_own_exception_under_castord(daemons):  # noqa: F811
    _join_raises_the_failing_links_exception(daemons)


def test_a_failing_link_raises_its_own_exception_under_castord_on_postgresql(pg_testapp, daemons):  # noqa: F811
    _join_raises_the_failing_links_exception(daemons)


def test_the_cli_refuses_to_retry_a_member(app_dir):
    import testapp

    testapp.manager.eager = True
    try:
        workflow = castor.chain(testapp.boom.s("x"), testapp.add.s(1)).delay()
    finally:
        testapp.manager.eager = False
    failed = workflow.tasks[0]
    assert failed.status() == "failed"
    out = run_cli(app_dir, "tasks", "retry", APP, failed.id)
    assert out.returncode == 6, out
    assert f"error: task {failed.id} is a member of workflow {workflow.id}" in out.stderr
    assert failed.status() == "failed"


def test_move_refuses_while_the_file_holds_unfinished_workflows(app_dir, db_path, postgres_db_url):
    import testapp

    workflow = castor.chain(testapp.add.s(1, 2), testapp.add.s(1)).delay()
    out = run_cli(app_dir, "move", "--from", db_path, "--to", postgres_db_url)
    assert out.returncode == 6, out
    assert f"{db_path} holds 1 unfinished workflow(s)" in out.stderr and "Let them finish" in out.stderr
    assert workflow.tasks[0].status() == "pending"  # nothing moved
    workflow.cancel()
    moved = run_cli(app_dir, "move", "--from", db_path, "--to", postgres_db_url)
    assert moved.returncode == 0, moved


def test_the_cli_cancels_a_workflow_by_its_id(app_dir):
    import testapp

    workflow = castor.chain(testapp.add.s(1, 2), testapp.add.s(1)).delay()
    out = run_cli(app_dir, "tasks", "cancel", APP, workflow.id)
    assert out.returncode == 0 and f"{workflow.id}: cancelled" in out.stdout, out
    assert [t.status() for t in workflow.tasks] == ["cancelled", "cancelled"]
