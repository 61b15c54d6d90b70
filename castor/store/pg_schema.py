"""castor's tables on PostgreSQL, and forward-only migrations.

The tables carry a `castor_` prefix and live in the connection's current schema
(the first of its search_path), so that one database can hold several castor
stores side by side (`options=-csearch_path=...` in the URL). castor's version
lives in `castor_meta`. Migrations run in one transaction that first takes a
transaction-level advisory lock named after the schema: several processes
opening a new database at once wait for each other, and the migration is
applied exactly once.

Times are float8 epoch seconds, as the Store interface speaks them (a
timestamptz keeps microseconds only, and a record must read back the very float
it was given). Ids, queues and keys are `COLLATE "C"`: ordered by bytes, as
SQLite orders them, whatever the database's locale.
"""

from __future__ import annotations

from typing import Any

from castor.errors import StoreError

# The advisory lock's first key: "castor" (its second is the schema's hash).
LOCK_CLASS = 0x63617374

META_DDL = "CREATE TABLE IF NOT EXISTS castor_meta (key text PRIMARY KEY, value text NOT NULL)"

# Index N holds the statements that take the schema from version N to N+1.
MIGRATIONS: list[list[str]] = [
    [
        """
        CREATE TABLE castor_tasks (
            id               text COLLATE "C" PRIMARY KEY,
            task_name        text COLLATE "C" NOT NULL,
            queue            text COLLATE "C" NOT NULL DEFAULT 'default',
            mode             text NOT NULL,
            daemon           boolean NOT NULL DEFAULT false,
            status           text NOT NULL,
            priority         integer NOT NULL DEFAULT 0,
            serializer       text NOT NULL,
            -- What the serializer gave, as bytes; *_text says it gave a str
            -- (handed back decoded, as the SQLite store hands it back).
            args             bytea,
            kwargs           bytea,
            result           bytea,
            args_text        boolean NOT NULL DEFAULT false,
            kwargs_text      boolean NOT NULL DEFAULT false,
            result_text      boolean NOT NULL DEFAULT false,
            enqueued_at      float8 NOT NULL,
            eta              float8 NOT NULL,
            -- Queued to run at once: due whatever the wall clock says.
            at_once          boolean NOT NULL DEFAULT false,
            started_at       float8,
            finished_at      float8,
            error            jsonb,
            attempts         integer NOT NULL DEFAULT 0,
            lost             integer NOT NULL DEFAULT 0,
            owner            text,
            -- On the store's clock (the server's: see postgresql.py).
            lease_expires    float8,
            options          jsonb,
            progress         float8,
            progress_message text,
            cancel_requested boolean NOT NULL DEFAULT false,
            history          jsonb,
            expires_at       float8,
            unique_key       text COLLATE "C",
            cache_key        text COLLATE "C",
            -- The fencing token: bumped by every claim, never lowered.
            fence            bigint NOT NULL DEFAULT 0,
            -- Ran beside a thread-host crash: runs alone until blame is clear.
            isolate          boolean NOT NULL DEFAULT false
        )
        """,
        # Pending rows in claim order, per (mode, isolate): a claim walks it from
        # the top and skips rows not due or in a queue it does not serve.
        """CREATE INDEX castor_tasks_ready
           ON castor_tasks (mode, isolate, priority DESC, eta, id) WHERE status = 'pending'""",
        # The few running rows: leases to recover, an owner's tasks.
        """CREATE INDEX castor_tasks_running
           ON castor_tasks (lease_expires) WHERE status = 'running'""",
        """CREATE INDEX castor_tasks_owner
           ON castor_tasks (owner) WHERE status = 'running'""",
        """CREATE INDEX castor_tasks_finished
           ON castor_tasks (status, finished_at) WHERE status IN ('success', 'failed', 'cancelled')""",
        "CREATE INDEX castor_tasks_listing ON castor_tasks (enqueued_at DESC, id DESC)",
        """CREATE INDEX castor_tasks_expiry
           ON castor_tasks (expires_at) WHERE expires_at IS NOT NULL""",
        # At most one unfinished task per unique key.
        """CREATE UNIQUE INDEX castor_tasks_unique
           ON castor_tasks (unique_key)
           WHERE unique_key IS NOT NULL AND status IN ('pending', 'running')""",
        """CREATE INDEX castor_tasks_cache
           ON castor_tasks (cache_key, finished_at)
           WHERE cache_key IS NOT NULL AND status = 'success'""",
        """CREATE INDEX castor_tasks_dirty
           ON castor_tasks (lost, isolate) WHERE lost > 0 OR isolate""",
        # Periodic schedules: the last tick fired (a conditional upsert decides who fires).
        """
        CREATE TABLE castor_schedules (
            name       text COLLATE "C" PRIMARY KEY,
            last_tick  float8 NOT NULL,
            fired_at   float8 NOT NULL,
            task_id    text
        )
        """,
        # One row per running castord master.
        """
        CREATE TABLE castor_daemons (
            id              text COLLATE "C" PRIMARY KEY,
            host            text NOT NULL,
            pid             integer NOT NULL,
            app             text NOT NULL,
            started_at      float8 NOT NULL,
            heartbeat_at    float8 NOT NULL,
            heartbeat_clock float8,
            info            jsonb
        )
        """,
    ],
    [
        # Someone joins this task: its settle notifies `task:<id>` (not every waiter).
        "ALTER TABLE castor_tasks ADD COLUMN watched boolean NOT NULL DEFAULT false",
        # Autovacuum by dead rows, not by the table's size: every task leaves ~3 dead row
        # versions (claim, settle, delete; none HOT), and the default (20% of the live rows)
        # lets a table with a large backlog bloat between vacuums (docs/postgresql.md,
        # benchmarks/pg_bloat.py).
        """ALTER TABLE castor_tasks SET (
               autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000,
               autovacuum_analyze_scale_factor = 0, autovacuum_analyze_threshold = 10000)""",
        """DO $$ BEGIN
               IF current_setting('server_version_num')::int >= 130000 THEN  -- these came in 13
                   ALTER TABLE castor_tasks SET (autovacuum_vacuum_insert_scale_factor = 0,
                                                 autovacuum_vacuum_insert_threshold = 10000);
               END IF;
           END $$""",
    ],
    [
        # Paused queues (castord tasks pause): claims skip their tasks. A row per
        # (kind, name), so that pausing a task name can be another kind later.
        """
        CREATE TABLE castor_pauses (
            kind      text NOT NULL,
            name      text COLLATE "C" NOT NULL,
            paused_at float8 NOT NULL,
            PRIMARY KEY (kind, name)
        )
        """,
    ],
    [
        # Who joins which task, so that its settle notifies `task:<id>`. A table of its
        # own: v2 marked the task's row (castor_tasks.watched), and that write locked the
        # row for an instant, during which a claim (SKIP LOCKED) passed over a pending
        # task for a lower one. The column stays, unused, for a castord of v2/v3 still
        # running during an upgrade. A row per watch: several joiners, each ends its own.
        """
        CREATE TABLE castor_watches (
            task_id  text COLLATE "C" NOT NULL,
            watcher  text COLLATE "C" NOT NULL,
            since    float8 NOT NULL,
            PRIMARY KEY (task_id, watcher)
        )
        """,
    ],
    [
        # The dashboard's counts without reading the table (benchmarks/web_pages.py, a
        # million tasks: the Queues screen's per-queue depth and oldest due 175 and 198 ms
        # -> 9 and 17; failures by name 133 -> 5): the ready index also carries queue and
        # at_once, so those counts read it alone, and failed rows get an index by name.
        # The ready index is rebuilt in the migration's transaction (it holds the pending
        # rows only: a backlog of 30,000 takes well under a second, the table locked).
        "DROP INDEX castor_tasks_ready",
        """CREATE INDEX castor_tasks_ready
           ON castor_tasks (mode, isolate, priority DESC, eta, id) INCLUDE (queue, at_once)
           WHERE status = 'pending'""",
        "CREATE INDEX castor_tasks_failed_names ON castor_tasks (task_name) WHERE status = 'failed'",
    ],
    [
        # Rate limits (castor/rate_limits.py): a token bucket per limited task name or
        # queue. A claim locks them (FOR UPDATE) and writes back those it took from, in
        # its own transaction; `updated_at` is on the server's clock, as leases are.
        """
        CREATE TABLE castor_rate_limits (
            kind       text COLLATE "C" NOT NULL,
            name       text COLLATE "C" NOT NULL,
            rate       float8 NOT NULL,
            burst      integer NOT NULL,
            tokens     float8 NOT NULL,
            updated_at float8 NOT NULL,
            PRIMARY KEY (kind, name)
        )
        """,
    ],
    [
        # Concurrency limits (castor/concurrency.py): a limited task's key (set at
        # enqueue; '' for a name limited as a whole, NULL for a task not limited), a row
        # per limited name, and the running limited tasks by (name, key), which a claim
        # counts under a transaction-level advisory lock per (name, key). Partial: only a
        # limited task's claim and end write an entry. A nullable column without a
        # default: no table rewrite.
        "ALTER TABLE castor_tasks ADD COLUMN concurrency_key text COLLATE \"C\"",
        """
        CREATE TABLE castor_concurrency_limits (
            name        text COLLATE "C" PRIMARY KEY,
            max_running integer NOT NULL,
            per_key     boolean NOT NULL
        )
        """,
        """CREATE INDEX castor_tasks_limited ON castor_tasks (task_name, concurrency_key)
           WHERE status = 'running' AND concurrency_key IS NOT NULL""",
    ],
    [
        # Workflows (docs/workflows.md): every member is a row from the start, those whose
        # step has not come `waiting`; the workflow's row counts the running step's members
        # left, moved in the transaction that ends them. NULL in a plain task's row (no
        # rewrite: ADD COLUMN without a default). wf_xact: the transaction that ended the
        # member, so that the advance counts only the ends its own transaction wrote.
        "ALTER TABLE castor_tasks ADD COLUMN workflow_id text COLLATE \"C\"",
        "ALTER TABLE castor_tasks ADD COLUMN wf_step int4",
        "ALTER TABLE castor_tasks ADD COLUMN wf_index int4",
        "ALTER TABLE castor_tasks ADD COLUMN wf_input text",
        "ALTER TABLE castor_tasks ADD COLUMN wf_xact int8",
        """CREATE INDEX castor_tasks_waiting
           ON castor_tasks (workflow_id, wf_step) WHERE status = 'waiting'""",
        """CREATE INDEX castor_tasks_members
           ON castor_tasks (workflow_id, wf_step, wf_index) WHERE workflow_id IS NOT NULL""",
        # fillfactor 50: a chord's counter is updated once per settling batch; room on
        # its page keeps those updates HOT.
        """
        CREATE TABLE castor_workflows (
            id           text COLLATE "C" PRIMARY KEY,
            kind         text NOT NULL,
            state        text NOT NULL,
            step         int4 NOT NULL,
            remaining    int4 NOT NULL,
            sizes        int4[] NOT NULL,
            first_bad    text,
            handler_id   text,
            handler_step int4,
            moved_at     float8 NOT NULL,
            created_at   float8 NOT NULL,
            finished_at  float8
        ) WITH (fillfactor = 50)
        """,
        "CREATE INDEX castor_workflows_running ON castor_workflows (created_at) WHERE state = 'running'",
    ],
    [
        # An idle worker's look (postgresql.py's _LOOK): the soonest ETA not reached yet
        # is this index's head, not a walk of castor_tasks_ready past every due task.
        # A task queued to run at once (a plain delay()) never enters it.
        """CREATE INDEX castor_tasks_scheduled ON castor_tasks (mode, isolate, eta) INCLUDE (queue, task_name)
           WHERE status = 'pending' AND NOT at_once""",
    ],
]

