"""What the contract tests build with: the clocks, a backend's stores, tasks, claims, outcomes."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from castor.states import TaskStatus
from castor.store import NewTask, Query, Store, TaskRecord, open_store
from castor.store.base import Settlement

WALL_START = 1_700_000_000.0  # an epoch time
LEASE_START = 50.0  # seconds since boot, as the boot clock reads


@dataclass
class Clocks:
    """The wall clock the tests pass as `now=`, and the lease clock the store reads."""

    wall: float = WALL_START
    lease_now: float = LEASE_START

    def lease(self) -> float:
        return self.lease_now

    def advance(self, seconds: float) -> float:
        """Both clocks move on by `seconds`; returns the new wall time."""
        self.wall += seconds
        self.lease_now += seconds
        return self.wall


@dataclass
class Backend:
    """One backend under test: where its store lives, and every instance opened on it."""

    name: str
    location: str
    clocks: Clocks
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        """Another store instance on the same data (another connection, as a second
        worker in the process would have), on the test's clocks."""
        store = open_store(self.location)
        store.clock = self.clocks.lease
        self.opened.append(store)
        return store

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


def new(task_id: str, *, now: float = WALL_START, eta: float | None = None, mode: str = "process",
        queue: str = "default", priority: int = 0, name: str = "t", unique_key: str | None = None,
        cache_key: str | None = None, options: dict[str, Any] | None = None,
        concurrency_key: str | None = None) -> NewTask:
    return NewTask(id=task_id, name=name, mode=mode, serializer="json", args="[1]", kwargs="{}",
                   enqueued_at=now, eta=now if eta is None else eta, queue=queue, priority=priority,
                   options=options or {}, unique_key=unique_key, cache_key=cache_key,
                   concurrency_key=concurrency_key)


def claim(store: Store, clocks: Clocks, owner: str = "w1", *, limit: int = 1, lease: float = 10.0,
          mode: str = "process", queues: Sequence[str] | None = None, isolated: bool = False) -> list[TaskRecord]:
    return store.claim(owner, mode=mode, queues=queues, limit=limit, lease=lease, now=clocks.wall,
                       isolated=isolated)


def claim_one(store: Store, clocks: Clocks, owner: str = "w1", **kwargs: Any) -> TaskRecord:
    claimed = claim(store, clocks, owner, **kwargs)
    assert len(claimed) == 1, f"expected one claim, got {[r.id for r in claimed]}"
    return claimed[0]


def race_claims(stores: Sequence[Store], clocks: Clocks, *, rounds: int, limit: int,
                timeout: float = 60.0) -> list[str]:
    """Claimers racing on the same tasks: one thread per store (another connection each,
    as each castord has), released together by a barrier, each claiming `rounds` times
    up to `limit` tasks. Returns the ids every claimer took, in the order they came."""
    taken: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(len(stores))

    def claimer(store: Store, owner: str) -> None:
        start.wait()
        for _ in range(rounds):
            got = claim(store, clocks, owner, limit=limit)
            with lock:
                taken.extend(r.id for r in got)

    threads = [threading.Thread(target=claimer, args=(store, f"w{i + 1}"), daemon=True)
               for i, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"claimers still running after {timeout:g} s: {stuck}"
    return taken


def failure(message: str = "boom") -> dict[str, Any]:
    return {"type": "builtins.ValueError", "message": message, "traceback": "", "args": [message]}


def outcome(rec: TaskRecord, status: TaskStatus = TaskStatus.SUCCESS, *, at: float, result: str | bytes | None = None,
            eta: float | None = None, expires_at: float | None = None, drop: bool = False,
            fence: int | None = None) -> Settlement:
    """The end of the attempt `rec` was claimed for (a failure carries an error; status
    PENDING is a retry at `eta`)."""
    error = failure() if status in (TaskStatus.FAILED, TaskStatus.PENDING) else None
    if status == TaskStatus.SUCCESS and result is None:
        result = f'"{rec.id}"'
    return Settlement(rec.id, rec.owner or "", rec.attempts, status, result=result, error=error,
                      finished_at=at, eta=eta, expires_at=expires_at, drop=drop,
                      fence=rec.fence if fence is None else fence)


def statuses(store: Store, *ids: str) -> list[TaskStatus | None]:
    return [store.status(i) for i in ids]


def snapshot(store: Store) -> list[tuple[Any, ...]]:
    """Every row's stored state, as far as an operation could change it. A record tells
    its lease as an epoch time through the real clock, which moves: the lease shows here
    as whole seconds on the store's clock."""
    return [(r.id, r.status, r.owner, r.attempts, r.lost, r.fence, r.result, r.error, r.progress,
             r.progress_message, r.started_at, r.finished_at, r.eta, r.isolate, r.cancel_requested,
             r.history, r.expires_at,
             None if r.lease_expires is None else round(r.lease_expires - time.time() + store.clock()))
            for r in store.list(Query())]
