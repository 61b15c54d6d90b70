"""The handle on a stored workflow (castor.Workflow): its state, members, join and cancel.

Workflows are built and enqueued by castor/canvas.py (chain, group, chord, link). The
store moves a workflow on in the transaction that ends a member (docs/workflows.md has
the rules and why they hold through crashes); join() reads the outcome those moves left.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from castor.durations import to_seconds
from castor.errors import (
    ChordFailed,
    GroupFailed,
    JoinTimeout,
    MembersMissing,
    UnknownTaskError,
    WorkflowCancelled,
    WorkflowFailed,
)
from castor.handle import Task
from castor.states import TaskStatus, WorkflowStatus
from castor.store.base import WorkflowRecord, members_missing_message, task_topic

if TYPE_CHECKING:
    from castor.manager import Manager

# join()/resolve() look again at least this often, whatever the notifications say.
_RECHECK_SECONDS = 0.5
# A GroupFailed carries this many failed members (and counts the rest), its message fewer.
_NAMED = 100
_IN_MESSAGE = 10


class Workflow:
    """A handle on one stored workflow (castor_workflows): every read is fresh."""

    __slots__ = ("id", "_manager", "_kind", "first_id")

    def __init__(self, manager: Manager, workflow_id: str, kind: str | None = None, *,
                 first_id: str | None = None):
        self.id = workflow_id
        self._manager = manager
        self._kind = kind
        self.first_id = first_id

    def info(self) -> WorkflowRecord:
        """The stored row and its members, as of now."""
        record = self._manager.store.workflow(self.id)
        if record is None:
            raise UnknownTaskError(f"workflow {self.id} is not in the database")
        return record

    @property
    def kind(self) -> str:
        """"chain", "group", "chord" or "link"."""
        if self._kind is None:
            self._kind = self.info().kind
        return self._kind

    def status(self) -> WorkflowStatus:
        """"running" | "success" | "failed" | "cancelled" (a str enum)."""
        return self.info().state

    @property
    def steps(self) -> list[list[Task[Any]]]:
        """The members' handles, step by step, in order (the link_error handler apart: .handler)."""
        steps: list[list[Task[Any]]] = []
        for task_id, step, _index in self.info().members:
            if step >= 0:
                while len(steps) <= step:
                    steps.append([])
                steps[step].append(Task(self._manager, task_id))
        return steps

    @property
    def tasks(self) -> list[Task[Any]]:
        """Every member's handle (not the handler), in step order."""
        return [task for step in self.steps for task in step]

    @property
    def last(self) -> Task[Any]:
        """The chain's last link, the chord's callback, a group's last member (for a link
        workflow: its last link, or the task itself)."""
        return self.steps[-1][-1]

    @property
    def handler(self) -> Task[Any] | None:
        """The link_error task, if one was given."""
        handler_id = self.info().handler_id
        return None if handler_id is None else Task(self._manager, handler_id)

    def cancel(self) -> WorkflowStatus:
        """Stop the workflow: members not started end cancelled (WorkflowStopped), running
        ones are stopped as Task.cancel() stops them. A finished workflow stays as it is.
        Returns the state after the call."""
        state = self._manager.cancel_workflow(self.id)
        if state is None:
            raise UnknownTaskError(f"workflow {self.id} is not in the database")
        return state

    revoke = cancel  # Celery's name

    def join(self, timeout: float | None = None) -> Any:
        """Block until the workflow ends: the last step's result (a chain's last link's),
        or the exception of the member that stopped it (its own type, as Task.join), or
        WorkflowCancelled. castor.JoinTimeout if `timeout` seconds pass first."""
        deadline = _deadline(timeout)
        store = self._manager.store
        topic = task_topic(self.id)  # a workflow's end notifies its id as a task's end does
        with store.hearing(topic):  # before the first look
            seen = store.generation(topic)
            while True:
                record = self.info()
                if record.state.finished:
                    return self._outcome(record)
                store.wait_for_change(seen, self._next_wait(deadline, timeout), topic)
                seen = store.generation(topic)

    async def resolve(self, timeout: float | None = None) -> Any:
        """`join` for asyncio: awaits without blocking the event loop."""
        deadline = _deadline(timeout)
        topic = task_topic(self.id)
        with self._manager.store.hearing(topic):
            watch = self._manager.store.watch_async(topic)
            try:
                while True:
                    record = self.info()
                    if record.state.finished:
                        return self._outcome(record)
                    await watch.wait(self._next_wait(deadline, timeout))
            finally:
                watch.close()

    def get(self, timeout: float | None = None) -> Any:
        return self.join(timeout)

    def _next_wait(self, deadline: float | None, timeout: float | None) -> float:
        if deadline is None:
            return _RECHECK_SECONDS
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise JoinTimeout(f"workflow {self.id} ({self.kind}) is still running after {timeout:g} s")
        return min(_RECHECK_SECONDS, remaining)

    def _outcome(self, record: WorkflowRecord) -> Any:
        if record.state is WorkflowStatus.SUCCESS:
            last: list[Task[Any]] = [Task(self._manager, task_id) for task_id, step, _ in record.members if step == record.step]
            if record.kind == "group" or len(last) > 1:  # a group's results, in order (a list even of one)
                return [task.join(0) for task in last]
            return last[0].join(0)
        if record.missing:  # the sweep ended it: rows of its step were deleted (no member to blame)
            raise MembersMissing(members_missing_message(self.id, record.step, record.missing,
                                                         record.sizes[record.step]),
                                 workflow_id=self.id, missing=record.missing)
        if _is_group_step(record):
            raise self._group_stopped(record)
        if record.first_bad is not None:
            member: Task[Any] = Task(self._manager, record.first_bad)
            member_record = self._manager.store.get(record.first_bad)
            if member_record is not None and member_record.status.finished \
                    and member_record.status != TaskStatus.SUCCESS:
                member._outcome(member_record)  # noqa: SLF001 - raises the member's own exception
        if record.state is WorkflowStatus.CANCELLED:
            raise WorkflowCancelled(f"workflow {self.id} ({record.kind}) was cancelled", workflow_id=self.id)
        raise WorkflowFailed(f"workflow {self.id} ({record.kind}) failed: member {record.first_bad}",
                             workflow_id=self.id, member_id=record.first_bad)

    def _group_stopped(self, record: WorkflowRecord) -> Exception:
        """Why a group's step stopped: the members failed by now (GroupFailed, ChordFailed
        for a chord's), or the member whose cancel stopped it (WorkflowCancelled)."""
        if record.state is WorkflowStatus.CANCELLED:
            why = f": member {record.first_bad} was cancelled" if record.first_bad else ""
            return WorkflowCancelled(f"workflow {self.id} ({record.kind}) was cancelled{why}",
                                     workflow_id=self.id, member_id=record.first_bad)
        failed, total = self._manager.store.failed_members(self.id, record.step, limit=_NAMED)
        named = ", ".join(f"{m.id} ({m.name}: {m.error_type})" for m in failed[:_IN_MESSAGE])
        more = f" and {total - _IN_MESSAGE} more" if total > _IN_MESSAGE else ""
        error = ChordFailed if _is_chord_header(record) else GroupFailed
        return error(f"{record.kind} {self.id} failed: {total} of its {record.sizes[record.step]} members failed"
                     f"{' so far' if total else ''}: {named or record.first_bad}{more}",
                     workflow_id=self.id, member_id=record.first_bad, failed=failed,
                     more_failed=max(0, total - len(failed)))

    def __repr__(self) -> str:
        return f"<castor.Workflow {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workflow) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def _deadline(timeout: float | None) -> float | None:
    seconds = to_seconds(timeout, "timeout", limit=None)
    return None if seconds is None else time.monotonic() + seconds


def _is_chord_header(record: WorkflowRecord) -> bool:
    """Whether the group step that stopped `record` is a chord's: a chord's members, or a
    group followed by a step in a chain (a chord inside it, flattened into its steps; a
    group piped into a task is a chord too, as Celery makes it one): what follows never runs."""
    if record.kind == "chord":
        return record.step == 0
    return record.kind == "chain" and record.step + 1 < len(record.sizes)


def _is_group_step(record: WorkflowRecord) -> bool:
    """Whether the step that stopped `record` is a group: a group's, a chord's members,
    or several members of a chain's step (a group inside it; a group of one is its member)."""
    if record.kind == "link":
        return False
    return record.kind == "group" or (record.kind == "chord" and record.step == 0) or record.sizes[record.step] > 1
