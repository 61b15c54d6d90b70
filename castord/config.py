"""castord's configuration: one frozen object, built once by the CLI and passed down."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

# Between SIGABRT and SIGKILL for an unresponsive child (castord/supervisor.py's
# KILL_GRACE_SECONDS; a test keeps the two equal): part of how long a stalled
# child's tasks stay out of reach, so part of the shortest safe --lease.
CHILD_KILL_GRACE_SECONDS = 2.0
# Owner-only: the database castord creates holds every task's arguments, and
# whoever can write it chooses what the workers run.
DEFAULT_UMASK = 0o077
_UMASK = re.compile(r"(?:0o)?([0-7]{1,4})")


def minimum_lease(*, heartbeat_timeout: float, heartbeat_interval: float) -> float:
    """The shortest lease a healthy child is sure to hold until the master has killed
    it if it stalls: the master notices the silence after up to timeout + interval
    and kills it CHILD_KILL_GRACE_SECONDS after SIGABRT, and only then hands its
    tasks back; meanwhile its leases, renewed every lease/3, have at least two thirds
    of their length left when it stalls."""
    return 1.5 * (heartbeat_timeout + heartbeat_interval + CHILD_KILL_GRACE_SECONDS)


def parse_umask(text: str) -> int:
    """'077', '0077' or '0o077' as a number; ValueError with the fix otherwise."""
    match = _UMASK.fullmatch(text.strip())
    if match is None or int(match.group(1), 8) > 0o777:
        raise ValueError(f"--umask must be an octal number such as 077 or 027, not {text!r}")
    return int(match.group(1), 8)


@dataclass(frozen=True)
class Config:
    app: str
    workers: int
    threads: int
    queues: tuple[str, ...] | None = None
    pidfile: str | None = None
    detach: bool = False
    log_format: str = "auto"
    log_level: str = "info"
    log_file: str | None = None
    graceful_timeout: float | None = None  # None: wait for non-daemon tasks as long as they take
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 10.0
    max_tasks_per_child: int | None = None
    max_memory_per_child: int | None = None  # MB of RSS
    lease: float = 30.0
    prefetch: int = 32  # most tasks a child claims at once (castor/worker.py, prefetch)
    max_lost: int = 3  # a task whose worker was lost this many times fails (WorkerLost)
    metrics_port: int | None = None  # serve Prometheus metrics here (castor[metrics])
    metrics_host: str = "127.0.0.1"
    capture_output: bool = False  # children's stdout/stderr go to log_file (gunicorn's --capture-output)
    dashboard: bool = False  # the `castor` command's live terminal view owns stdout
    umask: int = DEFAULT_UMASK  # set by castord at start; what it and its children create

    def __post_init__(self) -> None:
        for option, value in (("lease", self.lease), ("heartbeat-interval", self.heartbeat_interval),
                              ("heartbeat-timeout", self.heartbeat_timeout)):
            if not math.isfinite(value):
                raise ValueError(f"--{option} must be a finite number of seconds, not {value}")
        if self.graceful_timeout is not None and math.isnan(self.graceful_timeout):
            raise ValueError("--graceful-timeout must be a number of seconds, not nan")
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"--heartbeat-timeout ({self.heartbeat_timeout:g} s) must be longer than "
                f"--heartbeat-interval ({self.heartbeat_interval:g} s)"
            )
        self._check_lease()
        self._check_umask()
        if self.capture_output and self.log_file is None and self.log_format == "console":
            # (In JSON mode output is always captured, as task.output lines.)
            raise ValueError("--capture-output with --log-format console needs --log-file: there is nowhere "
                             "else to send the output")
        if self.workers == 0 and self.threads == 0:
            raise ValueError("--workers and --threads are both 0: castord would run nothing")

    def _check_lease(self) -> None:
        minimum = minimum_lease(heartbeat_timeout=self.heartbeat_timeout,
                                heartbeat_interval=self.heartbeat_interval)
        if self.lease < minimum - 1e-9:  # the minimum as printed is accepted
            reach = self.heartbeat_timeout + self.heartbeat_interval + CHILD_KILL_GRACE_SECONDS
            raise ValueError(
                f"--lease ({self.lease:g} s) must be at least {minimum:g} s with --heartbeat-timeout "
                f"{self.heartbeat_timeout:g} s and --heartbeat-interval {self.heartbeat_interval:g} s: "
                f"a stalled child is killed and its tasks handed back only after up to {reach:g} s "
                f"(timeout + interval + {CHILD_KILL_GRACE_SECONDS:g} s from SIGABRT to SIGKILL), when a "
                "lease renewed every third of its length may have only two thirds left; a lease that "
                "expires earlier lets a second worker run the task beside the stalled child. "
                "Raise --lease or lower --heartbeat-timeout"
            )

    def _check_umask(self) -> None:
        if not 0 <= self.umask <= 0o777:
            raise ValueError(f"--umask must be an octal number such as 077 or 027, not {self.umask:o}")
        if self.umask & 0o600:
            which = "write" if self.umask & 0o200 else "read"
            raise ValueError(
                f"--umask {self.umask:03o} takes away the owner's own {which} permission, so castord "
                "could not use the files it creates (its database's -wal and -shm files among them); "
                "use 077 (owner only) or 027 (the group may read)")
        if not self.umask & 0o002:
            raise ValueError(
                f"--umask {self.umask:03o} lets every local user write to the files castord creates, "
                "its log file among them (anyone could forge or erase its lines); "
                "use 077 (owner only), 027 or 007")


def default_workers() -> int:
    return os.cpu_count() or 1
