"""describe() survives any exception object; rebuild() any stored record.

A task's exception is the task author's object: its __str__ may raise or return
a non-string, its args may be anything, its class may have an odd __module__ or a
metaclass that hides its name, its chain may be cyclic or 20,000 links long. The
error record castor stores must still be built, be plain JSON text SQLite and the
HTTP API can hold, and stay bounded in size. tests/hostile.py holds the cases.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from castor.errors import TaskFailed
from castor.failures import describe, rebuild
from castor.views import decode, json_exact
from tests import hostile
from tests.strategies import property_settings, surrogate_text, text

LIMIT = 64 * 1024  # characters kept of a message, a traceback, the args' JSON
NOTE = 200  # room for the note that says what was cut


def described(exc: BaseException) -> dict[str, Any]:
    """describe(exc); what it raises becomes a plain test failure (pytest itself
    could not print the hostile exception chained to it)."""
    escaped = None
    try:
        return describe(exc)
    except BaseException as err:  # noqa: BLE001
        escaped = f"{type.__dict__['__qualname__'].__get__(type(err))}"
    pytest.fail(f"describe() raised {escaped}", pytrace=False)


def check_record(record: Any) -> dict[str, Any]:
    """What every error record must be, whatever raised it."""
    assert isinstance(record, dict) and set(record) == {"type", "message", "traceback", "args"}
    for key in ("type", "message", "traceback"):
        assert type(record[key]) is str, (key, type(record[key]))
    assert record["args"] is None or type(record["args"]) is list
    # Plain data (no subclass with methods of its own), UTF-8-encodable (no lone
    # surrogate: SQLite and a JSON response both need that), strict enough to read back.
    encoded = json.dumps(record, ensure_ascii=False)
    encoded.encode("utf-8")
    assert json.loads(encoded) == record or record["args"] != record["args"]  # NaN in args
    assert record["type"] and len(record["type"]) <= 1024 + NOTE
    assert len(record["message"]) <= LIMIT + NOTE
    assert len(record["traceback"]) <= LIMIT + NOTE
    assert len(json.dumps(record["args"])) <= LIMIT
    return record


def check_rebuilt(record: dict[str, Any], exact: bool = True) -> BaseException:
    escaped = None
    try:
        rebuilt = rebuild(record, "task-1")
    except BaseException as err:  # noqa: BLE001
        escaped = f"{type.__dict__['__qualname__'].__get__(type(err))}"
    if escaped is not None:
        pytest.fail(f"rebuild() raised {escaped}", pytrace=False)
    assert issubclass(type(rebuilt), BaseException)
    if exact and type(rebuilt) is TaskFailed:
        assert rebuilt.exc_type == record["type"] and rebuilt.message == record["message"]
        str(rebuilt)
    return rebuilt


# -- the catalogue ----------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", sorted(hostile.KINDS))
def test_every_hostile_exception_gives_a_readable_record(kind):
    exc = hostile.caught(kind)
    record = check_record(described(exc))
    assert record["type"].endswith(hostile.qualname(hostile.CLASSES[kind])[-200:])
    assert record["message"]
    # The traceback names the function that raised (the newest frames are kept when cut).
    assert "Traceback (most recent call last)" in record["traceback"]
    assert hostile.KINDS[kind].__name__ in record["traceback"]
    check_rebuilt(json.loads(json.dumps(record)))


@pytest.mark.parametrize("kind", ["str_raises", "str_raises_base", "str_not_a_string", "repr_and_str_raise",
                                  "str_recurses", "key_error_hostile_key"])
def test_a_message_that_cannot_be_built_says_so(kind):
    name = hostile.qualname(hostile.CLASSES[kind])
    assert described(hostile.caught(kind))["message"] == f"<unprintable {name} object>"


def test_a_str_subclass_message_is_kept_as_plain_text():
    record = described(hostile.caught("str_subclass"))
    assert record["message"] == "a message in a hostile str subclass"


@pytest.mark.parametrize(("kind", "char", "size"), [("huge_str", "m", 5_000_000), ("huge_message", "x", 3_000_000)])
def test_an_enormous_message_is_cut_and_says_so(kind, char, size):
    record = described(hostile.caught(kind))
    message = record["message"]
    assert message.startswith(char * LIMIT) and f"{size - LIMIT:,}" in message and "cut" in message
    assert "cut" in record["traceback"] and record["traceback"].rstrip().endswith(char)


def test_a_long_chain_keeps_both_ends_of_the_traceback():
    record = described(hostile.caught("long_chain"))
    trace = record["traceback"]
    assert "cut" in trace
    assert trace.endswith("ValueError: 20000\n")  # the newest exception: what the task raised
    assert trace.startswith("ValueError: 0\n")  # the oldest (never raised, so no frames)


def test_unusual_modules_are_spelled_as_the_traceback_module_does():
    assert described(hostile.caught("weird_module_int"))["type"] == "<unknown>.WeirdModuleInt"
    assert described(hostile.caught("weird_module_none"))["type"] == "<unknown>.WeirdModuleNone"
    assert described(hostile.caught("weird_module_object"))["type"] == "<unknown>.WeirdModuleObject"
    missing = described(hostile.caught("weird_module_missing"))
    assert missing["type"] == "castor_no_such_module.sub.WeirdModuleMissing"
    assert type(rebuild(missing, "t")) is TaskFailed


def test_a_class_that_hides_its_name_is_still_named():
    record = described(hostile.caught("meta_hostile"))
    assert record["type"] == "tests.hostile.MetaHostile" and record["message"] == "m"
    assert "_meta_hostile" in record["traceback"]


def test_an_exception_that_refuses_every_attribute():
    record = described(hostile.caught("getattr_hostile"))
    assert record["type"] == "tests.hostile.GetattrHostile" and record["message"] == "m"
    assert record["args"] == ["m"]
    assert "_getattr_hostile" in record["traceback"]


@pytest.mark.parametrize("kind", ["args_raise", "odd_args", "hostile_args", "huge_args", "surrogate_args"])
def test_odd_args_are_left_out_or_kept_as_stored(kind):
    record = described(hostile.caught(kind))
    if kind == "args_raise":  # the args BaseException itself holds, past the property
        assert record["args"] == ["a", "b"]
    else:
        assert record["args"] is None


def test_lone_surrogates_become_escapes():
    record = described(hostile.caught("markup_message"))
    assert "\\ud83d" in record["message"] and "\x00" in record["message"] and "[/]" in record["message"]
    assert "\\ud83d" in record["traceback"]
    assert record["args"] is None  # args are kept only as castor could store them as arguments


def test_a_cyclic_chain_is_formatted_once():
    trace = described(hostile.caught("cyclic_context"))["traceback"]
    assert trace.count("ValueError: a") == 1 and trace.count("KeyError: 'b'") == 1


def test_an_exception_never_raised_has_no_frames():
    record = check_record(described(hostile.StrRaises("never raised")))
    assert record["traceback"] == "tests.hostile.StrRaises: <exception str() failed>\n"


# -- generated hostile classes ------------------------------------------------------
#
# Hypothesis draws a recipe of plain data (what it prints for a failing example,
# since printing the exception itself could fail too); `build` makes the exception.

SLOW_KINDS = {"long_chain", "odd_args", "huge_str", "huge_message", "huge_args"}
CHAIN_KINDS = sorted(set(hostile.KINDS) - SLOW_KINDS)
BASES = {"Exception": Exception, "ValueError": ValueError, "KeyError": KeyError, "OSError": OSError,
         "RuntimeError": RuntimeError, "ExceptionGroup": ExceptionGroup, "SystemExit": SystemExit,
         "KeyboardInterrupt": KeyboardInterrupt, "GeneratorExit": GeneratorExit, "Hostile": hostile.Hostile}
RAISED = {"RuntimeError": RuntimeError, "Hostile": hostile.Hostile, "RecursionError": RecursionError}

# A value in a recipe: plain data, or ("tag", detail) for an object built from it.
odd_values = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), text, surrogate_text,
    st.tuples(st.sampled_from(["bytes", "object", "unjsonable", "hostile_dict", "evil_str"]), text),
    st.tuples(st.just("long"), st.integers(0, 100_000)),
)
behaviours = st.one_of(
    st.none(),  # the base class's own
    st.tuples(st.just("raise"), st.sampled_from(sorted(RAISED))),
    st.tuples(st.just("return"), odd_values),
    st.tuples(st.just("recurse"), st.none()),
)
recipes = st.fixed_dictionaries({
    "base": st.sampled_from(sorted(BASES)),
    "str": behaviours,
    "repr": behaviours,
    "getattribute_raises": st.booleans(),
    "hostile_meta": st.booleans(),
    "qualname": st.one_of(text.filter(bool), surrogate_text, st.integers(1, 5000).map(lambda n: "Q" * n)),
    "module": st.one_of(st.sampled_from([None, 12, "", "builtins", "__main__", "castor_absent.mod", "tests.hostile",
                                         ("str_raises_object", ""), ("evil_str", "mod")]), text, surrogate_text),
    "args": st.lists(odd_values, max_size=3),
    "notes": st.one_of(st.none(), st.lists(odd_values, max_size=3), odd_values),
    "chain": st.one_of(st.sampled_from(["none", "self", "cycle"]),
                       st.lists(st.sampled_from(CHAIN_KINDS), min_size=1, max_size=4)),
    "raised": st.booleans(),
})


def value(item: Any) -> Any:
    if not isinstance(item, tuple):
        return item
    tag, detail = item
    if tag == "long":
        return "a" * detail
    return {"bytes": lambda: detail.encode("utf-8", "surrogatepass"), "object": object,
            "unjsonable": hostile.Unjsonable, "hostile_dict": lambda: hostile.HostileDict(a=detail),
            "evil_str": lambda: hostile.EvilStr(detail),
            "str_raises_object": hostile._StrRaisesObject}[tag]()  # noqa: SLF001


def method(behaviour: Any) -> Any:
    kind, detail = behaviour
    if kind == "raise":
        def raising(self: Any, *args: Any) -> Any:
            raise RAISED[detail]("no")
        return raising
    if kind == "recurse":
        return lambda self: str(self)
    made = value(detail)
    return lambda self: made


def build(recipe: dict[str, Any]) -> BaseException:
    base = BASES[recipe["base"]]
    namespace: dict[str, Any] = {}
    for name in ("str", "repr"):
        if recipe[name] is not None:
            namespace[f"__{name}__"] = method(recipe[name])
    if recipe["getattribute_raises"]:
        namespace["__getattribute__"] = method(("raise", "RuntimeError"))
    meta: type = hostile.HostileMeta if recipe["hostile_meta"] else type
    cls = meta("Generated", (base,), namespace)
    type.__dict__["__qualname__"].__set__(cls, recipe["qualname"])
    type.__dict__["__module__"].__set__(cls, value(recipe["module"]))
    args = [value(a) for a in recipe["args"]]
    if base is ExceptionGroup:
        args = ["group", [ValueError("member"), hostile.StrRaises("member")]]
    exc = cls(*args)
    if recipe["notes"] is not None:
        notes = recipe["notes"]
        object.__setattr__(exc, "__notes__", [value(n) for n in notes] if isinstance(notes, list) else value(notes))
    chain = recipe["chain"]
    if chain == "self":
        BaseException.__dict__["__cause__"].__set__(exc, exc)
    elif chain == "cycle":
        other = hostile.StrRaises("other")
        BaseException.__dict__["__context__"].__set__(exc, other)
        other.__context__ = exc
    elif isinstance(chain, list):
        link: BaseException = exc
        for kind in chain:
            nxt = hostile.caught(kind)
            BaseException.__dict__["__context__"].__set__(link, nxt)
            link = nxt
    if recipe["raised"]:  # give it a real traceback
        try:
            raise exc
        except BaseException as caught:  # noqa: BLE001
            exc = caught
    return exc


@pytest.mark.timeout(120)
@property_settings(300)
@given(recipes)
def test_describe_survives_any_generated_exception(recipe):
    exc = build(recipe)
    record = check_record(described(exc))
    check_rebuilt(json.loads(json.dumps(record)))


json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=8,
)


@pytest.mark.timeout(60)
@property_settings(300)
@given(st.dictionaries(st.sampled_from(["type", "message", "traceback", "args", "other"]), json_data),
       st.sampled_from(["", "castor.errors.TaskCancelled", "builtins.ValueError", "builtins.KeyError",
                        "castor.errors.TaskFailed", "tests.hostile.StrRaises", "builtins.OSError"]))
def test_rebuild_survives_any_stored_record(record, type_path):
    """A record as a damaged row or an older castor may have left it."""
    if type_path and "type" not in record:
        record["type"] = type_path
    check_rebuilt(record, exact=False)


# -- displaying stored values (castord tasks show, the HTTP API) ----------------------


class TestDisplay:
    def test_a_value_whose_repr_raises(self):
        shown = decode("pickle", pickle.dumps(hostile.ReprRaisesValue()))
        assert shown.value is None and shown.text == "<unprintable ReprRaisesValue object>"

    def test_a_value_whose_eq_raises(self):
        value = hostile.HostileEqList([1, 2])
        assert json_exact(value) is False
        shown = decode("pickle", pickle.dumps(value))
        assert shown.text == "<unprintable HostileEqList object>"

    def test_a_value_that_cannot_be_decoded_with_a_hostile_error(self):
        shown = decode("pickle", pickle.dumps(hostile.SetstateRaises()))
        assert shown.value is None and shown.text == "<cannot decode: <unprintable StrRaises object>>"

    def test_an_enormous_repr_is_cut(self):
        shown = decode("pickle", pickle.dumps({"k": b"b" * 1_000_000}))
        assert shown.text is not None and len(shown.text) <= LIMIT + NOTE and "cut" in shown.text
