"""Stored arguments and results as the dashboard shows them, without running stored code.

JSON text is parsed and pretty-printed. A pickle is never really unpickled here:
`pickle.loads` would import and call whatever the bytes name, in the web server.
It is read by an Unpickler whose find_class imports nothing and hands back inert
stand-ins named after the classes, so the page can say which types a value holds
and how big it is (`tuple of 2: int, shop.Order`) and show a safe repr.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import json
import pickle
import reprlib
from dataclasses import dataclass
from typing import Any

# Past this, pretty text is cut (a page holding megabytes of JSON helps no one).
TEXT_LIMIT = 100_000

# What protocols 0-2 build sets and bytes with: real, since they only turn data that is
# already built into data of the same size (nothing imported, nothing else run).
_DATA_CONSTRUCTORS: dict[str, Any] = {"builtins.set": set, "builtins.frozenset": frozenset,
                                      "builtins.complex": complex, "_codecs.encode": codecs.encode}
# Functions protocols 0-1 pickle objects through: the object is of their first argument's class.
_RECONSTRUCTORS = frozenset({"copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"})


@dataclass(frozen=True, slots=True)
class Shown:
    """One stored value for a page: `text` is pretty JSON, or a pickle's safe repr,
    or why it could not be read; `types` describes a pickle's contents."""

    serializer: str
    size: int
    text: str
    types: str | None = None
    readable: bool = True


class _Inert:
    """What any pickled class becomes here: takes every argument and state, runs nothing."""

    _castor_name = "object"

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        first = args[0] if args and isinstance(args[0], type) and issubclass(args[0], _Inert) else None
        if first is not None and cls._castor_name in _RECONSTRUCTORS:
            return object.__new__(first)
        if first is not None and cls._castor_name == "builtins.getattr" and len(args) == 2 \
                and isinstance(args[1], str):  # protocols 0-1 name a method as getattr(class, name)
            return _inert_class(f"{first._castor_name}.{args[1]}")
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # a pickled dict subclass's items
        pass

    def append(self, item: Any) -> None:  # a pickled list subclass's items
        pass

    def extend(self, items: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a stand-in called in turn stays itself
        return self

    def __repr__(self) -> str:
        return f"<{self._castor_name}>"


def _inert_class(path: str) -> type[_Inert]:
    # Not named like a builtin: reprlib picks how to show a value by its class's name.
    return type(f"inert {path[:200]}", (_Inert,), {"_castor_name": path})


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self._classes: dict[str, type[_Inert]] = {}

    def find_class(self, module: str, name: str) -> Any:
        # Protocols 0-2 write Python 2's names (__builtin__.set, copy_reg...): read them as
        # pickle itself does. No Python 3 module has one of those names.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f"{module}.{name}"
        if path in _DATA_CONSTRUCTORS:
            return _DATA_CONSTRUCTORS[path]
        cls = self._classes.get(path)
        if cls is None:
            cls = self._classes[path] = _inert_class(path)
        return cls

    def persistent_load(self, pid: Any) -> _Inert:
        return _Inert()


def type_name(value: Any) -> str:
    if isinstance(value, _Inert):
        return value._castor_name
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _contents(value: Any) -> str:
    """`tuple of 2: int, shop.Order`, `dict of 1: key: str`, or the type alone."""
    if isinstance(value, tuple | list) and value:
        return f"{type_name(value)} of {len(value)}: " + ", ".join(type_name(v) for v in value[:20]) \
            + (", …" if len(value) > 20 else "")
    if isinstance(value, dict) and value:
        items = list(value.items())[:20]
        return f"{type_name(value)} of {len(value)}: " + ", ".join(f"{k}: {type_name(v)}" for k, v in items) \
            + (", …" if len(value) > 20 else "")
    return type_name(value)


_SHORT = reprlib.Repr(maxlevel=4, maxtuple=20, maxlist=20, maxdict=20, maxset=20, maxstring=2000, maxother=200)


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"\n… ({len(text):,} characters in all)"


def show(serializer: str, data: str | bytes | None) -> Shown | None:
    """How to show a stored value (None: there is none, e.g. no result yet)."""
    if data is None:
        return None
    size = len(data.encode() if isinstance(data, str) else data)
    if serializer == "pickle":
        raw = data.encode() if isinstance(data, str) else data
        try:
            value = _InertUnpickler(raw).load()
        except Exception as exc:  # noqa: BLE001 - a damaged pickle is shown as such
            return Shown(serializer, size, f"cannot read this pickle: {type(exc).__name__}: {exc}", readable=False)
        return Shown(serializer, size, _cut(_SHORT.repr(value)), types=_contents(value))
    try:
        value = json.loads(data)
    except ValueError as exc:
        return Shown(serializer, size, f"cannot read this JSON: {exc}", readable=False)
    return Shown(serializer, size, _cut(json.dumps(value, indent=2, ensure_ascii=False)))
