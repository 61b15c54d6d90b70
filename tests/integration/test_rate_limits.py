"""rate_limit=: the decorator's and Manager.rate_limit's spellings and errors, and a real
Worker on a real file held to a limit."""

from __future__ import annotations

import threading
import time

import pytest

import castor
from castor.errors import ConfigurationError
from castor.states import TaskStatus
from castor.store import Query
from tests.conftest import wait_until


@pytest.mark.parametrize("bad", ["100", "100/d", "0/s", "-1/s", "1.5/s", "ten/m", "100 per minute", 100, 2.5, ""])
def test_a_bad_rate_limit_is_refused_at_decoration_with_the_right_form(manager, bad):
    with pytest.raises(ConfigurationError, match=r"'20/s', '100/m' or '1000/h'; not") as info:
        @manager.task(mode="thread", rate_limit=bad)
        def job():
            return 1
    assert "@manager.task on" in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_a_bad_burst_is_refused_at_decoration(manager, bad):
    with pytest.raises(ConfigurationError, match="rate_burst is how many tasks may start at once"):
        @manager.task(mode="thread", rate_limit="10/s", rate_burst=bad)
        def job():
            return 1


def test_a_burst_without_a_rate_limit_is_refused(manager):
    with pytest.raises(ConfigurationError, match="rate_burst= goes with a rate limit; give rate_limit= too"):
        @manager.task(mode="thread", rate_burst=3)
        def job():
            return 1


@pytest.mark.parametrize(("spelling", "rate"), [("20/s", 20.0), ("100/m", 100 / 60), ("1000/h", 1000 / 3600),
                                                (" 5 / s ", 5.0)])
def test_the_spellings_a_rate_limit_takes(manager, spelling, rate):
    @manager.task(mode="thread", name="job", rate_limit=spelling, rate_burst=2)
    def job():
        return 1

    assert job.options.rate_limit.rate == pytest.approx(rate)
    assert job.options.rate_limit.burst == 2


def test_a_worker_stores_its_apps_limits_as_it_starts(manager):
    @manager.task(mode="thread", name="limited", rate_limit="100/m", rate_burst=3)
    def limited():
        return 1

    @manager.task(mode="thread", name="free")
    def free():
        return 1

    manager.store.set_rate_limit("name", "free", rate=1.0, burst=1)  # an old deploy's limit
    castor.Worker(manager, mode="thread").run(until_idle=True)
    limits = manager.rate_limits()
    assert limits == {"name:limited": {"rate": pytest.approx(100 / 60), "burst": 3, "tokens": pytest.approx(3)}}


def test_a_queue_limit_is_set_listed_and_removed(manager):
    manager.rate_limit(queue="emails", limit="10/s", burst=5)
    assert manager.rate_limits()["queue:emails"]["burst"] == 5
    assert manager.rate_limit(queue="emails", limit=None) is True
    assert manager.rate_limit(queue="emails", limit=None) is False
    assert manager.rate_limits() == {}


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(limit="10/s"), r"takes queue= \(a queue name"),
    (dict(queue="", limit="10/s"), r"takes queue= \(a queue name"),
    (dict(queue="emails", limit="10/x"), r"Manager.rate_limit: a rate limit is .* not '10/x'"),
    (dict(queue="emails", limit="10/s", burst=0), "burst is how many tasks may start at once"),
    (dict(queue="emails", limit=None, burst=3), "burst= goes with a rate limit"),
])
def test_manager_rate_limit_refuses_bad_input(manager, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        manager.rate_limit(**kwargs)
    assert manager.rate_limits() == {}


def test_a_worker_held_to_a_limit_waits_for_tokens_and_runs_everything(manager):
    """5/s with a burst of 1: ten tasks start at least 0.2 s apart (on the store's clock
    they get one token each), all succeed, none fails while held back."""
    started: list[float] = []

    @manager.task(mode="thread", name="paced", rate_limit="5/s")
    def paced(n):
        started.append(time.monotonic())
        return n

    handles = [paced.delay(i) for i in range(10)]
    worker = castor.Worker(manager, mode="thread", threads=4)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert [h.join(timeout=30) for h in handles] == list(range(10))
    finally:
        worker.stop()
        thread.join(timeout=30)
    started.sort()
    # No window of 1 s holds more than the rate plus the burst.
    assert all(sum(1 for s in started if t <= s < t + 1.0) <= 6 for t in started)
    assert [h.status() for h in handles] == ["success"] * 10


def test_a_limited_worker_sleeps_until_the_next_token_rather_than_spinning(manager):
    """Held back, a worker asks the store when a token comes: a few claims per token, not
    hundreds (the safety net alone would make it 2 a second, too slow for 5/s)."""
    @manager.task(mode="process", name="paced", rate_limit="5/s")
    def paced(n):
        return n

    claims = 0
    store = manager.store
    plain, exchange = store.claim, store.settle_and_claim

    def counted(call):
        def count(*args, **kwargs):
            nonlocal claims
            claims += 1
            return call(*args, **kwargs)
        return count

    store.claim, store.settle_and_claim = counted(plain), counted(exchange)  # type: ignore[method-assign]
    waits: list[float] = []
    wait = store.wait_for_change

    def recorded_wait(seen, timeout, topic=None):
        if store.count(Query(status=TaskStatus.PENDING)):  # held back, not idle
            waits.append(timeout)
        return wait(seen, timeout, topic)

    store.wait_for_change = recorded_wait  # type: ignore[method-assign]
    handles = [paced.delay(i) for i in range(6)]
    worker = castor.Worker(manager, mode="process")  # one at a time: every round is a claim
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: all(h.status() == "success" for h in handles), 30, "the paced tasks")
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert claims < 6 * 10
    # It waited for the next token (0.2 s at most at 5/s), not for the 0.5 s safety net.
    assert waits and max(waits) <= 0.21, waits


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_task_with_a_booked_token_never_runs_before_its_start(manager, mode):
    """A fast limit's claim books the tokens that come within BOOK_AHEAD_SECONDS, each
    task starting when its token comes (its started_at): the worker waits for that
    moment, so that the limit holds for when the functions really run."""
    ran: dict[int, float] = {}

    @manager.task(mode=mode, name="booked", rate_limit="100/s")
    def booked(n):
        ran[n] = time.time()
        return n

    handles = [booked.delay(n) for n in range(30)]
    worker = castor.Worker(manager, mode=mode, threads=4)
    runner = threading.Thread(target=worker.run, daemon=True)
    runner.start()
    try:
        wait_until(lambda: len(ran) == 30, 30, "the booked tasks to run")
    finally:
        worker.stop()
        runner.join(30)
    starts = {h.join(timeout=10): h.info().started_at for h in handles}
    assert len(set(starts.values())) == 30  # every task its own start, 10 ms apart
    early = {n: round(starts[n] - ran[n], 4) for n in ran if ran[n] < starts[n]}
    assert not early, f"ran before their booked start (s early): {early}"
