"""The log lines of a task's end, written once per task by whoever ends it.

A task ends in the worker that ran it (castor/worker.py), in a castord child that
stopped it (a timeout, a cancel), in the master that found its worker dead, or in
any worker that found its lease expired: every path writes exactly one line, with
the fields of SPEC §5, so that an aggregator counting `task.succeeded` and
`task.failed` counts every task. Successes are info lines (as Celery, RQ and Huey
log them); `--log-level warning` turns them off.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from castor import logs
from castor.expiry import EXPIRED_TYPE
from castor.states import TaskStatus
from castor.store.base import Settlement, TaskRecord

_log = logging.getLogger("castor.worker")


def settled(settlement: Settlement, record: TaskRecord | None, duration: float, accepted: bool) -> None:
    """The line for an outcome a worker wrote (or that the store refused)."""
    fields: dict[str, Any] = {
        "task_id": settlement.task_id, "task_name": record.name if record else None,
        "queue": record.queue if record else None, "attempt": settlement.attempt,
        "duration_ms": round(duration * 1000, 3), "status": str(settlement.status),
    }
    if not accepted:
        # Our lease expired and the task went to another attempt: that one wins.
        logs.emit(_log, logging.WARNING, "task.settle_rejected", fields)
        return
    error = settlement.error or {}
    if settlement.status == TaskStatus.SUCCESS:  # the hot path: rendered without structlog's chain
        logs.emit(_log, logging.INFO, "task.succeeded", fields)
    elif settlement.status == TaskStatus.PENDING:
        fields.update(exc_type=error.get("type"), exc_message=error.get("message"),
                      retry_in_s=round((settlement.eta or 0) - settlement.finished_at, 3))
        logs.emit(_log, logging.INFO, "task.retrying", fields)
    elif settlement.status == TaskStatus.CANCELLED:
        if error.get("type") == EXPIRED_TYPE:  # found expired at its claim: never ran
            fields.update(reason="expired", exc_message=error.get("message"))
        else:
            fields["reason"] = error.get("message")
        logs.emit(_log, logging.INFO, "task.cancelled", fields)
    else:
        _failed(fields, error)


def released(records: list[TaskRecord], *, reason: str, counted: bool, **context: Any) -> None:
    """The lines for tasks taken back from a worker that is gone (castord's master,
    after a child died or left) or whose lease expired (any worker's recovery):
    each is failed (WorkerLost), cancelled (a cancel was asked), or back in the queue."""
    for record in records:
        fields: dict[str, Any] = {
            "task_id": record.id, "task_name": record.name, "queue": record.queue,
            "attempt": record.attempts, "status": str(record.status), **context,
        }
        if record.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            end = record.finished_at or time.time()
            fields["duration_ms"] = round(max(0.0, end - (record.started_at or end)) * 1000, 3)
            fields["reason"] = reason
        if record.status == TaskStatus.FAILED:
            _failed(fields, record.error or {})
        elif record.status == TaskStatus.CANCELLED:
            logs.emit(_log, logging.INFO, "task.cancelled", fields)
        elif counted and record.isolate and record.lost == 0:
            fields["reason"] = (f"{reason}; it ran beside other tasks, so it is not blamed and runs "
                                "alone next")
            logs.emit(_log, logging.WARNING, "task.requeued", fields)
        else:
            fields["reason"] = reason
            logs.emit(_log, logging.WARNING, "task.requeued", fields)


def cancelled_pending(record: TaskRecord) -> None:
    """A pending task cancelled by the caller (Task.cancel, `castord tasks cancel`):
    its end line is written in the process that cancelled it."""
    logs.emit(logging.getLogger("castor.manager"), logging.INFO, "task.cancelled", {
        "task_id": record.id, "task_name": record.name, "queue": record.queue, "attempt": record.attempts,
        "status": str(TaskStatus.CANCELLED), "duration_ms": 0.0, "reason": "cancelled before it started"})


def _failed(fields: dict[str, Any], error: dict[str, Any]) -> None:
    fields["exc_type"] = error.get("type")
    fields["exc_message"] = error.get("message")
    if error.get("traceback"):
        fields["traceback"] = error["traceback"]
    logs.emit(_log, logging.ERROR, "task.failed", fields)
