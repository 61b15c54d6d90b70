"""Exception objects that fight back when something tries to describe them.

Shared by the unit/property tests of castor.failures (tests/unit/test_odd_exceptions.py),
the in-process worker and eager tests (tests/integration/test_odd_exceptions.py) and
the castord ones (tests/process/test_odd_exceptions.py, whose app imports this module).

`KINDS` maps a name to a function that raises one such exception (so it carries a
real traceback, as a task's would); `raise_kind(name)` raises it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn


class Hostile(BaseException):
    """What the hostile methods raise: not even an Exception."""


class StrRaises(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")


class StrRaisesBase(ValueError):
    def __str__(self) -> str:
        raise Hostile("__str__ raises a BaseException")


class StrNotAString(ValueError):
    def __str__(self) -> Any:
        return 42


class EvilStr(str):
    """A str subclass whose own methods raise: only its characters are usable."""

    def __str__(self) -> str:
        raise RuntimeError("EvilStr.__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("EvilStr.__repr__ refuses")

    def __format__(self, spec: str) -> str:
        raise RuntimeError("EvilStr.__format__ refuses")


class StrSubclass(ValueError):
    def __str__(self) -> str:
        return EvilStr("a message in a hostile str subclass")


class ReprAndStrRaise(ValueError):
    def __str__(self) -> str:
        raise RuntimeError("__str__ refuses")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__ refuses")


class StrRecurses(ValueError):
    def __str__(self) -> str:
        return str(self)


class HugeStr(ValueError):
    def __str__(self) -> str:
        return "m" * 5_000_000


class ArgsRaise(ValueError):
    @property  # type: ignore[override]
    def args(self) -> Any:
        raise RuntimeError("args refuses")


class Unjsonable:
    def __repr__(self) -> str:
        raise RuntimeError("Unjsonable.__repr__ refuses")


class HostileDict(dict):  # type: ignore[type-arg]
    def items(self) -> Any:
        raise Hostile("HostileDict.items refuses")

    def keys(self) -> Any:
        raise Hostile("HostileDict.keys refuses")

    def __iter__(self) -> Any:
        raise Hostile("HostileDict.__iter__ refuses")


class WeirdModuleInt(ValueError):
    pass


WeirdModuleInt.__module__ = 12  # type: ignore[assignment]


class WeirdModuleNone(ValueError):
    pass


WeirdModuleNone.__module__ = None  # type: ignore[assignment]


class _StrRaisesObject:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    __repr__ = __format__ = __str__  # type: ignore[assignment]


class WeirdModuleObject(ValueError):
    pass


WeirdModuleObject.__module__ = _StrRaisesObject()  # type: ignore[assignment]


class WeirdModuleMissing(ValueError):
    pass


WeirdModuleMissing.__module__ = "castor_no_such_module.sub"


class WeirdQualname(ValueError):
    pass


WeirdQualname.__qualname__ = "<locals>.q" * 2000


class HostileMeta(type):
    """The class itself refuses its own name, module and qualname."""

    def __getattribute__(cls, name: str) -> Any:
        if name in ("__module__", "__qualname__", "__name__", "__mro__", "__dict__"):
            raise RuntimeError(f"the class refuses {name}")
        return super().__getattribute__(name)


class MetaHostile(ValueError, metaclass=HostileMeta):
    pass


class GetattrHostile(ValueError):
    """Every attribute lookup on the instance raises (its __class__, __traceback__, ...)."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"the exception refuses {name}")


class NotesHostile(ValueError):
    pass


class MarkupMessage(ValueError):
    """Text a terminal renderer (rich) would take for markup, a NUL, a lone surrogate."""


# -- the raisers: each raises one exception, with a real traceback ------------------


def _str_raises() -> NoReturn:
    raise StrRaises("hidden")


def _str_raises_base() -> NoReturn:
    raise StrRaisesBase("hidden")


def _str_not_a_string() -> NoReturn:
    raise StrNotAString("hidden")


def _str_subclass() -> NoReturn:
    raise StrSubclass()


def _repr_and_str_raise() -> NoReturn:
    raise ReprAndStrRaise("hidden")


