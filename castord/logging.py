"""Log output for castord's processes: JSON lines, or console rendering on a TTY.

One handler on the root logger renders castor's structlog events and any stdlib
`logging` record (task code's included, with the task's context bound) alike.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

import structlog

from castor.logs import SHARED_PROCESSORS, get_logger, set_role
from castord.errors import CastordError
from castord.files import open_append

LEVELS = ("debug", "info", "warning", "error", "critical")


class LogSink:
    """The configured stream; reopen() after log rotation (SIGUSR1)."""

    def __init__(self, log_file: str | None, handler: logging.StreamHandler[IO[str]]):
        self.log_file = log_file
        self.handler = handler
        self.capturing = False

    def reopen(self) -> bool:
        """Open the log file again (after rotation); False if that was refused."""
        if self.log_file is None:
            return True
        try:
            new_stream = open_append(self.log_file)
        except (CastordError, OSError) as exc:  # a link planted after rotation, a full disk...
            # Keep writing to the stream we have, and say so there.
            get_logger("castord.logging").error("castord.log_reopen_failed", log_file=self.log_file,
                                                error=str(exc))
            return False
        old = self.handler.setStream(new_stream)
        if old is not None and old not in (sys.stdout, sys.stderr):
            old.close()
        if self.capturing:
            self.capture_output()
        return True

    def capture_output(self) -> None:
        """Send this process's stdout and stderr (task code's print(), stray
        tracebacks, C libraries' writes) into the log file too, as gunicorn's
        --capture-output does. Lines arrive as they are written, not as JSON."""
        if self.log_file is None:
            return
        self.capturing = True
        sys.stdout.flush()
        sys.stderr.flush()
        fd = self.handler.stream.fileno()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        # Line-buffered, so a print() shows up before the task ends.
        for stream in (sys.stdout, sys.stderr):
            reconfigure = getattr(stream, "reconfigure", None)
            if reconfigure is not None:
                reconfigure(line_buffering=True)


def configure(role: str, *, fmt: str = "auto", level: str = "info", log_file: str | None = None) -> LogSink:
    set_role(role)
    stream: IO[str] = open_append(log_file) if log_file else sys.stdout
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=stream.isatty())
        if fmt == "console"
        else structlog.processors.JSONRenderer()
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=SHARED_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # beaver-db and asyncio chatter stays at warning unless asked for.
    for noisy in ("aiosqlite", "asyncio", "beaver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    return LogSink(log_file, handler)
