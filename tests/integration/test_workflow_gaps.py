"""Workflows meeting the rest of castor (issue 16): a chord inside a chain fails as a chord,
forget() and bulk retries say why they leave members, and a workflow's enqueue goes
through the same instruments and hooks as .delay(); on the beaver file and on PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import castor
from castor import instrumentation
from castor.integrations import otel
from castor.store import NewTask
from tests.integration.test_workflows import _define, drain, task

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app(request: pytest.FixtureRequest, db_path: str):
    url = db_path if request.param == "sqlite" else str(request.getfixturevalue("postgres_db_url"))
    manager = castor.Manager(url)
    _define(manager)  # test_workflows.py's tasks
    yield manager
    manager.close()


# -- 1. a chord inside a chain ------------------------------------------------------------


def test_a_chord_inside_a_chain_that_fails_raises_chord_failed_naming_its_failed_members(app) -> None:
    add, boom, total = task(app, "add"), task(app, "boom"), task(app, "total")
    workflow = castor.chain(add.s(1, 2), castor.chord([boom.s(), add.s(1), boom.s()], total.s()), add.s(1)).delay()
    drain(app)
    with pytest.raises(castor.ChordFailed) as failed:
        workflow.join(timeout=5)
    header = workflow.steps[1]
    assert [(m.id, m.name, m.error_type) for m in failed.value.failed] == [
        (header[0].id, "boom", "builtins.KeyError"), (header[2].id, "boom", "builtins.KeyError")]
    assert failed.value.workflow_id == workflow.id and "2 of its 3 members failed" in str(failed.value)
    assert [t.status() for t in (workflow.steps[2][0], workflow.last)] == ["cancelled", "cancelled"]
    last = castor.chain(add.s(1, 2), castor.chord([boom.s(), add.s(1)], total.s())).delay()  # the chain's end
    drain(app)
    with pytest.raises(castor.ChordFailed):
        last.join(timeout=5)


def test_a_group_ending_a_chain_still_raises_group_failed(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    workflow = castor.chain(add.s(1, 2), castor.group(boom.s(), add.s(1))).delay()
    drain(app)
    with pytest.raises(castor.GroupFailed) as failed:
        workflow.join(timeout=5)
    assert type(failed.value) is castor.GroupFailed  # nothing came after it to call back
    assert [m.id for m in failed.value.failed] == [workflow.tasks[1].id]


# -- 2. forget() ----------------------------------------------------------------------------


def test_forget_of_a_member_of_a_running_workflow_says_why_it_stays(app) -> None:
    add, nap = task(app, "add"), task(app, "nap")
    workflow = castor.chain(add.s(1, 2), nap.s(0)).delay()
    first, second = workflow.tasks
    claimed = app.store.claim_task(first.id, "test", lease=30.0, now=time.time())
    assert claimed is not None
    castor.Worker(app, mode="thread", owner="test").run_claimed(claimed)  # the first link done, the second pending
    assert (first.status(), workflow.status()) == ("success", "running")
    with pytest.raises(castor.ConfigurationError, match=f"member of workflow {workflow.id}, which is still running"):
        first.forget()
    with pytest.raises(castor.ConfigurationError, match=f"member of workflow {workflow.id}"):
        second.forget()  # not finished either
    assert first.join(0) == 3  # kept: its successor reads it
    drain(app)
    assert workflow.join(timeout=5) == 3
    first.forget()  # the workflow has ended: its members go as any finished task
    assert app.get(first.id) is None


def test_forget_of_an_unfinished_task_is_refused_and_of_a_gone_one_does_nothing(app) -> None:
    add = task(app, "add")
    pending = add.delay(1, 2)
    with pytest.raises(castor.ConfigurationError, match=f"task {pending.id} is pending: forget"):
        pending.forget()
    assert pending.status() == "pending"
    drain(app)
    pending.forget()
    assert app.get(pending.id) is None
    pending.forget()  # gone already: nothing to do, as Celery's forget


# -- 3. bulk retry --------------------------------------------------------------------------


def test_retry_failed_counts_the_workflow_members_it_leaves(app) -> None:
    add, boom = task(app, "add"), task(app, "boom")
    castor.chain(boom.s(), add.s(1)).delay()
    castor.group(boom.s(1), boom.s(2)).delay()
    plain = boom.delay()
    drain(app)
    retried = app.retry_failed()
    assert [t.id for t in retried] == [plain.id]
    assert retried.skipped_members == 3
    assert "3 workflow members left failed" in retried.summary("failed")
    assert app.retry_failed(name="add").skipped_members == 0  # the chain's add was cancelled, not failed
    assert app.retry_failed(status="cancelled", name="add").skipped_members == 1


# -- 4. instruments and hooks ---------------------------------------------------------------


class Recording(instrumentation.Instrument):
    """An instrument that writes down what it saw, and marks each task's options as an
    integration's carrier does."""

    name = "recording"

    def __init__(self) -> None:
        self.before: list[list[str]] = []
        self.after: list[tuple[list[str], list[str] | None]] = []

    def enqueuing(self, tasks: list[NewTask]) -> Any:
        self.before.append([t.id for t in tasks])
        for t in tasks:
            t.options = {**t.options, "seen_by": "recording"}
        return len(tasks)

    def enqueued(self, state: Any, tasks: list[NewTask], ids: list[str] | None,
                 error: BaseException | None) -> None:
        assert state == len(tasks)
        self.after.append(([t.id for t in tasks], ids))


def test_every_workflow_member_goes_through_the_instruments(app) -> None:
    add, boom, report, total = task(app, "add"), task(app, "boom"), task(app, "report"), task(app, "total")
    recording = Recording()
    instrumentation.install(app, recording, "test")
    chained = castor.chain(add.s(1, 2), add.s(3)).apply_async(link_error=report.s())
    grouped = castor.group(add.s(1, 1), add.s(2, 2)).delay()
    chorded = castor.chord([add.s(1, 1)], total.s()).delay()
    linked = boom.apply_async((1,), link=add.s(1))
    workflows = [chained, grouped, chorded, linked.workflow]
    members = [[*(t.id for t in w.tasks), *([w.handler.id] if w.handler is not None else [])] for w in workflows]
    assert recording.before == members
    assert recording.after == [(ids, ids) for ids in members]
    assert {app.store.get(i).options.get("seen_by") for ids in members for i in ids} == {"recording"}
    drain(app)
    assert chained.join(timeout=5) == 6


def test_a_chains_members_each_get_an_enqueue_span_and_run_in_its_trace(app) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        otel.instrument(app, tracer_provider=provider)
        add = task(app, "add")
        workflow = castor.chain(add.s(1, 2), add.s(3)).delay()
        drain(app)
        assert workflow.join(timeout=5) == 6
        spans = exporter.get_finished_spans()
        enqueues = {s.attributes["messaging.message.id"]: s for s in spans if s.name == "castor.enqueue add"}
        assert set(enqueues) == {t.id for t in workflow.tasks}
        runs = [s for s in spans if s.name == "castor.run add"]
        assert sorted(s.parent.span_id for s in runs) == sorted(s.context.span_id for s in enqueues.values())
    finally:
        provider.shutdown()


def test_task_enqueued_fires_for_each_member_as_it_is_stored(app) -> None:
    add = task(app, "add")
    events: list[tuple[str, str]] = []
    app.on("task.enqueued", lambda event: events.append((event.task_id, event.record.status)))
    workflow = castor.chain(add.s(1, 2), castor.group(add.s(1), add.s(2))).delay()
    assert events == [(t.id, s) for t, s in zip(workflow.tasks, ("pending", "waiting", "waiting"), strict=True)]
