"""OpenTelemetry and Sentry through a real castord: the app module instruments its
Manager, so castord's children (which import it) are instrumented too. The app's
exporter writes each finished span, and its Sentry transport each event, as JSON
lines to a file this test reads back; the test enqueues through the same app."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.process.test_castord import Castord

APP = textwrap.dedent('''
    import json, os
    import castor
    import sentry_sdk
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult)
    from sentry_sdk.transport import Transport
    from castor.integrations import otel, sentry as castor_sentry

    def append(path, lines):
        with open(path, "a") as f:  # one write per batch: O_APPEND keeps processes' lines whole
            f.write("".join(json.dumps(line) + "\\n" for line in lines))

    class JsonLines(SpanExporter):
        def export(self, spans):
            append(os.environ["CASTOR_TEST_SPANS"], [{
                "name": s.name, "kind": s.kind.name, "status": s.status.status_code.name,
                "trace_id": format(s.context.trace_id, "032x"), "span_id": format(s.context.span_id, "016x"),
                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                "attributes": dict(s.attributes), "pid": os.getpid(),
            } for s in spans])
            return SpanExportResult.SUCCESS

    class EventFile(Transport):
        def capture_envelope(self, envelope):
            append(os.environ["CASTOR_TEST_EVENTS"], [
                {**item.payload.json, "pid": os.getpid()} for item in envelope.items if item.type == "event"])

    provider = TracerProvider()
    if os.environ.get("CASTOR_TEST_BATCH"):  # as in production: spans wait in a buffer
        provider.add_span_processor(BatchSpanProcessor(JsonLines(), schedule_delay_millis=600_000))
    else:
        provider.add_span_processor(SimpleSpanProcessor(JsonLines()))
    sentry_sdk.init(dsn="https://public@sentry.invalid/1", transport=EventFile())

    manager = castor.Manager(os.environ["CASTOR_TEST_DB"])
    otel.instrument(manager, tracer_provider=provider)
    castor_sentry.instrument(manager)

    @manager.task(mode="process", name="padd")
    def padd(a, b):
        with provider.get_tracer("app").start_as_current_span("padd body"):
            return a + b

    @manager.task(mode="thread", name="tadd")
    def tadd(a, b):
        return a + b

    @manager.task(mode="process", name="pboom", retries=1, retry_delay=0)
    def pboom(message):
        raise ValueError(message)

    @manager.task(mode="thread", name="tboom")
    def tboom(message):
        raise KeyError(message)

    @manager.task(mode="process", name="pslow", timeout=0.5)
    def pslow():
        import time
        time.sleep(60)  # castord stops the child at the timeout

    @manager.task(mode="process", name="pfork")
    def pfork():
        child = os.fork()
        if child == 0:
            return "from the fork"  # returns from the task too: castor makes it leave at once
        os.waitpid(child, 0)
        return "from the worker"
''')


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def traced(app_dir: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Any]:
    """castord on the traced app; the test's own process imports the app too, to enqueue."""
    spans, events = app_dir / "spans.jsonl", app_dir / "events.jsonl"
    monkeypatch.setenv("CASTOR_TEST_SPANS", str(spans))
    monkeypatch.setenv("CASTOR_TEST_EVENTS", str(events))
    if getattr(request, "param", None) == "batch":
        monkeypatch.setenv("CASTOR_TEST_BATCH", "1")
    (app_dir / "tracedapp.py").write_text(APP)
    sys.modules.pop("tracedapp", None)
    import tracedapp  # noqa: PLC0415 - written just above

    daemon = Castord(app_dir)
    daemon.start("--workers", "1", "--threads", "2", app="tracedapp:manager")
    daemon.wait_note("READY=1")
    try:
        yield SimpleNamespace(app=tracedapp, spans=spans, events=events, daemon=daemon)
    finally:
        daemon.stop()
        import sentry_sdk  # the app's init, in this process too

        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)
        tracedapp.provider.shutdown()
        tracedapp.manager.close()
        sys.modules.pop("tracedapp", None)


