"""At-least-once delivery on PostgreSQL under SIGKILL, with real castords (issue 14 §3).

The SQLite originals are test_castord.py's `test_sigkill_the_master_under_load_then_restart`
and `test_sigkill_a_process_child_mid_task`. Here every run of a task is written down
(n and the pid that ran it), so the test can say which tasks ran twice and check that
each of them was held by a process that was killed, and no other.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
from collections import defaultdict
from pathlib import Path

import pytest

import castor
from tests.conftest import wait_until
from tests.process.leftovers import in_session, kill_together
from tests.process.test_castord import Castord, daemons, marker_pids  # noqa: F401 - fixture

LOADAPP = '''
import os, time
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])
RUNS = os.environ["CASTOR_TEST_RUNS"]


def _record(n):
    with open(RUNS, "a") as f:  # one short append per run: lines never interleave
        f.write(f"{n} {os.getpid()}\\n")
    time.sleep(0.01)  # long enough that a kill finds work in hand
    return n * 2


@manager.task(mode="process", name="precord")
def precord(n):
    return _record(n)


@manager.task(mode="thread", name="trecord")
def trecord(n):
    return _record(n)


@manager.task(mode="thread", name="thold")
def thold(marker):
    first = not os.path.exists(marker)
    with open(marker, "a") as f:
        f.write(f"{os.getpid()}\\n")
    if first:
        time.sleep(60)  # the test kills the thread host meanwhile
    return "rerun"
'''

PER_MODE = 300
# A short lease, so that a killed castord's claims expire soon (6 s: the shortest
# castord takes with these heartbeat settings).
SHORT_LEASE = ("--lease", "6", "--heartbeat-interval", "0.5", "--heartbeat-timeout", "1.5")


@pytest.fixture
def loadapp(app_dir: Path, postgres_db_url: str, monkeypatch: pytest.MonkeyPatch):
    (app_dir / "loadapp.py").write_text(textwrap.dedent(LOADAPP))
    monkeypatch.setenv("CASTOR_TEST_DB", postgres_db_url)
    monkeypatch.setenv("CASTOR_TEST_RUNS", str(app_dir / "runs.log"))
    sys.modules.pop("loadapp", None)
    import loadapp

    yield loadapp
    loadapp.manager.close()
    sys.modules.pop("loadapp", None)


def enqueue_load(app) -> list[castor.Task]:
    return (app.precord.map([(n,) for n in range(PER_MODE)])
            + app.trecord.map([(n,) for n in range(PER_MODE, 2 * PER_MODE)]))


def runs_by_n(app_dir: Path) -> dict[int, list[int]]:
    """Each task's runs, in order: n -> the pids that ran it."""
    runs: dict[int, list[int]] = defaultdict(list)
    for line in (app_dir / "runs.log").read_text().splitlines():
        n, pid = line.split()
        runs[int(n)].append(int(pid))
    return runs


def child_pids(d: Castord) -> set[int]:
    return {e["child_pid"] for e in d.events("child.spawned")}


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {status: n for status, n in counts.items() if n}


def assert_all_succeeded_once(tasks: list[castor.Task]) -> None:
    assert [t.join(timeout=60) for t in tasks] == [2 * n for n in range(2 * PER_MODE)]
    assert all(t.status() == "success" for t in tasks)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("victims", ["master", "every process"])
