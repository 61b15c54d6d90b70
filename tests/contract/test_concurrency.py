"""Concurrency limits: at most N tasks of a name (or of one key of it) running at once,
counted and enforced in the claim's own transaction, so every claimer of the store shares
them. A task's key is on its row (NewTask.concurrency_key, computed by the producer: ""
for a limited name without a key); its name's limit is a stored row."""

from __future__ import annotations

import pytest

from castor.errors import ConfigurationError
from castor.states import TaskStatus
from tests.contract.builders import claim, claim_one, new, outcome, race_claims


def ids(records):
    return [r.id for r in records]


def scans(n, key="", **kwargs):
    return [new(f"s{key}{i:02}", name="scan", concurrency_key=key, **kwargs) for i in range(n)]


def test_a_claim_of_many_takes_no_more_than_the_limit(store, clocks):
    store.set_concurrency_limit("scan", 2)
    store.enqueue(scans(6))
    assert ids(claim(store, clocks, limit=10)) == ["s00", "s01"]
    assert claim(store, clocks, limit=10) == []
    assert store.status("s02") == TaskStatus.PENDING  # held back, never failed
    assert store.concurrency_limits() == {"scan": {"limit": 2, "per_key": False, "running": 2}}


def test_each_key_has_its_own_limit(store, clocks):
    store.set_concurrency_limit("scan", 1, per_key=True)
    # Key a's tasks come first in claim order: a claim that stopped at them would take nothing else.
    store.enqueue(scans(3, "a", priority=5) + scans(2, "b") + scans(2, "c"))
    assert ids(claim(store, clocks, limit=10)) == ["sa00", "sb00", "sc00"]
    assert claim(store, clocks, limit=10) == []
    store.enqueue(scans(1, "d"))
    assert ids(claim(store, clocks, limit=10)) == ["sd00"]


def test_a_per_key_limit_of_two(store, clocks):
    store.set_concurrency_limit("scan", 2, per_key=True)
    store.enqueue(scans(4, "a") + scans(4, "b"))
    got = claim(store, clocks, limit=10)
    assert sorted(ids(got)) == ["sa00", "sa01", "sb00", "sb01"]


def test_other_names_are_not_held_back(store, clocks):
    store.set_concurrency_limit("scan", 1)
    store.enqueue(scans(5, priority=5) + [new(f"o{i}", name="other") for i in range(3)])
    assert ids(claim(store, clocks, limit=10)) == ["s00", "o0", "o1", "o2"]
    store.enqueue([new("o3", name="other")])
    assert ids(claim(store, clocks, limit=10)) == ["o3"]


def test_a_task_enqueued_without_a_key_is_not_counted(store, clocks):
    """A row with no key was enqueued by code that declares no concurrency= for its name
    (an older deploy): the limit is the enqueuing code's, so it runs unlimited."""
    store.set_concurrency_limit("scan", 1)
    store.enqueue([new(f"n{i}", name="scan") for i in range(3)] + scans(3))
    assert ids(claim(store, clocks, limit=10)) == ["n0", "n1", "n2", "s00"]


def test_settle_and_claim_keeps_to_the_limit_and_frees_the_slot_it_settles(store, clocks):
    store.set_concurrency_limit("scan", 1)
    store.enqueue(scans(3))
    first = claim_one(store, clocks, limit=5)
    accepted, more = store.settle_and_claim([outcome(first, at=clocks.wall)], "w1", mode="process", queues=None,
                                            limit=5, lease=10.0, now=clocks.wall)
    assert accepted == [True] and ids(more) == ["s01"]


def _settle(status):
    def end(store, clocks, rec):
        eta = clocks.wall + 60 if status == TaskStatus.PENDING else None
        assert store.settle_one(outcome(rec, status, at=clocks.wall, eta=eta)) is True
    return end


def _cancel(store, clocks, rec):
    assert store.cancel(rec.id, now=clocks.wall) == TaskStatus.RUNNING  # asked: its worker stops it
    assert store.settle_one(outcome(rec, TaskStatus.CANCELLED, at=clocks.wall)) is True


def _lost_worker(store, clocks, rec):
    assert [r.status for r in store.release_owner(rec.owner, count_attempt=True, max_lost=5)] == [TaskStatus.PENDING]


def _lease_expired(store, clocks, rec):
    clocks.advance(11.0)  # past the 10 s lease
    assert [r.id for r in store.recover_expired(now=clocks.wall, max_lost=5)] == [rec.id]


def _requeued(store, clocks, rec):
    assert store.requeue(rec.id, rec.fence, count_attempt=False) is True


