"""Starting castord: detach if asked, start the fork server, set up logging, load APP,
take the pidfile, supervise.

The fork server comes first, before APP loads and the log file opens: it is
forked from this process while it is still clean (castord/forkserver.py).
"""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING

from castord.config import Config
from castord.errors import CastordError, ExitCode

if TYPE_CHECKING:
    from castord.signals import SignalQueue


def run_daemon(config: Config) -> int:
    # Before anything is created (log file, database, pidfile) and before the fork
    # server and the children start, so that all of them inherit it.
    os.umask(config.umask)
    try:  # refused here, the message still reaches the terminal of `start --detach`
        _check_paths(config)
    except CastordError as exc:
        print(f"castord: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    ready_fd = _detach(config) if config.detach else None
    # Signals are recorded from here on (the loop acts on them once it runs): until
    # then HUP, USR1 or TERM would kill castord, and TTIN/TTOU stop it, mid start-up.
    from castord.signals import SignalQueue

    signals = SignalQueue()
    signals.install()
    from castord import forkserver

    # First, while no thread and no open file exist yet: the fork server then gets
    # ready beside the rest of the start (castord/forkserver.py).
    forkserver.start()
    try:
        return _start(config, ready_fd, signals)
    finally:
        forkserver.stop()  # its children are gone; so that castord leaves nothing behind


def _start(config: Config, ready_fd: int | None, signals: SignalQueue) -> int:
    from castor.app import AppLoadError, load_manager
    from castor.errors import StoreError, StoreUnavailable
    from castor.logs import get_logger
    from castor.store import display_url
    from castord import forkserver
    from castord.logging import configure

    sink = configure("master", fmt=config.log_format, level=config.log_level, log_file=config.log_file)
    # Before APP loads, so that what its import prints is captured too; not with
    # the dashboard, whose screen is stdout.
    if not config.dashboard and (sink.fmt == "json" or config.capture_output):
        sink.capture_output()
    log = get_logger("castord.master")
    started = time.monotonic()
    try:
        manager = load_manager(config.app)
    except (AppLoadError, StoreError) as exc:
        log.critical("castord.app_load_failed", app=config.app, error=str(exc))
        sink.tell(f"castord: cannot load APP: {exc}")
        # A database server that is down or restarting is not a broken APP: not 3, so that
        # systemd (Restart=on-failure, RestartPreventExitStatus=3) starts castord again.
        unavailable = isinstance(exc, StoreUnavailable) or isinstance(exc.__cause__, StoreUnavailable)
        return _report(ready_fd, ExitCode.BOOT_FAILURES if unavailable else ExitCode.APP_LOAD_ERROR)
    forkserver.app_loaded()  # whether its children need beaver-db, the fork server now knows
    try:
        # A damaged task table would otherwise be found by a child's claim, which
        # would crash, be replaced, and crash again: refuse to start instead.
        manager.store.verify()
    except StoreError as exc:
        log.critical("castord.database_unusable", app=config.app, database=display_url(manager.path),
                     error=str(exc))
        sink.tell(f"castord: cannot use the database: {exc}")
        manager.close()
        return _report(ready_fd, ExitCode.APP_LOAD_ERROR)
    log.info("castord.starting", app=config.app, workers=config.workers, threads=config.threads,
             database=display_url(manager.path), load_s=round(time.monotonic() - started, 3))
    from castord.pidfile import Pidfile

    pidfile = Pidfile(config.pidfile) if config.pidfile else None
    try:
        if pidfile is not None:
            pidfile.acquire()
            from castord.control import write_sidecar

            write_sidecar(pidfile.path, app=config.app, db_path=manager.path)
    except CastordError as exc:
        log.critical("castord.pidfile_refused", error=str(exc))
        sink.tell(f"castord: {exc}")
        return _report(ready_fd, exc.exit_code)
    from castord.supervisor import Supervisor

    supervisor = Supervisor(config, manager, sink, signals=signals)
    if ready_fd is not None:
        supervisor.on_ready = lambda: _report(ready_fd, ExitCode.OK)
    metrics = None
    dashboard = None
    code = int(ExitCode.INTERNAL_ERROR)  # unless run() returns or a known error says otherwise
    try:
        if config.metrics_port is not None:
            from castord.metrics import serve

            metrics = serve(supervisor, config.metrics_port, config.metrics_host)
        if config.dashboard and config.log_file is not None:
            from castord.dashboard import Dashboard

            dashboard = Dashboard(supervisor, config.log_file)
            supervisor.on_tick = dashboard.tick
            dashboard.start()
        code = supervisor.run()
    except CastordError as exc:
        log.critical("castord.metrics_failed", error=str(exc))
        sink.tell(f"castord: {exc}")
        code = exc.exit_code
    finally:
        if dashboard is not None:
            dashboard.stop()
            print(dashboard.summary(code))
        if metrics is not None:
            metrics.shutdown()
        sink.close_output()
        if pidfile is not None:
            from castord.control import remove_sidecar

            remove_sidecar(pidfile.path)
            pidfile.release()
    return _report(ready_fd, code)


def _check_paths(config: Config) -> None:
    """Refuse, before APP is loaded, a pidfile directory another user could swap the
    pidfile in, and a log file that is a link, not a file, or has other names; create
    the log file (owner-only under the umask) if it is missing."""
    from castord.files import open_append
    from castord.pidfile import Pidfile

    if config.pidfile is not None:
        Pidfile(config.pidfile).check_directory()
    if config.log_file is not None:
        try:
            open_append(config.log_file).close()
        except OSError as exc:
            raise CastordError(f"cannot open log file {config.log_file}: {exc.strerror}", ExitCode.USAGE) from exc


def _report(ready_fd: int | None, code: int) -> int:
    """Tell a waiting `castord start --detach` parent how the start went (once)."""
    if ready_fd is not None:
        try:
            os.write(ready_fd, str(int(code)).encode())
            os.close(ready_fd)
        except OSError:
            pass
    return int(code)


def _detach(config: Config) -> int:
    """Classic double fork (before APP is loaded, so no threads exist yet).

    The original process waits until the daemon reports READY or an exit code,
    and exits with it, so `castord start --detach` fails visibly.
    """
    read_fd, write_fd = os.pipe()
    if os.fork() > 0:
        os.close(write_fd)
        with os.fdopen(read_fd) as reader:
            answer = reader.read(8)
        code = int(answer) if answer.isdigit() else int(ExitCode.INTERNAL_ERROR)
        if code == 0:
            print(f"castord started in the background (pidfile {config.pidfile})")
        else:
            print(f"castord failed to start (exit {code}); see {config.log_file or 'its log'}", file=sys.stderr)
        os._exit(code)
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    return write_fd
