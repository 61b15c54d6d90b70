"""Pure logic: statuses, durations, serialization, error records, task options."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from castor.durations import MAX_EPOCH, MAX_SECONDS, from_epoch, to_epoch, to_seconds
from castor.errors import (
    ConfigurationError,
    RemoteTraceback,
    SerializationError,
    TaskFailed,
)
from castor.failures import describe, rebuild
from castor.serialization import encode_call, get_serializer
from castor.states import FINISHED, TaskStatus, can_transition, parse_status
from castor.task import build_options


def sample():
    pass


class Nested:
    class Error(Exception):
        pass


class TestStates:
    def test_finished_statuses(self):
        assert {s for s in TaskStatus if s.finished} == set(FINISHED)
        assert not TaskStatus.PENDING.finished and not TaskStatus.RUNNING.finished

    def test_status_is_a_plain_string(self):
        assert TaskStatus.SUCCESS == "success"

    @pytest.mark.parametrize(
        "old,new,ok",
        [("pending", "running", True), ("running", "success", True), ("running", "pending", True),
         ("success", "pending", False), ("success", "failed", False), ("pending", "success", False)],
    )
    def test_transitions(self, old, new, ok):
        assert can_transition(old, new) is ok

    def test_parse_status_lists_the_valid_ones(self):
        with pytest.raises(ValueError, match="pending, running, success, failed, cancelled"):
            parse_status("done")


class TestDurations:
    def test_numbers_and_timedeltas(self):
        assert to_seconds(2, "x") == 2.0
        assert to_seconds(timedelta(minutes=1), "x") == 60.0
        assert to_seconds(None, "x") is None

    @pytest.mark.parametrize("bad", [-1, float("nan")])
    def test_negative_or_nan_rejected(self, bad):
        with pytest.raises(ValueError, match="timeout"):
            to_seconds(bad, "timeout")

    def test_wrong_type_rejected(self):
        with pytest.raises(TypeError, match="countdown must be"):
            to_seconds("5", "countdown")
        with pytest.raises(TypeError):
            to_seconds(True, "countdown")

    def test_bounded_by_a_century_unless_told_otherwise(self):
        assert to_seconds(MAX_SECONDS, "x") == MAX_SECONDS
        with pytest.raises(ValueError, match="at most 3153600000 seconds"):
            to_seconds(MAX_SECONDS + 1, "countdown")
        with pytest.raises(ValueError, match="finite"):
            to_seconds(float("inf"), "timeout")
        with pytest.raises(ValueError, match="finite"):
            to_seconds(10**400, "timeout")  # an int a float cannot hold
        assert to_seconds(float("inf"), "timeout", limit=None) == float("inf")  # join(timeout=inf): forever

    def test_epochs_from_1970_to_9999(self):
        assert to_epoch(0, "eta") == 0.0
        assert to_epoch(datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone.utc), "eta") == MAX_EPOCH
        for bad in (-1, MAX_EPOCH + 1, 10**400, datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5)))):
            with pytest.raises(ValueError, match="eta"):
                to_epoch(bad, "eta")

    def test_a_stored_time_past_9999_still_shows(self):
        assert from_epoch(1e300).year == 9999 and from_epoch(-1e300).year == 1

    def test_epoch_round_trip(self):
        when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
        assert from_epoch(to_epoch(when, "eta")) == when
        assert to_epoch(12.5, "eta") == 12.5
        with pytest.raises(TypeError):
            to_epoch("tomorrow", "eta")


class TestSerialization:
    def test_json_names_the_offending_argument(self):
        with pytest.raises(SerializationError, match=r"argument 1 \(set\).*serializer='pickle'"):
            encode_call(get_serializer("json"), "t", (1, {2}), {})

    def test_json_names_the_offending_keyword(self):
        with pytest.raises(SerializationError, match="keyword argument 'when'"):
            encode_call(get_serializer("json"), "t", (), {"when": object()})

    def test_serialization_error_is_a_type_error(self):
        assert issubclass(SerializationError, TypeError)

    def test_pickle_takes_objects(self):
        s = get_serializer("pickle")
        args, kwargs = encode_call(s, "t", ({1, 2},), {"d": datetime(2020, 1, 1)})
        assert s.loads(args) == [{1, 2}]
        assert s.loads(kwargs) == {"d": datetime(2020, 1, 1)}

    def test_unknown_serializer(self):
        with pytest.raises(ConfigurationError, match="'json'.*'pickle'"):
            get_serializer("yaml")


class TestFailures:
    def raise_and_describe(self, exc):
        try:
            raise exc
        except Exception as caught:  # noqa: BLE001
            return describe(caught)

    def test_builtin_exception_is_rebuilt_with_remote_traceback(self):
        record = self.raise_and_describe(KeyError("missing"))
        exc = rebuild(record, "id1")
        assert type(exc) is KeyError and exc.args == ("missing",)
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert "raise_and_describe" in exc.__cause__.traceback

    def test_nested_class_of_loaded_module_is_rebuilt(self):
        exc = rebuild(self.raise_and_describe(Nested.Error("x")), "id1")
        assert type(exc) is Nested.Error

    def test_unknown_module_gives_task_failed(self):
        record = {"type": "not.imported.Error", "message": "m", "traceback": "tb", "args": ["m"]}
        exc = rebuild(record, "id1")
        assert isinstance(exc, TaskFailed)
        assert (exc.exc_type, exc.message, exc.traceback, exc.task_id) == ("not.imported.Error", "m", "tb", "id1")

    def test_unbuildable_args_give_task_failed(self):
        class NeedsTwo(Exception):
            def __init__(self, a, b):
                super().__init__(f"{a}{b}")

        record = self.raise_and_describe(NeedsTwo(1, 2))
        record["args"] = None  # args were not JSON-serializable
        assert isinstance(rebuild(record, "i"), TaskFailed)

    def test_non_exception_attribute_is_never_called(self):
        record = {"type": "os.system", "message": "", "traceback": "", "args": ["echo hi"]}
        assert isinstance(rebuild(record, "i"), TaskFailed)


class TestTaskOptions:
    def test_defaults(self):
        opts = build_options(sample, {"mode": "thread"})
        assert (opts.name, opts.mode, opts.daemon, opts.queue, opts.priority) == (
            f"{__name__}.sample", "thread", False, "default", 0)

    def test_missing_mode_says_how_to_fix(self):
        with pytest.raises(ConfigurationError, match="mode is mandatory.*mode='thread'"):
            build_options(sample, {})

    def test_bad_mode(self):
        with pytest.raises(ConfigurationError, match="'thread' or 'process', not 'fiber'"):
            build_options(sample, {"mode": "fiber"})

    def test_unknown_option_suggests(self):
        with pytest.raises(ConfigurationError, match="unknown option 'deamon'.*Did you mean 'daemon'"):
            build_options(sample, {"mode": "thread", "deamon": True})

    @pytest.mark.parametrize("opts", [{"daemon": "yes"}, {"queue": ""}, {"priority": "high"}, {"name": 3}])
    def test_bad_values(self, opts):
        with pytest.raises(ConfigurationError):
            build_options(sample, {"mode": "process", **opts})


class TestRetryWaits:
    def test_a_backoff_past_a_floats_range_waits_the_cap(self):
        from castor.retries import RetryPolicy

        policy = RetryPolicy(retries=5000, delay=1.0, backoff=1000.0, max_delay=600.0, jitter=False)
        assert policy.retry_in(ValueError(), attempt=4000) == 600.0  # 1000 ** 3999 overflows

    def test_an_explicit_retry_delay_is_bounded(self):
        import castor
        from castor.retries import RetryPolicy

        policy = RetryPolicy(retries=3)
        assert policy.retry_in(castor.Retry(delay=float("inf")), attempt=1) == MAX_SECONDS
        assert policy.retry_in(castor.Retry(delay=float("nan")), attempt=1) == 0.0
