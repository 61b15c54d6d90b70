"""Property tests (hypothesis): what castor serializes comes back as promised.

Arguments, keyword arguments and results go through castor.serialization (json by
default, pickle opt-in); failures go through castor.failures (describe → JSON →
rebuild). tests/strategies.py states the promises these check.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import castor.errors
from castor.errors import SerializationError, TaskFailed
from castor.failures import describe, rebuild
from castor.serialization import encode_call, get_serializer
from tests.strategies import (
    json_normal,
    json_refused,
    json_values,
    pickle_values,
    property_settings,
    same,
    surrogate_text,
    text,
)

JSON = get_serializer("json")
PICKLE = get_serializer("pickle")

keywords = st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True), json_values(), max_size=3)


class TestJson:
    @pytest.mark.timeout(60)
    @property_settings(300)
    @given(json_values())
    def test_round_trip_is_the_json_normal_form(self, value):
        assert same(JSON.loads(JSON.dumps(value)), json_normal(value))

    @pytest.mark.timeout(60)
    @property_settings(200)
    @given(json_values(strict_keys=True, tuples=False))
    def test_lists_and_str_keyed_dicts_round_trip_exactly(self, value):
        # Type-preserving too: an int stays an int, 1.0 stays a float, True stays a bool.
        assert same(JSON.loads(JSON.dumps(value)), value)

    @pytest.mark.timeout(60)
    @property_settings(150)
    @given(st.lists(json_values(), max_size=4).map(tuple), keywords)
    def test_a_call_round_trips(self, args, kwargs):
        encoded_args, encoded_kwargs = encode_call(JSON, "t", args, kwargs)
        assert isinstance(encoded_args, str) and isinstance(encoded_kwargs, str)
        assert same(JSON.loads(encoded_args), json_normal(list(args)))
        assert same(JSON.loads(encoded_kwargs), json_normal(kwargs))

    @pytest.mark.timeout(60)
    @property_settings(200)
    @given(st.lists(json_values(), max_size=3).map(tuple), st.text(max_size=8))
    def test_what_dumps_accepts_sqlite_can_store(self, args, extra):
        # SQLite stores TEXT as UTF-8: an encoding is either refused or UTF-8-encodable
        # (st.text includes lone surrogates, which UTF-8 cannot hold).
        try:
            encoded, _ = encode_call(JSON, "t", (*args, extra), {})
        except SerializationError as exc:
            assert "surrogate" in str(exc) and f"argument {len(args)} (str)" in str(exc)
            return
        assert isinstance(encoded, str)
        encoded.encode("utf-8")

    @pytest.mark.timeout(60)
    @property_settings(150)
    @given(st.data(), st.lists(json_values(strict_keys=True), max_size=3), keywords, json_refused)
    def test_a_refused_value_is_named_wherever_it_hides(self, data, args, kwargs, bad):
        # Plant the refused value somewhere inside one argument (or keyword argument).
        depth = data.draw(st.integers(0, 2), label="depth")
        planted: Any = bad
        for _ in range(depth):
            planted = data.draw(st.sampled_from([[planted], {"k": planted}, (planted,)]), label="wrapper")
        slots = [("arg", i) for i in range(len(args) + 1)] + [("kw", k) for k in [*kwargs, "zz_bad"]]
        kind, where = data.draw(st.sampled_from(slots), label="slot")
        args = list(args)
        if kind == "arg":
            args.insert(where, planted)
            culprit = f"argument {where} ({type(planted).__name__})"
        else:
            kwargs = {**kwargs, where: planted}
            culprit = f"keyword argument {where!r} ({type(planted).__name__})"
        with pytest.raises(SerializationError) as caught:
            encode_call(JSON, "tasks.t", tuple(args), kwargs)
        message = str(caught.value)
        assert message.startswith("cannot enqueue tasks.t: ")
        assert culprit in message, message
        assert "serializer='pickle'" in message
        assert isinstance(caught.value, TypeError)  # the spec's promise: a TypeError

    @pytest.mark.timeout(30)
    @property_settings(100)
    @given(surrogate_text)
    def test_a_lone_surrogate_is_refused_not_left_to_sqlite(self, value):
        # Regression: json wrote it as is (ensure_ascii=False), and SQLite then raised a
        # bare UnicodeEncodeError at enqueue — or, for a result, in the worker's settle.
        with pytest.raises(SerializationError, match=r"argument 0 \(str\).*surrogate"):
            encode_call(JSON, "t", (value,), {})
        with pytest.raises(ValueError, match="surrogate"):
            JSON.dumps({"result": [value]})

    def test_a_circular_value_is_refused(self):
        loop: list[Any] = [1]
        loop.append(loop)
        with pytest.raises(SerializationError, match=r"argument 1 \(list\)"):
            encode_call(JSON, "t", ("fine", loop), {})

    def test_the_documented_normalisations(self):
        # A plain statement of what tests/strategies.json_normal encodes.
        value = {2: (3, 4), 1.5: None, True: [()], None: "x", "k": {"1": "a", 1: "b"}}
        assert JSON.loads(JSON.dumps(value)) == {"2": [3, 4], "1.5": None, "true": [[]], "null": "x",
                                                 "k": {"1": "b"}}  # two keys, one string: the later wins


class TestPickle:
    @pytest.mark.timeout(60)
    @property_settings(200)
    @given(pickle_values())
    def test_round_trip_keeps_every_type(self, value):
        encoded = PICKLE.dumps(value)
        assert isinstance(encoded, bytes)
        assert same(PICKLE.loads(encoded), value)

    @pytest.mark.timeout(60)
    @property_settings(150)
    @given(st.lists(pickle_values(), max_size=3).map(tuple),
           st.dictionaries(st.from_regex(r"[a-z]{1,5}", fullmatch=True), pickle_values(), max_size=3))
    def test_a_call_round_trips(self, args, kwargs):
        encoded_args, encoded_kwargs = encode_call(PICKLE, "t", args, kwargs)
        # Arguments are stored as a list (the worker calls fn(*args)); each one keeps its type.
        assert same(PICKLE.loads(encoded_args), list(args))
        assert same(PICKLE.loads(encoded_kwargs), kwargs)

    @pytest.mark.timeout(30)
    @property_settings(100)
    @given(st.lists(pickle_values(), max_size=2), st.sampled_from(["lambda", "lock", "generator"]),
           st.integers(0, 2))
    def test_an_unpicklable_value_is_refused_and_named(self, args, kind, position):
        bad = {"lambda": lambda: None, "lock": threading.Lock(), "generator": (i for i in ())}[kind]
        position = min(position, len(args))
        args = [*args[:position], bad, *args[position:]]
        with pytest.raises(SerializationError, match=rf"argument {position} \({type(bad).__name__}\)") as caught:
            encode_call(PICKLE, "t", tuple(args), {})
        assert "serializer='pickle'" not in str(caught.value)  # no advice to switch to what failed


# Exception types a worker process has imported (rebuild never imports anything new).
REBUILDABLE = [ValueError, KeyError, RuntimeError, TypeError, LookupError, ZeroDivisionError, OSError,
               castor.errors.TaskTimeout, castor.errors.WorkerLost]
exception_args = st.lists(st.none() | st.booleans() | st.integers() | st.floats() | text, max_size=3)


class NeedsTwo(Exception):
    def __init__(self, a: Any, b: Any):
        super().__init__(f"{a}/{b}")


class TestFailureRecords:
    @staticmethod
    def stored(exc: BaseException) -> dict[str, Any]:
        """describe() as a worker does, then through the JSON text the store keeps."""
        try:
            raise exc
        except BaseException as caught:  # noqa: BLE001
            record = describe(caught)
        return json.loads(json.dumps(record))

    @pytest.mark.timeout(60)
    @property_settings(300)
    @given(st.sampled_from(REBUILDABLE), exception_args)
    def test_a_known_exception_comes_back_as_itself(self, cls, args):
        exc = cls(*args)
        kind = type(exc)  # OSError(2, "x") is a FileNotFoundError
        record = self.stored(exc)
        assert record["type"] == f"{kind.__module__}.{kind.__qualname__}"
        assert record["message"] == str(exc)
        rebuilt = rebuild(record, "task-1")
        assert type(rebuilt) is kind
        assert same(rebuilt.args, exc.args)
        if not isinstance(exc, OSError):  # OSError keeps a third argument (filename) out of args
            assert str(rebuilt) == str(exc)

    @pytest.mark.timeout(60)
    @property_settings(200)
    @given(st.one_of(
        st.builds(lambda m: NeedsTwo(m, m), text),                     # args do not fit __init__
        st.builds(lambda b: ValueError(b), st.binary(max_size=4)),     # args not JSON
        st.builds(lambda m: SystemExit(m), text),                       # not an Exception subclass
    ), st.text(max_size=3))
    def test_anything_else_comes_back_as_task_failed_with_type_and_message(self, exc, task_id):
        record = self.stored(exc)
        rebuilt = rebuild(record, task_id)
        assert isinstance(rebuilt, TaskFailed), (rebuilt, record)
        assert rebuilt.exc_type == record["type"]
        assert rebuilt.message == str(exc)
        assert rebuilt.task_id == task_id

    @pytest.mark.timeout(30)
    @property_settings(100)
    @given(st.from_regex(r"castor_absent_[a-z]{1,8}(\.[a-z]{1,8}){0,2}", fullmatch=True),
           st.from_regex(r"[A-Z][a-zA-Z]{0,8}", fullmatch=True))
    def test_an_unknown_module_is_never_imported(self, module, name):
        record = {"type": f"{module}.{name}", "message": "m", "traceback": "", "args": ["m"]}
        rebuilt = rebuild(record, "t")
        assert isinstance(rebuilt, TaskFailed) and rebuilt.exc_type == record["type"]
        assert module.split(".")[0] not in sys.modules
