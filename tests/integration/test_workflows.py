"""Workflows through the library API (docs/workflows.md): link/link_error and chains, run by
workers stepped in-process, on the beaver file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing

import pytest

import castor
from castor import Worker


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, db_path: str) -> str:
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("postgres_db_url"))


def _define(manager: castor.Manager) -> None:
    """The app's tasks, registered on `manager` under fixed names (a second Manager with
    another serializer registers the same names: one worker runs them all)."""

    @manager.task(mode="thread", name="add")
    def add(a, b):
        return a + b

    @manager.task(mode="thread", name="boom")
    def boom(*args):
        raise KeyError(f"no {args}")

    @manager.task(mode="thread", name="as_set")
    def as_set(values, extra):
        return {*values, extra}  # not JSON: only a pickle link may return it

    @manager.task(mode="thread", name="sorted_list")
    def sorted_list(values):
        return sorted(values)

    @manager.task(mode="thread", name="report")
    def report(task_id, error):
        return [task_id, error["type"]]

    @manager.task(mode="thread", name="const")
    def const(value):
        return value


@pytest.fixture
def app(url: str):
    manager = castor.Manager(url)
    _define(manager)
    yield manager
    manager.close()


def drain(manager: castor.Manager) -> None:
    Worker(manager, mode="thread").run(until_idle=True)


def task(manager: castor.Manager, name: str) -> castor.TaskFunction:
    return manager.registry[name]


def test_a_chain_passes_each_result_on(app) -> None:
    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(10), add.s(100)).delay()
    assert workflow.kind == "chain" and workflow.status() == "running"
    assert [t.status() for t in workflow.tasks] == ["pending", "waiting", "waiting"]
    drain(app)
    assert workflow.join(timeout=5) == 113
    assert workflow.status() == "success"
    assert [t.join(0) for t in workflow.tasks] == [3, 13, 113]
    assert workflow.last == workflow.tasks[-1] == workflow.steps[2][0]


def test_the_pipe_spelling_and_si(app) -> None:
    add, const = task(app, "add"), task(app, "const")
    workflow = (add.s(1, 2) | const.si("fixed") | add.s("!")).delay()
    drain(app)
    assert workflow.join(timeout=5) == "fixed!"


def test_a_json_link_feeds_a_pickle_link(app, url: str) -> None:
    pickled = castor.Manager(url, serializer="pickle")
    _define(pickled)
    try:
        add, as_set, sorted_list = task(app, "add"), task(pickled, "as_set"), task(app, "sorted_list")
        workflow = castor.chain(add.s([1], [2]), as_set.s(3), sorted_list.s()).delay()
        assert [t.info().serializer for t in workflow.tasks] == ["json", "pickle", "json"]
        drain(app)
        assert workflow.tasks[1].join(0) == {1, 2, 3}
        assert workflow.join(timeout=5) == [1, 2, 3]
    finally:
        pickled.close()


def test_join_raises_the_failing_links_own_exception(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    workflow = castor.chain(add.s(1, 2), boom.s(), add.s(1)).delay()
    drain(app)
    with pytest.raises(KeyError, match="no"):
        workflow.join(timeout=5)
    assert workflow.status() == "failed"
    later = workflow.tasks[2]
    assert later.status() == "cancelled" and later.error["type"] == "castor.errors.WorkflowStopped"
    with pytest.raises(castor.TaskCancelled):
        later.join(0)


def test_cancelling_mid_chain(app) -> None:
    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(1), add.s(1)).delay()
    Worker(app, mode="thread").run(max_tasks=1)
    assert workflow.cancel() == "cancelled"
    assert [t.status() for t in workflow.tasks] == ["success", "cancelled", "cancelled"]
    with pytest.raises(castor.WorkflowCancelled):
        workflow.join(timeout=5)
    assert workflow.cancel() == "cancelled"  # left as it is


def test_manager_cancel_takes_a_workflow_id(app) -> None:
    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(1)).delay()
    assert app.cancel(workflow.id) == castor.TaskStatus.CANCELLED
    assert workflow.status() == "cancelled"
    with pytest.raises(castor.UnknownTaskError):
        app.cancel("no-such-id")


def test_join_times_out_and_resolve_awaits(app) -> None:
    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(1)).delay()
    with pytest.raises(castor.JoinTimeout, match=f"workflow {workflow.id} .chain. is still running"):
        workflow.join(timeout=0.2)

    async def main() -> int:
        waiter = asyncio.create_task(workflow.resolve(timeout=10))
        await asyncio.to_thread(drain, app)
        return await waiter

    assert asyncio.run(main()) == 4


def test_manager_get_finds_a_workflow_by_its_id(app) -> None:
    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(1)).delay()
    found = app.get(workflow.id)
    assert isinstance(found, castor.Workflow) and found == workflow and found.kind == "chain"
    member = app.get(workflow.tasks[0].id)
    assert isinstance(member, castor.Task) and member.workflow == workflow
    assert app.get("no-such-id") is None
    assert add.delay(1, 1).workflow is None


def test_link_gets_the_result_and_link_error_stays_unused(app) -> None:
    add, report = task(app, "add"), task(app, "report")
    handle = add.apply_async((1, 1), link=add.s(5), link_error=report.s())
    assert isinstance(handle, castor.Task)
    drain(app)
    assert handle.join(timeout=5) == 2
    workflow = handle.workflow
    assert workflow is not None and workflow.kind == "link"
    assert workflow.join(timeout=5) == 7
    assert workflow.handler is not None and workflow.handler.status() == "cancelled"


def test_link_error_gets_the_task_id_and_error(app) -> None:
    add, boom, report = task(app, "add"), task(app, "boom"), task(app, "report")
    handle = boom.s(1).apply_async(link=add.s(5), link_error=report.s())
    drain(app)
    with pytest.raises(KeyError):
        handle.join(timeout=5)
    workflow = handle.workflow
    assert workflow is not None and workflow.status() == "failed"
    assert workflow.handler is not None and workflow.handler.join(timeout=5) == [handle.id, "builtins.KeyError"]
    assert workflow.tasks[1].status() == "cancelled"


def test_a_member_is_not_retried_by_hand(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    workflow = castor.chain(boom.s(), add.s(1)).delay()
    plain = boom.delay()
    drain(app)
    failed = workflow.tasks[0]
    with pytest.raises(castor.WorkflowMemberRetry, match=f"member of workflow {workflow.id}"):
        failed.retry()
    with pytest.raises(castor.ConfigurationError, match="Enqueue the workflow again"):
        app.retry(workflow.tasks[1].id)
    with pytest.raises(castor.WorkflowMemberRetry, match="not run again by hand"):
        app.run_again(failed.id)
    assert [t.id for t in app.retry_failed()] == [plain.id]
    assert failed.status() == "failed"


def test_the_dashboard_offers_no_retry_for_a_member(app) -> None:
    from castor.webui.pages import actions_for

    boom = task(app, "boom")
    workflow = castor.chain(boom.s(), boom.s()).delay()
    plain = boom.delay()
    drain(app)
    assert [name for name, _ in actions_for(workflow.tasks[0].info(), 0)] == ["delete"]
    assert [name for name, _ in actions_for(workflow.tasks[1].info(), 0)] == ["delete"]
    assert "retry" in [name for name, _ in actions_for(plain.info(), 0)]
    waiting = castor.chain(boom.s(), boom.s()).delay().tasks[1]
    assert [name for name, _ in actions_for(waiting.info(), 0)] == ["cancel"]


def test_eager_mode_runs_a_workflow_inline(url: str) -> None:
    manager = castor.Manager(url, eager=True)
    _define(manager)
    try:
        add, boom, report = task(manager, "add"), task(manager, "boom"), task(manager, "report")
        assert castor.chain(add.s(1, 2), add.s(3)).delay().join(timeout=1) == 6
        handle = boom.apply_async((1,), link_error=report.s())
        assert handle.workflow is not None and handle.workflow.handler is not None
        assert handle.workflow.handler.join(timeout=1) == [handle.id, "builtins.KeyError"]
    finally:
        manager.close()


@pytest.mark.parametrize(("build", "message"), [
    (lambda add: castor.chain(), "at least one signature"),
    (lambda add: castor.chain(add.s(1, 2), add), "takes signatures"),
    (lambda add: castor.chain(add.s(1, 2), add.s(1).set(unique=True)).delay(), "unique= is not allowed"),
    (lambda add: castor.chain(add.s(1, 2), add.s(1).set(cache_ttl=60)).delay(), "cache_ttl= is not allowed"),
    (lambda add: castor.chain(add.s(1, 2), add.s(1).set(countdown=5)).delay(), "the first step only"),
    (lambda add: add.apply_async((1, 2), link=add), "link= takes a signature"),
    (lambda add: add.apply_async((1, 2), link_error="report"), "link_error= takes a signature"),
])
def test_workflows_built_wrong_are_refused_with_the_fix(app, build, message: str) -> None:
    with pytest.raises(castor.ConfigurationError, match=message):
        build(task(app, "add"))
    assert app.counts() == dict.fromkeys(app.counts(), 0)  # nothing was stored


def test_a_members_missing_input_fails_it_without_a_retry(db_path: str) -> None:
    manager = castor.Manager(db_path)
    _define(manager)
    try:
        add = task(manager, "add")
        workflow = castor.chain(add.s(1, 2), add.s(1).set(retries=3)).delay()
        Worker(manager, mode="thread").run(max_tasks=1)
        with closing(sqlite3.connect(db_path)) as conn:  # by hand, past castor's refusal to purge it
            conn.execute("DELETE FROM castor_tasks WHERE id = ?", (workflow.tasks[0].id,))
            conn.commit()
        drain(manager)
        (follow_up,) = workflow.tasks
        assert follow_up.status() == "failed" and follow_up.attempts == 1
        assert follow_up.error["type"] == "castor.errors.WorkflowInputMissing"
        assert workflow.status() == "failed"
    finally:
        manager.close()


def test_the_testing_drain_runs_a_whole_chain(app) -> None:
    from castor.testing import drain as run_all

    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(3), add.s(4)).delay()
    ran = run_all(app)
    assert [t.id for t in ran] == [t.id for t in workflow.tasks]
    assert workflow.join(timeout=1) == 10
