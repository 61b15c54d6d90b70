"""pg_wakeup.WakeGate: a producer's concurrent writes share one notification, and a
write that went without one is always followed by one sent after it committed."""

from __future__ import annotations

import threading

import pytest

from castor.store.pg_wakeup import WakeGate

LONG = 30.0


class Sent:
    """What the gate sent, in order, with an event per send."""

    def __init__(self) -> None:
        self.topics: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, topic: str) -> None:
        with self.cond:
            self.topics.append(topic)
            self.cond.notify_all()

    def wait_for(self, count: int) -> list[str]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.topics) >= count, LONG), self.topics
            return list(self.topics)


@pytest.fixture
def gate_and_sent():
    sent = Sent()
    gate = WakeGate(sent)
    yield gate, sent
    gate.close()


def test_a_lone_write_notifies_itself(gate_and_sent):
    gate, sent = gate_and_sent
    assert gate.begin("work:thread")
    gate.end("work:thread")
    assert gate.begin("work:thread")  # nothing in flight any more: the next notifies itself too
    gate.end("work:thread")
    assert sent.topics == []  # the writes carried their own notifications


@pytest.mark.timeout(60)
def test_writes_beside_one_in_flight_go_quiet_and_one_trailing_notification_follows(gate_and_sent):
    gate, sent = gate_and_sent
    assert gate.begin("work:thread")
    assert not gate.begin("work:thread")
    assert not gate.begin("work:thread")
    gate.skipped("work:thread")
    gate.skipped("work:thread")
    assert sent.topics == []  # the one in flight may still commit after them: wait for it
    gate.end("work:thread")
    assert sent.wait_for(1) == ["work:thread"]


@pytest.mark.timeout(60)
def test_a_quiet_write_committed_after_the_notifier_returned_is_announced(gate_and_sent):
    gate, sent = gate_and_sent
    assert gate.begin("work:thread")
    assert not gate.begin("work:thread")
    gate.end("work:thread")  # the notifying write returned first
    assert sent.topics == []
    gate.skipped("work:thread")  # then the quiet one committed
    assert sent.wait_for(1) == ["work:thread"]


@pytest.mark.timeout(60)
def test_topics_are_gated_apart(gate_and_sent):
    gate, sent = gate_and_sent
    assert gate.begin("work:thread")
    assert gate.begin("work:process")  # another mode's workers: its own notification
    gate.end("work:process")
    gate.end("work:thread")
    assert sent.topics == []
