"""The storage interface. Everything above it speaks in these types only.

A backend (SQLite today, PostgreSQL for fleets later) implements `Store`;
`castor.store.open_store` picks one from what the user passed to Manager.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from castor.clocks import boot_clock
from castor.errors import FailedMember, StoreUnavailable
from castor.states import TaskStatus, WorkflowStatus


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
    # unique=: at most one unfinished task per key (enqueue returns the twin).
    unique_key: str | None = None
    # cache_ttl=: a success with this key may answer later calls.
    cache_key: str | None = None
    # Not stored: how old a success with cache_key may be to answer instead.
    cache_ttl: float | None = None
    # concurrency=: the task's group key ("" for a name limited as a whole); None: not
    # limited (castor/concurrency.py).
    concurrency_key: str | None = None
    # A workflow member (Store.enqueue_workflow): its workflow, step (-1: the link_error
    # handler), place in the step, and what its worker puts before its own arguments.
    workflow_id: str | None = None
    wf_step: int | None = None
    wf_index: int | None = None
    wf_input: str | None = None

    @property
    def waiting(self) -> bool:
        """Stored waiting (not pending): a member whose step is not the first."""
        return self.wf_step is not None and self.wf_step != 0


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
    # Shown as an epoch time; the store keeps it on the boot clock (castor/clocks.py).
    lease_expires: float | None
    options: dict[str, Any]
    progress: float | None = None
    progress_message: str | None = None
    cancel_requested: bool = False
    # One entry per failed attempt: {"attempt", "type", "message", "at"}.
    history: list[dict[str, Any]] = field(default_factory=list)
    expires_at: float | None = None
    unique_key: str | None = None
    # The fencing token of the claim this record came from: every claim gets a
    # new one, and only that claim may settle, renew, report or hand back.
    fence: int = 0
    # Ran beside a thread-host crash: runs alone until blame is clear.
    isolate: bool = False
    # A workflow member: as NewTask's (None for a plain task).
    workflow_id: str | None = None
    wf_step: int | None = None
    wf_index: int | None = None
    wf_input: str | None = None

    @property
    def claim(self) -> tuple[str, int]:
        """This attempt's identity: the task and its fencing token."""
        return (self.id, self.fence)


@dataclass(frozen=True, slots=True)
class ToldResult:
    """A success's result as told with its wake-up (Store.told_result)."""

    serializer: str
    value: str | bytes


@dataclass(frozen=True, slots=True)
class Settlement:
    """A finished attempt's outcome, to be written (fenced by the claim's token)."""

    task_id: str
    owner: str
    attempt: int
    status: TaskStatus
    result: str | bytes | None = None
    error: dict[str, Any] | None = None
    finished_at: float = 0.0
    # status PENDING means "retry": the task runs again at `eta`.
    eta: float | None = None
    # Delete the finished row at this time (result_ttl); `drop` deletes it now.
    expires_at: float | None = None
    drop: bool = False
    fence: int = 0  # the claim's fencing token (TaskRecord.fence)
    # The task's workflow (TaskRecord.workflow_id): its end moves that workflow, in the
    # settle's own transaction. None for a plain task, which then costs nothing more.
    workflow_id: str | None = None

    @property
    def claim(self) -> tuple[str, int]:
        return (self.task_id, self.fence)


# What a workflow member's worker puts before its own arguments (TaskRecord.wf_input).
INPUT_RESULT = "result"  # the previous step's one result
INPUT_RESULTS = "results"  # the previous step's results, in order
INPUT_ERROR = "error"  # (failed task id, its error dict): the link_error handler


