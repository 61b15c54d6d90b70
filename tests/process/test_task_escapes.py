"""Task code that leaves its process in ways castord did not plan: it forks, or it exits
with a status castord uses for itself.

castord must stop within its graceful timeout and leave no process of a child's
group behind; a task's own exit status is a crash, whatever the number.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

import castor
from tests.conftest import wait_until
from tests.process.leftovers import alive, in_groups, in_session
from tests.process.test_castord import daemons, marker_pids  # noqa: F401 - fixture

ESCAPEAPP = '''
import os, subprocess, sys, time
from testapp import manager

def _note(marker):
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")

@manager.task(mode="process", name="fork_then_sys_exit")
def fork_then_sys_exit(marker):
    # The forked copy leaves through sys.exit, which task code may catch... and so
    # may castor, which then carries on in the copy as if it were the child.
    if os.fork() == 0:
        _note(marker)
        sys.exit(0)
    return "parent"

@manager.task(mode="process", name="fork_a_sleeper")
def fork_a_sleeper(marker):
    if os.fork() == 0:
        _note(marker)
        time.sleep(3600)
        os._exit(0)
    return "parent"

@manager.task(mode="process", name="fork_an_escapee")
def fork_an_escapee(marker):
    # Out of our process group and session: castord cannot (and does not) chase it.
    if os.fork() == 0:
        os.setsid()
        _note(marker)
        time.sleep(3600)
        os._exit(0)
    return "parent"

@manager.task(mode="thread", name="spawn_a_sleeper")
def spawn_a_sleeper(marker):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    with open(marker, "a") as f:
        f.write(f"{proc.pid}\\n")
    return "spawned"

@manager.task(mode="process", name="noted")
def noted(marker, n):
    _note(marker)
    return n

@manager.task(mode="process", name="exit_with")
def exit_with(code):
    os._exit(code)

@manager.task(mode="thread", name="texit_with")
def texit_with(code):
    os._exit(code)
'''

GRACEFUL_TIMEOUT = 3.0
SLACK = 15.0


@pytest.fixture
def escape(app_dir: Path):
    (app_dir / "escapeapp.py").write_text(textwrap.dedent(ESCAPEAPP))
    sys.modules.pop("escapeapp", None)
    import escapeapp

    yield escapeapp
    sys.modules.pop("escapeapp", None)


def child_pids(d) -> set[int]:
    return {e["child_pid"] for e in d.events("child.spawned")}


def stop_within_graceful_timeout(d) -> None:
    d.signal(signal.SIGTERM)
    started = time.monotonic()
    assert d.wait_exit(GRACEFUL_TIMEOUT + SLACK) == 0
    assert time.monotonic() - started < GRACEFUL_TIMEOUT + SLACK


def assert_groups_empty(d) -> None:
    """No live process in any child's process group, nor anywhere in castord's session."""
    groups = child_pids(d)
    deadline = time.monotonic() + 10
    while (left := in_groups(groups, d.pid) + in_session(d.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"left behind: {left}"


def start(daemons, *extra: str):  # noqa: F811
    d = daemons().start("--workers", "1", "--threads", "1", "--graceful-timeout", str(GRACEFUL_TIMEOUT),
                        *extra, app="escapeapp:manager")
    d.wait_note("READY=1")
    return d


@pytest.mark.timeout(60)
def test_a_fork_that_leaves_through_sys_exit_does_not_outlive_castord(daemons, app_dir, escape):  # noqa: F811
    d = start(daemons)
    marker = app_dir / "forked.marker"
    assert escape.fork_then_sys_exit.delay(str(marker)).join(timeout=15) == "parent"
    forked = wait_until(lambda: marker_pids(marker), 15, "the fork to run")[0]  # type: ignore[index]
    work = app_dir / "work.marker"
    assert [t.join(timeout=15) for t in escape.noted.map([(str(work), n) for n in range(20)])] == list(range(20))
    stop_within_graceful_timeout(d)
    assert_groups_empty(d)
    assert not alive(forked)


@pytest.mark.timeout(60)
def test_a_fork_that_leaves_through_sys_exit_claims_no_task(daemons, app_dir, escape):  # noqa: F811
    d = start(daemons)
    marker = app_dir / "forked.marker"
    assert escape.fork_then_sys_exit.delay(str(marker)).join(timeout=15) == "parent"
    forked = wait_until(lambda: marker_pids(marker), 15, "the fork to run")[0]  # type: ignore[index]
    # The fork leaves as soon as its task returns (or it would go on claiming tasks).
    wait_until(lambda: not alive(forked), 10, "the fork to leave", interval=0.05)
    work = app_dir / "work.marker"
    assert [t.join(timeout=15) for t in escape.noted.map([(str(work), n) for n in range(20)])] == list(range(20))
    strangers = set(marker_pids(work)) - child_pids(d)
    assert not strangers, f"tasks ran outside castord's children: {strangers}"
    stop_within_graceful_timeout(d)


@pytest.mark.timeout(60)
def test_processes_a_task_leaves_running_die_with_castord(daemons, app_dir, escape):  # noqa: F811
    d = start(daemons)
    forked, spawned = app_dir / "forked.marker", app_dir / "spawned.marker"
    assert escape.fork_a_sleeper.delay(str(forked)).join(timeout=15) == "parent"
    assert escape.spawn_a_sleeper.delay(str(spawned)).join(timeout=15) == "spawned"
    sleepers = [wait_until(lambda m=m: marker_pids(m), 15, "a sleeper to start")[0]  # type: ignore[index]
                for m in (forked, spawned)]
    assert all(alive(pid) for pid in sleepers)
    stop_within_graceful_timeout(d)
    assert_groups_empty(d)
    assert not any(alive(pid) for pid in sleepers)


@pytest.mark.timeout(60)
def test_a_fork_that_leaves_the_process_group_does_not_hold_castords_exit(daemons, app_dir, escape):  # noqa: F811
    # It held a copy of the pipe to the master's multiprocess resource tracker,
    # which the master waits for as it exits: castord never exited.
    d = start(daemons)
    marker = app_dir / "escapee.marker"
    assert escape.fork_an_escapee.delay(str(marker)).join(timeout=15) == "parent"
    escapee = wait_until(lambda: marker_pids(marker), 15, "the escapee to start")[0]  # type: ignore[index]
    try:
        stop_within_graceful_timeout(d)
    finally:
        os.kill(escapee, signal.SIGKILL)  # ours: the task made it for this test
    assert_groups_empty(d)


# Statuses castord's children use for themselves (3 boot failed, 4 castord's own
# "children keep failing", 5/6 timeout/cancel, 7 database error), and 0.
@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode,code", [("process", c) for c in (0, 3, 4, 5, 6, 7)] + [("thread", 7)])
def test_a_task_that_exits_with_castords_own_status_is_a_lost_worker(daemons, app_dir, escape, mode, code):  # noqa: F811
    d = start(daemons)
    task = (escape.exit_with if mode == "process" else escape.texit_with).delay(code)
    with pytest.raises(castor.WorkerLost):
        task.join(timeout=40)
    info = task.info()
    assert info.status == "failed" and info.attempts == 3 and info.lost == 3
    exits = d.wait_event("child.exited", count=3, exit_code=code)  # logged just after the requeue
    assert len(exits) == 3 and not any(e["expected"] for e in exits)
    # Not a boot failure or a database error: castord lives on and its children work.
    assert d.proc.poll() is None
    assert d.events("child.boot_failed") == [] and d.events("castord.boot_failures") == []
    assert escape.noted.delay(str(app_dir / "after.marker"), 1).join(timeout=15) == 1
    stop_within_graceful_timeout(d)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_lost", [1, 5])
def test_max_lost_sets_how_many_lost_workers_fail_a_task(daemons, app_dir, escape, max_lost):  # noqa: F811
    """castord --max-lost N: the task whose worker dies fails with WorkerLost at the Nth loss
    (the default, 3, is the test above)."""
    d = start(daemons, "--max-lost", str(max_lost))
    task = escape.exit_with.delay(7)
    with pytest.raises(castor.WorkerLost):
        task.join(timeout=50)
    info = task.info()
    assert info.status == "failed" and info.lost == max_lost and info.attempts == max_lost
    stop_within_graceful_timeout(d)


@pytest.mark.timeout(90)
def test_a_crash_amid_a_batch_of_short_tasks_is_blamed_on_its_culprit_alone(daemons, app_dir, escape):  # noqa: F811
    # A process child claims short tasks in batches (castor/worker.py, prefetch): when
    # it dies, the tasks claimed with the culprit are not blamed; each runs alone next,
    # and only the culprit, crashing alone, is counted lost until it fails WorkerLost.
    marker = str(app_dir / "batch.marker")
    before = escape.noted.map([(marker, i) for i in range(40)])
    culprit = escape.exit_with.delay(7)
    after = escape.noted.map([(marker, i) for i in range(40, 80)])
    d = start(daemons)
    with pytest.raises(castor.WorkerLost):
        culprit.join(timeout=60)
    assert culprit.info().lost == 3
    for handle in before + after:
        assert handle.join(timeout=30) is not None
        info = handle.info()
        assert (info.status, info.lost) == ("success", 0), info
    stop_within_graceful_timeout(d)
