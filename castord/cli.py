"""`castord start|stop|status|reload` and the foreground `castor` command.

This module parses, builds the Config, and maps errors to exit codes; the work
happens in supervisor.py and control.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import click

from castord.config import Config, default_workers
from castord.errors import CastordError, ExitCode, StatusCode

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _env(name: str) -> str:
    return f"CASTORD_{name}"


def _target_options(fn: Any) -> Any:
    fn = click.argument("app", required=False, envvar=_env("APP"))(fn)
    fn = click.option("--pidfile", type=click.Path(dir_okay=False), envvar=_env("PIDFILE"),
                      help="Pidfile of the castord to address.")(fn)
    return fn


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="castor", prog_name="castord")
def main() -> None:
    """castord: the supervisor daemon that runs castor tasks."""


def _start_options(fn: Any) -> Any:
    options = [
        click.option("--workers", "-w", type=click.IntRange(min=0), envvar=_env("WORKERS"),
                     help="Process children for mode='process' tasks [default: CPU count]."),
        click.option("--threads", "-t", type=click.IntRange(min=0), envvar=_env("THREADS"),
                     help="Threads in the thread host for mode='thread' tasks [default: workers × 2]."),
        click.option("--queues", "-Q", envvar=_env("QUEUES"),
                     help="Comma-separated queues to serve [default: all]."),
        click.option("--log-format", type=click.Choice(LOG_FORMATS), default="auto", show_default=True,
                     envvar=_env("LOG_FORMAT"), help="auto: console on a terminal, JSON otherwise."),
        click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default="info",
                     show_default=True, envvar=_env("LOG_LEVEL")),
        click.option("--log-file", type=click.Path(dir_okay=False), envvar=_env("LOG_FILE"),
                     help="Append logs here instead of stdout (reopened on SIGUSR1)."),
        click.option("--graceful-timeout", type=click.FloatRange(min=0), envvar=_env("GRACEFUL_TIMEOUT"),
                     help="Seconds a drain waits for non-daemon tasks before killing and "
                          "requeueing them [default: unlimited]."),
        click.option("--heartbeat-interval", type=click.FloatRange(min=0.05), default=1.0,
                     show_default=True, envvar=_env("HEARTBEAT_INTERVAL")),
        click.option("--heartbeat-timeout", type=click.FloatRange(min=0.1), default=10.0,
                     show_default=True, envvar=_env("HEARTBEAT_TIMEOUT"),
                     help="A child silent this long is killed and replaced."),
        click.option("--max-tasks-per-child", type=click.IntRange(min=1), envvar=_env("MAX_TASKS_PER_CHILD"),
                     help="Retire a process child after this many tasks."),
        click.option("--max-memory-per-child", type=click.IntRange(min=1), envvar=_env("MAX_MEMORY_PER_CHILD"),
                     help="Retire a process child once its RSS passes this many MB."),
        click.option("--lease", type=click.FloatRange(min=1), default=30.0, show_default=True,
                     envvar=_env("LEASE"), help="Seconds a claimed task stays leased between renewals."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def build_config(app: str, **opts: Any) -> Config:
    workers = default_workers() if opts.get("workers") is None else opts["workers"]
    threads = workers * 2 if opts.get("threads") is None else opts["threads"]
    queues = tuple(q.strip() for q in (opts.get("queues") or "").split(",") if q.strip()) or None
    try:
        return Config(
            app=app, workers=workers, threads=threads, queues=queues,
            pidfile=opts.get("pidfile"), detach=bool(opts.get("detach")),
            log_format=opts.get("log_format") or "auto", log_level=(opts.get("log_level") or "info").lower(),
            log_file=opts.get("log_file"), graceful_timeout=opts.get("graceful_timeout"),
            heartbeat_interval=opts.get("heartbeat_interval") or 1.0,
            heartbeat_timeout=opts.get("heartbeat_timeout") or 10.0,
            max_tasks_per_child=opts.get("max_tasks_per_child"),
            max_memory_per_child=opts.get("max_memory_per_child"),
            lease=opts.get("lease") or 30.0,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


@main.command()
@click.argument("app", envvar=_env("APP"))
@_start_options
@click.option("--pidfile", type=click.Path(dir_okay=False), envvar=_env("PIDFILE"),
              help="Create this pidfile (refused if a live castord holds it).")
@click.option("--detach", is_flag=True, envvar=_env("DETACH"),
              help="Run in the background (needs --pidfile; default ./castord.pid).")
def start(app: str, **opts: Any) -> None:
    """Run castord for APP (module.path:variable naming a castor.Manager), in the foreground."""
    if opts.get("detach") and not opts.get("pidfile"):
        opts["pidfile"] = os.path.abspath("castord.pid")
    config = build_config(app, **opts)
    from castord.daemon import run_daemon

    sys.exit(run_daemon(config))


@main.command()
@_target_options
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Seconds to wait for it to exit [default: unlimited for a drain].")
@click.option("--force", is_flag=True, help="Fast stop (QUIT): requeue running tasks instead of finishing them.")
def stop(app: str | None, pidfile: str | None, timeout: float | None, force: bool) -> None:
    """Stop a castord: drain (TERM) by default, or --force (QUIT)."""
    from castord import control

    target = _find(app, pidfile)
    if target.pid is None:
        click.echo("castord is not running")
        sys.exit(ExitCode.OK)
    signum = signal.SIGQUIT if force else signal.SIGTERM
    click.echo(f"stopping castord pid {target.pid} ({'fast' if force else 'drain'})")
    if not control.signal_and_wait(target.pid, signum, timeout if timeout is not None else 10**9):
        click.echo(f"castord pid {target.pid} is still running after {timeout:g} s", err=True)
        sys.exit(ExitCode.INTERNAL_ERROR)
    click.echo("stopped")


@main.command()
@_target_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(app: str | None, pidfile: str | None, as_json: bool) -> None:
    """Show whether castord runs, its children, queue depth and task counts (LSB exit codes)."""
    from castord import control

    target = _find(app, pidfile)
    try:
        report = control.status_report(target)
    except Exception as exc:  # noqa: BLE001 - status must answer even with a sick database
        report = {"running": target.pid is not None, "pid": target.pid, "error": str(exc)}
    click.echo(json.dumps(report, indent=2) if as_json else control.render(report))
    sys.exit(StatusCode.RUNNING if report["running"] else StatusCode.NOT_RUNNING)


@main.command()
@_target_options
def reload(app: str | None, pidfile: str | None) -> None:
    """Reload (HUP): start new children with fresh code, drain the old ones."""
    target = _find(app, pidfile)
    if target.pid is None:
        click.echo("castord is not running", err=True)
        sys.exit(StatusCode.NOT_RUNNING)
    os.kill(target.pid, signal.SIGHUP)
    click.echo(f"reload requested from castord pid {target.pid}")


def _find(app: str | None, pidfile: str | None) -> Any:
    from castor.app import AppLoadError
    from castord import control

    try:
        return control.find(app, pidfile)
    except AppLoadError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.APP_LOAD_ERROR)
    except CastordError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("app", envvar=_env("APP"))
@_start_options
def castor_main(app: str, **opts: Any) -> None:
    """castor: run APP's tasks in the foreground (the castord engine, for development).

    Ctrl+C drains like SIGTERM; a second Ctrl+C stops fast.
    """
    config = build_config(app, **opts)
    from castord.daemon import run_daemon

    sys.exit(run_daemon(config))
