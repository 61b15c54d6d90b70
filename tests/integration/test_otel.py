"""castor.integrations.otel in this process, with the OpenTelemetry SDK's in-memory
exporter: a span per enqueue and per attempt, the trace carried in the task record,
the run a child of the enqueue; failures, batches, eager mode, async tasks; a
broken setup never changes a task's outcome. (tests/process/test_integrations_castord.py
does it through a real castord.)"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import castor
from castor import instrumentation
from castor.errors import ConfigurationError, TaskTimeout
from castor.integrations import otel
from tests import hostile


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    yield tp
    tp.shutdown()


@pytest.fixture
def traced(manager: castor.Manager, provider: TracerProvider) -> castor.Manager:
    otel.instrument(manager, tracer_provider=provider)
    return manager


def spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def one(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = spans(exporter, name)
    assert len(found) == 1, f"{len(found)} spans named {name!r}: {[s.name for s in exporter.get_finished_spans()]}"
    return found[0]


def drain(manager: castor.Manager, mode: str) -> None:
    worker = castor.Worker(manager, mode=mode)
    while worker.step():
        pass


def is_child(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return (child.parent is not None and child.parent.span_id == parent.context.span_id
            and child.context.trace_id == parent.context.trace_id)


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_the_run_continues_the_trace_of_the_enqueue(traced: castor.Manager, provider: TracerProvider,
                                                    exporter: InMemorySpanExporter, mode: str) -> None:
    tracer = provider.get_tracer("test")

    @traced.task(mode=mode, name="add", queue="maths")
    def add(a: int, b: int) -> int:
        with tracer.start_as_current_span("inside the task"):
            return a + b

    with tracer.start_as_current_span("GET /sum"):  # the web request
        task = add.delay(1, 2)
    drain(traced, mode)
    assert task.join(timeout=5) == 3

    request, enqueue = one(exporter, "GET /sum"), one(exporter, "castor.enqueue add")
    run, inside = one(exporter, "castor.run add"), one(exporter, "inside the task")
    assert enqueue.kind == SpanKind.PRODUCER and run.kind == SpanKind.CONSUMER
    assert is_child(enqueue, request) and is_child(run, enqueue) and is_child(inside, run)
    assert dict(enqueue.attributes or {}) == {
        "messaging.system": "castor", "messaging.operation.type": "send", "messaging.operation.name": "enqueue",
        "messaging.destination.name": "maths", "messaging.message.id": task.id, "castor.task_id": task.id,
        "castor.task_name": "add", "castor.queue": "maths", "castor.mode": mode,
    }
    attributes = dict(run.attributes or {})
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["castor.task_id"] == task.id and attributes["castor.attempt"] == 1
    assert attributes["castor.status"] == "success"
    assert run.status.status_code == StatusCode.UNSET
    # The carrier in the record is the enqueue span's W3C context.
    carrier = traced.store.get(task.id).options[otel.CARRIER_KEY]  # type: ignore[union-attr]
    assert carrier["traceparent"].split("-")[1:3] == [
        format(enqueue.context.trace_id, "032x"), format(enqueue.context.span_id, "016x")]


def test_each_failed_attempt_is_an_error_span_under_the_same_enqueue(
        traced: castor.Manager, exporter: InMemorySpanExporter) -> None:
    @traced.task(mode="thread", name="flaky", retries=2, retry_delay=0)
    def flaky() -> None:
        raise ConnectionError("the other side hung up")

    task = flaky.delay()
    drain(traced, "thread")
    assert task.status() == "failed"
    enqueue = one(exporter, "castor.enqueue flaky")
    runs = spans(exporter, "castor.run flaky")
    assert [dict(r.attributes or {})["castor.attempt"] for r in runs] == [1, 2, 3]
    assert [dict(r.attributes or {})["castor.status"] for r in runs] == ["retry", "retry", "failed"]
    for run in runs:
        assert is_child(run, enqueue)
        assert run.status.status_code == StatusCode.ERROR
        assert run.status.description == "builtins.ConnectionError: the other side hung up"
        (event,) = run.events
        assert event.name == "exception"
        assert dict(event.attributes or {})["exception.type"] == "builtins.ConnectionError"
        assert "raise ConnectionError" in str(dict(event.attributes or {})["exception.stacktrace"])


def test_a_cancelled_task_is_no_error(traced: castor.Manager, exporter: InMemorySpanExporter) -> None:
    started, release = threading.Event(), threading.Event()

    @traced.task(mode="thread", name="waits")
    def waits() -> None:
        started.set()
        while not castor.cancelled():
            release.wait(0.01)
        raise castor.TaskCancelled("stopping, as asked")

    task = waits.delay()
    worker = castor.Worker(traced, mode="thread")
    runner = threading.Thread(target=worker.step)
    runner.start()
    assert started.wait(10)
    task.cancel()
    worker.check_cancellations()  # as the housekeeping thread would (step() starts none)
    runner.join(10)
    assert task.status() == "cancelled"
    run = one(exporter, "castor.run waits")
    assert dict(run.attributes or {})["castor.status"] == "cancelled"
    assert run.status.status_code == StatusCode.UNSET and not run.events


@pytest.mark.parametrize("how", ["map", "enqueue_many"])
def test_batches_give_each_task_its_own_enqueue_span_and_carrier(
        traced: castor.Manager, exporter: InMemorySpanExporter, how: str) -> None:
    @traced.task(mode="thread", name="double")
    def double(x: int) -> int:
        return 2 * x

    tasks = double.map([(1,), (2,), (3,)]) if how == "map" else \
        traced.enqueue_many([double.s(1), double.s(2), double.s(3)])
    drain(traced, "thread")
    assert [t.join(timeout=5) for t in tasks] == [2, 4, 6]
    enqueues = {dict(s.attributes or {})["castor.task_id"]: s for s in spans(exporter, "castor.enqueue double")}
    runs = {dict(s.attributes or {})["castor.task_id"]: s for s in spans(exporter, "castor.run double")}
    assert set(enqueues) == set(runs) == {t.id for t in tasks}
    for task_id, run in runs.items():
        assert is_child(run, enqueues[task_id])
        assert dict(enqueues[task_id].attributes or {})["messaging.batch.message_count"] == 3
    carriers = [traced.store.get(t.id).options[otel.CARRIER_KEY]["traceparent"] for t in tasks]  # type: ignore[union-attr]
    assert len(set(carriers)) == 3


def test_per_call_options_keep_the_carrier_beside_them(traced: castor.Manager,
                                                       exporter: InMemorySpanExporter) -> None:
    @traced.task(mode="thread", name="later", retries=1)
    def later() -> str:
        return "ok"

    task = later.apply_async(countdown=0, timeout=30, priority=3)
    options = traced.store.get(task.id).options  # type: ignore[union-attr]
    assert options["timeout"] == 30 and options["retries"] == 1 and "traceparent" in options[otel.CARRIER_KEY]
    # The task's shared defaults were not touched: a plain .delay() starts from them again.
    assert otel.CARRIER_KEY not in later.options.stored


def test_a_unique_twin_is_named_on_the_enqueue_span(traced: castor.Manager, exporter: InMemorySpanExporter) -> None:
    @traced.task(mode="thread", name="once", unique=True)
    def once() -> str:
        return "once"

    first, second = once.delay(), once.delay()
    assert first.id == second.id
    plain, twin = spans(exporter, "castor.enqueue once")
    assert "castor.existing_task" not in dict(plain.attributes or {})
    assert dict(twin.attributes or {})["castor.existing_task"] is True
    assert dict(twin.attributes or {})["castor.task_id"] == first.id


def test_eager_mode_runs_under_the_enqueue(db_path: str, provider: TracerProvider,
                                           exporter: InMemorySpanExporter) -> None:
    manager = castor.Manager(db_path, eager=True)
    try:
        otel.instrument(manager, tracer_provider=provider)

        @manager.task(mode="thread", name="now")
        def now() -> str:
            return "done"

        assert now.delay().join(timeout=5) == "done"
        assert is_child(one(exporter, "castor.run now"), one(exporter, "castor.enqueue now"))
    finally:
        manager.close()


def test_an_async_task_runs_inside_its_span(traced: castor.Manager, provider: TracerProvider,
                                            exporter: InMemorySpanExporter) -> None:
    tracer = provider.get_tracer("test")

    @traced.task(mode="thread", name="fetch")
    async def fetch() -> str:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("awaited"):
            return "fetched"

    task = fetch.delay()
    worker = castor.Worker(traced, mode="thread")
    worker.run(max_tasks=1)  # the pool: async tasks on its shared event loop
    assert task.join(timeout=5) == "fetched"
    assert is_child(one(exporter, "awaited"), one(exporter, "castor.run fetch"))


def test_uninstrumented_managers_carry_nothing(manager: castor.Manager, provider: TracerProvider,
                                               exporter: InMemorySpanExporter) -> None:
    @manager.task(mode="thread", name="plain")
    def plain() -> str:
        return "plain"

    assert manager.instruments is None
    before = plain.delay()
    otel.instrument(manager, tracer_provider=provider)
    assert otel.is_instrumented(manager)
    otel.instrument(manager, tracer_provider=provider)  # again: replaces, does not double
    traced_task = plain.delay()
    otel.uninstrument(manager)
    after = plain.delay()
    assert manager.instruments is None and not otel.is_instrumented(manager)
    assert len(spans(exporter, "castor.enqueue plain")) == 1
    for task in (before, after):
        assert otel.CARRIER_KEY not in manager.store.get(task.id).options  # type: ignore[union-attr]
    assert otel.CARRIER_KEY in manager.store.get(traced_task.id).options  # type: ignore[union-attr]
    drain(manager, "thread")
    assert not spans(exporter, "castor.run plain")  # uninstrumented again by the time they ran


def test_without_a_recording_tracer_no_carrier_is_stored(manager: castor.Manager) -> None:
    @manager.task(mode="thread", name="plain")
    def plain() -> str:
        return "plain"

    otel.instrument(manager, tracer_provider=trace.NoOpTracerProvider())
    task = plain.delay()
    assert otel.CARRIER_KEY not in manager.store.get(task.id).options  # type: ignore[union-attr]
    drain(manager, "thread")
    assert task.join(timeout=5) == "plain"


def test_a_record_without_a_carrier_gets_a_root_span(manager: castor.Manager, provider: TracerProvider,
                                                     exporter: InMemorySpanExporter) -> None:
    @manager.task(mode="thread", name="plain")
    def plain() -> str:
        return "plain"

    task = plain.delay()  # enqueued by a program that does not trace
    otel.instrument(manager, tracer_provider=provider)
    drain(manager, "thread")
    assert task.join(timeout=5) == "plain"
    assert one(exporter, "castor.run plain").parent is None


class RaisingProcessor(SpanProcessor):
    def __init__(self, when: str):
        self.when = when

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.when == "start":
            raise RuntimeError("a span processor that fails on start")

    def on_end(self, span: ReadableSpan) -> None:
        if self.when == "end":
            raise RuntimeError("a span processor that fails on end")


class RaisingPropagator(TextMapPropagator):
    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("a propagator that fails")

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        raise RuntimeError("a propagator that fails")

    @property
    def fields(self) -> set[str]:
        return set()


@pytest.mark.parametrize("broken", ["start", "end", "propagator"])
@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_broken_setup_changes_no_outcome(manager: castor.Manager, caplog: pytest.LogCaptureFixture,
                                           broken: str, mode: str) -> None:
    tp = TracerProvider()
    tp.add_span_processor(RaisingProcessor(broken))
    otel.instrument(manager, tracer_provider=tp, propagator=RaisingPropagator() if broken == "propagator" else None)

    @manager.task(mode=mode, name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @manager.task(mode=mode, name="boom", retries=1, retry_delay=0)
    def boom() -> None:
        raise ValueError("the task's own failure")

    with caplog.at_level(logging.WARNING, logger="castor.instrumentation"):
        ok, batch, failing = add.delay(1, 2), add.map([(1, 1), (2, 2)]), boom.delay()
        drain(manager, mode)
    assert ok.join(timeout=5) == 3 and [t.join(timeout=5) for t in batch] == [2, 4]
    assert failing.status() == "failed" and failing.attempts == 2
    assert failing.error["message"] == "the task's own failure"  # type: ignore[index]
    hooks = {r.msg["hook"] for r in caplog.records if r.name == "castor.instrumentation"}  # type: ignore[index]
    # A failing inject leaves no carrier: the runs are root spans, extract is never called.
    assert hooks == {"start": {"enqueuing", "running"}, "end": {"enqueued", "ran"}, "propagator": {"enqueuing"}}[broken]
    tp.shutdown()


def test_the_task_context_is_restored_after_each_run(traced: castor.Manager) -> None:
    @traced.task(mode="process", name="boom")
    def boom() -> None:
        raise ValueError("no")

    boom.delay()
    outer = trace.get_current_span()
    drain(traced, "process")  # runs in this very thread
    assert trace.get_current_span() is outer


@pytest.mark.parametrize("kind", sorted(hostile.KINDS))
def test_hostile_exceptions_end_their_span_as_errors(traced: castor.Manager, exporter: InMemorySpanExporter,
                                                     kind: str) -> None:
    @traced.task(mode="thread", name="hostile")
    def hostile_task(k: str) -> None:
        hostile.raise_kind(k)

    @traced.task(mode="thread", name="after")
    def after() -> str:
        return "still working"

    task, next_one = hostile_task.delay(kind), after.delay()
    drain(traced, "thread")
    assert task.status() == "failed" and next_one.join(timeout=5) == "still working"
    run = one(exporter, "castor.run hostile")
    assert run.status.status_code == StatusCode.ERROR
    assert dict(run.events[0].attributes or {})["exception.type"] == task.error["type"]  # type: ignore[index]


def test_a_stopped_attempt_ends_its_span(traced: castor.Manager, exporter: InMemorySpanExporter) -> None:
    """What castord does to a process task past its timeout (castord/children.py):
    from another thread, end the running attempt's span as a failure."""
    started, release = threading.Event(), threading.Event()

    @traced.task(mode="thread", name="stuck", timeout=60)
    def stuck() -> str:
        started.set()
        release.wait(30)
        return "too late"

    task = stuck.delay()
    worker = castor.Worker(traced, mode="thread")
    runner = threading.Thread(target=worker.step)
    runner.start()
    try:
        assert started.wait(10)
        (ctx,) = list(worker.contexts.values())
        instrumentation.stopped(traced, ctx.record, TaskTimeout("stuck ran past its timeout of 60 s"))
        run = one(exporter, "castor.run stuck")
        assert run.status.status_code == StatusCode.ERROR
        assert dict(run.attributes or {})["castor.status"] == "failed"
        assert run.status.description == "castor.errors.TaskTimeout: stuck ran past its timeout of 60 s"
    finally:
        release.set()
        runner.join(10)
    assert task.join(timeout=5) == "too late"
    assert len(spans(exporter, "castor.run stuck")) == 1  # ended once, not again as it returned


