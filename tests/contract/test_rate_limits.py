"""Rate limits: a token bucket per limited task name or queue, stored, and taken from in
the claim's own transaction (so every claimer of the store shares it). Time is the
store's clock, which these tests hold and move (clocks.advance)."""

from __future__ import annotations

import pytest

from castor.errors import ConfigurationError
from castor.rate_limits import BOOK_AHEAD_SECONDS
from castor.states import TaskStatus
from tests.contract.builders import claim, new, outcome, race_claims


def ids(records):
    return [r.id for r in records]


def mail(n, **kwargs):
    return [new(f"m{i:02}", name="mail", **kwargs) for i in range(n)]


def test_a_limited_name_yields_at_most_its_tokens_per_claim(store, clocks):
    store.set_rate_limit("name", "mail", rate=1.0, burst=3)
    store.enqueue(mail(10))
    assert ids(claim(store, clocks, limit=10)) == ["m00", "m01", "m02"]  # the burst, best first
    assert claim(store, clocks, limit=10) == []
    assert store.status("m03") == TaskStatus.PENDING  # held back, never failed


def test_tokens_come_back_with_the_store_clock(store, clocks):
    store.set_rate_limit("name", "mail", rate=2.0, burst=3)
    store.enqueue(mail(10))
    assert len(claim(store, clocks, limit=10)) == 3
    clocks.advance(0.25)  # half a token
    assert claim(store, clocks, limit=10) == []
    clocks.advance(0.25)
    assert ids(claim(store, clocks, limit=10)) == ["m03"]
    clocks.advance(1.0)
    assert ids(claim(store, clocks, limit=10)) == ["m04", "m05"]
    clocks.advance(100)  # a long idle time refills up to the burst, no further
    assert len(claim(store, clocks, limit=10)) == 3


def test_other_names_are_not_held_back(store, clocks):
    store.set_rate_limit("name", "mail", rate=1.0, burst=1)
    # The limited name comes first in claim order: a claim that stopped at it would
    # take nothing else.
    store.enqueue(mail(5, priority=5) + [new(f"o{i}", name="other") for i in range(3)])
    assert ids(claim(store, clocks, limit=10)) == ["m00", "o0", "o1", "o2"]
    store.enqueue([new("o3", name="other")])
    assert ids(claim(store, clocks, limit=10)) == ["o3"]


def test_a_queue_limit_holds_that_queue_only(store, clocks):
    store.set_rate_limit("queue", "emails", rate=1.0, burst=2)
    store.enqueue([new(f"e{i}", name="a", queue="emails") for i in range(4)]
                  + [new(f"e{i}b", name="b", queue="emails") for i in range(2)]
                  + [new("d0", name="a")])
    got = claim(store, clocks, limit=10)
    assert sorted(r.queue for r in got) == ["default", "emails", "emails"]  # two of it, whatever their names
    assert ids(claim(store, clocks, limit=10)) == []


def test_a_task_needs_a_token_of_its_name_and_of_its_queue(store, clocks):
    store.set_rate_limit("queue", "emails", rate=1.0, burst=5)
    store.set_rate_limit("name", "mail", rate=1.0, burst=2)
    store.enqueue(mail(4, queue="emails") + [new("x", name="other", queue="emails")])
    assert sorted(ids(claim(store, clocks, limit=10))) == ["m00", "m01", "x"]
    assert store.rate_limits()[("queue", "emails")]["tokens"] == pytest.approx(2.0)


def test_settle_and_claim_takes_tokens_too(store, clocks):
    store.set_rate_limit("name", "mail", rate=1.0, burst=2)
    store.enqueue(mail(5))
    (first,) = claim(store, clocks, limit=1)
    accepted, more = store.settle_and_claim([outcome(first, at=clocks.wall)], "w1", mode="process", queues=None,
                                            limit=10, lease=10.0, now=clocks.wall)
    assert accepted == [True] and ids(more) == ["m01"]


def test_next_due_is_when_a_held_back_tasks_token_can_be_booked(store, clocks):
    store.set_rate_limit("name", "mail", rate=4.0, burst=1)
    store.enqueue(mail(2))
    assert len(claim(store, clocks, limit=10)) == 1
    due = store.next_due(mode="process", now=clocks.wall)
    assert due is not None and due == pytest.approx(clocks.wall + 0.25 - BOOK_AHEAD_SECONDS, abs=0.01)


