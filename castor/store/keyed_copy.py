"""A TaskCopy that keeps the task's concurrency key (castord move): the row's key is no
part of its record, and a copy without it would run unlimited. Both stores' pending_copies
give these, and insert_copies writes what as_new() gives, whichever store reads it."""

from __future__ import annotations

from dataclasses import dataclass

from castor.store.base import NewTask, TaskCopy


@dataclass(slots=True)
class KeyedCopy(TaskCopy):
    # concurrency=: the stored key ("" for a name limited as a whole); None: not limited.
    concurrency_key: str | None = None

    def as_new(self) -> NewTask:
        new = TaskCopy.as_new(self)  # not super(): a slots dataclass is a rebuilt class
        new.concurrency_key = self.concurrency_key
        return new
