"""castor's tables in the SQLite file, and forward-only migrations.

castor never touches beaver-db's tables or `PRAGMA user_version`: its own
version lives in `castor_meta`. Each migration runs in one write transaction
that re-reads the version first, so two processes opening a new file at once
apply it exactly once.
"""

from __future__ import annotations

import sqlite3

from castor.errors import StoreError

META_DDL = "CREATE TABLE IF NOT EXISTS castor_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"

# Index N holds the statements that take the schema from version N to N+1.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE castor_tasks (
            id            TEXT PRIMARY KEY,
            task_name     TEXT NOT NULL,
            queue         TEXT NOT NULL DEFAULT 'default',
            mode          TEXT NOT NULL,
            daemon        INTEGER NOT NULL DEFAULT 0,
            status        TEXT NOT NULL,
            priority      INTEGER NOT NULL DEFAULT 0,
            serializer    TEXT NOT NULL,
            args          BLOB,
            kwargs        BLOB,
            enqueued_at   REAL NOT NULL,
            eta           REAL NOT NULL,
            started_at    REAL,
            finished_at   REAL,
            result        BLOB,
            error         TEXT,
            attempts      INTEGER NOT NULL DEFAULT 0,
            lost          INTEGER NOT NULL DEFAULT 0,
            owner         TEXT,
            lease_expires REAL,
            options       TEXT
        ) WITHOUT ROWID
        """,
        # The table is keyed by its time-ordered id (WITHOUT ROWID: one B-tree
        # fewer to write per enqueue than a rowid table with a unique id).
        # Pending rows, in claim order: best priority first, then oldest ETA
        # (ties in enqueue order, via the id every index entry ends with). Claims
        # name it with INDEXED BY: without ANALYZE statistics the planner may
        # otherwise sort every due row for each claim.
        """CREATE INDEX castor_tasks_ready
           ON castor_tasks (mode, priority DESC, eta) WHERE status = 'pending'""",
        # Every other row by status: the few running ones (leases), and counts and
        # listings of finished ones. Partial, so an enqueue updates one index
        # fewer (each index page an enqueue dirties is written to the WAL).
        """CREATE INDEX castor_tasks_status
           ON castor_tasks (status, mode, eta) WHERE status != 'pending'""",
    ],
    [
        # One row per running castord master: its own heartbeat, what it runs.
        # `castord status` and other castords on the same file read it.
        """
        CREATE TABLE castor_daemons (
            id           TEXT PRIMARY KEY,
            host         TEXT NOT NULL,
            pid          INTEGER NOT NULL,
            app          TEXT NOT NULL,
            started_at   REAL NOT NULL,
            heartbeat_at REAL NOT NULL,
            info         TEXT
        )
        """,
    ],
    [
        # Task semantics (retries, cancellation, progress, TTL, unique, caching).
        "ALTER TABLE castor_tasks ADD COLUMN progress REAL",
        "ALTER TABLE castor_tasks ADD COLUMN progress_message TEXT",
        "ALTER TABLE castor_tasks ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0",
        # JSON list: one short entry per failed attempt (the last one in full is `error`).
        "ALTER TABLE castor_tasks ADD COLUMN history TEXT",
        # A finished row is deleted by housekeeping after this time (result_ttl).
        "ALTER TABLE castor_tasks ADD COLUMN expires_at REAL",
        "ALTER TABLE castor_tasks ADD COLUMN unique_key TEXT",
        "ALTER TABLE castor_tasks ADD COLUMN cache_key TEXT",
        # Partial indexes: rows without a TTL, key or cache entry cost nothing.
        """CREATE INDEX castor_tasks_expiry
           ON castor_tasks (expires_at) WHERE expires_at IS NOT NULL""",
        # At most one unfinished task per unique key: the enqueue of a twin
        # finds the first instead (and a retry of a twin cannot collide).
        """CREATE UNIQUE INDEX castor_tasks_unique
           ON castor_tasks (unique_key)
           WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')""",
        """CREATE INDEX castor_tasks_cache
           ON castor_tasks (cache_key, finished_at)
           WHERE cache_key IS NOT NULL AND status = 'success'""",
        # Periodic schedules: the last tick fired, so that several castords on
        # one file fire each tick once (a conditional UPDATE decides who fires).
        """
        CREATE TABLE castor_schedules (
            name       TEXT PRIMARY KEY,
            last_tick  REAL NOT NULL,
            fired_at   REAL NOT NULL,
            task_id    TEXT
        )
        """,
    ],
    [
        # Zero loss under adversity (docs/design.md, "Fencing, clocks, blame").
        # The fencing token: bumped by every claim, never lowered, so each claim
        # of a task has its own; settle, renew, progress and requeue name it.
        "ALTER TABLE castor_tasks ADD COLUMN fence INTEGER NOT NULL DEFAULT 0",
        # 1: the task was running in a thread host that crashed beside other
        # tasks; it runs alone until blame is clear (castor/worker.py).
        "ALTER TABLE castor_tasks ADD COLUMN isolate INTEGER NOT NULL DEFAULT 0",
        # 1: queued to run at once (enqueued without an ETA, retried without a
        # delay or by hand): due whatever the wall clock says. A fact about how
        # the task was queued, which eta <= enqueued_at cannot tell (a retry's
        # backoff may end before enqueued_at once the clock stepped back).
        "ALTER TABLE castor_tasks ADD COLUMN at_once INTEGER NOT NULL DEFAULT 0",
        "UPDATE castor_tasks SET at_once = 1 WHERE status = 'pending' AND eta <= enqueued_at",
        # Claims filter on isolate and at_once: both in the index.
        "DROP INDEX castor_tasks_ready",
        """CREATE INDEX castor_tasks_ready
           ON castor_tasks (mode, isolate, priority DESC, eta, at_once) WHERE status = 'pending'""",
        # A master's heartbeat on the boot clock (castor/clocks.py).
        "ALTER TABLE castor_daemons ADD COLUMN heartbeat_clock REAL",
        # Leases move from the wall clock to the boot clock: a lease written by
        # the previous version names a time the boot clock will not reach for
        # decades. Its worker was stopped for the upgrade: expire it now.
        "UPDATE castor_tasks SET lease_expires = 0 WHERE status = 'running'",
    ],
    [
        # Large backlogs (docs/design.md, "Finding due tasks"). The v4 index led with
        # (mode, isolate, priority): "due" and "in a served queue" were filters, so
        # every idle check walked every pending row of the mode (1,000,000 tasks due
        # tomorrow: 0.8 of a core idle, 2 s per claim). Ordered by queue, then
        # at_once, then (priority, eta), each queue's at-once rows are one run in
        # claim order and its ETA rows one run per priority whose due rows are a
        # prefix: castor/store/ready.py seeks to the head of each run instead.
        # `status` is a column too, so that the index covers the queries (SQLite
        # 3.40 does not count a column tested only by the index's own WHERE as
        # covered, and looked every row up in the table: counts took seconds).
        "DROP INDEX castor_tasks_ready",
        """CREATE INDEX castor_tasks_ready
           ON castor_tasks (mode, isolate, queue, at_once, priority DESC, eta, status)
           WHERE status = 'pending'""",
        # The dirty ones (a worker vanished while running them): few, so partial.
        # `castord tasks stats` counted them by reading the whole table. Only the
        # columns of its condition, which claims and settles never change: SQLite
        # then leaves the index alone in their UPDATEs (keyed by status, it was
        # looked at in every one, +0.13 µs per task).
        """CREATE INDEX castor_tasks_dirty
           ON castor_tasks (lost, isolate) WHERE lost > 0 OR isolate > 0""",
    ],
    [
        # Paused queues (castord tasks pause): claims skip their tasks. A row per
        # (kind, name), so that pausing a task name can be another kind later.
        """
        CREATE TABLE castor_pauses (
            kind      TEXT NOT NULL,
            name      TEXT NOT NULL,
            paused_at REAL NOT NULL,
            PRIMARY KEY (kind, name)
        ) WITHOUT ROWID
        """,
    ],
    [
        # The dashboard at a million rows (docs/web-dashboard.md). Listings are newest
        # first by (enqueued_at, id): without this index each page sorted every matching
        # row (0.8 s for the first page of 1,000,000). Its cost is one more B-tree entry
        # per enqueue, appended at its end (enqueued_at only grows), measured in
        # docs/benchmarks.md; claims and settles never change enqueued_at, so they leave
        # it alone.
        "CREATE INDEX castor_tasks_listing ON castor_tasks (enqueued_at DESC, id DESC)",
        # The same order per status, for a listing by status (the Failed screen, the
        # status filter): 51 rows of the index, where (status, mode, eta) sorted every
        # failed row (0.2 s at 50,000). Nothing read mode or eta from it. It replaces
        # that index, so a claim or settle writes no more than before: a row moves
        # between statuses in it as it did.
        "DROP INDEX castor_tasks_status",
        """CREATE INDEX castor_tasks_status
           ON castor_tasks (status, enqueued_at DESC, id DESC) WHERE status != 'pending'""",
        # Finished rows by status and time: the overview's chart counts what finished in
        # each five minutes (a range of this index, not a walk of every finished row).
        # Partial on finished_at: claims never set it, so they write nothing here; a
        # settle adds one entry (at the end: finished_at only grows). SQLite uses a
        # partial index with `x IS NOT NULL` for any comparison on x.
        """CREATE INDEX castor_tasks_finished
           ON castor_tasks (status, finished_at) WHERE finished_at IS NOT NULL""",
    ],
    [
        # Rate limits (castor/rate_limits.py): a token bucket per limited task name or
        # queue. A claim reads them all and writes back those it took from, in its own
        # write transaction; `updated_at` is on the boot clock, as leases are.
        """
        CREATE TABLE castor_rate_limits (
            kind       TEXT NOT NULL,
            name       TEXT NOT NULL,
            rate       REAL NOT NULL,
            burst      INTEGER NOT NULL,
            tokens     REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, name)
        ) WITHOUT ROWID
        """,
    ],
    [
        # Failures by task name (the overview, Queues, `castord tasks stats`): without it
        # the count walked the failed rows by the status index and looked each row up for
        # its name (110-150 ms at 50,000 failures). Partial: only a settle to failed (or a
        # retry out of it) writes an entry, never a claim or a success.
        # status in it too: SQLite reads a partial index alone only if it holds every
        # column the query names (its WHERE too).
        "CREATE INDEX castor_tasks_failed_names ON castor_tasks (task_name, status) WHERE status = 'failed'",
    ],
    [
        # Concurrency limits (castor/concurrency.py): a limited task's key (set at
        # enqueue; '' for a name limited as a whole, NULL for a task not limited), a row
        # per limited name, and the running limited tasks by (name, key), which a claim
        # counts. Partial: only a limited task's claim and end write an entry.
        "ALTER TABLE castor_tasks ADD COLUMN concurrency_key TEXT",
        """
        CREATE TABLE castor_concurrency_limits (
            name        TEXT PRIMARY KEY,
            max_running INTEGER NOT NULL,
            per_key     INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        """CREATE INDEX castor_tasks_limited ON castor_tasks (task_name, concurrency_key)
           WHERE status = 'running' AND concurrency_key IS NOT NULL""",
    ],
    [
        # Workflows (docs/workflows.md): every member is a row from the start, those whose
        # step has not come `waiting`; the workflow's row counts the running step's members
        # left, moved in the transaction that ends them. NULL in a plain task's row.
        "ALTER TABLE castor_tasks ADD COLUMN workflow_id TEXT",
        "ALTER TABLE castor_tasks ADD COLUMN wf_step INTEGER",  # 0, 1, ...; -1: the link_error handler
        "ALTER TABLE castor_tasks ADD COLUMN wf_index INTEGER",  # position in its step (result order)
        "ALTER TABLE castor_tasks ADD COLUMN wf_input TEXT",  # 'result' | 'results' | 'error' | NULL
        # Partial on waiting: a release looks at the step's waiting rows only, not at every
        # member of the running step (measured in the design: 7.0 s against 2.6 for 5,000).
        """CREATE INDEX castor_tasks_waiting
           ON castor_tasks (workflow_id, wf_step) WHERE status = 'waiting'""",
        """CREATE INDEX castor_tasks_members
           ON castor_tasks (workflow_id, wf_step, wf_index) WHERE workflow_id IS NOT NULL""",
        """
        CREATE TABLE castor_workflows (
            id           TEXT PRIMARY KEY,
            kind         TEXT NOT NULL,
            state        TEXT NOT NULL,
            step         INTEGER NOT NULL,
            remaining    INTEGER NOT NULL,
            sizes        TEXT NOT NULL,
            first_bad    TEXT,
            handler_id   TEXT,
            handler_step INTEGER,
            moved_at     REAL NOT NULL,
            created_at   REAL NOT NULL,
            finished_at  REAL
        )
        """,
        "CREATE INDEX castor_workflows_running ON castor_workflows (created_at) WHERE state = 'running'",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM castor_meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def installed_version(conn: sqlite3.Connection) -> int:
    """The schema version in the file, read without a write lock (0: none yet)."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'castor_meta'").fetchone()
    return current_version(conn) if has_meta else 0


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to SCHEMA_VERSION; call inside BEGIN IMMEDIATE."""
    conn.execute(META_DDL)
    version = current_version(conn)
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has castor schema version {version}, newer than this castor "
            f"understands ({SCHEMA_VERSION}); upgrade castor"
        )
    if version == SCHEMA_VERSION:
        return version  # another process migrated meanwhile: nothing to write
    for step in MIGRATIONS[version:]:
        for statement in step:
            conn.execute(statement)
    conn.execute(
        "INSERT INTO castor_meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )
    return version
