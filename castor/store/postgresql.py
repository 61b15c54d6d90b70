"""The PostgreSQL store: castor's tables in a PostgreSQL database, shared by a fleet.

Work in progress (issue 14, section 2). Design notes:

* Connections: psycopg 3, autocommit, a small pool per store and process: an
  operation takes an idle connection (or opens one) and gives it back. Writes of
  more than one statement run in an explicit transaction. After a fork the child
  never touches the parent's connections (it drops them unclosed); it opens its own.
* The clock: leases and heartbeats run on the server's clock. By default
  `store.clock` reads it (a round trip), but statements do not call it: they say
  `clock_timestamp()` in SQL, one read of the server's clock per statement. A
  clock put in by hand (the tests') is read once per call and sent as a
  parameter instead; the same SQL takes either (`coalesce(%(clock)s, ...)`).
* Claims: one UPDATE whose rows are `id = ANY(ARRAY(SELECT id ... ORDER BY
  priority DESC, eta, id LIMIT n FOR UPDATE SKIP LOCKED))`: concurrent claims skip
  each other's rows instead of waiting, and never both take one. (A CTE joined to
  the UPDATE gets a generic plan that scans the table once the LIMIT is a bound
  parameter; the array form does not.)
* Waking: a write that makes a task due sends NOTIFY `work:<mode>` (coalesced per
  producer: pg_wakeup.WakeGate); a settle of a task someone joins (a row of
  castor_watches, written by `watch_task`) sends `task:<id>`; rarer changes notify
  everyone.
  castor/store/pg_wakeup.py listens on one connection per process.
* Errors: a connection that fails (server down or restarting, too many clients)
  and the server's other "try again" errors raise StoreUnavailable; anything else
  from the server raises StoreError with its message.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from castor.concurrency import Group, Slots, check_limit, choose, concurrency_report, lock_key
from castor.errors import ConfigurationError, FailedMember, StoreError, StoreUnavailable, TaskIdConflict
from castor.expiry import expired_error
from castor.failures import describe_message
from castor.interrupts import shielded
from castor.rate_limits import Buckets, check_bucket, next_token, refill
from castor.states import TaskStatus, WorkflowStatus
from castor.store import pg_schema
from castor.store import pg_workflows as workflows
from castor.store.base import (
    LOST_BESIDE,
    LOST_DIED,
    LOST_LEASE,
    CopyOutcome,
    Exchanged,
    NewTask,
    NewWorkflow,
    Query,
    Settlement,
    StepResult,
    Store,
    SweptWorkflow,
    TaskCopy,
    TaskRecord,
    ToldResult,
    WorkflowRecord,
    page_direction,
    task_topic,
    work_topic,
)
from castor.store.pg_relay import RelayedListener
from castor.store.pg_url import parse_store_url
from castor.store.pg_wakeup import AsyncWatch, Listener, WakeGate
from castor.store.polling import Polling, PollingWatch

try:
    import psycopg
    from psycopg.types.json import Jsonb

    from castor.store.pg_batch import Batch
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]

T = TypeVar("T")

# Idle connections kept per store and process (more are opened when more threads
# work at once, and closed when they come back).
POOL_IDLE = 8
CONNECT_TIMEOUT_SECONDS = 10
# libpq settings castor gives its connections unless the URL sets them. Over TCP a cut
# link or a dead server host sends no error: without these, a write waits until the
# kernel gives up (about 15 minutes), and castord's master answers no signal meanwhile.
# tcp_user_timeout: a write unacknowledged this long (ms) ends the connection;
# keepalives: an idle connection (the LISTEN one) probed after 10 s, dropped 15 s later.
# Unix sockets ignore them.
CONNECTION_DEFAULTS: dict[str, Any] = {
    "connect_timeout": CONNECT_TIMEOUT_SECONDS,
    "tcp_user_timeout": 5000,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}
# psycopg's own default: a statement run this often on a connection is prepared.
PREPARE_THRESHOLD = 5

# The lease clock in SQL: the caller's (a parameter) or else the server's.
_CLOCK = "coalesce(%(clock)s::float8, extract(epoch FROM clock_timestamp())::float8)"

_COLUMNS = (
    "id, task_name, queue, mode, daemon, status, priority, serializer, args, kwargs, args_text, "
    "kwargs_text, enqueued_at, eta, started_at, finished_at, result, result_text, error, attempts, lost, "
    "owner, lease_expires, options, cancel_requested, fence, isolate, progress, progress_message, history, "
    "expires_at, unique_key, workflow_id, wf_step, wf_index, wf_input"
)

_INSERT = (
    "INSERT INTO castor_tasks (id, task_name, queue, mode, daemon, status, priority, serializer, args, "
    "kwargs, args_text, kwargs_text, enqueued_at, eta, at_once, options, unique_key, cache_key, concurrency_key) "
    "VALUES (%(id)s, %(name)s, %(queue)s, %(mode)s, %(daemon)s, 'pending', %(priority)s, %(serializer)s, "
    "%(args)s, %(kwargs)s, %(args_text)s, %(kwargs_text)s, %(enqueued_at)s, %(eta)s, %(at_once)s, "
    "%(options)s, %(unique_key)s, %(cache_key)s, %(concurrency_key)s)"
)
_INSERT_UNIQUE = _INSERT + (
    " ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')"
    " DO NOTHING RETURNING id"
)
# A batch without unique keys (.map) goes in by COPY: one stream, no statement per row.
_COPY_COLUMNS = ("id", "task_name", "queue", "mode", "daemon", "status", "priority", "serializer", "args", "kwargs",
                 "args_text", "kwargs_text", "enqueued_at", "eta", "at_once", "options", "unique_key", "cache_key",
                 "concurrency_key")
_COPY_TYPES = ("text", "text", "text", "text", "bool", "text", "int4", "text", "bytea", "bytea",
               "bool", "bool", "float8", "float8", "bool", "jsonb", "text", "text", "text")
_COPY = f"COPY castor_tasks ({', '.join(_COPY_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_UNFINISHED_TWIN = "SELECT id FROM castor_tasks WHERE unique_key = %s AND status IN ('pending', 'running')"
# .delay()'s path: the row and the wake-up in one autocommit statement, one round trip
# (not four: BEGIN, INSERT, NOTIFY, COMMIT); as durable as a transaction's commit.
_INSERT_AND_NOTIFY = f"WITH new AS ({_INSERT} RETURNING id) SELECT pg_notify(%(channel)s, %(topic)s) FROM new"

# A worker's writes (claims, settles, renewals, recovery) do not wait for the WAL flush:
# a server crash may lose the last of them, and at-least-once delivery with the fence
# turns any such loss into a re-run, never a wrong outcome. A producer's stay durable.
_NOT_DURABLE = "SET LOCAL synchronous_commit TO OFF"
# The same for a pipeline's implicit transaction (statements without BEGIN, up to the
# pipeline's Sync, are one transaction; SET LOCAL outside a BEGIN does nothing): fewer
# statements to queue, each ~80 µs of the client's CPU (docs/benchmarks.md).
_NOT_DURABLE_HERE = "set_config('synchronous_commit', 'off', true)"
# For the rest of a settle's transaction, from just before _NOTIFY_SETTLED (the settles
# and the workflows' advance before it keep PostgreSQL's own choice): that statement's
# generic plan, made once per connection. The commit is the worker's: not durable.
_GENERIC_PLANS = "set_config('plan_cache_mode', 'force_generic_plan', true)"
_NOTIFYING = f"SELECT {_NOT_DURABLE_HERE}, {_GENERIC_PLANS}"
PLAN_CACHE_MODE_SINCE = 120000  # server_version_num: plan_cache_mode came in PostgreSQL 12


def _notifying(server_version: int) -> str:
    """The statement before _NOTIFY_SETTLED: an older server has no plan_cache_mode (it
    would refuse the name), and plans that statement each time."""
    return _NOTIFYING if server_version >= PLAN_CACHE_MODE_SINCE else f"SELECT {_NOT_DURABLE_HERE}"

# Someone joins a task (Store.watch_task): a row of castor_watches, never a write to the
# task's row (a claim would pass over a row locked by it: SKIP LOCKED). Its transaction's
# commit does not wait for the WAL flush (set_config in the same statement: one statement
# to queue, not two; ~40 us of the joiner's CPU, beside the worker's claim on 2 cores).
# The INSERT runs whether or not the SELECT reads it.
_WATCH_ROW = ("watch AS (INSERT INTO castor_watches (task_id, watcher, since) "
              "VALUES (%s, %s, extract(epoch FROM clock_timestamp())))")
# A watch and a settle of its task take one transaction-level advisory lock (castor's
# class, the id's hash; the two-key space, apart from castor's other advisory locks and
# any an application takes with one key): the settle from before it looks for watches
# (_NOTIFY_SETTLED) to its COMMIT, the watch to its own. Without it a watch that committed
# after the settle looked, and a first look at the task before the settle committed,
# left the joiner to its 0.5 s re-check (~1 join in 1,000 in compare_pg's latency run).
# Either the watch waits for the settle's COMMIT (its first look then sees the end), or
# the settle waits for the watch's (its look for watches then sees it).
WATCH_LOCK_CLASS = 0x63737477  # 'cstw'; the migrations' lock is pg_schema.LOCK_CLASS, 'cast'
_WATCH_LOCK = f"pg_advisory_xact_lock({WATCH_LOCK_CLASS}, hashtext(%s))"
_LOCK_WATCHED = (f"SELECT count(pg_advisory_xact_lock({WATCH_LOCK_CLASS}, k)) FROM "
                 "(SELECT DISTINCT hashtext(id) AS k FROM unnest(%(ids)s::text[]) AS s(id) ORDER BY k) AS keys")
_WATCH = f"WITH {_WATCH_ROW} SELECT {_NOT_DURABLE_HERE}, {_WATCH_LOCK}"
# The watches this process's joiners ended are deleted by its next watch, in the same
# statement (a join then costs the round trips it did before watches had a table).
_REWATCH = f"""WITH ended AS (DELETE FROM castor_watches
                               WHERE (task_id, watcher) IN (SELECT * FROM unnest(%s::text[], %s::text[]))),
                    {_WATCH_ROW}
               SELECT {_NOT_DURABLE_HERE}, {_WATCH_LOCK}"""
# The watch's first look at the task, in the same round trip.
_READ_TASK = f"SELECT {_COLUMNS} FROM castor_tasks WHERE id = %s"
_UNWATCH = "DELETE FROM castor_watches WHERE (task_id, watcher) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
# A watch outlives its joiner only if the joiner died; one of a task no longer pending or
# running is of no use once its joiner read the status (well within a minute).
_FORGET_WATCHES = """DELETE FROM castor_watches w
                      WHERE since < extract(epoch FROM clock_timestamp()) - 60
                        AND NOT EXISTS (SELECT 1 FROM castor_tasks t
                                         WHERE t.id = w.task_id AND t.status IN ('pending', 'running'))"""
# What a transaction's settles wake, sent after them and last before its COMMIT (in the
# same round trip, so it cannot wait for what they returned): the workers of retries
# due soon that are pending now (so written by this transaction, as a rule), those of
# a concurrency-limited task's mode once it is no longer running (its slot is free), and the
# joiners of these tasks (a refused settle wakes its task's joiners for nothing: they
# look and wait again). Last, so that a watch begun while the settles ran is seen too,
# and after _LOCK_WATCHED, so that one committing between this statement and the COMMIT
# cannot be missed (it waits for the COMMIT, then its first look sees the end). A joiner's notification carries a small success's result
# (pg_wakeup.told_result), so that join returns without reading the row again; base64
# without line breaks (castord's relay passes topics line by line). Identical
# notifications of one transaction are sent once (PostgreSQL folds them): no DISTINCT.
#
# Planned once per connection (_GENERIC_PLANS, set just before it): a custom plan cost the
# server 0.25 ms per settle, on the way from a task's end to its joiner (PostgreSQL kept
# planning it anew: a custom plan's estimate for a one-element array always looked
# cheaper than the generic one's). So the plan must be right whatever the statistics:
# each id's row is read by the primary key (the lateral lookup cannot become a hash
# join), its watches by theirs (a subplan), and nothing else scans castor_tasks.
TOLD_RESULT_BYTES = 3000  # well within NOTIFY's 8,000-byte payload, in base64
_NOTIFY_SETTLED = f"""SELECT pg_notify(%(channel)s, v.topic)
                        FROM unnest(%(ids)s::text[]) AS s(id)
                        LEFT JOIN LATERAL (SELECT t.mode, t.status, t.concurrency_key, t.serializer, t.result_text,
                                                  t.result
                                             FROM castor_tasks t WHERE t.id = s.id OFFSET 0) AS t ON true
                       CROSS JOIN LATERAL (VALUES
                             (CASE WHEN (t.status = 'pending' AND s.id = ANY(%(retried)s))
                                        -- a concurrency limit's slot freed: the next of its name may start
                                        OR (t.concurrency_key IS NOT NULL AND t.status <> 'running')
                                   THEN %(work_prefix)s || t.mode END),
                             (CASE WHEN EXISTS (SELECT FROM castor_watches w WHERE w.task_id = s.id)
                                   THEN %(task_prefix)s || s.id
                                        || CASE WHEN t.status = 'success' AND octet_length(t.result) <= {TOLD_RESULT_BYTES}
                                                THEN E'\\x1f' || t.serializer || E'\\x1f'
                                                     || CASE WHEN t.result_text THEN 't' ELSE 'b' END || E'\\x1f'
                                                     || translate(encode(t.result, 'base64'), E'\\n', '')
                                                ELSE '' END END)) AS v(topic)
                       WHERE v.topic IS NOT NULL"""

# A task due within this many seconds wakes its workers; a later one is found by their
# re-check (every 0.5 s they read the next ETA and sleep until it).
WAKE_AHEAD_SECONDS = 1.0


# Every write for a claim names its fencing token: only that claim may write.
_FENCE = "WHERE id = %(id)s AND fence = %(fence)s AND status = 'running'"

# When a task the store ends itself (a lost worker, a cancel met on the way back)
# expires: its own failure_ttl, else the Manager's; NULL keeps it.
_FAILURE_EXPIRY = "(%(now)s + coalesce((options->>'failure_ttl')::float8, %(failure_ttl)s::float8))"

# A failed attempt's entry: the worker's, with the attempt's start and owner read
# from the row in the same UPDATE (the claim, the hot path, writes nothing more).
_HISTORY_APPEND = ("coalesce(history, '[]'::jsonb) || jsonb_build_array(%(entry)s::jsonb"
                   " || jsonb_build_object('started_at', started_at, 'owner', owner))")

# A lost attempt's entry, made from the row; parameters why and now.
_LOST_ENTRY = ("history = coalesce(history, '[]'::jsonb) || jsonb_build_array(jsonb_build_object("
               "'attempt', attempts, 'type', 'castor.errors.WorkerLost', 'message', %(why)s::text, "
               "'at', %(now)s::float8, 'started_at', started_at, 'owner', owner, 'lost', true))")

_SETTLE = f"""UPDATE castor_tasks
                 SET status = %(status)s, result = %(result)s, result_text = %(result_text)s, error = %(error)s,
                     finished_at = %(now)s, lease_expires = NULL, expires_at = %(expires_at)s,
                     {workflows.STAMP}
               {_FENCE} RETURNING mode"""

# The plain outcomes of a batch (a success, a cancel) in one statement over arrays: a
# statement each cost the server and psycopg about twice as much per task (measured:
# 33 settles and a claim, 3.5 ms against 2.8 ms an exchange, client CPU 1.1 ms against 0.65).
_SETTLE_PLAIN = f"""UPDATE castor_tasks t
                      SET status = v.status, result = v.result, result_text = v.result_text, error = v.error,
                          finished_at = v.now, lease_expires = NULL, expires_at = v.expires_at,
                          {workflows.STAMP}
                     FROM unnest(%(ids)s::text[], %(fences)s::int8[], %(statuses)s::text[], %(results)s::bytea[],
                                 %(texts)s::bool[], %(errors)s::jsonb[], %(nows)s::float8[], %(expires)s::float8[])
                          AS v(id, fence, status, result, result_text, error, now, expires_at)
                    WHERE t.id = v.id AND t.fence = v.fence AND t.status = 'running'
                RETURNING t.id, t.fence, t.mode"""

_SETTLE_FAILED = f"""UPDATE castor_tasks
                 SET status = 'failed', error = %(error)s, finished_at = %(now)s, lease_expires = NULL,
                     expires_at = %(expires_at)s, history = {_HISTORY_APPEND}, {workflows.STAMP}
               {_FENCE} RETURNING mode"""

# A retry goes back to pending at its ETA, unless a cancel was asked meanwhile.
_SETTLE_RETRY = f"""UPDATE castor_tasks
                 SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                     finished_at = CASE WHEN cancel_requested THEN %(now)s END,
                     expires_at = CASE WHEN cancel_requested THEN {_FAILURE_EXPIRY} END,
                     error = %(error)s, eta = %(eta)s, at_once = %(at_once)s, lease_expires = NULL,
                     progress = NULL, progress_message = NULL, history = {_HISTORY_APPEND}, {workflows.STAMP}
               {_FENCE} RETURNING mode"""

_SETTLE_DROP = f"DELETE FROM castor_tasks {_FENCE} RETURNING mode"

# Paused queues and task names: InitPlans, each read once per statement; the claim
# still walks castor_tasks_ready and drops a paused queue's or name's rows as it goes.
_NOT_PAUSED = (" AND queue <> ALL(ARRAY(SELECT name FROM castor_pauses WHERE kind = 'queue'))"
               " AND task_name <> ALL(ARRAY(SELECT name FROM castor_pauses WHERE kind = 'name'))")
_DUE = ("status = 'pending' AND mode = %(mode)s AND isolate = %(isolate)s "
        "AND (at_once OR eta <= %(now)s)" + _NOT_PAUSED)
_IN_QUEUES = " AND queue = ANY(%(queues)s)"

# The rows the inner SELECT locked are pending (FOR UPDATE re-checks its WHERE on the
# newest version) and stay so until this UPDATE: no "AND status = 'pending'" outside.
# With it, the outer lookup matches castor_tasks_ready's predicate, and a planner
# without fresh statistics (a table just filled: autovacuum analyzes after 10,000
# changes) read the ids from that index whole rather than from the primary key: a
# claim of 33 at a backlog of 10,000 took 6 ms instead of 0.3 and grew with the backlog.
# With a rate or concurrency limit stored, this claim takes nothing (InitPlans, read
# once): its caller then claims again by _claim_limited, which keeps to the limits.
_NO_LIMITS = (" AND NOT EXISTS (SELECT 1 FROM castor_rate_limits)"
              " AND NOT EXISTS (SELECT 1 FROM castor_concurrency_limits)")
_CLAIM = f"""UPDATE castor_tasks
                SET status = 'running', owner = %(owner)s, lease_expires = {_CLOCK} + %(lease)s,
                    started_at = greatest(%(now)s, enqueued_at), attempts = attempts + 1, fence = fence + 1
              WHERE id = ANY(ARRAY(
                    SELECT id FROM castor_tasks WHERE {_DUE}{{queues}}
                     ORDER BY priority DESC, eta, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED))
          RETURNING {_COLUMNS}"""
_CLAIM_ANY = _CLAIM.format(queues=_NO_LIMITS)
_CLAIM_IN = _CLAIM.format(queues=_IN_QUEUES + _NO_LIMITS)
# A limited claim picks (and locks) the best due tasks past the names and queues
# without a token, the names limited as a whole with no free slot and the full keys,
# then leases those that got their tokens and slots.
_HELD = (" AND queue <> ALL(%(held_queues)s) AND task_name <> ALL(%(held_names)s)"
         " AND NOT EXISTS (SELECT 1 FROM unnest(%(full_names)s::text[], %(full_keys)s::text[]) AS f(n, k)"
         " WHERE f.n = task_name AND f.k = concurrency_key)")
_PICK = (f"SELECT id, task_name, queue, concurrency_key FROM castor_tasks WHERE {_DUE}{{queues}}{_HELD} "
         "ORDER BY priority DESC, eta, id LIMIT %(limit)s FOR UPDATE SKIP LOCKED")
_PICK_ANY = _PICK.format(queues="")
_PICK_IN = _PICK.format(queues=_IN_QUEUES)
# Each with its start: the claim's `now`, or later for a token booked ahead (rate_limits.py).
_CLAIM_IDS = f"""UPDATE castor_tasks
                    SET status = 'running', owner = %(owner)s, lease_expires = {_CLOCK} + %(lease)s,
                        started_at = greatest(c.claim_start, enqueued_at), attempts = attempts + 1, fence = fence + 1
                   FROM unnest(%(ids)s::text[], %(starts)s::float8[]) AS c(claim_id, claim_start)
                  WHERE id = c.claim_id
              RETURNING {_COLUMNS}"""
_BUCKETS = "SELECT kind, name, rate, burst, tokens, updated_at FROM castor_rate_limits"
_ANY_LIMIT = ("SELECT EXISTS (SELECT 1 FROM castor_rate_limits) "
              "OR EXISTS (SELECT 1 FROM castor_concurrency_limits)")
# After a claim in the pipeline's implicit transaction: the limits, and that transaction's
# commit not waiting for the WAL flush.
_ANY_LIMIT_NOT_DURABLE = f"{_ANY_LIMIT}, {_NOT_DURABLE_HERE}"
# The same rows, each with the server's clock in front (one read for both).
_BUCKETS_NOW = f"SELECT {_CLOCK}, kind, name, rate, burst, tokens, updated_at FROM castor_rate_limits"
# An idle worker's look (_Look): the soonest ETA not reached yet among the tasks it may
# claim, read at the head of castor_tasks_scheduled (pending, not at_once); the ready
# index would be read past every due task first (10,000 due: 1.2 ms a look). And the
# first lease to expire (castor_tasks_running's head), on the lease clock.
_LOOK = f"""SELECT (SELECT min(eta) FROM castor_tasks
                     WHERE status = 'pending' AND NOT at_once AND mode = %(mode)s AND NOT isolate
                       AND eta > %(now)s{{queues}}{_NOT_PAUSED}),
                   (SELECT min(lease_expires) FROM castor_tasks WHERE status = 'running') - {_CLOCK}"""
_LOOK_ANY = _LOOK.format(queues="")
_LOOK_IN = _LOOK.format(queues=_IN_QUEUES)
# The buckets the picked tasks take from, locked (in one order: claimers queue on them,
# never deadlock); SKIP LOCKED once the claim holds a lock (it never waits holding one).
_LOCK_BUCKETS = ("SELECT r.kind, r.name, r.rate, r.burst, r.tokens, r.updated_at FROM castor_rate_limits r "
                 "JOIN unnest(%(kinds)s::text[], %(names)s::text[]) AS b(kind, name) "
                 "ON r.kind = b.kind AND r.name = b.name ORDER BY r.kind, r.name FOR UPDATE OF r")
# Concurrency limits (castor/concurrency.py: the rows Slots takes), and the running
# limited tasks by group (the partial index castor_tasks_limited).
_LIMITS = "SELECT name, max_running, per_key FROM castor_concurrency_limits"
_RUNNING_LIMITED = ("SELECT task_name, concurrency_key, count(*) FROM castor_tasks "
                    "WHERE status = 'running' AND concurrency_key IS NOT NULL GROUP BY task_name, concurrency_key")
# A transaction-level lock per group (its number: concurrency.lock_key), taken in
# ascending order, or tried once the claim holds a lock; released at COMMIT, after
# which a claimer that waited counts afresh and sees this claim's tasks running.
_LOCK_GROUPS = "SELECT pg_advisory_xact_lock(k) FROM unnest(%(keys)s::int8[]) WITH ORDINALITY AS g(k, i) ORDER BY i"
_TRY_GROUPS = ("SELECT k, pg_try_advisory_xact_lock(k) FROM unnest(%(keys)s::int8[]) WITH ORDINALITY AS g(k, i) "
               "ORDER BY i")
_COUNT_GROUPS = """SELECT g.n, g.k, (SELECT count(*) FROM castor_tasks
                                     WHERE status = 'running' AND concurrency_key IS NOT NULL AND task_name = g.n
                                       AND (g.whole OR concurrency_key = g.k))
                     FROM unnest(%(names)s::text[], %(keys)s::text[], %(whole)s::bool[]) AS g(n, k, whole)"""

# A retry asked by hand drops the expiry (castor/expiry.py): it means "run it now".
_RETRY_SET = """SET status = 'pending', eta = %(now)s, at_once = true, error = NULL, result = NULL,
                    result_text = false, owner = NULL, finished_at = NULL, started_at = NULL, expires_at = NULL,
                    lost = 0, isolate = false, cancel_requested = false, progress = NULL,
                    progress_message = NULL, options = options - 'expires'"""


def _text(value: str | bytes | None) -> tuple[bytes | None, bool]:
    """A serializer's output as bytes, and whether it was text."""
    if isinstance(value, str):
        return value.encode("utf-8"), True
    return value, False


