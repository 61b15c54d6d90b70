"""The storage interface. Everything above it speaks in these types only.

A backend (SQLite today, PostgreSQL for fleets later) implements `Store`;
`castor.store.open_store` picks one from what the user passed to Manager.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from castor.states import TaskStatus


@dataclass(slots=True)
class NewTask:
    """A task as enqueued; `eta` equals `enqueued_at` when it may run at once.

    Not frozen: a frozen dataclass's __init__ costs several microseconds more,
    and one is built per `.delay()`.
    """

    id: str
    name: str
    mode: str
    serializer: str
    args: str | bytes
    kwargs: str | bytes
    enqueued_at: float
    eta: float
    queue: str = "default"
    priority: int = 0
    daemon: bool = False
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class TaskRecord:
    """A snapshot of one stored task (read-only by convention: not frozen, because a
    frozen dataclass's __init__ is several microseconds slower, and workers build one
    per claimed task)."""

    id: str
    name: str
    queue: str
    mode: str
    daemon: bool
    status: TaskStatus
    priority: int
    serializer: str
    args: str | bytes
    kwargs: str | bytes
    enqueued_at: float
    eta: float
    started_at: float | None
    finished_at: float | None
    result: str | bytes | None
    error: dict[str, Any] | None
    attempts: int
    lost: int
    owner: str | None
    lease_expires: float | None
    options: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Settlement:
    """A finished attempt's outcome, to be written (fenced by owner and attempt)."""

    task_id: str
    owner: str
    attempt: int
    status: TaskStatus
    result: str | bytes | None = None
    error: dict[str, Any] | None = None
    finished_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Query:
    """Filters for listing and counting tasks; None means any."""

    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None


class AsyncWatcher(Protocol):
    async def wait(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Store(ABC):
    """Durable task storage with leases: at-least-once delivery, owner-fenced settles."""

    path: str

    @abstractmethod
    def enqueue(self, tasks: Sequence[NewTask]) -> None:
        """Store tasks atomically (all or none); durable once this returns."""

    @abstractmethod
    def claim(
        self, owner: str, *, mode: str, queues: Sequence[str] | None, limit: int, lease: float, now: float
    ) -> list[TaskRecord]:
        """Move up to `limit` due tasks to running under `owner`'s lease, best first."""

    @abstractmethod
    def settle_and_claim(
        self,
        settlements: Sequence[Settlement],
        owner: str,
        *,
        mode: str,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float,
    ) -> tuple[list[bool], list[TaskRecord]]:
        """Write finished attempts and claim up to `limit` more, in one transaction.

        The hot path of a busy worker: one commit per task instead of two.
        Returns, per settlement, whether it was accepted, and the new claims.
        """

    @abstractmethod
    def claim_task(self, task_id: str, owner: str, *, lease: float, now: float) -> TaskRecord | None:
        """Claim one named pending task (eager mode); None if it is not pending."""

    @abstractmethod
    def renew(self, owner: str, *, lease: float, now: float) -> int:
        """Extend every lease `owner` holds; returns how many it still holds."""

    @abstractmethod
    def settle(
        self,
        task_id: str,
        owner: str,
        attempt: int,
        status: TaskStatus,
        *,
        result: str | bytes | None = None,
        error: dict[str, Any] | None = None,
        now: float,
    ) -> bool:
        """Finish a running task; False if `owner` no longer holds that attempt."""

    @abstractmethod
    def requeue(self, task_id: str, owner: str, attempt: int, *, count_attempt: bool) -> bool:
        """Give a running task back to the queue (drain, crash); False if not held."""

    @abstractmethod
    def release_owner(self, owner: str, *, count_attempt: bool, max_lost: int) -> list[TaskRecord]:
        """Return every task `owner` still runs to pending, at once.

        count_attempt=True: the owner died (lost += 1; after max_lost, fail with
        WorkerLost). False: a drain stopped it (the attempt is not counted).
        Returns the records as they were before release.
        """

    @abstractmethod
    def record_daemon(self, daemon_id: str, *, host: str, pid: int, app: str, started_at: float,
                      info: dict[str, Any], now: float) -> None:
        """Upsert a castord master's heartbeat row."""

    @abstractmethod
    def remove_daemon(self, daemon_id: str) -> None: ...

    @abstractmethod
    def daemons(self) -> list[dict[str, Any]]:
        """Every castord heartbeat row, freshest first."""

    @abstractmethod
    def recover_expired(self, *, now: float, max_lost: int) -> int:
        """Return tasks whose lease expired to pending (or fail them after max_lost).

        Reads first and only takes the write lock when something has expired.
        """

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def status(self, task_id: str) -> TaskStatus | None: ...

    @abstractmethod
    def list(self, query: Query, *, limit: int | None = None, offset: int = 0) -> list[TaskRecord]:
        """Newest first."""

    @abstractmethod
    def count(self, query: Query) -> int: ...

    @abstractmethod
    def pending_by_queue(self) -> dict[str, int]:
        """Queue depth: pending tasks per queue."""

    @abstractmethod
    def counts_by_status(self) -> dict[TaskStatus, int]: ...

    @abstractmethod
    def next_due(self, *, mode: str, now: float) -> float | None:
        """The earliest future time something may become claimable (ETA or lease expiry)."""

    def checkpoint(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Housekeeping a worker runs from its background thread (default: none)."""
        return None

    def background_checkpoints(self, enabled: bool) -> None:  # noqa: B027 - optional hook
        """While enabled, this process calls checkpoint() from a background thread,
        so commits need not checkpoint themselves (default: nothing to change)."""
        return None

    @abstractmethod
    def generation(self) -> int:
        """A counter that moves when the database may have changed (see wait_for_change)."""

    @abstractmethod
    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the database changes after `seen` or `timeout` passes."""

    @abstractmethod
    def watch_async(self) -> AsyncWatcher:
        """A watcher for asyncio; open it before checking what you wait for."""

    @abstractmethod
    def close(self) -> None: ...
