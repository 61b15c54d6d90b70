"""castor's error tree: one root, a few precise leaves."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class CastorError(Exception):
    """Root of every error castor raises on purpose."""


class ConfigurationError(CastorError, ValueError):
    """A task definition or Manager option is wrong; the message says how to fix it."""


class DuplicateTaskError(ConfigurationError):
    """Two functions were registered under the same task name."""


class UnknownTaskError(CastorError, LookupError):
    """A task name that this process has no function for, or a task id not stored."""

    @classmethod
    def missing(cls, task_id: str) -> UnknownTaskError:
        return cls(f"task {task_id} is not in the database (purged, or never enqueued)")


class SerializationError(CastorError, TypeError):
    """Arguments or a result cannot be encoded by the Manager's serializer."""


class StoreError(CastorError):
    """The store cannot be used (a file that is not SQLite, damaged or read-only; locked)."""


class StoreUnavailable(StoreError):
    """The store cannot answer now, and nothing was written: a caller may wait it out
    and try again (a worker keeps its outcomes and retries; the HTTP API says 503)."""


class DatabaseLockedError(StoreUnavailable):
    """SQLite's case of StoreUnavailable: another connection held the write lock for
    longer than the Manager's lock timeout."""


class JoinTimeout(CastorError, TimeoutError):
    """`Task.join(timeout=...)` ran out of time before the task finished."""


class TaskFailed(CastorError):
    """A task failed and its own exception type could not be rebuilt here.

    Carries the remote exception's type name, message and traceback text.
    """

    def __init__(self, exc_type: str, message: str, traceback: str = "", task_id: str = ""):
        super().__init__(f"{exc_type}: {message}" if message else exc_type)
        self.exc_type = exc_type
        self.message = message
        self.traceback = traceback
        self.task_id = task_id


class TaskCancelled(CastorError):
    """The task was cancelled before it could finish."""


class TaskExpired(TaskCancelled):
    """The task was not started before its `expires=` time, so it never ran."""


class TaskTimeout(CastorError):
    """A task ran past its `timeout=`."""


class LeaseLost(CastorError):
    """Raised in a running attempt whose lease expired (its worker stalled past
    it) and went to another claim: its outcome would be refused, so it stops."""


class WorkerLost(CastorError):
    """The worker running a task vanished too many times."""


class RemoteTraceback(Exception):
    """Attached as `__cause__` of a rebuilt exception so the worker's traceback shows."""

    def __init__(self, traceback: str):
        super().__init__(traceback)
        self.traceback = traceback

    def __str__(self) -> str:
        return f"\n\nTraceback from the worker:\n{self.traceback}"


class Retry(CastorError):
    """Raise from inside a task to run it again later: `raise castor.Retry(delay=10)`.

    Counts as an attempt. Honoured while the task has attempts left: its
    `retries=` if set, else `max_retries` (default 3, as Celery's self.retry()).
    """

    def __init__(self, reason: str = "", *, delay: float | None = None, max_retries: int | None = None):
        super().__init__(reason or "the task asked to be retried")
        self.delay = delay
        self.max_retries = max_retries


class InvalidArguments(CastorError, TypeError):
    """`.delay()` arguments do not match the task's type hints (validate=True)."""


class TaskIdConflict(CastorError, ValueError):
    """`apply_async(task_id=...)` named an id that is already in the database."""


@dataclass(frozen=True, slots=True)
class FailedMember:
    """A workflow member that failed for good, as GroupFailed names it."""

    id: str
    name: str
    status: str
    error: dict[str, Any] | None

    @property
    def error_type(self) -> str:
        return str((self.error or {}).get("type", "unknown"))


class WorkflowFailed(CastorError):
    """A workflow stopped because one of its members failed for good.

    `.workflow_id`; `.member_id`: the member whose failure stopped it; `.failed`: the
    members of its step that had failed when this was raised (a GroupFailed names them).
    Raised by Workflow.join() when no member's own exception can be rebuilt instead.
    """

    def __init__(self, message: str, *, workflow_id: str = "", member_id: str | None = None,
                 failed: list[FailedMember] | None = None):
        super().__init__(message)
        self.workflow_id = workflow_id
        self.member_id = member_id
        self.failed = list(failed or [])


class GroupFailed(WorkflowFailed):
    """A member of a group failed for good: the group ended `failed` at once (its other
    members keep running). `.failed` names the members failed by then, in the group's
    order (the first 100; `.more_failed`: how many others)."""

    def __init__(self, message: str, *, workflow_id: str = "", member_id: str | None = None,
                 failed: list[FailedMember] | None = None, more_failed: int = 0):
        super().__init__(message, workflow_id=workflow_id, member_id=member_id, failed=failed)
        self.more_failed = more_failed


class ChordFailed(GroupFailed):
    """A member of a chord's group failed for good: the callback never runs (it ends
    cancelled, WorkflowStopped). `.failed` names the failed members, as GroupFailed."""


class MembersMissing(WorkflowFailed):
    """Members of a running workflow's step are gone (their rows deleted by hand): the
    step could never end, so castord's sweep ended the workflow `failed` (its waiting
    members cancelled, WorkflowStopped). `.missing`: how many rows were missing."""

    def __init__(self, message: str, *, workflow_id: str = "", missing: int = 0):
        super().__init__(message, workflow_id=workflow_id)
        self.missing = missing


class WorkflowCancelled(TaskCancelled):
    """A workflow was cancelled (by hand, or by the cancel of one of its members:
    `.member_id`, None for a cancel of the whole workflow)."""

    def __init__(self, message: str, *, workflow_id: str = "", member_id: str | None = None):
        super().__init__(message)
        self.workflow_id = workflow_id
        self.member_id = member_id


class WorkflowStopped(TaskCancelled):
    """Stored as the error of a workflow member that never ran: its workflow stopped
    first (a member before it failed or was cancelled), or it was not needed (a
    link_error handler whose task succeeded)."""


class WorkflowInputMissing(CastorError):
    """A workflow member's input (its predecessor's row) is gone: deleted by hand. The
    member fails without retrying, and its workflow fails with it."""


class WorkflowMemberRetry(ConfigurationError):
    """A retry by hand of a workflow member: refused (its successors would run without
    their inputs, and its workflow has ended already)."""
