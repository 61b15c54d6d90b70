"""castor's loggers: structlog on top of stdlib logging.

Library code logs through stdlib `logging` (logger names under "castor."), so an
application decides what it sees, and by default only warnings surface. castord
installs a handler with structlog's ProcessorFormatter on the root logger
(castord/logging.py), which renders every record, castor's and the task code's
own, as one JSON object per line with the fields of SPEC §5.
"""

from __future__ import annotations

import logging
import os
import sys
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
