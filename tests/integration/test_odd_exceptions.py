"""A task raising a hostile exception (tests/hostile.py) ends `failed` with a
readable record, through the real paths in this process: Worker.step() in both
modes, eager .delay(), and a retried task's attempts; the worker goes on.
(tests/process/test_odd_exceptions.py does the same through a real castord.)"""

from __future__ import annotations

from typing import Any

import pytest

import castor
from castor.errors import JoinTimeout, TaskFailed
from castor.failures import class_path, safe_text
from tests import hostile
from tests.unit.test_odd_exceptions import check_record


class Escaped(Exception):  # noqa: N818 - it names what happened
    """What escaped a castor call, by name only: pytest itself cannot print a
    hostile exception chained to a failure."""


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    escaped = None
    try:
        return fn(*args, **kwargs)
    except BaseException as err:  # noqa: BLE001
        escaped = f"{class_path(type(err))}: {safe_text(err)}"
    raise Escaped(escaped)  # outside the except: no chain to the hostile exception


MODES = ["process", "thread"]
KINDS = sorted(hostile.KINDS)

def register(manager: castor.Manager, mode: str, **options: Any) -> tuple[Any, Any]:
    @manager.task(mode=mode, name=f"boom_{mode}", **options)
    def boom(kind: str) -> None:
        hostile.raise_kind(kind)

    @manager.task(mode=mode, name=f"double_{mode}")
    def double(x: int) -> int:
        return 2 * x

    return boom, double


def check_failed(task: castor.Task[Any], kind: str, attempts: int = 1) -> None:
    assert task.status() == "failed"
    record = check_record(task.error)
    assert record["type"].endswith(hostile.qualname(hostile.CLASSES[kind])[-200:])
    assert hostile.KINDS[kind].__name__ in record["traceback"]
    assert task.attempts == attempts
    raised: BaseException | None = None
    try:
        task.join(timeout=5)
    except BaseException as exc:  # noqa: BLE001 - whatever the task raised, rebuilt
        raised = exc
    assert raised is not None and type(raised) is not JoinTimeout
    assert type(raised) in (TaskFailed, hostile.CLASSES[kind])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_worker_step_fails_the_task_and_goes_on(manager, mode, kind):
    boom, double = register(manager, mode)
    task = boom.delay(kind)
    worker = castor.Worker(manager, mode=mode)
    assert call(worker.step)
    check_failed(task, kind)
    after = double.delay(21)
    assert worker.step()
    assert after.join(timeout=5) == 42


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_eager_delay_fails_the_task_and_goes_on(db_path, mode, kind):
    manager = castor.Manager(db_path, eager=True)
    try:
        boom, double = register(manager, mode)
        task = call(boom.delay, kind)  # never raises: the failure is stored
        check_failed(task, kind)
        assert double.delay(4).join(timeout=5) == 8
    finally:
        manager.close()


RETRIED = ["str_raises", "str_not_a_string", "args_raise", "weird_module_object", "meta_hostile",
           "getattr_hostile", "long_chain", "group"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", RETRIED)
def test_every_attempt_of_a_retried_task_is_recorded(db_path, kind):
    manager = castor.Manager(db_path, eager=True)  # eager runs the retries at once
    try:
        boom, _ = register(manager, "process", retries=2)
        task = call(boom.delay, kind)
        check_failed(task, kind, attempts=3)
        history = task.history
        assert len(history) == 3 and all(h["type"] == task.error["type"] for h in history)
        assert all(type(h["message"]) is str for h in history)
    finally:
        manager.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", RETRIED)
def test_retry_on_matches_a_hostile_exception(manager, kind):
    boom, double = register(manager, "thread", retries=1, retry_on=(ValueError,), retry_delay=0)
    task = boom.delay(kind)
    worker = castor.Worker(manager, mode="thread")
    assert call(worker.step)
    while not task:  # retry_delay=0: a retry is due at once
        assert call(worker.step)
    expected = 2 if issubclass(hostile.CLASSES[kind], ValueError) else 1
    check_failed(task, kind, attempts=expected)
    after = double.delay(1)
    assert worker.step() and after.join(timeout=5) == 2


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("result", sorted(hostile.RESULTS))
def test_a_result_that_fights_serialization_fails_the_task(manager, mode, result):
    @manager.task(mode=mode, name=f"returns_{mode}")
    def returns(which: str) -> object:
        return hostile.RESULTS[which]()

    task = returns.delay(result)
    worker = castor.Worker(manager, mode=mode)
    assert call(worker.step)
    assert task.status() == "failed"
    record = check_record(task.error)
    assert record["type"] == "castor.errors.SerializationError" and "not json-serializable" in record["message"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("eager", [False, True])
@pytest.mark.parametrize("raised", [hostile.Hostile, GeneratorExit, KeyboardInterrupt])
def test_a_task_raising_a_base_exception_is_settled(db_path, eager, raised):
    """step() and eager .delay() may pass a BaseException on (a Ctrl+C should stop the
    caller), but never with the task left running."""
    manager = castor.Manager(db_path, eager=eager)
    try:
        @manager.task(mode="process", name="base")
        def base() -> None:
            raise raised("from the task")

        try:
            if eager:
                call(base.delay)
            else:
                base.delay()
                call(castor.Worker(manager, mode="process").step)
        except Escaped as escaped:
            assert class_path(raised) in str(escaped)
        [task] = manager.tasks()
        assert task is not None and task.status() == "failed"
        assert check_record(task.error)["type"] == class_path(raised)
    finally:
        manager.close()


@pytest.mark.timeout(60)
def test_castord_tasks_show_and_list_print_a_message_that_looks_like_markup(db_path):
    import io

    from rich.console import Console

    from castord import admin

    manager = castor.Manager(db_path, eager=True)
    try:
        boom, _ = register(manager, "process")
        task = boom.delay("markup_message")
        record = manager.store.get(task.id)
        assert record is not None
        out = io.StringIO()
        console = Console(file=out, width=200, color_system=None)
        console.print(admin.render_detail(admin.detail(record)))
        console.print(admin.render_list([admin.summary(record)]))
        assert out.getvalue().count("[/] [bold]not markup[/bold]") >= 2
    finally:
        manager.close()
