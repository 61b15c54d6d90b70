"""castord's exit codes and the exceptions that lead to them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 1
    USAGE = 2
    APP_LOAD_ERROR = 3
    BOOT_FAILURES = 4
    # `castord tasks`: no task with that id; an action the task's state refuses.
    NOT_FOUND = 5
    REFUSED = 6


class StatusCode(IntEnum):
    """LSB `status` exit codes."""

    RUNNING = 0
    NOT_RUNNING = 3
    UNKNOWN = 4


class CastordError(Exception):
    """A condition castord reports with a message and an exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR

    def __init__(self, message: str, exit_code: ExitCode | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class PidfileError(CastordError):
    exit_code = ExitCode.INTERNAL_ERROR
