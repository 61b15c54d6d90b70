"""Capturing a task's exception for the database, and rebuilding it for `join`."""

from __future__ import annotations

import builtins
import json
import sys
import traceback as tb
from collections.abc import Callable
from typing import Any

from castor.errors import RemoteTraceback, TaskCancelled, TaskExpired, TaskFailed

# An error record stays bounded whatever the exception holds: a message or a
# traceback longer than this (in characters) is cut, with a note saying how much
# went; args whose JSON is longer are left out (rebuild() then gives TaskFailed).
MESSAGE_LIMIT = 64 * 1024
TRACEBACK_LIMIT = 64 * 1024
ARGS_LIMIT = 64 * 1024
TYPE_LIMIT = 1024
# Of a cut traceback, the start (the oldest exception of a chain) and the end (the
# newest: what the task raised, and its innermost frames) are kept.
_TRACEBACK_HEAD = 16 * 1024

# The descriptors the built-in types themselves use: they bypass whatever a
# subclass or metaclass puts in front (a property named `args`, a __getattribute__).
_TYPE_MODULE = type.__dict__["__module__"]
_TYPE_QUALNAME = type.__dict__["__qualname__"]
_EXC_ARGS = BaseException.__dict__["args"]
_EXC_TRACEBACK = BaseException.__dict__["__traceback__"]


def describe(exc: BaseException) -> dict[str, Any]:
    """A JSON-ready record of an exception: type path, message, args, traceback.

    Never raises, whatever the exception object does: like the stdlib's traceback
    module, castor swallows what the exception's own code raises (from __str__,
    __repr__, a property, its metaclass) and writes a stand-in instead, so that a
    failed task is recorded as failed. The record is plain str/list data with no
    lone surrogates (SQLite and JSON responses need UTF-8), and bounded in size.
    """
    cls = type(exc)
    type_path = class_path(cls)
    message = safe_text(exc)
    return {
        "type": type_path,
        "message": message,
        "traceback": format_traceback(exc, type_path, message),
        "args": _json_args(exc),
    }


def class_path(cls: type) -> str:
    """"module.QualName" of a class; an odd __module__ (not a str) is spelled
    "<unknown>", as the traceback module does."""
    try:
        module = _plain(_TYPE_MODULE.__get__(cls))
    except BaseException:  # noqa: BLE001 - as traceback's _safe_string
        module = None
    path = f"{'<unknown>' if module is None else module}.{class_name(cls)}"
    if len(path) > TYPE_LIMIT:
        path = f"[{len(path) - TYPE_LIMIT:,} characters cut]{path[-TYPE_LIMIT:]}"
    return _clean(path)


def class_name(cls: type) -> str:
    """A class's own __qualname__, past any metaclass that hides it."""
    try:
        name = _plain(_TYPE_QUALNAME.__get__(cls))
    except BaseException:  # noqa: BLE001
        name = None
    return "<unknown>" if name is None else name


def safe_text(obj: object, func: Callable[[object], object] = str, limit: int = MESSAGE_LIMIT) -> str:
    """func(obj) (str or repr) as plain text, cut past `limit` characters; what
    cannot be built becomes "<unprintable ValueError object>"."""
    try:
        text = _plain(func(obj))
    except BaseException:  # noqa: BLE001 - as traceback's _safe_string
        text = None
    if text is None:
        return f"<unprintable {_clean(class_name(type(obj)))} object>"
    if len(text) > limit:
        text = f"{text[:limit]}... [cut: {len(text) - limit:,} more characters]"
    return _clean(text)


def format_traceback(exc: BaseException, type_path: str | None = None, message: str | None = None) -> str:
    """The exception's traceback as the traceback module writes it, chain included.

    If even that module cannot format it (a __getattribute__ that refuses
    __traceback__, a metaclass that hides the class's name), the frames of the
    exception's own traceback and a last line of type and message. Past
    TRACEBACK_LIMIT characters, the middle is cut.
    """
    try:
        text = "".join(tb.format_exception(exc))
    except BaseException as err:  # noqa: BLE001
        text = _fallback_traceback(exc, type_path, message, err)
    if len(text) > TRACEBACK_LIMIT:
        tail = TRACEBACK_LIMIT - _TRACEBACK_HEAD
        text = (f"{text[:_TRACEBACK_HEAD]}\n... [traceback cut: {len(text) - TRACEBACK_LIMIT:,} characters]"
                f" ...\n{text[-tail:]}")
    return _clean(text)


