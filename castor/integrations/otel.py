"""OpenTelemetry tracing: a span for each enqueue and each run of a task.

    castor.integrations.otel.instrument(manager)

`castor.enqueue <task>` (kind PRODUCER) wraps the write of each new task, as a
child of whatever span is current (a web request's, say); the trace context
travels in the task's record (its options column, under "trace_context", as the
propagator's headers: W3C traceparent/tracestate by default), so the worker's
`castor.run <task>` (kind CONSUMER), one per attempt, continues that trace. The
run span is current while the task's function runs: spans the task makes are
its children. Instrument the Manager in the module castord loads (APP), and the
workers are instrumented too.

Needs opentelemetry-api (`pip install 'castor[otel]'`); the application sets up
the SDK (a TracerProvider and its exporters) as for anything else it traces.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(
        "castor.integrations.otel needs the OpenTelemetry API: pip install 'castor[otel]' "
        f"(and an SDK, e.g. opentelemetry-sdk, to export spans): {exc}") from exc

from castor.errors import ConfigurationError
from castor.execution import Outcome
from castor.instrumentation import Instrument, install, installed, uninstall
from castor.states import TaskStatus
from castor.store.base import NewTask, TaskRecord

# Where the trace context travels in a task record's options.
CARRIER_KEY = "trace_context"
NAME = "opentelemetry"
# A span status's description is the exception's type and message, cut to this.
STATUS_LIMIT = 1024
_FAILED = (TaskStatus.FAILED, TaskStatus.PENDING)  # PENDING after a run: a failed attempt to retry


def instrument(manager: Any, *, tracer_provider: Any = None, propagator: Any = None) -> None:
    """Trace `manager`'s enqueues and runs. `tracer_provider`: the global one if
    None; `propagator`: the global text-map propagator (read at each use) if None.
    Calling it again replaces the earlier setup."""
    if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
        raise ConfigurationError(
            f"tracer_provider must be an OpenTelemetry TracerProvider (with get_tracer()), "
            f"not {type(tracer_provider).__name__}")
    if propagator is not None and not all(callable(getattr(propagator, m, None)) for m in ("inject", "extract")):
        raise ConfigurationError(
            f"propagator must be an OpenTelemetry TextMapPropagator (with inject() and extract()), "
            f"not {type(propagator).__name__}")
    install(manager, Tracing(tracer_provider, propagator), "castor.integrations.otel.instrument")


def uninstrument(manager: Any) -> None:
    """Stop tracing `manager` (new enqueues and runs make no more spans)."""
    uninstall(manager, NAME)


def is_instrumented(manager: Any) -> bool:
    return installed(manager, NAME) is not None


class Tracing(Instrument):
    name = NAME

    def __init__(self, tracer_provider: Any = None, propagator: Any = None):
        from castor import __version__

        self.tracer_provider = tracer_provider
        self.tracer = trace.get_tracer("castor", __version__, tracer_provider=tracer_provider)
        self._propagator = propagator

    @property
    def propagator(self) -> Any:
        # The global one is looked up at each use: an app may set it after instrumenting.
        return self._propagator if self._propagator is not None else propagate.get_global_textmap()

    # -- enqueue ---------------------------------------------------------------

    def enqueuing(self, tasks: list[NewTask]) -> list[Any]:
        spans: list[Any] = []
        batch = {"messaging.batch.message_count": len(tasks)} if len(tasks) > 1 else {}
        try:
            for task in tasks:
                span = self.tracer.start_span(f"castor.enqueue {task.name}", kind=SpanKind.PRODUCER, attributes={
                    **_common(task.id, task.name, task.queue, task.mode),
                    "messaging.operation.type": "send", "messaging.operation.name": "enqueue", **batch,
                })
                spans.append(span)
                carrier: dict[str, str] = {}
                self.propagator.inject(carrier, context=trace.set_span_in_context(span))
                if carrier:  # empty when nothing samples this trace, or no SDK is set up
                    task.options = {**task.options, CARRIER_KEY: carrier}  # a copy: the defaults are shared
        except BaseException:
            self.enqueued(spans, tasks, None, None)  # end those begun; enqueued() gets no state
            raise
        return spans

    def enqueued(self, state: list[Any] | None, tasks: list[NewTask], ids: list[str] | None,
                 error: BaseException | None) -> None:
        failure: BaseException | None = None
        for i, span in enumerate(state or ()):
            try:  # each span ends, whatever another one's processors raise
                try:
                    if error is not None:
                        span.record_exception(error)  # castor's own store error, not task code's
                        span.set_status(Status(StatusCode.ERROR, _cut(f"{type(error).__name__}: {error}")))
                    elif ids is not None and ids[i] != tasks[i].id:
                        # A unique twin or a cached success answered: no new task was written.
                        span.set_attributes({"castor.task_id": ids[i], "messaging.message.id": ids[i],
                                             "castor.existing_task": True})
                finally:
                    span.end()
            except BaseException as exc:  # noqa: BLE001 - reported below, once all have ended
                failure = failure or exc
        if failure is not None:
            raise failure

    # -- run -------------------------------------------------------------------

    def running(self, record: TaskRecord) -> tuple[Any, Any, int]:
        carrier = record.options.get(CARRIER_KEY)
        parent = self.propagator.extract(carrier) if isinstance(carrier, dict) else None
        span = self.tracer.start_span(f"castor.run {record.name}", context=parent, kind=SpanKind.CONSUMER,
                                      attributes={
                                          **_common(record.id, record.name, record.queue, record.mode),
                                          "messaging.operation.type": "process", "messaging.operation.name": "run",
                                          "castor.attempt": record.attempts,
                                      })
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token, threading.get_ident()

    def ran(self, state: tuple[Any, Any, int] | None, record: TaskRecord, outcome: Outcome) -> None:
        if state is None:
            return
        span, token, thread_id = state
        try:
            _record_outcome(span, outcome)
        finally:
            try:
                span.end()
            finally:
                # castord may end a process task's span from its timer thread, where
                # the token means nothing (the child leaves right after).
                if threading.get_ident() == thread_id:
                    otel_context.detach(token)

    def flush(self, timeout: float) -> None:
        provider = self.tracer_provider or trace.get_tracer_provider()
        force_flush = getattr(provider, "force_flush", None)  # the SDK's; the API's no-op has none
        if callable(force_flush):
            force_flush(int(timeout * 1000))


def _common(task_id: str, name: str, queue: str, mode: str) -> dict[str, Any]:
    return {
        "messaging.system": "castor", "messaging.destination.name": queue, "messaging.message.id": task_id,
        "castor.task_id": task_id, "castor.task_name": name, "castor.queue": queue, "castor.mode": mode,
    }


def _record_outcome(span: Any, outcome: Outcome) -> None:
    status = outcome.status
    span.set_attribute("castor.status", "retry" if status == TaskStatus.PENDING else str(status))
    if status == TaskStatus.PENDING and outcome.retry_in is not None:
        span.set_attribute("castor.retry_in_s", outcome.retry_in)
    error = outcome.error
    if status not in _FAILED or error is None:
        return
    # From castor's record of the exception (castor/failures.py): plain strings,
    # already built without running the exception's own code again, which may raise.
    event = {"exception.type": error.get("type"), "exception.message": error.get("message"),
             "exception.stacktrace": error.get("traceback")}
    span.add_event("exception", {k: v for k, v in event.items() if isinstance(v, str)})
    span.set_status(Status(StatusCode.ERROR, _cut(f"{error.get('type')}: {error.get('message')}")))


def _cut(text: str) -> str:
    return text if len(text) <= STATUS_LIMIT else text[:STATUS_LIMIT] + "…"
