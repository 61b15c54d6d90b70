"""The token bucket's arithmetic (castor/rate_limits.py), without a store."""

from __future__ import annotations

import pytest

from castor.rate_limits import BOOK_AHEAD_SECONDS, Buckets, next_token, next_token_at, refill


def test_refill_adds_the_rate_times_the_time_passed_up_to_the_burst():
    assert refill(0.0, 10.0, 10.5, rate=2.0, burst=5) == pytest.approx(1.0)
    assert refill(4.5, 10.0, 20.0, rate=2.0, burst=5) == 5.0


def test_a_clock_gone_back_a_reboot_of_the_boot_clock_gives_a_full_bucket():
    assert refill(0.0, 1_000_000.0, 3.0, rate=1.0, burst=4) == 4.0


def test_the_next_token_can_be_booked_a_moment_before_it_comes():
    # The missing fraction's time, less the time a claim may book ahead.
    assert next_token_at(0.25, rate=4.0, now=100.0) == pytest.approx(100.1875 - BOOK_AHEAD_SECONDS)
    assert next_token_at(1.5, rate=4.0, now=100.0) == 100.0
    rows = [("name", "a", 4.0, 1, 0.0, 100.0), ("queue", "q", 1.0, 1, 1.0, 100.0)]
    assert next_token(rows, 100.0) == pytest.approx(100.25 - BOOK_AHEAD_SECONDS)  # "q" has its token
    assert next_token([("name", "a", 4.0, 1, 1.0, 100.0)], 100.0) is None
    assert next_token([("name", "a", 100.0, 1, 0.0, 100.0)], 100.0) is None  # 10 ms away: bookable now


def test_a_task_needs_a_token_of_every_bucket_it_is_in_and_takes_none_if_one_is_dry():
    buckets = Buckets([("name", "mail", 1.0, 1, 1.0, 0.0), ("queue", "q", 1.0, 2, 2.0, 0.0)], 0.0)
    chosen, refused = buckets.choose([("a", "mail", "q"), ("b", "mail", "q"), ("c", "other", "q"),
                                      ("d", "other", "q")])
    assert chosen == [("a", 0.0), ("c", 0.0)] and refused
    assert buckets.held("name") == {"mail"} and buckets.held("queue") == {"q"}
    assert sorted(buckets.changed()) == [(0.0, 0.0, "name", "mail"), (0.0, 0.0, "queue", "q")]


def test_a_fast_limit_books_the_next_tokens_each_task_starting_when_its_token_comes():
    """At 200/s (burst 2) a claim of many takes the 2 tokens there are, then books the
    ones that come within BOOK_AHEAD_SECONDS, 5 ms apart, and refuses the rest."""
    buckets = Buckets([("name", "fast", 200.0, 2, 2.0, 0.0)], 0.0)
    chosen, refused = buckets.choose([(f"t{i}", "fast", "q") for i in range(40)])
    booked = int(BOOK_AHEAD_SECONDS * 200)
    assert [wait for _, wait in chosen] == pytest.approx([0.0, 0.0, *[k / 200 for k in range(1, booked + 1)]])
    assert [task_id for task_id, _ in chosen] == [f"t{i}" for i in range(len(chosen))] and refused
    assert buckets.held("name") == {"fast"}  # the next is too far to book
    # In any span of time, no more start than the burst and the rate allow.
    starts = [wait for _, wait in chosen]
    assert all(sum(1 for s in starts if t <= s < t + 0.01) <= 2 + 200 * 0.01 for t in starts)


def test_a_slow_limit_books_nothing_ahead():
    buckets = Buckets([("name", "slow", 1.0, 1, 1.0, 0.0)], 0.0)
    chosen, refused = buckets.choose([("a", "slow", "q"), ("b", "slow", "q")])
    assert chosen == [("a", 0.0)] and refused  # the next token is a second away
