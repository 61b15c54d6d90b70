"""Workflows in the PostgreSQL store: the members' rows, and the advance (docs/workflows.md).

Every statement that ends a task stamps a member's row with its transaction's id
(`STAMP`). The advance then counts, per workflow, the members that this transaction
ended (a refused settle wrote nothing, so stamped nothing), and needs no answer from
the settles before it: it goes in the same pipeline, one round trip for the batch.
The rules are castor/workflow_rules.py's, spelled in CASE expressions; the contract
tests run the failure table on both stores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from castor.states import TaskStatus, WorkflowStatus
from castor.store.base import NewTask, NewWorkflow, StepResult, SweptWorkflow, WorkflowRecord, members_missing_message
from castor.store.sqlite_workflows import FAILED_MEMBERS, NOT_NEEDED, STOPPED_TYPE, replayed  # noqa: F401 - FAILED_MEMBERS: the store reads it here

try:
    import psycopg
    from psycopg.types.json import Jsonb
except ImportError:  # pragma: no cover - the extra is not installed
    psycopg = None  # type: ignore[assignment]
    Jsonb = None  # type: ignore[assignment,misc]

# In the SET list of every UPDATE that ends a task: which transaction ended the member.
STAMP = "wf_xact = CASE WHEN workflow_id IS NOT NULL THEN txid_current() END"

_STOPPED_ERROR = (
    "jsonb_build_object('type', '" + STOPPED_TYPE + "', 'traceback', '', 'message', {m}, 'args', "
    "jsonb_build_array({m}))")
_STOPPED_MESSAGE = ("CASE WHEN m.state IN ('failed', 'cancelled') THEN 'workflow ' || m.id || ' stopped: member ' "
                    "|| m.first_bad || ' ended ' || m.state ELSE '" + NOT_NEEDED + "' END")
_EXPIRY = "(%(now)s + coalesce((t.options->>'failure_ttl')::float8, %(failure_ttl)s::float8))"
# A released member becomes pending; its expires= in seconds (castor/expiry.py,
# EXPIRES_AFTER_KEY) becomes its deadline, counted from now.
_RELEASE = ("status = 'pending', eta = %(now)s, at_once = true, options = "
            "CASE WHEN jsonb_typeof(t.options->'expires_after') = 'number' "
            "THEN (t.options - 'expires_after') || jsonb_build_object('expires', "
            "%(now)s::float8 + (t.options->>'expires_after')::float8) ELSE t.options END")

# Parameters: ids (the tasks this transaction may have ended), now, failure_ttl, and the
# channel and topic prefixes of the notifications (work:<mode>, task:<workflow id>).
ADVANCE = f"""
WITH ended AS (      -- members this transaction ended, per workflow
    SELECT workflow_id, count(*) AS n, count(*) FILTER (WHERE status <> 'success') AS bad,
           coalesce(min(id) FILTER (WHERE status = 'failed'),
                    min(id) FILTER (WHERE status <> 'success')) AS bad_id,
           coalesce(bool_or(status = 'failed'), false) AS failed
      FROM castor_tasks
     WHERE id = ANY(%(ids)s) AND wf_xact = txid_current() AND wf_step >= 0
       AND status IN ('success', 'failed', 'cancelled')
     GROUP BY workflow_id),
locked AS (          -- row locks in id order: two batches never wait on each other in a cycle
    SELECT id FROM castor_workflows WHERE id IN (SELECT workflow_id FROM ended) AND state = 'running'
     ORDER BY id FOR UPDATE),
moved AS (           -- concurrent enders of one workflow queue on its lock
    UPDATE castor_workflows w SET
        state = CASE WHEN e.bad > 0 THEN (CASE WHEN e.failed THEN 'failed' ELSE 'cancelled' END)
                     WHEN w.remaining = e.n AND w.step + 1 = cardinality(w.sizes) THEN 'success'
                     ELSE w.state END,
        first_bad = CASE WHEN e.bad > 0 THEN e.bad_id ELSE w.first_bad END,
        moved_at = %(now)s,
        finished_at = CASE WHEN e.bad > 0 OR (w.remaining = e.n AND w.step + 1 = cardinality(w.sizes))
                           THEN %(now)s END,
        step = CASE WHEN e.bad = 0 AND w.remaining = e.n AND w.step + 1 < cardinality(w.sizes)
                    THEN w.step + 1 ELSE w.step END,
        remaining = CASE WHEN e.bad = 0 AND w.remaining = e.n AND w.step + 1 < cardinality(w.sizes)
                         THEN w.sizes[w.step + 2] ELSE w.remaining - e.n END
      FROM ended e JOIN locked l ON l.id = e.workflow_id
     WHERE w.id = e.workflow_id AND w.state = 'running'
 RETURNING w.id, w.state, w.step, w.first_bad, w.handler_id, w.handler_step),