ENDINGS = {"success": _settle(TaskStatus.SUCCESS), "failure": _settle(TaskStatus.FAILED),
           "retry": _settle(TaskStatus.PENDING), "cancel": _cancel, "lost worker": _lost_worker,
           "lease recovery": _lease_expired, "requeue": _requeued}


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_a_slot_frees_when_its_task_ends_by_any_path(store, clocks, ending):
    store.set_concurrency_limit("scan", 1, per_key=True)
    store.enqueue([new("first", name="scan", concurrency_key="a", priority=9)] + scans(2, "a"))
    rec = claim_one(store, clocks, limit=5)
    assert rec.id == "first" and claim(store, clocks, limit=5) == []
    ENDINGS[ending](store, clocks, rec)
    assert store.concurrency_limits()["scan"]["running"] == 0
    got = claim(store, clocks, limit=5)
    assert len(got) == 1 and got[0].id in {"first", "sa00"}  # one again, not two
    assert claim(store, clocks, limit=5) == []


def test_a_task_needs_a_slot_and_a_token_and_takes_neither_without_both(store, clocks):
    store.set_concurrency_limit("scan", 1)
    store.set_rate_limit("name", "scan", rate=1.0, burst=5)
    store.enqueue(scans(4))
    assert ids(claim(store, clocks, limit=10)) == ["s00"]
    # The full slot took no token: four are left.
    assert store.rate_limits()[("name", "scan")]["tokens"] == pytest.approx(4.0)


def test_a_removed_limit_holds_nothing_back(store, clocks):
    store.set_concurrency_limit("scan", 1)
    store.enqueue(scans(3))
    assert len(claim(store, clocks, limit=10)) == 1
    assert store.remove_concurrency_limit("scan") is True
    assert store.remove_concurrency_limit("scan") is False
    assert len(claim(store, clocks, limit=10)) == 2
    assert store.concurrency_limits() == {}


def test_a_changed_limit_applies_to_the_next_claim(store, clocks):
    store.set_concurrency_limit("scan", 1)
    store.enqueue(scans(5))
    assert len(claim(store, clocks, limit=10)) == 1
    store.set_concurrency_limit("scan", 3)
    assert len(claim(store, clocks, limit=10)) == 2
    assert store.concurrency_limits()["scan"] == {"limit": 3, "per_key": False, "running": 3}


def test_sync_sets_declared_limits_and_drops_undeclared_ones(store):
    store.set_concurrency_limit("old", 1)
    store.set_concurrency_limit("kept", 4)
    store.sync_concurrency_limits({"scan": (2, True), "kept": (4, False)}, unlimited=["old", "other"])
    assert {n: (v["limit"], v["per_key"]) for n, v in store.concurrency_limits().items()} == {
        "scan": (2, True), "kept": (4, False)}


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_store_refuses_a_limit_that_is_not_a_positive_integer(store, bad):
    with pytest.raises(ConfigurationError, match="concurrency limit"):
        store.set_concurrency_limit("scan", bad)
    with pytest.raises(ConfigurationError, match="task name"):
        store.set_concurrency_limit("", 1)


def test_two_claimers_together_never_exceed_the_limit(backend, clocks):
    """Two store instances (two connections, as two castords have), claiming at once
    from threads: together they run the limit, not a task more, per name and per key.
    Three races, each on names of its own (a race lost by chance shows in one of them)."""
    first, second = backend.open(), backend.open()
    for race in range(3):
        scan, keyed = f"scan{race}", f"keyed{race}"
        first.set_concurrency_limit(scan, 3)
        first.set_concurrency_limit(keyed, 2, per_key=True)
        first.enqueue([new(f"{scan}-{i:02}", name=scan, concurrency_key="") for i in range(40)]
                      + [new(f"{keyed}-{key}{i:02}", name=keyed, concurrency_key=key)
                         for key in "ab" for i in range(20)])
        taken = race_claims([first, second], clocks, rounds=20, limit=2)
        assert len(set(taken)) == len(taken)
        by_group = {g: sum(1 for t in taken if t.startswith(g)) for g in (f"{scan}-", f"{keyed}-a", f"{keyed}-b")}
        assert by_group == {f"{scan}-": 3, f"{keyed}-a": 2, f"{keyed}-b": 2}, race


def test_a_long_backlog_of_a_full_key_is_looked_past(store, clocks):
    store.set_concurrency_limit("scan", 1, per_key=True)
    store.enqueue(scans(60, "a", priority=5) + scans(3, "b"))
    assert ids(claim(store, clocks, limit=2)) == ["sa00", "sb00"]
    assert claim(store, clocks, limit=5) == []  # a and b full; the 59 of a wait
    store.enqueue(scans(1, "c"))
    assert ids(claim(store, clocks, limit=5)) == ["sc00"]
