"""Log output for castord's processes: JSON lines, or console rendering on a TTY.

One handler on the root logger renders castor's structlog events and any stdlib
`logging` record (task code's included, with the task's context bound) alike.

In JSON mode nothing else reaches the stream: what task code (or anything else
in the process) writes to stdout and stderr, print() and C-level writes to file
descriptors 1 and 2 alike, comes out as `task.output` lines (castord/output.py).
When the stream is the systemd journal, each line starts with its syslog
priority (`<3>` for an error), which journald reads and strips.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import IO, Any

import structlog

from castor import logs
from castor.logs import FOREIGN_PROCESSORS, get_logger, set_role
from castord.errors import CastordError
from castord.files import open_append

LEVELS = ("debug", "info", "warning", "error", "critical")

def priority(levelno: int) -> int:
    """A logging level as a syslog priority (journald reads it from a `<N>` prefix)."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


def is_journal(stream: IO[str]) -> bool:
    """True if `stream` is the journal stream systemd gave this service.

    systemd sets JOURNAL_STREAM=device:inode of the socket it connected stdout
    (or stderr) to; the variable is inherited by whatever we start, so compare
    it with what this stream really is (a --log-file or a pipe is not the journal).
    """
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class LineHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that knows whether it writes to the journal (and prefixes
    each line with its priority then), and takes pre-rendered JSON lines for the
    hot path (castor.logs.emit)."""

    def __init__(self, stream: IO[str], *, json: bool):
        super().__init__(stream)
        self.json = json
        self.journal = is_journal(stream)

    def setStream(self, stream: IO[str]) -> IO[str] | None:  # noqa: N802 - logging's name
        old = super().setStream(stream)
        self.journal = is_journal(stream)
        return old

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"<{priority(record.levelno)}>{text}" if self.journal else text

    def write_line(self, levelno: int, text: str) -> None:
        """Write one rendered line, under the handler's lock like emit()."""
        self.write_lines([(levelno, text)])

    def write_lines(self, lines: list[tuple[int, str]]) -> None:
        """Write rendered lines (levelno, text) in one write, under the handler's lock."""
        if self.journal:
            text = "".join(f"<{priority(levelno)}>{line}{self.terminator}" for levelno, line in lines)
        else:
            text = "".join(line + self.terminator for _, line in lines)
        with self.lock:  # type: ignore[union-attr]
            try:
                self.stream.write(text)
                self.flush()
            except Exception:  # noqa: BLE001 - as logging does: a log write never raises
                self.handleError(logging.makeLogRecord({"msg": text, "levelno": lines[-1][0]}))


class LogSink:
    """The configured stream; reopen() after log rotation (SIGUSR1)."""

    def __init__(self, log_file: str | None, handler: LineHandler, fmt: str):
        self.log_file = log_file
        self.handler = handler
        self.fmt = fmt
        self.capturing = False
        self.capture: Any = None  # castord.output.OutputCapture, in JSON mode

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
        if old is not None and old not in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            old.close()
        if self.capturing:
            self._pass_output_to_file()
        return True

    def capture_output(self, task_fields: Any = None) -> None:
        """Take over this process's stdout and stderr (task code's print(), stray
        tracebacks, C libraries' writes to fds 1 and 2).

        JSON mode: each line becomes a `task.output` JSON line in the log stream,
        with or without --log-file (castord/output.py). Console mode: only with
        --log-file, lines go into the file as written (gunicorn's --capture-output);
        without one they pass through to the terminal as they are.
        """
        if self.fmt == "json":
            from castord.output import OutputCapture

            if self.capture is None:
                self.capture = OutputCapture(self.handler, task_fields)
                self.capture.start()
            return
        if self.log_file is None:
            return
        self.capturing = True
        self._pass_output_to_file()

    def _pass_output_to_file(self) -> None:
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

    def tell(self, message: str) -> None:
        """A refusal at start-up, for whoever started castord: the log line said it
        already; say it on stderr too, unless stderr is where that line went (the
        journal, `2>&1`), where it would be said twice, once not as JSON."""
        fd = self.capture.stderr_fd if self.capture is not None else 2
        try:
            if _same_file(fd, self.handler.stream.fileno()):
                return
            os.write(fd, f"{message}\n".encode(errors="replace"))
        except (OSError, ValueError, AttributeError):
            pass

    def close_output(self, timeout: float = 1.0) -> None:
        """Before the process exits: hand over what was written to fds 1 and 2 but
        not yet turned into lines (best effort, bounded)."""
        if self.capture is not None:
            self.capture.stop(timeout)


def _same_file(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
        foreign_pre_chain=FOREIGN_PROCESSORS,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = LineHandler(stream, json=fmt == "json")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # beaver-db and asyncio chatter stays at warning unless asked for.
    for noisy in ("aiosqlite", "asyncio", "beaver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # warnings.warn() becomes a log line (`logger` py.warnings), not bare stderr text.
    logging.captureWarnings(True)
    # The one line per task end skips the formatter's chain (castor.logs.emit).
    logs.install_fast_path(handler if fmt == "json" else None)
    global _sink
    _sink = LogSink(log_file, handler, fmt)
    return _sink


_sink: LogSink | None = None  # this process's, once configure() ran


def flush_output(timeout: float = 1.0) -> None:
    """As the process leaves: what it wrote to stdout/stderr last reaches the log."""
    if _sink is not None:
        _sink.close_output(timeout)
