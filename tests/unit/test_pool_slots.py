"""castor/pool_slots.py: a counted set of free threads whose wait a nudge can end
without a thread being freed. Threads are real; every wait has a deadline."""

from __future__ import annotations

import threading

import pytest

from castor.pool_slots import PoolSlots

pytestmark = pytest.mark.timeout(30)


def test_it_counts_like_a_semaphore() -> None:
    slots = PoolSlots(2)
    assert slots.acquire() and slots.acquire()
    assert slots.free == 0
    assert not slots.acquire(blocking=False)
    assert not slots.acquire(timeout=0.01)  # none came: False after the timeout
    slots.release()
    assert slots.free == 1 and slots.acquire(timeout=5)


def test_more_releases_than_acquires_are_refused() -> None:
    slots = PoolSlots(1)
    with pytest.raises(ValueError, match="released more often than acquired"):
        slots.release()


def test_a_release_wakes_a_waiting_acquire() -> None:
    slots = PoolSlots(1)
    assert slots.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(timeout=20)))
    waiter.start()
    slots.release()
    waiter.join(20)
    assert got == [True] and slots.free == 0


def test_a_nudge_ends_the_wait_without_a_thread_and_is_taken_once() -> None:
    slots = PoolSlots(1)
    assert slots.acquire()
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire(timeout=20)))
    waiter.start()
    slots.nudge()
    waiter.join(20)
    assert not waiter.is_alive()
    assert got == [False] and slots.free == 0  # woken, no thread taken
    assert slots.nudged() and not slots.nudged()


def test_a_pending_nudge_returns_the_next_wait_at_once_but_never_hides_a_free_thread() -> None:
    slots = PoolSlots(1)
    slots.nudge()
    assert slots.acquire(timeout=20)  # a free thread is taken, nudge or not
    assert not slots.acquire(timeout=20)  # none free: the pending nudge ends the wait at once
    assert slots.nudged()
    assert not slots.acquire(timeout=0.01)  # taken: a plain timeout again
