"""Workflows through the library API (docs/workflows.md): link/link_error, chains, groups and
chords, run by workers stepped in-process, on the beaver file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
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

    @manager.task(mode="thread", name="nap")
    def nap(value, seconds):
        time.sleep(seconds)
        return value

    @manager.task(mode="thread", name="total")
    def total(values, extra=0):
        return sum(values) + extra


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


# -- groups and chords ------------------------------------------------------------------


def test_a_group_joins_as_its_results_in_order_whatever_order_they_end_in(app) -> None:
    nap = task(app, "nap")
    n = 8
    sleeps = [0.02 * i for i in range(n)]
    random.Random(16).shuffle(sleeps)
    workflow = castor.group(nap.s(i, sleeps[i]) for i in range(n)).delay()  # a generator
    assert workflow.kind == "group" and [len(step) for step in workflow.steps] == [n]
    assert [t.status() for t in workflow.tasks] == ["pending"] * n
    Worker(app, mode="thread", threads=n).run(until_idle=True)
    assert workflow.join(timeout=10) == list(range(n))
    ended = sorted(range(n), key=lambda i: workflow.tasks[i].info().finished_at)
    assert ended != list(range(n))  # they did end out of order
    assert workflow.status() == "success"


def test_the_spellings_of_a_group(app) -> None:
    add = task(app, "add")
    listed = castor.group([add.s(1, 1), add.s(2, 2)]).delay()
    nested = castor.group(add.s(1, 1), castor.group(add.s(2, 2), add.s(3, 3))).delay()  # flattened
    alone = castor.group(add.s(5, 5)).delay()
    drain(app)
    assert listed.join(timeout=5) == [2, 4]
    assert nested.join(timeout=5) == [2, 4, 6] and [len(s) for s in nested.steps] == [3]
    assert alone.join(timeout=5) == [10]  # a group's result is a list, even of one


def test_a_group_fails_at_once_naming_its_failed_members_and_its_siblings_keep_running(app) -> None:
    add, boom, nap = task(app, "add"), task(app, "boom"), task(app, "nap")
    workflow = castor.group(boom.s("a"), add.s(1, 2), boom.s("b"), nap.s("late", 0)).delay()
    first, second, third, fourth = workflow.tasks
    claimed = app.store.claim_task(first.id, "test", lease=30.0, now=time.time())
    assert claimed is not None
    Worker(app, mode="thread", owner="test").run_claimed(claimed)
    with pytest.raises(castor.GroupFailed) as failed:
        workflow.join(timeout=5)  # at once: the others have not even started
    assert [(m.id, m.name, m.error_type) for m in failed.value.failed] == [(first.id, "boom", "builtins.KeyError")]
    assert failed.value.workflow_id == workflow.id and first.id in str(failed.value)
    assert [t.status() for t in (second, third, fourth)] == ["pending"] * 3
    drain(app)  # the siblings run
    assert (second.join(0), fourth.join(0), third.status()) == (3, "late", "failed")
    with pytest.raises(castor.GroupFailed) as again:
        workflow.join(timeout=5)
    assert [m.id for m in again.value.failed] == [first.id, third.id]  # every member failed by now
    assert "2 of its 4 members failed" in str(again.value)
    assert workflow.status() == "failed"


def test_group_failed_carries_the_first_hundred_failed_members_and_counts_the_rest(app) -> None:
    boom = task(app, "boom")
    workflow = castor.group(boom.s(i) for i in range(103)).delay()
    drain(app)
    with pytest.raises(castor.GroupFailed) as failed:
        workflow.join(timeout=5)
    assert [m.id for m in failed.value.failed] == [t.id for t in workflow.tasks[:100]]
    assert failed.value.more_failed == 3
    assert "103 of its 103 members failed so far" in str(failed.value) and "and 93 more" in str(failed.value)


def test_a_cancelled_member_cancels_its_group(app) -> None:
    add = task(app, "add")
    workflow = castor.group(add.s(1, 1), add.s(2, 2)).delay()
    workflow.tasks[1].cancel()
    drain(app)
    with pytest.raises(castor.WorkflowCancelled) as cancelled:
        workflow.join(timeout=5)
    assert cancelled.value.member_id == workflow.tasks[1].id and workflow.tasks[1].id in str(cancelled.value)
    assert workflow.tasks[0].join(0) == 2  # left to finish


def test_cancelling_a_group_stops_its_members(app) -> None:
    add = task(app, "add")
    workflow = castor.group(add.s(i, i) for i in range(50)).delay()
    assert workflow.cancel() == "cancelled"
    assert {t.status() for t in workflow.tasks} == {"cancelled"}
    with pytest.raises(castor.WorkflowCancelled):
        workflow.join(timeout=5)


def test_a_chord_calls_back_with_the_results_in_order(app) -> None:
    nap, total = task(app, "nap"), task(app, "total")
    workflow = castor.chord([nap.s(i, 0.01 * (5 - i)) for i in range(5)], total.s(100)).delay()
    assert workflow.kind == "chord" and [len(s) for s in workflow.steps] == [5, 1]
    assert workflow.last.status() == "waiting"
    Worker(app, mode="thread", threads=5).run(until_idle=True)
    drain(app)
    assert workflow.join(timeout=10) == 110
    assert workflow.last.join(0) == 110 and workflow.last.info().attempts == 1
    grouped = castor.chord(castor.group(nap.s("a", 0), nap.s("b", 0)), task(app, "sorted_list").s()).delay()
    drain(app)
    assert grouped.join(timeout=5) == ["a", "b"]


def test_a_chord_fails_naming_every_failed_member_and_never_calls_back(app) -> None:
    add, boom, total = task(app, "add"), task(app, "boom"), task(app, "total")
    workflow = castor.chord([boom.s(1), add.s(1, 2), boom.s(2)], total.s()).delay()
    drain(app)
    with pytest.raises(castor.ChordFailed) as failed:
        workflow.join(timeout=5)
    assert isinstance(failed.value, castor.GroupFailed)
    assert [(m.id, m.name, m.error_type) for m in failed.value.failed] == [
        (workflow.tasks[0].id, "boom", "builtins.KeyError"), (workflow.tasks[2].id, "boom", "builtins.KeyError")]
    callback = workflow.last
    assert callback.status() == "cancelled" and callback.error["type"] == "castor.errors.WorkflowStopped"
    assert callback.info().started_at is None
    assert workflow.status() == "failed"


def test_a_chords_failing_callback_raises_its_own_exception(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    workflow = castor.chord([add.s(1, 2), add.s(3, 4)], boom.s()).delay()
    drain(app)
    with pytest.raises(KeyError, match=r"\[3, 7\]"):
        workflow.join(timeout=5)


def test_a_group_inside_a_chain_feeds_the_next_link_a_list(app) -> None:
    add, total = task(app, "add"), task(app, "total")
    workflow = castor.chain(add.s(1, 2), castor.group(add.s(10), add.s(20)), total.s()).delay()
    assert [len(s) for s in workflow.steps] == [1, 2, 1]
    drain(app)
    assert workflow.join(timeout=5) == 13 + 23
    const = task(app, "const")
    piped = (add.s(1, 1) | castor.group(add.s(1), add.s(2)) | castor.chord([add.s([0])], const.s())).delay()
    drain(app)
    assert piped.tasks[3].join(0) == [3, 4, 0]
    assert piped.join(timeout=5) == [[3, 4, 0]]
    single = castor.chain(add.s(1, 1), castor.group(add.s(1)), add.s(1)).delay()  # a group of one is its member
    drain(app)
    assert single.join(timeout=5) == 4


def test_a_group_inside_a_chain_that_fails_raises_group_failed(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    workflow = castor.chain(add.s(1, 2), castor.group(boom.s(), add.s(1)), add.s([9])).delay()
    drain(app)
    with pytest.raises(castor.GroupFailed) as failed:
        workflow.join(timeout=5)
    assert [m.id for m in failed.value.failed] == [workflow.tasks[1].id]
    assert workflow.tasks[3].status() == "cancelled"


def test_a_group_resolves_under_asyncio(app) -> None:
    add = task(app, "add")
    workflow = castor.group(add.s(1, 1), add.s(2, 2)).delay()

    async def main() -> list[int]:
        waiter = asyncio.create_task(workflow.resolve(timeout=10))
        await asyncio.to_thread(drain, app)
        return await waiter

    assert asyncio.run(main()) == [2, 4]


def test_eager_mode_runs_groups_and_chords_inline(url: str) -> None:
    manager = castor.Manager(url, eager=True)
    _define(manager)
    try:
        add, total = task(manager, "add"), task(manager, "total")
        assert castor.group(add.s(1, 2), add.s(3, 4)).delay().join(timeout=1) == [3, 7]
        assert castor.chord([add.s(1, 2), add.s(3, 4)], total.s()).delay().join(timeout=1) == 10
    finally:
        manager.close()


@pytest.mark.parametrize(("build", "message"), [
    (lambda add: castor.group(), "at least one signature"),
    (lambda add: castor.group([]), "at least one signature"),
    (lambda add: castor.group(add.s(1, 1), add), "takes signatures"),
    (lambda add: castor.group(add.s(1, 1), castor.chain(add.s(1, 1), add.s(1))), "a chain inside a group"),
    (lambda add: castor.group(castor.chord([add.s(1, 1)], add.s(1))), "a chord inside a group"),
    (lambda add: castor.chord([], add.s(1)), "at least one signature"),
    (lambda add: castor.chord([add.s(1, 1)], castor.group(add.s(1))), "callback is one signature"),
    (lambda add: castor.group(add.s(1, 1), add.s(1, 2).set(unique=True)).delay(), "unique= is not allowed"),
    (lambda add: castor.chord([add.s(1, 1)], add.s(1).set(cache_ttl=60)).delay(), "cache_ttl= is not allowed"),
    (lambda add: castor.chord([add.s(1, 1)], add.s(1).set(countdown=5)).delay(), "the first step only"),
    (lambda add: castor.chain(add.s(1, 1), castor.group(add.s(1).set(eta=time.time()))).delay(),
     "the first step only"),
])
def test_groups_and_chords_built_wrong_are_refused_with_the_fix(app, build, message: str) -> None:
    with pytest.raises(castor.ConfigurationError, match=message):
        build(task(app, "add"))
    assert app.counts() == dict.fromkeys(app.counts(), 0)  # nothing was stored


def test_a_workflows_end_wakes_its_joiner(app) -> None:
    """join() waits on the workflow's topic: its end must move it (on PostgreSQL a
    notification of a task topic nobody said it hears is dropped, and the joiner then
    woke only at its 0.5 s re-check)."""
    import threading

    from castor.store.base import task_topic

    add = task(app, "add")
    workflow = castor.chain(add.s(1, 2), add.s(3)).delay()
    store = app.store
    topic = task_topic(workflow.id)
    with store.hearing(topic):
        seen = store.generation(topic)
        worker = threading.Thread(target=drain, args=(app,))
        worker.start()
        moved = seen
        deadline = time.monotonic() + 30
        while workflow.status() != "success" and time.monotonic() < deadline:
            moved = store.wait_for_change(moved, 1.0, topic)
        worker.join(timeout=30)
        assert workflow.status() == "success"
        assert store.wait_for_change(seen, 10.0, topic) != seen  # the end moved the topic
    assert workflow.join(timeout=5) == 6
