"""Workflows in the SQLite store: the members' rows, and the advance (docs/workflows.md).

Everything here runs on the store's connection, inside the write transaction of its
caller (BEGIN IMMEDIATE: the one writer), so reading the workflow's row and writing it
back cannot race. Every transaction that ends members calls `advance` with the rows
its ending statements returned (`ENDED`) before it commits: the end and the move are
committed together or not at all.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from castor.errors import FailedMember
from castor.failures import describe_message
from castor.states import TaskStatus, WorkflowStatus
from castor.store.base import (
    NewTask,
    NewWorkflow,
    StepResult,
    SweptWorkflow,
    WorkflowRecord,
    members_missing_message,
)
from castor.workflow_rules import Move, WorkflowRow, next_move

# What an ending statement returns, for `advance`: the row a plain task returns too (so
# "accepted" stays "a row came back"), its workflow NULL.
ENDED = "RETURNING id, workflow_id, status, wf_step"

STOPPED_TYPE = "castor.errors.WorkflowStopped"

_INSERT_MEMBER = (
    "INSERT INTO castor_tasks (id, task_name, queue, mode, daemon, status, priority, serializer, "
    "args, kwargs, enqueued_at, eta, options, at_once, workflow_id, wf_step, wf_index, wf_input) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_EXPIRY = "(? + coalesce(json_extract(options, '$.failure_ttl'), ?))"

# A released member becomes pending; its expires= in seconds (castor/expiry.py,
# EXPIRES_AFTER_KEY) becomes its deadline, counted from now. Parameters: now, now.
_RELEASE = ("UPDATE castor_tasks SET status = 'pending', eta = ?, at_once = 1, options = "
            "CASE WHEN json_type(options, '$.expires_after') IN ('integer', 'real') "
            "THEN json_set(json_remove(options, '$.expires_after'), '$.expires', "
            "? + json_extract(options, '$.expires_after')) ELSE options END ")


def members_ended(rows: Iterable[Sequence[Any]]) -> list[tuple[str, str, TaskStatus]]:
    """Of the rows ending statements returned (ENDED), the workflow members whose end
    counts: (workflow id, task id, status), finished, not the handler (step -1)."""
    return [(workflow_id, task_id, TaskStatus(status)) for task_id, workflow_id, status, step in rows
            if workflow_id is not None and step is not None and step >= 0 and TaskStatus(status).finished]


def advance(conn: sqlite3.Connection, ended: Sequence[tuple[str, str, TaskStatus]], *, now: float,
            failure_ttl: float | None) -> None:
    """Move each workflow whose members `ended` in this transaction."""
    by_workflow: dict[str, list[tuple[str, TaskStatus]]] = {}
    for workflow_id, task_id, status in ended:
        by_workflow.setdefault(workflow_id, []).append((task_id, status))
    for workflow_id in sorted(by_workflow):
        row = conn.execute(
            "SELECT step, remaining, sizes, handler_id, handler_step FROM castor_workflows "
            "WHERE id = ? AND state = 'running'", (workflow_id,)).fetchone()
        if row is None:
            continue  # ended already: a late sibling (or a cancelled workflow's member) moves nothing
        step, remaining, sizes, handler_id, handler_step = row
        move = next_move(WorkflowRow(step, remaining, tuple(json.loads(sizes)), handler_step,
                                     handler_id is not None), by_workflow[workflow_id])
        _write_move(conn, workflow_id, handler_id, move, now=now, failure_ttl=failure_ttl)


def _write_move(conn: sqlite3.Connection, workflow_id: str, handler_id: str | None, move: Move, *, now: float,
                failure_ttl: float | None) -> None:
    conn.execute(
        "UPDATE castor_workflows SET state = ?, step = ?, remaining = ?, first_bad = ?, moved_at = ?, "
        "finished_at = ? WHERE id = ?",
        (str(move.state), move.step, move.remaining, move.first_bad, now, now if move.finished else None,
         workflow_id))
    if move.release_step is not None:
        conn.execute(_RELEASE + "WHERE workflow_id = ? AND wf_step = ? AND status = 'waiting'",
                     (now, now, workflow_id, move.release_step))
    if move.release_handler:
        conn.execute(_RELEASE + "WHERE id = ? AND status = 'waiting'", (now, now, handler_id))
    if move.stop_waiting:
        _stop(conn, "workflow_id = ?", (workflow_id,), stopped_message(workflow_id, move.state, move.first_bad),
              now=now, failure_ttl=failure_ttl)
    elif move.cancel_handler:
        _stop(conn, "id = ?", (handler_id,), NOT_NEEDED, now=now, failure_ttl=failure_ttl)


NOT_NEEDED = "not needed: no member of the steps it covers failed"


def stopped_message(workflow_id: str, state: WorkflowStatus, first_bad: str | None) -> str:
    """Why a waiting member ends cancelled as its workflow ends (PostgreSQL's says the same)."""
    if state is WorkflowStatus.SUCCESS:
        return NOT_NEEDED
    return f"workflow {workflow_id} stopped: member {first_bad} ended {state}"


def _stop(conn: sqlite3.Connection, where: str, params: tuple[Any, ...], message: str, *, now: float,
          failure_ttl: float | None) -> None:
    """Waiting members matching `where` end cancelled, WorkflowStopped saying why."""
    conn.execute(
        f"UPDATE castor_tasks SET status = 'cancelled', finished_at = ?, error = ?, expires_at = {_EXPIRY} "
        f"WHERE {where} AND status = 'waiting'",
        (now, json.dumps(describe_message(STOPPED_TYPE, message)), now, failure_ttl, *params))


# -- the sweep (castord's master; docs/workflows.md, "The sweep") ----------------------

# Running workflows that have not moved since `before`, oldest first (castor_workflows_running).
STALE = ("SELECT id FROM castor_workflows WHERE state = 'running' AND moved_at < ? "
         "ORDER BY created_at LIMIT ?")


def sweep(conn: sqlite3.Connection, *, before: float, now: float, limit: int,
          failure_ttl: float | None) -> list[SweptWorkflow]:
    """Inside the write transaction: see Store.sweep_workflows."""
    fixed = []
    for (workflow_id,) in conn.execute(STALE, (before, limit)).fetchall():
        fix = _sweep_one(conn, workflow_id, now=now, failure_ttl=failure_ttl)
        if fix is not None:
            fixed.append(fix)
    return fixed


def _sweep_one(conn: sqlite3.Connection, workflow_id: str, *, now: float,
               failure_ttl: float | None) -> SweptWorkflow | None:
    kind, step, remaining, sizes = conn.execute(
        "SELECT kind, step, remaining, sizes FROM castor_workflows WHERE id = ?", (workflow_id,)).fetchone()
    size = json.loads(sizes)[step]
    members = [(task_id, TaskStatus(status)) for task_id, status in conn.execute(
        "SELECT id, status FROM castor_tasks WHERE workflow_id = ? AND wf_step = ? ORDER BY wf_index",
        (workflow_id, step))]
    if len(members) < size:
        missing = size - len(members)
        message = members_missing_message(workflow_id, step, missing, size)
        conn.execute("UPDATE castor_workflows SET state = 'failed', first_bad = NULL, moved_at = ?, "
                     "finished_at = ? WHERE id = ?", (now, now, workflow_id))
        _stop(conn, "workflow_id = ?", (workflow_id,), message, now=now, failure_ttl=failure_ttl)
        return SweptWorkflow(workflow_id, kind, step, WorkflowStatus.FAILED, remaining, None, missing)
    replay, unended = replayed(members)
    if not replay and remaining == unended:
        # The running step's members are released as the step begins: any still waiting
        # missed it (a step whose release was lost would wait forever).
        released = conn.execute(_RELEASE + "WHERE workflow_id = ? AND wf_step = ? AND status = 'waiting'",
                                (now, now, workflow_id, step)).rowcount
        # Healthy (a long member), or set right: marked looked at, so that the next sweep reaches others.
        conn.execute("UPDATE castor_workflows SET moved_at = ? WHERE id = ?", (now, workflow_id))
        if released:
            return SweptWorkflow(workflow_id, kind, step, WorkflowStatus.RUNNING, remaining, unended, 0, released)
        return None
    # The counter as it would stand before the replayed ends, then the advance of a settle
    # that ended them: the same code, so the same rules.
    conn.execute("UPDATE castor_workflows SET remaining = ?, moved_at = ? WHERE id = ?",
                 (unended + len(replay), now, workflow_id))
    if replay:
        advance(conn, [(workflow_id, task_id, status) for task_id, status in replay], now=now,
                failure_ttl=failure_ttl)
    state = conn.execute("SELECT state FROM castor_workflows WHERE id = ?", (workflow_id,)).fetchone()[0]
    return SweptWorkflow(workflow_id, kind, step, WorkflowStatus(state), remaining, unended)


def replayed(members: Sequence[tuple[str, TaskStatus]]) -> tuple[list[tuple[str, TaskStatus]], int]:
    """Of a running step's members (both stores): the ends the sweep replays through the
    advance, and how many have not ended. A member that ended badly would have stopped
    the workflow: each is replayed. With none and every member ended, the step's last
    success is, so that the step moves on as its last settle would have moved it."""
    unended = sum(1 for _, status in members if not status.finished)
    bad: list[tuple[str, TaskStatus]] = [(task_id, status) for task_id, status in members
                                         if status.finished and status != TaskStatus.SUCCESS]
    if bad:
        return bad, unended
    if unended == 0 and members:
        return [members[-1]], 0
    return [], unended


def insert_workflow(conn: sqlite3.Connection, workflow: NewWorkflow, tasks: Sequence[NewTask]) -> None:
    conn.execute(
        "INSERT INTO castor_workflows (id, kind, state, step, remaining, sizes, handler_id, handler_step, "
        "moved_at, created_at) VALUES (?, ?, 'running', 0, ?, ?, ?, ?, ?, ?)",
        (workflow.id, workflow.kind, workflow.sizes[0], json.dumps(list(workflow.sizes)), workflow.handler_id,
         workflow.handler_step, workflow.created_at, workflow.created_at))
    conn.executemany(_INSERT_MEMBER, [(
        t.id, t.name, t.queue, t.mode, int(t.daemon), "waiting" if t.waiting else "pending", t.priority,
        t.serializer, t.args, t.kwargs, t.enqueued_at, t.eta, json.dumps(t.options) if t.options else None,
        int(t.eta <= t.enqueued_at), t.workflow_id, t.wf_step, t.wf_index, t.wf_input) for t in tasks])


def read_workflow(conn: sqlite3.Connection, workflow_id: str) -> WorkflowRecord | None:
    row = conn.execute(
        "SELECT id, kind, state, step, remaining, sizes, first_bad, handler_id, handler_step, created_at, "
        "finished_at FROM castor_workflows WHERE id = ?", (workflow_id,)).fetchone()
    if row is None:
        return None
    members = conn.execute(
        "SELECT id, wf_step, wf_index FROM castor_tasks WHERE workflow_id = ? ORDER BY wf_step, wf_index",
        (workflow_id,)).fetchall()
    (id_, kind, state, step, remaining, sizes, first_bad, handler_id, handler_step, created_at, finished_at) = row
    return WorkflowRecord(id_, kind, WorkflowStatus(state), step, remaining, tuple(json.loads(sizes)), first_bad,
                          handler_id, handler_step, created_at, finished_at, tuple(map(tuple, members)))


def read_step(conn: sqlite3.Connection, workflow_id: str, step: int) -> list[StepResult]:
    return [StepResult(id_, TaskStatus(status), serializer, result, json.loads(error) if error else None)
            for id_, status, serializer, result, error in conn.execute(
                "SELECT id, status, serializer, result, error FROM castor_tasks "
                "WHERE workflow_id = ? AND wf_step = ? ORDER BY wf_index", (workflow_id, step))]


def read_failed(conn: sqlite3.Connection, workflow_id: str, step: int, limit: int) -> tuple[list[FailedMember], int]:
    rows = conn.execute(FAILED_MEMBERS.replace("%s", "?"), (workflow_id, step, limit)).fetchall()
    return ([FailedMember(id_, name, status, json.loads(error) if error else None) for id_, name, status, error, _ in rows],
            rows[0][4] if rows else 0)


# Both stores' (PostgreSQL's placeholders): the count is taken before the LIMIT.
FAILED_MEMBERS = ("SELECT id, task_name, status, error, count(*) OVER () FROM castor_tasks "
                  "WHERE workflow_id = %s AND wf_step = %s AND status = 'failed' ORDER BY wf_index LIMIT %s")


def cancel_workflow(conn: sqlite3.Connection, workflow_id: str, *, now: float,
                    failure_ttl: float | None, returning: str = "id") -> tuple[WorkflowStatus | None, list[Any]]:
    """Inside a write transaction: see Store.cancel_workflow. With the rows of the members
    it ended, as `returning` (columns of castor_tasks) gives them."""
    row = conn.execute("SELECT state FROM castor_workflows WHERE id = ?", (workflow_id,)).fetchone()
    if row is None:
        return None, []
    if row[0] != WorkflowStatus.RUNNING:
        return WorkflowStatus(row[0]), []
    error = json.dumps(describe_message(STOPPED_TYPE, f"workflow {workflow_id} was cancelled"))
    ended = conn.execute(
        f"UPDATE castor_tasks SET status = 'cancelled', finished_at = ?, error = ?, expires_at = {_EXPIRY} "
        f"WHERE workflow_id = ? AND status IN ('waiting', 'pending') RETURNING {returning}",
        (now, error, now, failure_ttl, workflow_id)).fetchall()
    conn.execute("UPDATE castor_tasks SET cancel_requested = 1 WHERE workflow_id = ? AND status = 'running'",
                 (workflow_id,))
    conn.execute("UPDATE castor_workflows SET state = 'cancelled', finished_at = ?, moved_at = ? WHERE id = ?",
                 (now, now, workflow_id))
    return WorkflowStatus.CANCELLED, ended


# Members of a running workflow stay while it runs: a successor reads their results.
NOT_IN_RUNNING_WORKFLOW = ("(workflow_id IS NULL OR workflow_id NOT IN "
                           "(SELECT id FROM castor_workflows WHERE state = 'running'))")