def test_a_claim_books_the_tokens_that_come_soon_each_task_starting_when_its_token_does(store, clocks):
    store.set_rate_limit("name", "mail", rate=100.0, burst=1)  # a token every 10 ms
    store.enqueue(mail(20))
    taken = sorted(claim(store, clocks, limit=20), key=lambda r: r.started_at or 0)
    booked = int(BOOK_AHEAD_SECONDS * 100)
    assert len(taken) == 1 + booked  # the token there is, and those due within the booking time
    starts = [r.started_at - clocks.wall for r in taken]
    assert starts == pytest.approx([k / 100 for k in range(1 + booked)], abs=0.002)
    assert claim(store, clocks, limit=20) == []  # the next is too far to book
    assert store.rate_limits()[("name", "mail")]["tokens"] == 0.0  # booked ahead: none to tell


def test_a_removed_limit_holds_nothing_back(store, clocks):
    store.set_rate_limit("name", "mail", rate=1.0, burst=1)
    store.enqueue(mail(3))
    assert len(claim(store, clocks, limit=10)) == 1
    assert store.remove_rate_limit("name", "mail") is True
    assert store.remove_rate_limit("name", "mail") is False
    assert len(claim(store, clocks, limit=10)) == 2
    assert store.rate_limits() == {}


def test_changing_a_limit_keeps_its_tokens_within_the_new_burst(store, clocks):
    store.set_rate_limit("name", "mail", rate=1.0, burst=10)
    store.set_rate_limit("name", "mail", rate=1.0, burst=10)  # the same again: tokens stay
    store.enqueue(mail(12))
    assert len(claim(store, clocks, limit=3)) == 3
    store.set_rate_limit("name", "mail", rate=0.5, burst=2)
    limits = store.rate_limits()
    assert limits[("name", "mail")] == {"rate": 0.5, "burst": 2, "tokens": pytest.approx(2.0)}
    assert len(claim(store, clocks, limit=10)) == 2


def test_sync_sets_declared_name_limits_and_drops_undeclared_ones(store, clocks):
    store.set_rate_limit("name", "old", rate=1.0, burst=1)
    store.set_rate_limit("queue", "emails", rate=1.0, burst=1)
    store.sync_name_rate_limits({"mail": (2.0, 3)}, unlimited=["old", "other"])
    assert set(store.rate_limits()) == {("name", "mail"), ("queue", "emails")}


def test_two_claimers_together_never_exceed_the_tokens(backend, clocks):
    """Two store instances (two connections, as two castords have), claiming at once
    from threads on a held clock: together they take the burst, not a task more."""
    first, second = backend.open(), backend.open()
    first.set_rate_limit("name", "mail", rate=1.0, burst=5)
    first.enqueue(mail(40))
    taken = race_claims([first, second], clocks, rounds=20, limit=3)
    assert len(taken) == 5 and len(set(taken)) == 5
    clocks.advance(2.0)
    assert len(claim(second, clocks, "w2", limit=10)) == 2


@pytest.mark.parametrize("bad", [dict(rate=0.0, burst=1), dict(rate=1.0, burst=0), dict(rate=-1.0, burst=1)])
def test_a_store_refuses_a_limit_that_could_never_let_a_task_through(store, bad):
    with pytest.raises(ConfigurationError, match="rate limit"):
        store.set_rate_limit("name", "mail", **bad)
    with pytest.raises(ConfigurationError, match="'name' or 'queue'"):
        store.set_rate_limit("host", "mail", rate=1.0, burst=1)


def test_a_bucket_running_dry_mid_claim_leaves_the_rest_of_the_batch_to_others(store, clocks):
    """The claim meets the limited name's third task with its bucket empty: it skips it
    and takes the other names' tasks behind it, in the same claim."""
    store.set_rate_limit("name", "mail", rate=1.0, burst=2)
    store.enqueue(mail(4, priority=5) + [new(f"o{i}", name="other") for i in range(3)])
    assert ids(claim(store, clocks, limit=10)) == ["m00", "m01", "o0", "o1", "o2"]
    assert store.rate_limits()[("name", "mail")]["tokens"] == pytest.approx(0.0)