@dataclass(frozen=True, slots=True)
class Exchanged:
    """What Store.exchange did: per settlement whether it was accepted, the new claims,
    and (`looked`) what next_due said after a claim that took nothing."""

    accepted: list[bool]
    claims: list[TaskRecord]
    looked: bool = False
    next_due: float | None = None


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A workflow as enqueued (its members are NewTasks with its id)."""

    id: str
    kind: str  # "link" | "chain" | "group" | "chord"
    sizes: tuple[int, ...]  # members per step
    created_at: float
    handler_id: str | None = None  # the link_error task, waiting at step -1
    handler_step: int | None = None  # the last step it covers (None: all)


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """A stored workflow's row, and its members (id, step, index) in step order."""

    id: str
    kind: str
    state: WorkflowStatus
    step: int
    remaining: int
    sizes: tuple[int, ...]
    first_bad: str | None
    handler_id: str | None
    handler_step: int | None
    created_at: float
    finished_at: float | None
    members: tuple[tuple[str, int, int], ...] = ()

    @property
    def missing(self) -> int:
        """How many members of its step the sweep found gone when it ended the workflow
        (castor.MembersMissing); 0 for any other workflow. Every other failure names the
        member that caused it (first_bad)."""
        if self.state is not WorkflowStatus.FAILED or self.first_bad is not None:
            return 0
        present = sum(1 for _, step, _ in self.members if step == self.step)
        return max(0, self.sizes[self.step] - present)


def members_missing_message(workflow_id: str, step: int, missing: int, size: int) -> str:
    """Why the sweep ended a workflow whose step lost member rows (castor.MembersMissing)."""
    return (f"workflow {workflow_id} failed: {missing} of the {size} members of its step {step} are missing "
            "(their rows were deleted while it ran), so that step could never end")


@dataclass(frozen=True, slots=True)
class SweptWorkflow:
    """One fix of Store.sweep_workflows: a running workflow whose advance was missed.

    `remaining_now` is the recounted value the counter was set to (None when members
    were missing: the workflow ended failed, MembersMissing, `missing` of them gone);
    `released`, how many of the running step's members were still waiting (their
    release was missed) and were released."""

    workflow_id: str
    kind: str
    step: int
    state: WorkflowStatus  # after the fix
    remaining_was: int
    remaining_now: int | None
    missing: int = 0
    released: int = 0


@dataclass(frozen=True, slots=True)
class StepResult:
    """One member of a step, as its successor's worker reads it (Store.step_results)."""

    id: str
    status: TaskStatus
    serializer: str
    result: str | bytes | None
    error: dict[str, Any] | None


# Why an attempt lost its worker, as each store writes it into the task's history
# (an entry with "lost": true; the attempt's start and owner come from the row).
LOST_LEASE = "its lease expired: the worker stopped renewing it (stalled, cut off, or gone)"
LOST_DIED = "the process running it died"
LOST_BESIDE = ("the process running it died while it ran beside other tasks: none is blamed, "
               "and it runs alone next")


@dataclass(frozen=True, slots=True)
class Query:
    """Filters for listing and counting tasks; None means any."""

    status: TaskStatus | None = None
    name: str | None = None
    queue: str | None = None
    # True: only tasks that lost their worker at least once (the "dirty" ones).
    dirty: bool | None = None
    # Finished before this epoch time (for purge).
    finished_before: float | None = None
    task_id: str | None = None
    # Time ranges, epoch seconds: `*_after` includes its instant, `*_before` does not.
    # A finished_* bound matches finished tasks only.
    enqueued_after: float | None = None
    enqueued_before: float | None = None
    finished_after: float | None = None
    # A literal, case-sensitive substring of the arguments (args or kwargs) as stored.
    # Only text serializers' arguments (json) are searched: pickled ones never match.
    args_contains: str | None = None
    # With args_contains: search only the newest `scan_limit` tasks the other filters
    # match (older than a page's key), so that a search costs at most that many rows
    # whatever the table's size; a screen pages on past them (Store.list's offset gives
    # the last one searched). None: every matching row.
    scan_limit: int | None = None


def work_topic(mode: str) -> str:
    """What idle workers of `mode` wait on: a task of that mode became due."""
    return f"work:{mode}"


