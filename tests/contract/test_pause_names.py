"""Pausing a task name: claims skip its tasks in every queue; resume releases them."""

from __future__ import annotations

from castor.states import TaskStatus
from tests.contract.builders import claim, new, outcome


def test_a_paused_names_task_stays_pending_while_other_names_run(store, clocks):
    # The paused name's task comes first in claim order: a claim that did not skip
    # it would take it.
    store.enqueue([new("held", name="reports", priority=5), new("runs", name="mail")])
    assert store.pause_name("reports") is True
    assert [r.id for r in claim(store, clocks, limit=10)] == ["runs"]
    assert claim(store, clocks, limit=10) == []
    assert store.status("held") == TaskStatus.PENDING
    assert not store.has_due(mode="process", queues=None, now=clocks.wall)


def test_a_paused_name_is_skipped_in_every_queue(store, clocks):
    store.enqueue([new("a", name="reports", queue="q1"), new("b", name="reports", queue="q2"),
                   new("c", name="other", queue="q2")])
    store.pause_name("reports")
    assert [r.id for r in claim(store, clocks, limit=10, queues=["q1", "q2"])] == ["c"]


def test_resume_name_releases_its_tasks(store, clocks):
    store.enqueue([new("held", name="reports")])
    store.pause_name("reports")
    assert claim(store, clocks) == []
    assert store.resume_name("reports") is True
    assert store.has_due(mode="process", queues=None, now=clocks.wall)
    assert [r.id for r in claim(store, clocks)] == ["held"]


def test_a_name_pause_made_after_a_claim_looked_is_seen_by_the_next(store, clocks):
    """A store may keep what it learnt between claims: a name's pause or resume in
    between must still count."""
    store.enqueue([new("a", name="reports"), new("b", name="reports"), new("c", name="reports")])
    assert [r.id for r in claim(store, clocks)] == ["a"]
    store.pause_name("reports")
    assert claim(store, clocks) == []
    store.pause_name("another")  # a second paused name: the set changes again
    assert claim(store, clocks) == []
    store.resume_name("reports")
    assert [r.id for r in claim(store, clocks)] == ["b"]
    store.resume_name("another")
    assert [r.id for r in claim(store, clocks)] == ["c"]


def test_settle_and_claim_skips_a_paused_name(store, clocks):
    store.enqueue([new("first"), new("held", name="reports"), new("second")])
    store.pause_name("reports")
    (rec,) = claim(store, clocks)
    accepted, claimed = store.settle_and_claim([outcome(rec, at=clocks.wall)], "w1", mode="process", queues=None,
                                               limit=10, lease=10.0, now=clocks.wall)
    assert accepted == [True]
    assert [r.id for r in claimed] == ["second"]


def test_a_paused_names_eta_task_waits_too(store, clocks):
    store.enqueue([new("later", name="reports", eta=clocks.wall + 5), new("other", eta=clocks.wall + 5)])
    store.pause_name("reports")
    clocks.advance(10)
    claimed = store.claim("w1", mode="process", queues=None, limit=10, lease=10.0, now=clocks.wall + 10)
    assert [r.id for r in claimed] == ["other"]


def test_names_and_queues_are_paused_apart(backend, store, clocks):
    assert store.pause_name("mail") is True and store.pause_name("mail") is False
    assert store.paused_names() == {"mail"} and store.paused_queues() == set()
    store.enqueue([new("in-queue-mail", name="t", queue="mail")])
    assert [r.id for r in claim(store, clocks)] == ["in-queue-mail"]  # a queue named mail is not paused
    assert backend.open().paused_names() == {"mail"}
    assert store.resume_name("mail") is True and store.resume_name("mail") is False
    assert store.paused_names() == set()
