"""Waking on PostgreSQL (castor/store/pg_wakeup.py's Generations): a notification wakes
the waiters whose generation it moves, and no one else. On 2 cores a worker woken by
every other task's settle, or a joiner by every work notification, took CPU from the
one wake-up that mattered."""

from __future__ import annotations

import threading
from typing import Any

from castor.store.pg_wakeup import Generations
from tests.conftest import wait_until

WORK = "work:process"


class Waiter:
    """A thread in Generations.wait for `topic`, and what its wait returned."""

    def __init__(self, gen: Generations, topic: str | None):
        self.seen = gen.generation(topic)
        self.returned: list[int] = []
        self.thread = threading.Thread(target=lambda: self.returned.append(gen.wait(self.seen, 30, topic)),
                                       daemon=True)
        self.thread.start()

    def done(self, timeout: float = 10) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def count_wakes(cond: Any) -> list[int]:
    """Count the notify_all calls on a waiter's condition."""
    calls: list[int] = []
    real = cond.notify_all

    def counted() -> None:
        calls.append(1)
        real()

    cond.notify_all = counted
    return calls


def registered(gen: Generations, topic: str) -> Any:
    wait_until(lambda: topic in gen._waiting, 10, f"a waiter on {topic}")  # noqa: SLF001
    return gen._waiting[topic][0]  # noqa: SLF001


def test_a_worker_waiting_for_work_sleeps_through_other_topics_and_wakes_for_its_own():
    gen = Generations()
    gen.track("task:joined")
    worker = Waiter(gen, WORK)
    wakes = count_wakes(registered(gen, WORK))
    for topic in ("task:nobody-joins", "task:joined", "work:thread"):
        gen.bump(topic)
    assert wakes == [] and worker.thread.is_alive()
    gen.bump(WORK)
    assert worker.done() and worker.returned == [gen.generation(WORK)] and wakes == [1]


def test_a_joiner_sleeps_through_work_notifications():
    gen = Generations()
    gen.track("task:a")
    joiner = Waiter(gen, "task:a")
    wakes = count_wakes(registered(gen, "task:a"))
    gen.bump(WORK)
    gen.bump("task:b")
    assert wakes == [] and joiner.thread.is_alive()
    gen.bump("task:a")
    assert joiner.done() and wakes == [1]


def test_a_notification_for_everyone_wakes_every_waiter():
    gen = Generations()
    gen.track("task:a")
    waiters = [Waiter(gen, WORK), Waiter(gen, "task:a"), Waiter(gen, None)]
    registered(gen, WORK), registered(gen, "task:a")
    gen.bump("")
    assert all(w.done() for w in waiters)
    assert gen._waiting == {}  # noqa: SLF001 - a topic's condition goes with its last waiter


def test_a_waiter_for_any_notification_wakes_for_each():
    gen = Generations()
    anyone = Waiter(gen, None)
    wait_until(lambda: anyone.thread.is_alive(), 10, "the waiter")
    gen.bump("task:nobody-joins")  # moves generation(None) though no topic's
    assert anyone.done() and anyone.returned == [anyone.seen + 1]


def test_two_waiters_on_one_topic_share_its_condition_until_the_last_leaves():
    gen = Generations()
    first, second = Waiter(gen, WORK), Waiter(gen, WORK)
    wait_until(lambda: gen._waiting.get(WORK, (None, 0))[1] == 2, 10, "two waiters")  # noqa: SLF001
    gen.bump(WORK)
    assert first.done() and second.done()
    assert gen._waiting == {}  # noqa: SLF001


def test_close_wakes_every_waiter():
    gen = Generations()
    waiters = [Waiter(gen, WORK), Waiter(gen, "task:a"), Waiter(gen, None)]
    registered(gen, WORK), registered(gen, "task:a")
    gen.close()
    assert all(w.done() for w in waiters)


def test_an_async_watch_is_woken_only_by_what_moves_its_topic():
    gen = Generations()
    gen.track("task:a")
    watches = {topic: gen.watch(topic) for topic in (WORK, "task:a", None)}
    woken: list[str | None] = []
    for topic, watch in watches.items():
        watch.wake = lambda topic=topic: woken.append(topic)  # type: ignore[method-assign]
    gen.bump("task:b")  # nobody tracks it: only the any-notification watch
    assert woken == [None]
    woken.clear()
    gen.bump("task:a")
    assert sorted(map(str, woken)) == ["None", "task:a"]
    woken.clear()
    gen.bump("")
    assert len(woken) == 3