def test_sigkill_castord_under_load_then_restart(loadapp, app_dir, daemons, victims):  # noqa: F811
    tasks = enqueue_load(loadapp)
    first = daemons("first").start("--workers", "2", "--threads", "2", *SHORT_LEASE, app="loadapp:manager")
    first.wait_note("READY=1", timeout=30)
    wait_until(lambda: loadapp.manager.count("success") >= 50, 30, "some tasks to finish")
    doomed = {p.pid for p in in_session(first.pid)}  # the master, its fork server, its children
    if victims == "master":
        first.signal(signal.SIGKILL)  # its children find the master gone and leave on their own
    else:  # all at once, as the kernel's OOM killer or cgroup.kill do
        kill_together(doomed)
    first.wait_exit(10)
    wait_until(lambda: not in_session(first.pid), 30, "every process of the killed castord to end")

    held = {t.id for t in loadapp.manager.tasks("running", limit=None)}
    assert held, "the kill found no task in hand: the test proved nothing"
    assert loadapp.manager.count("pending") > 0, "the load was over before the kill"
    second = daemons("second").start("--workers", "2", "--threads", "2", *SHORT_LEASE, app="loadapp:manager")
    second.wait_note("READY=1", timeout=30)
    assert_all_succeeded_once(tasks)

    first_pids = child_pids(first)
    runs = runs_by_n(app_dir)
    assert sorted(runs) == list(range(2 * PER_MODE))  # every task ran
    for n, pids in runs.items():
        if len(pids) > 1:  # run again only if a killed process held it, and then once more
            assert tasks[n].id in held and len(pids) == 2, (n, pids)
            assert pids[0] in first_pids and pids[1] in child_pids(second), (n, pids)
        if tasks[n].id not in held:
            assert len(pids) == 1 and tasks[n].attempts == 1, (n, pids, tasks[n].attempts)
    assert nonzero(loadapp.manager.counts()) == {"success": 2 * PER_MODE}
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0


@pytest.mark.timeout(120)
def test_sigkill_every_child_under_load_while_the_master_lives(loadapp, app_dir, daemons):  # noqa: F811
    tasks = enqueue_load(loadapp)
    d = daemons().start("--workers", "2", "--threads", "2", *SHORT_LEASE, app="loadapp:manager")
    d.wait_note("READY=1", timeout=30)
    wait_until(lambda: loadapp.manager.count("success") >= 50, 30, "some tasks to finish")
    victims = child_pids(d)
    assert len(victims) == 3  # two process children and the thread host
    kill_together(victims)  # one by one, the master could requeue a task a sibling then runs
    for pid in victims:
        d.wait_event("child.exited", child_pid=pid, timeout=30)
    assert loadapp.manager.count("pending") > 0, "the load was over before the kill"
    assert_all_succeeded_once(tasks)  # the master requeued them at once: no lease to wait out

    replacements = child_pids(d) - victims
    assert len(replacements) == 3
    for n, pids in runs_by_n(app_dir).items():
        # A task runs again only after a run in a killed child, once; the last run finished it.
        assert len(pids) <= 2 and all(pid in victims for pid in pids[:-1]), (n, pids)
    returned = sum(e["tasks_returned"] for e in d.events("child.exited") if e["child_pid"] in victims)
    assert returned > 0
    assert nonzero(loadapp.manager.counts()) == {"success": 2 * PER_MODE}
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0


@pytest.mark.timeout(90)
def test_thread_tasks_of_a_killed_thread_host_rerun_alone_then_castord_drains(loadapp, app_dir, daemons):  # noqa: F811
    d = daemons().start("--workers", "0", "--threads", "2", *SHORT_LEASE, app="loadapp:manager")
    d.wait_note("READY=1", timeout=30)
    markers = [app_dir / f"thold{i}.marker" for i in range(2)]
    tasks = [loadapp.thold.delay(str(m)) for m in markers]
    wait_until(lambda: all(marker_pids(m) for m in markers), 30, "both tasks to start")
    host = marker_pids(markers[0])[0]
    os.kill(host, signal.SIGKILL)
    # Two ran side by side: neither is blamed, each runs again alone.
    assert [t.join(timeout=30) for t in tasks] == ["rerun", "rerun"]
    assert [t.lost for t in tasks] == [0, 0]
    assert {e["task_id"] for e in d.events("task.isolated")} == {t.id for t in tasks}
    d.signal(signal.SIGTERM)
    assert d.wait_exit(30) == 0  # the solo runs left the pool's bookkeeping square
