"""Building workflows: chain, group, chord, link (Celery's "canvas"), and enqueueing them.

    castor.chain(a.s(1), b.s(), c.s()).delay()       # a(1), then b(a's result), then c(b's)
    castor.group(a.s(1), a.s(2)).delay()             # in parallel; join(): [a(1), a(2)]
    castor.chord([a.s(1), a.s(2)], total.s()).delay()  # total([a(1), a(2)]) once both ended
    castor.chain(a.s(), castor.group(b.s(), c.s()), d.s())  # d gets [b's result, c's]
    a.apply_async((1,), link=b.s(), link_error=e.s())

Each spelling is a list of steps, each step one task or several run in parallel. Every
member is stored at once, in one transaction with the workflow's row: the first step
pending, the rest `waiting`; the store moves the workflow on in the transaction that
ends a member (docs/workflows.md).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

from castor.errors import ConfigurationError
from castor.expiry import from_release, parse_expires
from castor.handle import Task
from castor.ids import new_task_id
from castor.interrupts import shielded
from castor.store.base import INPUT_ERROR, INPUT_RESULT, INPUT_RESULTS, NewTask, NewWorkflow
from castor.task import Signature
from castor.workflow import Workflow

if TYPE_CHECKING:
    from castor.manager import Manager

_SUB_WORKFLOWS = ("parallel sequences are not a list of steps, and castor does not run them yet; "
                  "enqueue each one on its own (.delay() each), or chain the group and the rest")


@dataclass(frozen=True, slots=True)
class Step:
    """Members run in parallel; `group`: the next step gets their results as one list
    (a single task's step passes its one result)."""

    members: tuple[Signature, ...]
    group: bool = False


class Chain:
    """Steps run one after the other (castor.chain): not enqueued until .delay()."""

    __slots__ = ("steps",)

    def __init__(self, steps: Sequence[Step]):
        self.steps = tuple(steps)

    def __or__(self, other: Item) -> Chain:
        return chain(self, other)

    def delay(self) -> Workflow:
        return self.apply_async()

    def apply_async(self, *, link_error: Signature | None = None) -> Workflow:
        """Enqueue every member at once (one transaction). link_error=: run with (task id,
        error dict) if any member fails for good."""
        return _enqueue("chain", list(self.steps), link_error)

    def __repr__(self) -> str:
        return f"<castor.chain {' | '.join(_names(step) for step in self.steps)}>"


class Group:
    """Signatures run in parallel (castor.group): join() gives their results in order."""

    __slots__ = ("signatures",)

    def __init__(self, signatures: Sequence[Signature]):
        self.signatures = tuple(signatures)

    def __len__(self) -> int:
        return len(self.signatures)

    def __or__(self, other: Item) -> Chain:
        return chain(self, other)

    def delay(self) -> Workflow:
        return self.apply_async()

    def apply_async(self, *, link_error: Signature | None = None) -> Workflow:
        """Enqueue every member at once (one transaction), all pending. link_error=: run
        with (task id, error dict) of the first member that fails for good."""
        return _enqueue("group", [Step(self.signatures, group=True)], link_error)

    def __repr__(self) -> str:
        return f"<castor.group {_names(Step(self.signatures, True))}>"


class Chord:
    """A group, then one callback given the group's results in order (castor.chord)."""

    __slots__ = ("header", "body")

    def __init__(self, header: Group, body: Signature):
        self.header = header
        self.body = body

    @property
    def steps(self) -> tuple[Step, Step]:
        return (Step(self.header.signatures, group=True), Step((self.body,)))

    def __or__(self, other: Item) -> Chain:
        return chain(self, other)

    def delay(self) -> Workflow:
        return self.apply_async()

    def apply_async(self, *, link_error: Signature | None = None) -> Workflow:
        """Enqueue the members and the callback at once (one transaction); the callback
        waits until every member has succeeded, and never runs if one fails."""
        return _enqueue("chord", list(self.steps), link_error)

    def __repr__(self) -> str:
        return f"<castor.chord {_names(self.steps[0])} -> {self.body.task.name}>"


Item = Union[Signature, Chain, Group, Chord]


def chain(*links: Item) -> Chain:
    """`castor.chain(a.s(1), b.s(), c.s())`: each link gets the one before's result as its
    first argument (`.si()` for a link that takes none), a list after a group; a chain
    (or a chord) inside is flattened into its steps."""
    steps: list[Step] = []
    for link in links:
        if isinstance(link, Chain):
            steps.extend(link.steps)
        elif isinstance(link, Chord):
            steps.extend(link.steps)
        elif isinstance(link, Group):
            # A group of one is its member (Celery's): the next link gets its result, not a list.
            steps.append(Step(link.signatures, group=len(link) > 1))
        elif isinstance(link, Signature):
            steps.append(Step((link,)))
        else:
            raise ConfigurationError(
                f"castor.chain takes signatures (task.s(...), task.si(...)), groups, chords or chains, not "
                f"{link!r}; write task.s(args) rather than task(args)")
    if not steps:
        raise ConfigurationError("castor.chain needs at least one signature: castor.chain(a.s(1), b.s())")
    return Chain(steps)


def group(*members: Signature | Group | Iterable[Signature | Group]) -> Group:
    """`castor.group(a.s(1), a.s(2))`, `castor.group([...])` or `castor.group(generator)`:
    members run in parallel; a group inside is flattened into this one."""
    items: Iterable[Any] = members
    if len(members) == 1 and not isinstance(members[0], (Signature, Group, Chain, Chord)) \
            and isinstance(members[0], Iterable):
        items = members[0]
    signatures: list[Signature] = []
    for item in items:
        if isinstance(item, Group):
            signatures.extend(item.signatures)
        elif isinstance(item, Signature):
            signatures.append(item)
        elif isinstance(item, (Chain, Chord)):
            kind = "chain" if isinstance(item, Chain) else "chord"
            raise ConfigurationError(f"castor.group: a {kind} inside a group ({item!r}) is refused: "
                                     + _SUB_WORKFLOWS)
        else:
            raise ConfigurationError(f"castor.group takes signatures (task.s(...)) or groups, not {item!r}; "
                                     "write task.s(args) rather than task(args)")
    if not signatures:
        raise ConfigurationError("castor.group needs at least one signature: castor.group(a.s(1), a.s(2))")
    return Group(signatures)


def chord(header: Group | Iterable[Signature | Group], body: Signature) -> Chord:
    """`castor.chord([a.s(1), a.s(2)], total.s())`, or `castor.chord(castor.group(...),
    total.s())`: the callback runs once every member has succeeded, with their results in
    order as its first argument (`.si()`: without them)."""
    members = header if isinstance(header, Group) else group(header)
    if not isinstance(body, Signature):
        raise ConfigurationError(f"castor.chord's callback is one signature (task.s(...)), not {body!r}; "
                                 "chain what must run after it: castor.chain(castor.chord(...), next.s())")
    return Chord(members, body)


def enqueue_link(head: Signature, link: Signature | Sequence[Signature] | None,
                 link_error: Signature | None) -> Task[Any]:
    """`task.apply_async(..., link=, link_error=)`: the task, its link(s) after it, and the
    handler of its failure; returns the task's own handle (Celery's)."""
    given: list[Any] = [] if link is None else list(link) if isinstance(link, (list, tuple)) else [link]
    for item in given:
        if not isinstance(item, Signature):
            raise ConfigurationError(f"{head.task.name}.apply_async: link= takes a signature (task.s(...)) or a "
                                     f"list of them, not {item!r}")
    steps = [Step((head,)), Step(tuple(given))] if given else [Step((head,))]
    workflow = _enqueue("link", steps, link_error, handler_step=0)
    return Task(workflow._manager, str(workflow.first_id))  # noqa: SLF001 - built just above


def _enqueue(kind: str, steps: list[Step], handler: Signature | None, *,
             handler_step: int | None = None) -> Workflow:
    if handler is not None and not isinstance(handler, Signature):
        raise ConfigurationError(f"link_error= takes a signature (task.s(...)), not {handler!r}")
    manager = steps[0].members[0].task.manager
    now = time.time()
    workflow_id = new_task_id()
    with shielded():  # serialization, like the store, is never interrupted halfway
        members = [_member(manager, sig, workflow_id, k, i, _input(steps, k, sig))
                   for k, step in enumerate(steps) for i, sig in enumerate(step.members)]
        if handler is not None:
            members.append(_member(manager, handler, workflow_id, -1, 0,
                                   None if handler.immutable else INPUT_ERROR))
    new = NewWorkflow(workflow_id, kind, tuple(len(step.members) for step in steps), now,
                      handler_id=members[-1].id if handler is not None else None,
                      handler_step=handler_step if handler is not None else None)
    manager.producer.submit_workflow(new, members)  # instruments and hooks, as .delay()'s submit
    return Workflow(manager, workflow_id, kind, first_id=members[0].id)


def _input(steps: list[Step], k: int, sig: Signature) -> str | None:
    """What member `sig` of step k gets before its own arguments."""
    if k == 0 or sig.immutable:
        return None
    return INPUT_RESULTS if steps[k - 1].group else INPUT_RESULT


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
    if task.waiting:  # expires= seconds count from its release, not from now
        given = options.get("expires")
        task.options = from_release(task.options, sig.task.options.expires if given is None
                                    else parse_expires(given, where))
    return task


def _names(step: Step) -> str:
    names = [sig.task.name for sig in step.members]
    shown = ", ".join(names[:3]) + (f", … ({len(names)})" if len(names) > 3 else "")
    return f"[{shown}]" if step.group else shown
