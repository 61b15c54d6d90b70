"""Pausing a queue: claims skip it, its tasks stay pending; resume releases them."""

from __future__ import annotations

import pytest

from castor.states import TaskStatus
from castor.store.base import work_topic
from tests.contract.builders import claim, new, outcome

LONG = 30.0


def test_a_paused_queues_task_stays_pending_while_other_queues_run(store, clocks):
    store.enqueue([new("held", queue="mail"), new("runs", queue="default")])
    assert store.pause_queue("mail") is True
    assert [r.id for r in claim(store, clocks, limit=10)] == ["runs"]
    assert claim(store, clocks, limit=10) == []
    assert store.status("held") == TaskStatus.PENDING
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)
    assert not store.has_due(mode="process", queues=["mail"], now=clocks.wall)
    assert claim(store, clocks, queues=["mail"]) == []


def test_resume_releases_the_queue(store, clocks):
    store.enqueue([new("held", queue="mail")])
    store.pause_queue("mail")
    assert claim(store, clocks, queues=["mail", "default"]) == []
    assert store.resume_queue("mail") is True
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    assert [r.id for r in claim(store, clocks, queues=["mail", "default"])] == ["held"]


def test_a_pause_made_after_a_claim_looked_is_seen_by_the_next(store, clocks):
    """A store may keep what it learnt about the queues between claims: a pause (or a
    resume) in between must still count."""
    store.enqueue([new("a", queue="mail"), new("b", queue="mail")])
    assert [r.id for r in claim(store, clocks)] == ["a"]
    store.pause_queue("mail")
    assert claim(store, clocks) == []
    store.resume_queue("mail")
    assert [r.id for r in claim(store, clocks)] == ["b"]


def test_settle_and_claim_skips_a_paused_queue(store, clocks):
    store.enqueue([new("first"), new("mail", queue="mail"), new("second")])
    store.pause_queue("mail")
    (rec,) = claim(store, clocks)
    accepted, claimed = store.settle_and_claim([outcome(rec, at=clocks.wall)], "w1", mode="process", queues=None,
                                               limit=10, lease=10.0, now=clocks.wall)
    assert accepted == [True]
    assert [r.id for r in claimed] == ["second"]


def test_next_due_ignores_a_paused_queues_eta(store, clocks):
    store.enqueue([new("later", queue="mail", eta=clocks.wall + 100), new("soon", eta=clocks.wall + 200)])
    assert store.next_due(mode="process", now=clocks.wall) == clocks.wall + 100
    store.pause_queue("mail")
    assert store.next_due(mode="process", now=clocks.wall) == clocks.wall + 200


def test_pausing_is_idempotent_and_any_name_may_be_paused(store, clocks):
    assert store.pause_queue("nobody-uses-this") is True  # a queue exists when tasks name it
    assert store.pause_queue("nobody-uses-this") is False
    assert store.paused_queues() == {"nobody-uses-this"}
    store.enqueue([new("late", queue="nobody-uses-this")])
    assert claim(store, clocks) == []
    assert store.resume_queue("nobody-uses-this") is True
    assert store.resume_queue("nobody-uses-this") is False
    assert store.paused_queues() == set()


def test_paused_queues_lists_them_and_outlives_the_connection(backend, store):
    store.pause_queue("b")
    store.pause_queue("a")
    store.resume_queue("never-paused")
    assert store.paused_queues() == {"a", "b"}
    assert backend.open().paused_queues() == {"a", "b"}


def test_a_pause_in_another_process_view_counts(backend, store, clocks):
    other = backend.open()
    store.enqueue([new("a", queue="mail")])
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    other.pause_queue("mail")
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)
    assert claim(store, clocks) == []
    other.resume_queue("mail")
    assert [r.id for r in claim(store, clocks)] == ["a"]


@pytest.mark.timeout(60)
def test_resume_wakes_the_queues_workers(backend, store):
    other = backend.open()
    other.pause_queue("mail")
    topic = work_topic("thread")
    seen = store.generation(topic)
    other.resume_queue("mail")
    assert store.wait_for_change(seen, LONG, topic) != seen
