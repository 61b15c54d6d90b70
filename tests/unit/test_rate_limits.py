"""The token bucket's arithmetic (castor/rate_limits.py), without a store."""

from __future__ import annotations

import pytest

from castor.rate_limits import Buckets, next_token, next_token_at, refill


def test_refill_adds_the_rate_times_the_time_passed_up_to_the_burst():
    assert refill(0.0, 10.0, 10.5, rate=2.0, burst=5) == pytest.approx(1.0)
    assert refill(4.5, 10.0, 20.0, rate=2.0, burst=5) == 5.0


def test_a_clock_gone_back_a_reboot_of_the_boot_clock_gives_a_full_bucket():
    assert refill(0.0, 1_000_000.0, 3.0, rate=1.0, burst=4) == 4.0


def test_the_next_token_comes_after_the_missing_fraction():
    assert next_token_at(0.25, rate=4.0, now=100.0) == pytest.approx(100.1875)
    assert next_token_at(1.5, rate=4.0, now=100.0) == 100.0
    rows = [("name", "a", 4.0, 1, 0.0, 100.0), ("queue", "q", 1.0, 1, 1.0, 100.0)]
    assert next_token(rows, 100.0) == pytest.approx(100.25)  # "q" has its token: not waited for
    assert next_token([("name", "a", 4.0, 1, 1.0, 100.0)], 100.0) is None


def test_a_task_needs_a_token_of_every_bucket_it_is_in_and_takes_none_if_one_is_dry():
    buckets = Buckets([("name", "mail", 1.0, 1, 1.0, 0.0), ("queue", "q", 1.0, 2, 2.0, 0.0)], 0.0)
    chosen, refused = buckets.choose([("a", "mail", "q"), ("b", "mail", "q"), ("c", "other", "q"),
                                      ("d", "other", "q")])
    assert chosen == ["a", "c"] and refused
    assert buckets.held("name") == {"mail"} and buckets.held("queue") == {"q"}
    assert sorted(buckets.changed()) == [(0.0, 0.0, "name", "mail"), (0.0, 0.0, "queue", "q")]
