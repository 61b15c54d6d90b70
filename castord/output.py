"""What a castord process writes to stdout and stderr, as `task.output` JSON lines.

In JSON mode the log stream must hold nothing but JSON lines: an aggregator (or
`jq`) that meets a raw `print()` stops or drops the line. Two layers take over:

* `sys.stdout` / `sys.stderr` become line writers that log each line in the
  writing thread, so a task's context (task_id, task_name, ...) is bound, even
  in the thread host where many tasks print at once;
* file descriptors 1 and 2 become pipes read by one thread, for what bypasses
  Python's streams (C extensions, subprocesses a task starts, faulthandler).
  Those lines carry the task's fields when exactly one task is running in this
  process (always so in a process child), none otherwise.

The log handler keeps its own copy of the original stdout (the journal, a pipe),
so nothing it writes comes back through the pipes.
"""

from __future__ import annotations

import io
import logging
import os
import selectors
import sys
import threading
from collections.abc import Callable
from typing import Any

from castor import logs

# Longest piece of a line in one `task.output` (journald's default LineMax is 48K;
# the JSON around it and escaping make it longer).
CHUNK = 16 * 1024
LEVELS = {"stdout": logging.INFO, "stderr": logging.WARNING}

_log = logging.getLogger("castor.output")
_emitting = threading.local()


def _emit(stream: str, text: str, extra: dict[str, Any] | None = None) -> None:
    if getattr(_emitting, "active", False):
        return  # logging reporting its own failure to sys.stderr: that would loop
    fields: dict[str, Any] = dict(extra or {})
    fields["stream"] = stream
    fields["message"] = text
    _emitting.active = True
    try:
        logs.emit(_log, LEVELS[stream], "task.output", fields)
    finally:
        _emitting.active = False


class LineWriter(io.TextIOBase):
    """sys.stdout / sys.stderr: each complete line is logged by the thread that
    wrote it (per-thread buffers: two tasks' half lines never mix)."""

    def __init__(self, stream: str, fd: int):
        super().__init__()
        self.stream = stream
        self._fd = fd
        self._local = threading.local()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return "replace"

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        # Code that hands sys.stdout to a subprocess or faulthandler gets the pipe.
        return self._fd

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        pending = getattr(self._local, "pending", "") + text
        *lines, pending = pending.split("\n")
        for line in lines:
            self._send(line)
        if len(pending) >= CHUNK:
            self._send(pending)
            pending = ""
        self._local.pending = pending
        return len(text)

    def flush(self) -> None:
        # An explicit flush() (a prompt, a progress bar) shows what is there so far.
        pending = getattr(self._local, "pending", "")
        if pending:
            self._local.pending = ""
            self._send(pending)

    def _send(self, line: str) -> None:
        for start in range(0, max(len(line), 1), CHUNK):
            _emit(self.stream, line[start:start + CHUNK])


class OutputCapture:
    """Takes over stdout and stderr of this process (see the module's docstring)."""

    def __init__(self, handler: Any, task_fields: Callable[[], dict[str, Any] | None] | None = None):
        self.handler = handler
        # Fields of the one task running now, for lines written to the fds (a child's worker).
        self.task_fields = task_fields
        self._readers: dict[int, str] = {}
        self._thread: threading.Thread | None = None
        self.stderr_fd = 2  # the original stderr, kept for start-up refusals (LogSink.tell)

    def start(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        # The handler writes to stdout (no --log-file): give it its own descriptor
        # for the same file, before fd 1 becomes a pipe.
        if self.handler.stream in (sys.stdout, sys.__stdout__) or _fileno(self.handler.stream) == 1:
            own = os.dup(1)
            self.handler.setStream(os.fdopen(own, "w", encoding="utf-8", errors="replace",
                                             buffering=1, closefd=True))
        self.stderr_fd = os.dup(2)
        os.set_inheritable(self.stderr_fd, False)
        for fd, name in ((1, "stdout"), (2, "stderr")):
            read_end, write_end = os.pipe()
            os.dup2(write_end, fd)
            os.close(write_end)
            self._readers[read_end] = name
        sys.stdout = LineWriter("stdout", 1)
        sys.stderr = LineWriter("stderr", 2)
        self._thread = threading.Thread(target=self._read, name="castord-output", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Flush the line writers, close our ends of the pipes and give the reader
        up to `timeout` seconds to pass on what is left (a subprocess of a task
        may still hold a copy of the pipe: then we do not wait for it)."""
        for writer in (sys.stdout, sys.stderr):
            try:
                writer.flush()
            except Exception:  # noqa: BLE001, S110 - leaving anyway
                pass
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        if self._thread is not None:
            self._thread.join(timeout)

    def _read(self) -> None:
        selector = selectors.DefaultSelector()
        pending: dict[int, bytes] = {}
        for fd in self._readers:
            selector.register(fd, selectors.EVENT_READ)
            pending[fd] = b""
        while self._readers:
            for key, _ in selector.select():
                fd = key.fd
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:  # every writer closed it
                    if pending[fd]:
                        self._send(fd, pending[fd])
                    selector.unregister(fd)
                    os.close(fd)
                    del self._readers[fd]
                    continue
                *lines, rest = (pending[fd] + data).split(b"\n")
                for line in lines:
                    self._send(fd, line)
                if len(rest) >= CHUNK:
                    self._send(fd, rest)
                    rest = b""
                pending[fd] = rest

    def _send(self, fd: int, line: bytes) -> None:
        try:
            extra = self.task_fields() if self.task_fields is not None else None
        except Exception:  # noqa: BLE001 - the worker's bookkeeping changed under us
            extra = None
        text = line.decode("utf-8", errors="replace")
        for start in range(0, max(len(text), 1), CHUNK):
            _emit(self._readers[fd], text[start:start + CHUNK], extra)


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
