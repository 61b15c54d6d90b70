"""Several real processes on one store: every task claimed exactly once, every periodic
tick fired exactly once."""

from __future__ import annotations

import multiprocessing
import queue
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from castor.states import TaskStatus
from castor.store import Query
from tests.contract import children
from tests.contract.builders import new

SPAWN = multiprocessing.get_context("spawn")


class Children:
    """Spawned processes released together; stops those still running, by their pid."""

    def __init__(self) -> None:
        self.procs: list[Any] = []
        self.start = SPAWN.Event()
        self.results = SPAWN.Queue()

    def spawn(self, target: Callable[..., None], *args: Any) -> None:
        proc = SPAWN.Process(target=target, args=(*args, self.start, self.results), daemon=True)
        proc.start()
        self.procs.append(proc)

    def collect(self, timeout: float) -> list[Any]:
        """Release them all at once, and gather every child's report."""
        self.start.set()
        out = []
        for _ in self.procs:
            try:
                out.append(self.results.get(timeout=timeout))
            except queue.Empty:
                pytest.fail(f"a child did not report within {timeout} s")
        for proc in self.procs:
            proc.join(timeout)
            assert proc.exitcode == 0, f"child {proc.pid} exited {proc.exitcode}"
        return out

    def stop(self) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
            proc.join(10)
        self.results.close()


@pytest.fixture
def processes() -> Iterator[Children]:
    spawned = Children()
    yield spawned
    spawned.stop()


@pytest.mark.timeout(120)
def test_each_task_is_claimed_exactly_once_by_processes_claiming_at_once(backend, store, processes):
    tasks = 600
    store.enqueue([new(f"t{i:04}") for i in range(tasks)])
    workers = [("one-by-one", 1, False), ("batches", 7, True), ("pairs", 2, True), ("loose", 5, False)]
    for owner, limit, combined in workers:
        processes.spawn(children.drain, backend.location, owner, limit, combined)
    reports = processes.collect(timeout=90)
    claims = Counter(task_id for _, claimed, _ in reports for task_id in claimed)
    assert [task_id for task_id, n in claims.items() if n > 1] == []
    assert sorted(claims) == [f"t{i:04}" for i in range(tasks)]
    assert [refused for *_, refused in reports] == [0] * len(workers)
    assert store.counts_by_status()[TaskStatus.SUCCESS] == tasks
    for rec in store.list(Query()):
        assert rec.result == f'"{rec.owner}"' and rec.attempts == 1  # settled by the claim that took it


@pytest.mark.timeout(120)
def test_each_tick_fires_once_under_processes_firing_at_once(backend, store, processes):
    ticks = 200
    for name in ("a", "b", "c"):
        processes.spawn(children.fire, backend.location, name, ticks)
    reports = processes.collect(timeout=90)
    fired = Counter(tick for _, won in reports for tick in won)
    assert sorted(fired) == list(range(ticks)) and set(fired.values()) == {1}
    assert store.count(Query()) == ticks
    assert store.schedules()["shared"]["last_tick"] == 1_000.0 + ticks - 1
