"""Task statuses and the transitions between them (pure; no I/O)."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # A workflow member whose turn has not come (docs/workflows.md): stored, never
    # claimed (claims read pending rows only), released to pending by its workflow.
    WAITING = "waiting"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED})

# Which status may follow which. The store's SQL enforces these with its WHERE
# clauses; this table is the readable statement of the same rules, and tests
# check the store against it.
TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    # RUNNING -> PENDING: lease expired, worker lost, or drained (requeued).
    TaskStatus.RUNNING: frozenset(
        {TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PENDING}
    ),
    # A finished task only moves again when someone retries it by hand.
    TaskStatus.SUCCESS: frozenset(),
    TaskStatus.FAILED: frozenset({TaskStatus.PENDING}),
    TaskStatus.CANCELLED: frozenset({TaskStatus.PENDING}),
    # Released when its step comes; cancelled when its workflow stops (or by hand).
    TaskStatus.WAITING: frozenset({TaskStatus.PENDING, TaskStatus.CANCELLED}),
}


class WorkflowStatus(StrEnum):
    """A workflow's state (its castor_workflows row): running until a member decides it."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not WorkflowStatus.RUNNING


def can_transition(old: TaskStatus | str, new: TaskStatus | str) -> bool:
    return TaskStatus(new) in TRANSITIONS[TaskStatus(old)]


def parse_status(value: str) -> TaskStatus:
    """The status named by `value`, or a ValueError listing the valid ones."""
    try:
        return TaskStatus(value)
    except ValueError:
        valid = ", ".join(s.value for s in TaskStatus)
        raise ValueError(f"unknown task status {value!r}; expected one of: {valid}") from None