def _str_recurses() -> NoReturn:
    raise StrRecurses()


def _huge_str() -> NoReturn:
    raise HugeStr()


def _huge_message() -> NoReturn:
    raise ValueError("x" * 3_000_000)


def _args_raise() -> NoReturn:
    raise ArgsRaise("a", "b")


def _odd_args() -> NoReturn:
    looped: list[Any] = []
    looped.append(looped)
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    raise ValueError(object(), {1, 2}, looped, deep, Unjsonable(), HostileDict(a=1), b"bytes")


def _hostile_args() -> NoReturn:
    raise ValueError(HostileDict(a=1))


def _huge_args() -> NoReturn:
    raise ValueError("y" * 1_000_000, list(range(100_000)))


def _surrogate_args() -> NoReturn:
    raise ValueError("lone \ud800 surrogate", "fine")


def _key_error_hostile_key() -> NoReturn:
    raise KeyError(_StrRaisesObject())  # str(KeyError(k)) is repr(k), which raises


def _weird_module_int() -> NoReturn:
    raise WeirdModuleInt("m")


def _weird_module_none() -> NoReturn:
    raise WeirdModuleNone("m")


def _weird_module_object() -> NoReturn:
    raise WeirdModuleObject("m")


def _weird_module_missing() -> NoReturn:
    raise WeirdModuleMissing("m")


def _weird_qualname() -> NoReturn:
    raise WeirdQualname("m")


def _meta_hostile() -> NoReturn:
    raise MetaHostile("m")


def _getattr_hostile() -> NoReturn:
    raise GetattrHostile("m")


def _notes_hostile() -> NoReturn:
    exc = NotesHostile("m")
    exc.__notes__ = [StrRaises("note"), EvilStr("an evil note"), 5]  # type: ignore[list-item]
    raise exc


def _notes_not_a_list() -> NoReturn:
    exc = NotesHostile("m")
    exc.__notes__ = _StrRaisesObject()  # type: ignore[assignment]
    raise exc


def _cyclic_context() -> NoReturn:
    a, b = ValueError("a"), KeyError("b")
    a.__context__, b.__context__ = b, a
    raise a


def _cyclic_cause() -> NoReturn:
    a = StrRaises("a")
    a.__cause__ = a
    raise a


def _long_chain() -> NoReturn:
    exc: BaseException = ValueError(0)
    for i in range(1, 20_001):
        nxt = (StrRaises if i % 2 else ValueError)(i)
        nxt.__context__ = exc
        exc = nxt
    raise exc