SCHEMA_VERSION = len(MIGRATIONS)


def installed_version(cur: Any) -> int:
    """The schema version in the current schema, read without a lock (0: none yet)."""
    cur.execute("SELECT to_regclass('castor_meta') IS NOT NULL")
    if not cur.fetchone()[0]:
        return 0
    cur.execute("SELECT value FROM castor_meta WHERE key = 'schema_version'")
    row = cur.fetchone()
    return int(row[0]) if row else 0


def migrate(cur: Any) -> int:
    """Bring the schema up to SCHEMA_VERSION; call inside a transaction. Returns the
    version found (0: castor's tables are new)."""
    cur.execute("SELECT current_schema()")
    schema = cur.fetchone()[0]
    if schema is None:
        raise StoreError(
            "the PostgreSQL connection has no schema to create castor's tables in: the schemas "
            "of its search_path do not exist; create one, or set search_path in the URL "
            "(options=-csearch_path=NAME)")
    cur.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema))
    cur.execute(META_DDL)
    cur.execute("SELECT value FROM castor_meta WHERE key = 'schema_version'")
    row = cur.fetchone()
    version = int(row[0]) if row else 0
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has castor schema version {version}, newer than this castor "
            f"understands ({SCHEMA_VERSION}); upgrade castor")
    for step in MIGRATIONS[version:]:
        for statement in step:
            cur.execute(statement)
    cur.execute(
        "INSERT INTO castor_meta (key, value) VALUES ('schema_version', %s) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
    return version