@pytest.mark.timeout(90)
def test_castords_children_continue_the_enqueuers_trace(traced: Any) -> None:
    app, spans_file = traced.app, traced.spans
    tracer = app.provider.get_tracer("test")
    with tracer.start_as_current_span("POST /jobs") as request:
        tasks = [app.padd.delay(1, 2), app.tadd.delay(3, 4), *app.padd.map([(5, 6), (7, 8)])]
        failing = app.pboom.delay("no luck")
    assert [t.join(timeout=30) for t in tasks] == [3, 7, 11, 15]
    with pytest.raises(Exception, match="no luck"):  # noqa: B017 - TaskFailed or the task's own, rebuilt
        failing.join(timeout=30)

    spans = read_lines(spans_file)  # each run span is exported before its outcome is written
    trace_id = format(request.get_span_context().trace_id, "032x")
    enqueues = {s["attributes"]["castor.task_id"]: s for s in spans if s["name"].startswith("castor.enqueue")}
    runs = [s for s in spans if s["name"].startswith("castor.run")]
    assert set(enqueues) == {t.id for t in [*tasks, failing]}
    assert all(e["pid"] == os.getpid() and e["trace_id"] == trace_id for e in enqueues.values())
    for run in runs:
        enqueue = enqueues[run["attributes"]["castor.task_id"]]
        assert run["kind"] == "CONSUMER" and run["pid"] != os.getpid()  # ran in a castord child
        assert run["trace_id"] == trace_id and run["parent_id"] == enqueue["span_id"]
    by_task = {t.id: [r for r in runs if r["attributes"]["castor.task_id"] == t.id] for t in [*tasks, failing]}
    assert [len(r) for r in by_task.values()] == [1, 1, 1, 1, 2]  # the failing one: two attempts
    assert {r["attributes"]["castor.mode"] for r in runs} == {"process", "thread"}
    assert len({r["pid"] for r in runs}) == 2  # the process worker and the thread host
    assert [(r["attributes"]["castor.attempt"], r["status"], r["attributes"]["castor.status"])
            for r in by_task[failing.id]] == [(1, "ERROR", "retry"), (2, "ERROR", "failed")]
    bodies = [s for s in spans if s["name"] == "padd body"]  # spans the task made are the run's children
    assert sorted(b["parent_id"] for b in bodies) == sorted(r["span_id"] for r in runs if r["name"] == "castor.run padd")


@pytest.mark.timeout(90)
def test_castords_children_report_final_failures_to_sentry(traced: Any) -> None:
    app, events_file = traced.app, traced.events
    process_failure, thread_failure = app.pboom.delay("card declined"), app.tboom.delay("no such key")
    fine = app.padd.delay(1, 1)
    assert fine.join(timeout=30) == 2
    for task in (process_failure, thread_failure):
        with pytest.raises(Exception):  # noqa: B017 - rebuilt from the record: TaskFailed or the task's own
            task.join(timeout=30)

    events = read_lines(events_file)  # each event is sent before its outcome is written
    by_task = {task.id: [e for e in events if e["tags"].get("castor.task_id") == task.id]
               for task in (process_failure, thread_failure, fine)}
    (process_event,), (thread_event,), none = by_task.values()  # pboom's first attempt was retried: not reported
    assert none == [] and len(events) == 2
    assert process_event["tags"] == {"castor.task_id": process_failure.id, "castor.task_name": "pboom",
                                     "castor.queue": "default", "castor.attempt": "2"}
    assert process_event["exception"]["values"][0]["type"] == "ValueError"
    assert thread_event["exception"]["values"][0]["type"] == "KeyError"
    assert process_event["pid"] != thread_event["pid"] and os.getpid() not in (process_event["pid"],
                                                                              thread_event["pid"])


@pytest.mark.timeout(90)
def test_a_fork_of_a_task_ends_no_span_of_its_own(traced: Any) -> None:
    app, spans_file = traced.app, traced.spans
    task = app.pfork.delay()
    assert task.join(timeout=30) == "from the worker"
    assert app.padd.delay(1, 1).join(timeout=30) == 2  # the worker goes on
    (run,) = [s for s in read_lines(spans_file) if s["name"] == "castor.run pfork"]
    assert run["attributes"]["castor.status"] == "success"


@pytest.mark.timeout(90)
def test_a_process_task_stopped_at_its_timeout_ends_its_span_and_is_reported(traced: Any) -> None:
    task = traced.app.pslow.delay()
    with pytest.raises(Exception, match="timeout"):  # noqa: B017 - TaskFailed or TaskTimeout, rebuilt
        task.join(timeout=30)
    (run,) = [s for s in read_lines(traced.spans) if s["name"] == "castor.run pslow"]
    assert run["status"] == "ERROR" and run["attributes"]["castor.status"] == "failed"
    (event,) = read_lines(traced.events)
    assert event["tags"]["castor.task_id"] == task.id
    assert event["exception"]["values"][0]["type"] == "TaskTimeout"


@pytest.mark.parametrize("traced", ["batch"], indirect=True)
@pytest.mark.timeout(90)
def test_spans_still_buffered_are_sent_as_castord_stops(traced: Any) -> None:
    assert traced.app.padd.delay(1, 2).join(timeout=30) == 3
    assert not [s for s in read_lines(traced.spans) if s["pid"] != os.getpid()]  # in the children's buffers
    traced.daemon.signal(signal.SIGTERM)  # drain: the children leave with os._exit
    assert traced.daemon.wait_exit(timeout=30) == 0
    names = {s["name"] for s in read_lines(traced.spans) if s["pid"] != os.getpid()}
    assert "castor.run padd" in names
