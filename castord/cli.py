"""`castord start|stop|status|reload` and the foreground `castor` command.

This module parses, builds the Config, and maps errors to exit codes; the work
happens in supervisor.py and control.py.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, NoReturn

import click

from castord.config import DEFAULT_UMASK, Config, default_workers, parse_umask
from castord.errors import CastordError, ExitCode, StatusCode

LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _env(name: str) -> str:
    return f"CASTORD_{name}"


class _Umask(click.ParamType):
    name = "octal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_umask(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


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
        click.option("--prefetch", type=click.IntRange(min=1), default=32, show_default=True,
                     envvar=_env("PREFETCH"),
                     help="Most tasks a child claims in one transaction while its tasks are short "
                          "(1: one at a time)."),
        click.option("--max-lost", type=click.IntRange(min=1), default=3, show_default=True,
                     envvar=_env("MAX_LOST"),
                     help="A task whose worker died this many times (killed, crashed, its lease lost) fails "
                          "with WorkerLost instead of running again."),
        click.option("--metrics-port", type=click.IntRange(min=0, max=65535), envvar=_env("METRICS_PORT"),
                     help="Serve Prometheus metrics on this port (needs castor[metrics]; 0: any free port)."),
        click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar=_env("METRICS_HOST"),
                     help="Address the metrics endpoint listens on."),
        click.option("--capture-output", is_flag=True, default=False, envvar=_env("CAPTURE_OUTPUT"),
                     help="Console mode: send stdout/stderr of castord and its children (task code's "
                          "print()) into --log-file as written. (JSON mode always captures them, as "
                          "task.output lines.)"),
        click.option("--umask", type=_Umask(), default=f"{DEFAULT_UMASK:03o}", show_default=True,
                     envvar=_env("UMASK"),
                     help="Octal umask castord and its children run with: what they create (a new "
                          "database and its -wal/-shm, the pidfile, logs) is owner-only by default."),
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
            lease=opts.get("lease") or 30.0, prefetch=opts.get("prefetch") or 32,
            max_lost=opts.get("max_lost") or 3,
            metrics_port=opts.get("metrics_port"), metrics_host=opts.get("metrics_host") or "127.0.0.1",
            capture_output=bool(opts.get("capture_output")), dashboard=bool(opts.get("dashboard")),
            umask=DEFAULT_UMASK if opts.get("umask") is None else opts["umask"],
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
    if config.detach and config.log_file is None:
        click.echo("castord: warning: --detach without --log-file: the detached castord's log goes to "
                   "/dev/null; give --log-file", err=True)
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
        from castor.store import scrub_secrets

        report = {"running": target.pid is not None, "pid": target.pid, "app": target.app,
                  "warnings": [*target.warnings,
                               f"cannot read castord's database: {scrub_secrets(str(exc), target.db_path)}"]}
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


# -- castord tasks ---------------------------------------------------------------


class _TasksGroup(click.Group):
    """A database that fails mid-command (damaged, locked too long, disk full)
    gets one line and exit 3, as one that fails to open does, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from castor.errors import StoreError

        try:
            return super().invoke(ctx)
        except StoreError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(ExitCode.APP_LOAD_ERROR)


@main.group(cls=_TasksGroup)
def tasks() -> None:
    """Look at and act on stored tasks: list, show, retry, run-now, run-again, cancel, purge, pause, resume, stats.

    Each subcommand takes APP (module:variable naming the Manager) to find the
    database. Tables on a terminal, JSON otherwise (or with --json).
    """


def _json_option(fn: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="JSON output (the default when not a terminal).")(fn)


