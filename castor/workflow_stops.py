"""The end lines and hooks of the members a workflow's stop ended.

When a member ends badly (failed for good, cancelled, lost), the store's advance, in the
same transaction, ends the workflow's waiting members `cancelled` (WorkflowStopped): they
never reach a worker, so no worker writes their `task.cancelled` line or fires their
hooks. The process that ended the member that stopped the workflow (its `first_bad`)
does it instead, once: only that end's settle, recovery or release is accepted, and the
read answers only for the member named first_bad. One indexed read, on the failure path
only; a success never pays for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from castor import task_log
from castor.hooks import Hooks
from castor.states import TaskStatus
from castor.store import Store

# Ends that can stop a workflow (a retry or a success does not).
_STOPPING = (TaskStatus.FAILED, TaskStatus.CANCELLED)


def report_stopped(store: Store, hooks: Hooks, ended: Iterable[tuple[str | None, str, TaskStatus]],
                   **context: Any) -> int:
    """For each (workflow id, task id, status) just ended by this process: if that end
    stopped its workflow, the members the stop ended get their lines and hooks. How many."""
    count = 0
    for workflow_id, task_id, status in ended:
        if workflow_id is None or status not in _STOPPING:
            continue
        stopped = store.stopped_members(workflow_id, task_id)
        if not stopped:
            continue
        count += len(stopped)
        reason = str((stopped[0].error or {}).get("message") or f"workflow {workflow_id} stopped")
        task_log.released(stopped, reason=reason, counted=False, workflow_id=workflow_id, stopped_by=task_id)
        if hooks.listeners:
            hooks.released(stopped, counted=False)
    return count
