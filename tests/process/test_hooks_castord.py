"""Hooks through a real castord: the app module registers them, so castord's process
children, its thread host and its master (which imports the app too) fire them. Each
hook appends a JSON line (event, task id, pid) to a file this test reads back."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import castor
from tests.conftest import wait_until
from tests.process.test_castord import Castord

APP = textwrap.dedent('''
    import json, os, time
    import castor
    from castor.hooks import EVENTS

    manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

    def note(event):
        line = {"event": event.event, "task_id": event.task_id, "name": event.record.name,
                "status": str(event.record.status), "pid": os.getpid()}
        if event.event == "task.succeeded":
            line["result"] = event.result()
        if event.error:
            line["error"] = event.error.get("type")
        with open(os.environ["CASTOR_TEST_HOOKS"], "a") as f:  # O_APPEND: lines stay whole
            f.write(json.dumps(line) + "\\n")

    for name in EVENTS:
        manager.on(name, note)

    @manager.on("task.succeeded")
    def broken(event):
        raise RuntimeError("a hook's own bug")

    @manager.task(mode="process", name="padd")
    def padd(a, b):
        return a + b

    @manager.task(mode="thread", name="tadd")
    def tadd(a, b):
        return a + b

    @manager.task(mode="process", name="pboom", retries=1, retry_delay=0)
    def pboom(message):
        raise ValueError(message)

    @manager.task(mode="thread", name="tboom")
    def tboom(message):
        raise KeyError(message)

    @manager.task(mode="thread", name="tsleep")
    def tsleep(marker):
        open(marker, "w").close()
        for _ in range(600):
            time.sleep(0.1)  # the test cancels it meanwhile

    @manager.task(mode="process", name="psleep")
    def psleep(marker):
        open(marker, "w").close()
        time.sleep(60)  # the test cancels it meanwhile

    @manager.task(mode="process", name="crash_once")
    def crash_once(marker):
        if not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(60)  # the test SIGKILLs this child meanwhile
        return "second attempt"
''')


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def hooked(app_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    lines = app_dir / "hooks.jsonl"
    monkeypatch.setenv("CASTOR_TEST_HOOKS", str(lines))
    (app_dir / "hookedapp.py").write_text(APP)
    sys.modules.pop("hookedapp", None)
    import hookedapp  # noqa: PLC0415 - written just above

    daemon = Castord(app_dir)
    daemon.start("--workers", "1", "--threads", "2", app="hookedapp:manager")
    daemon.wait_note("READY=1")
    try:
        yield SimpleNamespace(app=hookedapp, lines=lines, daemon=daemon)
    finally:
        daemon.stop()
        hookedapp.manager.close()
        sys.modules.pop("hookedapp", None)


def ends(lines: list[dict[str, Any]], task_id: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["task_id"] == task_id and x["event"] not in ("task.enqueued", "task.started")]


@pytest.mark.timeout(90)
def test_hooks_fire_in_castords_process_child_and_thread_host(hooked: Any) -> None:
    app = hooked.app
    fine = [app.padd.delay(1, 2), app.tadd.delay(3, 4)]
    failing = [app.pboom.delay("card declined"), app.tboom.delay("no such key")]
    pending = app.padd.apply_async((0, 0), countdown=3600)
    assert pending.cancel() == "cancelled"
    assert [t.join(timeout=30) for t in fine] == [3, 7]
    for task in failing:
        with pytest.raises(Exception):  # noqa: B017 - TaskFailed or the task's own, rebuilt
            task.join(timeout=30)

    # Hooks fire after the commit that join() saw: wait for the lines of the last ones.
    everyone = [*fine, *failing, pending]
    lines = wait_until(lambda: (got := read_lines(hooked.lines)) and
                       sum(len(ends(got, t.id)) for t in everyone) >= 6 and got, 30, "every end event")
    me = os.getpid()
    enqueued = [x for x in lines if x["event"] == "task.enqueued"]
    assert sorted(x["task_id"] for x in enqueued) == sorted(t.id for t in everyone)
    assert {x["pid"] for x in enqueued} == {me}  # in the producer
    by_task = {t.id: ends(lines, t.id) for t in everyone}
    assert [[x["event"] for x in e] for e in by_task.values()] == [
        ["task.succeeded"], ["task.succeeded"], ["task.retried", "task.failed"], ["task.failed"],
        ["task.cancelled"]]
    assert [by_task[t.id][0]["result"] for t in fine] == [3, 7]
    assert by_task[failing[0].id][-1]["error"] == "builtins.ValueError"
    assert by_task[pending.id][0]["pid"] == me  # cancelled here, before any worker saw it
    process_pid, thread_pid = by_task[fine[0].id][0]["pid"], by_task[fine[1].id][0]["pid"]
    assert len({process_pid, thread_pid, me, hooked.daemon.pid}) == 4  # two children, neither us nor the master
    started = {x["task_id"]: x["pid"] for x in lines if x["event"] == "task.started"}
    assert started[fine[0].id] == process_pid and started[fine[1].id] == thread_pid
    assert pending.id not in started
    # The raising hook was logged once per call in the child, and changed nothing.
    failed_hooks = hooked.daemon.wait_event("hook.failed", count=2)
    assert {(e["hook_event"], e["task_id"]) for e in failed_hooks} == {("task.succeeded", t.id) for t in fine}


@pytest.mark.timeout(90)
def test_a_killed_childs_task_is_a_retry_fired_by_the_master(hooked: Any, app_dir: Path) -> None:
    """SIGKILL (the OOM killer's signal) leaves no worker to fire anything: the master,
    which takes the task back, fires task.retried (task.failed once out of chances)."""
    marker = app_dir / "crash.marker"
    task = hooked.app.crash_once.delay(str(marker))
    (started,) = wait_until(lambda: [x for x in read_lines(hooked.lines) if x["event"] == "task.started"],
                            15, "the task to start")
    wait_until(marker.exists, 15, "the task to reach its sleep")
    os.kill(started["pid"], signal.SIGKILL)
    assert task.join(timeout=30) == "second attempt"
    retried, succeeded = wait_until(lambda: len(got := ends(read_lines(hooked.lines), task.id)) >= 2 and got,
                                    30, "the task's end events")
    assert (retried["event"], retried["pid"], retried["status"]) == ("task.retried", hooked.daemon.pid, "pending")
    assert succeeded["event"] == "task.succeeded" and succeeded["pid"] not in (started["pid"], hooked.daemon.pid)


@pytest.mark.timeout(90)
def test_cancelling_a_running_task_fires_cancelled_in_its_worker(hooked: Any, app_dir: Path) -> None:
    """A running task's cancel is carried out by its worker: the thread host raises
    TaskCancelled in the task's thread; a process child records it, then leaves."""
    app, me = hooked.app, os.getpid()
    running = []
    for i, fn in enumerate((app.tsleep, app.psleep)):
        marker = app_dir / f"sleep-{i}.marker"
        running.append(fn.delay(str(marker)))
        wait_until(marker.exists, 15, f"{fn.name} to start")
    for task in running:
        task.cancel()
    for task in running:
        with pytest.raises(castor.TaskCancelled):
            task.join(timeout=30)
    lines = wait_until(lambda: all(ends(got := read_lines(hooked.lines), t.id) for t in running) and got,
                       30, "the cancelled events")
    started = {x["task_id"]: x["pid"] for x in lines if x["event"] == "task.started"}
    for task in running:
        (end,) = ends(lines, task.id)
        assert (end["event"], end["status"]) == ("task.cancelled", "cancelled")
        assert end["pid"] == started[task.id] and end["pid"] not in (me, hooked.daemon.pid)
