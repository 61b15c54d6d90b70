"""castord's relay sends a work line to one idle child, not to all (castor/store/pg_relay.py):
the children say when they wait for work; task topics and everyone-lines still reach all.

Absence is shown by order: a child's socket is a stream, so when the next line it reads is
an everyone-line sent after the work line, the work line never went to it."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from castor.store.pg_relay import RelayedListener, RelayHub
from tests.conftest import wait_until

WORK = "work:process"


class Child:
    """A child's end of its relay socket, spoken to by hand."""

    def __init__(self, hub: RelayHub):
        self.key, self.sock = hub.attach()
        self.sock.settimeout(10)
        self.buffer = b""

    def say(self, verb: str, topic: str = WORK) -> None:
        self.sock.sendall(f"{verb} {topic}\n".encode())

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "the master closed the socket"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\n", 1)
        return head.decode()


@pytest.fixture
def hub():
    made = RelayHub()
    yield made
    made.close()


def waiting(hub: RelayHub, n: int, topic: str = WORK) -> None:
    wait_until(lambda: hub.waiting(topic) == n, 10, f"{n} children waiting for {topic}")


@pytest.mark.timeout(30)
def test_a_work_line_wakes_one_idle_child_the_latest_to_wait(hub):
    a, b = Child(hub), Child(hub)
    a.say("idle")
    waiting(hub, 1)
    b.say("idle")
    waiting(hub, 2)
    hub(WORK)
    hub("")  # everyone: the order on each stream shows who got the work line
    assert b.line() == WORK and b.line() == ""
    assert a.line() == ""
    assert hub.waiting(WORK) == 1  # b was taken off the list to be woken
    hub(WORK)
    assert a.line() == WORK


@pytest.mark.timeout(30)
def test_a_work_line_with_nobody_waiting_is_owed_to_the_next_child_that_waits(hub):
    a, b = Child(hub), Child(hub)
    hub(WORK)  # both busy (claiming): nobody is woken, nothing is dropped
    hub("")
    assert a.line() == "" and b.line() == ""
    b.say("idle")
    assert b.line() == WORK  # at once, not at its next re-check
    assert hub.waiting(WORK) == 0
    a.say("idle")
    waiting(hub, 1)  # owed once only: a is listed, not woken
    hub("")
    assert a.line() == ""


@pytest.mark.timeout(30)
def test_a_child_that_says_busy_is_not_woken(hub):
    a, b = Child(hub), Child(hub)
    a.say("idle")
    b.say("idle")
    waiting(hub, 2)
    b.say("busy")  # its wait ended by itself (a re-check): it claims on its own
    waiting(hub, 1)
    hub(WORK)
    hub("")
    assert a.line() == WORK
    assert b.line() == ""


@pytest.mark.timeout(30)
def test_a_full_claim_wakes_the_next_idle_child(hub):
    a, b, c = Child(hub), Child(hub), Child(hub)
    for child in (a, b):
        child.say("idle")
    waiting(hub, 2)
    hub(WORK)
    assert b.line() == WORK
    b.say("more")  # its claim took all it asked for
    assert a.line() == WORK
    c.say("more")  # and with nobody left waiting, the next to wait is woken at once
    c.say("idle")
    assert c.line() == WORK


@pytest.mark.timeout(30)
def test_everyone_lines_reach_every_child_and_owed_work_waits(hub):
    a, b = Child(hub), Child(hub)
    a.say("idle")
    waiting(hub, 1)
    for topic in ("", "work:thread"):  # nobody waits for thread work: owed
        hub(topic)
    hub("")
    assert [a.line() for _ in range(2)] == ["", ""]
    assert [b.line() for _ in range(2)] == ["", ""]
    assert hub.waiting(WORK) == 1


@pytest.mark.timeout(30)
def test_a_task_topic_reaches_only_the_children_whose_joiners_track_it(hub):
    """Said just before the hub routes the notification, with no wait between: the hub
    reads what the children said first (a child says `track` before its watch commits)."""
    a, b, c = Child(hub), Child(hub), Child(hub)
    a.say("track", "task:0123")
    b.say("track", "task:0123")
    told = "task:0123\x1fjson\x1ft\x1fMQ=="  # with the result its settle told
    hub(told)
    hub("")
    assert [a.line(), a.line()] == [told, ""]
    assert [b.line(), b.line()] == [told, ""]
    assert c.line() == ""  # the everyone-line is the first it hears: no task line came before
    a.say("untrack", "task:0123")
    hub("task:0123")
    hub("")
    assert a.line() == ""
    assert [b.line(), b.line()] == ["task:0123", ""]
    assert hub.tracking("task:0123") == 1
    hub.detach(b.key)
    assert hub.tracking("task:0123") == 0


