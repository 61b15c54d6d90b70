"""A bulk retry (Manager.retry_failed, `castord tasks retry --failed`, the dashboard's
retry of all matching): what it sent back, and the workflow members it left as they are.

A member is never retried by hand (Manager.retry says why), so a bulk retry leaves the
failed or cancelled members its filter matches; it counts them, so that each caller can
say so rather than leave them unexplained.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from castor.handle import Task

if TYPE_CHECKING:
    from castor.store import Query, Store


def members_left(store: Store, query: Query) -> int:
    """How many tasks `query` matches that a bulk retry of it leaves: workflow members."""
    return store.count_workflow_members(query)


def members_note(count: int, status: str) -> str:
    """What to say of the members a bulk retry left ("" when none)."""
    if not count:
        return ""
    return (f"{count} workflow member{'s' if count != 1 else ''} left {status}: a member is not retried by "
            "hand (it would run without the results before it); enqueue its workflow again")


class RetriedTasks(list[Task[Any]]):
    """Manager.retry_failed's answer: the tasks sent back (a list, as before), and
    `.skipped_members`, how many workflow members the filter matched and it left."""

    def __init__(self, tasks: list[Task[Any]], *, skipped_members: int, status: str):
        super().__init__(tasks)
        self.skipped_members = skipped_members
        self.status = status

    def summary(self, status: str | None = None) -> str:
        """"retried 3 failed tasks; 2 workflow members left failed: ..."."""
        status = status or self.status
        text = f"retried {len(self)} {status} task{'s' if len(self) != 1 else ''}"
        note = members_note(self.skipped_members, status)
        return f"{text}; {note}" if note else text
