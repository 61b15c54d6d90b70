"""Capturing a task's exception for the database, and rebuilding it for `join`."""

from __future__ import annotations

import builtins
import json
import sys
import traceback as tb
from typing import Any

from castor.errors import RemoteTraceback, TaskCancelled, TaskFailed


def describe(exc: BaseException) -> dict[str, Any]:
    """A JSON-ready record of an exception: type path, message, args, traceback."""
    cls = type(exc)
    record: dict[str, Any] = {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "message": str(exc),
        "traceback": "".join(tb.format_exception(exc)),
        "args": None,
    }
    try:
        json.dumps(list(exc.args))
        record["args"] = list(exc.args)
    except (TypeError, ValueError):
        pass
    return record


def describe_message(exc_type: str, message: str) -> dict[str, Any]:
    """An error record for a failure castor itself decided (no Python exception)."""
    return {"type": exc_type, "message": message, "traceback": "", "args": [message]}


def rebuild(record: dict[str, Any], task_id: str) -> BaseException:
    """The task's own exception type when it can be rebuilt here, else TaskFailed.

    Only classes already importable without running new code qualify: builtins
    and modules this process has already imported. The database never decides
    what gets imported.
    """
    type_path = record.get("type") or "Exception"
    message = record.get("message") or ""
    trace = record.get("traceback") or ""
    if type_path == "castor.errors.TaskCancelled":
        return TaskCancelled(message or f"task {task_id} was cancelled")
    cls = _find_class(type_path)
    args = record.get("args")
    if cls is not None and args is not None:
        try:
            exc = cls(*args)
        except Exception:  # noqa: BLE001 - fall back to TaskFailed
            exc = None
        if exc is not None:
            if trace:
                exc.__cause__ = RemoteTraceback(trace)
            return exc
    return TaskFailed(type_path, message, trace, task_id)


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
