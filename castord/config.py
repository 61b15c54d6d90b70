"""castord's configuration: one frozen object, built once by the CLI and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass


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
    metrics_port: int | None = None  # serve Prometheus metrics here (castor[metrics])
    metrics_host: str = "127.0.0.1"
    capture_output: bool = False  # children's stdout/stderr go to log_file (gunicorn's --capture-output)
    dashboard: bool = False  # the `castor` command's live terminal view owns stdout

    def __post_init__(self) -> None:
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValueError(
                f"--heartbeat-timeout ({self.heartbeat_timeout:g} s) must be longer than "
                f"--heartbeat-interval ({self.heartbeat_interval:g} s)"
            )
        if self.capture_output and self.log_file is None:
            raise ValueError("--capture-output needs --log-file: there is nowhere else to send the output")
        if self.workers == 0 and self.threads == 0:
            raise ValueError("--workers and --threads are both 0: castord would run nothing")


def default_workers() -> int:
    return os.cpu_count() or 1
