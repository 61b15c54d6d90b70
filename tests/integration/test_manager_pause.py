"""Manager.pause_queue / resume_queue / paused_queues, with a real Worker on a real file."""

from __future__ import annotations

import pytest

import castor
from castor.errors import ConfigurationError


def test_a_paused_queue_is_skipped_until_resumed(manager):
    @manager.task(mode="thread", queue="mail")
    def send(n):
        return n

    @manager.task(mode="thread")
    def other(n):
        return n

    assert manager.pause_queue("mail") is True and manager.pause_queue("mail") is False
    assert manager.paused_queues() == {"mail"}
    held, ran = send.delay(1), other.delay(2)
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert (held.status(), ran.status()) == ("pending", "success")
    assert manager.resume_queue("mail") is True and manager.resume_queue("mail") is False
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert held.join(timeout=10) == 1 and manager.paused_queues() == set()


@pytest.mark.parametrize("bad", ["", None, 3])
def test_a_queue_name_must_be_a_non_empty_str(manager, bad):
    for method in (manager.pause_queue, manager.resume_queue):
        with pytest.raises(ConfigurationError, match="takes a queue name"):
            method(bad)