released AS (        -- the next step's tasks become claimable
    UPDATE castor_tasks t SET {_RELEASE}
      FROM moved m
     WHERE t.workflow_id = m.id AND t.wf_step = m.step AND t.status = 'waiting' AND m.state = 'running'
 RETURNING t.mode),
handled AS (         -- a failure in the steps it covers releases the link_error handler
    UPDATE castor_tasks t SET {_RELEASE}
      FROM moved m
     WHERE t.id = m.handler_id AND t.status = 'waiting' AND m.state = 'failed'
       AND (m.handler_step IS NULL OR m.step <= m.handler_step)
 RETURNING t.id, t.mode),
stopped AS (         -- what can no longer run ends cancelled, with the reason
    UPDATE castor_tasks t SET status = 'cancelled', finished_at = %(now)s, expires_at = {_EXPIRY},
           error = {_STOPPED_ERROR.format(m=_STOPPED_MESSAGE)}
      FROM moved m
     WHERE t.workflow_id = m.id AND t.status = 'waiting'
       AND (m.state IN ('failed', 'cancelled', 'success')
            OR (t.id = m.handler_id AND m.step > m.handler_step))
       -- not `NOT (t.id = m.handler_id AND ...)`: NULL without a handler, which drops every row
       AND t.id NOT IN (SELECT id FROM handled)
 RETURNING 1)
SELECT pg_notify(%(channel)s, topic) FROM (
    SELECT %(work_prefix)s || mode AS topic FROM released
     UNION SELECT %(work_prefix)s || mode FROM handled
     UNION SELECT %(task_prefix)s || id FROM moved WHERE state <> 'running') AS wakes"""

NOT_IN_RUNNING_WORKFLOW = ("(workflow_id IS NULL OR workflow_id NOT IN "
                           "(SELECT id FROM castor_workflows WHERE state = 'running'))")

_INSERT_WORKFLOW = (
    "INSERT INTO castor_workflows (id, kind, state, step, remaining, sizes, handler_id, handler_step, moved_at, "
    "created_at) VALUES (%s, %s, 'running', 0, %s, %s, %s, %s, %s, %s)")

_MEMBER_COLUMNS = ("id", "task_name", "queue", "mode", "daemon", "status", "priority", "serializer", "args",
                   "kwargs", "args_text", "kwargs_text", "enqueued_at", "eta", "at_once", "options",
                   "workflow_id", "wf_step", "wf_index", "wf_input")
_MEMBER_TYPES = ("text", "text", "text", "text", "bool", "text", "int4", "text", "bytea", "bytea", "bool", "bool",
                 "float8", "float8", "bool", "jsonb", "text", "int4", "int4", "text")
_COPY_MEMBERS = f"COPY castor_tasks ({', '.join(_MEMBER_COLUMNS)}) FROM STDIN (FORMAT BINARY)"


def _text(value: str | bytes) -> tuple[bytes, bool]:
    return (value.encode("utf-8"), True) if isinstance(value, str) else (value, False)


def insert_workflow(cur: Any, workflow: NewWorkflow, tasks: Sequence[NewTask]) -> None:
    """The workflow's row and its members (by COPY: one stream, however many)."""
    cur.execute(_INSERT_WORKFLOW, (workflow.id, workflow.kind, workflow.sizes[0], list(workflow.sizes),
                                   workflow.handler_id, workflow.handler_step, workflow.created_at,
                                   workflow.created_at))
    with cur.copy(_COPY_MEMBERS) as copy:
        copy.set_types(_MEMBER_TYPES)
        for t in tasks:
            args, args_text = _text(t.args)
            kwargs, kwargs_text = _text(t.kwargs)
            copy.write_row([t.id, t.name, t.queue, t.mode, bool(t.daemon), "waiting" if t.waiting else "pending",
                            t.priority, t.serializer, args, kwargs, args_text, kwargs_text, t.enqueued_at, t.eta,
                            t.eta <= t.enqueued_at, Jsonb(t.options) if t.options else None, t.workflow_id,
                            t.wf_step, t.wf_index, t.wf_input])