def test_a_custom_propagator_is_used(manager: castor.Manager, provider: TracerProvider,
                                     exporter: InMemorySpanExporter) -> None:
    class Recording(TraceContextTextMapPropagator):
        injected = 0

        def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
            Recording.injected += 1
            super().inject(carrier, context) if setter is None else super().inject(carrier, context, setter)

    otel.instrument(manager, tracer_provider=provider, propagator=Recording())

    @manager.task(mode="thread", name="plain")
    def plain() -> str:
        return "plain"

    plain.delay()
    drain(manager, "thread")
    assert Recording.injected == 1
    assert is_child(one(exporter, "castor.run plain"), one(exporter, "castor.enqueue plain"))


def test_flush_all_flushes_the_sdk(manager: castor.Manager, exporter: InMemorySpanExporter) -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    tp = TracerProvider()
    tp.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=60_000))
    otel.instrument(manager, tracer_provider=tp)

    @manager.task(mode="thread", name="plain")
    def plain() -> str:
        return "plain"

    plain.delay()
    assert not exporter.get_finished_spans()  # still in the batch
    instrumentation.flush_all(timeout=5)
    assert [s.name for s in exporter.get_finished_spans()] == ["castor.enqueue plain"]
    tp.shutdown()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"tracer_provider": "jaeger"}, "tracer_provider must be an OpenTelemetry TracerProvider (with get_tracer()), "
                                    "not str"),
    ({"propagator": object()}, "propagator must be an OpenTelemetry TextMapPropagator (with inject() and "
                               "extract()), not object"),
])
def test_bad_arguments_get_one_clear_error(manager: castor.Manager, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        otel.instrument(manager, **kwargs)
    assert str(err.value) == message
    assert manager.instruments is None


def test_instrumenting_something_else_than_a_manager_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as err:
        otel.instrument("app.db")
    assert str(err.value) == "castor.integrations.otel.instrument takes a castor.Manager, not str"


def test_without_opentelemetry_the_import_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "castor.integrations.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if not installed
    with pytest.raises(ImportError) as err:
        import castor.integrations.otel  # noqa: F401
    assert "castor.integrations.otel needs the OpenTelemetry API: pip install 'castor[otel]'" in str(err.value)
