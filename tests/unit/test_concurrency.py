"""castor/concurrency.py: groups, slots and the choice a claim makes (pure)."""

from __future__ import annotations

import pytest

from castor.concurrency import Slots, check_limit, choose, concurrency_report, lock_key
from castor.errors import ConfigurationError
from castor.rate_limits import Buckets


def test_a_task_is_limited_only_with_a_limit_for_its_name_and_a_key_on_its_row():
    slots = Slots([("scan", 2, False), ("charge", 1, True)])
    assert slots.group("scan", "") == ("scan", "")
    assert slots.group("scan", "ignored") == ("scan", "")  # a name limited as a whole: one group
    assert slots.group("charge", "ada") == ("charge", "ada")
    assert slots.group("scan", None) is None and slots.group("other", "x") is None


def test_running_tasks_fill_their_groups_and_full_ones_are_skipped():
    slots = Slots([("scan", 2, False), ("charge", 1, True)])
    slots.count([("scan", "", 1), ("scan", "x", 1), ("charge", "ada", 1), ("charge", "bob", 0), ("free", "", 5)])
    assert slots.full_names() == {"scan"}
    assert slots.full_keys() == [("charge", "ada")]
    slots.recount({("scan", ""): 1})  # counted afresh under its lock
    assert slots.full_names() == frozenset()


def test_choose_gives_slots_in_claim_order_and_refuses_the_rest():
    slots = Slots([("charge", 1, True)])
    buckets = Buckets([], 0.0)
    found = [("t1", "charge", "q", "ada"), ("t2", "charge", "q", "ada"), ("t3", "charge", "q", "bob"),
             ("t4", "free", "q", None)]
    assert choose(found, slots, buckets.take, want=10) == ([("t1", 0.0), ("t3", 0.0), ("t4", 0.0)], True)
    assert choose([("t5", "free", "q", None)], slots, buckets.take, want=0) == ([], False)


def test_a_task_without_a_slot_takes_no_token_and_one_without_a_token_takes_no_slot():
    slots = Slots([("scan", 1, False)])
    slots.count([("scan", "", 1)])
    buckets = Buckets([("name", "scan", 1.0, 5, 5.0, 0.0)], 0.0)
    assert choose([("t1", "scan", "q", "")], slots, buckets.take, want=1) == ([], True)
    assert buckets.tokens[("name", "scan")] == 5.0
    slots = Slots([("scan", 1, False)])
    dry = Buckets([("name", "scan", 1.0, 5, 0.0, 0.0)], 0.0)
    assert choose([("t1", "scan", "q", "")], slots, dry.take, want=1) == ([], True)
    assert slots.running == {}


def test_a_held_group_is_full_for_this_claim():
    slots = Slots([("charge", 3, True)])
    slots.hold(("charge", "ada"))
    assert slots.full_keys() == [("charge", "ada")] and not slots.free(("charge", "ada"))


def test_lock_keys_are_stable_64_bit_numbers_per_group():
    assert lock_key(("scan", "")) == lock_key(("scan", ""))
    assert lock_key(("scan", "a")) != lock_key(("scan", "b")) != lock_key(("scanb", ""))
    assert -(2**63) <= lock_key(("scan", "a")) < 2**63


def test_the_report_sums_every_key_of_a_name():
    assert concurrency_report([("charge", 1, True), ("scan", 2, False)],
                              [("charge", "ada", 1), ("charge", "bob", 1)]) == {
        "charge": {"limit": 1, "per_key": True, "running": 2},
        "scan": {"limit": 2, "per_key": False, "running": 0}}


def test_a_bucket_another_claimer_holds_gives_no_token_and_is_not_written():
    buckets = Buckets([("name", "mail", 1.0, 5, 5.0, 0.0)], 10.0)
    buckets.hold(("name", "mail"))
    assert buckets.take("mail", "q") is None and buckets.changed() == []


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, None])
def test_a_limit_must_be_a_positive_int(bad):
    with pytest.raises(ConfigurationError, match="a concurrency limit must be a positive integer"):
        check_limit("scan", bad)
