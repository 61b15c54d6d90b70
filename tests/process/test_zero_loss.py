"""SPEC §3 under adversity: a task is never lost once `.delay()` returned, whatever
is interrupted or stalled, and a stalled owner never runs a task beside itself.

Each test here was written against a fault found by trying castor from outside
(issue 11) and failed on the code before its fix.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from tests import clockstep
from tests.conftest import wait_until
from tests.process.test_castord import Castord

INTERRUPT_APP = '''
import os, time
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])
IDS = os.environ["CASTOR_TEST_IDS"]

@manager.task(mode="thread", name="noop")
def noop(n):
    return n

@manager.task(mode="thread", name="producer")
def producer(rounds):
    # Every id .delay() returned is written down: each must be in the file afterwards.
    out = []
    for i in range(rounds):
        out.append(noop.delay(i).id)
    with open(IDS, "a") as f:
        f.write("".join(i + "\\n" for i in out))
    return len(out)

@manager.task(mode="thread", name="doomed", timeout=0.02)
def doomed():
    # Stopped by its timeout while it is (almost always) inside castor's store code.
    while True:
        manager.enqueue_many([noop.s(-1) for _ in range(20)])

@manager.task(mode="thread", name="cancel_me")
def cancel_me():
    while True:
        manager.enqueue_many([noop.s(-2) for _ in range(20)])
'''


def _app(app_dir: Path, text: str, name: str) -> str:
    (app_dir / f"{name}.py").write_text(textwrap.dedent(text))
    sys.modules.pop(name, None)  # each test imports its own copy (the last one's Manager is closed)
    return f"{name}:manager"


def _ids_in_file(db_path: str) -> set[str]:
    conn = sqlite3.connect(db_path)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM castor_tasks")}
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_interrupting_a_thread_task_inside_the_store_loses_no_other_task(app_dir, db_path, monkeypatch):
    ids = app_dir / "ids.txt"
    monkeypatch.setenv("CASTOR_TEST_IDS", str(ids))
    app = _app(app_dir, INTERRUPT_APP, "interruptapp")
    import interruptapp

    d = Castord(app_dir)
    try:
        d.start("--workers", "0", "--threads", "6", app=app,
                env={"CASTOR_TEST_IDS": str(ids)})
        d.wait_note("READY=1")
        producers = [interruptapp.producer.delay(300) for _ in range(6)]
        doomed = [interruptapp.doomed.delay() for _ in range(30)]
        cancelled = [interruptapp.cancel_me.delay() for _ in range(5)]
        for task in cancelled:
            wait_until(lambda t=task: str(t.status()) == "running", 60, "cancel_me to start")
            task.cancel()
        for task in producers:
            assert task.join(timeout=90) == 300
        for task in doomed + cancelled:
            wait_until(lambda t=task: t, 60, "every interrupted task to finish")
        assert all(str(t.status()) == "failed" for t in doomed)
        assert all(str(t.status()) == "cancelled" for t in cancelled)
        returned = set(ids.read_text().split())
        assert len(returned) >= 6 * 300  # a producer run twice (at least once) writes more
        missing = returned - _ids_in_file(db_path)
        assert not missing, f"{len(missing)} ids returned by .delay() are not in the database"
        assert not d.events("child.exited"), "the thread host died"
    finally:
        d.stop()
        interruptapp.manager.close()


FORK_PRODUCER = '''
import os, signal, sys, threading, time
import castor

manager = castor.Manager(sys.argv[1], lock_timeout=3)

@manager.task(mode="thread", name="noop")
def noop(n):
    return n

stop = threading.Event()

def write_all_the_time():
    while not stop.is_set():
        manager.enqueue_many([noop.s(i) for i in range(200)])

writers = [threading.Thread(target=write_all_the_time) for _ in range(2)]
for w in writers:
    w.start()
failures = 0
for i in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:  # a web server's worker, forked with --preload
        signal.alarm(15)  # a child stuck for good dies of SIGALRM: a failure, not a hang
        try:
            task = noop.delay(i)
            os._exit(0 if manager.get(task.id) is not None else 2)
        except BaseException as exc:
            print(f"child {i}: {type(exc).__name__}: {exc}", flush=True)
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"child {i} exited {os.waitstatus_to_exitcode(status)}", flush=True)
        failures += 1
stop.set()
for w in writers:
    w.join()
print(f"failures={failures}", flush=True)
'''


@pytest.mark.timeout(120)
def test_a_child_forked_while_another_thread_writes_can_enqueue(tmp_path, db_path):
    import subprocess

    script = tmp_path / "producer.py"
    script.write_text(FORK_PRODUCER)
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(script), db_path, "40"],
                         capture_output=True, text=True, timeout=110,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failures=0" in out.stdout, out.stdout + out.stderr


STALL_APP = '''
import os, time
import castor

manager = castor.Manager(os.environ["CASTOR_TEST_DB"])

@manager.task(mode="thread", name="long_thread")
def long_thread(marker, steps):
    # Counts its own running time in steps: a stopped process does not advance it.
    with open(marker, "a") as f:
        f.write(f"start {os.getpid()}\\n")
    for _ in range(steps):
        time.sleep(0.05)
    with open(marker, "a") as f:
        f.write(f"end {os.getpid()}\\n")
    return "done"

@manager.task(mode="process", name="long_process")
def long_process(marker, steps):
    return long_thread.fn(marker, steps)

@manager.task(mode="thread", name="innocent")
def innocent(marker, steps):
    return long_thread.fn(marker, steps)

@manager.task(mode="thread", name="culprit")
def culprit(marker):
    with open(marker, "a") as f:
        f.write(f"start {os.getpid()}\\n")
    time.sleep(0.3)
    os._exit(1)  # takes its thread host down, and whatever ran beside it
'''

# A lease castord accepts with these heartbeats, short enough to wait out.
FAST = ("--heartbeat-interval", "0.25", "--heartbeat-timeout", "1.5", "--lease", "6")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _child_pid(d: Castord, label: str) -> int:
    return [e for e in d.events("child.spawned") if e["child"] == label][-1]["child_pid"]


def _stop_outside_a_write(pid: int, db_path: str) -> None:
    """SIGSTOP `pid` at a moment it holds no write transaction on the file: a process
    stopped inside one (a lease renewal) keeps SQLite's one write lock while it is
    stopped, and no other worker can then write at all, recovery included (that is
    SQLite's nature, not what the test is about). Stopped, the file must take a write;
    if not, it runs on until the lock is free, and is stopped again."""
    def takes_a_write(timeout: float) -> bool:
        conn = sqlite3.connect(db_path, timeout=timeout, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:  # locked: by the stopped process, or another's moment
            return False
        finally:
            conn.close()

    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if takes_a_write(0.5):
            return
        os.kill(pid, signal.SIGCONT)
        takes_a_write(10)  # until it has let go
    pytest.fail(f"process {pid} held the database's write lock at each of 100 stops")


def _row(db_path: str, task_id: str) -> dict:
    conn = sqlite3.connect(db_path)
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM castor_tasks WHERE id = ?", (task_id,)).fetchone())
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_a_stalled_thread_worker_that_reclaims_its_own_task_stops_the_old_attempt(app_dir, db_path, processes):
    # Plain workers (python -m castor): no master to kill the stalled one, so that
    # the same live process claims the task again once it resumes.
    app = _app(app_dir, STALL_APP, "stallapp")
    import stallapp

    marker = app_dir / "stall.marker"
    try:
        stalled = processes.worker(app, "--mode", "thread", "--threads", "4", "--lease", "2")
        processes.worker(app, "--mode", "process", "--lease", "2")  # recovers expired leases
        task = stallapp.long_thread.delay(str(marker), 200)  # ~10 s of its own running time
        wait_until(lambda: _lines(marker), 30, "the task to start")
        _stop_outside_a_write(stalled.pid, db_path)  # a long pause, a slow disk, a paused VM
        try:
            wait_until(lambda: _row(db_path, task.id)["status"] == "pending", 60, "the lease to be recovered")
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        assert task.join(timeout=60) == "done"
        row = _row(db_path, task.id)
        assert row["status"] == "success" and row["lost"] == 1 and row["attempts"] == 2 and row["fence"] == 2
        starts = [line for line in _lines(marker) if line.startswith("start")]
        ends = [line for line in _lines(marker) if line.startswith("end")]
        # Both attempts ran in the one live process; the first, which would have ended
        # first, was stopped when its renewal found the lease gone.
        assert {line.split()[1] for line in starts} == {str(stalled.pid)} and len(starts) == 2, _lines(marker)
        assert len(ends) == 1, _lines(marker)
    finally:
        stallapp.manager.close()


@pytest.mark.timeout(120)
def test_a_thread_task_that_kills_its_host_takes_the_blame_alone(app_dir, db_path):
    app = _app(app_dir, STALL_APP, "stallapp")
    import stallapp

    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "4", *FAST, app=app)
        d.wait_note("READY=1")
        markers = [app_dir / f"innocent{i}.marker" for i in range(3)]
        innocents = [stallapp.innocent.delay(str(m), 20) for m in markers]  # ~1 s each
        wait_until(lambda: all(_lines(m) for m in markers), 30, "the innocent tasks to start")
        culprit = stallapp.culprit.delay(str(app_dir / "culprit.marker"))
        for task in innocents:
            assert task.join(timeout=60) == "done"
            assert task.lost == 0  # ran beside a crash: never blamed for it
        wait_until(lambda: culprit, 60, "the culprit to end")
        assert str(culprit.status()) == "failed"
        assert culprit.error["type"] == "castor.errors.WorkerLost"
        assert culprit.lost == 3
        assert d.proc.poll() is None  # castord lives on
        assert d.events("task.isolated")
    finally:
        d.stop()
        stallapp.manager.close()


class SteppedClock:
    """The host's wall clock, stepped by the test in every process it starts (tests/clockstep.py)."""

    def __init__(self, app_dir: Path, monkeypatch: pytest.MonkeyPatch):
        import time

        self.path = app_dir / "clock.offset"
        clockstep.set_offset(self.path, 0.0)
        (app_dir / "sitecustomize.py").write_text(clockstep.sitecustomize("CASTOR_TEST_CLOCK_FILE"))
        monkeypatch.setenv("CASTOR_TEST_CLOCK_FILE", str(self.path))
        real = time.time
        # The test's own process (the producer) steps with the host.
        monkeypatch.setattr(time, "time", lambda: real() + clockstep.read_offset(self.path))

    def step(self, seconds: float) -> None:
        clockstep.set_offset(self.path, clockstep.read_offset(self.path) + seconds)


@pytest.mark.timeout(120)
def test_a_backward_clock_step_does_not_delay_tasks_enqueued_before_it(app_dir, db_path, monkeypatch):
    clock = SteppedClock(app_dir, monkeypatch)
    app = _app(app_dir, STALL_APP, "stallapp")
    import stallapp

    markers = [app_dir / f"before{i}.marker" for i in range(3)]
    before = [stallapp.long_process.delay(str(m), 1) for m in markers]
    clock.step(-3600)
    later = stallapp.long_process.apply_async((str(app_dir / "countdown.marker"), 1), countdown=600)
    d = Castord(app_dir)
    try:
        d.start("--workers", "1", "--threads", "1", *FAST, app=app)
        d.wait_note("READY=1")
        after = stallapp.long_process.delay(str(app_dir / "after.marker"), 1)
        for task in [*before, after]:
            assert task.join(timeout=30) == "done"
        assert str(later.status()) == "pending"  # its countdown is an hour and ten minutes off now
    finally:
        d.stop()
        stallapp.manager.close()


@pytest.mark.timeout(120)
def test_a_forward_clock_step_does_not_start_a_live_task_a_second_time(app_dir, db_path, monkeypatch):
    clock = SteppedClock(app_dir, monkeypatch)
    app = _app(app_dir, STALL_APP, "stallapp")
    import stallapp

    d = Castord(app_dir)
    try:
        d.start("--workers", "2", "--threads", "2", *FAST, app=app)
        d.wait_note("READY=1")
        markers = {mode: app_dir / f"{mode}.marker" for mode in ("process", "thread")}
        tasks = [stallapp.long_process.delay(str(markers["process"]), 160),  # ~8 s
                 stallapp.long_thread.delay(str(markers["thread"]), 160)]
        wait_until(lambda: all(_lines(m) for m in markers.values()), 30, "both tasks to start")
        clock.step(3600)
        for task in tasks:
            assert task.join(timeout=60) == "done"
            assert task.attempts == 1 and task.lost == 0
        for marker in markers.values():
            assert len(_lines(marker)) == 2, _lines(marker)  # one start, one end
    finally:
        d.stop()
        stallapp.manager.close()