def _untext(value: bytes | None, was_text: bool) -> str | bytes | None:
    if value is None:
        return None
    value = bytes(value)
    return value.decode("utf-8") if was_text else value


def _jsonb(value: Any) -> Any:
    return None if value is None else Jsonb(value)


def _insert_params(task: NewTask) -> dict[str, Any]:
    args, args_text = _text(task.args)
    kwargs, kwargs_text = _text(task.kwargs)
    return {
        "id": task.id, "name": task.name, "queue": task.queue, "mode": task.mode, "daemon": bool(task.daemon),
        "priority": task.priority, "serializer": task.serializer, "args": args, "kwargs": kwargs,
        "args_text": args_text, "kwargs_text": kwargs_text, "enqueued_at": task.enqueued_at, "eta": task.eta,
        "at_once": task.eta <= task.enqueued_at, "options": _jsonb(task.options or None),
        "unique_key": task.unique_key, "cache_key": task.cache_key, "concurrency_key": task.concurrency_key,
    }


def _copy_in(cur: Any, tasks: Sequence[NewTask]) -> None:
    with cur.copy(_COPY) as copy:
        copy.set_types(_COPY_TYPES)
        for task in tasks:
            params = _insert_params(task)
            params["status"] = "pending"
            copy.write_row([params[_COPY_PARAMS.get(c, c)] for c in _COPY_COLUMNS])


