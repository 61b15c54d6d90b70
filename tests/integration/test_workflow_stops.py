"""The members a workflow's stop ends (castor/workflow_stops.py): they never reach a
worker, so the process that ended the member that stopped the workflow writes their
`task.cancelled` lines and fires their `task.cancelled` hooks, once each, on both stores."""

from __future__ import annotations

import logging

import pytest

import castor
from castor.hooks import TaskEvent
from tests.integration.test_workflows import app, drain, task, url  # noqa: F401 - fixtures


def _cancelled_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "task.cancelled" in r.getMessage()]


def test_a_failing_link_reports_the_links_its_stop_cancelled(app, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    add, boom = task(app, "add"), task(app, "boom")
    cancelled: list[TaskEvent] = []
    app.on("task.cancelled", cancelled.append)
    caplog.set_level(logging.INFO, logger="castor.worker")
    workflow = castor.chain(add.s(1, 2), boom.s(), add.s(3), add.s(4)).delay()
    drain(app)
    with pytest.raises(KeyError):  # the failing link's own exception
        workflow.join(timeout=5)
    later = [t.id for t in workflow.tasks[2:]]
    assert sorted(e.task_id for e in cancelled) == sorted(later)  # once each
    assert {e.record.status for e in cancelled} == {castor.TaskStatus.CANCELLED}
    lines = _cancelled_lines(caplog)
    for task_id in later:
        assert sum(task_id in line for line in lines) == 1, lines
    assert all(workflow.tasks[1].id in line for line in lines)  # stopped_by: the failed link


def test_a_chord_member_failing_reports_the_callback(app, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    add, boom, total = task(app, "add"), task(app, "boom"), task(app, "total")
    cancelled: list[str] = []
    app.on("task.cancelled", lambda e: cancelled.append(e.task_id))
    caplog.set_level(logging.INFO, logger="castor.worker")
    workflow = castor.chord([add.s(1, 1), boom.s(), add.s(2, 2)], total.s()).delay()
    drain(app)
    with pytest.raises(castor.ChordFailed):
        workflow.join(timeout=5)
    callback = workflow.tasks[-1].id
    assert cancelled == [callback]
    assert sum(callback in line for line in _cancelled_lines(caplog)) == 1


def test_a_workflow_that_succeeds_reports_nothing(app) -> None:  # noqa: F811
    add = task(app, "add")
    cancelled: list[str] = []
    app.on("task.cancelled", lambda e: cancelled.append(e.task_id))
    workflow = castor.chain(add.s(1, 2), add.s(3)).delay()
    drain(app)
    assert workflow.join(timeout=5) == 6
    assert cancelled == []


def test_a_workflow_cancelled_by_hand_reports_the_members_it_ended(app, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    add = task(app, "add")
    cancelled: list[str] = []
    app.on("task.cancelled", lambda e: cancelled.append(e.task_id))
    caplog.set_level(logging.INFO, logger="castor.manager")
    workflow = castor.chain(add.s(1, 2), add.s(3), add.s(4)).delay()
    assert workflow.cancel() == castor.WorkflowStatus.CANCELLED
    members = [t.id for t in workflow.tasks]
    assert sorted(cancelled) == sorted(members)  # the pending first link and the waiting ones
    lines = _cancelled_lines(caplog)
    for task_id in members:
        assert sum(task_id in line for line in lines) == 1, lines
    assert workflow.cancel() == castor.WorkflowStatus.CANCELLED  # again: ends nothing more
    assert app.cancel(workflow.id) == castor.TaskStatus.CANCELLED
    assert sorted(cancelled) == sorted(members)
