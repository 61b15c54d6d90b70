"""The tasks of the workflow durability test (tests/system/test_workflow_durability.py).

castord loads `tests.workflow_chaos_app:manager`, a Manager on $DURABILITY_DB; the test
process calls define() on a Manager of its own (the same names and modes), so that
importing this module there changes nothing.

Every task, each time it starts, appends "start TASK_ID FENCE PROC" to the side-effect
log ($DURABILITY_LOG), and "end TASK_ID FENCE NOTE" just before it returns: one short
O_APPEND write each, so lines never mix and their order in the file is the order the
writes happened on this host, whichever process made them (no clock compared). FENCE is
the claim the attempt runs under (castor/context.py: the claimed record), PROC the
process as pid@starttime (tests/chaos.py `identity`).

A task given `gate=n` first waits until the test has written a kill count of at least n
to $DURABILITY_GATE, so that the load surely spans the first kills, however fast the
machine.
"""

from __future__ import annotations

import os
import time
from typing import Any

import castor
from castor import context
from tests.chaos import identity

DB_ENV, LOG_ENV, GATE_ENV = "DURABILITY_DB", "DURABILITY_LOG", "DURABILITY_GATE"
# The kills here must never turn into WorkerLost (that case has its own contract test):
# the test starts castord with --max-lost this high.
MAX_LOST = 1_000
GATE_SECONDS = 120.0  # a gate left shut this long opens anyway (the test fails on its kill count)
HOLD_SECONDS = 300.0  # how long hold() runs at most unless cancelled (beyond the chaos deadline)
WORK_SECONDS = 0.005  # each task's own work: long enough that a kill finds tasks in hand


def _append(line: str) -> None:
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _claim() -> tuple[str, int]:
    ctx = context.current()
    if ctx is None:
        raise RuntimeError("a durability task runs only under a castor worker")
    return ctx.record.id, ctx.record.fence


def _started() -> tuple[str, int]:
    task_id, fence = _claim()
    _append(f"start {task_id} {fence} {identity(os.getpid())}")
    return task_id, fence


def _ended(task_id: str, fence: int, note: str = "-") -> None:
    _append(f"end {task_id} {fence} {note}")


def _wait_gate(kills: int) -> None:
    deadline = time.monotonic() + GATE_SECONDS
    while time.monotonic() < deadline:
        try:
            with open(os.environ[GATE_ENV]) as f:
                if int(f.read() or 0) >= kills:
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.02)


def _step(value: int, i: int, fail: bool, gate: int) -> int:
    task_id, fence = _started()
    if gate:
        _wait_gate(gate)
    time.sleep(WORK_SECONDS)
    if fail:
        raise ValueError(f"link {i} fails for good")
    _ended(task_id, fence)
    return value + i


def _member(value: int, fail: bool) -> int:
    task_id, fence = _started()
    time.sleep(WORK_SECONDS)
    if fail:
        raise ValueError(f"member {value} fails for good")
    _ended(task_id, fence)
    return value


def _hold() -> None:
    _started()
    deadline = time.monotonic() + HOLD_SECONDS
    while not castor.cancelled() and time.monotonic() < deadline:
        time.sleep(0.02)
    if castor.cancelled():
        raise castor.TaskCancelled("held until cancelled")
    raise RuntimeError(f"never cancelled in {HOLD_SECONDS:g} s")


def define(manager: castor.Manager) -> dict[str, Any]:
    """Register the tasks on `manager`; returns them by name."""

    @manager.task(mode="process", name="dur.pstep")
    def pstep(value, i, fail=False, gate=0):
        """A chain's link in a process child: its input + i."""
        return _step(value, i, fail, gate)

    @manager.task(mode="thread", name="dur.tstep")
    def tstep(value, i, fail=False, gate=0):
        """A chain's link in the thread host: its input + i."""
        return _step(value, i, fail, gate)

    @manager.task(mode="process", name="dur.pmember")
    def pmember(value, fail=False):
        return _member(value, fail)

    @manager.task(mode="thread", name="dur.tmember")
    def tmember(value, fail=False):
        return _member(value, fail)

    @manager.task(mode="thread", name="dur.tally")
    def tally(results):
        """A chord's callback: (len, sum); its end line says whether the results came in order."""
        task_id, fence = _started()
        _ended(task_id, fence, "ordered" if results == sorted(results) else "unordered")
        return [len(results), sum(results)]

    @manager.task(mode="thread", name="dur.hold")
    def hold():
        """Runs until its workflow is cancelled (a thread task gets TaskCancelled raised in it)."""
        return _hold()

    @manager.task(mode="process", name="dur.phold")
    def phold():
        """The same in a process child (which castord stops and replaces on the cancel)."""
        return _hold()

    return {"pstep": pstep, "tstep": tstep, "pmember": pmember, "tmember": tmember, "tally": tally,
            "hold": hold, "phold": phold}


if DB_ENV in os.environ:
    manager = castor.Manager(os.environ[DB_ENV])
    define(manager)
