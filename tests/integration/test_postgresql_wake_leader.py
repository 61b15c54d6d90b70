"""A waiting thread reads its wake-ups itself (castor/store/pg_wakeup.py's LedGenerations):
the first waiter leads (reads the LISTEN connection, or a castord child's relay socket)
while it waits; others follow on their topics' conditions; the reading thread takes over
again when no one waits. A notification then reaches the thread that waits for it without
a hand-over between threads."""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

import pytest

from castor.store import open_store
from castor.store.base import task_topic, work_topic
from castor.store.pg_relay import RelayedListener
from tests.conftest import wait_until
from tests.contract.builders import new
from tests.contract.conftest import postgresql_location

psycopg = pytest.importorskip("psycopg")

LONG = 30.0
WORK = work_topic("process")


@pytest.fixture
def pair(request: pytest.FixtureRequest, postgres_url: str):
    """A listening store and a writing one on a fresh schema."""
    location = postgresql_location(request)
    listening, writing = open_store(location), open_store(location)
    yield listening, writing
    listening.close()
    writing.close()


def readers(listener: Any) -> list[tuple[str, int]]:
    """(topic, thread id) of each notification, as the thread that read it forwarded it."""
    seen: list[tuple[str, int]] = []
    listener.forward(lambda topic: seen.append((topic, threading.get_ident())) if topic is not None else None)
    return seen


@pytest.mark.timeout(60)
def test_a_waiter_reads_the_notification_it_waits_for_itself(pair):
    listening, writing = pair
    seen = listening.generation(WORK)
    listener = listening._ensure_listener()  # noqa: SLF001
    read_by = readers(listener)
    returned: list[int] = []
    waiter = threading.Thread(target=lambda: returned.append(listening.wait_for_change(seen, LONG, WORK)))
    waiter.start()
    wait_until(lambda: listener._leader is not None, LONG, "the waiter to lead")  # noqa: SLF001
    writing.enqueue([new("a", mode="process")])
    waiter.join(LONG)
    assert returned and returned[0] != seen
    assert read_by == [(WORK, waiter.ident)]  # read in the waiting thread, not handed over


@pytest.mark.timeout(60)
def test_a_second_waiter_follows_and_is_woken_by_the_leaders_read(pair):
    listening, writing = pair
    with listening.hearing(task_topic("t")):  # a joiner of "t" tracks its topic
        led_and_followed(listening, writing)


def led_and_followed(listening: Any, writing: Any) -> None:
    work_seen, task_seen = listening.generation(WORK), listening.generation(task_topic("t"))
    listener = listening._ensure_listener()  # noqa: SLF001
    results: dict[str, int] = {}
    leader = threading.Thread(target=lambda: results.update(work=listening.wait_for_change(work_seen, LONG, WORK)))
    leader.start()
    wait_until(lambda: listener._leader is not None, LONG, "the first waiter to lead")  # noqa: SLF001
    follower = threading.Thread(
        target=lambda: results.update(task=listening.wait_for_change(task_seen, LONG, task_topic("t"))))
    follower.start()
    wait_until(lambda: task_topic("t") in listener._waiting, LONG, "the second to follow")  # noqa: SLF001
    writing._fetch("SELECT pg_notify(%s, %s)", (writing._channel, task_topic("t")))  # noqa: SLF001
    follower.join(LONG)
    assert results.get("task", task_seen) != task_seen  # woken by what the leader read
    assert leader.is_alive()  # its own topic did not move: it still leads
    writing.enqueue([new("b", mode="process")])
    leader.join(LONG)
    assert results.get("work", work_seen) != work_seen


@pytest.mark.timeout(60)
def test_with_no_waiter_the_listeners_thread_reads_again(pair):
    listening, writing = pair
    seen = listening.generation(WORK)
    listener = listening._ensure_listener()  # noqa: SLF001
    writing.enqueue([new("a", mode="process")])
    assert listening.wait_for_change(seen, LONG, WORK) != seen  # led, then stepped down
    read_by = readers(listener)
    later = listening.generation(WORK)
    writing.enqueue([new("b", mode="process")])
    wait_until(lambda: listening.generation(WORK) != later, LONG, "the notification read with no one waiting")
    assert read_by and all(ident == listener._thread.ident for _, ident in read_by)  # noqa: SLF001


@pytest.mark.timeout(60)
def test_a_leader_whose_connection_is_lost_returns_and_the_listener_listens_again(pair, postgres_url):
    listening, writing = pair
    seen = listening.generation(WORK)
    listener = listening._ensure_listener()  # noqa: SLF001
    returned: list[int] = []
    waiter = threading.Thread(target=lambda: returned.append(listening.wait_for_change(seen, LONG, WORK)))
    waiter.start()
    wait_until(lambda: listener._leader is not None, LONG, "the waiter to lead")  # noqa: SLF001
    pid = listener._conn.info.backend_pid  # noqa: SLF001
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    waiter.join(LONG)
    assert returned and returned[0] != seen  # the lost connection wakes everyone to look again
    wait_until(lambda: listener._conn is not None and not listener._broken  # noqa: SLF001
               and listener._conn.info.backend_pid != pid, LONG, "a new LISTEN connection")  # noqa: SLF001
    seen = listening.generation(WORK)
    writing.enqueue([new("c", mode="process")])
    assert listening.wait_for_change(seen, LONG, WORK) != seen


