"""A task's attempts as a timeline: enqueued, each start (owner and host), each failure
or lost worker, the retry, the end.

Built from the record alone: `history` holds one entry per attempt that did not succeed
(with its start and owner since the stores write them, see castor/store/base.py), and
the record itself holds the last attempt's start, owner and end. Entries written before
that carry no start: they show as the failure only.
"""

from __future__ import annotations

from typing import Any

from castor import views
from castor.states import TaskStatus
from castor.store import TaskRecord


def owner_host(owner: str | None) -> str | None:
    """The host in an owner string: a Worker's is host:pid:…, a castord child's
    host:pid:…:role-n:… (hostnames hold no colon); an inline run's is eager:pid."""
    if not owner or ":" not in owner:
        return None
    host = owner.split(":", 1)[0]
    return None if host == "eager" else host


def timeline(record: TaskRecord) -> list[dict[str, Any]]:
    """What happened to the task, oldest first: {at, when, what, detail, kind}."""
    events: list[dict[str, Any]] = [_event(record.enqueued_at, "enqueued", f"queue {record.queue}, "
                                           f"priority {record.priority}", "enqueued")]
    if record.eta > record.enqueued_at + 0.001 and not record.history and record.attempts <= 1:
        events.append(_event(record.eta, "due", "not run before this time", "due"))
    for entry in record.history:
        events += _past_attempt(entry)
    events += _last_attempt(record)
    if not any(entry.get("lost") for entry in record.history) and record.lost:
        # Losses recorded before history entries had them: counted, not dated.
        events.append(_event(None, f"worker lost {record.lost} time{'s' if record.lost > 1 else ''}",
                             "its worker vanished while running it", "lost"))
    events.sort(key=lambda e: (e["at"] is None, e["at"] or 0.0))  # stable: a start stays before its end
    return events


def _event(at: float | None, what: str, detail: str | None, kind: str) -> dict[str, Any]:
    return {"at": at, "when": views.when(at), "what": what, "detail": detail, "kind": kind}


def _started(attempt: Any, started_at: float, owner: str | None) -> dict[str, Any]:
    host = owner_host(owner)
    by = None if owner is None else f"by {owner}" + (f" on {host}" if host else "")
    return _event(started_at, f"attempt {attempt} started", by, "start")


def _past_attempt(entry: dict[str, Any]) -> list[dict[str, Any]]:
    attempt = entry.get("attempt")
    events = []
    if entry.get("started_at") is not None:
        events.append(_started(attempt, entry["started_at"], entry.get("owner")))
    if entry.get("lost"):
        events.append(_event(entry.get("at"), f"attempt {attempt} lost its worker", entry.get("message"), "lost"))
    else:
        events.append(_event(entry.get("at"), f"attempt {attempt} failed",
                             f"{entry.get('type')}: {entry.get('message')}", "failure"))
    return events


def _in_history(record: TaskRecord) -> bool:
    """Whether the record's last attempt is the history's last entry (it ended in a
    failure or a lost worker, and no attempt began since)."""
    if not record.history:
        return False
    last = record.history[-1]
    if last.get("started_at") is not None:
        return last.get("attempt") == record.attempts and last.get("started_at") == record.started_at
    return record.finished_at is not None and last.get("at") == record.finished_at  # an entry of before


def _last_attempt(record: TaskRecord) -> list[dict[str, Any]]:
    events = []
    ended_in_history = _in_history(record)
    if record.started_at is not None and not ended_in_history:
        events.append(_started(record.attempts, record.started_at, record.owner))
    if record.status == TaskStatus.PENDING and record.history:
        events.append(_event(record.eta, "retry due", f"attempt {record.attempts + 1} runs from this time", "retry"))
    if record.finished_at is not None:
        error = record.error or {}
        detail = None if ended_in_history or not error else f"{error.get('type')}: {error.get('message')}"
        events.append(_event(record.finished_at, str(record.status), detail, "end"))
    return events
