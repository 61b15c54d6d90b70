"""The interrupt-deferral rule (castor/interrupts.py) and a store that survives
whatever lands mid-transaction."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from castor import interrupts
from castor.store.base import NewTask
from castor.store.sqlite import SQLiteStore
from tests.conftest import REPO, wait_until


class Stop(Exception):
    pass


def spin(seconds: float) -> None:
    # In its own frame: CPython 3.13.0 lets an asynchronous exception raised in a
    # loop skip the handlers of that loop's own frame.
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


def new(task_id: str) -> NewTask:
    now = time.time()
    return NewTask(id=task_id, name="t", mode="process", serializer="json", args="[]", kwargs="{}",
                   enqueued_at=now, eta=now)


@pytest.mark.timeout(30)
def test_an_interruption_waits_until_the_thread_leaves_the_shield():
    inside, release, outcome = threading.Event(), threading.Event(), []
    box: list[interrupts.Guard] = []

    def target() -> None:
        box.append(interrupts.guard())
        try:
            with interrupts.shielded():
                inside.set()
                release.wait(10)
                outcome.append("finished the shielded work")
            outcome.append("not reached")
        except Stop:
            outcome.append("stopped on the way out")

    thread = threading.Thread(target=target)
    thread.start()
    assert inside.wait(10)
    box[0].interrupt(Stop)
    release.set()
    thread.join(10)
    assert outcome == ["finished the shielded work", "stopped on the way out"]


@pytest.mark.timeout(30)
def test_an_unshielded_thread_is_interrupted_at_once():
    started, outcome = threading.Event(), []
    box: list[interrupts.Guard] = []

    def target() -> None:
        box.append(interrupts.guard())
        try:
            started.set()
            spin(20)
            outcome.append("ran to the end")
        except Stop:
            outcome.append("stopped")

    thread = threading.Thread(target=target)
    thread.start()
    assert started.wait(10)
    box[0].interrupt(Stop)
    thread.join(15)
    assert outcome == ["stopped"]


@pytest.mark.timeout(30)
def test_an_interruption_aimed_just_before_the_shield_is_taken_back_and_raised_after():
    # The interrupter fires while the thread spins outside; the thread then enters
    # at once. Either it was stopped before entering, or the shielded block ran
    # whole and the exception came after it: never inside.
    for _ in range(200):
        go, record = threading.Event(), []
        box: list[interrupts.Guard] = []

        def target(go: threading.Event = go, record: list[str] = record,
                   box: list[interrupts.Guard] = box) -> None:
            box.append(interrupts.guard())
            try:
                go.wait(5)
                with interrupts.shielded():
                    record.append("in")
                    spin(0.001)
                    record.append("out")
            except Stop:
                record.append("stop")

        thread = threading.Thread(target=target)
        thread.start()
        wait_until(lambda box=box: box, 5, "the guard")
        go.set()
        box[0].interrupt(Stop)
        thread.join(5)
        assert record in (["in", "out", "stop"], ["stop"]), record


@pytest.mark.timeout(30)
def test_ctrl_c_inside_castor_code_is_raised_as_it_leaves():
    script = """
import os, signal
from castor import interrupts
interrupts.guard()  # the main thread's guard puts in castor's SIGINT handler
steps = []
try:
    with interrupts.shielded():
        os.kill(os.getpid(), signal.SIGINT)
        sum(range(100000))
        steps.append("shielded work done")
except KeyboardInterrupt:
    steps.append("KeyboardInterrupt after")
print(steps)
try:
    os.kill(os.getpid(), signal.SIGINT)
    sum(range(10**7))
except KeyboardInterrupt:
    print("unshielded: at once")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20,
                         env={"PYTHONPATH": str(REPO)})
    assert out.stdout.splitlines() == ["['shielded work done', 'KeyboardInterrupt after']",
                                       "unshielded: at once"], out.stdout + out.stderr


@pytest.mark.timeout(30)
def test_a_transaction_left_open_on_the_shared_connection_is_rolled_back_not_joined(db_path):
    store = SQLiteStore(db_path)
    try:
        store.enqueue([new("before")])
        conn = store._connection()  # noqa: SLF001
        conn.execute("BEGIN IMMEDIATE")  # as if a thread died between BEGIN and COMMIT
        conn.execute("DELETE FROM castor_tasks WHERE id = 'before'")
        store.enqueue([new("after")])  # another thread's .delay()
        other = sqlite3.connect(db_path)
        ids = {r[0] for r in other.execute("SELECT id FROM castor_tasks")}
        other.close()
        assert ids == {"before", "after"}  # committed, and the stray delete undone
    finally:
        store.close()


@pytest.mark.timeout(30)
def test_an_exception_inside_a_write_transaction_leaves_the_connection_usable(db_path):
    store = SQLiteStore(db_path)
    try:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM castor_tasks")
            raise KeyboardInterrupt

        store.enqueue([new("kept")])
        with pytest.raises(KeyboardInterrupt):
            with store._locked() as conn:  # noqa: SLF001
                store._write_txn(conn, body)  # noqa: SLF001
        assert not store._connection().in_transaction  # noqa: SLF001
        store.enqueue([new("next")])
        assert store.get("kept") is not None and store.get("next") is not None
    finally:
        store.close()