_COPY_PARAMS = {"task_name": "name"}  # column -> its key in _insert_params


def _wakes(task: NewTask) -> str | None:
    """The topic a new task's insert notifies: its mode's workers, if it is due soon."""
    return work_topic(task.mode) if task.eta - task.enqueued_at < WAKE_AHEAD_SECONDS else None


def _retried_soon(settlements: Sequence[Settlement]) -> list[str]:
    """The tasks these settles put back in the queue to run within WAKE_AHEAD_SECONDS."""
    return [s.task_id for s in settlements if s.status == TaskStatus.PENDING and not s.drop and
            (s.eta is None or s.eta - s.finished_at < WAKE_AHEAD_SECONDS)]


def _record(row: Sequence[Any], to_wall: float) -> TaskRecord:
    """A record from _COLUMNS; `to_wall` turns a lease-clock time into an epoch time."""
    (id_, name, queue, mode, daemon, status, priority, serializer, args, kwargs, args_text, kwargs_text,
     enqueued_at, eta, started_at, finished_at, result, result_text, error, attempts, lost, owner,
     lease_expires, options, cancel_requested, fence, isolate, progress, progress_message, history,
     expires_at, unique_key, workflow_id, wf_step, wf_index, wf_input) = row
    return TaskRecord(
        id_, name, queue, mode, daemon, TaskStatus(status), priority, serializer,
        _untext(args, args_text), _untext(kwargs, kwargs_text),  # type: ignore[arg-type]
        enqueued_at, eta, started_at, finished_at, _untext(result, result_text), error, attempts, lost, owner,
        None if lease_expires is None else lease_expires + to_wall, options or {},
        progress=progress, progress_message=progress_message, cancel_requested=cancel_requested,
        history=history or [], expires_at=expires_at, unique_key=unique_key, fence=fence, isolate=isolate,
        workflow_id=workflow_id, wf_step=wf_step, wf_index=wf_index, wf_input=wf_input,
    )


def _best_first(rows: Sequence[Sequence[Any]], to_wall: float) -> list[TaskRecord]:
    """RETURNING gives no order; hand claims out best first."""
    records = [_record(r, to_wall) for r in rows]
    records.sort(key=lambda r: (-r.priority, r.eta, r.id))
    return records


def _history_entry(s: Settlement) -> Any:
    error = s.error or {}
    return Jsonb({"attempt": s.attempt, "type": error.get("type"), "message": error.get("message"),
                  "at": s.finished_at})


class _SettlePlan:
    """A batch's settles as statements to send in one round trip: the plain ones in one
    (_SETTLE_PLAIN), each other (a failure's or a retry's history, a drop) on its own;
    `rows` then tells, settlement by settlement, what each accepted one returned (None:
    refused, the claim no longer holds the task)."""

    def __init__(self, settlements: Sequence[Settlement], failure_ttl: float | None) -> None:
        self.settlements = settlements
        plain = [s for s in settlements if _is_plain(s)]
        if len(plain) < 2 or len({s.claim for s in settlements}) < len(settlements):
            plain = []  # one claim settled twice: in order, so that the first wins
        self.statements = [_settle_statement(s, failure_ttl) for s in settlements if not plain or not _is_plain(s)]
        self.batched = bool(plain)
        if plain:
            results = [_text(s.result) for s in plain]
            self.statements.append((_SETTLE_PLAIN, {
                "ids": [s.task_id for s in plain], "fences": [s.fence for s in plain],
                "statuses": [str(s.status) for s in plain], "results": [r for r, _ in results],
                "texts": [t for _, t in results], "errors": [_jsonb(s.error or None) for s in plain],
                "nows": [s.finished_at for s in plain], "expires": [s.expires_at for s in plain]}))

    def rows(self, cursors: Sequence[Any]) -> list[Any]:
        """From the executed statements' cursors (in `statements` order)."""
        if not self.batched:
            return [cursor.fetchone() for cursor in cursors]
        singles = iter(cursor.fetchone() for cursor in cursors[:-1])
        accepted = {(id_, fence): (mode,) for id_, fence, mode in cursors[-1].fetchall()}
        return [accepted.get(s.claim) if _is_plain(s) else next(singles) for s in self.settlements]


class _Look:
    """next_due's reads, queued on a batch (with the claim of an exchange, or alone):
    the soonest ETA of a task this worker may claim (not set apart to run alone, in its
    queues: castor_tasks_scheduled's head), the first lease to expire, and the next
    token of a rate limit (a task held back by one is due already). `answer()` once
    the batch ran: the earliest, as a wall-clock time, or None."""

    def __init__(self, batch: Batch, *, mode: str, now: float, queues: Sequence[str] | None,
                 clock: float | None) -> None:
        self.now = now
        self._soonest = batch.execute(_LOOK_IN if queues is not None else _LOOK_ANY,
                                      {"mode": mode, "now": now, "queues": list(queues or []), "clock": clock})
        self._buckets = batch.execute(_BUCKETS_NOW, {"clock": clock})

    def answer(self) -> float | None:
        eta, lease_left = self._soonest.fetchall()[0]  # one row: a SELECT of two aggregates
        buckets = self._buckets.fetchall()
        now = self.now
        times = [t for t in (eta, None if lease_left is None else now + lease_left) if t is not None]
        if buckets:
            clock = buckets[0][0]
            token = next_token([row[1:] for row in buckets], clock)
            if token is not None:
                times.append(now + (token - clock))
        return min(times) if times else None


def _is_plain(s: Settlement) -> bool:
    """Written by _SETTLE alone (see _settle_statement), so _SETTLE_PLAIN can write it."""
    return not s.drop and s.status not in (TaskStatus.PENDING, TaskStatus.FAILED)


def _settle_statement(s: Settlement, failure_ttl: float | None) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"id": s.task_id, "fence": s.fence, "now": s.finished_at}
    if s.drop:
        return _SETTLE_DROP, params
    if s.status == TaskStatus.PENDING:
        params.update(error=_jsonb(s.error), eta=s.eta, at_once=s.eta is None or s.eta <= s.finished_at,
                      entry=_history_entry(s), failure_ttl=failure_ttl)
        return _SETTLE_RETRY, params
    if s.status == TaskStatus.FAILED:
        params.update(error=_jsonb(s.error), expires_at=s.expires_at, entry=_history_entry(s))
        return _SETTLE_FAILED, params
    result, result_text = _text(s.result)
    params.update(status=str(s.status), result=result, result_text=result_text,
                  error=_jsonb(s.error or None), expires_at=s.expires_at)
    return _SETTLE, params


def _where(query: Query, *, scanning: bool = False) -> tuple[str, dict[str, Any]]:
    if query.scan_limit is not None and not scanning:
        # A bounded search is for reading pages; a purge or bulk action by filter must
        # see every row its filter matches.
        raise ValueError("Query.scan_limit bounds list() and count() only")
    clauses: list[str] = []
    params: dict[str, Any] = {}
    for column, key, value in (("status", "q_status", query.status), ("task_name", "q_name", query.name),
                               ("queue", "q_queue", query.queue), ("id", "q_id", query.task_id)):
        if value is not None:
            clauses.append(f"{column} = %({key})s")
            params[key] = str(value)
    if query.dirty is not None:
        # Dirty: a worker vanished while running it, blamed (lost) or not (isolate).
        clauses.append("(lost > 0 OR isolate)" if query.dirty else "(lost = 0 AND NOT isolate)")
    for condition, key, bound in (("enqueued_at >=", "q_enqueued_after", query.enqueued_after),
                                  ("enqueued_at <", "q_enqueued_before", query.enqueued_before),
                                  ("finished_at >=", "q_finished_after", query.finished_after),
                                  ("finished_at <", "q_finished_before", query.finished_before)):
        if bound is not None:
            clauses.append(f"{condition} %({key})s")
            params[key] = float(bound)
    if query.args_contains is not None:
        params["q_args"] = query.args_contains
        if query.scan_limit is None:
            clauses.append(_ARGS_CONTAIN)
        else:
            params["q_scan"] = query.scan_limit
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


# position(): literal and case-sensitive, on the bytes stored; *_text says the
# serializer gave text (json), so pickled arguments never match.
_ARGS_CONTAIN = ("((args_text AND position(convert_to(%(q_args)s, 'UTF8') IN args) > 0)"
                 " OR (kwargs_text AND position(convert_to(%(q_args)s, 'UTF8') IN kwargs) > 0))")


def _scanned(query: Query) -> bool:
    """A search bounded to the newest scan_limit rows: the other filters pick (and
    order) those rows in a subquery, the search reads only them."""
    return query.args_contains is not None and query.scan_limit is not None


def _worker_lost(max_lost: int) -> dict[str, Any]:
    return describe_message(
        "castor.errors.WorkerLost",
        f"the worker running this task was lost {max_lost} times (it died, or its lease "
        "expired); giving up",
    )


def _finish_cancelled(cur: Any, ids: list[str], now: float, failure_ttl: float | None) -> None:
    """Held tasks that were asked to cancel and lost (or left) their worker end cancelled."""
    cur.execute(
        f"""UPDATE castor_tasks
               SET status = 'cancelled', finished_at = %(now)s, lease_expires = NULL,
                   expires_at = {_FAILURE_EXPIRY}, {workflows.STAMP}
             WHERE id = ANY(%(ids)s) AND status = 'running' AND cancel_requested""",
        {"ids": ids, "now": now, "failure_ttl": failure_ttl})


def _lose(cur: Any, ids: list[str], *, max_lost: int, now: float, failure_ttl: float | None, why: str) -> None:
    """These running tasks lost their worker (`why`, kept in each one's history): fail
    those lost `max_lost` times (WorkerLost), return the rest to pending
    (cancel-requested ones end cancelled)."""
    _finish_cancelled(cur, ids, now, failure_ttl)
    params = {"ids": ids, "now": now, "failure_ttl": failure_ttl, "max_lost": max_lost,
              "error": Jsonb(_worker_lost(max_lost)), "why": why}
    cur.execute(
        f"""UPDATE castor_tasks
               SET status = 'failed', error = %(error)s, finished_at = %(now)s, lease_expires = NULL,
                   lost = lost + 1, expires_at = {_FAILURE_EXPIRY}, {_LOST_ENTRY}, {workflows.STAMP}
             WHERE id = ANY(%(ids)s) AND status = 'running' AND lost + 1 >= %(max_lost)s""", params)
    cur.execute(
        f"""UPDATE castor_tasks SET status = 'pending', lease_expires = NULL, lost = lost + 1,
                                    progress = NULL, progress_message = NULL, {_LOST_ENTRY}
             WHERE id = ANY(%(ids)s) AND status = 'running'""", params)


def _application_name() -> str:
    """`castor <pid>@<host>`, within PostgreSQL's 63 bytes."""
    return f"castor {os.getpid()}@{socket.gethostname()}".encode()[:63].decode(errors="ignore")


def _channel(schema: str) -> str:
    """The NOTIFY channel of the store in `schema` (a name PostgreSQL keeps whole: < 64 bytes)."""
    name = f"castor:{schema}"
    if len(name.encode()) < 64:
        return name
    return "castor:" + hashlib.sha1(schema.encode()).hexdigest()


# Every open store, so that a forked child forgets what it inherited at once.
_STORES: weakref.WeakSet[PostgreSQLStore] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for store in list(_STORES):
        store._forget_inherited()  # noqa: SLF001


os.register_at_fork(after_in_child=_after_fork_in_child)


