"""How a workflow moves when members of its running step end (pure; no I/O).

Both stores follow these rules inside the transaction that ends the members
(docs/workflows.md): SQLite calls `next_move` itself, PostgreSQL's advance statement
spells the same rules in CASE expressions, and the contract tests run the failure
table on both.

A workflow is a list of steps; `sizes[k]` is how many members step k has. The handler
(link_error) waits apart, at step -1, and covers the steps up to `handler_step`
(None: all of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from castor.states import TaskStatus, WorkflowStatus


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    """What the advance reads of a running workflow's row."""

    step: int
    remaining: int
    sizes: tuple[int, ...]
    handler_step: int | None = None
    has_handler: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    """What the advance writes: the row's new values and what to do with waiting members."""

    state: WorkflowStatus
    step: int
    remaining: int
    first_bad: str | None
    # The step whose waiting members become pending (None: none).
    release_step: int | None
    # The link_error handler becomes pending.
    release_handler: bool
    # Every other waiting member ends cancelled (WorkflowStopped): the workflow ended.
    stop_waiting: bool
    # The handler alone ends cancelled: the steps it covers are behind, none failed.
    cancel_handler: bool

    @property
    def finished(self) -> bool:
        return self.state is not WorkflowStatus.RUNNING


def next_move(row: WorkflowRow, ended: Sequence[tuple[str, TaskStatus]]) -> Move:
    """The move after the members `ended` ((task id, status), all of the running step,
    each ended by this transaction) of the workflow in `row`."""
    n = len(ended)
    bad = [(task_id, status) for task_id, status in ended if status != TaskStatus.SUCCESS]
    if bad:
        failed = sorted(task_id for task_id, status in bad if status == TaskStatus.FAILED)
        # A failure outranks a cancel ended in the same transaction: it is what the user must see.
        state = WorkflowStatus.FAILED if failed else WorkflowStatus.CANCELLED
        first_bad = failed[0] if failed else min(task_id for task_id, _ in bad)
        covered = row.handler_step is None or row.step <= row.handler_step
        release = row.has_handler and state is WorkflowStatus.FAILED and covered
        return Move(state, row.step, row.remaining - n, first_bad, None, release, True, False)
    if row.remaining > n:
        return Move(WorkflowStatus.RUNNING, row.step, row.remaining - n, None, None, False, False, False)
    if row.step + 1 >= len(row.sizes):
        return Move(WorkflowStatus.SUCCESS, row.step, 0, None, None, False, True, False)
    step = row.step + 1
    past_handler = row.has_handler and row.handler_step is not None and step > row.handler_step
    return Move(WorkflowStatus.RUNNING, step, row.sizes[step], None, step, False, False, past_handler)
