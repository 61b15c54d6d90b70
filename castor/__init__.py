"""castor: durable background tasks in your beaver-db file.

    from beaver import BeaverDB
    import castor

    manager = castor.Manager(BeaverDB("app.db"))

    @manager.task(mode="process")
    def add(a, b):
        return a + b

    task = add.delay(1, 2)
    task.join(timeout=5)   # 3, once a worker (castord) has run it
"""

from castor.canvas import Chain, Chord, Group, chain, chord, group
from castor.context import cancelled, progress
from castor.errors import (
    CastorError,
    ChordFailed,
    ConfigurationError,
    DatabaseLockedError,
    DuplicateTaskError,
    FailedMember,
    GroupFailed,
    InvalidArguments,
    JoinTimeout,
    MembersMissing,
    Retry,
    SerializationError,
    StoreError,
    StoreUnavailable,
    TaskCancelled,
    TaskExpired,
    TaskFailed,
    TaskIdConflict,
    TaskTimeout,
    UnknownTaskError,
    WorkerLost,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowInputMissing,
    WorkflowMemberRetry,
    WorkflowStopped,
)
from castor.handle import Progress, Task
from castor.manager import Manager
from castor.states import TaskStatus, WorkflowStatus
from castor.task import Signature, TaskFunction
from castor.worker import Worker
from castor.workflow import Workflow

__version__ = "0.1.0"

__all__ = [
    "CastorError",
    "Chain",
    "Chord",
    "ChordFailed",
    "ConfigurationError",
    "DatabaseLockedError",
    "DuplicateTaskError",
    "FailedMember",
    "Group",
    "GroupFailed",
    "InvalidArguments",
    "JoinTimeout",
    "Manager",
    "MembersMissing",
    "Progress",
    "Retry",
    "SerializationError",
    "Signature",
    "StoreError",
    "StoreUnavailable",
    "Task",
    "TaskCancelled",
    "TaskExpired",
    "TaskFailed",
    "TaskFunction",
    "TaskIdConflict",
    "TaskStatus",
    "TaskTimeout",
    "UnknownTaskError",
    "Worker",
    "WorkerLost",
    "Workflow",
    "WorkflowCancelled",
    "WorkflowFailed",
    "WorkflowInputMissing",
    "WorkflowMemberRetry",
    "WorkflowStatus",
    "WorkflowStopped",
    "cancelled",
    "chain",
    "chord",
    "group",
    "progress",
]
