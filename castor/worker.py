"""The worker engine: claim → run → settle, in the current process.

No process management here: castord's children each run one Worker, and a
plain script can too (`Worker(manager, mode="process").run()`). `step()` does
one claim → run → settle, for tests and for callers that own their loop.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog

from castor import context, logs, task_log
from castor.context import TaskContext, baked
from castor.durations import to_seconds
from castor.errors import (
    ConfigurationError,
    LeaseLost,
    StoreUnavailable,
    TaskCancelled,
    TaskExpired,
    TaskTimeout,
    WorkflowInputMissing,
)
from castor.execution import EventLoopThread, Outcome, execute, failure_outcome, settlement_for
from castor.expiry import expired_message, expires_at
from castor.failures import describe
from castor.logs import get_logger
from castor.pool_slots import PoolSlots
from castor.rate_limits import BOOK_AHEAD_SECONDS
from castor.states import TaskStatus
from castor.store.base import Settlement, TaskRecord, work_topic
from castor.task import MODES
from castor.workflow_inputs import compose_inputs
from castor.workflow_stops import report_stopped

if TYPE_CHECKING:
    from castor.manager import Manager

log = get_logger("castor.worker")

# Bumped in every forked child, so `Worker.owner` notices a fork without a getpid()
# system call on each of its (several per task) uses.
_fork_generation = 0


def _after_fork() -> None:
    global _fork_generation
    _fork_generation += 1


os.register_at_fork(after_in_child=_after_fork)
_stdlib_log = logging.getLogger("castor.worker")

# An idle worker re-checks the database at least this often (for expired
# leases and anything a change notification missed); otherwise it sleeps.
IDLE_RECHECK_SECONDS = 0.5
DEFAULT_LEASE_SECONDS = 30.0
# How often a worker looks for expired leases (of any worker) to recover.
RECOVERY_SECONDS = 1.0
MAX_WORKER_LOSSES = 3
CHECKPOINT_SECONDS = 0.25
# How often a worker deletes finished tasks whose result_ttl / failure_ttl passed.
EXPIRY_SECONDS = 2.0
# After the database stayed locked past the Manager's lock_timeout, pause this
# long before trying again (so that lock_timeout=0 does not spin).
LOCKED_PAUSE_SECONDS = 0.1
# While the store stays unavailable (a PostgreSQL server down fails each try at
# once), say so again at most this often, not once per try.
UNAVAILABLE_REPEAT_SECONDS = 30.0
PURGE_BATCH = 1000
PURGE_BATCHES_PER_ROUND = 50  # up to 25,000 expired rows a second per worker
# Prefetch (process mode): claim several tasks per write transaction when tasks
# are short, so that the transaction per task (SQLite has one writer) stops
# being the bottleneck. A batch is sized to run in about PREFETCH_BUDGET_SECONDS
# by the observed task durations, at most PREFETCH_MAX tasks; claimed tasks that
# wait behind a task running longer than HANDBACK_SECONDS go back to the queue.
PREFETCH_MAX = 32
PREFETCH_BUDGET_SECONDS = 0.002
HANDBACK_SECONDS = 0.01
DURATION_WEIGHT = 0.2  # of the newest task in the running average of durations


class Worker:
    """Runs tasks of one mode: "process" (one at a time) or "thread" (a pool of `threads`)."""

    def __init__(
        self,
        manager: Manager,
        *,
        mode: str = "process",
        threads: int = 4,
        queues: Sequence[str] | None = None,
        lease: float = DEFAULT_LEASE_SECONDS,
        owner: str | None = None,
        prefetch: int = PREFETCH_MAX,
        max_lost: int = MAX_WORKER_LOSSES,
    ):
        if mode not in MODES:
            raise ConfigurationError(f"Worker mode must be 'thread' or 'process', not {mode!r}")
        if not isinstance(threads, int) or threads < 1:
            raise ConfigurationError(f"threads must be a positive integer, not {threads!r}")
        self.manager = manager
        self.store = manager.store
        # What the engine needs of the Manager: its store, its registry and its retention policy.
        self.registry = manager.registry
        self.retention = manager.retention
        self.hooks = manager.hooks  # manager.on(...): fired beside the task_log lines
        self.mode = mode
        self._wake_topic = work_topic(mode)  # what wakes this worker when idle
        self.concurrency = 1 if mode == "process" else threads
        self.queues = list(queues) if queues else None
        seconds = to_seconds(lease, "lease")
        if not seconds:
            raise ConfigurationError(f"lease must be more than 0 seconds, not {lease!r}")
        if not math.isfinite(seconds):
            # A lease that never runs out: a crashed worker's tasks would never run again.
            raise ConfigurationError(f"lease must be a finite number of seconds, not {lease!r}")
        self.lease: float = seconds
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise ConfigurationError(f"prefetch must be a positive integer, not {prefetch!r}")
        self.prefetch = prefetch  # most tasks a process worker claims at once (1: one at a time)
        if not isinstance(max_lost, int) or isinstance(max_lost, bool) or max_lost < 1:
            raise ConfigurationError(f"max_lost must be a positive integer, not {max_lost!r}")
        # A task whose worker was lost this many times fails (WorkerLost) instead of running again.
        self.max_lost = max_lost
        self._owner = owner
        # An explicit owner is kept (until a fork); otherwise one is made on first use.
        self._owner_generation = -1
        self._stop = threading.Event()
        self.done = 0  # tasks settled by this worker
        # Keyed by claim (task id, fencing token), not by task id: a worker that
        # stalled past its lease may claim the same task again while the old
        # attempt still runs, and the two must not be confused.
        self.running: dict[tuple[str, int], TaskRecord] = {}  # claim -> record, until settled
        self.contexts: dict[tuple[str, int], TaskContext] = {}  # claim -> context, while its function runs
        self._running_lock = threading.Lock()
        self._durations: dict[tuple[str, int], float] = {}
        self._exceptions: dict[tuple[str, int], BaseException] = {}  # what attempts raised, for the hooks
        # A task marked to run alone (it ran beside a thread-host crash) is running:
        # claim nothing beside it.
        self._solo: tuple[str, int] | None = None
        self._want_solo = False  # such tasks wait: stop claiming until the pool is idle
        # The pool's claimer is asleep until the database changes: a pool thread
        # then writes its own outcome (whose commit wakes the claimer).
        self._claimer_waiting = False
        self._hot = False  # the last round claimed something: skip the read-first check
        # The last claim took all it asked for: work flows, so the next exchange does not
        # ask the store when to look again (next_due) in case it finds nothing.
        self._full = False
        self._looked: tuple[float | None] | None = None  # what the last exchange's look said
        self._unavailable: tuple[float, float] | None = None  # since, last said (monotonic)
        self._unavailable_lock = threading.Lock()
        self._max_tasks: int | None = None
        # Called (from a timer thread) when a task passes its timeout=; castord's
        # process children replace the default (an exception raised in the task's
        # thread) with "record the timeout, then exit so the master replaces us".
        self.on_timeout: Callable[[TaskRecord], None] | None = None
        # Likewise when a running task is cancelled (castord: record it, then exit).
        self.on_cancel: Callable[[TaskRecord], None] | None = None
        # Called when a renewal finds that a running attempt's lease is gone (it
        # stalled past the lease and the task went to another claim): the default
        # stops it in its thread; castord's process children exit instead.
        self.on_lease_lost: Callable[[TaskRecord], None] | None = None
        # Called with (task name, status, seconds, task id) for each settled task
        # (castord's metrics and dashboard).
        self.on_settled: Callable[[str, str, float, str], None] | None = None
        # Thread workers run `async def` tasks on one shared event loop (started lazily).
        self._loop_thread: EventLoopThread | None = None
        self._next_recovery = 0.0
        # Outcomes not yet written because another program held the database
        # locked past lock_timeout; written with the next exchange.
        self._unwritten: list[Settlement] = []
        # Process mode: tasks claimed with the one running, not started yet, in
        # claim order; and the outcomes of a batch, written with the next claim.
        # Both under _running_lock (the hand-back thread takes from them).
        self.waiting: deque[TaskRecord] = deque()
        self._finished: list[Settlement] = []
        # Monotonic time `waiting` was filled from empty, or (pool) a thread last took from it.
        self._waiting_since = 0.0
        # Pool: a thread that takes a held task and leaves at most this many nudges the
        # claimer (once per batch) to claim the next batch while they run (0: never).
        self._refill_at = 0
        self._refill_asked = True
        self._task_started: float | None = None  # process mode, in a batch: when the running task began
        self._handed = 0  # pool: claimed tasks given to threads that have not started them yet
        self._average_duration: float | None = None
        self._handback: HandBack | None = None
        self._limits_synced = False  # the app's rate_limit= and concurrency= options are in the store

    @property
    def owner(self) -> str:
        """This worker's lease-owner name: host, pid and a random suffix (new after a fork)."""
        if self._owner_generation != _fork_generation:
            if self._owner is None or self._owner_generation != -1:
                self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
            self._owner_generation = _fork_generation
        return self._owner  # type: ignore[return-value]

    # -- one step ------------------------------------------------------------

    def step(self, now: float | None = None) -> bool:
        """Claim one due task, run it here, settle it. False if nothing was due."""
        self._sync_rate_limits()
        claims = self._claim(1, now)
        if not claims:
            return False
        self.run_claimed(claims[0])
        return True

    def _claim(self, limit: int, now: float | None = None, *, isolated: bool = False) -> list[TaskRecord]:
        return self.store.claim(
            self.owner, mode=self.mode, queues=self.queues, limit=limit, lease=self.lease,
            now=time.time() if now is None else now, isolated=isolated,
        )

    def _sync_rate_limits(self) -> None:
        """Before its first claim, store the app's rate_limit= and concurrency= options
        (the fleet shares them through the store). A StoreUnavailable leaves it for the
        next claim."""
        if not self._limits_synced:
            self.manager.sync_rate_limits()
            self.manager.sync_concurrency_limits()
            self._limits_synced = True

    def run_claimed(self, record: TaskRecord) -> Outcome:
        """Run a task this worker has claimed and write its outcome at once.

        A BaseException the task raised (KeyboardInterrupt, GeneratorExit, ...) is
        recorded as its failure, then passed on to the caller.
        """
        try:
            outcome, settlement = self._execute(record)
        except BaseException as exc:
            settlement = settlement_for(self.retention, record, failure_outcome(record, exc), self.owner, time.time())
            self._settled(settlement, self.store.settle_one(settlement))
            raise
        accepted = self.store.settle_one(settlement)
        self._settled(settlement, accepted)
        return outcome

    def _execute(self, record: TaskRecord) -> tuple[Outcome, Settlement]:
        _await_start(record)
        key = record.claim
        pid = os.getpid()
        with self._running_lock:
            self.running[key] = record
        if _debug_enabled():
            log.debug("task.started", task_id=record.id, task_name=record.name, queue=record.queue,
                      attempt=record.attempts)
        structlog.contextvars.bind_contextvars(
            task_id=record.id, task_name=record.name, queue=record.queue, attempt=record.attempts)
        expiry = expires_at(record.options)
        expired = expiry is not None and expiry <= time.time()  # ends cancelled without starting
        if self.hooks.listeners and not record.cancel_requested and not expired:
            self.hooks.started(record)  # before any timeout or cancel can aim at it
        ctx = TaskContext(record, self.store, self.owner)
        self.contexts[key] = ctx  # a dict update is atomic; readers copy the values
        token = context._current.set(ctx)  # noqa: SLF001 - the worker owns the context
        guard = TimeoutGuard(self, ctx) if record.options.get("timeout") else None
        try:
            if record.cancel_requested:  # asked while it was being claimed
                ctx.cancel_requested = True
                raise _cancelled_class(record)()
            if expired:
                assert expiry is not None
                ctx.cancel_requested = True  # castor's own cancel: the outcome stays cancelled
                raise TaskExpired(expired_message(expiry))
            inputs = compose_inputs(self.store, record) if record.wf_input is not None else ()
            outcome = execute(self.registry, record, self._event_loop if self.mode == "thread" else None,
                              self.manager.instruments, inputs)
            if os.getpid() != pid:
                _leave_as_stranger(outcome)
        except TaskCancelled as exc:  # delivered before the function began
            outcome = failure_outcome(record, exc)
        except WorkflowInputMissing as exc:  # never retried: the input will not come back
            outcome = Outcome(TaskStatus.FAILED, error=describe(exc), exception=exc)
        finally:
            if os.getpid() != pid:
                _leave_as_stranger(None)
            if guard is not None:
                guard.cancel()
            ctx.disarm()
            context._current.reset(token)  # noqa: SLF001
            self.contexts.pop(key, None)
            structlog.contextvars.unbind_contextvars("task_id", "task_name", "queue", "attempt")
        if outcome.status == TaskStatus.CANCELLED and not ctx.cancel_requested:
            # The function raised TaskCancelled on its own: that is a failure like any other.
            outcome = Outcome(TaskStatus.FAILED, error=outcome.error, duration=outcome.duration)
        ctx.flush()
        settlement = settlement_for(self.retention, record, outcome, self.owner, time.time())
        self._durations[key] = outcome.duration
        if outcome.exception is not None and self.hooks.listeners:
            self._exceptions[key] = outcome.exception  # for the hooks' event.exception, until settled
        average = self._average_duration
        self._average_duration = outcome.duration if average is None else \
            average + DURATION_WEIGHT * (outcome.duration - average)
        return outcome, settlement

    def _execute_safely(self, record: TaskRecord) -> Settlement:
        try:
            return self._execute(record)[1]  # a forked copy never comes back from it (see _execute)
        except BaseException as exc:  # noqa: BLE001 - e.g. a TaskTimeout delivered a moment late
            log.exception("worker.execute_error", task_id=record.id, task_name=record.name)
            self.contexts.pop(record.claim, None)
            return settlement_for(self.retention, record, failure_outcome(record, exc), self.owner, time.time())

    def _settled(self, settlement: Settlement, accepted: bool) -> None:
        """Bookkeeping and the log line once an outcome is written (or refused)."""
        key = settlement.claim
        with self._running_lock:  # pool threads settle too (see _settle_here)
            record = self.running.pop(key, None)
            if key == self._solo:
                self._solo = None
                self._want_solo = True  # another may be waiting: look now, not at the next round
            self.done += 1
        duration = self._durations.pop(key, 0.0)
        if self.on_settled is not None and record is not None:
            self.on_settled(record.name, "retry" if settlement.status == TaskStatus.PENDING
                            else str(settlement.status), duration, record.id)
        exception = self._exceptions.pop(key, None) if self._exceptions else None
        task_log.settled(settlement, record, duration, accepted)
        if accepted and self.hooks.listeners:  # a refused settle: another attempt's outcome decides
            self.hooks.settled(settlement, record, exception)
        if accepted and settlement.workflow_id is not None:
            self._report_stopped([(settlement.workflow_id, settlement.task_id, settlement.status)])

    def _report_stopped(self, ended: list[tuple[str | None, str, TaskStatus]]) -> None:
        """The members this worker's ends stopped: their lines and hooks (castor/workflow_stops.py).
        A read that fails leaves them without a line, never the worker without its loop."""
        try:
            report_stopped(self.store, self.hooks, ended, found_by=self.owner)
        except StoreUnavailable:
            log.warning("worker.stopped_members_unread", workflow_ids=sorted({w for w, _, _ in ended if w}))

    def close(self) -> None:
        """Stop the event-loop thread started for `async def` tasks (run() does this
        on its way out; a caller that only step()s calls it)."""
        if self._loop_thread is not None and not self.running:
            self._loop_thread.close()
            self._loop_thread = None

    def settle(self, settlement: Settlement, duration: float | None = None) -> bool:
        """Write the outcome of a task this worker holds (one that castord stopped:
        a timeout, a cancel), with its log line and tally, as if it had ended here."""
        if duration is not None:
            self._durations[settlement.claim] = duration
        accepted = self.store.settle_one(settlement)
        self._settled(settlement, accepted)
        return accepted

    def _exchange(self, settlements: list[Settlement], limit: int) -> list[TaskRecord]:
        """Write finished outcomes and claim up to `limit` more.

        While work is flowing this is one transaction per round; when the last
        round found nothing, a read checks for work before taking the write lock.
        """
        self._sync_rate_limits()
        now = time.time()
        if time.monotonic() >= self._next_recovery:  # monotonic: a clock step must not pause recovery
            recovered = self.store.recover_expired(now=now, max_lost=self.max_lost)
            task_log.released(recovered, reason="lease expired", counted=True, found_by=self.owner)
            if recovered and self.hooks.listeners:
                self.hooks.released(recovered, counted=True)
            if recovered:
                self._report_stopped([(r.workflow_id, r.id, r.status) for r in recovered])
            self._next_recovery = time.monotonic() + RECOVERY_SECONDS
            self._want_solo = self.store.has_due(mode=self.mode, queues=self.queues, now=now, isolated=True)
        self._looked = None
        if settlements or self._hot:
            # A worker that finds nothing looks when to look again before it waits: in
            # the same round trip (Store.exchange), unless work is flowing.
            done = self.store.exchange(
                settlements, self.owner, mode=self.mode, queues=self.queues, limit=limit,
                lease=self.lease, now=now, look=limit > 0 and not self._full,
            )
            if done.looked:
                self._looked = (done.next_due,)
            claims = done.claims
            with logs.lines_together():  # the batch's task lines in one write
                for settlement, ok in zip(settlements, done.accepted, strict=True):
                    self._settled(settlement, ok)
        else:
            claims = self._claim(limit, now) if limit > 0 else []
        self._hot = bool(claims)
        self._full = limit > 0 and len(claims) >= limit
        return claims

    def _exchange_or_wait(self, settlements: list[Settlement], limit: int) -> list[TaskRecord]:
        """_exchange, outlasting a long write transaction of another program.

        StoreUnavailable (on SQLite, DatabaseLockedError) means nothing was
        written (the transaction never began), so the outcomes are kept and
        written next time: a worker waits it out, saying so each time, instead of
        dying (and, in castord, being replaced over and over while it lasts).
        """
        pending = self._unwritten + settlements
        try:
            claims = self._exchange(pending, limit)
        except StoreUnavailable as exc:
            self._unwritten = pending
            self.note_unavailable(exc, len(pending))
            time.sleep(LOCKED_PAUSE_SECONDS)
            return []
        self._unwritten = []
        if self._unavailable is not None:
            with self._unavailable_lock:
                spell, self._unavailable = self._unavailable, None
            if spell is not None:
                log.info("worker.database_available", down_s=round(time.monotonic() - spell[0], 3))
        return claims

    def note_unavailable(self, exc: StoreUnavailable, unwritten: int = 0) -> None:
        """Log that the store cannot be used: once when it begins, then at most every
        UNAVAILABLE_REPEAT_SECONDS while it lasts."""
        with self._unavailable_lock:  # the loop and the housekeeping thread both say it
            now = time.monotonic()
            since, said = self._unavailable or (now, -math.inf)
            if now - said >= UNAVAILABLE_REPEAT_SECONDS:
                log.warning("worker.database_locked", error=str(exc), unwritten=unwritten,
                            down_s=round(now - since, 3))
                said = now
            self._unavailable = (since, said)

    # -- the loop ------------------------------------------------------------

    def stop(self) -> None:
        """Ask run() to return: it stops claiming and finishes the tasks it holds."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, *, until_idle: bool = False, max_tasks: int | None = None) -> None:
        """Work until stop() (or, with until_idle, until nothing is due).

        With max_tasks, stop claiming after that many tasks (castord recycles
        children this way). On return every non-daemon task this worker claimed
        is settled; daemon tasks may still be running in pool threads (see
        release_held()).
        """
        self._max_tasks = max_tasks
        keeper = LeaseKeeper(self)
        keeper.start()
        self.store.background_checkpoints(True)
        try:
            if self.concurrency == 1:
                self._run_serial(until_idle)
            else:
                self._run_pool(until_idle)
        finally:
            keeper.stop()
            self.store.background_checkpoints(False)
            self.close()

    def _run_serial(self, until_idle: bool) -> None:
        try:
            while True:
                seen = self.store.generation(self._wake_topic)
                self._check_max_tasks()
                if self._want_solo and not self._stop.is_set():
                    # A task set apart to run alone (it was held when a worker crashed)
                    # goes before the next batch, so a steady stream cannot starve it.
                    self._exchange_or_wait(self._take_finished(), 0)
                    claims = self._claim_solo()
                else:
                    claims = []
                if not claims:
                    claims = self._exchange_or_wait(self._take_finished(),
                                                    0 if self._stop.is_set() else self._batch_size())
                if claims:
                    self._run_batch(claims)
                    continue
                if (self._stop.is_set() or until_idle) and not self._unwritten and not self._finished:
                    return
                self._wait_for_work(seen)
        finally:
            if self._handback is not None:
                self._handback.stop()
                self._handback = None

    def _batch_size(self) -> int:
        """How many tasks to claim in one transaction: one until durations are
        known, then as many as run in about PREFETCH_BUDGET_SECONDS (and never
        past max_tasks)."""
        average = self._average_duration
        size = 1 if average is None else max(1, min(self.prefetch, int(PREFETCH_BUDGET_SECONDS / max(average, 1e-6))))
        return min(size, self._room())

    def _room(self) -> int:
        """How many more tasks max_tasks lets this worker claim."""
        if self._max_tasks is None:
            return sys.maxsize
        with self._running_lock:
            return max(0, self._max_tasks - self.done - len(self.running) - len(self.waiting) - self._handed)

    def _run_batch(self, claims: list[TaskRecord]) -> None:
        """Run claimed tasks one after another, best first. Those not started yet
        wait in `waiting`, where the hand-back thread may take them back."""
        record: TaskRecord | None = claims[0]
        self._task_started = time.monotonic()  # before _hold wakes the watcher
        self._hold(claims[1:])
        while record is not None:
            self._task_started = time.monotonic()
            settlement = self._execute_safely(record)
            with self._running_lock:
                self._finished.append(settlement)
            record = self._next_waiting()
        self._task_started = None
        if self._stop.is_set():
            self.hand_back()  # stopping: what has not started goes back to the queue

    def _hold(self, records: list[TaskRecord], *, watch: bool = True) -> None:
        """Keep claimed tasks to start next, in claim order. A process worker's
        HandBack thread watches them (watch); a pool's claimer does it itself."""
        if not records:
            return
        with self._running_lock:
            if not self.waiting:
                self._waiting_since = time.monotonic()
            self.waiting.extend(records)
        if watch:
            if self._handback is None:
                self._handback = HandBack(self)
            self._handback.arm()

    def _dispatch_waiting(self, free: int, work: queue.SimpleQueue[TaskRecord | None]) -> int:
        """Give up to `free` waiting tasks to the pool's threads; how many it gave."""
        if self._stop.is_set():
            return 0  # stopping: they go back to the queue
        with self._running_lock:
            records = [self.waiting.popleft() for _ in range(min(free, len(self.waiting)))]
            self._handed += len(records)
            if records:
                self._waiting_since = time.monotonic()
        for record in records:
            work.put(record)
        return len(records)

    def _next_waiting(self) -> TaskRecord | None:
        """The next claimed task to start (none once stopping: they go back)."""
        with self._running_lock:
            if self.waiting and not self._stop.is_set():
                record = self.waiting.popleft()
                self._waiting_since = time.monotonic()  # the pool's hand-back test: still moving
                self.running[record.claim] = record  # counted as running from here (max_tasks)
                return record
        return None

    def _take_finished(self) -> list[Settlement]:
        with self._running_lock:
            finished, self._finished = self._finished, []
        return finished

    def hand_back(self, *, write_finished: bool = True, keep_booked: bool = False) -> int:
        """Return the claimed tasks not started yet to the queue (the attempt not
        counted) and, with write_finished, write the batch's finished outcomes
        now. Safe from any thread (castord calls it before a child leaves)."""
        with self._running_lock:
            # keep_booked (a long task holds the batch up, the worker goes on): a task
            # whose start was booked (a rate limit's token, castor/rate_limits.py) stays,
            # since it waits for its moment, not behind the long task, and handed back
            # its token would be lost.
            now = time.time()
            booked = [r for r in self.waiting if keep_booked and r.started_at is not None and r.started_at > now]
            back = [r for r in self.waiting if r not in booked]
            self.waiting.clear()
            self.waiting.extend(booked)
        finished = self._take_finished() if write_finished else []
        if finished:
            try:
                accepted, _ = self.store.settle_and_claim(
                    finished, self.owner, mode=self.mode, queues=self.queues, limit=0, lease=self.lease,
                    now=time.time())
            except Exception:  # noqa: BLE001 - e.g. locked: the loop writes them, and waits the lock out
                with self._running_lock:
                    self._finished[:0] = finished
            else:
                for settlement, ok in zip(finished, accepted, strict=True):
                    self._settled(settlement, ok)
        kept: list[TaskRecord] = []
        for record in back:
            try:
                self.store.requeue(record.id, record.fence, count_attempt=False)
            except Exception:  # noqa: BLE001 - still ours: run it after all
                kept.append(record)
        if kept:
            with self._running_lock:
                self.waiting.extendleft(reversed(kept))
        if back and _debug_enabled():
            log.debug("worker.handed_back", tasks=len(back) - len(kept))
        return len(back) - len(kept)

    def _run_pool(self, until_idle: bool) -> None:
        slots = PoolSlots(self.concurrency)
        work: queue.SimpleQueue[TaskRecord | None] = queue.SimpleQueue()
        finished: queue.SimpleQueue[Settlement] = queue.SimpleQueue()
        threads = [
            threading.Thread(target=self._pool_thread, args=(work, finished, slots),
                             name=f"castor-task-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        for thread in threads:
            thread.start()
        unwritten: list[Settlement] = []  # finished, to be written with the next exchange
        unwritten_since = 0.0
        try:
            while not self._check_max_tasks():
                if self._solo is not None or self._want_solo:
                    self.hand_back(write_finished=False)  # it runs with the pool empty
                    if unwritten:
                        self._exchange_or_wait(unwritten, 0)
                        unwritten = []
                    self._solo_round(slots, work, finished)
                    continue
                # While a batch is held, wake often enough that nothing claimed waits,
                # and no outcome stays unwritten, more than HANDBACK_SECONDS.
                busy = bool(self.waiting or unwritten)
                got_slot = slots.acquire(timeout=HANDBACK_SECONDS / 2 if busy else IDLE_RECHECK_SECONDS)
                more = _drain(finished)
                if more and not unwritten:
                    unwritten_since = time.monotonic()
                unwritten += more
                now = time.monotonic()
                if self.waiting and now - self._waiting_since >= HANDBACK_SECONDS:
                    # No thread took a held task for that long: every thread is busy with a longer one.
                    self.hand_back(write_finished=False, keep_booked=True)
                overdue = bool(unwritten) and now - unwritten_since >= HANDBACK_SECONDS
                if not got_slot:
                    if slots.nudged():  # not a timeout: a thread took a held task (_hold_for_pool)
                        if self._refill_due():
                            # Claim the next batch now, with the outcomes so far, while
                            # the threads run this one.
                            claims = self._exchange_or_wait(unwritten, min(self._batch_size(), self._room()))
                            unwritten = []
                            self._hold_for_pool(claims)
                        continue
                    if overdue or not self.waiting:
                        self._exchange_or_wait(unwritten, 0)
                        unwritten = []
                    continue
                free = 1
                while free < self.concurrency and slots.acquire(blocking=False):
                    free += 1
                if self.waiting:
                    # Short tasks claimed with the last batch: start them, no transaction
                    # (unless outcomes have waited too long to be written).
                    if overdue:
                        self._exchange_or_wait(unwritten, 0)
                        unwritten = []
                    started = self._dispatch_waiting(free, work)
                    for _ in range(free - started):
                        slots.release()
                    continue
                seen = self.store.generation(self._wake_topic)
                # Short tasks: claim more than the free threads; the rest wait in
                # `waiting` for the next free thread.
                want = min(free + self._batch_size() - 1, self._room())
                claims = self._exchange_or_wait(unwritten, want)
                unwritten = []
                for _ in range(free - min(free, len(claims))):
                    slots.release()
                with self._running_lock:
                    self._handed += min(free, len(claims))
                for record in claims[:free]:
                    work.put(record)
                self._hold_for_pool(claims[free:])
                if claims:
                    continue
                if until_idle and self._idle(slots):
                    return
                self._claimer_waiting = True
                try:
                    if finished.empty():  # a settlement queued just before the flag was up
                        self._wait_for_work(seen)
                finally:
                    self._claimer_waiting = False
        finally:
            self.hand_back(write_finished=False)  # claimed, not started: back to the queue
            for settlement in unwritten:
                finished.put(settlement)
            for _ in threads:
                work.put(None)
            # Settle everything non-daemon before returning; daemon tasks may be
            # left running (the caller requeues them, see release_held()).
            while self._holds_non_daemon() or self._handed:  # handed: about to start
                try:
                    first = [finished.get(timeout=IDLE_RECHECK_SECONDS)]
                except queue.Empty:
                    first = []
                self._exchange_or_wait(first + _drain(finished), 0)
            self._exchange_or_wait(_drain(finished), 0)
            while self._unwritten:
                self._exchange_or_wait([], 0)

    def _hold_for_pool(self, records: list[TaskRecord]) -> None:
        """Hold claimed tasks for the pool's threads to take. The first thread to take
        one nudges the claimer, which claims the next batch (with the outcomes written
        so far) while the threads run this one: on a short-task backlog one exchange
        is in flight all the time, instead of one after each batch ran out (8 threads,
        10,000 no-op tasks on PostgreSQL: ~10 % more tasks/s, judged by pairs in
        docs/benchmarks.md). At most two batches are held. Never with batches of one
        (long tasks)."""
        size = self._batch_size()
        self._refill_at = size if size > 1 else 0
        self._refill_asked = not records or not self._refill_at
        self._hold(records, watch=False)

    def _refill_due(self) -> bool:
        """Whether to claim the next batch before the held tasks are gone: no more
        than a batch is held, and the worker is not stopping (or at max_tasks)."""
        return 0 < len(self.waiting) <= self._refill_at and not self._stop.is_set() and self._room() > 0

    def _solo_round(self, slots: PoolSlots, work: queue.SimpleQueue[TaskRecord | None],
                    finished: queue.SimpleQueue[Settlement]) -> None:
        """A task marked to run alone waits (it ran beside a thread-host crash): let
        the pool empty, run it with nothing beside it, claim nothing meanwhile."""
        if self._solo is None and self._idle(slots):
            claims = self._claim_solo()
            if claims:
                slots.acquire()
                with self._running_lock:  # counted as handed, as _pool_thread uncounts it
                    self._handed += 1
                work.put(claims[0])
            return
        try:
            first = [finished.get(timeout=IDLE_RECHECK_SECONDS)]
        except queue.Empty:
            first = []
        self._exchange_or_wait(first + _drain(finished), 0)

    def _claim_solo(self) -> list[TaskRecord]:
        self._want_solo = False  # set again when a solo task ends, and by each recovery round
        claims = self._claim(1, isolated=True)
        if claims:
            with self._running_lock:
                self._solo = claims[0].claim
            log.info("task.isolated", task_id=claims[0].id, task_name=claims[0].name,
                     reason="it ran beside a crash of its thread host; running it alone")
        return claims

    def _event_loop(self) -> EventLoopThread:
        with self._running_lock:
            if self._loop_thread is None:
                self._loop_thread = EventLoopThread()
            return self._loop_thread

    def _holds_non_daemon(self) -> bool:
        with self._running_lock:
            return any(not r.daemon for r in self.running.values())

    def _check_max_tasks(self) -> bool:
        """True once the worker should stop claiming. The tasks it claimed with
        the last batch still run (a stop() hands them back instead)."""
        if self._max_tasks is not None and not self.waiting and \
                self.done + len(self.running) + self._handed >= self._max_tasks:
            self._stop.set()
        return self._stop.is_set()

    def check_cancellations(self) -> None:
        """Stop the running tasks someone asked to cancel (the housekeeping thread calls this)."""
        for claim in self.store.cancel_requests(self.owner):
            ctx = self.contexts.get(claim)
            if ctx is None:
                self._mark_waiting_cancelled(claim)
                continue
            if ctx.cancel_requested:
                continue
            ctx.cancel_requested = True
            log.info("task.cancel_requested", task_id=claim[0], task_name=ctx.record.name)
            if self.on_cancel is not None:
                self.on_cancel(ctx.record)
            else:
                ctx.interrupt(_cancelled_class(ctx.record))

    def _mark_waiting_cancelled(self, claim: tuple[str, int]) -> None:
        """A claimed task not started yet was cancelled: it ends cancelled as it
        would start (castor/worker.py _execute), never running its function."""
        with self._running_lock:
            for record in self.waiting:
                if record.claim == claim:
                    record.cancel_requested = True

    def renew_leases(self) -> None:
        """Extend the leases of the running attempts; stop those whose lease is gone.

        A lease is gone when this worker stalled past it (SIGSTOP, a long pause, a
        slow disk) and the task was recovered, perhaps claimed again, even by this
        very worker: the old attempt is a zombie whose outcome would be refused.
        """
        with self._running_lock:
            waiting = [r.claim for r in self.waiting]
        claims = list(self.running)
        if not claims and not waiting:
            return
        held = self.store.renew(claims + waiting, lease=self.lease)
        lost = set(waiting) - held
        if lost:  # not started: nothing to stop, just never start them
            with self._running_lock:
                self.waiting = deque(r for r in self.waiting if r.claim not in lost)
        for claim in claims:
            ctx = self.contexts.get(claim)
            if claim in held or ctx is None or not ctx.active:
                continue  # renewed, or finished meanwhile (its settle decides)
            record = ctx.record
            log.warning("task.lease_lost", task_id=record.id, task_name=record.name, queue=record.queue,
                        attempt=record.attempts, fence=record.fence,
                        reason="the lease expired while this attempt ran; another claim holds the task")
            if self.on_lease_lost is not None:
                self.on_lease_lost(record)
            else:
                ctx.interrupt(baked(LeaseLost, f"task {record.id} ({record.name}) lost its lease while "
                                    "running; the task went to another attempt"))

    def release_held(self) -> list[TaskRecord]:
        """Requeue, without counting the attempt, every task this worker still holds."""
        return self.store.release_owner(self.owner, count_attempt=False, max_lost=self.max_lost)

    def _idle(self, slots: PoolSlots) -> bool:
        with self._running_lock:
            return not self.running and slots.free == self.concurrency

    def _pool_thread(
        self, work: queue.SimpleQueue[TaskRecord | None], finished: queue.SimpleQueue[Settlement],
        slots: PoolSlots,
    ) -> None:
        while (record := work.get()) is not None:
            with self._running_lock:  # counted as handed until it counts as running
                self._handed -= 1
                self.running[record.claim] = record
            while record is not None:  # then the short tasks claimed with it, if any wait
                settlement = self._execute_safely(record)
                if not (self._claimer_waiting and self._settle_here(settlement)):
                    finished.put(settlement)
                record = self._next_waiting()
                if record is not None and len(self.waiting) <= self._refill_at and not self._refill_asked:
                    self._refill_asked = True
                    slots.nudge()  # few enough held: the claimer claims the next batch now
            slots.release()  # after the put: the claimer then settles it at once

    def _settle_here(self, settlement: Settlement) -> bool:
        """The claimer sleeps until the database changes: write this outcome now
        rather than leave it queued until the claimer's next re-check (a thread
        task's join() waited up to 0.5 s). False: leave it to the claimer."""
        try:
            accepted = self.store.settle_one(settlement)
        except Exception:  # noqa: BLE001 - e.g. locked: the claimer writes it, and waits the lock out
            return False
        self._settled(settlement, accepted)
        return True

    def _wait_for_work(self, seen: int) -> None:
        """Sleep until `seen` moves, a task is due or a lease expires (next_due: from the
        exchange that found nothing, if it looked), or IDLE_RECHECK_SECONDS."""
        now = time.time()
        looked, self._looked = self._looked, None
        if looked is not None:
            due = looked[0]
        else:
            try:
                due = self.store.next_due(mode=self.mode, now=now, queues=self.queues)
            except StoreUnavailable:  # the next exchange says so, and waits it out
                due = None
        timeout = IDLE_RECHECK_SECONDS if due is None else min(IDLE_RECHECK_SECONDS, max(0.0, due - now))
        if timeout > 0:
            self.store.wait_for_change(seen, timeout, self._wake_topic)


def _await_start(record: TaskRecord) -> None:
    """A task claimed with a token booked ahead (castor/rate_limits.py) has its start a
    moment after the claim: wait for it (never longer than the booking allows, whatever
    a clock did), so that the limit holds for when tasks really start."""
    if record.started_at is not None and (wait := record.started_at - time.time()) > 0:
        time.sleep(min(wait, BOOK_AHEAD_SECONDS))


def _debug_enabled() -> bool:
    # structlog's level filter runs after the call is built; on the hot path
    # the stdlib check (cached by logging) is much cheaper.
    return _stdlib_log.isEnabledFor(logging.DEBUG)


def _drain(finished: queue.SimpleQueue[Settlement]) -> list[Settlement]:
    out = []
    while True:
        try:
            out.append(finished.get_nowait())
        except queue.Empty:
            return out


class TimeoutGuard:
    """Raises TaskTimeout in the task's thread once its timeout= passes (best effort:
    Python delivers it between bytecodes, so a long C call finishes first)."""

    def __init__(self, worker: Worker, ctx: TaskContext):
        self.worker = worker
        self.ctx = ctx
        self._timer = threading.Timer(float(ctx.record.options["timeout"]), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        if not self.ctx.active:  # finished just as the timer went off
            return
        record = self.ctx.record
        timeout = record.options["timeout"]
        log.warning("task.timeout", task_id=record.id, task_name=record.name, queue=record.queue,
                    attempt=record.attempts, timeout_s=timeout)
        if self.worker.on_timeout is not None:
            self.worker.on_timeout(record)
            return
        self.ctx.interrupt(baked(TaskTimeout, f"{record.name} ran past its timeout of {timeout:g} s"))

    def cancel(self) -> None:
        self._timer.cancel()


def _leave_as_stranger(outcome: Outcome | None) -> None:
    """The task forked, and this is the copy returning from the task's function:
    it is no worker. Leave at once, as the task's child asked (sys.exit's code),
    without ever reaching castor's loop (it would claim tasks unsupervised)."""
    code = 1
    if outcome is not None and outcome.status == TaskStatus.SUCCESS:
        code = 0
    elif outcome is not None and (outcome.error or {}).get("type") == "builtins.SystemExit":
        args = outcome.error.get("args") or [None]  # type: ignore[union-attr]
        code = args[0] if isinstance(args[0], int) else (0 if args[0] is None else 1)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001, S110 - nothing else to do on the way out
            pass
    os._exit(code)


def _cancelled_class(record: TaskRecord) -> type[BaseException]:
    return baked(TaskCancelled, f"task {record.id} ({record.name}) was cancelled while running")


class HandBack:
    """A process worker's prefetch watcher: once the running task of a batch has run
    HANDBACK_SECONDS, writes the outcomes of the tasks that ran before it and hands
    those claimed after it back to the queue, so that a long task never holds short
    ones claimed, or their results unwritten. Asleep between batches."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self._armed = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="castor-hand-back", daemon=True)
        self._thread.start()

    def arm(self) -> None:
        self._armed.set()

    def stop(self) -> None:
        self._closed = True
        self._armed.set()
        self._thread.join()

    def _loop(self) -> None:
        worker = self.worker
        while True:
            self._armed.wait()
            self._armed.clear()
            if self._closed:
                return
            # Until the batch is over: once the running task has run HANDBACK_SECONDS,
            # the finished outcomes are written and the tasks not started go back.
            while (started := worker._task_started) is not None and not self._closed:  # noqa: SLF001
                ran = time.monotonic() - started
                if ran < HANDBACK_SECONDS:
                    time.sleep(HANDBACK_SECONDS - ran)
                    continue
                if worker.waiting or worker._finished:  # noqa: SLF001
                    try:
                        worker.hand_back(keep_booked=True)
                    except Exception:  # noqa: BLE001 - try again next round
                        log.exception("worker.hand_back_failed")
                time.sleep(HANDBACK_SECONDS)


class LeaseKeeper:
    """The worker's background thread: renews its leases every lease/3 seconds;
    every 0.25 s while tasks are flowing, checkpoints the WAL (so that enqueues
    and settles do not pay for the checkpoint's fsync), stops tasks someone
    cancelled and writes held-back progress; every 2 s deletes expired results and
    ends the pending tasks past their expires= (castor/expiry.py)."""

    def __init__(self, worker: Worker):
        self.worker = worker
        self._done_at_checkpoint = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="castor-lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _purge_expired(self) -> None:
        # Batches keep each write transaction short; repeating full batches lets
        # the purge keep pace with a fast drain (one batch per round fell behind
        # at about 1,500 deletions/s while castord finished 6,000 tasks/s).
        now = time.time()
        for _ in range(PURGE_BATCHES_PER_ROUND):
            if self.worker.store.purge_expired(now=now, limit=PURGE_BATCH) < PURGE_BATCH or self._stop.is_set():
                return

    def _expire_pending(self) -> None:
        # Tasks past their expires= that nobody claims (a paused queue, no worker of
        # their mode) end here; one claimed late is ended by the worker (_execute).
        expired = self.worker.store.expire_pending(now=time.time())
        task_log.released(expired, reason="expired", counted=False, found_by=self.worker.owner)
        if expired and self.worker.hooks.listeners:
            self.worker.hooks.released(expired, counted=False)  # task.cancelled, fired by the finder

    def _loop(self) -> None:
        interval = min(self.worker.lease / 3, CHECKPOINT_SECONDS)
        last_renew = time.monotonic()
        next_expiry = 0.0
        while not self._stop.wait(interval):
            try:
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + EXPIRY_SECONDS
                    self._purge_expired()
                    self._expire_pending()
                if (self.worker.running or self.worker.waiting) and \
                        time.monotonic() - last_renew >= self.worker.lease / 3:
                    self.worker.renew_leases()
                    last_renew = time.monotonic()
                if self.worker.contexts:
                    self.worker.check_cancellations()
                    for ctx in list(self.worker.contexts.values()):
                        ctx.flush()
                if self.worker.done != self._done_at_checkpoint:
                    self._done_at_checkpoint = self.worker.done
                    self.worker.store.checkpoint()
            except StoreUnavailable as exc:  # try again next beat; said once per spell
                self.worker.note_unavailable(exc)
            except Exception:  # noqa: BLE001 - try again next beat
                log.exception("worker.housekeeping_failed")


def run_eagerly(manager: Manager, task_id: str) -> Any:
    """Manager(eager=True): run a just-enqueued task inline, storing its outcome."""
    worker = Worker(manager, mode="process", owner=f"eager:{os.getpid()}")
    # A failed attempt with retries left goes back to pending: eager mode runs
    # the retries at once too, without their backoff wait.
    while (record := manager.store.claim_task(task_id, worker.owner, lease=worker.lease,
                                              now=time.time())) is not None:
        worker.run_claimed(record)
