"""Workflows: tasks that run in steps, each step's result the next one's input.

    castor.chain(a.s(1), b.s(), c.s()).delay()   # a(1), then b(a's result), then c(b's)
    a.s(1) | b.s() | c.s()                        # the same chain
    a.apply_async((1,), link=b.s(), link_error=e.s())

Every member is stored at once, in one transaction with the workflow's row: the first
step pending, the rest `waiting`. The store moves the workflow on in the transaction
that ends a member (docs/workflows.md has the rules and why they hold through crashes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from castor.durations import to_seconds
from castor.errors import ConfigurationError, JoinTimeout, UnknownTaskError, WorkflowCancelled, WorkflowFailed
from castor.handle import Task
from castor.ids import new_task_id
from castor.interrupts import shielded
from castor.states import TaskStatus, WorkflowStatus
from castor.store.base import INPUT_ERROR, INPUT_RESULT, NewTask, NewWorkflow, WorkflowRecord, task_topic
from castor.task import Signature

if TYPE_CHECKING:
    from castor.manager import Manager

# join()/resolve() look again at least this often, whatever the notifications say.
_RECHECK_SECONDS = 0.5


class Chain:
    """Signatures run one after the other (castor.chain): not enqueued until .delay()."""

    __slots__ = ("signatures",)

    def __init__(self, signatures: Sequence[Signature]):
        self.signatures = tuple(signatures)

    def __or__(self, other: Signature | Chain) -> Chain:
        return chain(self, other)

    def delay(self) -> Workflow:
        return self.apply_async()

    def apply_async(self, *, link_error: Signature | None = None) -> Workflow:
        """Enqueue every link at once (one transaction). link_error=: run with (task id,
        error dict) if any link fails for good."""
        steps = [[sig] for sig in self.signatures]
        return _enqueue("chain", steps, link_error, handler_step=None)

    def __repr__(self) -> str:
        return f"<castor.chain {' | '.join(s.task.name for s in self.signatures)}>"


def chain(*links: Signature | Chain) -> Chain:
    """`castor.chain(a.s(1), b.s(), c.s())`: each link gets the one before's result as its
    first argument (`.si()` for a link that takes none); a chain inside is flattened."""
    signatures: list[Signature] = []
    for link in links:
        if isinstance(link, Chain):
            signatures.extend(link.signatures)
        elif isinstance(link, Signature):
            signatures.append(link)
        else:
            raise ConfigurationError(
                f"castor.chain takes signatures (task.s(...), task.si(...)) or chains, not {link!r}; "
                "write task.s(args) rather than task(args)")
    if not signatures:
        raise ConfigurationError("castor.chain needs at least one signature: castor.chain(a.s(1), b.s())")
    return Chain(signatures)


def enqueue_link(head: Signature, link: Signature | Sequence[Signature] | None,
                 link_error: Signature | None) -> Task[Any]:
    """`task.apply_async(..., link=, link_error=)`: the task, its link(s) after it, and the
    handler of its failure; returns the task's own handle (Celery's)."""
    given: list[Any] = [] if link is None else list(link) if isinstance(link, (list, tuple)) else [link]
    for item in given:
        if not isinstance(item, Signature):
            raise ConfigurationError(f"{head.task.name}.apply_async: link= takes a signature (task.s(...)) or a "
                                     f"list of them, not {item!r}")
    links: list[Signature] = given
    steps = [[head], links] if links else [[head]]
    workflow = _enqueue("link", steps, link_error, handler_step=0)
    return Task(workflow._manager, str(workflow.first_id))  # noqa: SLF001 - built just above


def _enqueue(kind: str, steps: list[list[Signature]], handler: Signature | None, *,
             handler_step: int | None) -> Workflow:
    if handler is not None and not isinstance(handler, Signature):
        raise ConfigurationError(f"link_error= takes a signature (task.s(...)), not {handler!r}")
    manager = steps[0][0].task.manager
    now = time.time()
    workflow_id = new_task_id()
    with shielded():  # serialization, like the store, is never interrupted halfway
        members = [_member(manager, sig, workflow_id, k, i, None if k == 0 or sig.immutable else INPUT_RESULT)
                   for k, step in enumerate(steps) for i, sig in enumerate(step)]
        if handler is not None:
            members.append(_member(manager, handler, workflow_id, -1, 0,
                                   None if handler.immutable else INPUT_ERROR))
    new = NewWorkflow(workflow_id, kind, tuple(len(step) for step in steps), now,
                      handler_id=members[-1].id if handler is not None else None,
                      handler_step=handler_step if handler is not None else None)
    manager._submit_workflow(new, members)  # noqa: SLF001 - the Manager's own write path
    return Workflow(manager, workflow_id, kind, first_id=members[0].id)


def _member(manager: Manager, sig: Signature, workflow_id: str, step: int, index: int,
            wf_input: str | None) -> NewTask:
    """The row of one member: the task's own call, placed in the workflow."""
    where = f"{sig.task.name} in a workflow"
    if sig.task.manager.store.url != manager.store.url:
        raise ConfigurationError(f"{where}: its Manager keeps tasks in another store ({sig.task.manager.store.url}) "
                                 f"than the workflow's ({manager.store.url}); a workflow lives in one store")
    options = sig.options
    # A waiting row is outside the unique index: its release could then break the index
    # inside a worker's settle. A cached answer would skip the run its successor waits on.
    if sig.task.options.unique is not False or options.get("unique") not in (None, False):
        raise ConfigurationError(f"{where}: unique= is not allowed on a workflow member; drop it for this call "
                                 "(.s(...).set(unique=False)) or enqueue the task on its own")
    if sig.task.options.cache_ttl is not None or options.get("cache_ttl") is not None:
        raise ConfigurationError(f"{where}: cache_ttl= is not allowed on a workflow member; enqueue the task on "
                                 "its own to use a cached result")
    if step != 0 and ("countdown" in options or "eta" in options):
        raise ConfigurationError(f"{where}: countdown=/eta= apply to the first step only; a later member starts "
                                 "when the step before it has ended")
    task = sig.task.manager.producer.new_task(sig.task, sig.args, sig.kwargs, options)
    task.workflow_id, task.wf_step, task.wf_index, task.wf_input = workflow_id, step, index, wf_input
    return task


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
        """"chain" or "link"."""
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
        """The chain's last link (for a link workflow: its last link, or the task itself)."""
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
        state = self._manager.store.cancel_workflow(self.id, now=time.time())
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
        watch = self._manager.store.watch_async(task_topic(self.id))
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
            return last[0].join(0) if len(last) == 1 else [task.join(0) for task in last]
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

    def __repr__(self) -> str:
        return f"<castor.Workflow {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Workflow) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)


def _deadline(timeout: float | None) -> float | None:
    seconds = to_seconds(timeout, "timeout", limit=None)
    return None if seconds is None else time.monotonic() + seconds