class PostgreSQLStore(Store):
    def __init__(self, url: str):
        if psycopg is None:
            raise ConfigurationError(
                "a postgresql:// store needs psycopg 3: pip install 'castor[postgresql]'")
        # castor's own URL options (castor_listen, castor_prepare) out, libpq's left.
        self._target = parse_store_url(url)
        for conninfo in (self._target.conninfo, self._target.listen or self._target.conninfo):
            try:
                psycopg.conninfo.conninfo_to_dict(conninfo)
            except psycopg.ProgrammingError as exc:
                raise ConfigurationError(f"not a usable PostgreSQL URL ({exc}); for example "
                                         "postgresql://user@host:5432/dbname") from exc
        self.url = url
        # Not a file: castord's file checks do not apply. The URL names the store.
        self.path = url
        self.clock = self.server_clock
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._idle: list[Any] = []
        self._closed = False
        self._listener: Listener | RelayedListener | Polling | None = None
        self._gate = WakeGate(self._send_wake)
        self._ended_watches: list[tuple[str, str]] = []  # deleted by the next watch_task
        self._outages = 0  # connections that failed for the server's sake (see _session)
        _STORES.add(self)
        try:
            with self._session() as conn:
                cur = conn.cursor()
                if pg_schema.installed_version(cur) != pg_schema.SCHEMA_VERSION:
                    with conn.transaction():
                        pg_schema.migrate(conn.cursor())
                cur.execute("SELECT current_schema(), current_database()")
                schema, database = cur.fetchone()
                self._channel = _channel(schema)
            self._check_listen_url(database)
        except BaseException:
            self.close()
            raise

    # -- the clock ------------------------------------------------------------------

    def server_clock(self) -> float:
        """The server's clock, in epoch seconds (the default lease clock)."""
        return float(self._fetch("SELECT extract(epoch FROM clock_timestamp())::float8")[0][0])

    def _clock(self) -> float | None:
        """The lease clock to send: None for the server's (read in SQL, no round trip)."""
        return None if self.clock == self.server_clock else float(self.clock())

    def _to_wall(self, clock: float | None, now: float | None = None) -> float:
        """What to add to a lease-clock time to tell it as an epoch time."""
        if clock is None:
            return 0.0  # the server's clock is an epoch clock
        return (time.time() if now is None else now) - clock

    # -- connections ----------------------------------------------------------------

    def _forget_inherited(self) -> None:
        """In a forked child: leave the parent's connections alone, open new ones."""
        if self._pid == os.getpid():
            return
        # Never closed here: closing says goodbye on the parent's socket and ends its
        # session. Dropped, they are finalized without a word (psycopg's PGconn only
        # finishes a connection in the process that opened it).
        if self._listener is not None:
            self._listener.abandon()
        self._gate.abandon()
        self._lock = threading.Lock()
        self._idle = []
        self._listener = None
        self._gate = WakeGate(self._send_wake)
        self._ended_watches = []  # the parent's to delete
        self._pid = os.getpid()

    def _connect(self, conninfo: str | None = None) -> Any:
        """A new connection to the store's URL (or `conninfo`). Named in pg_stat_activity
        after this process (unless the URL sets application_name), so that an operator
        can tell whose connections they are."""
        conninfo = conninfo or self._target.conninfo
        # The URL's own settings win (a keyword argument would override them).
        given = psycopg.conninfo.conninfo_to_dict(conninfo)
        defaults = {name: value for name, value in CONNECTION_DEFAULTS.items() if name not in given}
        try:
            return psycopg.connect(
                conninfo, autocommit=True, prepare_threshold=PREPARE_THRESHOLD if self._target.prepare else None,
                fallback_application_name=_application_name(), **defaults)
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL ({_first_line(exc)}); "
                                   "nothing was written") from exc

    def _check_listen_url(self, database: str) -> None:
        """A castor_listen URL must reach the store's database: NOTIFY is per database."""
        listen = self._target.listen
        if listen is None or listen == self._target.conninfo:
            return
        conn = self._connect(listen)
        try:
            reached = conn.execute("SELECT current_database()").fetchone()[0]
        finally:
            conn.close()
        if reached != database:
            raise ConfigurationError(
                f"castor_listen reaches database {reached!r}, but the store is in {database!r}: "
                "notifications stay within one database; name the same database in both URLs")

    def _open_listener(self) -> Listener | Polling:
        """LISTEN where the URL says (castor_listen), or nowhere: waiters poll."""
        listen = self._target.listen
        if listen is None:
            return Polling()
        return Listener(lambda: self._connect(listen), self._channel)

    def relay_wakeups(self, forward: Callable[[str | None], None]) -> bool:
        """castord's master: hand every notification's topic to `forward` too (from the
        listener's thread; castor/store/pg_relay.py). False if this store does not LISTEN."""
        listener = self._ensure_listener()
        if not isinstance(listener, Listener):
            return False
        listener.forward(forward)
        return True

    def use_relayed_wakeups(self, relay: socket.socket) -> bool:
        """A castord child: wait on the master's relay (a socket) instead of a LISTEN of
        our own. False where waiting began already, or LISTEN is off (waiters poll)."""
        self._forget_inherited()
        listen = self._target.listen
        with self._lock:
            if self._closed or self._listener is not None or listen is None:
                return False
            self._listener = RelayedListener(relay, lambda: self._connect(listen), self._channel)
            return True

    def _take(self) -> Any:
        self._forget_inherited()
        if self._closed:
            raise StoreError("the castor store for this PostgreSQL database is closed")
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _drop_idle(self) -> None:
        if self._pid != os.getpid():
            return
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection: nothing more to do with it
                pass

    def _give_back(self, conn: Any, *, outlived_an_outage: bool = False) -> None:
        healthy = not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        if healthy and not outlived_an_outage and self._pid == os.getpid() and not self._closed:
            with self._lock:
                if len(self._idle) < POOL_IDLE:
                    self._idle.append(conn)
                    return
        if self._pid == os.getpid():
            conn.close()

    @contextmanager
    def _session(self) -> Iterator[Any]:
        """A connection for this thread alone, given back after; the server's errors
        leave as StoreUnavailable (worth waiting out) or StoreError. Shielded: a
        thread task's timeout waits until we are out (castor/interrupts.py)."""
        with shielded():
            conn = self._take()
            outages = self._outages
            try:
                yield conn
            except (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction) as exc:
                # Read-only: a standby (a DNS name moved before the promotion), until it is promoted.
                conn.close()
                # The idle ones reached the same server: after a restart or a failover they
                # are dead too, and each would fail once more after the server is back.
                # So are the ones in use by other threads meanwhile: counted, they are not
                # pooled again when given back (below).
                self._outages += 1
                self._drop_idle()
                raise StoreUnavailable(f"PostgreSQL cannot answer now ({_first_line(exc)}); "
                                       "a later try may succeed") from exc
            except (psycopg.errors.InvalidSqlStatementName, psycopg.errors.DuplicatePreparedStatement) as exc:
                raise StoreError(f"PostgreSQL lost castor's prepared statement ({_first_line(exc)}): a pooler in "
                                 "transaction mode is in between; add castor_prepare=off to the URL") from exc
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL refused castor's statement: {_first_line(exc)}") from exc
            finally:
                self._give_back(conn, outlived_an_outage=self._outages != outages)

    def _fetch(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One autocommit statement; its rows (none for a statement without any)."""
        with self._session() as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def _write(self, body: Callable[[Any], T], *, durable: bool = True) -> T:
        """`body(cursor)` in one transaction. durable=False: a worker's write, committed
        without waiting for the WAL flush (_settle_and_claim says why that is safe)."""
        with self._session() as conn, conn.transaction():
            cur = conn.cursor()
            if not durable:
                cur.execute(_NOT_DURABLE)
            return body(cur)

    def _worker_fetch(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        """One statement of a worker's (a claim, a lease renewal), committed without
        waiting for the WAL flush: the statement and set_config pipelined in one round
        trip, one implicit transaction. Its rows."""
        with self._session() as conn:
            with conn.pipeline():  # one implicit transaction, up to the pipeline's Sync
                cur = conn.execute(sql, params)
                conn.execute(f"SELECT {_NOT_DURABLE_HERE}")
            return cur.fetchall() if cur.description is not None else []

    def _settle_and_claim(self, settlements: Sequence[Settlement], claim: tuple[str, dict[str, Any]] | None,
                          look: dict[str, Any] | None = None) -> tuple[list[bool], list[Any], bool, _Look | None]:
        """A worker's hot path in one round trip whatever the batch (psycopg's pipeline):
        the settles, the workflows' advance (if a member ended) and the notifications the
        settles owe (_NOTIFY_SETTLED) in a transaction of their own, then the claim in the
        pipeline's implicit one. Which settles were accepted, the claimed rows, and (with a claim)
        whether rate or concurrency limits are stored: a plain claim that took nothing
        then goes on to the limited one (_claim_limited) without a round trip to ask.
        With `look` (_Look's keywords), next_due's reads follow the claim (`exchange`).

        Committed without waiting for the WAL flush (synchronous_commit off, for this
        transaction only). A server crash may then lose the last of these: a lost claim's
        task is claimed again, a lost settle's task runs again; at-least-once delivery and
        the fence make either a re-run, never a wrong outcome. What a producer writes
        (.delay()) stays durable."""
        plan = _SettlePlan(settlements, self.failure_ttl)
        # One write, one read (castor/store/pg_batch.py), BEGIN and COMMIT included. After
        # an error the server skips the rest, COMMIT too, up to the Sync; the connection,
        # left in a failed transaction, is then closed rather than pooled (_give_back).
        with self._session() as conn:
            batch = self._batch(conn)
            settled: list[Any] = []
            if settlements:
                # A transaction of their own when a claim follows; else the implicit one.
                if claim is not None:
                    batch.execute("BEGIN")
                settled = [batch.execute(sql, params) for sql, params in plan.statements]
                members = [s for s in settlements if s.workflow_id is not None]
                if members:
                    # Before the claim (the design had it after): the claim then sees the
                    # successors this advance released, so the worker that ended a chain's
                    # link takes the next one in the same round trip, as on SQLite.
                    self._advance(batch, [s.task_id for s in members], max(s.finished_at for s in members))
                ids = [s.task_id for s in settlements]
                batch.execute(_LOCK_WATCHED, {"ids": ids})  # to the COMMIT: a watch waits for it, or it for a watch
                batch.execute(_notifying(conn.info.server_version))  # holds to the COMMIT (or the Sync)
                batch.execute(_NOTIFY_SETTLED, {
                    "channel": self._channel, "work_prefix": work_topic(""), "task_prefix": task_topic(""),
                    "retried": _retried_soon(settlements), "ids": ids})
                # The settles commit before the claim runs, in the same round trip: the
                # server notifies a joiner before it claims, and no workflow row stays
                # locked through the claim.
                if claim is not None:
                    batch.execute("COMMIT")
            claiming = limits = None
            if claim is not None:
                # The batch's implicit transaction, committed at its Sync: two statements,
                # not five (BEGIN, SET LOCAL and COMMIT around them).
                claiming = batch.execute(*claim)
                limits = batch.execute(_ANY_LIMIT_NOT_DURABLE)
            looking = _Look(batch, **look) if look is not None else None
            batch.run()
            rows = plan.rows(settled)
            claimed = claiming.fetchall() if claiming is not None else []
            limited = bool(limits.fetchall()[0][0]) if limits is not None else False
        return [row is not None for row in rows], claimed, limited, looking

    def _batch(self, conn: Any) -> Batch:
        """Statements for `conn` written at once (castor/store/pg_batch.py), prepared
        unless the URL says castor_prepare=off."""
        return Batch(conn, prepare=self._target.prepare)

    def _advance(self, cur: Any, ids: Sequence[str], now: float) -> None:
        """Every ending path's last write before COMMIT (castor/store/pg_workflows.py):
        the workflows of the members among `ids` that this transaction ended move."""
        cur.execute(workflows.ADVANCE, {
            "ids": list(ids), "now": now, "failure_ttl": self.failure_ttl, "channel": self._channel,
            "work_prefix": work_topic(""), "task_prefix": task_topic("")})

    def _notify(self, cur: Any, topics: Sequence[str] = ("",)) -> None:
        """Wake the listeners of these topics ('': everyone) once this transaction commits."""
        if len(topics) == 1:
            cur.execute("SELECT pg_notify(%s, %s)", (self._channel, topics[0]))
        elif topics:
            cur.execute("SELECT pg_notify(%s, t) FROM unnest(%s::text[]) AS t", (self._channel, list(topics)))

    def _send_wake(self, topic: str) -> None:
        """A notification on its own (WakeGate's trailing one)."""
        self._fetch("SELECT pg_notify(%s, %s)", (self._channel, topic))

    # -- producing ------------------------------------------------------------------

    def enqueue(self, tasks: Sequence[NewTask]) -> list[str]:
        if not tasks:
            return []
        if len(tasks) == 1 and tasks[0].unique_key is None:  # the hot path
            self._enqueue_one(tasks[0])
            return [tasks[0].id]

        def body(cur: Any) -> list[str]:
            ids = []
            if not any(t.unique_key is not None for t in tasks):
                _copy_in(cur, tasks)
                ids = [t.id for t in tasks]
            else:
                for task in tasks:
                    if task.unique_key is None:
                        cur.execute(_INSERT, _insert_params(task))
                        ids.append(task.id)
                        continue
                    cur.execute(_INSERT_UNIQUE, _insert_params(task))
                    if cur.fetchall():
                        ids.append(task.id)
                    else:
                        cur.execute(_UNFINISHED_TWIN, (task.unique_key,))
                        ids.append(cur.fetchone()[0])
            self._notify(cur, sorted({topic for t in tasks if (topic := _wakes(t)) is not None}))
            return ids

        return self._write_new(body)

    def _enqueue_one(self, task: NewTask) -> None:
        """One INSERT, with its notification unless another of this process's is in flight
        (then the gate sends one after: WakeGate)."""
        params = _insert_params(task)
        topic = _wakes(task)
        gate = self._gate
        if topic is None:
            self._insert_one(_INSERT, params)
        elif gate.begin(topic):
            params.update(channel=self._channel, topic=topic)
            try:
                self._insert_one(_INSERT_AND_NOTIFY, params)
            finally:
                gate.end(topic)
        else:
            self._insert_one(_INSERT, params)
            gate.skipped(topic)

    def _insert_one(self, sql: str, params: dict[str, Any]) -> None:
        """One producer's statement, its own durable transaction, through a Batch (a
        cursor's execute cost the client ~20 µs more CPU a call: 230 against ~212 µs a
        `.delay()`, measured in-process)."""
        with self._session() as conn:
            batch = self._batch(conn)
            batch.execute(sql, params)
            try:
                batch.run()
            except psycopg.errors.UniqueViolation as exc:
                _raise_if_task_id_taken(exc)
                raise

    def _write_new(self, body: Callable[[Any], T]) -> T:
        """A write of new rows in one transaction: a duplicate task id is the caller's
        (TaskIdConflict). One task alone goes through _insert_one."""
        with self._session() as conn:
            try:
                with conn.transaction():
                    return body(conn.cursor())
            except psycopg.errors.UniqueViolation as exc:
                _raise_if_task_id_taken(exc)
                raise

    # -- workflows (castor/store/pg_workflows.py) -----------------------------------

    def enqueue_workflow(self, workflow: NewWorkflow, tasks: Sequence[NewTask]) -> str:
        def body(cur: Any) -> str:
            workflows.insert_workflow(cur, workflow, tasks)
            self._notify(cur, sorted({work_topic(t.mode) for t in tasks if not t.waiting}))
            return workflow.id

        return self._write_new(body)

    def workflow(self, workflow_id: str) -> WorkflowRecord | None:
        with self._session() as conn, conn.transaction():  # the row and its members in one snapshot
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            return workflows.read_workflow(conn.cursor(), workflow_id)

    def stopped_members(self, workflow_id: str, first_bad: str, *, limit: int = 1000) -> list[TaskRecord]:
        clock = self._clock()
        rows = self._fetch(
            f"SELECT {_COLUMNS} FROM castor_tasks WHERE workflow_id = %s AND status = 'cancelled' "
            "AND error->>'type' = %s "
            "AND EXISTS (SELECT 1 FROM castor_workflows WHERE id = %s AND first_bad = %s) "
            "ORDER BY wf_step, wf_index LIMIT %s", (workflow_id, workflows.STOPPED_TYPE, workflow_id, first_bad, limit))
        to_wall = self._to_wall(clock)
        return [_record(row, to_wall) for row in rows]

    def step_results(self, workflow_id: str, step: int) -> list[StepResult]:
        return workflows.read_step(self._fetch(workflows.STEP_RESULTS, (workflow_id, step)))

    def failed_members(self, workflow_id: str, step: int, *, limit: int = 100) -> tuple[list[FailedMember], int]:
        rows = self._fetch(workflows.FAILED_MEMBERS, (workflow_id, step, limit))
        return [FailedMember(id_, name, status, error) for id_, name, status, error, _ in rows], \
            (rows[0][4] if rows else 0)

    def cancel_workflow(self, workflow_id: str, *, now: float,
                        ended: list[TaskRecord] | None = None) -> WorkflowStatus | None:
        clock = self._clock()

        def body(cur: Any) -> tuple[WorkflowStatus | None, list[Any]]:
            state, rows = workflows.cancel_workflow(cur, workflow_id, now=now, failure_ttl=self.failure_ttl,
                                                    returning=_COLUMNS)
            if state is WorkflowStatus.CANCELLED:
                self._notify(cur)
            return state, rows

        state, rows = self._write(body)
        if ended is not None:
            to_wall = self._to_wall(clock)
            ended.extend(_record(row, to_wall) for row in rows)
        return state

    def sweep_workflows(self, *, stale_after: float, now: float, limit: int = 100,
                        lock_timeout: float | None = None) -> list[SweptWorkflow]:
        before = now - stale_after
        fixed = []
        # Each workflow in its own short transaction: its row's lock is held for its own fix only.
        for (workflow_id,) in self._fetch(workflows.STALE, {"before": before, "limit": limit}):
            def body(cur: Any, workflow_id: str = workflow_id) -> SweptWorkflow | None:
                if lock_timeout is not None:
                    cur.execute("SELECT set_config('lock_timeout', %s, true)",
                                (f"{max(1, int(lock_timeout * 1000))}ms",))
                fix = workflows.sweep_one(cur, workflow_id, before=before, now=now, failure_ttl=self.failure_ttl,
                                          advance=lambda ids: self._advance(cur, ids, now))
                if fix is not None and (fix.missing or fix.released):
                    self._notify(cur)  # its join wakes, as for a cancel; released members' workers too
                return fix

            if (fix := self._write(body)) is not None:
                fixed.append(fix)
        return fixed

    def unfinished_workflows(self) -> int:
        return int(self._fetch("SELECT count(*) FROM castor_workflows WHERE state = 'running'")[0][0])

    def find_cached(self, cache_key: str, *, since: float) -> str | None:
        rows = self._fetch(
            "SELECT id FROM castor_tasks WHERE cache_key = %s AND status = 'success' AND finished_at >= %s "
            "ORDER BY finished_at DESC LIMIT 1", (cache_key, since))
        return rows[0][0] if rows else None

    # -- consuming ------------------------------------------------------------------

    def has_due(self, *, mode: str, queues: Sequence[str] | None, now: float, isolated: bool = False) -> bool:
        sql = f"SELECT EXISTS (SELECT 1 FROM castor_tasks WHERE {_DUE}{_IN_QUEUES if queues is not None else ''})"
        return bool(self._fetch(sql, {"mode": mode, "isolate": isolated, "now": now,
                                      "queues": list(queues or [])})[0][0])

    @staticmethod
    def _claim_statement(owner: str, mode: str, queues: Sequence[str] | None, limit: int, lease: float,
                         now: float, isolated: bool, clock: float | None) -> tuple[str, dict[str, Any]]:
        return _CLAIM_ANY if queues is None else _CLAIM_IN, {
            "owner": owner, "mode": mode, "isolate": isolated, "now": now, "limit": limit, "lease": lease,
            "clock": clock, "queues": list(queues or [])}

    def claim(
        self, owner: str, *, mode: str, queues: Sequence[str] | None, limit: int, lease: float, now: float,
        isolated: bool = False,
    ) -> list[TaskRecord]:
        if limit <= 0:
            return []
        clock = self._clock()
        # A worker's write: committed without waiting for the WAL flush (_settle_and_claim).
        _, rows, limited, _ = self._settle_and_claim([], self._claim_statement(owner, mode, queues, limit, lease,
                                                                                now, isolated, clock))
        if not rows and limited:
            rows = self._claim_limited(owner, mode, queues, limit, lease, now, isolated, clock)
        self._say_if_full(mode, limit, rows)
        return _best_first(rows, self._to_wall(clock, now))

    def _say_if_full(self, mode: str, limit: int, claimed: Sequence[Any]) -> None:
        """A claim that took all it asked for: more may wait, and castord's relay wakes
        the next idle child (pg_relay.py; a no-op for a listener of our own)."""
        if len(claimed) >= limit and self._listener is not None:
            self._listener.more(work_topic(mode))

    def _claim_limited(self, owner: str, mode: str, queues: Sequence[str] | None, limit: int, lease: float,
                       now: float, isolated: bool, clock: float | None) -> list[tuple[Any, ...]]:
        """A plain claim took nothing and rate or concurrency limits are stored: claim in
        a transaction that keeps to them (_LimitedClaim). Committed without waiting for
        the WAL flush, as every worker-side claim is (_settle_and_claim)."""
        params = {"owner": owner, "mode": mode, "isolate": isolated, "now": now, "lease": lease,
                  "clock": clock, "queues": list(queues or [])}
        with self._session() as conn, conn.transaction():
            return _LimitedClaim(conn, params, _PICK_ANY if queues is None else _PICK_IN).run(limit)

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
        done = self.exchange(settlements, owner, mode=mode, queues=queues, limit=limit, lease=lease, now=now,
                             isolated=isolated)
        return done.accepted, done.claims

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
        clock = self._clock()
        claim = self._claim_statement(owner, mode, queues, limit, lease, now, isolated, clock) if limit > 0 else None
        # The look is read whatever the claim takes (a statement cannot ask how much the
        # one before it took); castor_tasks_scheduled keeps it to an index's head.
        accepted, claimed, limited, looking = self._settle_and_claim(
            settlements, claim, {"mode": mode, "now": now, "queues": queues, "clock": clock} if look else None)
        if claim is not None and not claimed and limited:
            claimed = self._claim_limited(owner, mode, queues, limit, lease, now, isolated, clock)
        if claim is not None:
            self._say_if_full(mode, limit, claimed)
        claims = _best_first(claimed, self._to_wall(clock, now))
        if claims or looking is None:
            return Exchanged(accepted, claims)
        return Exchanged(accepted, claims, True, looking.answer())

    def claim_task(self, task_id: str, owner: str, *, lease: float, now: float) -> TaskRecord | None:
        clock = self._clock()
        rows = self._worker_fetch(
            f"""UPDATE castor_tasks
                   SET status = 'running', owner = %(owner)s, lease_expires = {_CLOCK} + %(lease)s,
                       started_at = greatest(%(now)s, enqueued_at), attempts = attempts + 1, fence = fence + 1
                 WHERE id = %(id)s AND status = 'pending'
             RETURNING {_COLUMNS}""",
            {"owner": owner, "lease": lease, "now": now, "id": task_id, "clock": clock})
        return _record(rows[0], self._to_wall(clock, now)) if rows else None

    def renew(self, claims: Sequence[tuple[str, int]], *, lease: float) -> set[tuple[str, int]]:
        if not claims:
            return set()
        # One statement for every claim named.
        rows = self._worker_fetch(
            f"""UPDATE castor_tasks t SET lease_expires = {_CLOCK} + %(lease)s
                  FROM unnest(%(ids)s::text[], %(fences)s::bigint[]) AS c(id, fence)
                 WHERE t.id = c.id AND t.fence = c.fence AND t.status = 'running'
             RETURNING t.id, t.fence""",
            {"lease": lease, "clock": self._clock(), "ids": [c[0] for c in claims],
             "fences": [c[1] for c in claims]})
        return {(task_id, fence) for task_id, fence in rows}

    def settle_one(self, settlement: Settlement) -> bool:
        return self._settle_and_claim([settlement], None)[0][0]

    def requeue(self, task_id: str, fence: int, *, count_attempt: bool) -> bool:
        now = time.time()
        params = {"now": now, "failure_ttl": self.failure_ttl, "give_back": 0 if count_attempt else 1,
                  "id": task_id, "fence": fence}

        def body(cur: Any) -> bool:
            cur.execute(
                f"""UPDATE castor_tasks
                      SET status = CASE WHEN cancel_requested THEN 'cancelled' ELSE 'pending' END,
                          finished_at = CASE WHEN cancel_requested THEN %(now)s END,
                          expires_at = CASE WHEN cancel_requested THEN {_FAILURE_EXPIRY} END,
                          lease_expires = NULL,
                          -- back in the queue: no attempt's progress; an attempt handed back
                          -- uncounted runs again, a cancelled one does not
                          progress = CASE WHEN cancel_requested THEN progress END,
                          progress_message = CASE WHEN cancel_requested THEN progress_message END,
                          attempts = attempts - CASE WHEN cancel_requested THEN 0 ELSE %(give_back)s END,
                          {workflows.STAMP}
                    {_FENCE} RETURNING workflow_id""", params)
            rows = cur.fetchall()
            done = bool(rows)
            if done:
                if rows[0][0] is not None:  # a cancel met on the way back ends a member
                    self._advance(cur, [task_id], now)
                self._notify(cur)
            return done

        return self._write(body, durable=False)

    def _records(self, cur: Any, ids: list[str], to_wall: float) -> list[TaskRecord]:
        cur.execute(f"SELECT {_COLUMNS} FROM castor_tasks WHERE id = ANY(%s) ORDER BY id", (ids,))
        return [_record(r, to_wall) for r in cur.fetchall()]

    def release_owner(self, owner: str, *, count_attempt: bool, max_lost: int) -> list[TaskRecord]:
        now = time.time()
        to_wall = self._to_wall(self._clock())
        failure_ttl = self.failure_ttl

        def body(cur: Any) -> list[TaskRecord]:
            cur.execute("SELECT id FROM castor_tasks WHERE status = 'running' AND owner = %s ORDER BY id "
                        "FOR UPDATE", (owner,))
            held = [r[0] for r in cur.fetchall()]
            if not held:
                return []
            params = {"ids": held}
            if count_attempt and len(held) > 1:
                # Several tasks held by the process that crashed: any one may have
                # killed it. None is blamed; each runs alone next, so that a repeat
                # of the crash names the culprit.
                _finish_cancelled(cur, held, now, failure_ttl)
                cur.execute(f"""UPDATE castor_tasks SET status = 'pending', lease_expires = NULL, isolate = true,
                                                        progress = NULL, progress_message = NULL, {_LOST_ENTRY}
                                 WHERE id = ANY(%(ids)s) AND status = 'running'""",
                            {**params, "why": LOST_BESIDE, "now": now})
            elif count_attempt:
                _lose(cur, held, max_lost=max_lost, now=now, failure_ttl=failure_ttl, why=LOST_DIED)
            else:
                _finish_cancelled(cur, held, now, failure_ttl)
                cur.execute("""UPDATE castor_tasks SET status = 'pending', lease_expires = NULL,
                                                       attempts = attempts - 1,
                                                       progress = NULL, progress_message = NULL
                                WHERE id = ANY(%(ids)s) AND status = 'running'""", params)
            self._advance(cur, held, now)
            self._notify(cur)
            return self._records(cur, held, to_wall)

        return self._write(body, durable=False)

    def recover_expired(self, *, now: float, max_lost: int) -> list[TaskRecord]:
        clock = self._clock()
        to_wall = self._to_wall(clock)
        expired = f"FROM castor_tasks WHERE status = 'running' AND lease_expires < {_CLOCK}"
        # A read first: the usual answer is "nothing", without a transaction.
        if not self._fetch(f"SELECT 1 {expired} LIMIT 1", {"clock": clock}):
            return []
        failure_ttl = self.failure_ttl

        def body(cur: Any) -> list[TaskRecord]:
            # SKIP LOCKED: castords on several hosts recovering at once share the rows.
            cur.execute(f"SELECT id {expired} ORDER BY id FOR UPDATE SKIP LOCKED", {"clock": clock})
            ids = [r[0] for r in cur.fetchall()]
            if not ids:
                return []
            _lose(cur, ids, max_lost=max_lost, now=now, failure_ttl=failure_ttl, why=LOST_LEASE)
            self._advance(cur, ids, now)
            self._notify(cur)
            return self._records(cur, ids, to_wall)

        return self._write(body, durable=False)

    def expire_pending(self, *, now: float, limit: int = 500) -> list[TaskRecord]:
        # No index holds the expiry (it lives in options, to need no migration): this
        # reads the pending rows, which is why workers sweep every few seconds only.
        # The CASE: a hand-edited row whose "expires" is not a number is left alone.
        find = ("FROM castor_tasks WHERE status = 'pending' AND CASE WHEN jsonb_typeof(options->'expires') = "
                "'number' THEN (options->>'expires')::float8 END <= %(now)s")
        if not self._fetch(f"SELECT 1 {find} LIMIT 1", {"now": now}):
            return []
        to_wall = self._to_wall(self._clock())
        failure_ttl = self.failure_ttl

        def body(cur: Any) -> list[TaskRecord]:
            # SKIP LOCKED: sweeps of several castords share the rows; a claim that
            # holds one ends it itself.
            cur.execute(f"SELECT id, (options->>'expires')::float8 {find} LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
                        {"now": now, "limit": limit})
            found = cur.fetchall()
            for task_id, at in found:
                cur.execute(
                    f"""UPDATE castor_tasks SET status = 'cancelled', finished_at = %(now)s, error = %(error)s,
                               expires_at = {_FAILURE_EXPIRY}, {workflows.STAMP}
                         WHERE id = %(id)s AND status = 'pending'""",
                    {"now": now, "error": Jsonb(expired_error(at)), "failure_ttl": failure_ttl, "id": task_id})
            if not found:
                return []
            self._advance(cur, [r[0] for r in found], now)
            self._notify(cur)
            return self._records(cur, [r[0] for r in found], to_wall)

        return self._write(body)

    # -- castord heartbeats -----------------------------------------------------------

    def record_daemon(self, daemon_id: str, *, host: str, pid: int, app: str, started_at: float,
                      info: dict[str, Any], now: float, lock_timeout: float | None = None) -> None:
        params = {"id": daemon_id, "host": host, "pid": pid, "app": app, "started_at": started_at, "now": now,
                  "info": Jsonb(info), "clock": self._clock()}

        def body(cur: Any) -> None:
            if lock_timeout is not None:
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{max(1, int(lock_timeout * 1000))}ms",))
            cur.execute(
                f"""INSERT INTO castor_daemons (id, host, pid, app, started_at, heartbeat_at, info, heartbeat_clock)
                    VALUES (%(id)s, %(host)s, %(pid)s, %(app)s, %(started_at)s, %(now)s, %(info)s, {_CLOCK})
                    ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
                                                   heartbeat_clock = excluded.heartbeat_clock,
                                                   info = excluded.info""", params)

        self._write(body)

    def remove_daemon(self, daemon_id: str) -> None:
        self._fetch("DELETE FROM castor_daemons WHERE id = %s", (daemon_id,))

    def daemons(self) -> list[dict[str, Any]]:
        rows = self._fetch(
            f"SELECT id, host, pid, app, started_at, heartbeat_at, info, heartbeat_clock, {_CLOCK} "
            "FROM castor_daemons ORDER BY heartbeat_at DESC", {"clock": self._clock()})
        keys = ("id", "host", "pid", "app", "started_at", "heartbeat_at", "info")
        wall = time.time()
        out = []
        for *row, beat_clock, clock in rows:
            item = dict(zip(keys, row, strict=True))
            item["info"] = item["info"] or {}
            # Seconds since its last heartbeat, on the store's clock.
            item["heartbeat_age"] = (clock - beat_clock) if beat_clock is not None and beat_clock <= clock \
                else wall - item["heartbeat_at"]
            out.append(item)
        return out

    # -- cancelling, progress, retrying, purging ----------------------------------------

    def cancel(self, task_id: str, *, now: float, expires_at: float | None = None) -> TaskStatus | None:
        def body(cur: Any) -> TaskStatus | None:
            cur.execute("SELECT status, workflow_id FROM castor_tasks WHERE id = %s FOR UPDATE", (task_id,))
            row = cur.fetchone()
            if row is None:
                return None
            status = TaskStatus(row[0])
            if status in (TaskStatus.PENDING, TaskStatus.WAITING):
                cur.execute("UPDATE castor_tasks SET status = 'cancelled', finished_at = %s, expires_at = %s, "
                            f"{workflows.STAMP} WHERE id = %s", (now, expires_at, task_id))
                if row[1] is not None:
                    self._advance(cur, [task_id], now)
                self._notify(cur)
                return TaskStatus.CANCELLED
            if status == TaskStatus.RUNNING:
                cur.execute("UPDATE castor_tasks SET cancel_requested = true WHERE id = %s", (task_id,))
            return status

        return self._write(body)

    def cancel_requests(self, owner: str) -> list[tuple[str, int]]:
        rows = self._fetch("SELECT id, fence FROM castor_tasks WHERE status = 'running' AND owner = %s "
                           "AND cancel_requested ORDER BY id", (owner,))
        return [(r[0], r[1]) for r in rows]

    def set_progress(self, task_id: str, fence: int, fraction: float | None, message: str | None) -> bool:
        return bool(self._worker_fetch(
            f"UPDATE castor_tasks SET progress = %(fraction)s, progress_message = %(message)s {_FENCE} RETURNING 1",
            {"fraction": fraction, "message": message, "id": task_id, "fence": fence}))

    def retry(self, query: Query | None = None, *, task_id: str | None = None, now: float) -> list[str]:
        params: dict[str, Any]
        if task_id is not None:
            where, params = " WHERE id = %(q_id)s", {"q_id": task_id}
        else:
            query = query or Query(status=TaskStatus.FAILED)
            if query.status not in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                raise ValueError("retry takes failed or cancelled tasks only")
            where, params = _where(query)
        params["now"] = now
        # Never a workflow member: it would run without its inputs (Manager.retry says so).
        where += (" AND " if where else " WHERE ") + "status IN ('failed', 'cancelled') AND workflow_id IS NULL"
        # A task whose unique twin is pending or running stays as it is, and of
        # finished twins retried together one comes back (the unique index allows
        # one unfinished task per key).
        sql = f"""UPDATE castor_tasks {_RETRY_SET}
                   WHERE id IN (
                         SELECT DISTINCT ON (c.unique_key, CASE WHEN c.unique_key IS NULL THEN c.id END) c.id
                           FROM castor_tasks c{where}
                            AND (c.unique_key IS NULL OR NOT EXISTS (
                                 SELECT 1 FROM castor_tasks u WHERE u.unique_key = c.unique_key
                                    AND u.status IN ('pending', 'running')))
                          ORDER BY c.unique_key, CASE WHEN c.unique_key IS NULL THEN c.id END, c.id)
                     AND status IN ('failed', 'cancelled')
               RETURNING id"""

        def body(cur: Any) -> list[str]:
            cur.execute(sql, params)
            ids = [r[0] for r in cur.fetchall()]
            if ids:
                self._notify(cur)
            return ids

        return self._write(body)

    def count_workflow_members(self, query: Query) -> int:
        """How many tasks `query` matches that are workflow members: what a bulk retry leaves."""
        where, params = _where(query)
        where += (" AND " if where else " WHERE ") + "workflow_id IS NOT NULL"
        return int(self._fetch(f"SELECT count(*) FROM castor_tasks{where}", params)[0][0])

    def run_now(self, task_id: str, *, now: float) -> bool:
        def body(cur: Any) -> bool:
            cur.execute("UPDATE castor_tasks SET eta = %(now)s, at_once = true "
                        "WHERE id = %(id)s AND status = 'pending' AND NOT at_once AND eta > %(now)s "
                        "RETURNING mode", {"now": now, "id": task_id})
            row = cur.fetchone()
            if row is not None:
                self._notify(cur, [work_topic(row[0])])
            return row is not None

        return self._write(body)

    def link_rerun(self, task_id: str, copy_id: str) -> bool:
        return bool(self._fetch(
            "UPDATE castor_tasks SET options = coalesce(options, '{}'::jsonb) || jsonb_build_object('rerun_as', "
            "%s::text) WHERE id = %s RETURNING 1", (copy_id, task_id)))

    def purge(self, query: Query) -> int:
        if query.status is not None and not query.status.finished:
            raise ValueError(f"purge deletes finished tasks only, not {query.status} ones")
        where, params = _where(query)
        where += ((" AND " if where else " WHERE ") + "status IN ('success', 'failed', 'cancelled') AND "
                  + workflows.NOT_IN_RUNNING_WORKFLOW)
        # In batches, so that a large purge never holds many row locks for long.
        total = 0
        while True:
            deleted = len(self._fetch(
                f"DELETE FROM castor_tasks WHERE id IN (SELECT id FROM castor_tasks{where} LIMIT 1000 "
                "FOR UPDATE SKIP LOCKED) RETURNING 1", params))
            total += deleted
            if deleted < 1000:
                return total

    def purge_expired(self, *, now: float, limit: int = 1000) -> int:
        self._fetch(_FORGET_WATCHES)
        return len(self._fetch(
            "DELETE FROM castor_tasks WHERE id IN (SELECT id FROM castor_tasks WHERE expires_at IS NOT NULL "
            f"AND expires_at < %(now)s AND {workflows.NOT_IN_RUNNING_WORKFLOW} LIMIT %(limit)s FOR UPDATE SKIP LOCKED) RETURNING 1",
            {"now": now, "limit": limit}))

    # -- periodic schedules ---------------------------------------------------------

    def fire_schedule(self, name: str, tick: float, task: NewTask, *, now: float) -> bool:
        def body(cur: Any) -> bool:
            # The conditional upsert: of callers racing for one tick, the first to
            # write it wins; the others find last_tick no longer below theirs.
            # A disabled schedule inserts nothing (INSERT … SELECT … WHERE NOT EXISTS).
            cur.execute(
                """INSERT INTO castor_schedules (name, last_tick, fired_at, task_id)
                   SELECT %s, %s, %s, %s WHERE NOT EXISTS (
                       SELECT 1 FROM castor_pauses WHERE kind = 'schedule' AND name = %s)
                   ON CONFLICT (name) DO UPDATE
                      SET last_tick = excluded.last_tick, fired_at = excluded.fired_at, task_id = excluded.task_id
                    WHERE castor_schedules.last_tick < excluded.last_tick
                RETURNING 1""", (name, tick, now, task.id, name))
            won = bool(cur.fetchall())
            if won:
                cur.execute(_INSERT, _insert_params(task))
                if (topic := _wakes(task)) is not None:
                    self._notify(cur, [topic])
            return won

        return self._write_new(body)

    def schedules(self) -> dict[str, dict[str, Any]]:
        rows = self._fetch("SELECT name, last_tick, fired_at, task_id FROM castor_schedules")
        return {name: {"last_tick": tick, "fired_at": fired, "task_id": tid} for name, tick, fired, tid in rows}

    # -- reading --------------------------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        clock = self._clock()
        rows = self._fetch(f"SELECT {_COLUMNS} FROM castor_tasks WHERE id = %s", (task_id,))
        return _record(rows[0], self._to_wall(clock)) if rows else None

    def status(self, task_id: str) -> TaskStatus | None:
        rows = self._fetch("SELECT status FROM castor_tasks WHERE id = %s", (task_id,))
        return TaskStatus(rows[0][0]) if rows else None

    def list(self, query: Query, *, limit: int | None = None, offset: int = 0,
             after: tuple[float, str] | None = None,
             before: tuple[float, str] | None = None) -> list[TaskRecord]:
        page_direction(after, before)
        where, params = _where(query, scanning=True)
        key, order = after or before, "DESC" if before is None else "ASC"
        if key is not None:  # a row comparison: castor_tasks_listing, read from the key on
            where += ((" AND " if where else " WHERE ")
                      + f"(enqueued_at, id) {'<' if after else '>'} (%(key_at)s, %(key_id)s)")
            params.update(key_at=float(key[0]), key_id=str(key[1]))
        params.update(limit=limit, offset=offset)
        clock = self._clock()
        sql = f"SELECT {_COLUMNS} FROM castor_tasks{where} ORDER BY enqueued_at {order}, id {order}"
        if _scanned(query):
            sql = (f"SELECT * FROM ({sql} LIMIT %(q_scan)s) AS scanned WHERE {_ARGS_CONTAIN} "
                   f"ORDER BY enqueued_at {order}, id {order}")
        rows = self._fetch(sql + " LIMIT %(limit)s OFFSET %(offset)s", params)
        to_wall = self._to_wall(clock)
        records = [_record(r, to_wall) for r in rows]
        return records if before is None else records[::-1]  # read upwards from the key

    def count(self, query: Query, *, limit: int | None = None) -> int:
        where, params = _where(query, scanning=True)
        if _scanned(query):
            return int(self._fetch(
                f"SELECT count(*) FROM (SELECT args, kwargs, args_text, kwargs_text FROM castor_tasks{where} "
                f"ORDER BY enqueued_at DESC, id DESC LIMIT %(q_scan)s) AS scanned WHERE {_ARGS_CONTAIN}",
                params)[0][0])
        if limit is None:
            return int(self._fetch(f"SELECT count(*) FROM castor_tasks{where}", params)[0][0])
        return int(self._fetch(f"SELECT count(*) FROM (SELECT 1 FROM castor_tasks{where} LIMIT %(limit)s) AS m",
                               {**params, "limit": limit})[0][0])

    def _fetch_by_index(self, sql: str, params: Any = None) -> Sequence[tuple[Any, ...]]:
        """A read of the pending (or other indexed) rows that must walk its partial index.

        The ready index keeps the size of the biggest backlog it held (btree pages are
        freed only when wholly empty): after a million tasks came and went it had 20,921
        pages for 40,000 pending rows, and the planner, costing an index scan by its
        pages, read the whole table instead: 120-230 ms at a million rows against 24-32
        through the index (docs/design-tallies.md). A sequential scan of the table is
        never the better plan for these reads, so it is ruled out for this transaction."""
        with self._session() as conn, conn.transaction():
            conn.execute("SET LOCAL enable_seqscan = off")
            cur = conn.execute(sql, params)
            return cur.fetchall()

    def pending_by_queue(self) -> dict[str, int]:
        rows = self._fetch_by_index("SELECT queue, count(*) FROM castor_tasks WHERE status = 'pending' "
                                    "GROUP BY queue ORDER BY queue")
        return {queue: int(n) for queue, n in rows}

    def counts_by_status(self) -> dict[TaskStatus, int]:
        # A count per status, each from its partial index (pending: the ready index,
        # running: the owner index, the finished: castor_tasks_finished), not one GROUP
        # BY over the table's every row: 95 ms against 181 at a million tasks.
        statuses = list(TaskStatus)
        counts = self._fetch_by_index("SELECT " + ", ".join(
            f"(SELECT count(*) FROM castor_tasks WHERE status = '{s.value}')" for s in statuses))[0]
        return {s: int(n) for s, n in zip(statuses, counts, strict=True)}

    def estimated_counts_by_status(self, *, exact_up_to: int) -> dict[TaskStatus, tuple[int, bool]]:
        # Finished statuses: counted up to exact_up_to + 1 rows; past that, the planner's
        # statistics (the table's row estimate times the status's share, as ANALYZE
        # last sampled them), when they know the status and agree it is that big.
        statuses = list(TaskStatus)
        counted = [f"(SELECT count(*) FROM castor_tasks WHERE status = '{s.value}')" if not s.finished else
                   f"(SELECT count(*) FROM (SELECT 1 FROM castor_tasks WHERE status = '{s.value}' "
                   "LIMIT %(cap)s) AS c)" for s in statuses]
        row = self._fetch_by_index(
            "SELECT " + ", ".join(counted) + ", c.reltuples, s.most_common_vals::text::text[], s.most_common_freqs"
            "  FROM pg_class AS c LEFT JOIN pg_stats AS s ON s.schemaname = c.relnamespace::regnamespace::text"
            "   AND s.tablename = 'castor_tasks' AND s.attname = 'status'"
            " WHERE c.oid = 'castor_tasks'::regclass", {"cap": exact_up_to + 1})[0]
        rows, values, freqs = row[len(statuses):]
        share = dict(zip(values or [], freqs or [], strict=True))
        counts: dict[TaskStatus, tuple[int, bool]] = {}
        for status, n in zip(statuses, row[:len(statuses)], strict=True):
            estimate = round(rows * share.get(status.value, 0.0)) if rows and rows > 0 else 0
            if status.finished and n > exact_up_to and estimate > exact_up_to:
                counts[status] = (estimate, True)
            elif status.finished and n > exact_up_to:  # statistics too old to know: count
                counts[status] = (int(self._fetch_by_index(
                    f"SELECT count(*) FROM castor_tasks WHERE status = '{status.value}'")[0][0]), False)
            else:
                counts[status] = (int(n), False)
        return counts

    def queue_stats(self, *, now: float) -> dict[str, Any]:
        scheduled, oldest_due = self._fetch_by_index(
            "SELECT count(*) FILTER (WHERE NOT at_once AND eta > %(now)s), "
            "       min(eta) FILTER (WHERE at_once OR eta <= %(now)s) "
            "  FROM castor_tasks WHERE status = 'pending'", {"now": now})[0]
        failed = self._fetch_by_index("SELECT task_name, count(*) FROM castor_tasks WHERE status = 'failed' "
                                      "GROUP BY task_name ORDER BY count(*) DESC, task_name")
        return {"scheduled": int(scheduled), "oldest_due": oldest_due,
                "failed_by_name": {name: int(n) for name, n in failed}}

    def next_due(self, *, mode: str, now: float, queues: Sequence[str] | None = None) -> float | None:
        with self._session() as conn:
            batch = self._batch(conn)  # both reads in one round trip (an idle worker's every look)
            look = _Look(batch, mode=mode, now=now, queues=queues, clock=self._clock())
            batch.run()
            return look.answer()

    # -- rate limits (castor/rate_limits.py) ------------------------------------------

    def set_rate_limit(self, kind: str, name: str, *, rate: float, burst: int) -> None:
        check_bucket(kind, name, rate, burst)

        def body(cur: Any) -> None:
            cur.execute(f"SELECT {_CLOCK}", {"clock": self._clock()})
            clock = cur.fetchone()[0]
            # The same limit again (every worker's start says it) leaves the bucket; a
            # new one starts full, a changed one keeps its tokens up to its new burst.
            cur.execute("INSERT INTO castor_rate_limits (kind, name, rate, burst, tokens, updated_at) "
                        "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (kind, name) DO NOTHING RETURNING 1",
                        (kind, name, rate, burst, float(burst), clock))
            if cur.fetchone() is not None:
                return
            cur.execute("SELECT rate, burst, tokens, updated_at FROM castor_rate_limits "
                        "WHERE kind = %s AND name = %s FOR UPDATE", (kind, name))
            old = cur.fetchone()
            if (old[0], old[1]) == (rate, burst):
                return
            tokens = min(float(burst), refill(old[2], old[3], max(clock, old[3]), old[0], old[1]))
            cur.execute("UPDATE castor_rate_limits SET rate = %s, burst = %s, tokens = %s, updated_at = %s "
                        "WHERE kind = %s AND name = %s", (rate, burst, tokens, max(clock, old[3]), kind, name))

        self._write(body)

    def remove_rate_limit(self, kind: str, name: str) -> bool:
        def body(cur: Any) -> bool:
            cur.execute("DELETE FROM castor_rate_limits WHERE kind = %s AND name = %s RETURNING 1", (kind, name))
            if cur.fetchone() is None:
                return False
            self._notify(cur)  # the tasks it held may be due for any mode: wake everyone
            return True

        return self._write(body)

    def rate_limits(self) -> dict[tuple[str, str], dict[str, Any]]:
        rows = self._fetch(_BUCKETS_NOW, {"clock": self._clock()})
        # Booked ahead (rate_limits.BOOK_AHEAD_SECONDS), a bucket holds less than none: none to tell.
        return {(kind, name): {"rate": rate, "burst": burst,
                               "tokens": max(0.0, refill(tokens, at, max(clock, at), rate, burst))}
                for clock, kind, name, rate, burst, tokens, at in rows}


    # -- concurrency limits (castor/concurrency.py) -------------------------------------

    def set_concurrency_limit(self, name: str, limit: int, *, per_key: bool = False) -> None:
        check_limit(name, limit)

        # The same limit again (every worker's start says it) writes nothing. A changed
        # one wakes the idle workers: a raised limit may let them start more now.
        def body(cur: Any) -> None:
            cur.execute("INSERT INTO castor_concurrency_limits AS c (name, max_running, per_key) VALUES (%s, %s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running, "
                        "per_key = excluded.per_key WHERE (c.max_running, c.per_key) "
                        "IS DISTINCT FROM (excluded.max_running, excluded.per_key) RETURNING 1", (name, limit, per_key))
            if cur.fetchone() is not None:
                self._notify(cur)

        self._write(body)

    def remove_concurrency_limit(self, name: str) -> bool:
        def body(cur: Any) -> bool:
            cur.execute("DELETE FROM castor_concurrency_limits WHERE name = %s RETURNING 1", (name,))
            removed = cur.fetchone() is not None
            if removed:
                self._notify(cur)
            return removed

        return self._write(body)

    def concurrency_limits(self) -> dict[str, dict[str, Any]]:
        def body(cur: Any) -> dict[str, dict[str, Any]]:
            limits = cur.execute(_LIMITS).fetchall()
            return concurrency_report(limits, cur.execute(_RUNNING_LIMITED).fetchall() if limits else [])

        return self._write(body)
    # -- pausing --------------------------------------------------------------------

    def _pause(self, kind: str, name: str) -> bool:
        rows = self._fetch("INSERT INTO castor_pauses (kind, name, paused_at) VALUES (%s, %s, %s) "
                           "ON CONFLICT DO NOTHING RETURNING name", (kind, name, time.time()))
        return bool(rows)

    def _resume(self, kind: str, name: str) -> bool:
        def body(cur: Any) -> bool:
            cur.execute("DELETE FROM castor_pauses WHERE kind = %s AND name = %s RETURNING name", (kind, name))
            if cur.fetchone() is None:
                return False
            self._notify(cur)  # the tasks held may be due for any mode: wake everyone
            return True

        return self._write(body)

    def _paused(self, kind: str) -> set[str]:
        return {name for (name,) in self._fetch("SELECT name FROM castor_pauses WHERE kind = %s", (kind,))}

    # -- housekeeping ---------------------------------------------------------------

    def verify(self) -> None:
        with self._session() as conn:
            version = pg_schema.installed_version(conn.cursor())
        if version != pg_schema.SCHEMA_VERSION:
            raise StoreError(f"castor's tables in this PostgreSQL database are at schema version {version}, "
                             f"not {pg_schema.SCHEMA_VERSION}: they were dropped or changed by hand")

    # -- waiting --------------------------------------------------------------------

    def _ensure_listener(self) -> Listener | RelayedListener | Polling:
        self._forget_inherited()
        if self._closed:
            raise StoreError("the castor store for this PostgreSQL database is closed")
        with self._lock:
            if self._listener is None:
                try:
                    self._listener = self._open_listener()
                except psycopg.OperationalError as exc:
                    raise StoreUnavailable(f"cannot LISTEN on PostgreSQL ({_first_line(exc)})") from exc
            return self._listener

    def generation(self, topic: str | None = None) -> int:
        return self._ensure_listener().generation(topic)

    def wait_for_change(self, seen: int, timeout: float, topic: str | None = None) -> int:
        return self._ensure_listener().wait(seen, timeout, topic)

    def watch_async(self, topic: str | None = None) -> AsyncWatch | PollingWatch:
        return self._ensure_listener().watch(topic)

    def told_result(self, task_id: str) -> ToldResult | None:
        return self._ensure_listener().told_result(task_topic(task_id))

    @contextmanager
    def hearing(self, topic: str) -> Iterator[None]:
        listener = self._ensure_listener()
        listener.track(topic)
        try:
            yield
        finally:
            listener.untrack(topic)

    @contextmanager
    def watch_task(self, task_id: str) -> Iterator[TaskRecord | None]:
        """Settles of this task notify its topic while someone watches: a row of
        castor_watches says so (committed before the caller looks at the task: a settle
        that commits after that look sees it, _WATCH_LOCK making sure of it).

        One round trip: the watch commits without waiting for the WAL flush (a watch
        lost to a server crash went with its joiner's connection), then the task is
        read, and given to the caller as its first look."""
        listener = self._ensure_listener()
        topic = task_topic(task_id)
        watcher = uuid.uuid4().hex
        with self._lock:
            ended, self._ended_watches = self._ended_watches, []
        listener.track(topic)
        try:
            clock = self._clock()
            with self._session() as conn:
                batch = self._batch(conn)
                batch.execute("BEGIN")
                if ended:
                    batch.execute(_REWATCH, ([t for t, _ in ended], [w for _, w in ended], task_id, watcher, task_id))
                else:
                    batch.execute(_WATCH, (task_id, watcher, task_id))
                batch.execute("COMMIT")
                reading = batch.execute(_READ_TASK, (task_id,))
                batch.run()
                rows = reading.fetchall()
            yield _record(rows[0], self._to_wall(clock)) if rows else None
        finally:
            listener.untrack(topic)
            # Deleted later (by the next watch, or close()): a watch left on a task that
            # ended wakes nobody, and deleting it now would cost the joiner a round trip.
            with self._lock:
                self._ended_watches.append((task_id, watcher))

    def close(self) -> None:
        if self._pid != os.getpid():
            self._closed = True
            return
        self._gate.close()
        with self._lock:
            ended, self._ended_watches = self._ended_watches, []
        if ended and not self._closed:
            try:
                self._fetch(_UNWATCH, ([t for t, _ in ended], [w for _, w in ended]))
            except StoreError:
                pass  # purge_expired forgets them once their tasks are finished
        with self._lock:
            idle, self._idle = self._idle, []
            listener, self._listener = self._listener, None
            self._closed = True
        for conn in idle:
            conn.close()
        if listener is not None:
            listener.close()

    # -- moving tasks between stores (castord move) --------------------------------

    def pending_copies(self, *, after: str | None = None, limit: int = 500) -> Sequence[TaskCopy]:
        clock = self._clock()
        rows = self._fetch(
            f"SELECT {_COLUMNS}, at_once, cache_key, concurrency_key FROM castor_tasks "
            "WHERE status = 'pending' AND id > %s "
            "AND workflow_id IS NULL ORDER BY id LIMIT %s", (after or "", limit))
        to_wall = self._to_wall(clock)
        return [TaskCopy(_record(r[:-3], to_wall), r[-3], r[-2], r[-1]) for r in rows]

    def concurrency_key_of(self, task_id: str) -> str | None:
        """The task's stored concurrency key (None: not limited, or no such task), for its copy."""
        rows = self._fetch("SELECT concurrency_key FROM castor_tasks WHERE id = %s", (task_id,))
        return rows[0][0] if rows else None

    def insert_copies(self, tasks: Sequence[TaskCopy]) -> CopyOutcome:
        def body(cur: Any) -> CopyOutcome:
            outcome = CopyOutcome()
            for task in tasks:
                params = _copy_params(task)
                while True:
                    # No conflict target: a stored id and a unique key's unfinished twin both skip the row.
                    cur.execute(_INSERT_COPY, params)
                    if cur.fetchall():
                        outcome.inserted.append(task.id)
                        break
                    cur.execute("SELECT 1 FROM castor_tasks WHERE id = %s", (task.id,))
                    if cur.fetchall():
                        outcome.present.append(task.id)
                        break
                    cur.execute(_UNFINISHED_TWIN, (task.record.unique_key,))
                    twin = cur.fetchone()
                    if twin is not None:  # else it finished since the INSERT looked: try again
                        outcome.twins[task.id] = twin[0]
                        break
            if outcome.inserted:
                self._notify(cur)
            return outcome

        return self._write(body)

    def delete_copies(self, tasks: Sequence[TaskCopy]) -> Sequence[str]:
        def body(cur: Any) -> list[str]:
            cur.execute(
                """DELETE FROM castor_tasks t
                     USING unnest(%s::text[], %s::bigint[], %s::int[]) AS c(id, fence, attempts)
                    WHERE t.id = c.id AND t.fence = c.fence AND t.attempts = c.attempts AND t.status = 'pending'
                RETURNING t.id""",
                ([t.id for t in tasks], [t.record.fence for t in tasks], [t.record.attempts for t in tasks]))
            return sorted(r[0] for r in cur.fetchall())

        return self._write(body)

    def merge_schedules(self, fired: dict[str, dict[str, Any]]) -> Sequence[str]:
        def body(cur: Any) -> list[str]:
            written = []
            for name, row in sorted(fired.items()):
                cur.execute(
                    """INSERT INTO castor_schedules (name, last_tick, fired_at, task_id) VALUES (%s, %s, %s, %s)
                       ON CONFLICT (name) DO UPDATE
                          SET last_tick = excluded.last_tick, fired_at = excluded.fired_at,
                              task_id = excluded.task_id
                        WHERE castor_schedules.last_tick < excluded.last_tick
                    RETURNING name""", (name, row["last_tick"], row["fired_at"], row["task_id"]))
                written += [r[0] for r in cur.fetchall()]
            return written

        return self._write(body)


def _raise_if_task_id_taken(exc: psycopg.errors.UniqueViolation) -> None:
    """A duplicate task id is the caller's (TaskIdConflict); any other duplicate is
    ours, and the caller re-raises it."""
    if exc.diag.constraint_name == "castor_tasks_pkey":
        raise TaskIdConflict(f"a task with this id already exists ({_first_line(exc)}); "
                             "task ids must be unique") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# A copy of another store's pending task (castord move), as it was there; the
# claim's owner and lease stay behind (they were on the other store's clock).
_INSERT_COPY = (
    "INSERT INTO castor_tasks (id, task_name, queue, mode, daemon, status, priority, serializer, args, kwargs, "
    "args_text, kwargs_text, enqueued_at, eta, at_once, started_at, error, attempts, lost, options, history, "
    "unique_key, cache_key, concurrency_key, fence, isolate) "
    "VALUES (%(id)s, %(name)s, %(queue)s, %(mode)s, %(daemon)s, 'pending', %(priority)s, %(serializer)s, "
    "%(args)s, %(kwargs)s, %(args_text)s, %(kwargs_text)s, %(enqueued_at)s, %(eta)s, %(at_once)s, "
    "%(started_at)s, %(error)s, %(attempts)s, %(lost)s, %(options)s, %(history)s, %(unique_key)s, "
    "%(cache_key)s, %(concurrency_key)s, %(fence)s, %(isolate)s) ON CONFLICT DO NOTHING RETURNING id"
)


def _copy_params(task: TaskCopy) -> dict[str, Any]:
    r = task.record
    return {**_insert_params(task.as_new()), "at_once": bool(task.at_once), "started_at": r.started_at,
            "error": _jsonb(r.error), "attempts": r.attempts, "lost": r.lost, "history": _jsonb(r.history or None),
            "fence": r.fence, "isolate": bool(r.isolate)}


class _LimitedClaim:
    """One claim's transaction under rate and concurrency limits.

    It reads the buckets and the limits without locks (a first guess of what holds
    tasks back), picks the best due tasks past those, then locks only what the picked
    tasks need: their buckets (rows, FOR UPDATE) and their groups (advisory locks), and
    reads the clock and counts the groups' running tasks once it holds them. So two
    claimers of unrelated names never wait for each other, and two of one name take
    turns: the second counts after the first committed. Locks are taken in one order
    (buckets by kind and name, then groups by number) while the claim holds none, and
    only tried after that (a bucket or group it cannot get is skipped for this claim):
    a claim never waits while it holds a lock, so claimers never deadlock."""

    def __init__(self, conn: Any, params: dict[str, Any], pick: str):
        self.conn, self.params, self.pick = conn, params, pick
        with conn.pipeline():  # one round trip
            conn.execute("SET LOCAL synchronous_commit TO OFF")
            buckets = conn.execute(_BUCKETS_NOW, {"clock": params["clock"]})
            limits = conn.execute(_LIMITS)
            running = conn.execute(_RUNNING_LIMITED)
        snapshot = buckets.fetchall()
        self.clock = snapshot[0][0] if snapshot else 0.0
        self.buckets = Buckets([row[1:] for row in snapshot], self.clock)
        self.slots = Slots(limits.fetchall())
        self.slots.count(running.fetchall())
        self.locked_buckets: set[tuple[str, str]] = set()
        self.locked_groups: set[Group] = set()

    def run(self, limit: int) -> list[tuple[Any, ...]]:
        taken: list[tuple[Any, ...]] = []
        # A task refused means more may lie past it: pick again, past what refused it
        # (a dry bucket, a full group: each round skips one more, so rounds are few).
        while len(taken) < limit:
            full = self.slots.full_keys()
            found = self.conn.execute(self.pick, {
                **self.params, "limit": limit - len(taken), "held_queues": sorted(self.buckets.held("queue")),
                "held_names": sorted(self.buckets.held("name") | self.slots.full_names()),
                "full_names": [n for n, _ in full], "full_keys": [k for _, k in full]}).fetchall()
            if not found:
                break
            self._lock_for(found)
            chosen, refused = choose(found, self.slots, self.buckets.take, limit - len(taken))
            if chosen:
                now = self.params["now"]
                taken.extend(self.conn.execute(_CLAIM_IDS, {
                    **self.params, "ids": [task_id for task_id, _ in chosen],
                    "starts": [now + wait for _, wait in chosen]}).fetchall())
            if not refused:
                break
        self.conn.cursor().executemany("UPDATE castor_rate_limits SET tokens = %s, updated_at = %s "
                                       "WHERE kind = %s AND name = %s", self.buckets.changed())
        return taken

    def _lock_for(self, found: list[tuple[Any, ...]]) -> None:
        """Lock the buckets and groups of the picked tasks not locked yet; then read the
        buckets and count the groups afresh (under their locks)."""
        buckets = sorted({key for _, name, queue, _ in found for key in self.buckets.keys(name, queue)}
                         - self.locked_buckets)
        groups = sorted({g for _, name, _, key in found if (g := self.slots.group(name, key)) is not None}
                        - self.locked_groups, key=lock_key)
        if not buckets and not groups:
            return
        wait = not self.locked_buckets and not self.locked_groups  # holding nothing yet: may wait
        conn = self.conn
        with conn.pipeline():
            bucket_rows = conn.execute(_LOCK_BUCKETS + ("" if wait else " SKIP LOCKED"), {
                "kinds": [k for k, _ in buckets], "names": [n for _, n in buckets]}) if buckets else None
            group_locks = conn.execute(_LOCK_GROUPS if wait else _TRY_GROUPS,
                                       {"keys": [lock_key(g) for g in groups]}) if groups else None
            now = conn.execute(f"SELECT {_CLOCK}", {"clock": self.params["clock"]})
        rows = bucket_rows.fetchall() if bucket_rows is not None else []
        got = {(row[0], row[1]) for row in rows}
        for key in buckets:
            if key in got:
                self.locked_buckets.add(key)
            elif wait:
                del self.buckets.tokens[key]  # removed since the first read: no limit
            else:
                self.buckets.hold(key)  # another claimer holds it
        # The server's clock stepped back: no refill (never a bucket refilled twice).
        self.buckets.add(rows, max([now.fetchone()[0], *(row[5] for row in rows)]))
        if groups:
            assert group_locks is not None
            held = groups if wait else [g for g, (_, ok) in zip(groups, group_locks.fetchall(), strict=True) if ok]
            for group in set(groups) - set(held):
                self.slots.hold(group)
            self._count(held)

    def _count(self, groups: list[Group]) -> None:
        self.locked_groups.update(groups)
        if not groups:
            return
        whole = [not self.slots.limits[name][1] for name, _ in groups]
        counts = self.conn.execute(_COUNT_GROUPS, {"names": [n for n, _ in groups], "keys": [k for _, k in groups],
                                                   "whole": whole}).fetchall()
        self.slots.recount({(name, key): n for name, key, n in counts})