@pytest.mark.timeout(30)
def test_a_child_gone_is_no_longer_tracking(hub):
    a = Child(hub)
    a.say("track", "task:0123")
    wait_until(lambda: hub.tracking("task:0123") == 1, 10, "the track line read")
    a.sock.close()  # its end gone: the master finds it out
    wait_until(lambda: hub.tracking("task:0123") == 0, 10, "the closed child forgotten")


@pytest.mark.timeout(30)
def test_a_detached_or_closed_child_is_never_chosen(hub):
    a, b, c = Child(hub), Child(hub), Child(hub)
    for child in (a, b, c):
        child.say("idle")
    waiting(hub, 3)
    hub.detach(c.key)
    assert hub.waiting(WORK) == 2
    b.sock.close()  # its end gone: the master finds it out
    waiting(hub, 1)
    hub(WORK)
    assert a.line() == WORK


@pytest.mark.timeout(30)
def test_with_its_reader_gone_the_hub_sends_work_lines_to_everyone(hub):
    a, b = Child(hub), Child(hub)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    hub._reader = dead  # noqa: SLF001 - what a reader that died leaves
    hub(WORK)  # nobody said idle, and nobody can be heard: everyone is woken
    assert a.line() == WORK and b.line() == WORK
    hub("task:0123")  # nobody said track, and nobody can be heard: everyone hears it
    assert a.line() == "task:0123" and b.line() == "task:0123"


# -- the child's side -------------------------------------------------------------------


class Master:
    """The master's end of one child's socket, read by hand."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.buffer = b""

        def no_listen() -> None:
            raise OSError("no server in this test")

        self.listener = RelayedListener(theirs, no_listen, "castor_test")

    def line(self) -> str:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\n", 1)
        return head.decode()

    def close(self) -> None:
        self.listener.close()
        self.sock.close()


@pytest.fixture
def master():
    made = Master()
    yield made
    made.close()


@pytest.mark.timeout(30)
def test_a_child_says_idle_when_it_waits_for_work_and_nothing_when_the_master_wakes_it(master):
    listener = master.listener
    seen = listener.generation(WORK)
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(listener.wait(seen, 30, WORK)))
    waiter.start()
    assert master.line() == f"idle {WORK}"
    master.sock.sendall(f"{WORK}\n".encode())  # the master wakes it
    waiter.join(10)
    assert woke and woke[0] != seen
    listener.more(WORK)  # the next thing it says: no `busy` came before it
    assert master.line() == f"more {WORK}"


@pytest.mark.timeout(30)
def test_a_child_whose_wait_ends_by_itself_says_busy(master):
    listener = master.listener
    seen = listener.generation(WORK)
    started = time.monotonic()
    assert listener.wait(seen, 0.2, WORK) == seen  # a re-check's timeout
    assert time.monotonic() - started >= 0.2
    assert master.line() == f"idle {WORK}"
    assert master.line() == f"busy {WORK}"


@pytest.mark.timeout(30)
def test_a_child_says_nothing_for_waits_on_other_topics_or_after_its_topic_moved(master):
    listener = master.listener
    seen = listener.generation("task:0123")
    assert listener.wait(seen, 0.05, "task:0123") == seen
    master.sock.sendall(f"{WORK}\n".encode())  # a wake that came before the wait
    wait_until(lambda: listener.generation(WORK) != 0, 10, "the work line to arrive")
    assert listener.wait(0, 30, WORK) != 0  # returns at once, says nothing
    listener.more(WORK)
    assert master.line() == f"more {WORK}"


@pytest.mark.timeout(30)
def test_a_child_says_track_for_its_first_joiner_of_a_task_and_untrack_after_its_last(master):
    listener = master.listener
    listener.track("task:0123")
    listener.track("task:0123")  # a second joiner of the same task: nothing more to say
    listener.untrack("task:0123")
    listener.untrack("task:0123")
    listener.untrack("task:0123")  # one too many: nothing tracked, nothing said
    listener.more(WORK)  # the next thing it says
    assert [master.line() for _ in range(3)] == ["track task:0123", "untrack task:0123", f"more {WORK}"]