def task_topic(task_id: str) -> str:
    """What a join of this task waits on: it ended (see Store.watch_task)."""
    return f"task:{task_id}"


class AsyncWatcher(Protocol):
    async def wait(self, timeout: float) -> None: ...

    def close(self) -> None: ...


class Store(ABC):
    """Durable task storage with leases: at-least-once delivery, owner-fenced settles."""

    # What open_store() takes to open this store again, in any process (sqlite:///path).
    url: str
    # The file, for a store that is one (SQLite); castord watches it for replacement.
    path: str
    # Leases and heartbeats are measured on this clock (castor/clocks.py); tests
    # may put a fake one in.
    clock: Callable[[], float] = staticmethod(boot_clock)
    # The Manager's failure_ttl (seconds; None keeps them): when tasks the store ends
    # itself (failed by WorkerLost, cancelled on their way back to the queue) expire,
    # unless their own options carry a failure_ttl.
    failure_ttl: float | None = None

    @abstractmethod
    def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        """Store tasks atomically (all or none); durable once this returns.

        Returns each task's id, or for a task with a unique_key whose unfinished
        twin is already stored, the twin's id (nothing is stored for it).
        """

    @abstractmethod
    def enqueue_workflow(self, workflow: NewWorkflow, tasks: Sequence[NewTask]) -> str:
        """Store a workflow's row and every member in one transaction (all or none): the
        first step pending, the rest (and the handler) waiting. Returns its id."""

    @abstractmethod
    def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        """The workflow's row and its members, or None if there is no such workflow."""

    @abstractmethod
    def stopped_members(self, workflow_id: str, first_bad: str, *, limit: int = 1000) -> list[TaskRecord]:
        """The members the workflow's stop ended (cancelled with WorkflowStopped), in step
        order, if `first_bad` is the member whose end stopped it (else none): what the
        process that ended `first_bad` writes their end lines and hooks from."""

    @abstractmethod
    def step_results(self, workflow_id: str, step: int) -> list[StepResult]:
        """The members of one step of a workflow, in their order (a successor's inputs)."""

    @abstractmethod
    def failed_members(self, workflow_id: str, step: int, *, limit: int = 100) -> tuple[list[FailedMember], int]:
        """The members of one step that failed, in their order (the first `limit`), and
        how many failed in all (what GroupFailed names)."""

    @abstractmethod
    def cancel_workflow(self, workflow_id: str, *, now: float,
                        ended: list[TaskRecord] | None = None) -> WorkflowStatus | None:
        """Stop a running workflow: its waiting and pending members end cancelled, its
        running ones are asked to cancel, its row ends cancelled; one transaction. A
        finished workflow is left as it is. Its state after the call (None: no such).
        `ended`, if given, receives the members this call ended (as they are now), whose
        end lines and hooks are the caller's: no worker sees them."""

    @abstractmethod
    def sweep_workflows(self, *, stale_after: float, now: float, limit: int = 100,
                        lock_timeout: float | None = None) -> list[SweptWorkflow]:
        """Look at up to `limit` running workflows that have not moved for `stale_after`
        seconds before `now` (oldest first), each under its row's lock (PostgreSQL: the
        ones another castord holds are skipped): recount its step's members that have not
        ended. A counter that disagrees is set right and the workflow advanced as a settle
        would have; a step with members gone ends it failed (castor.MembersMissing), its
        waiting members cancelled. A healthy one is only marked looked at (moved_at), so
        that the next call reaches others. The fixes made; [] when all were healthy.
        `lock_timeout`: the longest wait for a lock (default: the store's), so that
        castord's loop is never held long by another program's write."""

    @abstractmethod
    def unfinished_workflows(self) -> int:
        """How many workflows are still running (castord move refuses while any are)."""

    @abstractmethod
    def find_cached(self, cache_key: str, *, since: float) -> str | None:
        """The newest task with this cache_key that succeeded at or after `since`."""

    @abstractmethod
    def cancel(self, task_id: str, *, now: float, expires_at: float | None = None) -> TaskStatus | None:
        """Cancel a task: pending → cancelled at once; running → cancel requested
        (its worker stops it). Returns the status after the call (None: no such task)."""

    @abstractmethod
    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        """The claims (task id, fence) `owner` runs whose cancellation was requested."""

    @abstractmethod
    def set_progress(self, task_id: str, fence: int, fraction: float | None, message: str | None) -> bool:
        """Record a running task's progress (fenced by the claim's token)."""

    @abstractmethod
    def retry(self, query: Query | None = None, *, task_id: str | None = None, now: float) -> list[str]:
        """Send finished failed/cancelled tasks back to pending (by id, or all that
        match `query`, whose status must be failed or cancelled). Returns their ids."""

    @abstractmethod
    def count_workflow_members(self, query: Query) -> int:
        """How many tasks `query` matches that are workflow members: what a bulk retry
        of it leaves (a member is never retried by hand)."""

    @abstractmethod
    def concurrency_key_of(self, task_id: str) -> str | None:
        """The task's stored concurrency key (None: not limited, or no such task): what
        a copy of it ("Run again") keeps, so that the copy is limited as it was."""

    @abstractmethod
    def run_now(self, task_id: str, *, now: float) -> bool:
        """Make a pending task whose ETA is after `now` (scheduled, or waiting out a
        retry's backoff) due at once: same id, attempts and history; its workers are
        woken. False if it is not such a task (missing, due already, not pending)."""

    @abstractmethod
    def link_rerun(self, task_id: str, copy_id: str) -> bool:
        """Record in task `task_id`'s options ("rerun_as") the id of its latest copy
        (Manager.run_again); nothing else changes. False if there is no such task."""

    @abstractmethod
    def purge(self, query: Query) -> int:
        """Delete finished tasks matching `query` (never pending or running ones)."""

    @abstractmethod
    def purge_expired(self, *, now: float, limit: int = 1000) -> int:
        """Delete up to `limit` finished tasks whose expires_at has passed."""

    @abstractmethod
    def fire_schedule(self, name: str, tick: float, task: NewTask, *, now: float) -> bool:
        """Enqueue `task` for schedule `name`'s tick, unless that tick (or a later
        one) was already fired by anyone, or the schedule is disabled (read in the
        same transaction, so a disable committed first always wins); True if this
        call fired it."""

    # Disabled schedules are castor_pauses rows of kind 'schedule' (the table was
    # made for more kinds than queues): no migration, and claims never read them.

    def disable_schedule(self, name: str) -> bool:
        """Stop every caller of fire_schedule from firing `name`. True if this call
        disabled it, False if it was disabled already."""
        return self._pause("schedule", name)

    def enable_schedule(self, name: str) -> bool:
        """Let `name` fire again (from its next tick: missed ones stay missed). True
        if it was disabled."""
        return self._resume("schedule", name)

    def disabled_schedules(self) -> set[str]:
        return self._paused("schedule")

    @abstractmethod
    def schedules(self) -> dict[str, dict[str, Any]]:
        """Each schedule's last fired tick: {name: {"last_tick", "fired_at", "task_id"}}."""

    @abstractmethod
    def settle_one(self, settlement: Settlement) -> bool:
        """Write one finished attempt (fenced); False if the owner no longer holds it."""

    @abstractmethod
    def has_due(self, *, mode: str, queues: Sequence[str] | None, now: float, isolated: bool = False) -> bool:
        """Whether a claim would find a task (a read: no write lock)."""

    @abstractmethod
    def claim(
        self, owner: str, *, mode: str, queues: Sequence[str] | None, limit: int, lease: float, now: float,
        isolated: bool = False,
    ) -> list[TaskRecord]:
        """Move up to `limit` due tasks to running under `owner`'s lease, best first,
        each with a new fencing token. `now` is the wall clock (for ETAs); the lease
        runs on the store's own clock. isolated=True claims only tasks marked to run
        alone (see release_owner), False only the others."""

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
        isolated: bool = False,
    ) -> tuple[list[bool], list[TaskRecord]]:
        """Write finished attempts and claim up to `limit` more, in one transaction.

        The hot path of a busy worker: one commit per task instead of two.
        Returns, per settlement, whether it was accepted, and the new claims.
        """

    def exchange(
        self,
        settlements: Sequence[Settlement],
        owner: str,
        *,
        mode: str,
        queues: Sequence[str] | None,
        limit: int,
        lease: float,
        now: float,
        isolated: bool = False,
        look: bool = False,
    ) -> Exchanged:
        """settle_and_claim; with `look`, a claim that takes nothing is followed by what
        next_due says (the worker's next question before it waits). A store with round
        trips answers both in one (PostgreSQL does): a round trip and its CPU less per
        task on an idle worker (in latency, too small to tell from noise on its own:
        docs/benchmarks.md)."""
        accepted, claims = self.settle_and_claim(settlements, owner, mode=mode, queues=queues, limit=limit,
                                                 lease=lease, now=now, isolated=isolated)
        if look and not claims:
            try:
                return Exchanged(accepted, claims, True, self.next_due(mode=mode, now=now, queues=queues))
            except StoreUnavailable:  # written already: the worker looks again on its own
                pass
        return Exchanged(accepted, claims)

    @abstractmethod
    def claim_task(self, task_id: str, owner: str, *, lease: float, now: float) -> TaskRecord | None:
        """Claim one named pending task (eager mode); None if it is not pending."""

    @abstractmethod
    def renew(self, claims: Sequence[tuple[str, int]], *, lease: float) -> set[tuple[str, int]]:
        """Extend the leases of these claims (task id, fence); returns the ones still
        held. A claim missing from the answer lost its lease: its attempt is a zombie."""

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
        fence: int,
    ) -> bool:
        """Finish a running task; False if that claim no longer holds it."""
        return self.settle_one(Settlement(task_id, owner, attempt, status, result, error, now, fence=fence))

    @abstractmethod
    def requeue(self, task_id: str, fence: int, *, count_attempt: bool) -> bool:
        """Give a running task back to the queue (drain, crash); False if not held."""

    @abstractmethod
    def release_owner(self, owner: str, *, count_attempt: bool, max_lost: int) -> list[TaskRecord]:
        """Return every task `owner` still runs to pending, at once.

        count_attempt=True: the owner died. A task it ran alone (or in a process
        child) is blamed: lost += 1, and after max_lost it fails with WorkerLost.
        Thread tasks that ran several at once are not blamed: each is marked to run
        alone (isolate), so the next crash names the culprit. False: a drain
        stopped it (the attempt is not counted). Returns the records as they are
        after release (status pending, failed or cancelled; isolate set or not).
        """

    @abstractmethod
    def record_daemon(self, daemon_id: str, *, host: str, pid: int, app: str, started_at: float,
                      info: dict[str, Any], now: float, lock_timeout: float | None = None) -> None:
        """Upsert a castord master's heartbeat row, waiting at most `lock_timeout`
        seconds (default: the store's) for another writer's lock."""

    @abstractmethod
    def remove_daemon(self, daemon_id: str) -> None: ...

    @abstractmethod
    def daemons(self) -> list[dict[str, Any]]:
        """Every castord heartbeat row, freshest first."""

    @abstractmethod
    def recover_expired(self, *, now: float, max_lost: int) -> list[TaskRecord]:
        """Return tasks whose lease expired to pending (or fail them after max_lost,
        or end them cancelled if a cancel was asked); the tasks as they are now.

        Reads first and only takes the write lock when something has expired.
        """

    @abstractmethod
    def expire_pending(self, *, now: float, limit: int = 500) -> list[TaskRecord]:
        """End cancelled, with castor.TaskExpired as their error, up to `limit` pending
        tasks whose expiry (options "expires", castor/expiry.py) is at or before `now`:
        the tasks nobody claimed in time (a paused queue, no worker). The tasks as
        they are now. Reads first and only takes the write lock when one has expired.
        A task found expired at its claim is ended by the worker instead."""

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None: ...

    @abstractmethod
    def status(self, task_id: str) -> TaskStatus | None: ...

    @abstractmethod
    def list(self, query: Query, *, limit: int | None = None, offset: int = 0,
             after: tuple[float, str] | None = None,
             before: tuple[float, str] | None = None) -> list[TaskRecord]:
        """Newest first: by (enqueued_at, id), descending. `after` is a key (the last row's
        (enqueued_at, id) of the page before): only rows older than it (keyset paging,
        which stays fast on any page where OFFSET reads every row it skips). `before` is
        the first row's key of the page after: the `limit` rows just newer than it (the
        "newer" link), still newest first. Not both (ValueError)."""

    @abstractmethod
    def count(self, query: Query, *, limit: int | None = None) -> int:
        """How many tasks match; with `limit`, at most that many (a count that stops
        early: "10,000+" at a million rows instead of reading them all)."""

    @abstractmethod
    def pending_by_queue(self) -> dict[str, int]:
        """Queue depth: pending tasks per queue."""

    @abstractmethod
    def counts_by_status(self) -> dict[TaskStatus, int]: ...

    def estimated_counts_by_status(self, *, exact_up_to: int) -> dict[TaskStatus, tuple[int, bool]]:
        """Counts per status for a screen, each with True where it is the store's
        estimate: pending and running are always exact; a finished status with more
        than `exact_up_to` rows may be estimated (an exact count of a million finished
        rows reads a million index entries). This store counts them all."""
        return {status: (n, False) for status, n in self.counts_by_status().items()}

    @abstractmethod
    def queue_stats(self, *, now: float) -> dict[str, Any]:
        """{"scheduled": pending tasks with a future ETA, "oldest_due": the earliest ETA
        of a due pending task (or None), "failed_by_name": {name: count}}."""

    # Pausing: castords stop claiming from a paused queue; its tasks stay pending.
    # Stored as (kind, name) rows, so that pausing a task name can join as another kind.

    @abstractmethod
    def _pause(self, kind: str, name: str) -> bool:
        """Add the (kind, name) row of castor_pauses; True if this call added it."""

    @abstractmethod
    def _resume(self, kind: str, name: str) -> bool:
        """Remove it, and wake the waiters; True if it was there."""

    @abstractmethod
    def _paused(self, kind: str) -> set[str]: ...

    def pause_queue(self, queue: str) -> bool:
        """Stop claims from `queue` (any name: a queue exists when tasks name it).
        True if this call paused it, False if it was paused already."""
        return self._pause("queue", queue)

    def resume_queue(self, queue: str) -> bool:
        """Let claims take from `queue` again, and wake its workers. True if it was paused."""
        return self._resume("queue", queue)

    def paused_queues(self) -> set[str]:
        return self._paused("queue")

    # A task name paused: claims skip its tasks in every queue (kind 'name').

    def pause_name(self, name: str) -> bool:
        """Stop claims of tasks named `name` (any name). True if this call paused it."""
        return self._pause("name", name)

    def resume_name(self, name: str) -> bool:
        """Let claims take tasks named `name` again, and wake workers. True if it was paused."""
        return self._resume("name", name)

    def paused_names(self) -> set[str]:
        return self._paused("name")

    # Rate limits (castor/rate_limits.py): a token bucket per (kind, name), kind "name"
    # (a task name) or "queue", taken from by claims in their own transaction.

    @abstractmethod
    def set_rate_limit(self, kind: str, name: str, *, rate: float, burst: int) -> None:
        """Limit the tasks of a name (or queue) to `rate` a second, `burst` at once. The
        same limit again leaves its bucket as it is; a new one starts full; a changed
        one keeps its tokens, up to the new burst."""

    @abstractmethod
    def remove_rate_limit(self, kind: str, name: str) -> bool:
        """Drop a limit (and wake the waiters); True if there was one."""

    @abstractmethod
    def rate_limits(self) -> dict[tuple[str, str], dict[str, Any]]:
        """{(kind, name): {"rate", "burst", "tokens"}}, tokens as of now."""

    def sync_name_rate_limits(self, limits: dict[str, tuple[float, int]], *, unlimited: Sequence[str]) -> None:
        """What an app declares (a worker says it as it starts): set the task names'
        limits in `limits` ({name: (rate, burst)}), drop those of the `unlimited` names."""
        stored = self.rate_limits()
        for name, (rate, burst) in limits.items():
            if (row := stored.get(("name", name))) is None or (row["rate"], row["burst"]) != (rate, burst):
                self.set_rate_limit("name", name, rate=rate, burst=burst)
        for name in unlimited:
            if ("name", name) in stored:
                self.remove_rate_limit("name", name)

    # -- concurrency limits (castor/concurrency.py) ------------------------------------

    @abstractmethod
    def set_concurrency_limit(self, name: str, limit: int, *, per_key: bool = False) -> None:
        """At most `limit` tasks of `name` running at once (per_key: per value of their
        concurrency_key), counted and enforced by every claim of the store."""

    @abstractmethod
    def remove_concurrency_limit(self, name: str) -> bool:
        """Drop `name`'s limit; False if it had none."""

    @abstractmethod
    def concurrency_limits(self) -> dict[str, dict[str, Any]]:
        """{name: {"limit", "per_key", "running" (its limited tasks running now, every key)}}."""

    def sync_concurrency_limits(self, limits: dict[str, tuple[int, bool]], *, unlimited: Sequence[str]) -> None:
        """What an app declares (a worker says it as it starts): set the names' limits in
        `limits` ({name: (limit, per_key)}), drop those of the `unlimited` names."""
        stored = self.concurrency_limits()
        for name, (limit, per_key) in limits.items():
            if (row := stored.get(name)) is None or (row["limit"], row["per_key"]) != (limit, per_key):
                self.set_concurrency_limit(name, limit, per_key=per_key)
        for name in unlimited:
            if name in stored:
                self.remove_concurrency_limit(name)

    @abstractmethod
    def next_due(self, *, mode: str, now: float, queues: Sequence[str] | None = None) -> float | None:
        """The earliest wall-clock time after `now` at which a task of `mode` in `queues`
        (None: any) becomes due, or a lease expires: when an idle worker looks again."""

    def verify(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Raise StoreError if castor's tables are damaged (castord checks at start)."""
        return None

    def checkpoint(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Housekeeping a worker runs from its background thread (default: none)."""
        return None

    def background_checkpoints(self, enabled: bool) -> None:  # noqa: B027 - optional hook
        """While enabled, this process calls checkpoint() from a background thread,
        so commits need not checkpoint themselves (default: nothing to change)."""
        return None

    # Waiting. A `topic` (work_topic, task_topic) says what the waiter waits for; a
    # store may then wake it only for that (PostgreSQL does), or for any change (SQLite).
    # None: any change.

    @abstractmethod
    def generation(self, topic: str | None = None) -> int:
        """A counter that moves when the database may have changed (see wait_for_change)."""

    @abstractmethod
    def wait_for_change(self, seen: int, timeout: float, topic: str | None = None) -> int:
        """Block until the database changes after `seen` or `timeout` passes."""

    @abstractmethod
    def watch_async(self, topic: str | None = None) -> AsyncWatcher:
        """A watcher for asyncio; open it before checking what you wait for."""

    def told_result(self, task_id: str) -> ToldResult | None:
        """Inside watch_task, once task_topic(task_id) moved: the task's result if the
        store was told it with the wake-up (PostgreSQL, for a small success), so the
        joiner need not read the task. None: read it."""
        return None

    @contextmanager
    def hearing(self, topic: str) -> Iterator[None]:
        """While inside, notifications of this task topic move its generation (a store
        that hears only the topics someone waits on drops the others: a workflow's end,
        task_topic(workflow id), which the store always sends). Enter it before looking
        at what you wait for. By default every change moves every topic: nothing to do."""
        yield

    @contextmanager
    def watch_task(self, task_id: str) -> Iterator[TaskRecord | None]:
        """While inside, the end of this task moves task_topic(task_id); enter it before
        looking at the task. Gives the task as read once the watch began, if the store
        read it on the way (None: look yourself). By default every change moves every
        topic: nothing to do."""
        yield None

    @abstractmethod
    def close(self) -> None: ...

    # -- moving tasks between stores (castord move) ---------------------------------

    @abstractmethod
    def pending_copies(self, *, after: str | None = None, limit: int = 500) -> Sequence[TaskCopy]:
        """Up to `limit` pending tasks (due, scheduled or waiting to retry), in id order
        after the id `after`, with everything stored about them."""

    @abstractmethod
    def insert_copies(self, tasks: Sequence[TaskCopy]) -> CopyOutcome:
        """Store copies of another store's pending tasks as they are (id, arguments,
        eta, priority, queue, options, attempts, losses, history, unique and cache
        keys), pending, without owner or lease, in one transaction. A task whose id is
        already stored is left as it is; one whose unique key an unfinished task of
        another id holds is not stored (the unique rule)."""

    @abstractmethod
    def delete_copies(self, tasks: Sequence[TaskCopy]) -> Sequence[str]:
        """Delete each task that is still as copied (pending, the same claim token and
        attempts: one claimed, cancelled or retried since stays), in one transaction;
        returns the ids deleted."""

    @abstractmethod
    def merge_schedules(self, fired: dict[str, dict[str, Any]]) -> Sequence[str]:
        """Record schedules' last fired ticks (as `schedules()` gives them), each only
        where no tick or an earlier one is stored; returns the names written."""


@dataclass(slots=True)
class TaskCopy:
    """A stored task as another store takes it (castord move): its record, and what
    the record does not show."""

    record: TaskRecord
    # Queued to run at once (no ETA, or retried without a delay): due whatever the wall clock says.
    at_once: bool
    cache_key: str | None = None
    # concurrency=: the stored key ("" for a name limited as a whole); None: not limited.
    # A copy without it would run unlimited.
    concurrency_key: str | None = None

    @property
    def id(self) -> str:
        return self.record.id

    def as_new(self) -> NewTask:
        """The task as it was enqueued; a store's insert of a copy adds the rest."""
        r = self.record
        return NewTask(r.id, r.name, r.mode, r.serializer, r.args, r.kwargs, r.enqueued_at, r.eta, r.queue,
                       r.priority, r.daemon, r.options, r.unique_key, self.cache_key,
                       concurrency_key=self.concurrency_key)


@dataclass(slots=True)
class CopyOutcome:
    """What insert_copies() did with each task, by id."""

    inserted: list[str] = field(default_factory=list)
    # Already stored under that id (by an earlier move): left as it is.
    present: list[str] = field(default_factory=list)
    # Not stored: an unfinished task of another id holds its unique key (id -> that task's id).
    twins: dict[str, str] = field(default_factory=dict)


def page_direction(after: tuple[float, str] | None, before: tuple[float, str] | None) -> None:
    """Store.list takes a key to page from in one direction only."""
    if after is not None and before is not None:
        raise ValueError("list() pages from one key: after or before, not both")