def _fallback_traceback(exc: BaseException, type_path: str | None, message: str | None,
                        err: BaseException) -> str:
    lines: list[str] = []
    try:
        trace = _EXC_TRACEBACK.__get__(exc)
        if trace is not None:
            lines = ["Traceback (most recent call last):\n", *tb.format_tb(trace)]
    except BaseException:  # noqa: BLE001
        lines = []
    if type_path is None:
        type_path = class_path(type(exc))
    if message is None:
        message = safe_text(exc)
    lines.append(f"{type_path}: {message}\n" if message else f"{type_path}\n")
    lines.append(f"(castor could not format this exception's chain or notes: "
                 f"{class_name(type(err))}: {safe_text(err, limit=1000)})\n")
    return "".join(lines)


def _json_args(exc: BaseException) -> list[Any] | None:
    """The exception's args as plain JSON data (for rebuild), or None when JSON
    cannot carry them, they hold a lone surrogate, or they are too big."""
    try:
        text = json.dumps(list(_EXC_ARGS.__get__(exc)), ensure_ascii=False)
        if len(text) > ARGS_LIMIT:
            return None
        text.encode("utf-8")  # a lone surrogate: UnicodeEncodeError
        args: list[Any] = json.loads(text)  # plain data, not the exception's own objects
    except BaseException:  # noqa: BLE001 - e.g. a dict subclass whose items() raises
        return None
    return args


def _plain(value: object) -> str | None:
    """An exact str with the characters of `value` if it is a str (a subclass's
    own methods are never called), else None."""
    if not issubclass(type(value), str):
        return None
    return str.__str__(value)  # type: ignore[arg-type]


def _clean(text: str) -> str:
    """Lone surrogates (UTF-8 cannot hold them) as backslash escapes."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def describe_message(exc_type: str, message: str) -> dict[str, Any]:
    """An error record for a failure castor itself decided (no Python exception)."""
    return {"type": exc_type, "message": message, "traceback": "", "args": [message]}


def rebuild(record: dict[str, Any], task_id: str) -> BaseException:
    """The task's own exception type when it can be rebuilt here, else TaskFailed.

    Only classes already importable without running new code qualify: builtins
    and modules this process has already imported. The database never decides
    what gets imported.
    """
    type_path = _text(record.get("type")) or "Exception"
    message = _text(record.get("message"))
    trace = _text(record.get("traceback"))
    if type_path == "castor.errors.TaskCancelled":
        return TaskCancelled(message or f"task {task_id} was cancelled")
    if type_path == "castor.errors.TaskExpired":
        return TaskExpired(message or f"task {task_id} expired")
    cls = _find_class(type_path)
    args = record.get("args")
    if cls is not None and isinstance(args, list):
        try:
            exc = cls(*args)
            if not issubclass(type(exc), BaseException):  # a __new__ that returns something else
                raise TypeError(type(exc))
            if trace:
                exc.__cause__ = RemoteTraceback(trace)
        except Exception:  # noqa: BLE001 - fall back to TaskFailed
            exc = None
        if exc is not None:
            return exc
    return TaskFailed(type_path, message, trace, task_id)


def _text(value: Any) -> str:
    """A stored field as text (a damaged or hand-edited row may hold anything JSON can)."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


def _find_class(type_path: str) -> type[BaseException] | None:
    parts = type_path.split(".")
    # The longest prefix that names a loaded module, then attributes from there
    # (so nested classes such as pkg.mod.Outer.Error resolve too).
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        module = builtins if module_name == "builtins" else sys.modules.get(module_name)
        if module is None:
            continue
        obj: Any = module
        for part in parts[split:]:
            obj = getattr(obj, part, None)
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
        return None
    return None