def _deep_recursion() -> NoReturn:
    def down(n: int) -> NoReturn:
        if n == 0:
            raise StrRaises("bottom")
        down(n - 1)
    down(min(sys.getrecursionlimit() // 2, 500))
    raise AssertionError("unreachable")


def _group() -> NoReturn:
    members: list[Exception] = [StrRaises("g"), StrNotAString(), GetattrHostile("g"), MetaHostile("g")]
    for _ in range(50):
        members = [ExceptionGroup("nested", members), ValueError("sibling")]
    raise ExceptionGroup("outer", members)


def _markup_message() -> NoReturn:
    raise MarkupMessage("[/] [bold]not markup[/bold] [link=x] \x00 nul, \ud83d lone surrogate")


KINDS: dict[str, Callable[[], NoReturn]] = {
    "str_raises": _str_raises,
    "str_raises_base": _str_raises_base,
    "str_not_a_string": _str_not_a_string,
    "str_subclass": _str_subclass,
    "repr_and_str_raise": _repr_and_str_raise,
    "str_recurses": _str_recurses,
    "huge_str": _huge_str,
    "huge_message": _huge_message,
    "args_raise": _args_raise,
    "odd_args": _odd_args,
    "hostile_args": _hostile_args,
    "huge_args": _huge_args,
    "surrogate_args": _surrogate_args,
    "key_error_hostile_key": _key_error_hostile_key,
    "weird_module_int": _weird_module_int,
    "weird_module_none": _weird_module_none,
    "weird_module_object": _weird_module_object,
    "weird_module_missing": _weird_module_missing,
    "weird_qualname": _weird_qualname,
    "meta_hostile": _meta_hostile,
    "getattr_hostile": _getattr_hostile,
    "notes_hostile": _notes_hostile,
    "notes_not_a_list": _notes_not_a_list,
    "cyclic_context": _cyclic_context,
    "cyclic_cause": _cyclic_cause,
    "long_chain": _long_chain,
    "deep_recursion": _deep_recursion,
    "group": _group,
    "markup_message": _markup_message,
}

# The class each kind raises (a record's type path ends with its __qualname__).
CLASSES: dict[str, type[BaseException]] = {
    "str_raises": StrRaises, "str_raises_base": StrRaisesBase, "str_not_a_string": StrNotAString,
    "str_subclass": StrSubclass, "repr_and_str_raise": ReprAndStrRaise, "str_recurses": StrRecurses,
    "huge_str": HugeStr, "huge_message": ValueError, "args_raise": ArgsRaise, "odd_args": ValueError,
    "hostile_args": ValueError, "huge_args": ValueError, "surrogate_args": ValueError,
    "key_error_hostile_key": KeyError, "weird_module_int": WeirdModuleInt,
    "weird_module_none": WeirdModuleNone, "weird_module_object": WeirdModuleObject,
    "weird_module_missing": WeirdModuleMissing, "weird_qualname": WeirdQualname, "meta_hostile": MetaHostile,
    "getattr_hostile": GetattrHostile, "notes_hostile": NotesHostile, "notes_not_a_list": NotesHostile,
    "cyclic_context": ValueError, "cyclic_cause": StrRaises, "long_chain": ValueError,
    "deep_recursion": StrRaises, "group": ExceptionGroup, "markup_message": MarkupMessage,
}


def qualname(cls: type) -> str:
    """A class's own __qualname__, past any metaclass that hides it."""
    return type.__dict__["__qualname__"].__get__(cls)  # type: ignore[no-any-return]


def raise_kind(kind: str) -> NoReturn:
    KINDS[kind]()


def caught(kind: str) -> BaseException:
    """The exception `kind` raises, caught (traceback attached)."""
    try:
        raise_kind(kind)
    except BaseException as exc:  # noqa: BLE001 - every kind is wanted, even BaseException ones
        return exc
    raise AssertionError(f"{kind} did not raise")


# -- stored values that fight back when displayed (castor/views.py) -------------------


class ReprRaisesValue:
    """A picklable result whose repr raises."""

    def __repr__(self) -> str:
        raise RuntimeError("ReprRaisesValue.__repr__ refuses")


class HostileEqList(list):  # type: ignore[type-arg]
    """JSON can encode it, but comparing or showing it raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("HostileEqList.__eq__ refuses")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        raise RuntimeError("HostileEqList.__repr__ refuses")


class SetstateRaises:
    """Unpickling it raises an exception whose str() raises."""

    def __getstate__(self) -> dict[str, int]:
        return {"x": 1}

    def __setstate__(self, state: dict[str, int]) -> None:
        raise StrRaises("cannot restore")


# -- results that fight back when serialized (castor/execution.py) ---------------------


class ItemsRaise(dict):  # type: ignore[type-arg]
    """A result the json encoder cannot walk: its items() raises an exception whose str() raises."""

    def items(self) -> Any:
        raise StrRaises("items() refuses")

    def keys(self) -> Any:
        raise StrRaises("keys() refuses")

    def __iter__(self) -> Any:
        raise StrRaises("__iter__ refuses")


class NameHidingMeta(type):
    def __getattribute__(cls, name: str) -> Any:
        if name in ("__module__", "__qualname__", "__name__"):
            raise RuntimeError(f"the class refuses {name}")
        return super().__getattribute__(name)


class MetaHostileValue(metaclass=NameHidingMeta):
    """A result whose class hides its name (json's TypeError message asks for it)."""


RESULTS: dict[str, Callable[[], object]] = {
    "result_items_raise": lambda: ItemsRaise(a=1),
    "result_meta_hostile": MetaHostileValue,
}
