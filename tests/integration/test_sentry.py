"""castor.integrations.sentry in this process, through sentry-sdk's own transport API
(a Transport that keeps the envelopes it is given; no network): final failures
reported once with their tags and (scrubbable) arguments, retries on request,
scopes that never leak between tasks, and a broken setup that changes no outcome.
(tests/process/test_integrations_castord.py does it through a real castord.)"""

from __future__ import annotations

import logging
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.scrubber import EventScrubber
from sentry_sdk.transport import Transport

import castor
from castor import instrumentation
from castor.errors import ConfigurationError, TaskTimeout
from castor.integrations import sentry as castor_sentry
from tests import hostile

DSN = "https://public@sentry.invalid/1"  # never contacted: the transport below keeps everything


class Kept(Transport):
    """sentry-sdk's transport API: the client hands every envelope to capture_envelope."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.envelopes: list[Envelope] = []
        self.flushes = 0
        self.fail = fail

    def capture_envelope(self, envelope: Envelope) -> None:
        if self.fail:
            raise ConnectionError("the Sentry server is unreachable")
        self.envelopes.append(envelope)

    def flush(self, timeout: float, callback: Any = None) -> None:
        self.flushes += 1

    def events(self) -> list[dict[str, Any]]:
        return [item.payload.json for e in self.envelopes for item in e.items
                if item.type == "event" and item.payload.json is not None]


@pytest.fixture
def start_sentry() -> Iterator[Callable[..., Kept]]:
    def start(**options: Any) -> Kept:
        transport = Kept(fail=options.pop("fail", False))
        sentry_sdk.init(dsn=DSN, transport=transport, **options)
        return transport

    yield start
    sentry_sdk.get_client().close()
    sentry_sdk.get_global_scope().set_client(None)


@pytest.fixture
def kept(start_sentry: Callable[..., Kept]) -> Kept:
    return start_sentry()


def drain(manager: castor.Manager, mode: str = "thread") -> None:
    worker = castor.Worker(manager, mode=mode)
    while worker.step():
        pass


def tags(event: dict[str, Any]) -> dict[str, str]:
    found = event.get("tags", {})
    return dict(found) if isinstance(found, dict) else {k: v for k, v in found}


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_a_final_failure_is_reported_once(manager: castor.Manager, kept: Kept, mode: str) -> None:
    castor_sentry.instrument(manager)

    @manager.task(mode=mode, name="charge", queue="billing", retries=2, retry_delay=0)
    def charge(amount: int) -> None:
        raise ValueError(f"card declined for {amount}")

    task = charge.delay(12)
    drain(manager, mode)
    assert task.status() == "failed" and task.attempts == 3
    (event,) = kept.events()  # not once per attempt, and not again from castor's task.failed log line
    assert event["level"] == "error"
    assert tags(event) == {"castor.task_id": task.id, "castor.task_name": "charge", "castor.queue": "billing",
                           "castor.attempt": "3"}
    assert event["transaction"] == "charge"
    (exception,) = event["exception"]["values"]
    assert exception["type"] == "ValueError" and exception["value"] == "card declined for 12"
    assert exception["mechanism"] == {"type": "castor", "handled": False}
    assert exception["stacktrace"]["frames"][-1]["function"] == "charge"
    details = event["extra"]["castor-task"]
    assert {k: details[k] for k in ("task_id", "task_name", "queue", "attempt", "status")} == {
        "task_id": task.id, "task_name": "charge", "queue": "billing", "attempt": 3, "status": "failed"}
    assert details["args"] == details["kwargs"] == "[Filtered]"  # send_default_pii is off


def test_report_retries_reports_each_failed_attempt(manager: castor.Manager, kept: Kept) -> None:
    castor_sentry.instrument(manager, report_retries=True)

    @manager.task(mode="thread", name="flaky", retries=2, retry_delay=0)
    def flaky() -> None:
        raise ConnectionError("not yet")

    flaky.delay()
    drain(manager)
    events = kept.events()
    assert [e["level"] for e in events] == ["warning", "warning", "error"]
    assert [e["extra"]["castor-task"]["status"] for e in events] == ["retry", "retry", "failed"]
    assert [tags(e)["castor.attempt"] for e in events] == ["1", "2", "3"]
    assert events[0]["extra"]["castor-task"]["retry_in_s"] == 0


def test_successes_and_cancellations_are_not_reported(manager: castor.Manager, kept: Kept) -> None:
    castor_sentry.instrument(manager, report_retries=True)
    started = threading.Event()

    @manager.task(mode="thread", name="fine")
    def fine() -> str:
        return "fine"

    @manager.task(mode="thread", name="waits")
    def waits() -> None:
        started.set()
        while True:
            time.sleep(0.01)  # until TaskCancelled lands

    ok, stopped = fine.delay(), waits.delay()
    worker = castor.Worker(manager, mode="thread")
    assert worker.step()
    runner = threading.Thread(target=worker.step)
    runner.start()
    assert started.wait(10)
    stopped.cancel()
    worker.check_cancellations()  # as the housekeeping thread would (step() starts none)
    runner.join(10)
    assert ok.join(timeout=5) == "fine" and stopped.status() == "cancelled"
    assert kept.events() == []


@pytest.mark.parametrize(("options", "include_args", "sent"), [
    ({}, None, False),
    ({"data_collection": {"queues": True}}, None, True),
    ({"data_collection": {"queues": False}}, None, False),
    ({"data_collection": {"queues": True}}, False, False),
    ({"send_default_pii": True}, None, True),  # deprecated by newer SDKs for data_collection
    ({"send_default_pii": True}, False, False),
    ({}, True, True),
])
def test_arguments_are_sent_as_sentry_options_say_unless_told(
        manager: castor.Manager, start_sentry: Callable[..., Kept], options: dict[str, Any],
        include_args: bool | None, sent: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # send_default_pii, on SDKs that deprecate it
        kept = start_sentry(**options)
    castor_sentry.instrument(manager, include_args=include_args)

    @manager.task(mode="thread", name="signup")
    def signup(email: str, password: str, plan: str = "free") -> None:
        raise ValueError("taken")

    signup.delay("ada@example.com", password="hunter2", plan="pro")
    drain(manager)
    (event,) = kept.events()
    details = event["extra"]["castor-task"]
    if sent:
        assert details["args"] == ["ada@example.com"]
        assert details["kwargs"] == {"password": "hunter2", "plan": "pro"}
    else:
        assert details["args"] == details["kwargs"] == "[Filtered]"


def test_sentrys_scrubber_reaches_into_the_arguments(manager: castor.Manager,
                                                     start_sentry: Callable[..., Kept]) -> None:
    kept = start_sentry(event_scrubber=EventScrubber(recursive=True))
    castor_sentry.instrument(manager, include_args=True)

    @manager.task(mode="thread", name="signup")
    def signup(email: str, password: str) -> None:
        raise ValueError("taken")

    signup.delay("ada@example.com", password="hunter2")
    drain(manager)
    (event,) = kept.events()
    assert event["extra"]["castor-task"]["kwargs"] == {"password": "[Filtered]"}
    assert event["extra"]["castor-task"]["args"] == ["ada@example.com"]


def test_before_send_sees_and_can_scrub_the_arguments(manager: castor.Manager,
                                                      start_sentry: Callable[..., Kept]) -> None:
    seen: list[Any] = []

    def before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        details = event["extra"]["castor-task"]
        seen.append(details["args"])
        if details["task_name"] == "private":
            return None  # dropped altogether
        details["args"] = ["<scrubbed>"]
        return event

    kept = start_sentry(before_send=before_send)
    castor_sentry.instrument(manager, include_args=True)

    @manager.task(mode="thread", name="public")
    def public(card: str) -> None:
        raise ValueError("declined")

    @manager.task(mode="thread", name="private")
    def private(card: str) -> None:
        raise ValueError("declined")

    first, second = public.delay("4111 1111"), private.delay("4242 4242")
    drain(manager)
    assert first.status() == second.status() == "failed"
    assert seen == [["4111 1111"], ["4242 4242"]]
    (event,) = kept.events()
    assert event["extra"]["castor-task"]["args"] == ["<scrubbed>"]


def test_each_run_has_its_own_scope(manager: castor.Manager, kept: Kept) -> None:
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="note")
    def note(text: str) -> str:
        sentry_sdk.capture_message(text)  # the task's own report carries the task's tags
        return text

    first, second = note.delay("first"), note.delay("second")
    drain(manager)  # both in this very thread, one after the other
    sentry_sdk.capture_message("outside any task")
    by_message = {e["message"]: e for e in kept.events()}
    assert tags(by_message["first"])["castor.task_id"] == first.id
    assert tags(by_message["second"])["castor.task_id"] == second.id
    assert not any(k.startswith("castor.") for k in tags(by_message["outside any task"]))


def test_a_timeout_is_grouped_by_task(manager: castor.Manager, kept: Kept) -> None:
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="spin", timeout=0.2)
    def spin() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # pure Python: TaskTimeout lands here
            pass

    task = spin.delay()
    drain(manager)
    assert task.status() == "failed"
    (event,) = kept.events()
    assert event["exception"]["values"][0]["type"] == "TaskTimeout"
    assert event["fingerprint"] == ["castor", "TaskTimeout", "spin"]


def test_an_unknown_task_is_reported(db_path: str, kept: Kept) -> None:
    enqueuer, worker_side = castor.Manager(db_path), castor.Manager(db_path)
    try:
        @enqueuer.task(mode="thread", name="only_in_the_web_app")
        def only_in_the_web_app() -> None: ...

        castor_sentry.instrument(worker_side)
        task = only_in_the_web_app.delay()
        drain(worker_side)
        assert task.status() == "failed"
        (event,) = kept.events()
        assert event["exception"]["values"][0]["type"] == "UnknownTaskError"
        assert tags(event)["castor.task_name"] == "only_in_the_web_app"
    finally:
        enqueuer.close()
        worker_side.close()


def test_a_stopped_attempt_is_reported_from_another_thread(manager: castor.Manager, kept: Kept) -> None:
    """What castord does to a process task past its timeout (castord/children.py)."""
    started, release = threading.Event(), threading.Event()
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="stuck")
    def stuck() -> str:
        started.set()
        release.wait(30)
        return "too late"

    stuck.delay()
    worker = castor.Worker(manager, mode="thread")
    runner = threading.Thread(target=worker.step)
    runner.start()
    try:
        assert started.wait(10)
        (ctx,) = list(worker.contexts.values())
        instrumentation.stopped(manager, ctx.record, TaskTimeout("stuck ran past its timeout of 60 s"))
        (event,) = kept.events()
        assert tags(event)["castor.task_name"] == "stuck"
        assert event["exception"]["values"][0]["value"] == "stuck ran past its timeout of 60 s"
    finally:
        release.set()
        runner.join(10)
    assert len(kept.events()) == 1


@pytest.mark.parametrize("kind", sorted(hostile.KINDS))
def test_hostile_exceptions_are_reported_and_the_worker_goes_on(manager: castor.Manager, kept: Kept,
                                                                kind: str) -> None:
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="hostile")
    def hostile_task(k: str) -> None:
        hostile.raise_kind(k)

    @manager.task(mode="thread", name="after")
    def after() -> str:
        return "still working"

    task, next_one = hostile_task.delay(kind), after.delay()
    drain(manager)
    assert task.status() == "failed" and next_one.join(timeout=5) == "still working"
    (event,) = kept.events()
    assert tags(event)["castor.task_id"] == task.id


@pytest.mark.parametrize("broken", ["transport", "before_send"])
def test_a_broken_setup_changes_no_outcome(manager: castor.Manager, start_sentry: Callable[..., Kept],
                                           broken: str) -> None:
    def before_send(event: Any, hint: Any) -> Any:
        raise RuntimeError("a before_send that fails")

    start_sentry(fail=broken == "transport", **({"before_send": before_send} if broken == "before_send" else {}))
    castor_sentry.instrument(manager, report_retries=True)

    @manager.task(mode="thread", name="boom", retries=1, retry_delay=0)
    def boom() -> None:
        raise ValueError("the task's own failure")

    @manager.task(mode="thread", name="fine")
    def fine() -> str:
        return "fine"

    failing, ok = boom.delay(), fine.delay()
    drain(manager)
    assert failing.status() == "failed" and failing.attempts == 2
    assert failing.error["message"] == "the task's own failure"  # type: ignore[index]
    assert ok.join(timeout=5) == "fine"


def test_without_sentry_init_nothing_happens(manager: castor.Manager) -> None:
    assert not sentry_sdk.get_client().is_active()
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="boom")
    def boom() -> None:
        raise ValueError("no one listens")

    task = boom.delay()
    drain(manager)
    assert task.status() == "failed"


def test_flush_all_flushes_the_client(manager: castor.Manager, kept: Kept) -> None:
    castor_sentry.instrument(manager)
    before = kept.flushes
    instrumentation.flush_all(timeout=1)
    assert kept.flushes > before


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"report_retries": "yes"}, "report_retries must be True or False, not 'yes'"),
    ({"include_args": 1}, "include_args must be True, False or None (follow send_default_pii), not 1"),
])
def test_bad_arguments_get_one_clear_error(manager: castor.Manager, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        castor_sentry.instrument(manager, **kwargs)
    assert str(err.value) == message
    assert manager.instruments is None


def test_instrumenting_something_else_than_a_manager_is_an_error() -> None:
    with pytest.raises(ConfigurationError) as err:
        castor_sentry.instrument(None)
    assert str(err.value) == "castor.integrations.sentry.instrument takes a castor.Manager, not NoneType"


def test_castors_own_failure_log_lines_are_not_reported_again(manager: castor.Manager, kept: Kept,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    castor_sentry.instrument(manager)

    @manager.task(mode="thread", name="boom")
    def boom() -> None:
        raise ValueError("once")

    with caplog.at_level(logging.INFO, logger="castor.worker"):
        boom.delay()
        drain(manager)
    assert any(r.msg["event"] == "task.failed" for r in caplog.records  # type: ignore[index]
               if r.name == "castor.worker")  # logged, as always
    assert [e.get("logger") for e in kept.events()] == [None]  # reported once, by the integration


def test_without_sentry_sdk_the_import_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "castor.integrations.sentry")
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # as if not installed
    with pytest.raises(ImportError) as err:
        import castor.integrations.sentry  # noqa: F401
    assert "castor.integrations.sentry needs sentry-sdk: pip install 'castor[sentry]'" in str(err.value)
