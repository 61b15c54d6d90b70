"""Retry, cancel and delete: on chosen tasks, or on every task a filter matches; and on
one task's page, "run now" (a scheduled task made due) and "run again" (a finished
task copied: Manager.run_now, Manager.run_again).

Each action goes through the Manager (one task) or one store call (all that match),
so the dashboard does what `castord tasks retry|cancel|purge` does. An action a
task's state refuses (cancel a finished task, delete a running one) is counted and
said, never an error page. Every action is logged as one structured line:
`web.action` with who, what, on which tasks, and how many.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from castor.bulk_retry import members_left, members_note
from castor.errors import ConfigurationError, UnknownTaskError
from castor.logs import get_logger
from castor.states import TaskStatus
from castor.store import Query

if TYPE_CHECKING:
    from castor.manager import Manager

log = get_logger("castor.webui")

ACTIONS = ("retry", "cancel", "delete")
# One task's page has these too (not offered in bulk).
TASK_ACTIONS = (*ACTIONS, "run-now", "run-again")
VERBS = {"retry": "retried", "cancel": "cancelled", "delete": "deleted", "run-now": "made due now",
         "run-again": "ran again"}
FINISHED = (TaskStatus.SUCCESS, TaskStatus.FAILED, TaskStatus.CANCELLED)
UNFINISHED = (TaskStatus.PENDING, TaskStatus.WAITING, TaskStatus.RUNNING)
# "Cancel all matching" cancels one task at a time (a pending one ends at once, a
# running one is asked to stop): at most this many per confirmation.
CANCEL_LIMIT = 100_000
# Task ids named in one log line (the count says how many there were).
LOGGED_IDS = 20


class RefusedAction(ValueError):
    """An action on "all matching" that the filter does not allow; the message says why."""


@dataclass(slots=True)
class Outcome:
    action: str
    done: int = 0
    ids: list[str] = field(default_factory=list)  # the tasks acted on, when known
    refused: dict[str, str] = field(default_factory=dict)  # task id -> why not
    created: list[str] = field(default_factory=list)  # the copies "run again" enqueued
    notes: list[str] = field(default_factory=list)  # what else it left, and why (a bulk retry's members)

    def summary(self) -> str:
        verb = VERBS[self.action]
        text = f"{verb} {self.done} task{'s' if self.done != 1 else ''}"
        if self.refused:
            text += f"; {len(self.refused)} refused"
        return "; ".join([text, *self.notes])


def act_on(manager: Manager, action: str, task_ids: list[str]) -> Outcome:
    """`action` on each of these tasks; what a task's state refuses is in .refused."""
    outcome = Outcome(action)
    for task_id in dict.fromkeys(task_ids):  # a repeated id once
        why = _one(manager, action, task_id, outcome.created)
        if why is None:
            outcome.done += 1
            outcome.ids.append(task_id)
        else:
            outcome.refused[task_id] = why
    return outcome


def _one(manager: Manager, action: str, task_id: str, created: list[str]) -> str | None:
    """Do it; None when done, else why not. A copy "run again" made goes in `created`."""
    store = manager.store
    try:
        if action == "retry":
            manager.retry(task_id)
            return None
        if action == "run-now":
            manager.run_now(task_id)
            return None
        if action == "run-again":
            created.append(manager.run_again(task_id).id)
            return None
        if action == "cancel":
            before = store.status(task_id)
            if before is not None and before.finished:
                return f"already finished ({before}); nothing to cancel"
            after = manager.cancel(task_id)
            return None if after in (TaskStatus.CANCELLED, TaskStatus.RUNNING) else f"finished ({after}) first"
        status = store.status(task_id)
        if status is None:
            raise UnknownTaskError.missing(task_id)
        if not status.finished:
            return f"it is {status}: cancel it first (only finished tasks are deleted)"
        return None if store.purge(Query(task_id=task_id)) else "it changed state meanwhile; look again"
    except (UnknownTaskError, ConfigurationError) as exc:
        return str(exc)


def matching(manager: Manager, action: str, query: Query) -> int:
    """How many tasks `action` on all that match `query` would act on now
    (RefusedAction if the filter does not fit the action)."""
    store = manager.store
    found = sum(store.count(_with_status(query, s)) for s in _statuses(action, query))
    if action == "retry":  # workflow members are left (bulk_retry.py)
        found -= sum(members_left(store, _with_status(query, s)) for s in _statuses(action, query))
    return found


def act_on_all(manager: Manager, action: str, query: Query) -> Outcome:
    """`action` on every task matching `query` (those in a state it applies to)."""
    store = manager.store
    statuses = _statuses(action, query)
    if action == "retry":
        ids = [i for s in statuses for i in store.retry(_with_status(query, s), now=time.time())]
        notes = [members_note(members_left(store, _with_status(query, s)), str(s)) for s in statuses]
        return Outcome(action, done=len(ids), ids=ids, notes=[note for note in notes if note])
    if action == "delete":
        return Outcome(action, done=sum(store.purge(_with_status(query, s)) for s in statuses))
    ids = [r.id for s in statuses for r in store.list(_with_status(query, s), limit=CANCEL_LIMIT)]
    return act_on(manager, "cancel", ids[:CANCEL_LIMIT])


QUEUE_ACTIONS = ("pause", "resume")


def act_on_queue(manager: Manager, action: str, queue: str, *, who: dict[str, Any]) -> bool:
    """Pause or resume a queue (castord tasks pause|resume); logged as web.action.
    False: it was in that state already (nothing changed)."""
    changed = manager.pause_queue(queue) if action == "pause" else manager.resume_queue(queue)
    log.info("web.action", action=action, scope="queue", queue=queue, count=int(changed), **who)
    return changed


def _statuses(action: str, query: Query) -> tuple[TaskStatus, ...]:
    allowed = {"retry": (TaskStatus.FAILED, TaskStatus.CANCELLED), "cancel": UNFINISHED, "delete": FINISHED}[action]
    if query.status is None:
        if action == "retry":  # retrying every cancelled task too is rarely meant: ask for it by name
            raise RefusedAction("retry on all matching needs the status filter failed or cancelled")
        return allowed
    if query.status not in allowed:
        *first, last = (str(s) for s in allowed)
        names = f"{', '.join(first)} or {last}"
        raise RefusedAction(f"{action} applies to {names} tasks, and the filter is status {query.status}")
    return (query.status,)


def _with_status(query: Query, status: TaskStatus) -> Query:
    return Query(status=status, name=query.name, queue=query.queue, task_id=query.task_id)


def log_action(outcome: Outcome, *, who: dict[str, Any], scope: str, filter_text: str | None = None) -> None:
    """One structured line per action: who (client address, how authenticated), what, on what."""
    log.info("web.action", action=outcome.action, scope=scope, count=outcome.done,
             task_ids=outcome.ids[:LOGGED_IDS], refused=len(outcome.refused), filter=filter_text,
             **({"created": outcome.created[:LOGGED_IDS]} if outcome.created else {}), **who)
