"""concurrency= and concurrency_key=: the decorator's checks and errors, the key a call
stores, and a real Worker on a real file held to a limit."""

from __future__ import annotations

import threading
import time

import pytest

import castor
from castor.errors import ConfigurationError
from castor.store import Query


@pytest.mark.parametrize("bad", [0, -2, True, 1.5, "2"])
def test_a_bad_concurrency_is_refused_at_decoration(manager, bad):
    with pytest.raises(ConfigurationError, match="concurrency is how many of its tasks may run at once") as info:
        @manager.task(mode="thread", concurrency=bad)
        def job():
            return 1
    assert "@manager.task on" in str(info.value) and repr(bad) in str(info.value)


def test_an_unknown_key_argument_is_refused_at_decoration_with_a_suggestion(manager):
    with pytest.raises(ConfigurationError, match=r"concurrency_key='customer' is not an argument of the function "
                                                 r"\(its arguments: customer_id, amount\)\. Did you mean "
                                                 r"'customer_id'\?"):
        @manager.task(mode="thread", concurrency=2, concurrency_key="customer")
        def charge(customer_id, amount):
            return amount


def test_a_key_that_is_neither_an_argument_name_nor_a_function_is_refused(manager):
    with pytest.raises(ConfigurationError, match="concurrency_key is the name of one of the function's arguments"):
        @manager.task(mode="thread", concurrency_key=3)
        def charge(customer_id):
            return 1


def test_the_key_is_computed_at_enqueue_and_stored(manager):
    @manager.task(mode="thread", name="charge", concurrency=2, concurrency_key="customer_id")
    def charge(amount, customer_id="anonymous"):
        return amount

    @manager.task(mode="thread", name="ship", concurrency_key=lambda order: order["customer"])
    def ship(order):
        return 1

    @manager.task(mode="thread", name="scan", concurrency=3)
    def scan(n):
        return n

    new = manager.producer.new_task
    assert new(charge, (5,), {"customer_id": "c1"}, {}).concurrency_key == "c1"
    assert new(charge, (5, 42), {}, {}).concurrency_key == "42"  # an int key, as text
    assert new(charge, (5,), {}, {}).concurrency_key == "anonymous"  # the argument's default
    assert new(ship, ({"customer": "c2"},), {}, {}).concurrency_key == "c2"
    assert new(scan, (1,), {}, {}).concurrency_key == ""  # the name limited as a whole
    assert charge.options.concurrency.limit == 2 and ship.options.concurrency.limit == 1  # per key, default 1


def test_a_key_that_is_not_a_str_is_refused_at_the_call(manager):
    @manager.task(mode="thread", name="ship", concurrency_key=lambda order: order.get("customer"))
    def ship(order):
        return 1

    with pytest.raises(ConfigurationError, match=r"ship.apply_async: concurrency_key .* gave None; a key is a str"):
        ship.delay({})
    assert manager.store.list(Query(name="ship")) == []  # nothing enqueued


def test_a_worker_stores_its_apps_limits_as_it_starts(manager):
    @manager.task(mode="thread", name="charge", concurrency=2, concurrency_key="customer_id")
    def charge(customer_id):
        return 1

    @manager.task(mode="thread", name="free")
    def free():
        return 1

    manager.store.set_concurrency_limit("free", 1)  # an old deploy's limit
    castor.Worker(manager, mode="thread").run(until_idle=True)
    assert manager.concurrency_limits() == {"charge": {"limit": 2, "per_key": True, "running": 0}}


def test_a_worker_runs_no_more_than_the_limit_at_once_and_runs_everything(manager):
    """Eight threads, a limit of 2 per customer: never three of one customer at once."""
    lock = threading.Lock()
    running: dict[str, int] = {}
    most: dict[str, int] = {}

    @manager.task(mode="thread", name="charge", concurrency=2, concurrency_key="customer")
    def charge(customer, n):
        with lock:
            running[customer] = running.get(customer, 0) + 1
            most[customer] = max(most.get(customer, 0), running[customer])
        time.sleep(0.05)
        with lock:
            running[customer] -= 1
        return n

    handles = [charge.delay(c, i) for i in range(6) for c in ("a", "b")]
    worker = castor.Worker(manager, mode="thread", threads=8)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert [h.join(timeout=60) for h in handles] == [i for i in range(6) for _ in "ab"]
    finally:
        worker.stop()
        thread.join(timeout=30)
    assert set(most) == {"a", "b"} and max(most.values()) <= 2