# -- the sweep (castord's master; docs/workflows.md, "The sweep") ----------------------

# Running workflows that have not moved since `before`, oldest first (castor_workflows_running).
STALE = ("SELECT id FROM castor_workflows WHERE state = 'running' AND moved_at < %(before)s "
         "ORDER BY created_at LIMIT %(limit)s")


def sweep_one(cur: Any, workflow_id: str, *, before: float, now: float, failure_ttl: float | None,
              advance: Callable[[Sequence[str]], None]) -> SweptWorkflow | None:
    """Inside its own transaction: Store.sweep_workflows for one workflow. `advance(ids)`
    is the store's advance of the members among `ids` this transaction ended. None: it
    was healthy, moved meanwhile, or is another castord's (or an ender's) right now."""
    # SKIP LOCKED: castords sweeping at once share the workflows, and one that a settle
    # is moving now is not stale.
    cur.execute("SELECT kind, step, remaining, sizes[step + 1] FROM castor_workflows "
                "WHERE id = %s AND state = 'running' AND moved_at < %s FOR UPDATE SKIP LOCKED", (workflow_id, before))
    row = cur.fetchone()
    if row is None:
        return None
    kind, step, remaining, size = row
    if not _waiting_locked(cur, workflow_id):
        return None
    cur.execute("SELECT id, status FROM castor_tasks WHERE workflow_id = %s AND wf_step = %s ORDER BY wf_index",
                (workflow_id, step))
    members = [(task_id, TaskStatus(status)) for task_id, status in cur.fetchall()]
    if len(members) < size:
        missing = size - len(members)
        message = members_missing_message(workflow_id, step, missing, size)
        params = {"id": workflow_id, "now": now, "failure_ttl": failure_ttl,
                  "error": Jsonb({"type": STOPPED_TYPE, "message": message, "traceback": "", "args": [message]})}
        cur.execute(f"""UPDATE castor_tasks t SET status = 'cancelled', finished_at = %(now)s, error = %(error)s,
                               expires_at = {_EXPIRY}
                         WHERE workflow_id = %(id)s AND status = 'waiting'""", params)
        cur.execute("UPDATE castor_workflows SET state = 'failed', first_bad = NULL, moved_at = %(now)s, "
                    "finished_at = %(now)s WHERE id = %(id)s", params)
        return SweptWorkflow(workflow_id, kind, step, WorkflowStatus.FAILED, remaining, None, missing)
    replay, unended = replayed(members)
    if not replay and remaining == unended:
        # The running step's members are released as the step begins: any still waiting
        # missed it (a step whose release was lost would wait forever).
        cur.execute(f"UPDATE castor_tasks t SET {_RELEASE} "
                    "WHERE t.workflow_id = %(id)s AND t.wf_step = %(step)s AND t.status = 'waiting'",
                    {"now": now, "id": workflow_id, "step": step})
        released = cur.rowcount
        # Healthy (a long member), or set right: marked looked at, so that the next sweep reaches others.
        cur.execute("UPDATE castor_workflows SET moved_at = %s WHERE id = %s", (now, workflow_id))
        if released:
            return SweptWorkflow(workflow_id, kind, step, WorkflowStatus.RUNNING, remaining, unended, 0, released)
        return None
    # The counter as it would stand before the replayed ends, and those ends stamped as
    # this transaction's: the advance then moves the workflow as their settle would have.
    cur.execute("UPDATE castor_workflows SET remaining = %s, moved_at = %s WHERE id = %s",
                (unended + len(replay), now, workflow_id))
    if replay:
        ids = [task_id for task_id, _ in replay]
        cur.execute(f"UPDATE castor_tasks SET {STAMP} WHERE id = ANY(%s)", (ids,))
        advance(ids)
    state = read_state(cur, workflow_id)
    assert state is not None  # its row is locked: it cannot have gone
    return SweptWorkflow(workflow_id, kind, step, state, remaining, unended)


def _waiting_locked(cur: Any, workflow_id: str) -> bool:
    """Lock the workflow's waiting members, which the sweep may write after the
    workflow's row: the reverse of the enders' order (members, then the row). NOWAIT
    waits on no ender (a cancel holding them waits on our row), so no cycle can form;
    False if one holds them: the sweep leaves this workflow to its next round."""
    try:
        with cur.connection.transaction():  # a savepoint: the refusal leaves the transaction usable
            cur.execute("SELECT 1 FROM castor_tasks WHERE workflow_id = %s AND status = 'waiting' FOR UPDATE NOWAIT",
                        (workflow_id,))
    except psycopg.errors.LockNotAvailable:
        return False
    return True


