"""SPEC §3 under adversity: a task is never lost once `.delay()` returned, whatever
is interrupted or stalled, and a stalled owner never runs a task beside itself.

Each test here was written against a fault found by trying castor from outside
(issue 11) and failed on the code before its fix.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import textwrap
from pathlib import Path

import pytest

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
    import sys

    script = tmp_path / "producer.py"
    script.write_text(FORK_PRODUCER)
    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", str(script), db_path, "40"],
                         capture_output=True, text=True, timeout=110,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "failures=0" in out.stdout, out.stdout + out.stderr
