"""castor's loggers: structlog on top of stdlib logging.

Library code logs through stdlib `logging` (logger names under "castor."), so an
application decides what it sees, and by default only warnings surface. castord
installs a handler with structlog's ProcessorFormatter on the root logger
(castord/logging.py), which renders every record, castor's and the task code's
own, as one JSON object per line with the fields of SPEC §5.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import structlog

from castor.failures import class_path, format_traceback, safe_text

# The process's role in log lines: client | process-worker | thread-host | master.
_role = "client"


def set_role(role: str) -> None:
    global _role
    _role = role


def add_process_fields(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("pid", os.getpid())
    event.setdefault("role", _role)
    return event


def structure_exception(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """exc_info -> exc_type, exc_message, traceback (strings a log shipper can index)."""
    exc_info = event.pop("exc_info", None)
    if exc_info is True:
        exc_info = sys.exc_info()
    elif isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if isinstance(exc_info, tuple) and exc_info[0] is not None:
        exc_type, exc, tb = exc_info
        # The exception may be a task's: its __str__ may raise, its chain be hostile
        # (castor.failures never raises, and bounds the sizes).
        event.setdefault("exc_type", class_path(exc_type))
        event.setdefault("exc_message", safe_text(exc))
        event["traceback"] = format_traceback(exc)
    return event


# Applied to every event, castor's own and (through the formatter) stdlib records.
SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    add_process_fields,
    structure_exception,
]


def get_logger(name: str) -> Any:
    """A structlog logger that writes to the stdlib logger `name`."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[structlog.stdlib.filter_by_level, *SHARED_PROCESSORS,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


# Attributes every LogRecord has: anything else on a record came from `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def structure_stdlib_record(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """A stdlib `logging` record (a library's, task code's): its free text goes in
    `message`, `event` stays a stable name (`log`), and the logger's name and the
    record's `extra=` fields come along."""
    record = event.get("_record")
    if record is None or event.get("_from_structlog"):
        return event
    event["message"] = event.get("event")
    event["event"] = "log"
    event["logger"] = record.name
    for key, value in vars(record).items():
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
            event.setdefault(key, value)
    return event


# For stdlib records, before the shared processors (castord/logging.py's formatter).
FOREIGN_PROCESSORS: list[Any] = [structure_stdlib_record, *SHARED_PROCESSORS]


# -- the hot path: one line per task end ---------------------------------------------

# castord's JSON handler (castord/logging.py), when it is the only one on the root
# logger; None elsewhere (a client's process, console mode).
_fast_handler: Any = None


def install_fast_path(handler: Any) -> None:
    global _fast_handler
    _fast_handler = handler


# json.dumps(line, default=repr) builds an encoder per call (~5 µs of the ~12 µs a line
# took to render); this one is made once, with the same options.
_encoder = json.JSONEncoder(default=repr)
# The lines emit() holds back for one write, per thread, inside lines_together().
_held = threading.local()


@contextmanager
def lines_together() -> Iterator[None]:
    """Hold the hot-path lines this thread emits in the block and write them in one
    write at its end (a worker's batch of task ends: one write and flush instead of
    one per task, ~7 µs each). Lines stay in the order emitted; a line of any other
    kind (structlog's) goes out at once. Nested blocks write at the outermost end."""
    if _fast_handler is None or getattr(_held, "lines", None) is not None:
        yield
        return
    _held.lines = []
    try:
        yield
    finally:
        lines, _held.lines = _held.lines, None
        if lines:
            _fast_handler.write_lines(lines)


def emit(logger: logging.Logger, levelno: int, event: str, fields: dict[str, Any]) -> None:
    """Log `event` with `fields`, as `get_logger(logger.name).<level>(event, **fields)`
    would, for lines written once per task (a task's end).

    Under castord's JSON handler this renders the same JSON object itself, without
    structlog's chain and a LogRecord (about 6 µs a line instead of 20 µs: at tens
    of thousands of tasks a second, the difference is a tenth of a core). Fields
    must be plain JSON values and carry no exception.
    """
    if not logger.isEnabledFor(levelno):
        return
    handler = _fast_handler
    root = logging.root
    if handler is None or logger.handlers or root.handlers != [handler] or not logger.propagate:
        get_logger(logger.name).log(levelno, event, **fields)
        return
    line = dict(structlog.contextvars.get_contextvars())
    line.update(fields)
    line["event"] = event
    line["level"] = logging.getLevelName(levelno).lower()
    line["timestamp"] = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
    line["pid"] = os.getpid()
    line["role"] = _role
    held = getattr(_held, "lines", None)
    if held is not None:
        held.append((levelno, _encoder.encode(line)))
    else:
        handler.write_line(levelno, _encoder.encode(line))