def read_workflow(cur: Any, workflow_id: str) -> WorkflowRecord | None:
    cur.execute("SELECT id, kind, state, step, remaining, sizes, first_bad, handler_id, handler_step, created_at, "
                "finished_at FROM castor_workflows WHERE id = %s", (workflow_id,))
    row = cur.fetchone()
    if row is None:
        return None
    cur.execute("SELECT id, wf_step, wf_index FROM castor_tasks WHERE workflow_id = %s ORDER BY wf_step, wf_index",
                (workflow_id,))
    members = tuple((m[0], m[1], m[2]) for m in cur.fetchall())
    (id_, kind, state, step, remaining, sizes, first_bad, handler_id, handler_step, created_at, finished_at) = row
    return WorkflowRecord(id_, kind, WorkflowStatus(state), step, remaining, tuple(sizes), first_bad, handler_id,
                          handler_step, created_at, finished_at, members)


def read_step(rows: Sequence[Sequence[Any]]) -> list[StepResult]:
    """From `STEP_RESULTS`' rows."""
    return [StepResult(id_, TaskStatus(status), serializer,
                       None if result is None else (bytes(result).decode("utf-8") if text else bytes(result)), error)
            for id_, status, serializer, result, text, error in rows]


STEP_RESULTS = ("SELECT id, status, serializer, result, result_text, error FROM castor_tasks "
                "WHERE workflow_id = %s AND wf_step = %s ORDER BY wf_index")


def cancel_workflow(cur: Any, workflow_id: str, *, now: float, failure_ttl: float | None,
                    returning: str = "t.id") -> tuple[WorkflowStatus | None, list[Any]]:
    """Inside a transaction: see Store.cancel_workflow. Members first, then the
    workflow's row: the advance's lock order. With the rows of the members it ended, as
    `returning` (columns of castor_tasks) gives them."""
    cur.execute("SELECT state FROM castor_workflows WHERE id = %s", (workflow_id,))
    row = cur.fetchone()
    if row is None:
        return None, []
    if row[0] != WorkflowStatus.RUNNING:
        return WorkflowStatus(row[0]), []
    message = f"workflow {workflow_id} was cancelled"
    params = {"id": workflow_id, "now": now, "failure_ttl": failure_ttl,
              "error": Jsonb({"type": STOPPED_TYPE, "message": message, "traceback": "", "args": [message]})}
    # One statement, not one for the waiting and pending members and another for the
    # running: under READ COMMITTED each statement reads its own snapshot, and a member a
    # concurrent release moved from running to pending between the two escaped both (found
    # by the durability test). One UPDATE waits on a member another transaction is moving
    # and re-reads its new version (PostgreSQL's recheck of a locked row), so each member
    # is judged as it now is: cancelled if it is not running, asked to cancel if it is.
    cur.execute(f"""UPDATE castor_tasks t SET
                           status = CASE WHEN t.status = 'running' THEN t.status ELSE 'cancelled' END,
                           cancel_requested = t.cancel_requested OR t.status = 'running',
                           finished_at = CASE WHEN t.status = 'running' THEN t.finished_at ELSE %(now)s END,
                           error = CASE WHEN t.status = 'running' THEN t.error ELSE %(error)s END,
                           expires_at = CASE WHEN t.status = 'running' THEN t.expires_at ELSE {_EXPIRY} END
                     WHERE workflow_id = %(id)s AND status IN ('waiting', 'pending', 'running')
                 RETURNING t.status, {returning}""", params)
    ended = [row[1:] for row in cur.fetchall() if row[0] == TaskStatus.CANCELLED]
    cur.execute("UPDATE castor_workflows SET state = 'cancelled', finished_at = %(now)s, moved_at = %(now)s "
                "WHERE id = %(id)s AND state = 'running' RETURNING state", params)
    return (WorkflowStatus.CANCELLED if cur.fetchone() else read_state(cur, workflow_id)), ended


def read_state(cur: Any, workflow_id: str) -> WorkflowStatus | None:
    cur.execute("SELECT state FROM castor_workflows WHERE id = %s", (workflow_id,))
    row = cur.fetchone()
    return None if row is None else WorkflowStatus(row[0])
