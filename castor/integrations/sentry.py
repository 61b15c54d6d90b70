"""Sentry error reporting: a task's failure reported with its id, name, queue,
attempt and arguments.

    sentry_sdk.init(dsn=...)
    castor.integrations.sentry.instrument(manager)

What is reported: a task's final failure (its last attempt failed, retries used
up, or it failed for good), at level "error"; with `report_retries=True`, each
failed attempt that will be retried too, at level "warning" (the default
reports once per task, as Sentry's RQ integration does). Cancellations and
successes are not reported. Each run gets its own isolation scope with the
tags castor.task_id, castor.task_name, castor.queue and castor.attempt, so
whatever else the task reports to Sentry while it runs carries them too.

Arguments go in the event's extra "castor-task" (args, kwargs), where
`before_send` and Sentry's data scrubbing see them. They are sent when
`include_args=True`, never when False, and by default as Sentry's own
integrations do: when `send_default_pii=True` (or the `data_collection`
option's "queues"), else replaced by "[Filtered]".

Needs sentry-sdk (`pip install 'castor[sentry]'`). Instrument the Manager in
the module castord loads (APP), after sentry_sdk.init, so workers report too.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

try:
    import sentry_sdk
    from sentry_sdk.integrations.logging import ignore_logger
    from sentry_sdk.scope import should_send_default_pii
    from sentry_sdk.utils import event_from_exception
except ImportError as exc:  # pragma: no cover - exercised by a test that hides the package
    raise ImportError(f"castor.integrations.sentry needs sentry-sdk: pip install 'castor[sentry]': {exc}") from exc

from castor.errors import ConfigurationError, TaskTimeout
from castor.execution import Outcome
from castor.failures import safe_text
from castor.instrumentation import Instrument, install, installed, uninstall
from castor.serialization import get_serializer
from castor.states import TaskStatus
from castor.store.base import TaskRecord

NAME = "sentry"
FILTERED = "[Filtered]"  # what Sentry's own integrations write in place of withheld data
# castor logs each failure ("task.failed", "task.retrying") at error level: Sentry's
# logging integration would report it a second time, without the exception.
WORKER_LOGGER = "castor.worker"


def instrument(manager: Any, *, report_retries: bool = False, include_args: bool | None = None) -> None:
    """Report `manager`'s task failures to Sentry (the client sentry_sdk.init set
    up, looked up at each task). Calling it again replaces the earlier setup."""
    if not isinstance(report_retries, bool):
        raise ConfigurationError(f"report_retries must be True or False, not {report_retries!r}")
    if include_args is not None and not isinstance(include_args, bool):
        raise ConfigurationError(
            f"include_args must be True, False or None (follow send_default_pii), not {include_args!r}")
    reporting = ErrorReporting(report_retries=report_retries, include_args=include_args)
    install(manager, reporting, "castor.integrations.sentry.instrument")
    ignore_logger(WORKER_LOGGER)


def uninstrument(manager: Any) -> None:
    uninstall(manager, NAME)


def is_instrumented(manager: Any) -> bool:
    return installed(manager, NAME) is not None


class ErrorReporting(Instrument):
    name = NAME

    def __init__(self, *, report_retries: bool = False, include_args: bool | None = None):
        self.report_retries = report_retries
        self.include_args = include_args

    def running(self, record: TaskRecord) -> tuple[Any, Any, int] | None:
        if not sentry_sdk.get_client().is_active():  # sentry_sdk.init not called (or no DSN)
            return None
        # Entered here and left in ran(), in the same thread: one scope per run, so
        # tags and breadcrumbs never leak between tasks sharing a thread.
        isolation = sentry_sdk.isolation_scope()
        scope = isolation.__enter__()
        try:
            scope.clear_breadcrumbs()
            scope.set_transaction_name(record.name)
            for key, value in _tags(record).items():
                scope.set_tag(key, value)
        except BaseException:
            isolation.__exit__(None, None, None)  # ran() will not be given it
            raise
        return isolation, scope, threading.get_ident()

    def ran(self, state: tuple[Any, Any, int] | None, record: TaskRecord, outcome: Outcome) -> None:
        if state is None:
            return
        isolation, scope, thread_id = state
        try:
            if self._reports(outcome):
                self._capture(scope, record, outcome)
        finally:
            # castord may report a stopped process task from its timer thread; that
            # thread never entered the scope (and the child leaves right after).
            if threading.get_ident() == thread_id:
                isolation.__exit__(None, None, None)

    def flush(self, timeout: float) -> None:
        sentry_sdk.flush(timeout=timeout)

    def _reports(self, outcome: Outcome) -> bool:
        if outcome.exception is None:
            return False
        return outcome.status == TaskStatus.FAILED or (self.report_retries and outcome.status == TaskStatus.PENDING)

    def _capture(self, scope: Any, record: TaskRecord, outcome: Outcome) -> None:
        client = sentry_sdk.get_client()
        exc = outcome.exception
        assert exc is not None
        try:
            event, hint = event_from_exception(exc, client_options=client.options,
                                               mechanism={"type": "castor", "handled": False})
            self._send(scope, record, outcome, client, event, hint)
        except BaseException:  # noqa: BLE001 - a task's exception may refuse to be described
            # (by event_from_exception, or by the client reading exc_info in the hint)
            self._send(scope, record, outcome, client, _described(outcome.error or {}), {})

    def _send(self, scope: Any, record: TaskRecord, outcome: Outcome, client: Any, event: Any,
              hint: Any) -> None:
        retrying = outcome.status == TaskStatus.PENDING
        event["level"] = "warning" if retrying else "error"
        details: dict[str, Any] = {
            "task_id": record.id, "task_name": record.name, "queue": record.queue, "attempt": record.attempts,
            "status": "retry" if retrying else "failed",
            "enqueued_at": datetime.fromtimestamp(record.enqueued_at, UTC).isoformat(),
        }
        if retrying and outcome.retry_in is not None:
            details["retry_in_s"] = outcome.retry_in
        details.update(self._arguments(client, record))
        event.setdefault("extra", {})["castor-task"] = details
        if issubclass(type(outcome.exception), TaskTimeout):
            # One issue for a task's timeouts, wherever in its code they landed.
            event["fingerprint"] = ["castor", "TaskTimeout", record.name]
        sentry_sdk.capture_event(event, hint=hint, scope=scope)

    def _arguments(self, client: Any, record: TaskRecord) -> dict[str, Any]:
        if not self._sends_arguments(client.options):
            return {"args": FILTERED, "kwargs": FILTERED}
        try:
            serializer = get_serializer(record.serializer)
            return {"args": serializer.loads(record.args), "kwargs": serializer.loads(record.kwargs)}
        except Exception as exc:  # noqa: BLE001 - the task's failure may be just that
            return {"args": f"<could not decode the arguments: {safe_text(exc)}>", "kwargs": FILTERED}

    def _sends_arguments(self, options: dict[str, Any]) -> bool:
        if self.include_args is not None:
            return self.include_args
        collection = options.get("data_collection")  # newer SDKs: takes precedence when the user set it
        if isinstance(collection, dict) and collection.get("provided_by_user"):
            return bool(collection.get("queues"))
        return bool(should_send_default_pii())


def _described(error: dict[str, Any]) -> dict[str, Any]:
    """An event from castor's own record of the exception (castor/failures.py: plain
    strings, built without the exception's help), for one Sentry cannot describe."""
    module, _, name = str(error.get("type", "")).rpartition(".")
    return {
        "exception": {"values": [{"type": name or "<unknown>", "module": module or None,
                                  "value": error.get("message"),
                                  "mechanism": {"type": "castor", "handled": False}}]},
        "extra": {"castor-traceback": error.get("traceback")},
    }


def _tags(record: TaskRecord) -> dict[str, str]:
    return {"castor.task_id": record.id, "castor.task_name": record.name, "castor.queue": record.queue,
            "castor.attempt": str(record.attempts)}
