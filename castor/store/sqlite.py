"""The SQLite store: castor's own tables in the user's beaver-db file.

Design notes (docs/design.md has the long form):

* One connection per process, shared by its threads under a lock, re-opened
  when the pid changes (a connection must never cross a fork; the inherited
  one is abandoned, not closed, so the parent's locks stay intact).
* Autocommit; multi-statement writes use BEGIN IMMEDIATE so they take the
  write lock up front and never hit a lock upgrade failure.
* SQLite's own busy handler sleeps in whole milliseconds; castor instead sets
  no busy timeout and retries on SQLITE_BUSY with a short exponential backoff,
  up to `lock_timeout`, then raises DatabaseLockedError. Both castor and a
  beaver-db app in the same file then see waits, never "database is locked".
* Idle reads first: a worker only takes the write lock to claim once a read
  has seen something claimable.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from castor.clocks import boot_id
from castor.concurrency import Slots, check_limit, choose, concurrency_report
from castor.errors import DatabaseLockedError, FailedMember, StoreError, TaskIdConflict
from castor.expiry import expired_error
from castor.failures import describe_message
from castor.interrupts import raise_deferred, shielded
from castor.rate_limits import Buckets, check_bucket, next_token, refill
from castor.states import TaskStatus, WorkflowStatus
from castor.store import ready, schema
from castor.store import sqlite_workflows as workflows
from castor.store.base import (
    LOST_BESIDE,
    LOST_DIED,
    LOST_LEASE,
    CopyOutcome,
    NewTask,
    NewWorkflow,
    Query,
    Settlement,
    StepResult,
    Store,
    SweptWorkflow,
    TaskCopy,
    TaskRecord,
    WorkflowRecord,
    page_direction,
)
from castor.store.wakeup import AsyncWatch, ChangeNotifier, VersionProbe, wal_path

T = TypeVar("T")
_stdlib_log = logging.getLogger("castor.store")

AUTOCHECKPOINT_PAGES = 20_000
# A worker's background checkpoint forces the WAL to rewind past this many frames
# (~64 MB with 4 KiB pages), and the WAL file is truncated back to JOURNAL_LIMIT.
RESTART_FRAMES = 16_000
JOURNAL_LIMIT_BYTES = 64 * 1024 * 1024
CHECKPOINT_WAIT_SECONDS = 2.0

# SQLite uses a partial index only when the query's WHERE repeats the index's
# condition term for term, so queries on non-pending rows say it explicitly.
_NOT_PENDING = "status != 'pending'"

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6

# What a worker needs of a task it claims: fewer columns to return and decode
# on the hot path than a full record.
_CLAIM_COLUMNS = (
    "id, task_name, queue, mode, daemon, status, priority, serializer, args, kwargs, "
    "enqueued_at, eta, started_at, finished_at, result, error, attempts, lost, owner, "
    "lease_expires, options, cancel_requested, fence, isolate, workflow_id, wf_step, wf_index, wf_input"
)
_N_CLAIM_COLUMNS = 28
_COLUMNS = _CLAIM_COLUMNS + ", progress, progress_message, history, expires_at, unique_key"

_INSERT = (
    "INSERT INTO castor_tasks (id, task_name, queue, mode, daemon, status, priority, serializer, "
    "args, kwargs, enqueued_at, eta, options, unique_key, cache_key, concurrency_key, at_once) "
    "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# An enqueue with a unique key whose unfinished twin exists stores nothing
# (the conflict target names the partial unique index).
_INSERT_UNIQUE = _INSERT + (
    " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')"
    " DO NOTHING RETURNING id"
)
_UNFINISHED_TWIN = (
    "SELECT id FROM castor_tasks WHERE unique_key = ? AND status IN ('pending', 'running')"
)


# Every settle is fenced: only the claim holding the task may write it. The
# token is bumped by every claim, so even the same owner's earlier claim of the
# same task (a stalled worker whose lease expired) is refused.
_FENCE = "WHERE id = ? AND fence = ? AND status = 'running' RETURNING 1"
# A settle's fence returns what the advance needs to know of the task it ended.
_FENCE_END = f"WHERE id = ? AND fence = ? AND status = 'running' {workflows.ENDED}"

# The hot path: a success (or a failure without history to keep).
_SETTLE = f"""UPDATE castor_tasks
                 SET status = ?, result = ?, error = ?, finished_at = ?, lease_expires = NULL,
                     expires_at = ?
               {_FENCE_END}"""

# A failed attempt's history entry: the worker's (attempt, type, message, at), with
# the attempt's start and owner read from the row in the same UPDATE (SET sees the
# values the claim wrote): the timeline costs the claim, the hot path, nothing.
# SQLite's JSON functions write a REAL with 15 digits (10 µs off in an epoch time):
# printf's 17 give back the very float the claim stored.
_STARTED_AT = "CASE WHEN started_at IS NULL THEN NULL ELSE json(printf('%!.17g', started_at)) END"
_HISTORY_APPEND = ("history = json_insert(coalesce(history, '[]'), '$[#]', "
                   f"json_set(json(?), '$.started_at', {_STARTED_AT}, '$.owner', owner))")

# A failed attempt also appends a short entry to the task's history.
_SETTLE_FAILED = f"""UPDATE castor_tasks
                 SET status = ?, error = ?, finished_at = ?, lease_expires = NULL, expires_at = ?,
                     {_HISTORY_APPEND}
               {_FENCE_END}"""

# When a task the store itself ends failed or cancelled (a lost worker, a cancel
# met on the way back to the queue) is deleted: its own failure_ttl, else the
# Manager's (SQLiteStore.failure_ttl); NULL keeps it. Parameters: (now, default).
_FAILURE_EXPIRY = "(? + coalesce(json_extract(options, '$.failure_ttl'), ?))"

# A failed attempt that will be retried goes back to pending at its new ETA,
# unless someone asked to cancel it meanwhile.
_SETTLE_RETRY = f"""UPDATE castor_tasks
                 SET status = CASE cancel_requested WHEN 1 THEN 'cancelled' ELSE 'pending' END,
                     finished_at = CASE cancel_requested WHEN 1 THEN ? END,
                     expires_at = CASE cancel_requested WHEN 1 THEN {_FAILURE_EXPIRY} END,
                     error = ?, eta = ?, at_once = ?, lease_expires = NULL,
                     progress = NULL, progress_message = NULL, {_HISTORY_APPEND}
               {_FENCE_END}"""

# Named: without statistics the planner took the status index (status = ?) and looked
# every failed row up for its name.
_FAILED_BY_NAME = ("SELECT task_name, count(*) FROM castor_tasks INDEXED BY castor_tasks_failed_names "
                   "WHERE status = 'failed' GROUP BY task_name ORDER BY count(*) DESC")

# Every rate limit's bucket (castor/rate_limits.py: the rows Buckets takes).
_BUCKETS = "SELECT kind, name, rate, burst, tokens, updated_at FROM castor_rate_limits"
# A limit of either kind stored: claims take the limited path (_claim_limited).
_ANY_LIMIT = ("SELECT EXISTS (SELECT 1 FROM castor_rate_limits) "
              "OR EXISTS (SELECT 1 FROM castor_concurrency_limits)")
# Concurrency limits (castor/concurrency.py: the rows Slots takes), and the running
# limited tasks by group, read from the partial index alone.
_LIMITS = "SELECT name, max_running, per_key FROM castor_concurrency_limits"
_RUNNING_LIMITED = ("SELECT task_name, concurrency_key, count(*) FROM castor_tasks INDEXED BY castor_tasks_limited "
                    "WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY task_name, concurrency_key")

# result_ttl=0 (drop on success): the row goes as the task finishes.
_SETTLE_DROP = f"DELETE FROM castor_tasks {_FENCE_END}"


def _history_entry(s: Settlement) -> str:
    error = s.error or {}
    return json.dumps({"attempt": s.attempt, "type": error.get("type"),
                       "message": error.get("message"), "at": s.finished_at})


def _settle_statement(s: Settlement, failure_ttl: float | None) -> tuple[str, tuple[Any, ...]]:
    fence = (s.task_id, s.fence)
    if s.drop:
        return _SETTLE_DROP, fence
    if s.status == TaskStatus.PENDING:
        at_once = s.eta is None or s.eta <= s.finished_at  # a retry without a delay
        return _SETTLE_RETRY, (s.finished_at, s.finished_at, failure_ttl, json.dumps(s.error), s.eta,
                               int(at_once), _history_entry(s), *fence)
    if s.status == TaskStatus.FAILED:
        return _SETTLE_FAILED, (str(s.status), json.dumps(s.error), s.finished_at, s.expires_at,
                                _history_entry(s), *fence)
    return _SETTLE, (str(s.status), s.result, json.dumps(s.error) if s.error else None,
                     s.finished_at, s.expires_at, *fence)


# A claim picks and leases in one statement inside its write transaction: no race
# between workers. Which rows: castor/store/ready.py fills in the WHERE (due: the
# ETA has passed, or the task was queued to run at once, which no step of the
# wall clock can delay; in a queue the worker serves; set apart to run alone or
# not) and numbers the parameters (?3 now, ?5 owner, ?6 lease). A start is never before
# the enqueue: `now` was read before the claim's lock, and a task due at once that was
# enqueued meanwhile is claimed with it.
_CLAIM = f"""UPDATE castor_tasks
                SET status = 'running', owner = ?5, lease_expires = ?6, started_at = max(?3, enqueued_at),
                    attempts = attempts + 1, fence = fence + 1
              WHERE {{where}}
          RETURNING {_CLAIM_COLUMNS}"""

# The plans of this many (mode, isolate, queues) at most are kept per store.
_PLANS_KEPT = 32

PlanKey = tuple[str, bool, tuple[str, ...] | None]


def _plan_key(mode: str, isolated: bool, queues: Sequence[str] | None) -> PlanKey:
    return mode, isolated, tuple(sorted(set(queues))) if queues else None


def _sorted(rows: list[tuple[Any, ...]], to_wall: float) -> list[TaskRecord]:
    """RETURNING gives no order; hand claims out best first."""
    records = [_claimed_record(r, to_wall) for r in rows]
    records.sort(key=lambda r: (-r.priority, r.eta, r.id))
    return records


def _claimed_record(row: tuple[Any, ...], to_wall: float) -> TaskRecord:
    """A record from _CLAIM_COLUMNS (progress, history and the rest left empty).
    `to_wall` turns the boot-clock lease into an epoch time."""
    (id_, name, queue, mode, daemon, status, priority, serializer, args, kwargs, enqueued_at, eta,
     started_at, finished_at, result, error, attempts, lost, owner, lease_expires, options,
     cancel_requested, fence, isolate, workflow_id, wf_step, wf_index, wf_input) = row
    return TaskRecord(
        id_, name, queue, mode, bool(daemon), TaskStatus(status), priority, serializer, args, kwargs,
        enqueued_at, eta, started_at, finished_at, result, json.loads(error) if error else None,
        attempts, lost, owner, None if lease_expires is None else lease_expires + to_wall,
        json.loads(options) if options else {}, cancel_requested=bool(cancel_requested),
        fence=fence, isolate=bool(isolate), workflow_id=workflow_id, wf_step=wf_step, wf_index=wf_index,
        wf_input=wf_input,
    )


def _row_to_record(row: tuple[Any, ...], to_wall: float) -> TaskRecord:
    """A full record from _COLUMNS."""
    record = _claimed_record(row[:_N_CLAIM_COLUMNS], to_wall)
    progress, progress_message, history, expires_at, unique_key = row[_N_CLAIM_COLUMNS:]
    record.progress, record.progress_message = progress, progress_message
    record.history = json.loads(history) if history else []
    record.expires_at, record.unique_key = expires_at, unique_key
    return record


def _insert_params(task: NewTask) -> tuple[Any, ...]:
    return (
        task.id, task.name, task.queue, task.mode, int(task.daemon), task.priority,
        task.serializer, task.args, task.kwargs, task.enqueued_at, task.eta,
        json.dumps(task.options) if task.options else None, task.unique_key, task.cache_key,
        task.concurrency_key, int(task.eta <= task.enqueued_at),
    )


def _where(query: Query, *, scanning: bool = False) -> tuple[str, list[Any]]:
    if query.scan_limit is not None and not scanning:
        # A bounded search is for reading pages; a purge or bulk action by filter must
        # see every row its filter matches.
        raise ValueError("Query.scan_limit bounds list() and count() only")
    clauses: list[str] = []
    params: list[Any] = []
    if query.status == TaskStatus.PENDING:
        clauses.append("status = 'pending'")  # spelled out, as the ready index's condition is
    elif query.status is not None:
        clauses.append(_NOT_PENDING)
        clauses.append("status = ?")
        params.append(str(query.status))
    for column, value in (("task_name", query.name), ("queue", query.queue), ("id", query.task_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(str(value))
    if query.dirty is not None:
        # Dirty: a worker vanished while running it, blamed (lost) or not (isolate).
        clauses.append("(lost > 0 OR isolate > 0)" if query.dirty else "(lost = 0 AND isolate = 0)")
    for condition, bound in (("enqueued_at >= ?", query.enqueued_after), ("enqueued_at < ?", query.enqueued_before),
                             ("finished_at >= ?", query.finished_after), ("finished_at < ?", query.finished_before)):
        if bound is not None:
            clauses.append(condition)
            params.append(float(bound))
    if query.args_contains is not None and query.scan_limit is None:
        clauses.append(_ARGS_CONTAIN)
        params += [query.args_contains, query.args_contains]
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


# instr, not LIKE: literal (no % or _ wildcards) and case-sensitive, as PostgreSQL's
# position(). typeof: a text serializer's arguments are TEXT, pickled ones BLOBs.
_ARGS_CONTAIN = ("((typeof(args) = 'text' AND instr(args, ?) > 0)"
                 " OR (typeof(kwargs) = 'text' AND instr(kwargs, ?) > 0))")


def _scanned(query: Query) -> bool:
    """A search bounded to the newest scan_limit rows: the other filters pick (and
    order) those rows in a subquery, the search reads only them."""
    return query.args_contains is not None and query.scan_limit is not None


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


# Every open store, so that a fork() waits for their connections to be idle.
_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _before_fork() -> None:
    """A connection must not be mid-transaction when the process forks.

    SQLite keeps its POSIX lock bookkeeping per file in process-wide memory,
    which a child inherits: had another thread been inside a write, the child's
    own fresh connection would find the file "locked" by that phantom for good.
    So a fork (a web server forking workers after --preload) waits for castor's
    writes in flight; each store's lock is held across the fork.
    """
    for store in list(_STORES):
        if store._pid == os.getpid() and store._lock.acquire(timeout=store.lock_timeout + 1):  # noqa: SLF001
            store._held_for_fork = True  # noqa: SLF001


def _after_fork_in_parent() -> None:
    for store in list(_STORES):
        if store._held_for_fork:  # noqa: SLF001
            store._held_for_fork = False  # noqa: SLF001
            store._lock.release()  # noqa: SLF001


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._held_for_fork = False  # noqa: SLF001
        store._forget_inherited()  # noqa: SLF001


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class _Held:
    """`with store._locked() as conn`: the store's connection, held by this thread.

    Shielded: a thread task's timeout or cancel, or Ctrl+C, waits until the thread
    is out of here (castor/interrupts.py), so no exception lands between a BEGIN and
    its COMMIT. A transaction found open at the outermost entry was left by a thread
    stopped mid-way in a way the shield could not hold back: its work did not
    happen, and it is rolled back. SQLite's errors leave as StoreError (a constraint
    as itself). A class rather than a generator-based context manager, which cost
    about a microsecond more on every store call.
    """

    __slots__ = ("_lock", "_shield", "_store")

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        store = self._store
        shield = self._shield = shielded()
        shield.__enter__()
        try:
            conn = store._connection()  # noqa: SLF001 - the store's own helper
            lock = self._lock = store._lock  # noqa: SLF001
            lock.acquire()
        except BaseException:
            shield.__exit__(None, None, None)
            raise
        store._depth += 1  # noqa: SLF001
        if store._depth == 1 and conn.in_transaction:  # noqa: SLF001
            try:
                _stdlib_log.warning("castor: rolled back a transaction left open on %s", store.path)
                store._rollback(conn)  # noqa: SLF001
                conn = store._connection()  # noqa: SLF001
            except BaseException as exc:
                self.__exit__(type(exc), exc, exc.__traceback__)
                raise
        return conn

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        store = self._store
        try:
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.IntegrityError):
                raise StoreError(_explain_open_error(store.path, exc)) from exc
        finally:
            store._depth -= 1  # noqa: SLF001
            try:
                self._lock.release()
            finally:
                self._shield.__exit__(None, None, None)


class SQLiteStore(Store):
    def __init__(self, path: str, *, lock_timeout: float = 30.0, durable: bool = False):
        self.path = os.path.abspath(os.fspath(path))
        self.url = f"sqlite://{self.path}"  # sqlite:///abs/path.db: open_store() takes it back
        self.lock_timeout = lock_timeout
        self.durable = durable
        self._pid = -1
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0  # how deep the thread holding _lock is in _locked()
        self._notifier: ChangeNotifier | None = None
        self._probe: VersionProbe | None = None
        self._checkpointer: sqlite3.Connection | None = None
        self._closed = False
        self._held_for_fork = False
        self._opened = False  # True once a connection opened the file
        self._plans: dict[PlanKey, ready.Plan] = {}  # where claims look (castor/store/ready.py)
        _STORES.add(self)
        try:
            with self._locked() as conn:
                # Read first: a file already at this schema opens without the
                # write lock (so a Manager opens, and workers boot, while
                # another program holds a long write transaction) and without
                # writing a byte (a damaged file is not touched by opening it).
                if self._retry(lambda: schema.installed_version(conn)) != schema.SCHEMA_VERSION:
                    if self._write_txn(conn, schema.migrate) == 0:
                        _make_private(self.path)  # castor's tables are new here: so is its data
                elif os.path.exists(self.path) and not os.access(self.path, os.W_OK):
                    # The migration's write used to find this out; say it at open as before.
                    raise StoreError(_explain_open_error(
                        self.path, sqlite3.OperationalError("attempt to write a readonly database")))
                self._check_boot(conn)
        except BaseException:
            self.close()
            raise

    def _check_boot(self, conn: sqlite3.Connection) -> None:
        """Leases run on the boot clock, which restarts at every boot: a lease
        written before this boot is expired, whatever number it holds."""
        current = boot_id()
        row = self._retry(lambda: conn.execute("SELECT value FROM castor_meta WHERE key = 'boot_id'").fetchone())
        if row is not None and row[0] == current:
            return  # the usual case: a read, no write lock

        def body(c: sqlite3.Connection) -> None:
            changed = c.execute(
                """INSERT INTO castor_meta (key, value) VALUES ('boot_id', ?)
                   ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE value != excluded.value
                   RETURNING 1""", (current,)).fetchall()
            if changed:
                c.execute(f"UPDATE castor_tasks SET lease_expires = 0 WHERE {_NOT_PENDING} AND status = 'running'")
                # Buckets are timed on the boot clock too: a new boot starts them full.
                c.execute("UPDATE castor_rate_limits SET tokens = burst, updated_at = 0")

        self._write_txn(conn, body)

    def _to_wall(self) -> float:
        """Add to a boot-clock time to tell it as an epoch time."""
        return time.time() - self.clock()

    # -- connection management -------------------------------------------------

    def _forget_inherited(self) -> None:
        """A fresh process (or a forked child): forget, don't close, what was inherited
        (closing would touch the parent's locks); every lock is new."""
        self._lock = threading.RLock()
        self._depth = 0
        self._conn = None
        self._notifier = None
        self._probe = None
        self._checkpointer = None
        self._pid = os.getpid()

    def _connection(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            self._forget_inherited()
        if self._closed:
            raise StoreError(f"the castor store for {self.path} is closed")
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open {self.path}: directory {directory} does not exist")
        if self._opened and not os.path.exists(self.path):
            # Deleted or moved while we used it: a fresh empty file here would split
            # the workers across two databases, and hide every task in the old one.
            raise StoreError(f"{self.path} was deleted or moved while castor used it; castor will not "
                             "create an empty one in its place. Restore the file, or restart the "
                             "program to start afresh")
        _create_private(self.path)
        try:
            conn = sqlite3.connect(
                self.path, timeout=0, isolation_level=None, check_same_thread=False,
                cached_statements=64,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._retry(lambda: self._configure(conn))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(_explain_open_error(self.path, exc)) from exc
        self._opened = True
        return conn

    def _configure(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode.lower() != "wal":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        # A checkpoint fsyncs; left to the committing connection every 1,000
        # pages it lands on an enqueue or a settle. Workers checkpoint from a
        # background thread instead (see checkpoint()); this is the backstop.
        conn.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit={JOURNAL_LIMIT_BYTES}")

    def _locked(self) -> _Held:
        """`with self._locked() as conn`: the connection, for this thread alone (see _Held)."""
        return _Held(self)

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """End the connection's open transaction, or give up the connection."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back must not serve another thread:
            # the next operation opens a fresh one.
            if conn is self._conn:
                self._conn = None
            try:
                conn.close()
            except sqlite3.Error:
                pass

    def _retry(self, operation: Callable[[], T], lock_timeout: float | None = None) -> T:
        lock_timeout = self.lock_timeout if lock_timeout is None else lock_timeout
        deadline: float | None = None
        delay = 0.00005
        tries = 0
        while True:
            try:
                return operation()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                now = time.monotonic()
                if deadline is None:
                    deadline = now + lock_timeout
                elif now >= deadline:
                    raise DatabaseLockedError(
                        f"{self.path} stayed locked by another writer for more than "
                        f"{lock_timeout:g} s; nothing was changed. A long write "
                        "transaction in another program holds it."
                    ) from exc
                # Between tries no transaction is open: a held-back interruption
                # (a timeout, Ctrl+C) may go now rather than after lock_timeout.
                raise_deferred()
                # The lock is usually held for tens of microseconds: yield a few
                # times first, then back off (with jitter, so waiters spread out).
                tries += 1
                if tries <= 3:
                    time.sleep(0)
                else:
                    time.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.005)

    def _write_txn(self, conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T],
                   lock_timeout: float | None = None) -> T:
        def attempt() -> T:
            try:  # BEGIN inside: whatever fails or lands after it, the transaction ends here
                conn.execute("BEGIN IMMEDIATE")
                out = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
            return out

        return self._retry(attempt, lock_timeout)

    def _snapshot(self, conn: sqlite3.Connection, read: Callable[[sqlite3.Connection], T]) -> T:
        """Several reads in one snapshot (a read transaction, unless the caller's write
        transaction is open): counts that agree with each other, a plan and its use."""
        if conn.in_transaction:
            return read(conn)
        try:  # BEGIN inside: whatever fails or lands after it, the transaction ends here
            conn.execute("BEGIN")
            out = read(conn)
            conn.execute("COMMIT")
        except BaseException:
            self._rollback(conn)
            raise
        return out

    def _execute(self, sql: str, params: Sequence[Any] = (), lock_timeout: float | None = None
                 ) -> list[tuple[Any, ...]]:
        """One autocommit statement with busy retry; returns all its rows."""
        with self._locked() as conn:
            try:  # the fast path: no closure, no retry bookkeeping
                return conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            return self._retry(lambda: conn.execute(sql, params).fetchall(), lock_timeout)

    # -- producing ---------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        if not tasks:
            return []
        if any(t.unique_key is not None for t in tasks):
            return self._enqueue_unique(tasks, [_insert_params(t) for t in tasks])
        with self._locked() as conn:
            try:
                if len(tasks) == 1:
                    row = _insert_params(tasks[0])
                    try:  # the fast path: one autocommit INSERT
                        conn.execute(_INSERT, row)
                    except sqlite3.OperationalError as exc:
                        if not _is_busy(exc):
                            raise
                        self._retry(lambda: conn.execute(_INSERT, row))
                else:
                    # Rows made as SQLite takes them, not a list of them all first: a
                    # million tuples alive at once made Python's garbage collector walk
                    # them over and over (a quarter of a 1,000,000-task enqueue_many).
                    self._write_txn(conn, lambda c: c.executemany(_INSERT, map(_insert_params, tasks)))
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(self.path, exc) from exc
        return [t.id for t in tasks]

    def _enqueue_unique(self, tasks: Sequence[NewTask], rows: list[tuple[Any, ...]]) -> list[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            ids = []
            for task, row in zip(tasks, rows, strict=True):
                if task.unique_key is None:
                    conn.execute(_INSERT, row)
                    ids.append(task.id)
                elif conn.execute(_INSERT_UNIQUE, row).fetchall():
                    ids.append(task.id)
                else:
                    ids.append(conn.execute(_UNFINISHED_TWIN, (task.unique_key,)).fetchone()[0])
            return ids

        with self._locked() as conn:
            try:
                return self._write_txn(conn, body)
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(self.path, exc) from exc

    def find_cached(self, cache_key: str, *, since: float) -> str | None:
        rows = self._execute(
            "SELECT id FROM castor_tasks INDEXED BY castor_tasks_cache "
            "WHERE cache_key = ? AND status = 'success' AND finished_at >= ? "
            "ORDER BY finished_at DESC LIMIT 1", (cache_key, since))
        return rows[0][0] if rows else None

    # -- workflows (castor/store/sqlite_workflows.py) ------------------------------

    def enqueue_workflow(self, workflow: NewWorkflow, tasks: Sequence[NewTask]) -> str:
        with self._locked() as conn:
            try:
                self._write_txn(conn, lambda c: workflows.insert_workflow(c, workflow, tasks))
            except sqlite3.IntegrityError as exc:
                raise _integrity_error(self.path, exc) from exc
        return workflow.id

    def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._locked() as conn:
            return self._retry(lambda: self._snapshot(conn, lambda c: workflows.read_workflow(c, workflow_id)))

    def stopped_members(self, workflow_id: str, first_bad: str, *, limit: int = 1000) -> list[TaskRecord]:
        rows = self._execute(
            f"SELECT {_COLUMNS} FROM castor_tasks WHERE workflow_id = ? AND status = 'cancelled' "
            "AND json_extract(error, '$.type') = ? "
            "AND EXISTS (SELECT 1 FROM castor_workflows WHERE id = ? AND first_bad = ?) "
            "ORDER BY wf_step, wf_index LIMIT ?", (workflow_id, workflows.STOPPED_TYPE, workflow_id, first_bad, limit))
        to_wall = self._to_wall()
        return [_row_to_record(row, to_wall) for row in rows]

    def step_results(self, workflow_id: str, step: int) -> list[StepResult]:
        with self._locked() as conn:
            return self._retry(lambda: workflows.read_step(conn, workflow_id, step))

    def failed_members(self, workflow_id: str, step: int, *, limit: int = 100) -> tuple[list[FailedMember], int]:
        with self._locked() as conn:
            return self._retry(lambda: workflows.read_failed(conn, workflow_id, step, limit))

    def cancel_workflow(self, workflow_id: str, *, now: float,
                        ended: list[TaskRecord] | None = None) -> WorkflowStatus | None:
        with self._locked() as conn:
            state, rows = self._write_txn(conn, lambda c: workflows.cancel_workflow(
                c, workflow_id, now=now, failure_ttl=self.failure_ttl, returning=_COLUMNS))
        if ended is not None:
            to_wall = self._to_wall()
            ended.extend(_row_to_record(tuple(row), to_wall) for row in rows)
        return state

    def sweep_workflows(self, *, stale_after: float, now: float, limit: int = 100,
                        lock_timeout: float | None = None) -> list[SweptWorkflow]:
        before = now - stale_after
        if not self._execute(workflows.STALE, (before, 1), lock_timeout):  # the usual answer: no write lock
            return []
        with self._locked() as conn:
            return self._write_txn(conn, lambda c: workflows.sweep(c, before=before, now=now, limit=limit,
                                                                   failure_ttl=self.failure_ttl), lock_timeout)

    def unfinished_workflows(self) -> int:
        return int(self._execute("SELECT count(*) FROM castor_workflows WHERE state = 'running'")[0][0])

    # -- consuming ---------------------------------------------------------------

    def has_due(self, *, mode: str, queues: Sequence[str] | None, now: float, isolated: bool = False) -> bool:
        key = _plan_key(mode, isolated, queues)
        with self._locked() as conn:
            return self._ask(conn, key, lambda plan: plan.has_due(conn, now))

    def _ask(self, conn: sqlite3.Connection, key: PlanKey, ask: Callable[[ready.Plan], tuple[T, bool]]) -> T:
        """`ask` the plan for `key` (castor/store/ready.py) outside a transaction; if the
        plan turns out stale (a queue or an ETA priority it does not list), or there is
        none yet, read it and ask again, in one snapshot."""
        plan = self._plans.get(key)
        if plan is not None:
            try:  # the fast path: no closure, no retry bookkeeping
                answer, stale = ask(plan)
                if not stale:
                    return answer
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
        return self._retry(lambda: self._snapshot(conn, lambda c: self._afresh(c, key, ask)))

    def _afresh(self, conn: sqlite3.Connection, key: PlanKey, ask: Callable[[ready.Plan], tuple[T, bool]]) -> T:
        """Read the plan for `key` and `ask` it, in the caller's snapshot (it is not stale)."""
        if len(self._plans) >= _PLANS_KEPT:
            self._plans.clear()
        plan = self._plans[key] = ready.Plan.read(conn, *key, _CLAIM)
        return ask(plan)[0]

    def _claim_in(self, conn: sqlite3.Connection, key: PlanKey, owner: str, limit: int, lease_until: float,
                  now: float) -> list[tuple[Any, ...]]:
        """Lease the best due tasks; inside a write transaction. With rate or concurrency
        limits stored, only as many as their buckets hold tokens for and their groups
        have free slots for."""
        if conn.execute(_ANY_LIMIT).fetchone()[0]:  # one statement on the hot path, as without limits
            return self._claim_limited(conn, key, owner, limit, lease_until, now, conn.execute(_BUCKETS).fetchall(),
                                       conn.execute(_LIMITS).fetchall())
        plan = self._plans.get(key)
        if plan is not None:  # the hot path, spelled out: no closure
            rows, stale = plan.claim(conn, now, limit, owner, lease_until)
            if not stale:
                return rows
        return self._afresh(conn, key, lambda p: p.claim(conn, now, limit, owner, lease_until))

    def _claim_limited(self, conn: sqlite3.Connection, key: PlanKey, owner: str, limit: int, lease_until: float,
                       now: float, rows: list[tuple[Any, ...]],
                       limits: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """Pick the best due tasks past the names and queues without a token and the
        names limited as a whole with no free slot; give each a slot of its group and a
        token of its buckets in claim order, and lease those that got them. A task
        refused means more may lie past it: pick again, skipping a dry bucket's name or
        queue, and looking past the tasks of a full key (the plan cannot skip a key: the
        window grows, doubling what it looked past). The write lock makes the counts
        exact; the clock is read inside it: every writer of the file sees it move forward."""
        buckets = Buckets(rows, self.clock())
        slots = Slots(limits)
        if limits:
            slots.count(conn.execute(_RUNNING_LIMITED).fetchall())
        taken: list[tuple[Any, ...]] = []
        passed: set[str] = set()  # refused: looked past in the next round
        while len(taken) < limit:
            held = (buckets.held("queue"), buckets.held("name") | slots.full_names())

            def pick(p: ready.Plan, held: tuple[frozenset[str], frozenset[str]] = held,
                     want: int = limit - len(taken) + 2 * len(passed)) -> tuple[list[str], bool]:
                return p.holding(*held).best(conn, now, want)

            plan = self._plans.get(key)
            ids, stale = pick(plan) if plan is not None else ([], True)
            if stale:
                ids = self._afresh(conn, key, pick)
            fresh = [i for i in ids if i not in passed]
            if not fresh:
                break
            found = {row[0]: row for row in conn.execute(
                "SELECT id, task_name, queue, concurrency_key FROM castor_tasks "
                f"WHERE id IN ({', '.join('?' * len(fresh))})", fresh)}
            chosen, refused = choose([found[i] for i in fresh], slots, buckets.take, limit - len(taken))
            plan = self._plans[key]
            if at_once := [task_id for task_id, wait in chosen if wait == 0]:
                taken.extend(plan.claim_ids(conn, now, at_once, owner, lease_until))
            for task_id, wait in chosen:
                if wait > 0:  # a booked token: the task starts when it comes (rate_limits.py)
                    taken.extend(plan.claim_ids(conn, now + wait, [task_id], owner, lease_until))
            if not refused:
                break  # every task found got what it needs: it found all there is, or enough
            passed.update(set(fresh) - set(chosen))
        conn.executemany("UPDATE castor_rate_limits SET tokens = ?, updated_at = ? WHERE kind = ? AND name = ?",
                         buckets.changed())
        return taken

    def claim(
        self, owner: str, *, mode: str, queues: Sequence[str] | None, limit: int, lease: float, now: float,
        isolated: bool = False,
    ) -> list[TaskRecord]:
        if not self.has_due(mode=mode, queues=queues, now=now, isolated=isolated):
            return []
        clock = self.clock()
        key = _plan_key(mode, isolated, queues)
        with self._locked() as conn:
            plan = self._plans.get(key)
            if plan is not None and plan.one_statement and not self._retry(
                    lambda: conn.execute(_ANY_LIMIT).fetchone()[0]):
                # One UPDATE is atomic by itself: no transaction around it (a limit needs
                # one: its bucket or its running count is read with the claim).
                rows, stale = self._retry(lambda: plan.claim(conn, now, limit, owner, clock + lease))
                if not stale:
                    return _sorted(rows, now - clock)
            rows = self._write_txn(conn, lambda c: self._claim_in(c, key, owner, limit, clock + lease, now))
        return _sorted(rows, now - clock)

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
        # Everything but the statements is prepared, and decoded, outside the
        # transaction: the write lock is held only while SQLite works.
        statements = [_settle_statement(s, self.failure_ttl) for s in settlements]
        clock = self.clock()
        until = clock + lease
        key = _plan_key(mode, isolated, queues)

        def body(conn: sqlite3.Connection) -> tuple[list[bool], list[tuple[Any, ...]]]:
            accepted = self._settle_in(conn, statements, now)
            if limit <= 0:
                return accepted, []
            return accepted, self._claim_in(conn, key, owner, limit, until, now)

        with self._locked() as conn:
            accepted, rows = self._write_txn(conn, body)
        return accepted, _sorted(rows, now - clock)

    def claim_task(self, task_id: str, owner: str, *, lease: float, now: float) -> TaskRecord | None:
        clock = self.clock()
        rows = self._execute(
            f"""UPDATE castor_tasks
                   SET status = 'running', owner = ?, lease_expires = ?, started_at = max(?, enqueued_at),
                       attempts = attempts + 1, fence = fence + 1
                 WHERE id = ? AND status = 'pending'
             RETURNING {_COLUMNS}""",
            (owner, clock + lease, now, task_id),
        )
        return _row_to_record(rows[0], now - clock) if rows else None

    def renew(self, claims: Sequence[tuple[str, int]], *, lease: float) -> set[tuple[str, int]]:
        if not claims:
            return set()
        until = self.clock() + lease

        def body(conn: sqlite3.Connection) -> set[tuple[str, int]]:
            return {(task_id, fence) for task_id, fence in claims if conn.execute(
                f"UPDATE castor_tasks SET lease_expires = ? {_FENCE}", (until, task_id, fence)).fetchall()}

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def settle_one(self, settlement: Settlement) -> bool:
        statement = _settle_statement(settlement, self.failure_ttl)
        if settlement.workflow_id is None:  # a plain task: one autocommit statement
            return bool(self._execute(*statement))
        with self._locked() as conn:
            return self._write_txn(conn, lambda c: self._settle_in(c, [statement], settlement.finished_at))[0]

    def _settle_in(self, conn: sqlite3.Connection, statements: Sequence[tuple[str, tuple[Any, ...]]],
                   now: float) -> list[bool]:
        """Run settles inside a write transaction; the workflows of the members they ended
        move before it commits. Whether each was accepted."""
        accepted = []
        ended: list[tuple[Any, ...]] = []
        for statement in statements:
            rows = conn.execute(*statement).fetchall()
            accepted.append(bool(rows))
            if rows and rows[0][1] is not None:
                ended += rows
        if ended:
            self._advance(conn, ended, now)
        return accepted

    def _advance(self, conn: sqlite3.Connection, rows: Sequence[Sequence[Any]], now: float) -> None:
        """Every ending path's last step before COMMIT (see sqlite_workflows)."""
        ended = workflows.members_ended(rows)
        if ended:
            workflows.advance(conn, ended, now=now, failure_ttl=self.failure_ttl)

    def requeue(self, task_id: str, fence: int, *, count_attempt: bool) -> bool:
        now = time.time()
        statement = (
            f"""UPDATE castor_tasks
                  SET status = CASE cancel_requested WHEN 1 THEN 'cancelled' ELSE 'pending' END,
                      finished_at = CASE cancel_requested WHEN 1 THEN ? END,
                      expires_at = CASE cancel_requested WHEN 1 THEN {_FAILURE_EXPIRY} END,
                      lease_expires = NULL,
                      -- back in the queue: no attempt's progress; an attempt handed back
                      -- uncounted runs again, a cancelled one does not
                      progress = CASE cancel_requested WHEN 1 THEN progress END,
                      progress_message = CASE cancel_requested WHEN 1 THEN progress_message END,
                      attempts = attempts - CASE cancel_requested WHEN 1 THEN 0 ELSE ? END
                {_FENCE_END}""",
            (now, now, self.failure_ttl, 0 if count_attempt else 1, task_id, fence),
        )

        def body(conn: sqlite3.Connection) -> bool:
            rows = conn.execute(*statement).fetchall()
            self._advance(conn, rows, now)  # a cancel met on the way back ends a member
            return bool(rows)

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def release_owner(self, owner: str, *, count_attempt: bool, max_lost: int) -> list[TaskRecord]:
        now = time.time()
        to_wall = now - self.clock()

        def body(conn: sqlite3.Connection) -> list[TaskRecord]:
            modes = dict(conn.execute(
                f"SELECT id, mode FROM castor_tasks WHERE {_NOT_PENDING} AND status = 'running' "
                "AND owner = ?", (owner,)).fetchall())
            held = list(modes)
            if not held:
                return []
            if count_attempt and len(held) > 1:
                # Several tasks were held by the process that crashed: thread tasks
                # running side by side, or a process worker's prefetched batch (one
                # running, the rest claimed with it). Any one may have killed it.
                # None is blamed; each runs alone next, so that a repeat of the
                # crash names the culprit.
                self._advance(conn, _finish_cancelled(conn, "owner = ?", (owner,), now=now,
                                                      failure_ttl=self.failure_ttl), now)
                conn.execute(
                    f"""UPDATE castor_tasks
                          SET status = 'pending', lease_expires = NULL, isolate = 1,
                              progress = NULL, progress_message = NULL, {_LOST_ENTRY}
                        WHERE {_NOT_PENDING} AND status = 'running' AND owner = ?""", (LOST_BESIDE, now, owner))
            elif count_attempt:
                self._advance(conn, _lose(conn, "owner = ?", (owner,), max_lost=max_lost, now=now,
                                          failure_ttl=self.failure_ttl, why=LOST_DIED), now)
            else:
                self._advance(conn, _finish_cancelled(conn, "owner = ?", (owner,), now=now,
                                                      failure_ttl=self.failure_ttl), now)
                conn.execute(
                    f"""UPDATE castor_tasks
                          SET status = 'pending', lease_expires = NULL, attempts = attempts - 1,
                              progress = NULL, progress_message = NULL
                        WHERE {_NOT_PENDING} AND status = 'running' AND owner = ?""", (owner,))
            marks = ", ".join("?" * len(held))
            return [_row_to_record(r, to_wall) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM castor_tasks WHERE id IN ({marks})", held).fetchall()]

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def record_daemon(self, daemon_id: str, *, host: str, pid: int, app: str, started_at: float,
                      info: dict[str, Any], now: float, lock_timeout: float | None = None) -> None:
        self._execute(
            """INSERT INTO castor_daemons (id, host, pid, app, started_at, heartbeat_at, info, heartbeat_clock)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                              heartbeat_clock = excluded.heartbeat_clock,
                                              info = excluded.info""",
            (daemon_id, host, pid, app, started_at, now, json.dumps(info), self.clock()),
            lock_timeout,
        )

    def remove_daemon(self, daemon_id: str) -> None:
        self._execute("DELETE FROM castor_daemons WHERE id = ?", (daemon_id,))

    def daemons(self) -> list[dict[str, Any]]:
        rows = self._execute(
            "SELECT id, host, pid, app, started_at, heartbeat_at, info, heartbeat_clock FROM castor_daemons "
            "ORDER BY heartbeat_at DESC")
        keys = ("id", "host", "pid", "app", "started_at", "heartbeat_at", "info")
        clock, wall = self.clock(), time.time()
        out = []
        for *row, beat_clock in rows:
            item = dict(zip(keys, row, strict=True))
            item["info"] = json.loads(item["info"]) if item["info"] else {}
            # Seconds since its last heartbeat, on the boot clock (a wall-clock
            # step changes neither); a row from before the boot clock: by wall time.
            item["heartbeat_age"] = (clock - beat_clock) if beat_clock is not None and beat_clock <= clock \
                else wall - item["heartbeat_at"]
            out.append(item)
        return out

    def recover_expired(self, *, now: float, max_lost: int) -> list[TaskRecord]:
        clock = self.clock()
        to_wall = time.time() - clock

        def body(conn: sqlite3.Connection) -> list[TaskRecord]:
            expired = [row[0] for row in conn.execute(
                f"SELECT id FROM castor_tasks WHERE {_NOT_PENDING} AND status = 'running' "
                "AND lease_expires < ?", (clock,)).fetchall()]
            if not expired:
                return []
            self._advance(conn, _lose(conn, "lease_expires < ?", (clock,), max_lost=max_lost, now=now,
                                      failure_ttl=self.failure_ttl, why=LOST_LEASE), now)
            marks = ", ".join("?" * len(expired))
            return [_row_to_record(r, to_wall) for r in conn.execute(
                f"SELECT {_COLUMNS} FROM castor_tasks WHERE id IN ({marks})", expired).fetchall()]

        if not self._execute(
            f"SELECT 1 FROM castor_tasks WHERE {_NOT_PENDING} AND status = 'running' "
            "AND lease_expires < ? LIMIT 1", (clock,)
        ):
            return []
        with self._locked() as conn:
            return self._write_txn(conn, body)

    def expire_pending(self, *, now: float, limit: int = 500) -> list[TaskRecord]:
        # No index holds the expiry (it lives in options, to need no migration): this
        # reads the pending rows, which is why workers sweep every few seconds only.
        find = (f"SELECT id, json_extract(options, '$.expires') FROM {ready.READY} WHERE status = 'pending' "
                "AND options IS NOT NULL AND json_extract(options, '$.expires') <= ? LIMIT ?")
        if not self._execute(find, (now, 1)):
            return []
        to_wall = time.time() - self.clock()

        def body(conn: sqlite3.Connection) -> list[TaskRecord]:
            ended = []
            for task_id, at in conn.execute(find, (now, limit)).fetchall():
                ended += conn.execute(
                    f"UPDATE castor_tasks SET status = 'cancelled', finished_at = ?, error = ?, "
                    f"expires_at = {_FAILURE_EXPIRY} WHERE id = ? AND status = 'pending' RETURNING {_COLUMNS}",
                    (now, json.dumps(expired_error(at)), now, self.failure_ttl, task_id)).fetchall()
            records = [_row_to_record(r, to_wall) for r in ended]
            self._advance(conn, [(r.id, r.workflow_id, r.status, r.wf_step) for r in records], now)
            return records

        with self._locked() as conn:
            return self._write_txn(conn, body)

    # -- cancelling, progress, retrying, purging ---------------------------------

    def cancel(self, task_id: str, *, now: float, expires_at: float | None = None) -> TaskStatus | None:
        def body(conn: sqlite3.Connection) -> TaskStatus | None:
            row = conn.execute("SELECT status FROM castor_tasks WHERE id = ?", (task_id,)).fetchone()
            if row is None:
                return None
            status = TaskStatus(row[0])
            if status in (TaskStatus.PENDING, TaskStatus.WAITING):
                self._advance(conn, conn.execute(
                    "UPDATE castor_tasks SET status = 'cancelled', finished_at = ?, expires_at = ? "
                    f"WHERE id = ? {workflows.ENDED}", (now, expires_at, task_id)).fetchall(), now)
                return TaskStatus.CANCELLED
            if status == TaskStatus.RUNNING:
                conn.execute("UPDATE castor_tasks SET cancel_requested = 1 WHERE id = ?", (task_id,))
            return status

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        rows = self._execute(
            f"SELECT id, fence FROM castor_tasks WHERE {_NOT_PENDING} AND status = 'running' AND owner = ? "
            "AND cancel_requested = 1", (owner,))
        return [(r[0], r[1]) for r in rows]

    def set_progress(self, task_id: str, fence: int, fraction: float | None, message: str | None) -> bool:
        rows = self._execute(
            f"UPDATE castor_tasks SET progress = ?, progress_message = ? {_FENCE}",
            (fraction, message, task_id, fence))
        return bool(rows)

    def retry(self, query: Query | None = None, *, task_id: str | None = None, now: float) -> list[str]:
        # OR IGNORE: a task whose unique twin is already pending or running stays
        # as it is (the unique index would refuse a second unfinished one). A retry
        # asked by hand drops the expiry (castor/expiry.py): it means "run it now".
        update = """UPDATE OR IGNORE castor_tasks
                       SET status = 'pending', eta = ?, at_once = 1, error = NULL, result = NULL, owner = NULL,
                           finished_at = NULL, started_at = NULL, expires_at = NULL, lost = 0, isolate = 0,
                           cancel_requested = 0, progress = NULL, progress_message = NULL,
                           options = json_remove(options, '$.expires')"""
        # Never a workflow member: it would run without its inputs (Manager.retry says so).
        if task_id is not None:
            sql = (f"{update} WHERE id = ? AND status IN ('failed', 'cancelled') AND workflow_id IS NULL "
                   "RETURNING id")
            return [r[0] for r in self._execute(sql, (now, task_id))]
        query = query or Query(status=TaskStatus.FAILED)
        if query.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            raise ValueError("retry takes failed or cancelled tasks only")
        where, params = _where(query)
        where += (" AND " if where else " WHERE ") + "workflow_id IS NULL"
        return [r[0] for r in self._execute(f"{update}{where} RETURNING id", (now, *params))]

    def count_workflow_members(self, query: Query) -> int:
        """How many tasks `query` matches that are workflow members: what a bulk retry leaves."""
        where, params = _where(query)
        where += (" AND " if where else " WHERE ") + "workflow_id IS NOT NULL"
        return int(self._execute(f"SELECT count(*) FROM castor_tasks{where}", params)[0][0])

    def run_now(self, task_id: str, *, now: float) -> bool:
        # at_once: due whatever the wall clock says, as a retry by hand is. Any commit
        # to the file wakes the waiters.
        return bool(self._execute(
            "UPDATE castor_tasks SET eta = ?, at_once = 1 "
            "WHERE id = ? AND status = 'pending' AND at_once = 0 AND eta > ? RETURNING 1", (now, task_id, now)))

    def link_rerun(self, task_id: str, copy_id: str) -> bool:
        return bool(self._execute(
            "UPDATE castor_tasks SET options = json_set(coalesce(options, '{}'), '$.rerun_as', ?) "
            "WHERE id = ? RETURNING 1", (copy_id, task_id)))

    def purge(self, query: Query) -> int:
        if query.status is not None and not query.status.finished:
            raise ValueError(f"purge deletes finished tasks only, not {query.status} ones")
        where, params = _where(query)
        where += (" AND " if where else " WHERE ") + (
            f"{_NOT_PENDING} AND status IN ('success', 'failed', 'cancelled') "
            f"AND {workflows.NOT_IN_RUNNING_WORKFLOW}")
        # In batches, so that a large purge never holds the write lock for long.
        total = 0
        while True:
            deleted = len(self._execute(
                f"DELETE FROM castor_tasks WHERE id IN (SELECT id FROM castor_tasks{where} LIMIT 1000) "
                "RETURNING 1", params))
            total += deleted
            if deleted < 1000:
                return total

    def purge_expired(self, *, now: float, limit: int = 1000) -> int:
        expired = ("FROM castor_tasks WHERE expires_at IS NOT NULL AND expires_at < ? "
                   f"AND {workflows.NOT_IN_RUNNING_WORKFLOW}")
        if not self._execute(f"SELECT 1 {expired} LIMIT 1", (now,)):
            return 0
        return len(self._execute(
            f"DELETE FROM castor_tasks WHERE id IN (SELECT id {expired} LIMIT ?) RETURNING 1", (now, limit)))

    # -- periodic schedules ------------------------------------------------------

    def fire_schedule(self, name: str, tick: float, task: NewTask, *, now: float) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            # INSERT … SELECT … WHERE: a disabled schedule inserts nothing, so the
            # upsert below never runs and RETURNING gives no row. (`WHERE` before
            # `ON CONFLICT` is SQLite's required disambiguation of the upsert.)
            won = conn.execute(
                """INSERT INTO castor_schedules (name, last_tick, fired_at, task_id)
                   SELECT ?, ?, ?, ? WHERE NOT EXISTS (
                       SELECT 1 FROM castor_pauses WHERE kind = 'schedule' AND name = ?)
                   ON CONFLICT (name) DO UPDATE
                      SET last_tick = excluded.last_tick, fired_at = excluded.fired_at,
                          task_id = excluded.task_id
                    WHERE castor_schedules.last_tick < excluded.last_tick
                RETURNING 1""", (name, tick, now, task.id, name)).fetchall()
            if won:
                conn.execute(_INSERT, _insert_params(task))
            return bool(won)

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def schedules(self) -> dict[str, dict[str, Any]]:
        rows = self._execute("SELECT name, last_tick, fired_at, task_id FROM castor_schedules")
        return {name: {"last_tick": tick, "fired_at": fired, "task_id": tid}
                for name, tick, fired, tid in rows}

    # -- reading -----------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        rows = self._execute(f"SELECT {_COLUMNS} FROM castor_tasks WHERE id = ?", (task_id,))
        return _row_to_record(rows[0], self._to_wall()) if rows else None

    def status(self, task_id: str) -> TaskStatus | None:
        rows = self._execute("SELECT status FROM castor_tasks WHERE id = ?", (task_id,))
        return TaskStatus(rows[0][0]) if rows else None

    def list(self, query: Query, *, limit: int | None = None, offset: int = 0,
             after: tuple[float, str] | None = None,
             before: tuple[float, str] | None = None) -> list[TaskRecord]:
        page_direction(after, before)
        where, params = _where(query, scanning=True)
        key, order = after or before, "DESC" if before is None else "ASC"
        if key is not None:  # a row comparison: castor_tasks_listing, read from the key on
            where += (" AND " if where else " WHERE ") + f"(enqueued_at, id) {'<' if after else '>'} (?, ?)"
            params += [float(key[0]), str(key[1])]
        # The dirty ones are few: their index, then a sort. Without statistics the planner
        # walked the listing index instead, through every row when none is dirty.
        table = "castor_tasks INDEXED BY castor_tasks_dirty" if query.dirty else "castor_tasks"
        sql = f"SELECT {_COLUMNS} FROM {table}{where} ORDER BY enqueued_at {order}, id {order}"
        if _scanned(query):
            sql = (f"SELECT * FROM ({sql} LIMIT ?) WHERE {_ARGS_CONTAIN} "
                   f"ORDER BY enqueued_at {order}, id {order}")
            params += [query.scan_limit, query.args_contains, query.args_contains]
        sql += " LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        to_wall = self._to_wall()
        records = [_row_to_record(r, to_wall) for r in self._execute(sql, params)]
        return records if before is None else records[::-1]  # read upwards from the key

    def count(self, query: Query, *, limit: int | None = None) -> int:
        where, params = _where(query, scanning=True)
        if _scanned(query):
            return self._execute(
                f"SELECT count(*) FROM (SELECT args, kwargs FROM castor_tasks{where} "
                f"ORDER BY enqueued_at DESC, id DESC LIMIT ?) WHERE {_ARGS_CONTAIN}",
                [*params, query.scan_limit, query.args_contains, query.args_contains])[0][0]
        if limit is None:
            return self._execute(f"SELECT count(*) FROM castor_tasks{where}", params)[0][0]
        return self._execute(f"SELECT count(*) FROM (SELECT 1 FROM castor_tasks{where} LIMIT ?)",
                             [*params, limit])[0][0]

    def pending_by_queue(self) -> dict[str, int]:
        with self._locked() as conn:
            return self._retry(lambda: self._snapshot(conn, ready.pending_by_queue))

    def counts_by_status(self) -> dict[TaskStatus, int]:
        # Two queries, one per partial index (each covers its count), so neither reads the table.
        def read(conn: sqlite3.Connection) -> dict[TaskStatus, int]:
            counts = {s: 0 for s in TaskStatus}
            counts[TaskStatus.PENDING] = conn.execute(
                f"SELECT count(*) FROM {ready.READY} WHERE status = 'pending'").fetchone()[0]
            for status, n in conn.execute(
                    "SELECT status, count(*) FROM castor_tasks WHERE status != 'pending' GROUP BY status"):
                counts[TaskStatus(status)] = n
            return counts

        with self._locked() as conn:
            return self._retry(lambda: self._snapshot(conn, read))

    def queue_stats(self, *, now: float) -> dict[str, Any]:
        with self._locked() as conn:
            scheduled, oldest_due = self._retry(lambda: self._snapshot(conn, lambda c: ready.schedule_stats(c, now)))
        failed = self._execute(_FAILED_BY_NAME)
        return {"scheduled": scheduled, "oldest_due": oldest_due, "failed_by_name": dict(failed)}

    def next_due(self, *, mode: str, now: float, queues: Sequence[str] | None = None) -> float | None:
        # Only what this worker may claim: a task due in a queue it does not serve
        # (or one set apart to run alone) must not make it spin.
        key = _plan_key(mode, False, queues)
        with self._locked() as conn:
            eta = self._ask(conn, key, lambda plan: plan.next_eta(conn, now))
        lease = self._execute(
            f"SELECT min(lease_expires) FROM castor_tasks WHERE {_NOT_PENDING} AND status = 'running'"
        )[0][0]
        clock = self.clock()
        if lease is not None:
            lease = now + (lease - clock)  # a boot-clock time, told as a wall-clock one
        # A task held back by a rate limit is due already: look again when a token is.
        token = next_token(self._execute(_BUCKETS), clock)
        if token is not None:
            token = now + (token - clock)
        times = [t for t in (eta, lease, token) if t is not None]
        return min(times) if times else None

    # -- pausing -----------------------------------------------------------------
    # Claims read the paused set through their plan (castor/store/ready.py); a
    # resume's commit wakes every waiter, as any change to the file does.

    def _pause(self, kind: str, name: str) -> bool:
        return bool(self._execute("INSERT OR IGNORE INTO castor_pauses (kind, name, paused_at) "
                                  "VALUES (?, ?, ?) RETURNING name", (kind, name, time.time())))

    def _resume(self, kind: str, name: str) -> bool:
        return bool(self._execute("DELETE FROM castor_pauses WHERE kind = ? AND name = ? RETURNING name",
                                  (kind, name)))

    def _paused(self, kind: str) -> set[str]:
        return {name for (name,) in self._execute("SELECT name FROM castor_pauses WHERE kind = ?", (kind,))}

    # -- rate limits (castor/rate_limits.py) --------------------------------------

    def set_rate_limit(self, kind: str, name: str, *, rate: float, burst: int) -> None:
        check_bucket(kind, name, rate, burst)

        def body(conn: sqlite3.Connection) -> None:
            clock = self.clock()
            row = conn.execute("SELECT rate, burst, tokens, updated_at FROM castor_rate_limits "
                               "WHERE kind = ? AND name = ?", (kind, name)).fetchone()
            if row is not None and (row[0], row[1]) == (rate, burst):
                return  # the same limit again (every worker's start says it): tokens stay
            # A new bucket starts full; a changed one keeps what it holds, up to its new burst.
            tokens = float(burst) if row is None else min(float(burst), refill(row[2], row[3], clock, row[0], row[1]))
            conn.execute("INSERT INTO castor_rate_limits (kind, name, rate, burst, tokens, updated_at) "
                         "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET rate = excluded.rate, "
                         "burst = excluded.burst, tokens = excluded.tokens, updated_at = excluded.updated_at",
                         (kind, name, rate, burst, tokens, clock))

        with self._locked() as conn:
            self._write_txn(conn, body)

    def remove_rate_limit(self, kind: str, name: str) -> bool:
        # The commit wakes every waiter, as any change to the file does.
        return bool(self._execute("DELETE FROM castor_rate_limits WHERE kind = ? AND name = ? RETURNING 1",
                                  (kind, name)))

    def rate_limits(self) -> dict[tuple[str, str], dict[str, Any]]:
        clock = self.clock()
        # Booked ahead (rate_limits.BOOK_AHEAD_SECONDS), a bucket holds less than none: none to tell.
        return {(kind, name): {"rate": rate, "burst": burst, "tokens": max(0.0, refill(tokens, at, clock, rate, burst))}
                for kind, name, rate, burst, tokens, at in self._execute(_BUCKETS)}

    # -- concurrency limits (castor/concurrency.py) --------------------------------

    def set_concurrency_limit(self, name: str, limit: int, *, per_key: bool = False) -> None:
        check_limit(name, limit)
        # The commit wakes every waiter: a raised limit frees slots at once.
        self._execute("INSERT INTO castor_concurrency_limits (name, max_running, per_key) VALUES (?, ?, ?) "
                      "ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running, per_key = excluded.per_key",
                      (name, limit, int(per_key)))

    def remove_concurrency_limit(self, name: str) -> bool:
        return bool(self._execute("DELETE FROM castor_concurrency_limits WHERE name = ? RETURNING 1", (name,)))

    def concurrency_limits(self) -> dict[str, dict[str, Any]]:
        with self._locked() as conn:
            limits, running = self._retry(lambda: self._snapshot(conn, lambda c: (
                c.execute(_LIMITS).fetchall(), c.execute(_RUNNING_LIMITED).fetchall())))
        return concurrency_report(limits, running)

    # -- housekeeping ------------------------------------------------------------

    def verify(self) -> None:
        # Only castor's task table and its indexes (SQLite reads each page once:
        # ~50 ms per 100,000 tasks); the application's own tables are its business.
        # Without this, a damaged page is found by the first claim that reaches it,
        # in a worker, over and over.
        problems = [r[0] for r in self._execute("PRAGMA quick_check(castor_tasks)")]
        if problems != ["ok"]:
            detail = "; ".join(problems)[:300]
            raise StoreError(_explain_open_error(
                self.path, sqlite3.DatabaseError(f"database disk image is malformed: {detail}")))

    def checkpoint(self) -> None:
        """Copy the WAL back into the database, and keep the WAL from growing.

        PASSIVE never blocks writers, but under a steady stream of commits it
        never catches up either, and SQLite only rewinds the WAL once a
        checkpoint has caught up: measured, a 60,000-task drain grew it past
        1 GB. So once the WAL holds RESTART_FRAMES, a RESTART checkpoint briefly
        holds writers off (they wait, they do not fail) so that the next commit
        starts the WAL from the top. Runs on its own connection, off the hot path.
        """
        self._connection()
        with self._lock:
            if self._checkpointer is None:
                self._checkpointer = sqlite3.connect(
                    self.path, timeout=CHECKPOINT_WAIT_SECONDS, isolation_level=None,
                    check_same_thread=False)
            conn = self._checkpointer
        try:
            _busy, frames, _done = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= RESTART_FRAMES:
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise

    def background_checkpoints(self, enabled: bool) -> None:
        # A busy worker fills 20,000 WAL pages in about a second, and the
        # commit that crosses the line then pays for the checkpoint (and its
        # fsyncs) while holding the write lock. With a checkpointing thread in
        # this process, commits leave that work to it.
        pages = 0 if enabled else AUTOCHECKPOINT_PAGES
        with self._locked() as conn:
            conn.execute(f"PRAGMA wal_autocheckpoint={pages}")

    # -- waiting -----------------------------------------------------------------

    def _ensure_notifier(self) -> ChangeNotifier:
        self._connection()
        with self._lock:
            if self._notifier is None:
                self._notifier = ChangeNotifier(wal_path(self.path), self._ensure_probe())
            return self._notifier

    def _ensure_probe(self) -> VersionProbe:
        if self._probe is None:
            self._probe = VersionProbe(self.path)
        return self._probe

    # Topics are not told apart: any commit to the file wakes every waiter.

    def generation(self, topic: str | None = None) -> int:
        return self._ensure_notifier().generation

    def wait_for_change(self, seen: int, timeout: float, topic: str | None = None) -> int:
        return self._ensure_notifier().wait(seen, timeout)

    def watch_async(self, topic: str | None = None) -> AsyncWatch:
        self._connection()
        with self._lock:
            probe = self._ensure_probe()
        return AsyncWatch(wal_path(self.path), probe)

    def close(self) -> None:
        if self._pid != os.getpid():
            self._closed = True
            return
        with self._lock:
            if self._notifier is not None:
                self._notifier.close()
            if self._probe is not None:
                self._probe.close()
            for conn in (self._conn, self._checkpointer):
                if conn is not None:
                    conn.close()
            self._conn = self._notifier = self._probe = self._checkpointer = None
            self._closed = True

    # -- moving tasks between stores (castord move) --------------------------------

    def pending_copies(self, *, after: str | None = None, limit: int = 500) -> Sequence[TaskCopy]:
        rows = self._execute(
            f"SELECT {_COLUMNS}, at_once, cache_key, concurrency_key FROM castor_tasks "
            "WHERE status = 'pending' AND id > ? "
            "AND workflow_id IS NULL "
            "ORDER BY id LIMIT ?", (after or "", limit))
        to_wall = self._to_wall()
        return [TaskCopy(_row_to_record(r[:-3], to_wall), bool(r[-3]), r[-2], r[-1]) for r in rows]

    def concurrency_key_of(self, task_id: str) -> str | None:
        """The task's stored concurrency key (None: not limited, or no such task), for its copy."""
        rows = self._execute("SELECT concurrency_key FROM castor_tasks WHERE id = ?", (task_id,))
        return rows[0][0] if rows else None

    def insert_copies(self, tasks: Sequence[TaskCopy]) -> CopyOutcome:
        def body(conn: sqlite3.Connection) -> CopyOutcome:
            outcome = CopyOutcome()
            for task in tasks:
                # No conflict target: a stored id and a unique key's unfinished twin both skip the row.
                if conn.execute(_INSERT_COPY, _copy_params(task)).fetchall():
                    outcome.inserted.append(task.id)
                elif conn.execute("SELECT 1 FROM castor_tasks WHERE id = ?", (task.id,)).fetchall():
                    outcome.present.append(task.id)
                else:
                    twin = conn.execute(_UNFINISHED_TWIN, (task.record.unique_key,)).fetchone()
                    outcome.twins[task.id] = twin[0]
            return outcome

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def delete_copies(self, tasks: Sequence[TaskCopy]) -> Sequence[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for task in tasks for r in conn.execute(
                "DELETE FROM castor_tasks WHERE id = ? AND status = 'pending' AND fence = ? AND attempts = ? "
                "RETURNING id", (task.id, task.record.fence, task.record.attempts)).fetchall()]

        with self._locked() as conn:
            return self._write_txn(conn, body)

    def merge_schedules(self, fired: dict[str, dict[str, Any]]) -> Sequence[str]:
        def body(conn: sqlite3.Connection) -> list[str]:
            return [r[0] for name, row in sorted(fired.items()) for r in conn.execute(
                """INSERT INTO castor_schedules (name, last_tick, fired_at, task_id) VALUES (?, ?, ?, ?)
                   ON CONFLICT (name) DO UPDATE
                      SET last_tick = excluded.last_tick, fired_at = excluded.fired_at,
                          task_id = excluded.task_id
                    WHERE castor_schedules.last_tick < excluded.last_tick
                RETURNING name""", (name, row["last_tick"], row["fired_at"], row["task_id"])).fetchall()]

        with self._locked() as conn:
            return self._write_txn(conn, body)


def _create_private(path: str) -> None:
    """A new database file is created owner-only (SQLite gives its -wal and -shm
    the database's mode): task arguments and results are nobody else's to read."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return
    except OSError:
        return  # SQLite's own open says what is wrong, in its words
    os.close(fd)


def _make_private(path: str) -> None:
    """castor just put its tables in a file someone else created (a BeaverDB
    opened first, under a umask that lets others read): take the group's and
    others' bits off the file and its -wal/-shm, if it is ours to change."""
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            info = os.stat(name, follow_symlinks=False)
            if info.st_uid == os.geteuid() and info.st_mode & 0o077 and not os.path.islink(name):
                os.chmod(name, info.st_mode & 0o700)
        except OSError:
            pass  # missing (no WAL yet), or not ours: leave it


# A lost attempt's history entry, made from the row (its attempt, start and owner);
# parameters: (why, now).
_LOST_ENTRY = ("history = json_insert(coalesce(history, '[]'), '$[#]', json_object("
               "'attempt', attempts, 'type', 'castor.errors.WorkerLost', 'message', ?, "
               f"'at', json(printf('%!.17g', ?)), 'started_at', {_STARTED_AT}, 'owner', owner, "
               "'lost', json('true')))")


def _lose(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], *, max_lost: int, now: float,
          failure_ttl: float | None, why: str) -> list[tuple[Any, ...]]:
    """The running tasks matching `where` lost their worker (`why`, kept in each one's
    history): fail those lost `max_lost` times (WorkerLost), return the rest to
    pending. Inside a write txn. The ended ones' rows, for the advance (ENDED)."""
    running = f"{_NOT_PENDING} AND status = 'running' AND {where}"
    cancelled = _finish_cancelled(conn, where, params, now=now, failure_ttl=failure_ttl)
    failed = conn.execute(
        f"""UPDATE castor_tasks
               SET status = 'failed', error = ?, finished_at = ?, lease_expires = NULL, lost = lost + 1,
                   expires_at = {_FAILURE_EXPIRY}, {_LOST_ENTRY}
             WHERE {running} AND lost + 1 >= ? {workflows.ENDED}""",
        (json.dumps(_worker_lost(max_lost)), now, now, failure_ttl, why, now, *params, max_lost),
    ).fetchall()
    conn.execute(
        f"""UPDATE castor_tasks SET status = 'pending', lease_expires = NULL, lost = lost + 1,
                                    progress = NULL, progress_message = NULL, {_LOST_ENTRY}
             WHERE {running}""",
        (why, now, *params),
    )
    return cancelled + failed


def _finish_cancelled(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], *, now: float,
                      failure_ttl: float | None) -> list[tuple[Any, ...]]:
    """Running tasks matching `where` that were asked to cancel and lost (or left)
    their worker end cancelled, not back in the queue. Inside a write txn. Their rows,
    for the advance (ENDED)."""
    return conn.execute(
        f"""UPDATE castor_tasks
               SET status = 'cancelled', finished_at = ?, lease_expires = NULL, expires_at = {_FAILURE_EXPIRY}
             WHERE {_NOT_PENDING} AND status = 'running' AND cancel_requested = 1 AND {where}
             {workflows.ENDED}""",
        (now, now, failure_ttl, *params),
    ).fetchall()


def _worker_lost(max_lost: int) -> dict[str, Any]:
    return describe_message(
        "castor.errors.WorkerLost",
        f"the worker running this task was lost {max_lost} times (it died, or its lease "
        "expired); giving up",
    )


def _integrity_error(path: str, exc: sqlite3.IntegrityError) -> Exception:
    """A duplicate task id is the caller's; any other constraint is a bug to report."""
    if "castor_tasks.id" in str(exc):
        return TaskIdConflict(f"a task with this id already exists ({exc}); task ids must be unique")
    return StoreError(f"{path} refused the task ({exc}); nothing was enqueued")


def _explain_open_error(path: str, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "not a database" in text:
        return f"{path} is not a usable SQLite database ({text}); point castor at a beaver-db file"
    if "malformed" in text:
        return (f"{path} is not a usable SQLite database ({text}): the file is damaged. Restore it "
                f"from a backup, or salvage it with `sqlite3 {path} .recover`")
    if "readonly" in text or "read-only" in text:
        return f"{path} is read-only ({text}); castor needs to write to the file and its directory"
    if "unable to open" in text:
        return f"cannot open {path} ({text}); check that the directory exists and is writable"
    if "disk is full" in text or "full" in text:
        return f"cannot write to {path}: the disk is full ({text}); no task was changed"
    if "disk I/O error" in text:
        return f"cannot write to {path} ({text}): {_io_error_hint(path)}; no task was changed"
    if "too big" in text:
        return (f"cannot store this in {path} ({text}): a task's arguments or result are larger "
                "than SQLite allows in one value (1,000,000,000 bytes by default); pass a "
                "reference to the data (a path, a key) instead")
    return f"database error on {path}: {text}"


def _io_error_hint(path: str) -> str:
    """SQLite reports EFBIG (a file-size limit) and EIO alike; say which is likelier."""
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY:
        return (f"this process may not write files larger than {soft} bytes (ulimit -f, "
                "RLIMIT_FSIZE, LimitFSIZE= in systemd); raise the limit")
    try:
        stats = os.statvfs(os.path.dirname(path))
    except OSError:
        return "the disk may be full or failing"
    if stats.f_bavail * stats.f_frsize < 64 * 1024 * 1024:
        return "the disk is (nearly) full; free some space"
    return "the disk or file system may be failing; check the system log (dmesg)"


# A copy of another store's pending task (castord move), as it was there; the
# claim's owner and lease stay behind (they were on the other store's clock).
_INSERT_COPY = (
    "INSERT INTO castor_tasks (id, task_name, queue, mode, daemon, status, priority, serializer, "
    "args, kwargs, enqueued_at, eta, options, unique_key, cache_key, concurrency_key, at_once, "
    "started_at, error, attempts, lost, history, fence, isolate) "
    "VALUES (?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING RETURNING id"
)


def _copy_params(task: TaskCopy) -> tuple[Any, ...]:
    """_INSERT's parameters (its at_once the copy's own), then the rest of the copy."""
    r = task.record
    return (*_insert_params(task.as_new())[:-1], int(task.at_once), r.started_at,
            json.dumps(r.error) if r.error else None, r.attempts, r.lost,
            json.dumps(r.history) if r.history else None, r.fence, int(r.isolate))

