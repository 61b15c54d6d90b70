"""castor's loggers: structlog on top of stdlib logging.

Library code logs through stdlib `logging` (logger names under "castor."), so an
application decides what it sees, and by default only warnings surface. castord
installs a structlog ProcessorFormatter on the root logger to render every
record, castor's and the task code's own, as one JSON object per line.
"""

from __future__ import annotations

import logging
from typing import Any

import structlog

_PROCESSORS: list[Any] = [
    structlog.stdlib.filter_by_level,
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
]


def get_logger(name: str) -> Any:
    """A structlog logger that writes to the stdlib logger `name`."""
    return structlog.wrap_logger(
        logging.getLogger(name), processors=_PROCESSORS, wrapper_class=structlog.stdlib.BoundLogger
    )
