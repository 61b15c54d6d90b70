"""Waiting for a change (another instance's commit), and closing."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from castor.errors import StoreError
from tests.contract.builders import new

LONG = 30.0  # a wait that ends before this was woken, not timed out


@pytest.mark.timeout(60)
def test_a_commit_after_seen_wakes_a_waiter_even_before_it_waits(backend, store):
    other = backend.open()
    seen = store.generation()
    other.enqueue([new("a")])
    started = time.monotonic()
    assert store.wait_for_change(seen, LONG) > seen
    assert time.monotonic() - started < LONG


@pytest.mark.timeout(60)
def test_a_commit_while_waiting_wakes_the_waiter(backend, store):
    other = backend.open()
    seen = store.generation()
    woke: list[int] = []
    waiter = threading.Thread(target=lambda: woke.append(store.wait_for_change(seen, LONG)))
    started = time.monotonic()
    waiter.start()
    time.sleep(0.05)  # most likely inside its wait by now; either way it must wake
    other.enqueue([new("a")])
    waiter.join(LONG + 5)
    assert woke and woke[0] > seen
    assert time.monotonic() - started < LONG


@pytest.mark.timeout(60)
def test_without_a_change_the_wait_times_out(store):
    seen = store.generation()
    started = time.monotonic()
    assert store.wait_for_change(seen, 0.2) == seen
    assert time.monotonic() - started >= 0.2


def test_generation_moves_forward_only(backend, store):
    other = backend.open()
    first = store.generation()
    other.enqueue([new("a")])
    second = store.wait_for_change(first, LONG)
    assert second > first and store.generation() >= second


@pytest.mark.timeout(60)
def test_an_async_watcher_opened_before_a_commit_wakes(backend, store):
    other = backend.open()

    async def main() -> float:
        watcher = store.watch_async()
        try:
            other.enqueue([new("a")])
            started = time.monotonic()
            await watcher.wait(LONG)
            return time.monotonic() - started
        finally:
            watcher.close()

    assert asyncio.run(main()) < LONG


class TestClose:
    def test_a_closed_store_refuses_work(self, backend, store):
        store.enqueue([new("a")])
        store.close()
        with pytest.raises(StoreError, match="closed"):
            store.enqueue([new("b")])
        with pytest.raises(StoreError, match="closed"):
            store.get("a")
        assert backend.open().get("b") is None

    def test_closing_twice_is_harmless(self, store):
        store.close()
        store.close()

    def test_closing_one_instance_leaves_the_others_working(self, backend, store):
        other = backend.open()
        store.close()
        other.enqueue([new("a")])
        assert other.get("a") is not None