def _manager(app: str) -> Any:
    from castor.app import AppLoadError, load_manager
    from castor.errors import StoreError

    try:
        return load_manager(app)
    except (AppLoadError, StoreError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(ExitCode.APP_LOAD_ERROR)


def _emit(data: Any, as_json: bool, render: Any) -> None:
    if as_json or not sys.stdout.isatty():
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        from rich.console import Console

        Console().print(render(data))


def _fail(message: str, code: ExitCode) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


_STATUSES = click.Choice(["pending", "waiting", "running", "success", "failed", "cancelled"])
_FINISHED = click.Choice(["success", "failed", "cancelled"])


@tasks.command("list")
@click.argument("app", envvar=_env("APP"))
@click.option("--status", type=_STATUSES)
@click.option("--name", help="Task name (module.function, or the name= given).")
@click.option("--queue")
@click.option("--dirty", is_flag=True, help="Only tasks whose worker vanished while running them.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_json_option
def tasks_list(app: str, status: str | None, name: str | None, queue: str | None, dirty: bool,
               limit: int, as_json: bool) -> None:
    """List tasks, newest first."""
    from castor.states import TaskStatus
    from castor.store import Query
    from castord import admin

    manager = _manager(app)
    try:
        query = Query(TaskStatus(status) if status else None, name, queue, dirty=True if dirty else None)
        rows = [admin.summary(r) for r in manager.store.list(query, limit=limit)]
    finally:
        manager.close()
    _emit(rows, as_json, admin.render_list)


@tasks.command("show")
@click.argument("app", envvar=_env("APP"))
@click.argument("task_id")
@_json_option
def tasks_show(app: str, task_id: str, as_json: bool) -> None:
    """Everything about one task: arguments, result, error and traceback, attempts."""
    from castord import admin

    manager = _manager(app)
    try:
        record = manager.store.get(task_id)
    finally:
        manager.close()
    if record is None:
        from castor.store import display_url

        _fail(f"no task {task_id} in {display_url(manager.path)} (purged, or never enqueued)", ExitCode.NOT_FOUND)
    _emit(admin.detail(record), as_json, admin.render_detail)


@tasks.command("retry")
@click.argument("app", envvar=_env("APP"))
@click.argument("task_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Retry every failed task (with --name: of that name).")
@click.option("--name", help="With --failed: only tasks of this name.")
def tasks_retry(app: str, task_id: str | None, all_failed: bool, name: str | None) -> None:
    """Send a failed or cancelled task (or, with --failed, every failed one) back to the queue."""
    from castor.errors import ConfigurationError, UnknownTaskError

    if bool(task_id) == all_failed:
        raise click.UsageError("give a task ID or --failed (not both)")
    manager = _manager(app)
    try:
        if all_failed:
            click.echo(manager.retry_failed(name=name).summary())  # and the workflow members it left
            return
        try:
            manager.retry(task_id)
        except UnknownTaskError as exc:
            _fail(str(exc), ExitCode.NOT_FOUND)
        except ConfigurationError as exc:
            _fail(str(exc), ExitCode.REFUSED)
        click.echo(f"retried {task_id}: pending")
    finally:
        manager.close()


@tasks.command("run-now")
@click.argument("app", envvar=_env("APP"))
@click.argument("task_id")
def tasks_run_now(app: str, task_id: str) -> None:
    """Make a pending task scheduled for later (or waiting to retry) due now, under its own id."""
    manager = _manager(app)
    try:
        _refusals(lambda: manager.run_now(task_id))
    finally:
        manager.close()
    click.echo(f"{task_id}: due now (pending)")


@tasks.command("run-again")
@click.argument("app", envvar=_env("APP"))
@click.argument("task_id")
def tasks_run_again(app: str, task_id: str) -> None:
    """Enqueue a new copy of a finished task (same name, arguments, queue, options; a new id).
    Unlike retry, the finished task stays as it is."""
    manager = _manager(app)
    try:
        copy = _refusals(lambda: manager.run_again(task_id))
    finally:
        manager.close()
    click.echo(f"ran {task_id} again as {copy.id} (pending)")


def _refusals(action: Any) -> Any:
    """An action's answer; an unknown id exits NOT_FOUND, a refusal REFUSED, each with its message."""
    from castor.errors import ConfigurationError, UnknownTaskError

    try:
        return action()
    except UnknownTaskError as exc:
        _fail(str(exc), ExitCode.NOT_FOUND)
    except ConfigurationError as exc:
        _fail(str(exc), ExitCode.REFUSED)


@tasks.command("cancel")
@click.argument("app", envvar=_env("APP"))
@click.argument("task_id")
def tasks_cancel(app: str, task_id: str) -> None:
    """Cancel a task: a pending one never runs; a running one is stopped by its worker."""
    from castor.errors import UnknownTaskError

    manager = _manager(app)
    try:
        before = manager.store.status(task_id)
        if before is not None and before.finished:
            _fail(f"task {task_id} already finished ({before}); nothing to cancel", ExitCode.REFUSED)
        try:
            status = manager.cancel(task_id)
        except UnknownTaskError as exc:
            _fail(str(exc), ExitCode.NOT_FOUND)
    finally:
        manager.close()
    messages = {"cancelled": "cancelled", "running": "cancel requested: its worker is stopping it"}
    if status not in messages:  # it finished in the meantime
        _fail(f"task {task_id} finished ({status}) before it could be cancelled", ExitCode.REFUSED)
    click.echo(f"{task_id}: {messages[status]}")


@tasks.command("purge")
@click.argument("app", envvar=_env("APP"))
@click.option("--older-than", required=True, help="Finished more than this long ago: 90s, 15m, 12h, 7d, 2w.")
@click.option("--status", type=_FINISHED, help="Only tasks in this status [default: every finished one].")
@click.option("--name", help="Only tasks of this name.")
def tasks_purge(app: str, older_than: str, status: str | None, name: str | None) -> None:
    """Delete finished tasks (never pending or running ones)."""
    from castord import admin

    try:
        seconds = admin.parse_duration(older_than)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    manager = _manager(app)
    try:
        purged = manager.purge(older_than=seconds, status=status, name=name)
    finally:
        manager.close()
    click.echo(f"purged {purged} task{'s' if purged != 1 else ''}")


_NAME_OPTION = click.option("--name", "task_name", metavar="NAME", default=None,
                            help="A task name (as `castord tasks list` shows it) instead of a QUEUE.")


@tasks.command("pause")
@click.argument("app", envvar=_env("APP"))
@click.argument("queue", required=False)
@_NAME_OPTION
def tasks_pause(app: str, queue: str | None, task_name: str | None) -> None:
    """Stop every castord on APP's store from claiming tasks of QUEUE, or of the task
    name given with --name NAME (they stay pending; running ones finish)."""
    _switch(app, queue, task_name, pause=True)


@tasks.command("resume")
@click.argument("app", envvar=_env("APP"))
@click.argument("queue", required=False)
@_NAME_OPTION
def tasks_resume(app: str, queue: str | None, task_name: str | None) -> None:
    """Let castords claim tasks of QUEUE (or of the task name --name NAME) again."""
    _switch(app, queue, task_name, pause=False)


def _switch(app: str, queue: str | None, task_name: str | None, *, pause: bool) -> None:
    if queue is not None and task_name is not None:
        raise click.UsageError("give a QUEUE or --name NAME, not both")
    if queue is None and task_name is None:
        raise click.UsageError("Missing argument 'QUEUE' (or --name NAME, to pause a task name)")
    if queue == "":
        raise click.BadParameter("give a queue name", param_hint="QUEUE")
    if task_name == "":
        raise click.BadParameter("give a task name", param_hint="--name")
    kind, value = ("queue", queue) if queue is not None else ("task name", task_name)
    manager = _manager(app)
    try:
        target = {"queue": queue} if queue is not None else {"name": task_name}
        changed = manager.pause(**target) if pause else manager.resume(**target)
    finally:
        manager.close()
    if changed:
        click.echo(f"{'paused' if pause else 'resumed'} {kind} {value}")
    else:
        click.echo(f"{kind} {value} was {'paused already' if pause else 'not paused'}")


@main.group(cls=_TasksGroup)
def schedules() -> None:
    """Periodic tasks: list them, disable or enable one, run one now.

    Each subcommand takes APP (module:variable naming the Manager); NAME is the
    periodic task's name as `castord schedules list` shows it.
    """


@schedules.command("list")
@click.argument("app", envvar=_env("APP"))
@_json_option
def schedules_list(app: str, as_json: bool) -> None:
    """Each schedule: enabled or not, its last tick fired and its next."""
    from castor.periodic import schedule_rows

    manager = _manager(app)
    try:
        rows = schedule_rows(manager)
    finally:
        manager.close()
    _emit(rows, as_json, _render_schedules)


def _render_schedules(rows: list[dict[str, Any]]) -> Any:
    from rich.markup import escape
    from rich.table import Table

    from castor.views import when

    table = Table(show_edge=False, header_style="bold")
    for column in ("name", "schedule", "state", "last tick", "next tick"):
        table.add_column(column)
    for row in rows:
        table.add_row(escape(row["name"]), escape(row["schedule"]), "enabled" if row["enabled"] else "disabled",
                      when(row["last_tick"]) or "never", when(row["next_tick"]) or "—")
    return table


@schedules.command("disable")
@click.argument("app", envvar=_env("APP"))
@click.argument("name")
def schedules_disable(app: str, name: str) -> None:
    """Stop every castord on APP's store from firing NAME's ticks (persisted)."""
    _switch_schedule(app, name, enable=False)


@schedules.command("enable")
@click.argument("app", envvar=_env("APP"))
@click.argument("name")
def schedules_enable(app: str, name: str) -> None:
    """Let NAME fire again from its next tick (missed ticks are not fired)."""
    _switch_schedule(app, name, enable=True)


def _switch_schedule(app: str, name: str, *, enable: bool) -> None:
    from castor.errors import UnknownTaskError

    manager = _manager(app)
    try:
        changed = manager.enable_schedule(name) if enable else manager.disable_schedule(name)
    except UnknownTaskError as exc:
        _fail(str(exc), ExitCode.NOT_FOUND)
    finally:
        manager.close()
    word = "enabled" if enable else "disabled"
    click.echo(f"{word} schedule {name}" if changed else f"schedule {name} was {word} already")


@schedules.command("run")
@click.argument("app", envvar=_env("APP"))
@click.argument("name")
def schedules_run(app: str, name: str) -> None:
    """Enqueue NAME once now, as a tick would; its regular ticks stay as they are."""
    from castor.errors import UnknownTaskError

    manager = _manager(app)
    try:
        task = manager.run_schedule_now(name)
    except UnknownTaskError as exc:
        _fail(str(exc), ExitCode.NOT_FOUND)
    finally:
        manager.close()
    click.echo(f"enqueued {name}: {task.id}")


@tasks.command("stats")
@click.argument("app", envvar=_env("APP"))
@_json_option
def tasks_stats(app: str, as_json: bool) -> None:
    """Counts per status, queue depth, the oldest due task's wait, failures by name."""
    from castord import admin

    manager = _manager(app)
    try:
        data = admin.stats(manager)
    finally:
        manager.close()
    _emit(data, as_json, admin.render_stats)


@main.command()
@click.option("--from", "source", required=True, envvar=_env("MOVE_FROM"),
              help="The beaver-db file the tasks are in (a path or sqlite:///path).")
@click.option("--to", "target", required=True, envvar=_env("MOVE_TO"),
              help="The PostgreSQL store to move them to: postgresql://user@host/dbname (keep a password "
                   "in ~/.pgpass or PGPASSWORD rather than here).")
@click.option("--dry-run", is_flag=True, help="Say what would move; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def move(source: str, target: str, dry_run: bool, as_json: bool) -> None:
    """Move the unfinished tasks (pending, scheduled, retrying) of a beaver-db file to PostgreSQL.

    Stop every castord on the file first. Tasks keep their ids, arguments, ETA,
    priority, queue, options, attempts and unique keys; finished tasks stay in the
    file. Safe to run again: a task already moved is not moved twice.

    \b
    Exit codes: 0 all moved, 2 bad --from/--to, 3 a store cannot be used,
    6 refused (a castord runs on the file, or tasks there run under a live
    lease) or some tasks were left in the file (each is named, with why).
    """
    from castor.errors import StoreError
    from castor.store import scrub_secrets
    from castord import move as moving

    try:
        report = moving.move(source, target, dry_run=dry_run)
    except CastordError as exc:
        _fail(str(exc), exc.exit_code)
    except StoreError as exc:  # a store failed mid-move (server gone, disk full): one line, no password
        _fail(f"the move stopped: {scrub_secrets(str(exc), target)}; nothing was lost: what was not moved "
              "is still in the file, and moving again goes on from there", ExitCode.APP_LOAD_ERROR)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else moving.render(report))
    if report.left or report.doubled:
        sys.exit(ExitCode.REFUSED)


@main.command()
@click.argument("app", envvar=_env("APP"))
@click.option("--host", default="127.0.0.1", show_default=True, envvar=_env("WEB_HOST"),
              help="Address to listen on; any but loopback needs --token-file.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, envvar=_env("WEB_PORT"),
              help="Port to listen on (0: any free port, named in the log).")
@click.option("--read-only", is_flag=True, envvar=_env("WEB_READ_ONLY"), help="Show everything, allow no action.")
@click.option("--token-file", type=click.Path(dir_okay=False), envvar=_env("WEB_TOKEN_FILE"),
              help="A file holding the token every visitor must give (bearer header or the login form).")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="auto", show_default=True,
              envvar=_env("LOG_FORMAT"), help="auto: console on a terminal, JSON otherwise.")
def web(app: str, host: str, port: int, read_only: bool, token_file: str | None, log_format: str) -> None:
    """Serve the web dashboard for APP (needs castor[web]): overview, queues, tasks, failures, schedules."""
    from castor.webui.security import WebSetupError
    from castor.webui.serve import listen, read_token, serve
    from castord.logging import configure

    try:
        token = read_token(token_file)
        sock = listen(host, port, token=token)
    except WebSetupError as exc:
        raise click.UsageError(str(exc)) from None
    except OSError as exc:
        _fail(str(exc.strerror or exc), ExitCode.INTERNAL_ERROR)
    manager = _manager(app)
    configure("web", fmt=log_format)
    serve(manager, sock, read_only=read_only, token=token)


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
@click.option("--dashboard/--no-dashboard", default=None,
              help="Live terminal dashboard [default: on when stdout is a terminal].")
def castor_main(app: str, dashboard: bool | None, **opts: Any) -> None:
    """castor: run APP's tasks in the foreground with a live dashboard (the castord engine).

    On a terminal it draws process and thread slots, pending tasks per queue,
    finished counts, throughput, the latest tasks and recent log lines; the
    full JSON log goes to --log-file (or a temporary file, named on exit).
    Elsewhere it writes log lines to stdout, as castord does.
    Ctrl+C drains like SIGTERM; a second Ctrl+C stops fast.
    """
    if dashboard is None:
        dashboard = sys.stdout.isatty()
    if dashboard:
        if not opts.get("log_file"):
            import tempfile

            fd, opts["log_file"] = tempfile.mkstemp(prefix="castor-", suffix=".log")
            os.close(fd)
        opts["log_format"] = "json"  # the dashboard parses it to show recent lines
        opts["capture_output"] = True  # task code's print() must not scribble on the screen
    config = build_config(app, dashboard=dashboard, **opts)
    from castord.daemon import run_daemon

    sys.exit(run_daemon(config))
