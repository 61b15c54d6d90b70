"""castord's exit codes and the exceptions that lead to them."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """castord's exit statuses.

    OK: a clean stop (drain or fast stop). INTERNAL_ERROR: a bug, or a pidfile held
    by a live castord. USAGE: a bad option. APP_LOAD_ERROR: APP cannot be loaded or
    its database cannot be used (systemd: RestartPreventExitStatus=3).
    BOOT_FAILURES: children keep failing to boot or to use the database.
    NOT_FOUND, REFUSED: `castord tasks` only (no task with that id; an action the
    task's state refuses). DATABASE_REPLACED: the database file was deleted or
    another file was renamed into its place under a running castord, whose
    connections still write to the old one; it stops so that systemd
    (Restart=on-failure) starts it again on the file now at that path.
    """

    OK = 0
    INTERNAL_ERROR = 1
    USAGE = 2
    APP_LOAD_ERROR = 3
    BOOT_FAILURES = 4
    NOT_FOUND = 5
    REFUSED = 6
    DATABASE_REPLACED = 8


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