# -- a castord child's relay socket ------------------------------------------------------


@pytest.fixture
def relayed():
    master, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def no_listen() -> None:
        raise OSError("no server in this test")

    listener = RelayedListener(child_end, no_listen, "castor_test")
    yield master, listener
    listener.close()
    master.close()


def reading(thread: threading.Thread) -> bool:
    """Whether `thread` is inside the source's read: it leads, the hand-over is done."""
    frame = sys._current_frames().get(thread.ident or 0)  # noqa: SLF001 - the thread's stack, read-only
    while frame is not None:
        if frame.f_code.co_name == "_read":
            return True
        frame = frame.f_back
    return False


@pytest.mark.timeout(30)
def test_a_childs_worker_reads_its_work_line_from_the_relay_itself(relayed):
    master, listener = relayed
    read_by: list[int] = []
    real_bump = listener.bump

    def bump(topic: str = "") -> None:
        read_by.append(threading.get_ident())
        real_bump(topic)

    listener.bump = bump  # type: ignore[method-assign]
    seen = listener.generation(WORK)
    returned: list[int] = []
    worker = threading.Thread(target=lambda: returned.append(listener.wait(seen, LONG, WORK)))
    worker.start()
    master.settimeout(LONG)
    assert master.recv(4096) == f"idle {WORK}\n".encode()  # said from inside the wait
    # "idle" is said before the wait takes the lead: a line sent at once may still be
    # read by the relay's thread as it hands over (the wake-up the same; CI saw it once).
    wait_until(lambda: reading(worker), LONG, "the worker to lead")
    master.sendall(f"{WORK}\n".encode())
    worker.join(LONG)
    assert returned and returned[0] != seen
    assert read_by == [worker.ident]


@pytest.mark.timeout(30)
def test_a_leader_whose_relay_closes_returns_once_the_child_falls_back(relayed, caplog):
    master, listener = relayed
    seen = listener.generation(WORK)
    returned: list[int] = []
    worker = threading.Thread(target=lambda: returned.append(listener.wait(seen, LONG, WORK)))
    worker.start()
    wait_until(lambda: listener._leader is not None, LONG, "the worker to lead")  # noqa: SLF001
    master.close()  # the master's end is gone
    worker.join(LONG)
    assert returned and returned[0] != seen  # the fall-back wakes everyone to look again
    assert not listener.relayed


class Stop(Exception):
    """What castor raises into a thread task (its timeout, its cancel) stands for."""


def interrupted_leader(listener: Any, wait: Any) -> tuple[threading.Thread, list[BaseException]]:
    """A thread that waits (leading) until an exception raised into it, as castor raises
    one into a thread task (its Guard: castor/interrupts.py), stops it."""
    from castor.interrupts import guard

    raised: list[BaseException] = []
    guards: list[Any] = []

    def waiter() -> None:
        guards.append(guard())
        try:
            while True:
                wait()
        except Stop as exc:
            raised.append(exc)

    thread = threading.Thread(target=waiter)
    thread.start()
    wait_until(lambda: guards and listener._leader == thread.ident, LONG, "the thread to lead")  # noqa: SLF001
    guards[0].interrupt(Stop)  # delivered once it runs Python again:
    listener._wake_reader()  # noqa: SLF001 - its select returns
    thread.join(LONG)
    return thread, raised


@pytest.mark.timeout(60)
def test_an_exception_raised_into_a_leader_reaches_it_and_the_lead_is_given_back(pair):
    """A thread task joining another leads; its timeout (raised into its thread) must stop
    it, not be taken for a lost connection, and must not leave the lead taken."""
    listening, writing = pair
    listener = listening._ensure_listener()  # noqa: SLF001
    seen = listening.generation(WORK)
    thread, raised = interrupted_leader(listener, lambda: listening.wait_for_change(seen, 0.5, WORK))
    assert not thread.is_alive() and len(raised) == 1
    assert listener._leader is None  # noqa: SLF001 - given back
    assert not listener._broken  # noqa: SLF001 - the connection was never lost
    seen = listening.generation(WORK)
    writing.enqueue([new("a", mode="process")])
    assert listening.wait_for_change(seen, LONG, WORK) != seen  # read as before


@pytest.mark.timeout(30)
def test_an_exception_raised_into_a_childs_leading_worker_reaches_it(relayed):
    master, listener = relayed
    seen = listener.generation(WORK)
    thread, raised = interrupted_leader(listener, lambda: listener.wait(seen, 0.5, WORK))
    assert not thread.is_alive() and len(raised) == 1
    assert listener._leader is None  # noqa: SLF001 - given back
    assert listener.relayed
    returned: list[int] = []
    worker = threading.Thread(target=lambda: returned.append(listener.wait(seen, LONG, WORK)))
    worker.start()
    master.sendall(f"{WORK}\n".encode())
    worker.join(LONG)
    assert returned and returned[0] != seen
